//! The control-plane client: URLs, the headers sent on every request, the
//! runtime key (re-read from its file on 401), the startup metadata check and
//! the long poll. Response POSTs live in `post.rs`.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::client::{drain, Endpoint};
use super::config::AgentConfig;
use super::metrics::AgentMetrics;
use super::secret::{Secret, SecretSource};
use crate::proto::channel::Channel;
use crate::proto::command::{decode_poll, Decoded, PollLimits};
use crate::proto::error_body;
use crate::proto::retry::{classify_poll, parse_retry_after, PollOutcome};

pub const CLIENT_NAME: &str = "mcp-tunnel";
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The most commands one poll asks for.
pub const MAX_POLL_LIMIT: usize = 25;
/// The reference client's guard on top of the requested poll wait.
pub const POLL_GUARD: Duration = Duration::from_secs(5);
/// Startup metadata and small requests.
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Error bodies are read only for their `code`; more than this is not an error body.
pub const MAX_ERROR_BODY: u64 = 64 * 1024;

/// The runtime key and where it came from.
pub struct KeyStore {
    source: SecretSource,
    current: Mutex<Key>,
}

/// A key and its `Authorization` value, built when the key is set rather
/// than on every request.
struct Key {
    secret: Secret,
    bearer: Bearer,
}

/// What a control-plane request carries as `Authorization`.
#[derive(Clone)]
pub enum Bearer {
    /// No key configured (admitted by client certificate): no header.
    None,
    /// `Bearer {key}`, marked sensitive (Debug prints no value).
    Value(http::HeaderValue),
    /// A key that makes no valid header value: sent as text, so ureq
    /// refuses each request with its error, as it always did.
    Invalid(Secret),
}

impl Key {
    fn new(secret: Secret) -> Key {
        let bearer = if secret.expose().is_empty() {
            Bearer::None
        } else {
            match http::HeaderValue::try_from(format!("Bearer {}", secret.expose())) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    Bearer::Value(v)
                }
                Err(_) => Bearer::Invalid(secret.clone()),
            }
        };
        Key { secret, bearer }
    }
}

impl KeyStore {
    pub fn new(source: SecretSource, initial: Secret) -> KeyStore {
        KeyStore {
            source,
            current: Mutex::new(Key::new(initial)),
        }
    }

    pub fn current(&self) -> Secret {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .secret
            .clone()
    }

    /// The `Authorization` of the current key (a clone shares its bytes).
    pub fn bearer(&self) -> Bearer {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bearer
            .clone()
    }

    /// Re-reads a key file after a 401, so a rotated key is used without a
    /// restart. Returns true when the key changed.
    pub fn reload(&self) -> bool {
        if !self.source.is_reloadable() {
            return false;
        }
        let env = |n: &str| std::env::var(n).ok();
        match self.source.resolve(&env) {
            Ok(fresh) => {
                let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
                if cur.secret == fresh {
                    false
                } else {
                    log::info!("control plane key file changed; using the new key");
                    *cur = Key::new(fresh);
                    true
                }
            }
            Err(e) => {
                log::warn!("cannot re-read the control plane key file: {e}");
                false
            }
        }
    }
}

pub struct ControlPlane {
    pub(crate) agent: ureq::Agent,
    /// `{base}{path}/v1/tunnels/{id}`
    tunnel: Endpoint,
    /// `{tunnel_url}/poll?limit={n}{poll_query}` for `n` in 1..=[`MAX_POLL_LIMIT`]
    /// (index `n - 1`) and `{tunnel_url}/response`, built and parsed once.
    polls: Vec<Endpoint>,
    pub(crate) response: Endpoint,
    /// The fixed headers of every request, parsed once (`None`: one of them
    /// is not a valid header value, and ureq reports it per request as before).
    fixed_headers: Option<Vec<(http::HeaderName, http::HeaderValue)>>,
    pub(crate) key: KeyStore,
    instance_id: String,
    server_info: String,
    organization: Option<String>,
    poll_timeout: Duration,
    poll_buf: Mutex<Vec<u8>>,
    poll_limits: PollLimits,
    /// Counts response-post retries (the rest is counted by the loop and workers).
    pub(crate) metrics: Arc<AgentMetrics>,
}

