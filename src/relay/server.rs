//! Wiring: the route table, the state watcher, the listener and the drain.
//!
//! Everything runs on one thread: a `smol::LocalExecutor` drives the HTTP
//! connections (net::http_server), the state watcher and the signal watcher.

use std::future::Future;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use smol::{future, LocalExecutor};

use super::audit::AuditLog;
use super::cli::ServeConfig;
use super::connector;
use super::control_plane;
use super::hub::{error_response, Hub, Settings};
use super::metrics::{Endpoint, Metrics};
use super::queue::QueueConfig;
use super::state::{Role, State, StateDir, Watcher};
use crate::net::http_server::{self, ConnMemo, Handler, Limits, Request, Response};
use crate::net::listen_addr::{self, Listener, SocketFile};
use crate::net::tls_listener::{self, ClientAuth};
use crate::ops::pidfile::PidFile;
use crate::ops::shutdown::{self, Shutdown};

/// How often the state file's metadata is checked (revocations apply within this).
const STATE_POLL: Duration = Duration::from_millis(250);

/// The route table.
pub struct Router {
    hub: Rc<Hub>,
}

impl Router {
    pub fn new(hub: Rc<Hub>) -> Router {
        Router { hub }
    }
}

fn not_allowed(hub: &Hub, allow: &'static str) -> Response {
    hub.metrics
        .count(Endpoint::Other, 405, "method_not_allowed");
    error_response(405, "method_not_allowed", "method not allowed here").with_header("Allow", allow)
}

impl Handler for Router {
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response>>> {
        self.handle_on(req, &Rc::new(ConnMemo::default()))
    }

    fn handle_on(
        &self,
        req: Request,
        memo: &Rc<ConnMemo>,
    ) -> Pin<Box<dyn Future<Output = Response>>> {
        route(&self.hub, req, memo)
    }

    fn max_body_bytes(&self, method: &http::Method, uri: &http::Uri) -> Option<usize> {
        let response_post = method == http::Method::POST
            && uri.path().starts_with("/v1/tunnels/")
            && uri.path().ends_with("/response");
        response_post.then_some(self.hub.settings.max_response_body)
    }
}

/// Where a request goes; ids are copied out of the path so the request can move on.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metadata(String),
    Poll(String),
    Response(String),
    Mcp(String, Option<String>),
    Healthz,
    NotFound,
}

fn route_of(path: &str) -> Route {
    // At most five segments matter; a sixth means no route. Split by bytes:
    // `/` is ASCII, so every cut is a char boundary.
    let mut segs: [Option<&str>; 5] = [None; 5];
    let mut n = 0;
    let mut rest = match path.strip_prefix('/') {
        Some(r) => r,
        None => return Route::NotFound,
    };
    loop {
        let (seg, more) = match rest.bytes().position(|b| b == b'/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if n == segs.len() {
            return Route::NotFound;
        }
        segs[n] = Some(seg);
        n += 1;
        match more {
            Some(m) => rest = m,
            None => break,
        }
    }
    match segs {
        [Some("v1"), Some("tunnels"), Some(id), None, None] => Route::Metadata(id.into()),
        [Some("v1"), Some("tunnels"), Some(id), Some("poll"), None] => Route::Poll(id.into()),
        [Some("v1"), Some("tunnels"), Some(id), Some("response"), None] => {
            Route::Response(id.into())
        }
        [Some("v1"), Some("mcp"), Some(id), None | Some(""), None] => Route::Mcp(id.into(), None),
        [Some("v1"), Some("mcp"), Some(id), Some(channel), None] => {
            Route::Mcp(id.into(), Some(channel.into()))
        }
        [Some("healthz"), None, None, None, None] => Route::Healthz,
        _ => Route::NotFound,
    }
}

/// An answer known without waiting.
fn ready(r: Response) -> Pin<Box<dyn Future<Output = Response>>> {
    Box::pin(std::future::ready(r))
}

