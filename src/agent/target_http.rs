//! Forwarding one command to a Streamable HTTP MCP server.

use std::io::{ErrorKind, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::Endpoint;
use super::readiness::Readiness;
use super::target::{
    Budget, Expect, NotifyVerdict, Outcome, RespHeaders, TargetBuffers, MAX_RESPONSE_BYTES,
};
use crate::proto::channel::Channel;
use crate::proto::command::Header;
use crate::proto::failure::{FailureSource as S, TransportErrorKind as K, TunnelFailure};
use crate::proto::headers::{forward_header_refs, response_allowlist, HeaderLimits};
use crate::proto::json;
use crate::proto::jsonrpc::{inspect, same_id, MessageKind};
use crate::proto::sse::SseError;

const PROBE_BODY: &[u8] = br#"{"jsonrpc":"2.0","id":"mcp-tunnel-readiness-probe","method":"ping"}"#;

pub struct HttpTarget {
    agent: ureq::Agent,
    url: Endpoint,
    static_headers: Vec<Header>,
    readiness: Arc<Readiness>,
    /// The channel whose readiness this target reports.
    channel: Channel,
}

fn fail(source: S, kind: K) -> TunnelFailure {
    TunnelFailure {
        source,
        kind: Some(kind),
        upstream_status: None,
    }
}

pub fn json_limits() -> json::Limits {
    json::Limits {
        max_depth: 64,
        max_len: MAX_RESPONSE_BYTES,
    }
}

/// Where the exchange was when ureq failed: before or after the response head.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    Body,
}

impl HttpTarget {
    pub fn new(
        agent: ureq::Agent,
        url: String,
        static_headers: Vec<Header>,
        readiness: Arc<Readiness>,
        channel: Channel,
    ) -> HttpTarget {
        readiness.register(&channel);
        HttpTarget {
            agent,
            url: Endpoint::new(url),
            static_headers,
            readiness,
            channel,
        }
    }

    fn set_ready(&self, ready: bool) {
        self.readiness.set_channel_ready(&self.channel, ready);
    }