/// What one poll produced.
pub enum PollResult {
    /// `receipt` was taken when the response head arrived, before the body was read.
    Batch {
        receipt: Instant,
        commands: Vec<Decoded>,
    },
    Idle,
    Failed(PollFailure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollFailure {
    /// Network error or timeout; no response.
    Network(String),
    /// A proxy or TLS failure (agent::edge): needs the operator, shown in readiness.
    Edge(String),
    /// An HTTP status that is retried (429, 5xx, other 4xx).
    Status {
        status: u16,
        code: Option<String>,
        retry_after: Option<Duration>,
    },
    /// 401/403: needs the operator.
    Auth { status: u16, code: Option<String> },
    /// 404: the tunnel does not exist.
    NotFound { code: Option<String> },
    /// A 200 whose body is unusable (malformed, too large, truncated).
    Body(String),
}

impl std::fmt::Display for PollFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = |c: &Option<String>| c.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
        match self {
            PollFailure::Network(e) => write!(f, "network error: {e}"),
            PollFailure::Edge(e) => write!(f, "cannot reach the control plane: {e}"),
            PollFailure::Status { status, code: c, .. } => write!(f, "HTTP {status}{}", code(c)),
            PollFailure::Auth { status, code: c }
                if c.as_deref() == Some("client_certificate_required") =>
            {
                write!(
                    f,
                    "HTTP {status}{}: the tunnel admits agents by client certificate; set --control-plane.client-cert and --control-plane.client-key (CONTROL_PLANE_CLIENT_CERT, CONTROL_PLANE_CLIENT_KEY) to a certificate from the relay's client CA",
                    code(c)
                )
            }
            PollFailure::Auth { status, code: c } => write!(
                f,
                "HTTP {status}{}: the control plane rejected the API key; check --control-plane.api-key (CONTROL_PLANE_API_KEY) and the key's access to this tunnel",
                code(c)
            ),
            PollFailure::NotFound { code: c } => write!(
                f,
                "HTTP 404{}: the tunnel does not exist; check --control-plane.tunnel-id (CONTROL_PLANE_TUNNEL_ID)",
                code(c)
            ),
            PollFailure::Body(e) => write!(f, "unusable poll body: {e}"),
        }
    }
}

/// Why the startup metadata check failed.
#[derive(Debug)]
pub enum StartupError {
    Auth { status: u16, code: Option<String> },
    NotFound { code: Option<String> },
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartupError::Auth { status, code } => {
                write!(
                    f,
                    "{}",
                    PollFailure::Auth {
                        status: *status,
                        code: code.clone()
                    }
                )
            }
            StartupError::NotFound { code } => {
                write!(f, "{}", PollFailure::NotFound { code: code.clone() })
            }
        }
    }
}

impl std::error::Error for StartupError {}

/// The query parameters after `limit`, in the order they always had.
fn poll_query(timeout: Duration, channels: &[Channel]) -> String {
    let mut q = format!("&timeout_ms={}", timeout.as_millis());
    for c in channels {
        q.push_str("&channel=");
        q.push_str(c.as_str());
    }
    q
}

/// The headers [`ControlPlane::with_headers`] adds besides Authorization, in
/// its order.
fn header_pairs<'a>(
    instance_id: &'a str,
    server_info: &'a str,
    organization: Option<&'a str>,
) -> impl Iterator<Item = (&'static str, &'a str)> {
    [
        ("x-tunnel-client-name", CLIENT_NAME),
        ("x-tunnel-client-version", CLIENT_VERSION),
        ("x-tunnel-client-instance-id", instance_id),
        ("x-tunnel-mcp-server-info", server_info),
        ("accept", "application/json"),
    ]
    .into_iter()
    .chain(organization.map(|org| ("openai-organization", org)))
}

