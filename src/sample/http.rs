//! Streamable HTTP for the sample server: `POST /mcp` (JSON or SSE answers),
//! `DELETE /mcp` (end a session), sessions issued on `initialize`.
//!
//! Lenient where a sample can be: a request without `Mcp-Session-Id` is
//! served (curl needs no handshake), but an unknown session id is 404, as the
//! spec asks, so clients see a terminated session as gone.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use http::{HeaderMap, Method};
use ring::rand::{SecureRandom, SystemRandom};

use crate::net::http_server::{Body, Request, Response};
use crate::proto::sse;

use super::rpc::{self, Reply};

pub const MCP_PATH: &str = "/mcp";
const SESSION_HEADER: &str = "mcp-session-id";
/// Live sessions kept; the oldest is forgotten beyond this, so a client that
/// never deletes its sessions cannot grow the server.
const MAX_SESSIONS: usize = 1024;
/// Pause between progress events: the stream visibly streams, and a tunnel
/// that buffers instead of forwarding shows up in timings.
pub const STEP_DELAY: Duration = Duration::from_millis(20);

/// How much the server tells on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    /// One line per request: method, JSON-RPC method, status.
    Lines,
    /// Also the MCP headers and the body received and answered (truncated),
    /// so `make run` can show exactly what crossed the last hop.
    Trace,
}

