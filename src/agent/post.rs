//! Response POSTs with the retry rules of each kind (final vs notification),
//! bounded by the command deadline.

use std::time::{Duration, Instant, SystemTime};

use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue};

use super::client::drain;
use super::control_plane::{read_error_code, ControlPlane};
use super::metrics::RetryKind;
use super::random;
use crate::proto::command::ShardToken;
use crate::proto::retry::{
    decide_post, parse_retry_after, Attempt, Backoff, PostDecision, PostKind,
};
use crate::proto::timeout::Deadline;

/// A few attempts: enough to ride out a relay restart, few enough to stay inside
/// typical deadlines.
pub const MAX_ATTEMPTS: u32 = 4;
/// Per-attempt cap when the command has no deadline.
pub const POST_TIMEOUT: Duration = Duration::from_secs(30);
const SHARD_TOKEN: HeaderName = HeaderName::from_static("x-tunnel-shard-token");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcome {
    Delivered,
    /// 404: the control plane no longer wants this command (fulfilled or expired).
    AlreadyFulfilled,
    /// Not delivered: a non-retryable status, or retries used up.
    Failed,
    /// The deadline passed before the post could be (re)sent.
    DeadlineExpired,
}

impl ControlPlane {
    /// POSTs one response body (already encoded) for the command holding `shard`.
    pub fn post_response(
        &self,
        shard: &ShardToken,
        body: &[u8],
        kind: PostKind,
        deadline: Option<Deadline>,
        request_id: &str,
    ) -> PostOutcome {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut attempts: u32 = 0;
        let mut key_reloaded = false;
        loop {
            let timeout = match deadline {
                Some(d) => match d.remaining(Instant::now()) {
                    Some(r) => r.min(POST_TIMEOUT),
                    None => return PostOutcome::DeadlineExpired,
                },
                None => POST_TIMEOUT,
            };
            attempts += 1;
            let mut req = self.with_headers(self.response.post(&self.agent));
            match (req.headers_mut(), HeaderValue::from_str(shard.as_str())) {
                (Some(headers), Ok(token)) => {
                    let _ = headers.try_append(CONTENT_TYPE, JSON);
                    let _ = headers.try_append(SHARD_TOKEN, token);
                }
                // Not a header value (or the builder already failed): ureq's
                // builder reports it, as it always did.
                _ => {
                    req = req
                        .header(CONTENT_TYPE, JSON)
                        .header(SHARD_TOKEN, shard.as_str())
                }
            }
            let req = req.config().timeout_global(Some(timeout)).build();
            let mut retry_after = None;
            let attempt = match req.send(body) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    if status == 429 || status == 503 {
                        retry_after = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    }
                    if (200..300).contains(&status) {
                        drain(&mut resp);
                    } else {
                        let code = read_error_code(&mut resp);
                        log::debug!(
                            "response post for {request_id}: HTTP {status}{}",
                            code.map(|c| format!(" ({c})")).unwrap_or_default()
                        );
                    }
                    if status == 401 && !key_reloaded {
                        key_reloaded = true;
                        if self.key.reload() {
                            attempts -= 1;
                            continue;
                        }
                    }
                    Attempt::Status(status)
                }
                Err(e) => {
                    log::debug!("response post for {request_id} failed: {e}");
                    if failed_before_send(&e) {
                        Attempt::NetworkBeforeSend
                    } else {
                        Attempt::NetworkAfterSend
                    }
                }
            };
            match decide_post(kind, attempt, attempts, MAX_ATTEMPTS) {
                PostDecision::Done => return PostOutcome::Delivered,
                PostDecision::AlreadyFulfilled => return PostOutcome::AlreadyFulfilled,
                PostDecision::GiveUp => {
                    log::warn!(
                        "response post for {request_id} not delivered: {}",
                        describe(attempt)
                    );
                    return PostOutcome::Failed;
                }
                PostDecision::Retry => {
                    let jitter = backoff.next(random::u64());
                    let delay = retry_after.map_or(jitter, |ra| ra.max(jitter));
                    if let Some(d) = deadline {
                        let wake = Instant::now() + delay;
                        if wake >= d.at() {
                            log::warn!(
                                "response post for {request_id}: no time left before the deadline to retry ({})",
                                describe(attempt)
                            );
                            return PostOutcome::DeadlineExpired;
                        }
                    }
                    self.metrics.retry(match kind {
                        PostKind::Final => RetryKind::FinalPost,
                        PostKind::Notify => RetryKind::NotifyPost,
                    });
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

fn describe(a: Attempt) -> String {
    match a {
        Attempt::Status(s) => format!("HTTP {s}"),
        Attempt::NetworkBeforeSend => "connection failed".to_string(),
        Attempt::NetworkAfterSend => "connection lost".to_string(),
    }
}

/// Errors that happen before any request byte could reach the server: resend
/// is safe even for notifications.
pub fn failed_before_send(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Tls(_) => true,
        ureq::Error::Rustls(_) => true,
        // The proxy refused the tunnel: nothing reached the control plane.
        ureq::Error::ConnectProxyFailed(_) => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect),
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}
