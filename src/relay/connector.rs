//! The MCP endpoint AI clients call: `POST|DELETE /v1/mcp/{tunnel}[/{channel}]`,
//! Streamable HTTP carried through the tunnel.
//!
//! A POST becomes a `jsonrpc` command, a DELETE with `Mcp-Session-Id` a
//! `session_termination`; the handler then waits for the agent's posts. The
//! answer is `application/json` (the final post), or `text/event-stream` when the
//! client accepts it and a `jsonrpc_notify` arrives first: each notification is
//! one event, written at once; the final answer is the last event.
//!
//! Credentials: `X-Tunnel-Authorization: Bearer <connector key>` when present —
//! then `Authorization` belongs to the MCP server and travels untouched — else
//! `Authorization: Bearer <connector key>`, which is then never forwarded.
//!
//! Statuses and codes of the relay's own answers (the agent's answers pass
//! through with their status): `405 method_not_allowed` (with `Allow: POST,
//! DELETE`), the auth answers of [`super::auth`], `400 invalid_channel_format |
//! invalid_json_payload` (not JSON, not one object: batches included) `|
//! invalid_jsonrpc` (an object but not JSON-RPC 2.0) `| missing_mcp_session_id`, `503
//! tunnel_client_not_connected | tunnel_queue_full`, `504 tunnel_timeout` (no
//! answer within the response timeout; on a stream already started: a final
//! `-32603` event with `tunnel_failure.source = "timeout"`).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use smol::channel::Receiver;
use smol::future;
use smol::stream::{self, Stream};

use super::audit::AuditRecord;
use super::hub::{bearer_of, error_response, header, names, Hub};
use super::keys;
use super::metrics::{Endpoint, Metrics};
use super::queue::{NewCommand, Payload, Post, PostKind};
use super::state::Role;
use super::timestamp::rfc3339;
use crate::net::http_server::{Body, ConnMemo, Request, Response};
use crate::proto::channel::Channel;
use crate::proto::failure::{write_error, TunnelFailure};
use crate::proto::headers::command_headers_from_client;
use crate::proto::json::{validate, JsonError, Limits};
use crate::proto::jsonrpc::{self, MessageKind};
use crate::proto::sse::write_event;
use crate::proto::timeout::Deadline;

/// Status recorded when the client went away before its answer.
const CLIENT_CLOSED: u16 = 499;

/// One client request from authentication to the last byte of its answer:
/// cancels the command if it is still pending, and writes the audit line and
/// counters exactly once — also when the client disconnects (the server drops
/// the future or the stream, and with it this).
struct Exchange {
    hub: Rc<Hub>,
    started: Instant,
    record: AuditRecord,
    finished: bool,
}

impl Exchange {
    fn new(hub: Rc<Hub>, req: &Request, tunnel: String, channel: &str) -> Exchange {
        Exchange {
            hub,
            started: Instant::now(),
            record: AuditRecord {
                tunnel,
                channel: channel.to_string(),
                http_method: req.method.as_str().chars().take(16).collect(),
                bytes_in: req.body.len() as u64,
                ..AuditRecord::default()
            },
            finished: false,
        }
    }

    /// The relay's own error answer.
    fn fail(&mut self, status: u16, code: &'static str, message: &str) -> Response {
        let r = error_response(status, code, message);
        self.finish(status, Some(code), body_len(&r.body));
        r
    }

    /// A stream's status (200) went out long ago; its size is counted as it goes.
    fn finish_streamed(&mut self, code: Option<&'static str>) {
        let out = self.record.bytes_out;
        self.finish(200, code, out);
    }

    fn finish(&mut self, status: u16, code: Option<&'static str>, bytes_out: u64) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.record.status = status;
        self.record.code = code.map(str::to_string);
        self.record.bytes_out = bytes_out;
        self.record.latency = self.started.elapsed();
        let m = &self.hub.metrics;
        m.count(Endpoint::Connector, status, code.unwrap_or(""));
        m.connector_latency.observe(self.record.latency);
        self.hub.audit.record(&self.record);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(id) = &self.record.request_id {
            self.hub.cancel(&self.record.tunnel, id);
        }
        let out = self.record.bytes_out;
        self.finish(CLIENT_CLOSED, Some("client_closed_request"), out);
    }
}

fn body_len(b: &Body) -> u64 {
    match b {
        Body::Bytes(v) => v.len() as u64,
        _ => 0,
    }
}

/// The connector credential and whether it came from `Authorization`.
fn credential(req: &Request) -> (Option<&str>, bool) {
    match header(&req.headers, names::X_TUNNEL_AUTHORIZATION) {
        // Present but malformed is a wrong key, not a missing one.
        Some(v) => (Some(keys::bearer(v).unwrap_or("")), false),
        None => (bearer_of(&req.headers, names::AUTHORIZATION), true),
    }
}