/// Bytes of a body shown by [`Verbosity::Trace`].
const TRACE_BODY: usize = 600;
/// Request headers shown by [`Verbosity::Trace`] (never credentials).
const TRACED_HEADERS: [&str; 6] = [
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

pub struct SampleServer {
    sessions: RefCell<VecDeque<String>>,
    rng: SystemRandom,
    verbosity: Verbosity,
}

impl SampleServer {
    pub fn new(verbosity: Verbosity) -> SampleServer {
        SampleServer {
            sessions: RefCell::new(VecDeque::new()),
            rng: SystemRandom::new(),
            verbosity,
        }
    }

    pub fn respond(&self, req: Request) -> Response {
        if self.verbosity >= Verbosity::Trace {
            trace_request(&req);
        }
        if req.uri.path() != MCP_PATH {
            return Response::error(404, "not_found", "the MCP endpoint is /mcp");
        }
        let response = match req.method {
            Method::POST => self.post(&req),
            Method::DELETE => self.delete(&req.headers),
            _ => Response::error(405, "method_not_allowed", "use POST or DELETE")
                .with_header("allow", "POST, DELETE"),
        };
        if self.verbosity >= Verbosity::Lines && req.method != Method::POST {
            eprintln!(
                "sample-server: {} {} → {}",
                req.method, MCP_PATH, response.status
            );
        }
        response
    }

    fn post(&self, req: &Request) -> Response {
        let content_type = header(&req.headers, "content-type").unwrap_or("");
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/json")
        {
            return Response::error(415, "unsupported_media_type", "POST application/json");
        }
        let accept = Accept::parse(header(&req.headers, "accept"));
        if !accept.json && !accept.sse {
            return Response::error(
                406,
                "not_acceptable",
                "accept application/json or text/event-stream",
            );
        }
        if let Some(id) = header(&req.headers, SESSION_HEADER) {
            if !self.sessions.borrow().iter().any(|s| s == id) {
                let body = rpc::error(b"null", -32001, "session not found");
                return Response::json(404, body);
            }
        }
        let outcome = rpc::handle(&req.body, accept.sse);
        let session = if outcome.opens_session {
            match self.open_session() {
                Some(id) => Some(id),
                None => {
                    return Response::error(500, "internal_error", "no randomness for a session id")
                }
            }
        } else {
            None
        };
        let response = match outcome.reply {
            Reply::Accepted => Response::empty(202),
            Reply::Message { status, body } if accept.json || status != 200 => {
                Response::json(status, body)
            }
            Reply::Message { body, .. } => sse_stream(Vec::new(), body),
            Reply::Progress {
                notifications,
                last,
            } => sse_stream(notifications, last),
        };
        if self.verbosity >= Verbosity::Lines {
            let method = outcome.method.as_deref().unwrap_or("-");
            eprintln!(
                "sample-server: POST {MCP_PATH} {method} → {}",
                response.status
            );
        }
        if self.verbosity >= Verbosity::Trace {
            if let Body::Bytes(body) = &response.body {
                eprintln!("sample-server:   answer: {}", shown(body));
            }
        }
        match session {
            Some(id) => response.with_header(SESSION_HEADER, &id),
            None => response,
        }
    }

    fn delete(&self, headers: &HeaderMap) -> Response {
        let Some(id) = header(headers, SESSION_HEADER) else {
            return Response::error(400, "missing_session", "DELETE needs Mcp-Session-Id");
        };
        let mut sessions = self.sessions.borrow_mut();
        match sessions.iter().position(|s| s == id) {
            Some(i) => {
                sessions.remove(i);
                Response::empty(200)
            }
            None => Response::json(404, rpc::error(b"null", -32001, "session not found")),
        }
    }

    fn open_session(&self) -> Option<String> {
        let mut raw = [0u8; 16];
        self.rng.fill(&mut raw).ok()?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut sessions = self.sessions.borrow_mut();
        if sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back(id.clone());
        Some(id)
    }
}

/// What the client's `Accept` allows. No header at all means anything.
struct Accept {
    json: bool,
    sse: bool,
}

impl Accept {
    fn parse(value: Option<&str>) -> Accept {
        let Some(value) = value else {
            return Accept {
                json: true,
                sse: false,
            };
        };
        let mut accept = Accept {
            json: false,
            sse: false,
        };
        for item in value.split(',') {
            let media = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match media.as_str() {
                "application/json" | "application/*" => accept.json = true,
                "text/event-stream" | "text/*" => accept.sse = true,
                "*/*" => accept.json = true,
                _ => {}
            }
        }
        accept
    }
}

fn trace_request(req: &Request) {
    let mut line = format!("sample-server: ← {} {}", req.method, req.uri.path());
    for name in TRACED_HEADERS {
        for value in req.headers.get_all(name) {
            line.push_str(&format!(
                "\n    {name}: {}",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
    }
    if !req.body.is_empty() {
        line.push_str(&format!("\n    body: {}", shown(&req.body)));
    }
    eprintln!("{line}");
}

/// A body for a log line: lossy UTF-8, cut at [`TRACE_BODY`] bytes.
fn shown(body: &[u8]) -> String {
    let cut = &body[..body.len().min(TRACE_BODY)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if body.len() > TRACE_BODY {
        text.push_str(&format!("… ({} bytes)", body.len()));
    }
    text
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The messages as one SSE stream, each event its own chunk (flushed as it
/// comes), progress spaced by [`STEP_DELAY`].
fn sse_stream(notifications: Vec<Vec<u8>>, last: Vec<u8>) -> Response {
    let events: Vec<Vec<u8>> = notifications
        .into_iter()
        .chain(std::iter::once(last))
        .map(|msg| {
            let mut out = Vec::with_capacity(msg.len() + 32);
            sse::write_event(&mut out, &msg);
            out
        })
        .collect();
    let stream = smol::stream::unfold((events.into_iter(), true), |(mut it, first)| async move {
        let event = it.next()?;
        if !first {
            async_io::Timer::after(STEP_DELAY).await;
        }
        Some((event, (it, false)))
    });
    Response::stream(200, stream)
        .with_header("content-type", "text/event-stream")
        .with_header("cache-control", "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::stream::StreamExt;

    fn request(method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        Request {
            method,
            uri: path.parse().unwrap(),
            headers: map,
            body: body.as_bytes().to_vec(),
            peer: None,
            client_cert: None,
        }
    }

    const JSON_AND_SSE: &str = "application/json, text/event-stream";

    fn post(server: &SampleServer, headers: &[(&str, &str)], body: &str) -> Response {
        let mut all = vec![
            ("content-type", "application/json"),
            ("accept", JSON_AND_SSE),
        ];
        all.extend_from_slice(headers);
        server.respond(request(Method::POST, MCP_PATH, &all, body))
    }

    fn header_of<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn bytes(r: Response) -> Vec<u8> {
        match r.body {
            Body::Empty => Vec::new(),
            Body::Bytes(b) => b,
            Body::Stream(s) => smol::block_on(s.collect::<Vec<Vec<u8>>>()).concat(),
        }
    }

    const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#;

    #[test]
    fn session_lifecycle() {
        let server = SampleServer::new(Verbosity::Quiet);
        let init = post(&server, &[], INIT);
        assert_eq!(init.status, 200);
        let sid = header_of(&init, SESSION_HEADER).unwrap().to_owned();
        assert_eq!(sid.len(), 32);
        let ok = post(
            &server,
            &[(SESSION_HEADER, &sid)],
            r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#,
        );
        assert_eq!(ok.status, 200);
        let notified = post(
            &server,
            &[(SESSION_HEADER, &sid)],
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        );
        assert_eq!((notified.status, bytes(notified)), (202, Vec::new()));

        let del = server.respond(request(
            Method::DELETE,
            MCP_PATH,
            &[(SESSION_HEADER, &sid)],
            "",
        ));
        assert_eq!(del.status, 200);
        let gone = post(
            &server,
            &[(SESSION_HEADER, &sid)],
            r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
        );
        assert_eq!(gone.status, 404);
        let again = server.respond(request(
            Method::DELETE,
            MCP_PATH,
            &[(SESSION_HEADER, &sid)],
            "",
        ));
        assert_eq!(again.status, 404);
        let none = server.respond(request(Method::DELETE, MCP_PATH, &[], ""));
        assert_eq!(none.status, 400);
    }

    #[test]
    fn sessions_are_bounded() {
        let server = SampleServer::new(Verbosity::Quiet);
        let first = header_of(&post(&server, &[], INIT), SESSION_HEADER)
            .unwrap()
            .to_owned();
        for _ in 0..MAX_SESSIONS {
            post(&server, &[], INIT);
        }
        assert_eq!(server.sessions.borrow().len(), MAX_SESSIONS);
        let evicted = post(
            &server,
            &[(SESSION_HEADER, &first)],
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
        );
        assert_eq!(evicted.status, 404);
    }

    #[test]
    fn progress_is_an_sse_stream_ending_with_the_result() {
        let server = SampleServer::new(Verbosity::Quiet);
        let r = post(
            &server,
            &[],
            r#"{"jsonrpc":"2.0","id":"p","method":"tools/call","params":{"name":"progress","arguments":{"steps":2},"_meta":{"progressToken":"t"}}}"#,
        );
        assert_eq!(header_of(&r, "content-type"), Some("text/event-stream"));
        let text = String::from_utf8(bytes(r)).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{text}");
        assert!(events[0].contains(r#""progress":1"#) && events[1].contains(r#""progress":2"#));
        assert!(events[2]
            .starts_with("event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"p\",\"result\""));
    }

    #[test]
    fn json_answers_for_json_clients_and_sse_for_sse_only_clients() {
        let server = SampleServer::new(Verbosity::Quiet);
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let json = post(&server, &[], ping);
        assert_eq!(header_of(&json, "content-type"), Some("application/json"));
        let sse_only = server.respond(request(
            Method::POST,
            MCP_PATH,
            &[
                ("content-type", "application/json"),
                ("accept", "text/event-stream"),
            ],
            ping,
        ));
        assert_eq!(
            header_of(&sse_only, "content-type"),
            Some("text/event-stream")
        );
        assert_eq!(
            String::from_utf8(bytes(sse_only)).unwrap(),
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"
        );
    }

    #[test]
    fn http_level_refusals() {
        let server = SampleServer::new(Verbosity::Quiet);
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let wrong_path = server.respond(request(Method::POST, "/other", &[], ping));
        assert_eq!(wrong_path.status, 404);
        let get = server.respond(request(Method::GET, MCP_PATH, &[], ""));
        assert_eq!(
            (get.status, header_of(&get, "allow")),
            (405, Some("POST, DELETE"))
        );
        let text = server.respond(request(
            Method::POST,
            MCP_PATH,
            &[("content-type", "text/plain")],
            ping,
        ));
        assert_eq!(text.status, 415);
        let html = server.respond(request(
            Method::POST,
            MCP_PATH,
            &[
                ("content-type", "application/json"),
                ("accept", "text/html"),
            ],
            ping,
        ));
        assert_eq!(html.status, 406);
        let garbage = post(&server, &[], "{not json");
        assert_eq!(garbage.status, 400);
    }
}
