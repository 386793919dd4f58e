//! The control plane agents talk to: tunnel metadata, the long-poll for
//! commands, and the response posts (protocol.md "Endpoints").
//!
//! Statuses and codes (besides the auth answers of [`super::auth`]):
//! - poll: `200 {"commands":[…]}`, `204` when idle, timed out or draining;
//!   `400 invalid_limit | invalid_timeout | invalid_channel_format |
//!   invalid_server_info`. A poll serves the channels its `channel` parameters
//!   name, or every channel. `X-Tunnel-MCP-Server-Info` is validated only: it
//!   declares process affinity, not necessarily every channel served.
//! - response: `200 {"status":"ok"}`; `400 missing_shard_token`, `400` with the
//!   body decoder's code (e.g. `invalid_response_body`), `400 invalid_resp_code |
//!   invalid_channel_format | missing_resp_json | channel_mismatch | unexpected_resp_type |
//!   response_id_mismatch`; `403 shard_token_mismatch` (the id exists but the token
//!   is not its own: the agent that holds the command is not the caller); `404
//!   pending_request_not_found` (unknown, undelivered, answered, cancelled, expired).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use miniserde::{json, Serialize};
use smol::channel::TrySendError;
use smol::future;

use super::hub::{bearer_of, error_response, header, names, Hub};
use super::metrics::{Endpoint, Metrics};
use super::queue::{Outgoing, Post, PostError, PostKind};
use super::state::Role;
use crate::net::http_server::{ConnMemo, Request, Response};
use crate::proto::channel::Channel;
use crate::proto::command::{encode_poll, CommandOut};
use crate::proto::headers::response_allowlist;
use crate::proto::json::{self as pjson, Limits};
use crate::proto::jsonrpc;
use crate::proto::response::{self, RespType};
use crate::proto::server_info;
use crate::proto::timeout::{format_response_timeout, Deadline};

/// Poll `limit` cap (protocol.md).
pub const MAX_LIMIT: usize = 25;
/// Channels one poll may name.
const MAX_POLL_CHANNELS: usize = 32;
const MAX_INSTANCE_ID: usize = 128;

fn error(hub: &Hub, ep: Endpoint, status: u16, code: &'static str, msg: &str) -> Response {
    hub.metrics.count(ep, status, code);
    error_response(status, code, msg)
}

fn credential(req: &Request) -> Option<&str> {
    bearer_of(&req.headers, names::AUTHORIZATION)
}

#[derive(Serialize)]
struct Metadata<'a> {
    id: &'a str,
    name: &'a str,
    description: &'a str,
}

/// `GET /v1/tunnels/{id}`: the agent's startup check.
pub fn metadata(hub: &Hub, req: &Request, tunnel_id: &str) -> Response {
    let ep = Endpoint::Metadata;
    if let Err(e) = hub.authorize(
        credential(req),
        req.client_cert.as_deref(),
        tunnel_id,
        Role::Runtime,
    ) {
        return error(hub, ep, e.status(), e.code(), e.message());
    }
    let state = hub.state();
    let Some(t) = state.tunnel(tunnel_id) else {
        return error(hub, ep, 404, "tunnel_not_found", "no such tunnel");
    };
    hub.metrics.count(ep, 200, "");
    Response::json(
        200,
        json::to_string(&Metadata {
            id: &t.id,
            name: &t.name,
            description: &t.description,
        })
        .into_bytes(),
    )
}

/// What a poll asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct PollQuery {
    pub limit: usize,
    pub timeout: Duration,
    /// Empty: any channel.
    pub channels: Vec<String>,
}