/// Whether `Authorization` is the relay's and must not travel to the MCP
/// server. Admitted by certificate alone, the relay did not use it: it
/// belongs to the MCP server — unless it carries a relay key, which must
/// never reach the agent's side.
fn strip_authorization(req: &Request, keyless: bool, auth_is_relay_key: bool) -> bool {
    if keyless {
        bearer_of(&req.headers, names::AUTHORIZATION)
            .is_some_and(|k| k.starts_with(keys::SECRET_PREFIX))
    } else {
        auth_is_relay_key
    }
}

fn accepts_sse(req: &Request) -> bool {
    req.headers.get_all("accept").iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|part| {
                part.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            })
        })
    })
}

fn method_not_allowed() -> Response {
    error_response(
        405,
        "method_not_allowed",
        "this endpoint takes POST (JSON-RPC) and DELETE (end a session)",
    )
    .with_header("Allow", "POST, DELETE")
}

/// `/v1/mcp/{tunnel}[/{channel}]`: everything up to the enqueued command
/// happens now; what is boxed is only the wait for the agent's posts.
pub fn handle(
    hub: &Rc<Hub>,
    req: Request,
    tunnel_id: String,
    channel: Option<String>,
    memo: &ConnMemo,
) -> Pin<Box<dyn Future<Output = Response>>> {
    match start(hub, req, tunnel_id, channel, memo) {
        Ok(w) => Box::pin(async move {
            let Waiting {
                mut ex,
                answers,
                deadline,
                rpc_id,
                wants_sse,
            } = w;
            loop {
                match next_post(&ex.hub, &answers, deadline).await {
                    None => {
                        return ex.fail(
                            504,
                            "tunnel_timeout",
                            "the tunnel client did not answer in time",
                        )
                    }
                    Some(post) if post.kind == PostKind::Notify => {
                        if wants_sse {
                            return start_stream(ex, answers, deadline, rpc_id, post);
                        }
                        // A JSON-only client gets the final answer alone.
                    }
                    Some(post) => {
                        let r = final_response(post);
                        ex.finish(r.status, None, body_len(&r.body));
                        return r;
                    }
                }
            }
        }),
        Err(r) => Box::pin(std::future::ready(r)),
    }
}

/// A command enqueued, waiting for the agent's posts.
struct Waiting {
    ex: Exchange,
    answers: Receiver<Post>,
    deadline: Instant,
    rpc_id: Option<Vec<u8>>,
    wants_sse: bool,
}

/// Authorization, validation and the enqueue; `Err` is the answer already.
fn start(
    hub: &Rc<Hub>,
    mut req: Request,
    tunnel_id: String,
    channel: Option<String>,
    memo: &ConnMemo,
) -> Result<Waiting, Response> {
    let method = req.method.as_str();
    if method != "POST" && method != "DELETE" {
        hub.metrics
            .count(Endpoint::Connector, 405, "method_not_allowed");
        return Err(method_not_allowed());
    }
    let channel_name = channel.as_deref().unwrap_or("main");
    let mut ex = Exchange::new(hub.clone(), &req, tunnel_id, channel_name);
    let tunnel_id = ex.record.tunnel.as_str();
    let (cred, auth_is_relay_key) = credential(&req);
    let who = hub.authorize_with(
        memo,
        cred,
        req.client_cert.as_deref(),
        tunnel_id,
        Role::Connector,
        |p| (p.keyless, p.org_id.clone(), p.key_id.clone()),
    );
    let (keyless, org, key_id) = match who {
        Ok(w) => w,
        Err(e) => return Err(ex.fail(e.status(), e.code(), e.message())),
    };
    let auth_is_relay_key = strip_authorization(&req, keyless, auth_is_relay_key);
    ex.record.org = org;
    ex.record.key_id = key_id;
    let channel = match Channel::parse(channel_name) {
        Ok(c) => c,
        Err(e) => return Err(ex.fail(400, "invalid_channel_format", &format!("channel: {e}"))),
    };
    let limits = Limits {
        max_len: hub.settings.max_body,
        ..Limits::default()
    };
    let payload = match payload(&mut req, &limits, &mut ex.record) {
        Ok(p) => p,
        Err((code, msg)) => return Err(ex.fail(400, code, &msg)),
    };
    let headers = command_headers_from_client(
        req.headers
            .iter()
            .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v))),
        auth_is_relay_key,
    );
    let now = Instant::now();
    // Saturating: a configured timeout of centuries must not overflow Instant.
    let deadline = Deadline::after(now, hub.settings.response_timeout).at();
    let rpc_id = match &payload {
        Payload::Request { id, .. } => Some(id.clone()),
        _ => None,
    };
    let enqueued = hub.queue(&ex.record.tunnel).enqueue(
        NewCommand {
            channel: channel.as_str().to_string(),
            headers,
            payload,
            created_at: rfc3339(SystemTime::now()),
            deadline,
        },
        now,
    );
    let ticket = match enqueued {
        Ok(t) => t,
        Err(e) => return Err(ex.fail(e.status(), e.code(), &e.to_string())),
    };
    Metrics::add(&hub.metrics.commands_enqueued, 1);
    ex.record.request_id = Some(ticket.request_id);
    let wants_sse = accepts_sse(&req) && rpc_id.is_some();
    Ok(Waiting {
        ex,
        answers: ticket.answers,
        deadline,
        rpc_id,
        wants_sse,
    })
}

