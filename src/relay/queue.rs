//! One tunnel's traffic: the bounded queue of commands waiting for an agent,
//! the pending map of commands delivered and awaiting their answer, and which
//! agents have polled recently.
//!
//! Plain data with explicit time: the HTTP handlers do the waiting. A command's
//! answer is routed only when the request id AND the shard token handed out with
//! it match, and only to the one waiter registered for it; a final answer removes
//! the entry, so a replay finds nothing.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};

use super::affinity::{self, Pins};
use super::ids::{self, IdHash};
use super::keys;

/// How many answer posts (notifications) may wait for a slow client before the
/// agent's POST waits too; back-pressure instead of memory growth.
const POSTS_IN_FLIGHT: usize = 32;
/// Remembered distinct agent instances per tunnel.
const MAX_AGENTS: usize = 64;

#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Commands waiting for an agent (not yet delivered).
    pub capacity: usize,
    /// Commands waiting or delivered and unanswered; bounds memory per tunnel.
    pub max_pending: usize,
    /// An agent counts as connected while polling and this long after its last poll.
    pub liveness: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 64,
            max_pending: 1024,
            liveness: Duration::from_secs(30),
        }
    }
}

/// What the agent must produce for a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A JSON-RPC request: notifications, then one final `jsonrpc_response`.
    /// `id` is the request's raw JSON id, checked against the answer.
    Request { body: Rc<Vec<u8>>, id: Vec<u8> },
    /// A JSON-RPC notification or a client's response: one final `notify_ack`.
    Notification { body: Rc<Vec<u8>> },
    /// `DELETE` of an MCP session.
    SessionTermination,
}

impl Payload {
    pub fn command_type(&self) -> &'static str {
        match self {
            Payload::Request { .. } | Payload::Notification { .. } => "jsonrpc",
            Payload::SessionTermination => "session_termination",
        }
    }

    fn jsonrpc(&self) -> Option<Rc<Vec<u8>>> {
        match self {
            Payload::Request { body, .. } | Payload::Notification { body } => Some(body.clone()),
            Payload::SessionTermination => None,
        }
    }
}

pub struct NewCommand {
    pub channel: String,
    pub headers: Vec<(String, Vec<String>)>,
    pub payload: Payload,
    pub created_at: String,
    pub deadline: Instant,
}

/// A command as handed to one poll.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub request_id: String,
    pub shard_token: String,
    pub command_type: &'static str,
    pub channel: String,
    pub created_at: String,
    /// Time left until the relay gives up, so the agent's deadline never outlives ours.
    pub response_timeout: Duration,
    pub headers: Vec<(String, Vec<String>)>,
    pub jsonrpc: Option<Rc<Vec<u8>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostKind {
    Notify,
    Response,
    NotifyAck,
    SessionTermination,
}

impl PostKind {
    pub fn is_final(self) -> bool {
        !matches!(self, PostKind::Notify)
    }
}

/// One answer post from the agent, already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    pub kind: PostKind,
    pub code: u16,
    pub headers: Vec<(String, Vec<String>)>,
    pub body: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueError {
    /// No agent polled within the liveness window (for this channel).
    NotConnected,
    Full,
    Random,
}

impl EnqueueError {
    pub fn status(self) -> u16 {
        match self {
            EnqueueError::NotConnected | EnqueueError::Full => 503,
            EnqueueError::Random => 500,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            EnqueueError::NotConnected => "tunnel_client_not_connected",
            EnqueueError::Full => "tunnel_queue_full",
            EnqueueError::Random => "internal_error",
        }
    }
}

impl fmt::Display for EnqueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnqueueError::NotConnected => "no tunnel client is connected to this tunnel",
            EnqueueError::Full => "the tunnel's queue is full; retry later",
            EnqueueError::Random => "could not generate a request id",
        })
    }
}

impl std::error::Error for EnqueueError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostError {
    /// Unknown, never delivered, already answered, cancelled or expired.
    NotFound,
    WrongShardToken,
    ChannelMismatch,
    /// The post's type cannot answer this command (e.g. a notification for a DELETE).
    UnexpectedType,
    /// The final answer carries a different JSON-RPC id than the request.
    IdMismatch,
}

