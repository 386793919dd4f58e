//! The agent's Prometheus metrics: what the poll loop and the workers count,
//! rendered by `/metrics` on the health listener.
//!
//! Every label value comes from a fixed set (the enums below, the failure
//! sources) or from the configured channels plus one catch-all, so the number
//! of series is bounded by configuration, never by what the control plane sends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ops::prom::{Counter, Exposition, Gauge, Histogram, Kind};
use crate::proto::channel::Channel;
use crate::proto::failure::FailureSource;

/// The label for commands on a channel this agent does not serve. Parentheses
/// cannot occur in a channel name, so it never collides with a configured one.
pub const UNSERVED_CHANNEL: &str = "(unserved)";

/// How one long poll ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// A batch with commands.
    Commands,
    /// Nothing to do before the poll timeout.
    Empty,
    NetworkError,
    /// A proxy or TLS failure on the way to the control plane.
    EdgeError,
    /// 429, 5xx or another unexpected status.
    HttpError,
    /// 401/403: the key is rejected.
    Rejected,
    /// 404: the tunnel does not exist.
    NotFound,
    /// A 200 whose body could not be used.
    InvalidBody,
}

impl PollOutcome {
    pub const ALL: [PollOutcome; 8] = [
        PollOutcome::Commands,
        PollOutcome::Empty,
        PollOutcome::NetworkError,
        PollOutcome::EdgeError,
        PollOutcome::HttpError,
        PollOutcome::Rejected,
        PollOutcome::NotFound,
        PollOutcome::InvalidBody,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PollOutcome::Commands => "commands",
            PollOutcome::Empty => "empty",
            PollOutcome::NetworkError => "network_error",
            PollOutcome::EdgeError => "edge_error",
            PollOutcome::HttpError => "http_error",
            PollOutcome::Rejected => "rejected",
            PollOutcome::NotFound => "not_found",
            PollOutcome::InvalidBody => "invalid_body",
        }
    }
}

/// What a command asks the MCP server for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandType {
    /// A JSON-RPC request (or a body that is not valid JSON-RPC: forwarded as one).
    Request,
    Notification,
    /// The client's own JSON-RPC response or error (to a server→client request).
    Response,
    SessionTermination,
}

impl CommandType {
    pub const ALL: [CommandType; 4] = [
        CommandType::Request,
        CommandType::Notification,
        CommandType::Response,
        CommandType::SessionTermination,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandType::Request => "request",
            CommandType::Notification => "notification",
            CommandType::Response => "response",
            CommandType::SessionTermination => "session_termination",
        }
    }
}

/// What became of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// The MCP server's answer (or acknowledgement) was delivered.
    Answered,
    /// A synthesized tunnel failure was delivered (see `mcp_failures_total`).
    McpFailure,
    /// Dropped before the MCP server was contacted: the deadline had passed.
    ExpiredBeforeStart,
    /// The deadline passed during the MCP exchange or the post: nothing delivered.
    Expired,
    /// The control plane no longer wanted it (404 on a notification post).
    Aborted,
    /// The final post got 404 (already fulfilled or expired there).
    Rejected,
    /// The final post failed (non-retryable status or retries used up).
    PostFailed,
}

impl CommandOutcome {
    pub const ALL: [CommandOutcome; 7] = [
        CommandOutcome::Answered,
        CommandOutcome::McpFailure,
        CommandOutcome::ExpiredBeforeStart,
        CommandOutcome::Expired,
        CommandOutcome::Aborted,
        CommandOutcome::Rejected,
        CommandOutcome::PostFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandOutcome::Answered => "answered",
            CommandOutcome::McpFailure => "mcp_failure",
            CommandOutcome::ExpiredBeforeStart => "expired_before_start",
            CommandOutcome::Expired => "expired",
            CommandOutcome::Aborted => "aborted",
            CommandOutcome::Rejected => "rejected",
            CommandOutcome::PostFailed => "post_failed",
        }
    }
}