/// What the agent must do for this request; a refusal is a 400 with its code.
/// Fills in the audit record's method and tool name.
fn payload(
    req: &mut Request,
    limits: &Limits,
    record: &mut AuditRecord,
) -> Result<Payload, (&'static str, String)> {
    if req.method == http::Method::DELETE {
        if header(&req.headers, names::MCP_SESSION_ID).is_none_or(str::is_empty) {
            return Err((
                "missing_mcp_session_id",
                "DELETE needs the Mcp-Session-Id of the session to end".into(),
            ));
        }
        return Ok(Payload::SessionTermination);
    }
    validate(&req.body, limits)
        .map_err(|e| ("invalid_json_payload", format!("request body: {e}")))?;
    let info = jsonrpc::inspect(&req.body, limits).map_err(|e| match e {
        JsonError::NotJsonRpc(_) => ("invalid_jsonrpc", format!("not one JSON-RPC message: {e}")),
        e => ("invalid_json_payload", format!("request body: {e}")),
    })?;
    record.method = info.method.clone();
    if info.method.as_deref() == Some("tools/call") {
        record.tool = info.tool_name.clone();
    }
    let id = match (info.kind, info.id_bytes(&req.body)) {
        (MessageKind::Request, Some(id)) => Some(id.to_vec()),
        _ => None,
    };
    // The request is not needed after this: its body moves into the command.
    let body = Rc::new(std::mem::take(&mut req.body));
    Ok(match id {
        Some(id) => Payload::Request { id, body },
        // Notifications and the client's answers to server requests: 202 after the ack.
        _ => Payload::Notification { body },
    })
}

/// The next post for this command; `None` on timeout or when the command is gone.
async fn next_post(hub: &Hub, answers: &Receiver<Post>, deadline: Instant) -> Option<Post> {
    future::or(async { answers.recv().await.ok() }, async {
        hub.alarms.sleep_until(deadline).await;
        None
    })
    .await
}

/// The agent's final post as the client's HTTP answer.
fn final_response(post: Post) -> Response {
    // 204/304 cannot carry a body.
    let body = post
        .body
        .filter(|_| post.code != 204 && post.code != 304)
        .filter(|_| post.kind == PostKind::Response);
    let mut r = Response {
        status: post.code,
        headers: Vec::new(),
        body: Body::Empty,
    };
    copy_headers(&mut r, &post.headers);
    if let Some(b) = body {
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r.body = Body::Bytes(b);
    }
    r
}

/// The agent's allowlisted headers, except the content type the relay decides.
fn copy_headers(r: &mut Response, headers: &[(String, Vec<String>)]) {
    for (name, values) in headers {
        if name.eq_ignore_ascii_case("content-type") {
            continue;
        }
        for v in values {
            r.headers.push((name.clone(), v.clone()));
        }
    }
}

struct Streaming {
    ex: Exchange,
    answers: Receiver<Post>,
    deadline: Instant,
    rpc_id: Option<Vec<u8>>,
    first: Option<Vec<u8>>,
    done: bool,
}

fn event(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    write_event(&mut out, data);
    out
}