    fn request<B>(
        &self,
        mut req: ureq::RequestBuilder<B>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> ureq::RequestBuilder<B> {
        for &(name, value) in headers {
            // ureq sets Host from the URL; a forwarded one would win, so it never
            // passes. Accept-Encoding neither: answers pass through byte for byte,
            // and this client decodes no content coding.
            if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("accept-encoding") {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) else {
                log::debug!("dropping a header that is not valid HTTP");
                continue;
            };
            // Straight into the map: the builder is not moved once per header.
            match req.headers_mut() {
                Some(map) => {
                    let _ = map.try_append(name, value);
                }
                None => req = req.header(name, value),
            }
        }
        req.config().timeout_global(Some(timeout)).build()
    }

    /// POSTs a JSON-RPC message; posts notifications through `on_notify` as they
    /// arrive; returns the final outcome (the answer bytes in `bufs.body`).
    pub fn forward(
        &self,
        command_headers: &[Header],
        body: &[u8],
        expect: Expect<'_>,
        budget: Budget,
        bufs: &mut TargetBuffers,
        on_notify: &mut dyn FnMut(&[u8]) -> NotifyVerdict,
    ) -> Outcome {
        let Some(timeout) = budget.remaining(Instant::now()) else {
            return Outcome::Expired;
        };
        let mut headers = Vec::with_capacity(self.static_headers.len() + command_headers.len() + 2);
        if let Err(e) = forward_header_refs(
            &self.static_headers,
            command_headers,
            &HeaderLimits::default(),
            &mut headers,
        ) {
            log::warn!("command headers refused: {e}");
            return Outcome::Failure(fail(S::ClientInternal, K::Unknown));
        }
        let req = self.request(self.url.post(&self.agent), &headers, timeout);
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(e) => return self.error_outcome(&e, Phase::Request, budget),
        };
        self.set_ready(true);
        let status = resp.status().as_u16();
        let headers = allowlisted(&resp);
        let content_type = content_type(&resp);

        let id = match expect {
            Expect::Ack => {
                super::client::drain(&mut resp);
                return Outcome::Ack { status, headers };
            }
            Expect::Response { id } => id,
        };
        let success = (200..300).contains(&status);
        if success && content_type == "text/event-stream" {
            return self.stream(resp, status, headers, id, budget, bufs, on_notify);
        }
        let mut reader = resp.into_body().into_reader();
        if let Err(outcome) = read_capped(&mut reader, bufs, budget, self) {
            return match outcome {
                Outcome::Failure(f) if !success && f.kind == Some(K::ResponseBodyTooLarge) => {
                    Outcome::Failure(TunnelFailure::target_http(status))
                }
                o => o,
            };
        }
        if success {
            if bufs.body.is_empty() {
                return Outcome::Failure(fail(S::Protocol, K::ResponseBodyMissing));
            }
            if !is_json_type(&content_type) {
                return Outcome::Failure(fail(S::Protocol, K::NonProtocolResponse));
            }
            match final_message(&bufs.body, id) {
                Ok(()) => Outcome::Answer { status, headers },
                Err(kind) => Outcome::Failure(fail(S::Protocol, kind)),
            }
        } else {
            // A JSON-RPC error for this id keeps its HTTP status; anything else
            // is summarised without leaking the body.
            let is_rpc_error = inspect(&bufs.body, &json_limits()).is_ok_and(|info| {
                matches!(info.kind, MessageKind::Error) && ids_match(id, &bufs.body, info.id)
            });
            if is_rpc_error {
                Outcome::Answer { status, headers }
            } else {
                Outcome::Failure(TunnelFailure::target_http(status))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        resp: http::Response<ureq::Body>,
        status: u16,
        headers: RespHeaders,
        id: Option<&[u8]>,
        budget: Budget,
        bufs: &mut TargetBuffers,
        on_notify: &mut dyn FnMut(&[u8]) -> NotifyVerdict,
    ) -> Outcome {
        enum State {
            Open,
            Final,
            Failed(K),
            Aborted,
        }
        let mut reader = resp.into_body().into_reader();
        bufs.stream_chunk();
        bufs.sse.reset();
        bufs.body.clear();
        let limits = json_limits();
        let mut state = State::Open;
        loop {
            let n = match reader.read(&mut bufs.read) {
                Ok(0) => return Outcome::Failure(fail(S::TransportClosed, K::UnexpectedEof)),
                Ok(n) => n,
                Err(e) => return self.error_outcome(&ureq::Error::from(e), Phase::Body, budget),
            };
            let body = &mut bufs.body;
            let largest = &mut bufs.largest_event;
            let fed = bufs.sse.feed(&bufs.read[..n], &mut |ev| {
                *largest = (*largest).max(ev.data.len());
                // MCP messages use the default type; `ping` and anything else is not ours.
                if !matches!(state, State::Open) || !matches!(ev.event, None | Some("message")) {
                    return;
                }
                let info = match inspect(ev.data, &limits) {
                    Ok(info) => info,
                    Err(_) => {
                        state = State::Failed(K::MalformedJson);
                        return;
                    }
                };
                match info.kind {
                    MessageKind::Notification => {
                        if on_notify(ev.data) == NotifyVerdict::Abort {
                            state = State::Aborted;
                        }
                    }
                    MessageKind::Response | MessageKind::Error
                        if ids_match(id, ev.data, info.id.clone()) =>
                    {
                        body.extend_from_slice(ev.data);
                        state = State::Final;
                    }
                    // A server→client request, another id, a batch: not an answer we can carry.
                    _ => state = State::Failed(K::InvalidProtocolResponse),
                }
            });
            match fed {
                Ok(()) => {}
                Err(SseError::EventTooLarge) => {
                    return Outcome::Failure(fail(S::Protocol, K::ResponseBodyTooLarge))
                }
                Err(_) => return Outcome::Failure(fail(S::Protocol, K::MalformedJson)),
            }
            match state {
                State::Open => {}
                // Dropping the reader closes the stream; for 2026-07-28 servers
                // that is also the cancellation signal, which is what we want.
                State::Final => return Outcome::Answer { status, headers },
                State::Failed(kind) => return Outcome::Failure(fail(S::Protocol, kind)),
                State::Aborted => return Outcome::Aborted,
            }
        }
    }

    /// DELETE with the command's headers (they carry Mcp-Session-Id).
    pub fn terminate_session(&self, command_headers: &[Header], budget: Budget) -> Outcome {
        let Some(timeout) = budget.remaining(Instant::now()) else {
            return Outcome::Expired;
        };
        let mut headers = Vec::new();
        if let Err(e) = forward_header_refs(
            &self.static_headers,
            command_headers,
            &HeaderLimits::default(),
            &mut headers,
        ) {
            log::warn!("command headers refused: {e}");
            return Outcome::Failure(fail(S::ClientInternal, K::Unknown));
        }
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        let req = self.request(self.url.delete(&self.agent), &headers, timeout);
        match req.call() {
            Ok(mut resp) => {
                self.set_ready(true);
                let status = resp.status().as_u16();
                let headers = allowlisted(&resp);
                super::client::drain(&mut resp);
                Outcome::Ack { status, headers }
            }
            Err(e) => self.error_outcome(&e, Phase::Request, budget),
        }
    }

    /// Readiness probe: any answer except 404 and 5xx means the server is up
    /// (a 401 from an auth-protected server counts).
    pub fn probe(&self, timeout: Duration) -> Result<u16, String> {
        let mut headers: Vec<(&str, &str)> = self
            .static_headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        headers.push(("Content-Type", "application/json"));
        headers.push(("Accept", "application/json, text/event-stream"));
        let req = self.request(self.url.post(&self.agent), &headers, timeout);
        match req.send(PROBE_BODY) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                super::client::drain(&mut resp);
                let ready = status != 404 && status < 500;
                self.set_ready(ready);
                if ready {
                    Ok(status)
                } else {
                    Err(format!("MCP server answered HTTP {status}"))
                }
            }
            Err(e) => {
                let why = match super::edge::failure(&e) {
                    Some(f) => f.reason,
                    None => failure_of(&e, Phase::Request).source.as_str().to_string(),
                };
                let reason = format!("MCP server unreachable: {why}");
                self.readiness
                    .set_channel(&self.channel, Some(reason.clone()));
                Err(reason)
            }
        }
    }