/// Which request was retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryKind {
    Poll,
    FinalPost,
    NotifyPost,
}

impl RetryKind {
    pub const ALL: [RetryKind; 3] = [RetryKind::Poll, RetryKind::FinalPost, RetryKind::NotifyPost];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryKind::Poll => "poll",
            RetryKind::FinalPost => "final_post",
            RetryKind::NotifyPost => "notify_post",
        }
    }
}

const FAILURE_SOURCES: [FailureSource; 8] = [
    FailureSource::TargetHttp,
    FailureSource::Dns,
    FailureSource::Tls,
    FailureSource::Connect,
    FailureSource::TransportClosed,
    FailureSource::Timeout,
    FailureSource::Protocol,
    FailureSource::ClientInternal,
];

fn index_of<T: PartialEq>(all: &[T], v: &T) -> usize {
    all.iter().position(|x| x == v).unwrap_or(0)
}

/// Shared by the poll loop, the workers and the health listener (`Sync`: plain atomics).
#[derive(Debug)]
pub struct AgentMetrics {
    /// The configured channels; slot `channels.len()` is [`UNSERVED_CHANNEL`].
    channels: Vec<Channel>,
    polls: [Counter; PollOutcome::ALL.len()],
    /// Indexed `[channel slot][type][outcome]`, flattened.
    commands: Vec<Counter>,
    /// Receipt → final post delivered, per channel slot.
    latency: Vec<Histogram>,
    in_flight: Gauge,
    queued: Gauge,
    retries: [Counter; RetryKind::ALL.len()],
    last_poll_success: Gauge,
    mcp_failures: [Counter; FAILURE_SOURCES.len()],
    /// Per configured channel; stdio targets count their child restarts here.
    child_restarts: Vec<Counter>,
}

impl AgentMetrics {
    pub fn new(channels: &[Channel]) -> AgentMetrics {
        let slots = channels.len() + 1;
        let per_slot = CommandType::ALL.len() * CommandOutcome::ALL.len();
        AgentMetrics {
            channels: channels.to_vec(),
            polls: Default::default(),
            commands: (0..slots * per_slot).map(|_| Counter::new()).collect(),
            latency: (0..slots).map(|_| Histogram::latency()).collect(),
            in_flight: Gauge::new(),
            queued: Gauge::new(),
            retries: Default::default(),
            last_poll_success: Gauge::new(),
            mcp_failures: Default::default(),
            child_restarts: channels.iter().map(|_| Counter::new()).collect(),
        }
    }

    fn slot(&self, channel: &Channel) -> usize {
        self.channels
            .iter()
            .position(|c| c == channel)
            .unwrap_or(self.channels.len())
    }

    fn slot_name(&self, slot: usize) -> &str {
        self.channels
            .get(slot)
            .map_or(UNSERVED_CHANNEL, |c| c.as_str())
    }

    pub fn poll(&self, outcome: PollOutcome) {
        self.polls[index_of(&PollOutcome::ALL, &outcome)].inc();
        if matches!(outcome, PollOutcome::Commands | PollOutcome::Empty) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.last_poll_success
                .set(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
        }
    }

    pub fn command(&self, channel: &Channel, kind: CommandType, outcome: CommandOutcome) {
        let i = (self.slot(channel) * CommandType::ALL.len() + index_of(&CommandType::ALL, &kind))
            * CommandOutcome::ALL.len()
            + index_of(&CommandOutcome::ALL, &outcome);
        if let Some(c) = self.commands.get(i) {
            c.inc();
        }
    }

    /// Receipt of the poll answer → final answer delivered.
    pub fn answered_after(&self, channel: &Channel, elapsed: Duration) {
        if let Some(h) = self.latency.get(self.slot(channel)) {
            h.observe(elapsed);
        }
    }