impl PostError {
    pub fn status(&self) -> u16 {
        match self {
            PostError::NotFound => 404,
            PostError::WrongShardToken => 403,
            PostError::ChannelMismatch | PostError::UnexpectedType | PostError::IdMismatch => 400,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            PostError::NotFound => "pending_request_not_found",
            PostError::WrongShardToken => "shard_token_mismatch",
            PostError::ChannelMismatch => "channel_mismatch",
            PostError::UnexpectedType => "unexpected_resp_type",
            PostError::IdMismatch => "response_id_mismatch",
        }
    }
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PostError::NotFound => {
                "no pending request with this id (unknown, answered, cancelled or expired)"
            }
            PostError::WrongShardToken => "X-Tunnel-Shard-Token does not match the command",
            PostError::ChannelMismatch => "channel does not match the command's channel",
            PostError::UnexpectedType => "resp_type does not fit this command",
            PostError::IdMismatch => "resp_json id does not match the request's id",
        })
    }
}

impl std::error::Error for PostError {}

struct Entry {
    shard_token: String,
    channel: String,
    headers: Vec<(String, Vec<String>)>,
    payload: Payload,
    created_at: String,
    deadline: Instant,
    delivered: bool,
    answers: Sender<Post>,
    /// Channel + session: where process affinity may pin it (see `affinity`).
    affinity_key: Option<String>,
}

struct AgentSeen {
    instance: String,
    /// `None`: polls without a channel filter, i.e. serves every channel.
    channels: Option<Vec<String>>,
    last: Instant,
    polling: u32,
    /// Channels it declared with `proc_affinity`.
    affinity: Vec<String>,
}

/// A parked long-poll: what it serves, and how to wake it.
struct Parked {
    wake: Sender<()>,
    instance: String,
    /// `None`: every channel.
    channels: Option<Vec<String>>,
}

/// What the connector holds while it waits: the answers, and the id to cancel with.
pub struct Ticket {
    pub request_id: String,
    pub answers: Receiver<Post>,
}

#[derive(Default)]
pub struct TunnelQueue {
    config: QueueConfig,
    waiting: VecDeque<String>,
    entries: HashMap<String, Entry, IdHash>,
    agents: Vec<AgentSeen>,
    /// Long-polls parked until a command arrives, longest-parked first.
    parked: VecDeque<Parked>,
    /// Affinity keys → the agent instance that owns them.
    pins: Pins,
}

impl TunnelQueue {
    pub fn new(config: QueueConfig) -> TunnelQueue {
        TunnelQueue {
            config,
            ..TunnelQueue::default()
        }
    }

    fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Commands waiting for an agent.
    pub fn depth(&self) -> usize {
        self.waiting.len()
    }