    fn error_outcome(&self, e: &ureq::Error, phase: Phase, budget: Budget) -> Outcome {
        if budget.expired(Instant::now()) {
            return Outcome::Expired;
        }
        let f = failure_of(e, phase);
        if matches!(f.source, S::Dns | S::Connect | S::Tls) {
            let reason = match super::edge::failure(e) {
                Some(edge) => format!("MCP server unreachable: {}", edge.reason),
                None => format!("MCP server unreachable: {}", f.source.as_str()),
            };
            self.readiness.set_channel(&self.channel, Some(reason));
        }
        // The error text can carry the MCP URL (and a token in its query): not logged.
        Outcome::Failure(f)
    }
}

fn allowlisted(resp: &http::Response<ureq::Body>) -> RespHeaders {
    response_allowlist(
        resp.headers()
            .iter()
            .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v))),
    )
}

/// The media type without parameters, lowercase.
fn content_type(resp: &http::Response<ureq::Body>) -> String {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn is_json_type(ct: &str) -> bool {
    ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"))
}

fn ids_match(expected: Option<&[u8]>, msg: &[u8], got: Option<std::ops::Range<usize>>) -> bool {
    match (expected, got.and_then(|r| msg.get(r))) {
        (Some(want), Some(have)) => same_id(want, have),
        _ => false,
    }
}

/// Checks that `msg` is the answer (result or error) to the request with `id`.
fn final_message(msg: &[u8], id: Option<&[u8]>) -> Result<(), K> {
    let info = inspect(msg, &json_limits()).map_err(|_| K::MalformedJson)?;
    match info.kind {
        MessageKind::Response | MessageKind::Error if ids_match(id, msg, info.id.clone()) => Ok(()),
        _ => Err(K::InvalidProtocolResponse),
    }
}

/// Reads the whole body into `bufs.body`, at most MAX_RESPONSE_BYTES.
fn read_capped(
    reader: impl Read,
    bufs: &mut TargetBuffers,
    budget: Budget,
    target: &HttpTarget,
) -> Result<(), Outcome> {
    bufs.body.clear();
    // Straight into `body` (its capacity is kept between commands): no
    // intermediate chunk buffer, no second copy. One byte over the cap is
    // enough to tell an oversized answer.
    let cap = MAX_RESPONSE_BYTES as u64 + 1;
    match reader.take(cap).read_to_end(&mut bufs.body) {
        Ok(_) if bufs.body.len() > MAX_RESPONSE_BYTES => {
            Err(Outcome::Failure(fail(S::Protocol, K::ResponseBodyTooLarge)))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(target.error_outcome(&ureq::Error::from(e), Phase::Body, budget)),
    }
}

/// Maps a ureq error to the failure source and kind the protocol names. No
/// error text goes into the failure (it may carry URLs).
fn failure_of(e: &ureq::Error, phase: Phase) -> TunnelFailure {
    use ureq::Error as E;
    // Proxy refusals (`connect`) and TLS verdicts (`tls`) first: ureq reports
    // handshake errors as I/O errors, which would otherwise read as protocol.
    if let Some(f) = super::edge::failure(e) {
        return f.tunnel;
    }
    match e {
        E::HostNotFound => fail(S::Dns, K::Dns),
        E::ConnectionFailed => fail(S::Connect, K::Dial),
        E::Timeout(_) => fail(S::Timeout, K::Timeout),
        E::Tls(_) | E::Rustls(_) | E::Pem(_) | E::TlsRequired => fail(S::Tls, K::Tls),
        E::Protocol(_) | E::LargeResponseHeader(..) => {
            fail(S::Protocol, K::InvalidProtocolResponse)
        }
        E::BodyExceedsLimit(_) => fail(S::Protocol, K::ResponseBodyTooLarge),
        E::Io(io) => io_failure(io, phase),
        _ => fail(S::ClientInternal, K::Unknown),
    }
}

fn io_failure(io: &std::io::Error, phase: Phase) -> TunnelFailure {
    match io.kind() {
        ErrorKind::ConnectionRefused => fail(S::Connect, K::ConnectionRefused),
        ErrorKind::HostUnreachable => fail(S::Connect, K::HostUnreachable),
        ErrorKind::NetworkUnreachable => fail(S::Connect, K::NetworkUnreachable),
        ErrorKind::AddrNotAvailable => fail(S::Connect, K::Dial),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => fail(S::Timeout, K::Timeout),
        ErrorKind::ConnectionReset => fail(S::TransportClosed, K::ConnectionReset),
        ErrorKind::ConnectionAborted => fail(S::TransportClosed, K::ConnectionAborted),
        ErrorKind::BrokenPipe => fail(S::TransportClosed, K::ClosedPipe),
        ErrorKind::UnexpectedEof => fail(S::TransportClosed, K::UnexpectedEof),
        ErrorKind::InvalidData if phase == Phase::Body => {
            fail(S::Protocol, K::ResponseBodyUnreadable)
        }
        ErrorKind::InvalidData => fail(S::Protocol, K::InvalidProtocolResponse),
        _ if phase == Phase::Body => fail(S::TransportClosed, K::ResponseBodyUnreadable),
        _ => fail(S::TransportClosed, K::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_sources() {
        let f = |k| io_failure(&std::io::Error::from(k), Phase::Request).source;
        assert_eq!(f(ErrorKind::ConnectionRefused), S::Connect);
        assert_eq!(f(ErrorKind::ConnectionReset), S::TransportClosed);
        assert_eq!(f(ErrorKind::UnexpectedEof), S::TransportClosed);
        assert_eq!(f(ErrorKind::TimedOut), S::Timeout);
        assert_eq!(
            failure_of(&ureq::Error::HostNotFound, Phase::Request).source,
            S::Dns
        );
        assert_eq!(
            failure_of(&ureq::Error::Timeout(ureq::Timeout::Global), Phase::Body).kind,
            Some(K::Timeout)
        );
    }

    #[test]
    fn content_types() {
        assert!(is_json_type("application/json"));
        assert!(is_json_type("application/vnd.x+json"));
        assert!(!is_json_type("text/html"));
    }
}