    pub fn retry(&self, kind: RetryKind) {
        self.retries[index_of(&RetryKind::ALL, &kind)].inc();
    }

    pub fn mcp_failure(&self, source: FailureSource) {
        self.mcp_failures[index_of(&FAILURE_SOURCES, &source)].inc();
    }

    pub fn child_restart(&self, channel: &Channel) {
        if let Some(c) = self.child_restarts.get(self.slot(channel)) {
            c.inc();
        }
    }

    /// A command entered the local queue (accepted from a poll, not yet on a worker).
    pub fn queued(&self) {
        self.queued.inc();
    }

    /// A worker took a queued command.
    pub fn started(&self) {
        self.queued.dec();
        self.in_flight.inc();
    }

    pub fn finished(&self) {
        self.in_flight.dec();
    }

    /// The whole exposition document into `out` (cleared first).
    pub fn render(&self, out: &mut String) {
        let mut e = Exposition::new(out);
        e.family(
            "mcp_tunnel_build_info",
            Kind::Gauge,
            "Build of this process (always 1).",
        )
        .sample(
            "mcp_tunnel_build_info",
            &[("version", crate::cli::VERSION), ("role", "agent")],
            1.0,
        );

        let name = "mcp_tunnel_agent_polls_total";
        e.family(name, Kind::Counter, "Long polls by how they ended.");
        for (o, c) in PollOutcome::ALL.iter().zip(&self.polls) {
            e.counter(name, &[("outcome", o.as_str())], c);
        }

        let name = "mcp_tunnel_agent_last_successful_poll_timestamp_seconds";
        e.family(
            name,
            Kind::Gauge,
            "Unix time of the last poll that got commands or an empty answer (0: none yet).",
        )
        .gauge(name, &[], &self.last_poll_success);

        let name = "mcp_tunnel_agent_commands_total";
        e.family(
            name,
            Kind::Counter,
            "Commands by type, channel and outcome (only combinations seen so far).",
        );
        let per_slot = CommandType::ALL.len() * CommandOutcome::ALL.len();
        for (i, c) in self.commands.iter().enumerate() {
            if c.get() == 0 {
                continue;
            }
            let slot = i / per_slot;
            let kind = CommandType::ALL[(i % per_slot) / CommandOutcome::ALL.len()];
            let outcome = CommandOutcome::ALL[i % CommandOutcome::ALL.len()];
            e.counter(
                name,
                &[
                    ("type", kind.as_str()),
                    ("channel", self.slot_name(slot)),
                    ("outcome", outcome.as_str()),
                ],
                c,
            );
        }

        let name = "mcp_tunnel_agent_command_duration_seconds";
        e.family(
            name,
            Kind::Histogram,
            "From the poll answer carrying a command to its final answer delivered.",
        );
        for (slot, h) in self.latency.iter().enumerate() {
            if slot < self.channels.len() || h.count() > 0 {
                e.histogram(name, &[("channel", self.slot_name(slot))], h);
            }
        }

        let name = "mcp_tunnel_agent_commands_in_flight";
        e.family(name, Kind::Gauge, "Commands being worked on by a worker.")
            .gauge(name, &[], &self.in_flight);
        let name = "mcp_tunnel_agent_commands_queued";
        e.family(
            name,
            Kind::Gauge,
            "Commands accepted and waiting for a worker.",
        )
        .gauge(name, &[], &self.queued);

        let name = "mcp_tunnel_agent_retries_total";
        e.family(
            name,
            Kind::Counter,
            "Retried control-plane requests by kind.",
        );
        for (k, c) in RetryKind::ALL.iter().zip(&self.retries) {
            e.counter(name, &[("kind", k.as_str())], c);
        }

        let name = "mcp_tunnel_agent_mcp_failures_total";
        e.family(
            name,
            Kind::Counter,
            "MCP exchanges answered with a synthesized tunnel_failure, by source.",
        );
        for (s, c) in FAILURE_SOURCES.iter().zip(&self.mcp_failures) {
            e.counter(name, &[("source", s.as_str())], c);
        }

        let name = "mcp_tunnel_agent_child_restarts_total";
        e.family(
            name,
            Kind::Counter,
            "Restarts of a stdio MCP server child process, by channel.",
        );
        for (slot, c) in self.child_restarts.iter().enumerate() {
            e.counter(name, &[("channel", self.slot_name(slot))], c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    fn line<'a>(doc: &'a str, prefix: &str) -> Option<&'a str> {
        doc.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn counts_land_on_their_labels() {
        let m = AgentMetrics::new(&[ch("main"), ch("tools")]);
        m.poll(PollOutcome::Commands);
        m.poll(PollOutcome::Rejected);
        m.command(
            &ch("tools"),
            CommandType::Notification,
            CommandOutcome::Answered,
        );
        m.command(
            &ch("nope"),
            CommandType::Request,
            CommandOutcome::McpFailure,
        );
        m.mcp_failure(FailureSource::ClientInternal);
        m.retry(RetryKind::FinalPost);
        m.child_restart(&ch("tools"));
        m.answered_after(&ch("main"), Duration::from_millis(3));
        m.queued();
        m.queued();
        m.started();
        let mut doc = String::new();
        m.render(&mut doc);
        assert!(doc.contains("mcp_tunnel_agent_polls_total{outcome=\"commands\"} 1\n"));
        assert!(doc.contains("mcp_tunnel_agent_polls_total{outcome=\"rejected\"} 1\n"));
        assert!(doc.contains("mcp_tunnel_agent_polls_total{outcome=\"empty\"} 0\n"));
        assert!(doc.contains(
            "mcp_tunnel_agent_commands_total{type=\"notification\",channel=\"tools\",outcome=\"answered\"} 1\n"
        ));
        assert!(doc.contains(
            "mcp_tunnel_agent_commands_total{type=\"request\",channel=\"(unserved)\",outcome=\"mcp_failure\"} 1\n"
        ));
        assert_eq!(
            doc.matches("mcp_tunnel_agent_commands_total{").count(),
            2,
            "unseen combinations are not exported"
        );
        assert!(doc.contains("mcp_tunnel_agent_mcp_failures_total{source=\"client_internal\"} 1\n"));
        assert!(doc.contains("mcp_tunnel_agent_retries_total{kind=\"final_post\"} 1\n"));
        assert!(doc.contains("mcp_tunnel_agent_child_restarts_total{channel=\"tools\"} 1\n"));
        assert!(doc.contains("mcp_tunnel_agent_child_restarts_total{channel=\"main\"} 0\n"));
        assert!(doc.contains("mcp_tunnel_agent_commands_queued 1\n"));
        assert!(doc.contains("mcp_tunnel_agent_commands_in_flight 1\n"));
        assert!(
            doc.contains("mcp_tunnel_agent_command_duration_seconds_count{channel=\"main\"} 1\n")
        );
        assert!(line(
            &doc,
            "mcp_tunnel_agent_command_duration_seconds_count{channel=\"(unserved)\"}"
        )
        .is_none());
        let ts = line(
            &doc,
            "mcp_tunnel_agent_last_successful_poll_timestamp_seconds ",
        )
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
        assert!(ts > 1_600_000_000, "{ts}");
        assert!(doc.contains(&format!(
            "mcp_tunnel_build_info{{version=\"{}\",role=\"agent\"}} 1\n",
            crate::cli::VERSION
        )));
    }

    #[test]
    fn failed_polls_do_not_move_the_success_time() {
        let m = AgentMetrics::new(&[ch("main")]);
        m.poll(PollOutcome::NetworkError);
        let mut doc = String::new();
        m.render(&mut doc);
        assert!(doc.contains("mcp_tunnel_agent_last_successful_poll_timestamp_seconds 0\n"));
    }
}