    /// Commands delivered and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.entries.len() - self.waiting.len()
    }

    pub fn connected_agents(&self, now: Instant) -> usize {
        let live = self.config().liveness;
        self.agents.iter().filter(|a| a.is_live(now, live)).count()
    }

    pub fn is_connected(&self, channel: &str, now: Instant) -> bool {
        let live = self.config().liveness;
        self.agents
            .iter()
            .any(|a| a.is_live(now, live) && a.serves(channel))
    }

    pub fn enqueue(&mut self, cmd: NewCommand, now: Instant) -> Result<Ticket, EnqueueError> {
        if !self.is_connected(&cmd.channel, now) {
            return Err(EnqueueError::NotConnected);
        }
        if self.waiting.len() >= self.config.capacity
            || self.entries.len() >= self.config.max_pending
        {
            return Err(EnqueueError::Full);
        }
        let request_id = ids::random_hex::<12>("req_").map_err(|_| EnqueueError::Random)?;
        let shard_token = ids::random_hex::<16>("shard_").map_err(|_| EnqueueError::Random)?;
        let (tx, rx) = channel::bounded(POSTS_IN_FLIGHT);
        let session = cmd
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("mcp-session-id"))
            .and_then(|(_, v)| v.first())
            .map(String::as_str);
        let affinity_key = affinity::key(&cmd.channel, session);
        self.entries.insert(
            request_id.clone(),
            Entry {
                shard_token,
                channel: cmd.channel,
                headers: cmd.headers,
                payload: cmd.payload,
                created_at: cmd.created_at,
                deadline: cmd.deadline,
                delivered: false,
                answers: tx,
                affinity_key,
            },
        );
        self.waiting.push_back(request_id.clone());
        if let Some(e) = self.entries.get(&request_id) {
            wake_one(
                &mut self.parked,
                &self.agents,
                &self.pins,
                self.config.liveness,
                &e.channel,
                e.affinity_key.as_deref(),
                now,
            );
        }
        Ok(Ticket {
            request_id,
            answers: rx,
        })
    }

    /// Up to `limit` waiting commands for these channels (`None` = any), oldest
    /// first; each is now delivered. Expired ones are dropped, never delivered.
    pub fn take(
        &mut self,
        limit: usize,
        channels: Option<&[String]>,
        now: Instant,
    ) -> Vec<Outgoing> {
        self.take_for(limit, channels, None, now)
    }

    /// `take` for the poll of agent `instance`, honouring process affinity: a
    /// command whose key is pinned to another live instance stays waiting for
    /// it; a command on a channel this instance declared with `proc_affinity`
    /// pins its key here (or takes it over from an instance that is gone).
    pub fn take_for(
        &mut self,
        limit: usize,
        channels: Option<&[String]>,
        instance: Option<&str>,
        now: Instant,
    ) -> Vec<Outgoing> {
        let live = self.config.liveness;
        let affine: Vec<String> = instance
            .and_then(|i| self.agents.iter().find(|a| a.instance == i))
            .map(|a| a.affinity.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        while let Some(id) = self.waiting.pop_front() {
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            let Some(left) = e
                .deadline
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
            else {
                // Dropping the sender tells the waiting connector it is over.
                self.entries.remove(&id);
                continue;
            };
            let wanted = channels.is_none_or(|cs| cs.contains(&e.channel));
            let key = e.affinity_key.as_deref();
            let elsewhere = key
                .and_then(|k| self.pins.owner(k))
                .filter(|owner| Some(*owner) != instance)
                .is_some_and(|owner| {
                    self.agents
                        .iter()
                        .any(|a| a.instance == owner && a.is_live(now, live))
                });
            if out.len() < limit && wanted && !elsewhere {
                if let (Some(k), Some(i)) = (key, instance) {
                    if affine.contains(&e.channel) {
                        if matches!(e.payload, Payload::SessionTermination) && !k.ends_with('\n') {
                            // The session ends here: its key is free again.
                            self.pins.unpin(k);
                        } else {
                            self.pins.pin(k, i);
                        }
                    }
                }
                e.delivered = true;
                // A command is delivered once, never again: what only the
                // agent needs moves out (the answer's checks keep the rest).
                out.push(Outgoing {
                    request_id: id,
                    shard_token: e.shard_token.clone(),
                    command_type: e.payload.command_type(),
                    channel: e.channel.clone(),
                    created_at: std::mem::take(&mut e.created_at),
                    response_timeout: left,
                    headers: std::mem::take(&mut e.headers),
                    jsonrpc: e.payload.jsonrpc(),
                });
            } else {
                keep.push_back(id);
            }
        }
        self.waiting = keep;
        out
    }

    /// Parks the long-poll of agent `instance` serving `channels` (`None`:
    /// all): it receives once when a command it could take is enqueued. One
    /// command wakes one poll; a poll that leaves without taking the command
    /// it was woken for must call [`TunnelQueue::pass_on`].
    pub fn park(&mut self, instance: &str, channels: Option<&[String]>) -> Receiver<()> {
        self.parked.retain(|p| !p.wake.is_closed());
        let (tx, rx) = channel::bounded(1);
        self.parked.push_back(Parked {
            wake: tx,
            instance: instance.to_string(),
            channels: channels.map(<[String]>::to_vec),
        });
        rx
    }

    /// Wakes a parked poll for each waiting command (as many as there are
    /// commands): a woken poll went away without taking its command. A
    /// command no parked poll can take does not stop the others: the next
    /// may be for a channel that one serves.
    pub fn pass_on(&mut self, now: Instant) {
        for id in &self.waiting {
            if self.parked.is_empty() {
                break;
            }
            let Some(e) = self.entries.get(id) else {
                continue;
            };
            wake_one(
                &mut self.parked,
                &self.agents,
                &self.pins,
                self.config.liveness,
                &e.channel,
                e.affinity_key.as_deref(),
                now,
            );
        }
    }

    /// Wakes every parked poll (shutdown, tunnel deleted).
    pub fn wake_all(&mut self) {
        for p in self.parked.drain(..) {
            let _ = p.wake.try_send(());
        }
    }

    /// Parked polls (for tests).
    #[cfg(test)]
    fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Find where an answer goes. Finals remove the entry so a replay is `NotFound`.
    /// `check_id` gets the request's raw JSON-RPC id for a final `jsonrpc_response`.
    pub fn route(
        &mut self,
        request_id: &str,
        shard_token: &str,
        channel: Option<&str>,
        kind: PostKind,
        check_id: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Sender<Post>, PostError> {
        let e = self.entries.get(request_id).ok_or(PostError::NotFound)?;
        if !e.delivered {
            return Err(PostError::NotFound);
        }
        if !keys::constant_time_eq(e.shard_token.as_bytes(), shard_token.as_bytes()) {
            return Err(PostError::WrongShardToken);
        }
        if channel.is_some_and(|c| c != e.channel) {
            return Err(PostError::ChannelMismatch);
        }
        match (&e.payload, kind) {
            (Payload::Request { .. }, PostKind::Notify) => {}
            (Payload::Request { id, .. }, PostKind::Response) => {
                if !check_id(id) {
                    return Err(PostError::IdMismatch);
                }
            }
            // A failed forward is answered with a synthesized jsonrpc_response.
            (Payload::Notification { .. }, PostKind::NotifyAck | PostKind::Response) => {}
            (Payload::SessionTermination, PostKind::SessionTermination | PostKind::Response) => {}
            _ => return Err(PostError::UnexpectedType),
        }
        if e.answers.is_closed() {
            self.entries.remove(request_id);
            return Err(PostError::NotFound);
        }
        let tx = e.answers.clone();
        if kind.is_final() {
            self.entries.remove(request_id);
        }
        Ok(tx)
    }

    /// The connector gave up (client gone, timeout): forget the command; if it
    /// was not delivered yet, no agent will ever see it.
    pub fn cancel(&mut self, request_id: &str) {
        if self.entries.remove(request_id).is_some() {
            self.waiting.retain(|id| id != request_id);
        }
    }

    /// Drops entries whose deadline passed `grace` ago: a safety net should a
    /// waiter vanish without cancelling.
    pub fn expire(&mut self, now: Instant, grace: Duration) {
        self.entries
            .retain(|_, e| e.deadline.checked_add(grace).is_none_or(|d| d > now));
        let entries = &self.entries;
        self.waiting.retain(|id| entries.contains_key(id));
    }

    pub fn poll_started(&mut self, instance: &str, channels: Option<Vec<String>>, now: Instant) {
        if let Some(a) = self.agents.iter_mut().find(|a| a.instance == instance) {
            a.channels = channels;
            a.last = now;
            a.polling += 1;
            return;
        }
        if self.agents.len() >= MAX_AGENTS {
            // Forget the longest-silent idle instance; a polling one always stays.
            if let Some(i) = self
                .agents
                .iter()
                .enumerate()
                .filter(|(_, a)| a.polling == 0)
                .min_by_key(|(_, a)| a.last)
                .map(|(i, _)| i)
            {
                self.agents.swap_remove(i);
            } else {
                return;
            }
        }
        self.agents.push(AgentSeen {
            instance: instance.to_string(),
            channels,
            last: now,
            polling: 1,
            affinity: Vec::new(),
        });
    }

    /// The channels agent `instance` declares with `proc_affinity` (from its
    /// `X-Tunnel-MCP-Server-Info`), recorded at each poll.
    pub fn set_affinity(&mut self, instance: &str, channels: Vec<String>) {
        if let Some(a) = self.agents.iter_mut().find(|a| a.instance == instance) {
            a.affinity = channels;
        }
    }

    pub fn poll_ended(&mut self, instance: &str, now: Instant) {
        if let Some(a) = self.agents.iter_mut().find(|a| a.instance == instance) {
            a.polling = a.polling.saturating_sub(1);
            a.last = now;
        }
    }
}

/// Wakes the longest-parked poll that could take a command on `channel`
/// with affinity key `key` (not one whose channels exclude it, nor one of
/// another instance than the live owner of its key). Polls that went away are
/// dropped on the way. Returns whether one was woken.
fn wake_one(
    parked: &mut VecDeque<Parked>,
    agents: &[AgentSeen],
    pins: &Pins,
    live: Duration,
    channel: &str,
    key: Option<&str>,
    now: Instant,
) -> bool {
    let owner = key.and_then(|k| pins.owner(k)).filter(|owner| {
        agents
            .iter()
            .any(|a| a.instance == *owner && a.is_live(now, live))
    });
    let mut i = 0;
    while i < parked.len() {
        let p = &parked[i];
        if p.wake.is_closed() {
            parked.remove(i);
            continue;
        }
        let serves = p
            .channels
            .as_ref()
            .is_none_or(|cs| cs.iter().any(|c| c == channel));
        if serves && owner.is_none_or(|o| o == p.instance) {
            if let Some(p) = parked.remove(i) {
                if p.wake.try_send(()).is_ok() {
                    return true;
                }
            }
            continue;
        }
        i += 1;
    }
    false
}

impl AgentSeen {
    fn is_live(&self, now: Instant, window: Duration) -> bool {
        self.polling > 0 || now.saturating_duration_since(self.last) <= window
    }

    fn serves(&self, channel: &str) -> bool {
        self.channels
            .as_ref()
            .is_none_or(|cs| cs.iter().any(|c| c == channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(capacity: usize) -> QueueConfig {
        QueueConfig {
            capacity,
            max_pending: capacity * 2,
            liveness: Duration::from_secs(10),
        }
    }

    fn req(channel: &str, id: &str, deadline: Instant) -> NewCommand {
        NewCommand {
            channel: channel.into(),
            headers: vec![("Mcp-Session-Id".into(), vec!["s1".into()])],
            payload: Payload::Request {
                body: Rc::new(
                    format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}").into_bytes(),
                ),
                id: id.as_bytes().to_vec(),
            },
            created_at: "2026-01-01T00:00:00Z".into(),
            deadline,
        }
    }

    fn live_queue(capacity: usize, now: Instant) -> TunnelQueue {
        let mut q = TunnelQueue::new(cfg(capacity));
        q.poll_started("agent-1", None, now);
        q.poll_ended("agent-1", now);
        q
    }

    fn post(kind: PostKind) -> Post {
        Post {
            kind,
            code: 200,
            headers: vec![],
            body: Some(b"{}".to_vec()),
        }
    }

    #[test]
    fn no_agent_means_not_connected() {
        let t0 = Instant::now();
        let mut q = TunnelQueue::new(cfg(4));
        let d = t0 + Duration::from_secs(60);
        assert_eq!(
            q.enqueue(req("main", "1", d), t0).err(),
            Some(EnqueueError::NotConnected)
        );
        q.poll_started("a", None, t0);
        assert!(q.enqueue(req("main", "1", d), t0).is_ok());
        // While polling the agent stays connected however long the poll lasts.
        assert!(q.is_connected("main", t0 + Duration::from_secs(100)));
        q.poll_ended("a", t0 + Duration::from_secs(100));
        assert!(q.is_connected("main", t0 + Duration::from_secs(110)));
        assert!(!q.is_connected("main", t0 + Duration::from_secs(111)));
        assert_eq!(q.connected_agents(t0 + Duration::from_secs(111)), 0);
    }

    #[test]
    fn liveness_is_per_channel_when_the_agent_filters() {
        let t0 = Instant::now();
        let mut q = TunnelQueue::new(cfg(4));
        q.poll_started("a", Some(vec!["main".into(), "docs".into()]), t0);
        assert!(q.is_connected("docs", t0));
        assert!(!q.is_connected("other", t0));
    }

    #[test]
    fn queue_is_bounded() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(60);
        let mut q = live_queue(2, t0);
        let _a = q.enqueue(req("main", "1", d), t0).unwrap();
        let _b = q.enqueue(req("main", "2", d), t0).unwrap();
        assert_eq!(
            q.enqueue(req("main", "3", d), t0).err(),
            Some(EnqueueError::Full)
        );
        assert_eq!(q.depth(), 2);
        // Delivering frees queue slots; the pending bound (4) still holds.
        assert_eq!(q.take(25, None, t0).len(), 2);
        let _c = q.enqueue(req("main", "3", d), t0).unwrap();
        let _d = q.enqueue(req("main", "4", d), t0).unwrap();
        q.take(25, None, t0);
        assert_eq!(q.in_flight(), 4);
        assert_eq!(
            q.enqueue(req("main", "5", d), t0).err(),
            Some(EnqueueError::Full)
        );
    }

    #[test]
    fn take_honours_limit_order_and_channels() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(60);
        let mut q = live_queue(10, t0);
        let a = q.enqueue(req("main", "1", d), t0).unwrap();
        let b = q.enqueue(req("docs", "2", d), t0).unwrap();
        let c = q.enqueue(req("main", "3", d), t0).unwrap();
        let got = q.take(1, Some(&["main".to_string()]), t0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].request_id, a.request_id);
        assert_eq!(got[0].response_timeout, Duration::from_secs(60));
        let got = q.take(5, Some(&["main".to_string()]), t0 + Duration::from_secs(20));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].request_id, c.request_id);
        // The remaining time shrinks while a command waits.
        assert_eq!(got[0].response_timeout, Duration::from_secs(40));
        assert_eq!(q.depth(), 1);
        let got = q.take(5, None, t0);
        assert_eq!(got[0].request_id, b.request_id);
        assert_eq!(got[0].channel, "docs");
        assert_ne!(got[0].shard_token, "");
        assert_eq!(q.take(5, None, t0).len(), 0);
    }

    #[test]
    fn expired_commands_are_never_delivered() {
        let t0 = Instant::now();
        let mut q = live_queue(10, t0);
        let t = q
            .enqueue(req("main", "1", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(q.take(5, None, t0 + Duration::from_secs(5)).is_empty());
        assert!(t.answers.is_closed(), "waiter learns the command is gone");
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn cancel_before_delivery_drops_the_command() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(60);
        let mut q = live_queue(10, t0);
        let a = q.enqueue(req("main", "1", d), t0).unwrap();
        q.cancel(&a.request_id);
        assert!(q.take(5, None, t0).is_empty());
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn cancel_after_delivery_makes_answers_not_found() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(60);
        let mut q = live_queue(10, t0);
        let a = q.enqueue(req("main", "1", d), t0).unwrap();
        let out = q.take(5, None, t0).remove(0);
        q.cancel(&a.request_id);
        let r = q.route(
            &out.request_id,
            &out.shard_token,
            None,
            PostKind::Response,
            |_| true,
        );
        assert_eq!(r.err(), Some(PostError::NotFound));
    }

    #[test]
    fn answers_route_only_with_matching_id_and_token() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(60);
        let mut q = live_queue(10, t0);
        let a = q.enqueue(req("main", "1", d), t0).unwrap();
        let b = q.enqueue(req("main", "2", d), t0).unwrap();
        // Not delivered yet: indistinguishable from unknown.
        assert_eq!(
            q.route(&a.request_id, "x", None, PostKind::Notify, |_| true)
                .err(),
            Some(PostError::NotFound)
        );
        let outs = q.take(5, None, t0);
        let (oa, ob) = (&outs[0], &outs[1]);
        // B's token does not open A.
        assert_eq!(
            q.route(
                &oa.request_id,
                &ob.shard_token,
                None,
                PostKind::Response,
                |_| true
            )
            .err(),
            Some(PostError::WrongShardToken)
        );
        assert_eq!(
            q.route(
                &oa.request_id,
                &oa.shard_token,
                Some("docs"),
                PostKind::Response,
                |_| true
            )
            .err(),
            Some(PostError::ChannelMismatch)
        );
        assert_eq!(
            q.route(
                &oa.request_id,
                &oa.shard_token,
                None,
                PostKind::NotifyAck,
                |_| true
            )
            .err(),
            Some(PostError::UnexpectedType)
        );
        assert_eq!(
            q.route(
                &oa.request_id,
                &oa.shard_token,
                None,
                PostKind::Response,
                |id| id == b"2"
            )
            .err(),
            Some(PostError::IdMismatch)
        );
        let tx = q
            .route(
                &oa.request_id,
                &oa.shard_token,
                Some("main"),
                PostKind::Notify,
                |_| true,
            )
            .unwrap();
        tx.try_send(post(PostKind::Notify)).unwrap();
        let tx = q
            .route(
                &oa.request_id,
                &oa.shard_token,
                None,
                PostKind::Response,
                |id| id == b"1",
            )
            .unwrap();
        tx.try_send(post(PostKind::Response)).unwrap();
        assert_eq!(a.answers.try_recv().unwrap().kind, PostKind::Notify);
        assert_eq!(a.answers.try_recv().unwrap().kind, PostKind::Response);
        assert!(b.answers.try_recv().is_err(), "nothing crossed to B");
        // Replay after the final.
        assert_eq!(
            q.route(
                &oa.request_id,
                &oa.shard_token,
                None,
                PostKind::Response,
                |_| true
            )
            .err(),
            Some(PostError::NotFound)
        );
        assert_eq!(q.in_flight(), 1);
    }

    #[test]
    fn answer_for_a_departed_waiter_is_not_found() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(60);
        let mut q = live_queue(10, t0);
        let a = q.enqueue(req("main", "1", d), t0).unwrap();
        let o = q.take(1, None, t0).remove(0);
        drop(a);
        assert_eq!(
            q.route(
                &o.request_id,
                &o.shard_token,
                None,
                PostKind::Notify,
                |_| true
            )
            .err(),
            Some(PostError::NotFound)
        );
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn session_termination_and_notification_finals() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(60);
        let mut q = live_queue(10, t0);
        let mut st = req("main", "1", d);
        st.payload = Payload::SessionTermination;
        let _st = q.enqueue(st, t0).unwrap();
        let mut n = req("main", "1", d);
        n.payload = Payload::Notification {
            body: Rc::new(b"{}".to_vec()),
        };
        let _n = q.enqueue(n, t0).unwrap();
        let outs = q.take(5, None, t0);
        assert_eq!(outs[0].command_type, "session_termination");
        assert!(outs[0].jsonrpc.is_none());
        assert_eq!(outs[1].command_type, "jsonrpc");
        assert_eq!(
            q.route(
                &outs[0].request_id,
                &outs[0].shard_token,
                None,
                PostKind::Notify,
                |_| true
            )
            .err(),
            Some(PostError::UnexpectedType)
        );
        assert!(q
            .route(
                &outs[0].request_id,
                &outs[0].shard_token,
                None,
                PostKind::SessionTermination,
                |_| true
            )
            .is_ok());
        assert!(q
            .route(
                &outs[1].request_id,
                &outs[1].shard_token,
                None,
                PostKind::NotifyAck,
                |_| true
            )
            .is_ok());
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn expire_sweeps_forgotten_entries() {
        let t0 = Instant::now();
        let mut q = live_queue(10, t0);
        let a = q
            .enqueue(req("main", "1", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        q.take(1, None, t0);
        q.expire(t0 + Duration::from_secs(6), Duration::from_secs(5));
        assert_eq!(q.in_flight(), 1);
        q.expire(t0 + Duration::from_secs(11), Duration::from_secs(5));
        assert_eq!(q.in_flight(), 0);
        assert!(a.answers.is_closed());
    }

    #[test]
    fn park_is_woken_by_enqueue() {
        let t0 = Instant::now();
        let mut q = live_queue(10, t0);
        let w = q.park("agent", None);
        assert!(w.try_recv().is_err());
        let _a = q
            .enqueue(req("main", "1", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(w.try_recv().is_ok());
    }

    #[test]
    fn one_command_wakes_one_parked_poll() {
        let t0 = Instant::now();
        let mut q = live_queue(10, t0);
        let first = q.park("a", None);
        let second = q.park("b", None);
        let _c1 = q
            .enqueue(req("main", "1", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(first.try_recv().is_ok(), "the longest-parked poll wakes");
        assert!(second.try_recv().is_err(), "the other keeps waiting");
        assert_eq!(q.parked(), 1);
        let _c2 = q
            .enqueue(req("main", "2", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(second.try_recv().is_ok());
        assert!(first.try_recv().is_err());
    }

    #[test]
    fn a_poll_that_went_away_is_skipped() {
        let t0 = Instant::now();
        let mut q = live_queue(10, t0);
        let gone = q.park("a", None);
        let waiting = q.park("b", None);
        drop(gone);
        let _c = q
            .enqueue(req("main", "1", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(waiting.try_recv().is_ok());
        assert_eq!(q.parked(), 0);
    }

    #[test]
    fn a_woken_poll_that_leaves_passes_the_command_on() {
        let t0 = Instant::now();
        let mut q = live_queue(10, t0);
        let woken = q.park("a", None);
        let other = q.park("b", None);
        let _c = q
            .enqueue(req("main", "1", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(woken.try_recv().is_ok());
        assert!(other.try_recv().is_err());
        // The woken poll leaves without taking: the command is still waiting.
        drop(woken);
        q.pass_on(t0);
        assert!(other.try_recv().is_ok());
        assert_eq!(ids(&q.take(5, None, t0)).len(), 1);
        // Nothing waiting: passing on wakes nobody.
        let idle = q.park("c", None);
        q.pass_on(t0);
        assert!(idle.try_recv().is_err());
    }

    #[test]
    fn passing_on_skips_a_command_nobody_parked_can_take() {
        let t0 = Instant::now();
        let mut q = live_queue(10, t0);
        let woken = q.park("a", None);
        let _d = q
            .enqueue(req("docs", "1", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(woken.try_recv().is_ok());
        let main_only = q.park("b", Some(&["main".to_string()]));
        let _m = q
            .enqueue(req("main", "2", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(main_only.try_recv().is_ok());
        // Both polls leave without taking; a main-only poll parks again.
        drop(woken);
        drop(main_only);
        let again = q.park("b", Some(&["main".to_string()]));
        q.pass_on(t0);
        assert!(
            again.try_recv().is_ok(),
            "the main command was passed on past the docs one"
        );
    }

    #[test]
    fn only_a_poll_serving_the_channel_is_woken() {
        let t0 = Instant::now();
        let mut q = live_queue(10, t0);
        let docs = q.park("a", Some(&["docs".to_string()]));
        let any = q.park("b", None);
        let _c = q
            .enqueue(req("main", "1", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(docs.try_recv().is_err());
        assert!(any.try_recv().is_ok());
        let _d = q
            .enqueue(req("docs", "2", t0 + Duration::from_secs(5)), t0)
            .unwrap();
        assert!(docs.try_recv().is_ok());
    }

    #[test]
    fn agent_table_is_bounded() {
        let t0 = Instant::now();
        let mut q = TunnelQueue::new(cfg(1));
        for i in 0..(MAX_AGENTS + 10) {
            q.poll_started(&format!("a{i}"), None, t0);
            q.poll_ended(&format!("a{i}"), t0);
        }
        assert_eq!(q.agents.len(), MAX_AGENTS);
    }

    fn no_session(channel: &str, id: &str, deadline: Instant) -> NewCommand {
        NewCommand {
            headers: vec![],
            ..req(channel, id, deadline)
        }
    }

    fn ids(out: &[Outgoing]) -> Vec<String> {
        out.iter()
            .map(|o| String::from_utf8_lossy(o.jsonrpc.as_deref().unwrap()).into_owned())
            .map(|b| {
                b.split("\"id\":")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Two agents serve a stdio channel: its work stays on the first one to
    /// take it while that one lives, then moves to the other.
    #[test]
    fn proc_affinity_pins_a_channel_to_one_agent() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(600);
        let mut q = TunnelQueue::new(cfg(8));
        for a in ["a", "b"] {
            q.poll_started(a, None, t0);
            q.set_affinity(a, vec!["fs".into()]);
        }
        q.enqueue(no_session("fs", "1", d), t0).unwrap();
        assert_eq!(ids(&q.take_for(5, None, Some("a"), t0)), ["1"]);
        q.enqueue(no_session("fs", "2", d), t0).unwrap();
        q.enqueue(no_session("web", "3", d), t0).unwrap();
        assert_eq!(
            ids(&q.take_for(5, None, Some("b"), t0)),
            ["3"],
            "b gets the HTTP channel, never a's stdio work"
        );
        assert_eq!(ids(&q.take_for(5, None, Some("a"), t0)), ["2"]);
        // a stops polling; within the liveness window its work still waits for it.
        q.poll_ended("a", t0);
        q.enqueue(no_session("fs", "4", d), t0).unwrap();
        let t1 = t0 + Duration::from_secs(5);
        assert!(q.take_for(5, None, Some("b"), t1).is_empty());
        // a is gone: b takes the channel over, and keeps it.
        let t2 = t0 + Duration::from_secs(11);
        assert_eq!(ids(&q.take_for(5, None, Some("b"), t2)), ["4"]);
        q.poll_started("a", None, t2);
        q.set_affinity("a", vec!["fs".into()]);
        q.enqueue(no_session("fs", "5", d), t2).unwrap();
        assert!(q.take_for(5, None, Some("a"), t2).is_empty());
        assert_eq!(ids(&q.take_for(5, None, Some("b"), t2)), ["5"]);
    }

    #[test]
    fn proc_affinity_pins_sessions_separately_and_ends_with_them() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(600);
        let mut q = TunnelQueue::new(cfg(8));
        for a in ["a", "b"] {
            q.poll_started(a, None, t0);
            q.set_affinity(a, vec!["main".into()]);
        }
        let with = |sid: &str, id: &str| NewCommand {
            headers: vec![("mcp-session-id".into(), vec![sid.into()])],
            ..req("main", id, d)
        };
        q.enqueue(with("s1", "1"), t0).unwrap();
        assert_eq!(ids(&q.take_for(5, None, Some("a"), t0)), ["1"]);
        q.enqueue(with("s2", "2"), t0).unwrap();
        assert_eq!(
            ids(&q.take_for(5, None, Some("b"), t0)),
            ["2"],
            "another session is free"
        );
        q.enqueue(with("s1", "3"), t0).unwrap();
        q.enqueue(with("s2", "4"), t0).unwrap();
        assert_eq!(ids(&q.take_for(5, None, Some("b"), t0)), ["4"]);
        assert_eq!(ids(&q.take_for(5, None, Some("a"), t0)), ["3"]);
        // DELETE of s1 goes to a and frees the key.
        q.enqueue(
            NewCommand {
                payload: Payload::SessionTermination,
                ..with("s1", "0")
            },
            t0,
        )
        .unwrap();
        assert!(q.take_for(5, None, Some("b"), t0).is_empty());
        assert_eq!(q.take_for(5, None, Some("a"), t0).len(), 1);
        q.enqueue(with("s1", "6"), t0).unwrap();
        assert_eq!(ids(&q.take_for(5, None, Some("b"), t0)), ["6"]);
    }

    #[test]
    fn without_affinity_any_agent_takes_any_command() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(600);
        let mut q = TunnelQueue::new(cfg(8));
        q.poll_started("a", None, t0);
        q.poll_started("b", None, t0);
        q.enqueue(no_session("main", "1", d), t0).unwrap();
        assert_eq!(ids(&q.take_for(5, None, Some("a"), t0)), ["1"]);
        q.enqueue(no_session("main", "2", d), t0).unwrap();
        assert_eq!(ids(&q.take_for(5, None, Some("b"), t0)), ["2"]);
    }
}