/// Parses `limit`, `timeout_ms`, `channel` (repeatable); unknown parameters are
/// ignored. `limit` absent → 1, above 25 → 25; `timeout_ms` absent → 30 s, then
/// capped at `max_wait`.
pub fn parse_poll_query(
    query: Option<&str>,
    max_wait: Duration,
) -> Result<PollQuery, (&'static str, String)> {
    let mut q = PollQuery {
        limit: 1,
        timeout: Duration::from_secs(30),
        channels: Vec::new(),
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => match v.parse::<usize>() {
                Ok(n) if n >= 1 => q.limit = n.min(MAX_LIMIT),
                _ => return Err(("invalid_limit", "limit must be an integer 1..25".into())),
            },
            "timeout_ms" => match v.parse::<u64>() {
                Ok(ms) => q.timeout = Duration::from_millis(ms),
                _ => {
                    return Err((
                        "invalid_timeout",
                        "timeout_ms must be a non-negative integer".into(),
                    ))
                }
            },
            "channel" => {
                let c = Channel::parse(v)
                    .map_err(|e| ("invalid_channel_format", format!("channel: {e}")))?;
                if q.channels.len() >= MAX_POLL_CHANNELS {
                    return Err(("invalid_channel_format", "too many channels".into()));
                }
                if !q.channels.iter().any(|x| x == c.as_str()) {
                    q.channels.push(c.as_str().to_string());
                }
            }
            _ => {}
        }
    }
    q.timeout = q.timeout.min(max_wait);
    Ok(q)
}

/// `X-Tunnel-MCP-Server-Info`, when sent, must be a valid declaration.
/// Returns the channels it declares with `proc_affinity`.
fn check_server_info(hub: &Hub, req: &Request) -> Result<Vec<String>, String> {
    if req.headers.get(names::X_TUNNEL_MCP_SERVER_INFO).is_none() {
        return Ok(Vec::new());
    }
    let value = header(&req.headers, names::X_TUNNEL_MCP_SERVER_INFO)
        .ok_or("X-Tunnel-MCP-Server-Info must be one UTF-8 value")?;
    // An agent sends the same declaration with every poll: decode it once.
    if let Some(channels) = hub.server_info.borrow().get(value) {
        return Ok(channels);
    }
    let channels = decode_server_info(value)?;
    hub.server_info.borrow_mut().put(value, &channels);
    Ok(channels)
}

fn decode_server_info(value: &str) -> Result<Vec<String>, String> {
    server_info::decode(value)
        .map(|decls| {
            decls
                .into_iter()
                .filter(|d| d.proc_affinity)
                .map(|d| d.name.as_str().to_string())
                .collect()
        })
        .map_err(|e| format!("X-Tunnel-MCP-Server-Info: {e}"))
}

/// The agent instance behind a poll, for liveness: its declared instance id, or its key.
fn instance_of(req: &Request, key_id: &str) -> String {
    match header(&req.headers, names::X_TUNNEL_CLIENT_INSTANCE_ID) {
        Some(v)
            if !v.is_empty()
                && v.len() <= MAX_INSTANCE_ID
                && v.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            let mut s = String::with_capacity(key_id.len() + 1 + v.len());
            s.push_str(key_id);
            s.push('/');
            s.push_str(v);
            s
        }
        _ => key_id.to_string(),
    }
}

/// Keeps the agent counted as connected for exactly the life of the poll.
struct Polling<'h> {
    hub: &'h Hub,
    tunnel: &'h str,
    instance: &'h str,
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.hub
            .poll_ended(self.tunnel, self.instance, Instant::now());
    }
}

/// A long-poll's place in the wake-up line. An enqueued command wakes one
/// parked poll; if that poll then leaves without taking it (client gone,
/// key revoked, draining), the command is passed on to another parked poll.
struct WakeUp<'h> {
    hub: &'h Hub,
    tunnel: &'h str,
    parked: Option<smol::channel::Receiver<()>>,
    /// Woken for a command not taken yet.
    owed: bool,
}

impl WakeUp<'_> {
    fn left_parking(&mut self, woken: bool) {
        let late = self.parked.take().is_some_and(|p| p.try_recv().is_ok());
        self.owed = woken || late;
    }
}

impl Drop for WakeUp<'_> {
    fn drop(&mut self) {
        self.left_parking(self.owed);
        if self.owed {
            self.hub.pass_on(self.tunnel, Instant::now());
        }
    }
}