/// [`header_pairs`] parsed once, or `None` when one value is not a valid
/// header value.
fn fixed_headers(
    instance_id: &str,
    server_info: &str,
    organization: Option<&str>,
) -> Option<Vec<(http::HeaderName, http::HeaderValue)>> {
    header_pairs(instance_id, server_info, organization)
        .map(|(n, v)| {
            Some((
                http::HeaderName::from_static(n),
                http::HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

impl ControlPlane {
    pub fn new(
        cfg: &AgentConfig,
        agent: ureq::Agent,
        instance_id: String,
        server_info: String,
    ) -> ControlPlane {
        let tunnel_url = format!(
            "{}{}/v1/tunnels/{}",
            cfg.base_url, cfg.url_path, cfg.tunnel_id
        );
        let fixed_headers =
            fixed_headers(&instance_id, &server_info, cfg.organization_id.as_deref());
        // The query after `limit`: `&timeout_ms=…` and a `&channel=…` per
        // explicit channel (names are `[a-z0-9_-]`: nothing to escape).
        let query = poll_query(
            cfg.poll_timeout,
            if cfg.explicit_channels {
                &cfg.channels
            } else {
                &[]
            },
        );
        ControlPlane {
            agent,
            polls: (1..=MAX_POLL_LIMIT)
                .map(|n| Endpoint::new(format!("{tunnel_url}/poll?limit={n}{query}")))
                .collect(),
            response: Endpoint::new(format!("{tunnel_url}/response")),
            tunnel: Endpoint::new(tunnel_url),
            fixed_headers,
            key: KeyStore::new(cfg.api_key_source.clone(), cfg.api_key.clone()),
            instance_id,
            server_info,
            organization: cfg.organization_id.clone(),
            poll_timeout: cfg.poll_timeout,
            poll_buf: Mutex::new(Vec::new()),
            poll_limits: PollLimits::default(),
            metrics: Arc::new(AgentMetrics::new(&cfg.channels)),
        }
    }

    /// Shares the process's metrics (the health listener exports them).
    pub fn with_metrics(mut self, metrics: Arc<AgentMetrics>) -> ControlPlane {
        self.metrics = metrics;
        self
    }

    pub fn tunnel_url(&self) -> &str {
        self.tunnel.url()
    }

    /// The headers every control-plane request carries.
    pub(crate) fn with_headers<B>(
        &self,
        mut req: ureq::RequestBuilder<B>,
    ) -> ureq::RequestBuilder<B> {
        let bearer = self.key.bearer();
        if let (Some(fixed), Some(headers)) = (&self.fixed_headers, req.headers_mut()) {
            if !matches!(bearer, Bearer::Invalid(_)) {
                // Straight into the map: clones of parsed values share their
                // bytes, and the builder is not moved once per header.
                if let Bearer::Value(v) = bearer {
                    let _ = headers.try_append(http::header::AUTHORIZATION, v);
                }
                for (name, value) in fixed {
                    let _ = headers.try_append(name.clone(), value.clone());
                }
                return req;
            }
        }
        // A value that did not parse (or a builder already failed): through
        // ureq's builder, which refuses the request with its error.
        let mut req = match bearer {
            Bearer::None => req,
            Bearer::Value(v) => req.header(http::header::AUTHORIZATION, v),
            Bearer::Invalid(key) => req.header("Authorization", format!("Bearer {}", key.expose())),
        };
        if let Some(fixed) = &self.fixed_headers {
            for (name, value) in fixed {
                req = req.header(name.clone(), value.clone());
            }
            return req;
        }
        let pairs = header_pairs(
            &self.instance_id,
            &self.server_info,
            self.organization.as_deref(),
        );
        for (name, value) in pairs {
            req = req.header(name, value);
        }
        req
    }

    /// GET /v1/tunnels/{id}. Only 401/403/404 are fatal; anything else is
    /// logged and left to the poll loop's retries.
    pub fn metadata(&self) -> Result<(), StartupError> {
        let req = self
            .with_headers(self.tunnel.get(&self.agent))
            .config()
            .timeout_global(Some(SHORT_TIMEOUT))
            .build();
        match req.call() {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let code = read_error_code(&mut resp);
                match status {
                    200..=299 => {
                        log::info!("control plane reachable; tunnel {} found", self.tunnel_id());
                        Ok(())
                    }
                    401 | 403 => {
                        if status == 401 && self.key.reload() {
                            return self.metadata_once_more();
                        }
                        Err(StartupError::Auth { status, code })
                    }
                    404 => Err(StartupError::NotFound { code }),
                    _ => {
                        log::warn!("tunnel metadata check answered HTTP {status}; polling anyway");
                        Ok(())
                    }
                }
            }
            Err(e) => {
                log::warn!(
                    "tunnel metadata check failed ({}); polling anyway",
                    super::edge::describe(&e)
                );
                Ok(())
            }
        }
    }

    fn metadata_once_more(&self) -> Result<(), StartupError> {
        let req = self
            .with_headers(self.tunnel.get(&self.agent))
            .config()
            .timeout_global(Some(SHORT_TIMEOUT))
            .build();
        match req.call() {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let code = read_error_code(&mut resp);
                match status {
                    401 | 403 => Err(StartupError::Auth { status, code }),
                    404 => Err(StartupError::NotFound { code }),
                    _ => Ok(()),
                }
            }
            Err(_) => Ok(()),
        }
    }

    fn tunnel_id(&self) -> &str {
        self.tunnel.url().rsplit('/').next().unwrap_or("")
    }

    /// One long poll (blocking; runs on the poll thread).
    pub fn poll(&self, limit: usize) -> PollResult {
        let limit = limit.clamp(1, MAX_POLL_LIMIT);
        // The whole URL, parsed at startup: ureq's query builder encodes and
        // re-parses per call.
        let Some(endpoint) = self.polls.get(limit - 1) else {
            return PollResult::Idle;
        };
        let req = self
            .with_headers(endpoint.get(&self.agent))
            .config()
            .timeout_global(Some(self.poll_timeout + POLL_GUARD))
            .build();
        let mut resp = match req.call() {
            Ok(r) => r,
            Err(e) => {
                return PollResult::Failed(match super::edge::failure(&e) {
                    Some(edge) => PollFailure::Edge(edge.reason),
                    None => PollFailure::Network(e.to_string()),
                })
            }
        };
        // The anchor of every deadline in this batch: the head has arrived, the body is unread.
        let receipt = Instant::now();
        let status = resp.status().as_u16();
        match classify_poll(status) {
            PollOutcome::Idle => {
                drain(&mut resp);
                PollResult::Idle
            }
            PollOutcome::Commands => {
                let mut buf = self.poll_buf.lock().unwrap_or_else(|e| e.into_inner());
                buf.clear();
                let max = self.poll_limits.max_body as u64;
                let read = resp
                    .body_mut()
                    .as_reader()
                    .take(max + 1)
                    .read_to_end(&mut buf);
                if let Err(e) = read {
                    return PollResult::Failed(PollFailure::Body(format!("reading the body: {e}")));
                }
                if buf.len() as u64 > max {
                    shrink(&mut buf);
                    return PollResult::Failed(PollFailure::Body(format!(
                        "larger than {max} bytes"
                    )));
                }
                let result = match decode_poll(&buf, &self.poll_limits) {
                    Ok(commands) if commands.is_empty() => PollResult::Idle,
                    Ok(commands) => PollResult::Batch { receipt, commands },
                    Err(e) => PollResult::Failed(PollFailure::Body(e.to_string())),
                };
                shrink(&mut buf);
                result
            }
            PollOutcome::AuthFailure => {
                let code = read_error_code(&mut resp);
                PollResult::Failed(PollFailure::Auth { status, code })
            }
            PollOutcome::NotFound => {
                let code = read_error_code(&mut resp);
                PollResult::Failed(PollFailure::NotFound { code })
            }
            // 408, 429, 5xx, other 4xx and the unexpected: backed off by the poller.
            PollOutcome::Retry | PollOutcome::OtherClientError => {
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let code = read_error_code(&mut resp);
                PollResult::Failed(PollFailure::Status {
                    status,
                    code,
                    retry_after,
                })
            }
        }
    }
}

/// A rare huge batch must not pin its buffer for the life of the process.
fn shrink(buf: &mut Vec<u8>) {
    const KEEP: usize = 1024 * 1024;
    if buf.capacity() > KEEP {
        buf.clear();
        buf.shrink_to(KEEP);
    }
}

/// The `error.code` of a control-plane error body, if any.
pub fn read_error_code(resp: &mut ureq::http::Response<ureq::Body>) -> Option<String> {
    let mut body = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut body);
    error_body::parse_code(&body)
        .filter(|c| c.len() <= 128 && c.bytes().all(|b| b.is_ascii_graphic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_query_has_timeout_then_channels() {
        let chans = [Channel::parse("docs").unwrap(), Channel::main()];
        assert_eq!(
            poll_query(Duration::from_secs(25), &chans),
            "&timeout_ms=25000&channel=docs&channel=main"
        );
        assert_eq!(
            poll_query(Duration::from_millis(1500), &[]),
            "&timeout_ms=1500"
        );
    }

    #[test]
    fn fixed_headers_parsed_once_in_order() {
        let h = fixed_headers("inst-1", r#"{"channels":[]}"#, Some("org-9")).unwrap();
        let got: Vec<(&str, &str)> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-tunnel-client-name", CLIENT_NAME),
                ("x-tunnel-client-version", CLIENT_VERSION),
                ("x-tunnel-client-instance-id", "inst-1"),
                ("x-tunnel-mcp-server-info", r#"{"channels":[]}"#),
                ("accept", "application/json"),
                ("openai-organization", "org-9"),
            ]
        );
        assert_eq!(fixed_headers("i", "{}", None).unwrap().len(), 5);
        // A value ureq would refuse per request: no pre-parsed set, the old path stays.
        assert!(fixed_headers("i", "{}", Some("bad\nvalue")).is_none());
    }

    #[test]
    fn key_file_is_reloaded_only_when_changed() {
        let dir = std::env::temp_dir().join(format!("mcp-tunnel-keystore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "sk-old\n").unwrap();
        let store = KeyStore::new(
            SecretSource::File(path.clone()),
            Secret::new("sk-old".into()),
        );
        assert!(!store.reload(), "same content: no change");
        std::fs::write(&path, "sk-new\n").unwrap();
        assert!(store.reload());
        assert_eq!(store.current().expose(), "sk-new");
        let Bearer::Value(v) = store.bearer() else {
            panic!("a key makes a header value")
        };
        assert_eq!(v.to_str().unwrap(), "Bearer sk-new");
        std::fs::remove_file(&path).unwrap();
        assert!(!store.reload(), "an unreadable file keeps the current key");
        assert_eq!(store.current().expose(), "sk-new");
        std::fs::remove_dir_all(&dir).unwrap();

        let literal = KeyStore::new(SecretSource::parse("sk-lit"), Secret::new("sk-lit".into()));
        assert!(!literal.reload());
    }

    #[test]
    fn the_bearer_is_built_once_and_hidden_from_debug() {
        let literal = |k: &str| {
            let secret = Secret::new(k.into());
            KeyStore::new(SecretSource::Literal(secret.clone()), secret)
        };
        assert!(matches!(literal("").bearer(), Bearer::None));
        let Bearer::Value(v) = literal("sk-1").bearer() else {
            panic!("a key makes a header value")
        };
        assert_eq!(v.to_str().unwrap(), "Bearer sk-1");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("sk-1"));
        // Not a header value: left as text for ureq to refuse per request.
        assert!(matches!(literal("sk\n1").bearer(), Bearer::Invalid(_)));
    }

    #[test]
    fn poll_failures_name_the_fix() {
        let auth = PollFailure::Auth {
            status: 401,
            code: Some("invalid_api_key".into()),
        }
        .to_string();
        assert!(
            auth.contains("401")
                && auth.contains("invalid_api_key")
                && auth.contains("CONTROL_PLANE_API_KEY")
        );
        let cert = PollFailure::Auth {
            status: 401,
            code: Some("client_certificate_required".into()),
        }
        .to_string();
        assert!(cert.contains("--control-plane.client-cert"), "{cert}");
        let nf = PollFailure::NotFound { code: None }.to_string();
        assert!(nf.contains("CONTROL_PLANE_TUNNEL_ID"));
    }
}