/// Each handler does its synchronous part here and boxes only what must wait
/// (a parked poll, a connector waiting for its answer): one allocation sized
/// for that wait, instead of one future as large as the largest route.
fn route(
    hub: &Rc<Hub>,
    req: Request,
    memo: &Rc<ConnMemo>,
) -> Pin<Box<dyn Future<Output = Response>>> {
    let get = req.method == http::Method::GET || req.method == http::Method::HEAD;
    let post = req.method == http::Method::POST;
    match route_of(req.uri.path()) {
        Route::Metadata(id) => ready(match get {
            true => control_plane::metadata(hub, &req, &id),
            false => not_allowed(hub, "GET"),
        }),
        Route::Poll(id) => match get {
            true => control_plane::poll(hub, req, id, memo),
            false => ready(not_allowed(hub, "GET")),
        },
        Route::Response(id) => match post {
            true => control_plane::respond(hub, req, &id, memo),
            false => ready(not_allowed(hub, "POST")),
        },
        Route::Mcp(id, channel) => connector::handle(hub, req, id, channel, memo),
        Route::Healthz => ready(Response::json(200, br#"{"status":"ok"}"#.to_vec())),
        Route::NotFound => {
            hub.metrics.count(Endpoint::Other, 404, "not_found");
            ready(error_response(404, "not_found", "no such endpoint"))
        }
    }
}

/// Why the relay could not start (exit 1, one line).
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// `/metrics` on the separate metrics listener; nothing else is served there.
fn metrics_response(hub: &Hub, req: &Request) -> Response {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return error_response(405, "method_not_allowed", "use GET").with_header("Allow", "GET");
    }
    if req.uri.path() != "/metrics" {
        return error_response(404, "not_found", "try /metrics");
    }
    let mut doc = String::with_capacity(8 * 1024);
    hub.metrics.render(&hub.gauges(Instant::now()), &mut doc);
    Response {
        status: 200,
        headers: vec![(
            "content-type".into(),
            "text/plain; version=0.0.4; charset=utf-8".into(),
        )],
        body: http_server::Body::Bytes(doc.into_bytes()),
    }
}

/// A relay bound to its address, not yet serving.
pub struct Server {
    cfg: ServeConfig,
    listener: TcpListener,
    /// `--metrics-listen`; a unix socket's file is removed when the server is dropped.
    metrics: Option<(Listener, Option<SocketFile>)>,
    watcher: Watcher,
    hub: Rc<Hub>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Server {
    /// Loads the state, opens the audit log, binds the listener.
    pub fn bind(cfg: ServeConfig) -> Result<Server, StartError> {
        let (watcher, state) = Watcher::start(StateDir::new(cfg.state.clone()))
            .map_err(|e| StartError(format!("--state: {e}")))?;
        let audit = match &cfg.audit_log {
            Some(p) => AuditLog::open(p)
                .map_err(|e| StartError(format!("--audit-log {}: {e}", p.display())))?,
            None => AuditLog::disabled(),
        };
        let client_auth = match &cfg.client_ca {
            None => ClientAuth::Off,
            Some(ca) if cfg.require_client_cert => ClientAuth::Required(ca.clone()),
            Some(ca) => ClientAuth::Optional(ca.clone()),
        };
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(
                tls_listener::server_config(cert, key, &client_auth)
                    .map_err(|e| StartError(format!("--tls-cert/--tls-key/--client-ca: {e}")))?,
            ),
            (None, None) if client_auth != ClientAuth::Off => {
                return Err(StartError(
                    "--client-ca needs TLS: give --tls-cert and --tls-key".into(),
                ))
            }
            (None, None) => None,
            _ => return Err(StartError("--tls-cert and --tls-key go together".into())),
        };
        if client_auth == ClientAuth::Off {
            warn_unreachable_cert_tunnels(&state);
        }
        if tls.is_none() && !cfg.listen.ip().is_loopback() && !cfg.insecure_http {
            return Err(StartError(format!(
                "--listen {}: plain HTTP only on loopback; give --tls-cert/--tls-key or --insecure-http",
                cfg.listen
            )));
        }
        let listener = TcpListener::bind(cfg.listen)
            .map_err(|e| StartError(format!("--listen {}: cannot listen: {e}", cfg.listen)))?;
        let metrics = match &cfg.metrics_listen {
            Some(a) => Some(
                listen_addr::bind(a)
                    .map_err(|e| StartError(format!("--metrics-listen {a}: cannot listen: {e}")))?,
            ),
            None => None,
        };
        let settings = Settings {
            queue: QueueConfig {
                capacity: cfg.queue_size,
                max_pending: cfg.max_pending.max(cfg.queue_size),
                liveness: cfg.agent_liveness,
            },
            response_timeout: cfg.response_timeout,
            poll_timeout_max: cfg.poll_timeout_max,
            max_body: cfg.max_body,
            max_response_body: cfg.max_response_body,
        };
        let hub = Hub::new(state, settings, audit);
        Ok(Server {
            cfg,
            listener,
            metrics,
            watcher,
            hub,
            tls,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, StartError> {
        self.listener
            .local_addr()
            .map_err(|e| StartError(format!("--listen: {e}")))
    }

    /// Where `/metrics` is served (the real port when 0 was asked for).
    pub fn metrics_addr(&self) -> Option<String> {
        self.metrics.as_ref().map(|(l, _)| l.local())
    }

    pub fn hub(&self) -> Rc<Hub> {
        self.hub.clone()
    }

    /// Serves until `shutdown` fires, then drains. With `signals`, SIGTERM/SIGINT
    /// trigger `shutdown` and SIGHUP reloads the state at once.
    pub fn run(self, shutdown: Shutdown, signals: bool) -> Result<(), StartError> {
        let Server {
            cfg,
            listener,
            metrics,
            mut watcher,
            hub,
            tls,
        } = self;
        let limits = Limits {
            max_body_bytes: cfg.max_body,
            max_connections: cfg.max_connections,
            drain: cfg.drain_timeout,
            ..Limits::default()
        };
        let listener = Async::new(listener).map_err(|e| StartError(format!("--listen: {e}")))?;
        let ex = Rc::new(LocalExecutor::new());
        let (hup_tx, hup_rx) = smol::channel::bounded::<()>(1);
        if signals {
            let sd = shutdown.clone();
            ex.spawn(async move {
                let hup = move || {
                    let _ = hup_tx.try_send(());
                };
                if let Err(e) = shutdown::watch_signals(sd, hup).await {
                    log::error!("signal handling failed: {e}");
                }
            })
            .detach();
        }
        let h = hub.clone();
        ex.spawn(async move {
            loop {
                let forced = future::or(async { hup_rx.recv().await.is_ok() }, async {
                    Timer::after(STATE_POLL).await;
                    false
                })
                .await;
                if forced {
                    h.audit.reopen();
                    match crate::ops::log::reopen() {
                        Ok(true) => log::info!("log file reopened"),
                        Ok(false) => {}
                        Err(e) => log::warn!("cannot reopen --log-file: {e}"),
                    }
                }
                reload(&h, &mut watcher, forced);
                h.sweep(Instant::now());
            }
        })
        .detach();
        let h = hub.clone();
        ex.spawn(async move { h.alarms.run().await }).detach();
        let (h, sd) = (hub.clone(), shutdown.clone());
        ex.spawn(async move {
            sd.wait().await;
            log::info!("shutting down: draining for up to {:?}", limits.drain);
            h.close();
        })
        .detach();
        // Kept until the end of `run`: dropping it removes a unix socket file.
        let mut _metrics_socket = None;
        if let Some((metrics_listener, socket_file)) = metrics {
            _metrics_socket = socket_file;
            let h = hub.clone();
            let handler: Rc<dyn Handler> = Rc::new(move |req: Request| {
                let resp = metrics_response(&h, &req);
                async move { resp }
            });
            let small = Limits {
                max_body_bytes: 1024,
                max_connections: 64,
                drain: Duration::from_secs(1),
                ..Limits::default()
            };
            let (ex2, sd) = (ex.clone(), shutdown.clone());
            ex.spawn(async move {
                match metrics_listener {
                    Listener::Tcp(l) => http_server::serve_tcp(l, handler, small, ex2, sd).await,
                    Listener::Unix(l) => http_server::serve_unix(l, handler, small, ex2, sd).await,
                }
            })
            .detach();
        }
        let handler: Rc<dyn Handler> = Rc::new(Router::new(hub));
        let ex2 = ex.clone();
        // async-io's block_on waits in the reactor itself; a plain block_on would
        // park this thread and leave epoll to async-io's helper thread, adding a
        // cross-thread wake-up (two context switches) to every socket event.
        // The accept loop is a task of its own: as `run`'s main future it would
        // be polled (one `accept4` → EAGAIN) on every wake-up of the thread.
        let serving = ex.spawn(async move {
            match tls {
                Some(tls) => {
                    tls_listener::serve_tls(listener, tls, handler, limits, ex2, shutdown).await
                }
                None => http_server::serve_tcp(listener, handler, limits, ex2, shutdown).await,
            }
        });
        async_io::block_on(ex.run(serving));
        Ok(())
    }
}

/// Without `--client-ca` no certificate ever arrives: say so for tunnels that need one.
fn warn_unreachable_cert_tunnels(state: &State) {
    for t in &state.tunnels {
        for (who, role) in [
            ("agents", Role::Runtime),
            ("connector callers", Role::Connector),
        ] {
            if t.auth_mode(role).needs_cert() {
                log::warn!(
                    "tunnel {} requires client certificates from {who}, but relay serve has no --client-ca: they will be refused (401 client_certificate_required)",
                    t.id
                );
            }
        }
    }
}

fn reload(hub: &Hub, watcher: &mut Watcher, forced: bool) {
    match watcher.poll(forced) {
        Ok(Some(state)) => {
            hub.replace_state(state);
            Metrics::add(&hub.metrics.state_reloads, 1);
            log::info!("relay state reloaded");
        }
        Ok(None) => {}
        Err(e) => {
            Metrics::add(&hub.metrics.state_reload_errors, 1);
            log::error!("keeping the previous relay state: {e}");
        }
    }
}

/// `relay serve`: binds, prints `listening on ADDR`, serves until SIGTERM/SIGINT.
pub fn run(cfg: ServeConfig, out: &mut dyn Write) -> i32 {
    match &cfg.log_file {
        Some(path) => {
            if let Err(e) = crate::ops::log::init_file(cfg.log_level, cfg.log_format, path) {
                eprintln!("mcp-tunnel relay: --log-file {}: {e}", path.display());
                return 2;
            }
        }
        None => crate::ops::log::init(cfg.log_level, cfg.log_format),
    }
    let pid_path = cfg.pid_file.clone();
    let server = match Server::bind(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mcp-tunnel relay: {e}");
            return 1;
        }
    };
    let addr = match server.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mcp-tunnel relay: {e}");
            return 1;
        }
    };
    if writeln!(out, "listening on {addr}")
        .and_then(|()| out.flush())
        .is_err()
    {
        eprintln!("mcp-tunnel relay: cannot write to stdout");
        return 1;
    }
    log::info!("relay listening on {addr}");
    if let Some(m) = server.metrics_addr() {
        log::info!("relay metrics on {m}/metrics");
    }
    // Removed (if still ours) when this returns.
    let _pid_file = match pid_path.as_deref().map(PidFile::write) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            eprintln!("mcp-tunnel relay: --pid-file: {e}");
            return 1;
        }
        None => None,
    };
    match server.run(Shutdown::new(), true) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mcp-tunnel relay: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let id = |s: &str| s.to_string();
        assert_eq!(route_of("/v1/tunnels/t1"), Route::Metadata(id("t1")));
        assert_eq!(route_of("/v1/tunnels/t1/poll"), Route::Poll(id("t1")));
        assert_eq!(
            route_of("/v1/tunnels/t1/response"),
            Route::Response(id("t1"))
        );
        assert_eq!(route_of("/v1/mcp/t1"), Route::Mcp(id("t1"), None));
        assert_eq!(route_of("/v1/mcp/t1/"), Route::Mcp(id("t1"), None));
        assert_eq!(
            route_of("/v1/mcp/t1/docs"),
            Route::Mcp(id("t1"), Some(id("docs")))
        );
        assert_eq!(route_of("/v1/mcp/t1/docs/"), Route::NotFound);
        assert_eq!(route_of("/v1/mcp/t1/a/b"), Route::NotFound);
        assert_eq!(route_of("/v1/tunnels/t1/poll/x"), Route::NotFound);
        assert_eq!(route_of("/healthz"), Route::Healthz);
        assert_eq!(route_of("/healthz/"), Route::NotFound);
        assert_eq!(route_of("/"), Route::NotFound);
        assert_eq!(route_of(""), Route::NotFound);
        assert_eq!(route_of("/v1/tunnels/"), Route::Metadata(id("")));
        assert_eq!(route_of("/v1/tunnels/é/poll"), Route::Poll(id("é")));
    }
}