/// The answer to a poll that found commands: `{"commands":[…]}`.
fn deliver(hub: &Hub, batch: &[Outgoing]) -> Response {
    Metrics::add(&hub.metrics.commands_delivered, batch.len() as u64);
    let timeouts: Vec<String> = batch
        .iter()
        // Whole milliseconds: readable, and never longer than what is left.
        .map(|c| {
            let ms = u64::try_from(c.response_timeout.as_millis()).unwrap_or(u64::MAX);
            format_response_timeout(Duration::from_millis(ms))
        })
        .collect();
    let out: Vec<CommandOut<'_>> = batch
        .iter()
        .zip(&timeouts)
        .map(|(c, t)| CommandOut {
            request_id: &c.request_id,
            shard_token: &c.shard_token,
            command_type: c.command_type,
            channel: &c.channel,
            created_at: &c.created_at,
            response_timeout: Some(t),
            headers: &c.headers,
            jsonrpc: c.jsonrpc.as_deref().map(Vec::as_slice),
        })
        .collect();
    // Sized for the whole answer up front: grown from empty it is
    // reallocated a handful of times per poll.
    let size: usize = batch
        .iter()
        .map(|c| {
            let headers: usize = c
                .headers
                .iter()
                .map(|(n, vs)| n.len() + vs.iter().map(|v| v.len() + 8).sum::<usize>() + 8)
                .sum();
            384 + c.jsonrpc.as_ref().map_or(0, |b| b.len()) + headers
        })
        .sum();
    let mut body = Vec::with_capacity(size.saturating_add(16));
    encode_poll(&out, &mut body);
    hub.metrics.count(Endpoint::Poll, 200, "");
    Response::json(200, body)
}

/// `GET /v1/tunnels/{id}/poll`. Checks and the first look at the queue happen
/// now; only a poll that has to park is boxed as a future.
pub fn poll(
    hub: &Rc<Hub>,
    req: Request,
    tunnel_id: String,
    memo: &Rc<ConnMemo>,
) -> Pin<Box<dyn Future<Output = Response>>> {
    let ep = Endpoint::Poll;
    let ready = |r: Response| -> Pin<Box<dyn Future<Output = Response>>> {
        Box::pin(std::future::ready(r))
    };
    // The state the key was checked against; re-checked after a wake-up only
    // when a reload replaced it (hashing the key again costs ~9k instructions).
    let checked = hub.state();
    let instance = match hub.authorize_with(
        memo,
        credential(&req),
        req.client_cert.as_deref(),
        &tunnel_id,
        Role::Runtime,
        |p| instance_of(&req, &p.key_id),
    ) {
        Ok(i) => i,
        Err(e) => return ready(error(hub, ep, e.status(), e.code(), e.message())),
    };
    let q = match parse_poll_query(req.uri.query(), hub.settings.poll_timeout_max) {
        Ok(q) => q,
        Err((code, msg)) => return ready(error(hub, ep, 400, code, &msg)),
    };
    // Channels served: the poll's filter, else what the agent declares, else any.
    let affinity = match check_server_info(hub, &req) {
        Ok(a) => a,
        Err(msg) => return ready(error(hub, ep, 400, "invalid_server_info", &msg)),
    };
    let filter = (!q.channels.is_empty()).then_some(q.channels);
    let started = Instant::now();
    let deadline = Deadline::after(started, q.timeout).at();
    let batch = {
        let mut queue = hub.queue(&tunnel_id);
        queue.poll_started(&instance, filter.clone(), started);
        queue.set_affinity(&instance, affinity);
        queue.take_for(q.limit, filter.as_deref(), Some(&instance), started)
    };
    if !batch.is_empty() || hub.is_closing() || started >= deadline {
        hub.poll_ended(&tunnel_id, &instance, Instant::now());
        return ready(match batch.is_empty() {
            false => deliver(hub, &batch),
            true => {
                hub.metrics.count(ep, 204, "");
                Response::empty(204)
            }
        });
    }
    let hub = hub.clone();
    let memo = memo.clone();
    Box::pin(async move {
        let mut checked = checked;
        let _polling = Polling {
            hub: &hub,
            tunnel: &tunnel_id,
            instance: &instance,
        };
        let mut wake = WakeUp {
            hub: &hub,
            tunnel: &tunnel_id,
            parked: None,
            owed: false,
        };
        loop {
            let parked = wake
                .parked
                .insert(hub.queue(&tunnel_id).park(&instance, filter.as_deref()));
            let woken = future::or(async { parked.recv().await.is_ok() }, async {
                hub.alarms.sleep_until(deadline).await;
                false
            })
            .await;
            wake.left_parking(woken);
            // Whatever woke us, the key may have been revoked or the tunnel deleted
            // meanwhile: both arrive as a new state.
            let current = hub.state();
            if !Rc::ptr_eq(&current, &checked) {
                if let Err(e) = hub.authorize_with(
                    &memo,
                    credential(&req),
                    req.client_cert.as_deref(),
                    &tunnel_id,
                    Role::Runtime,
                    |_| (),
                ) {
                    return error(&hub, ep, e.status(), e.code(), e.message());
                }
                checked = current;
            }
            let now = Instant::now();
            let batch =
                hub.queue(&tunnel_id)
                    .take_for(q.limit, filter.as_deref(), Some(&instance), now);
            // Woken for a command that is gone (taken by another poll, cancelled):
            // nothing to pass on.
            wake.owed = false;
            if !batch.is_empty() {
                return deliver(&hub, &batch);
            }
            if hub.is_closing() || now >= deadline {
                hub.metrics.count(ep, 204, "");
                return Response::empty(204);
            }
        }
    })
}