/// Switches to `text/event-stream`: the first notification, then each post as
/// it arrives, until the final one (or the deadline) ends the stream.
fn start_stream(
    ex: Exchange,
    answers: Receiver<Post>,
    deadline: Instant,
    rpc_id: Option<Vec<u8>>,
    first: Post,
) -> Response {
    let mut r = Response {
        status: 200,
        headers: vec![
            ("Content-Type".into(), "text/event-stream".into()),
            ("Cache-Control".into(), "no-cache".into()),
        ],
        body: Body::Empty,
    };
    copy_headers(&mut r, &first.headers);
    let st = Streaming {
        ex,
        answers,
        deadline,
        rpc_id,
        first: first.body.map(|b| event(&b)),
        done: false,
    };
    let s = stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(chunk) = st.first.take() {
            st.count(&chunk, true);
            return Some((chunk, st));
        }
        loop {
            match next_post(&st.ex.hub, &st.answers, st.deadline).await {
                None => {
                    // Status is already sent: end with a JSON-RPC error the client can match.
                    let mut body = Vec::new();
                    write_error(st.rpc_id.as_deref(), &TunnelFailure::timeout(), &mut body);
                    let chunk = event(&body);
                    st.done = true;
                    st.count(&chunk, false);
                    st.ex.finish_streamed(Some("tunnel_timeout"));
                    return Some((chunk, st));
                }
                Some(post) => {
                    let Some(body) = post.body else {
                        if post.kind.is_final() {
                            st.done = true;
                            st.ex.finish_streamed(None);
                            return None;
                        }
                        continue;
                    };
                    let chunk = event(&body);
                    st.count(&chunk, post.kind == PostKind::Notify);
                    if post.kind.is_final() {
                        st.done = true;
                        st.ex.finish_streamed(None);
                    }
                    return Some((chunk, st));
                }
            }
        }
    });
    r.body = Body::Stream(Box::pin(s) as Pin<Box<dyn Stream<Item = Vec<u8>>>>);
    r
}

impl Streaming {
    fn count(&mut self, chunk: &[u8], notify: bool) {
        self.ex.record.bytes_out += chunk.len() as u64;
        if notify {
            Metrics::add(&self.ex.hub.metrics.notifications_streamed, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};

    fn req(headers: &[(&'static str, &'static str)]) -> Request {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(*n, HeaderValue::from_static(v));
        }
        Request {
            method: Method::POST,
            uri: "/v1/mcp/x".parse().unwrap(),
            headers: h,
            body: Vec::new(),
            peer: None,
            client_cert: None,
        }
    }

    #[test]
    fn accept_parsing() {
        assert!(accepts_sse(&req(&[(
            "accept",
            "application/json, text/event-stream"
        )])));
        assert!(accepts_sse(&req(&[("accept", "TEXT/EVENT-STREAM;q=0.5")])));
        assert!(!accepts_sse(&req(&[("accept", "application/json")])));
        assert!(!accepts_sse(&req(&[])));
    }

    #[test]
    fn credential_choice() {
        let r = req(&[("authorization", "Bearer relaykey")]);
        assert_eq!(credential(&r), (Some("relaykey"), true));
        let r = req(&[
            ("authorization", "Bearer oauth-token"),
            ("x-tunnel-authorization", "Bearer relaykey"),
        ]);
        assert_eq!(credential(&r), (Some("relaykey"), false));
        let r = req(&[("x-tunnel-authorization", "relaykey")]);
        assert_eq!(credential(&r), (Some(""), false));
        let r = req(&[("authorization", "Basic abc")]);
        assert_eq!(credential(&r), (None, true));
    }

    #[test]
    fn keyless_callers_keep_their_authorization_unless_it_is_a_relay_key() {
        let oauth = req(&[("authorization", "Bearer oauth-token")]);
        assert!(!strip_authorization(&oauth, true, true));
        assert!(
            strip_authorization(&oauth, false, true),
            "key tunnels: as before"
        );
        let relay_key = req(&[("authorization", "Bearer mtk_0123")]);
        assert!(strip_authorization(&relay_key, true, true));
        let basic = req(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert!(!strip_authorization(&basic, true, true));
        let split = req(&[
            ("x-tunnel-authorization", "Bearer mtk_0123"),
            ("authorization", "Bearer oauth-token"),
        ]);
        assert!(!strip_authorization(&split, false, false));
    }

    #[test]
    fn final_response_shapes() {
        let post = Post {
            kind: PostKind::Response,
            code: 401,
            headers: vec![
                ("Content-Type".into(), vec!["text/event-stream".into()]),
                ("WWW-Authenticate".into(), vec!["Bearer realm=\"x\"".into()]),
            ],
            body: Some(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{}}".to_vec()),
        };
        let r = final_response(post);
        assert_eq!(r.status, 401);
        assert!(r
            .headers
            .contains(&("Content-Type".into(), "application/json".into())));
        assert!(r.headers.iter().any(|(n, _)| n == "WWW-Authenticate"));
        assert_eq!(
            r.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .count(),
            1
        );
        let ack = final_response(Post {
            kind: PostKind::NotifyAck,
            code: 202,
            headers: vec![],
            body: None,
        });
        assert_eq!(ack.status, 202);
        assert!(matches!(ack.body, Body::Empty));
        let no_content = final_response(Post {
            kind: PostKind::Response,
            code: 204,
            headers: vec![],
            body: Some(b"{}".to_vec()),
        });
        assert!(matches!(no_content.body, Body::Empty));
    }
}