fn post_kind(t: RespType) -> PostKind {
    match t {
        RespType::JsonrpcResponse => PostKind::Response,
        RespType::JsonrpcNotify => PostKind::Notify,
        RespType::NotifyAck => PostKind::NotifyAck,
        RespType::SessionTerminationResponse => PostKind::SessionTermination,
    }
}

fn post_error(hub: &Hub, e: &PostError) -> Response {
    error(
        hub,
        Endpoint::Response,
        e.status(),
        e.code(),
        &e.to_string(),
    )
}

/// `POST /v1/tunnels/{id}/response`. Only an answer that finds the
/// client's stream backed up has to wait (and is boxed as a future).
pub fn respond(
    hub: &Rc<Hub>,
    mut req: Request,
    tunnel_id: &str,
    memo: &ConnMemo,
) -> Pin<Box<dyn Future<Output = Response>>> {
    match answer(hub, &mut req, tunnel_id, memo) {
        Answered::Now(r) => Box::pin(std::future::ready(r)),
        Answered::Later(sender, post) => {
            let hub = hub.clone();
            Box::pin(async move {
                // Back-pressure, not buffering: the agent's POST waits for room.
                match sender.send(post).await {
                    Ok(()) => ok_response(&hub),
                    Err(_) => post_error(&hub, &PostError::NotFound),
                }
            })
        }
    }
}

fn ok_response(hub: &Hub) -> Response {
    hub.metrics.count(Endpoint::Response, 200, "");
    Response::json(200, br#"{"status":"ok"}"#.to_vec())
}

/// An answer post handled at once, or handed over once the client's stream has room.
enum Answered {
    Now(Response),
    Later(smol::channel::Sender<Post>, Post),
}

fn answer(hub: &Hub, req: &mut Request, tunnel_id: &str, memo: &ConnMemo) -> Answered {
    let ep = Endpoint::Response;
    let fail = |status, code, msg: &str| Answered::Now(error(hub, ep, status, code, msg));
    if let Err(e) = hub.authorize_with(
        memo,
        credential(req),
        req.client_cert.as_deref(),
        tunnel_id,
        Role::Runtime,
        |_| (),
    ) {
        return fail(e.status(), e.code(), e.message());
    }
    let Some(token) = header(&req.headers, names::X_TUNNEL_SHARD_TOKEN).filter(|t| !t.is_empty())
    else {
        return fail(
            400,
            "missing_shard_token",
            "X-Tunnel-Shard-Token is required: echo the command's shard_token",
        );
    };
    let limits = Limits {
        max_len: hub.settings.max_response_body,
        ..Limits::default()
    };
    let decoded = match response::decode(&req.body, &limits) {
        Ok(d) => d,
        Err(e) => return fail(400, e.code(), &e.to_string()),
    };
    if !(200..=599).contains(&decoded.resp_code) {
        return fail(400, "invalid_resp_code", "resp_code must be 200..599");
    }
    if let Some(c) = &decoded.channel {
        if let Err(e) = Channel::parse(c) {
            return fail(400, "invalid_channel_format", &format!("channel: {e}"));
        }
    }
    let kind = post_kind(decoded.resp_type);
    let body = decoded.resp_json.clone().and_then(|r| req.body.get(r));
    let has_body = body.is_some();
    if kind == PostKind::Notify && body.is_none() {
        return fail(400, "missing_resp_json", "jsonrpc_notify needs resp_json");
    }
    let check_id = |expected: &[u8]| match body {
        None => true,
        Some(b) => match jsonrpc::inspect(b, &limits) {
            Ok(info) => match info.id_bytes(b) {
                // A JSON-RPC error answering an unparsable request carries id null.
                Some(id) if !pjson::is_null(id) => jsonrpc::same_id(expected, id),
                _ => true,
            },
            Err(_) => false,
        },
    };
    let routed = hub.queue(tunnel_id).route(
        &decoded.request_id,
        token,
        decoded.channel.as_deref(),
        kind,
        check_id,
    );
    let sender = match routed {
        Ok(s) => s,
        Err(e) => return Answered::Now(post_error(hub, &e)),
    };
    let headers: Vec<(String, Vec<String>)> = response_allowlist(
        decoded
            .resp_headers
            .iter()
            .flat_map(|(n, vs)| vs.iter().map(move |v| (n.as_str(), v.as_str()))),
    );
    // The answer's bytes are a slice of the request body: cut it out in
    // place instead of copying it.
    let body = match (has_body, decoded.resp_json.clone()) {
        (true, Some(r)) => {
            let mut b = std::mem::take(&mut req.body);
            b.truncate(r.end);
            b.drain(..r.start);
            Some(b)
        }
        _ => None,
    };
    let post = Post {
        kind,
        code: decoded.resp_code,
        headers,
        body,
    };
    // Usually there is room and the hand-over is immediate, so a POST dropped
    // midway cannot lose an answer already taken off the pending map. Otherwise
    // wait while the client's stream is backed up.
    match sender.try_send(post) {
        Ok(()) => Answered::Now(ok_response(hub)),
        Err(TrySendError::Full(post)) => Answered::Later(sender, post),
        Err(TrySendError::Closed(_)) => Answered::Now(post_error(hub, &PostError::NotFound)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn poll_query_defaults_and_caps() {
        let q = parse_poll_query(None, MAX).unwrap();
        assert_eq!((q.limit, q.timeout, q.channels.len()), (1, MAX, 0));
        let q = parse_poll_query(Some("limit=100&timeout_ms=90000&x=1"), MAX).unwrap();
        assert_eq!((q.limit, q.timeout), (25, MAX));
        let q = parse_poll_query(
            Some("limit=3&timeout_ms=250&channel=main&channel=docs&channel=main"),
            MAX,
        )
        .unwrap();
        assert_eq!(q.limit, 3);
        assert_eq!(q.timeout, Duration::from_millis(250));
        assert_eq!(q.channels, ["main", "docs"]);
    }

    #[test]
    fn poll_query_errors() {
        for (query, code) in [
            ("limit=0", "invalid_limit"),
            ("limit=-1", "invalid_limit"),
            ("limit=abc", "invalid_limit"),
            ("timeout_ms=1.5", "invalid_timeout"),
            ("timeout_ms=", "invalid_timeout"),
            ("channel=Main", "invalid_channel_format"),
            ("channel=", "invalid_channel_format"),
            ("channel=a%20b", "invalid_channel_format"),
        ] {
            assert_eq!(
                parse_poll_query(Some(query), MAX).unwrap_err().0,
                code,
                "{query}"
            );
        }
        let many: Vec<String> = (0..33).map(|i| format!("channel=c{i}")).collect();
        assert!(parse_poll_query(Some(&many.join("&")), MAX).is_err());
    }
}
