//! `/healthz`, `/readyz` and `/metrics` for the agent, served by
//! `net::http_server` on the agent's executor, over TCP or a unix socket.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use smol::LocalExecutor;

use super::metrics::AgentMetrics;
use super::readiness::Readiness;
use crate::net::http_server::{serve_tcp, serve_unix, Handler, Limits, Request, Response};
use crate::net::listen_addr::Listener;
use crate::ops::shutdown::Shutdown;

/// The Prometheus text format this endpoint speaks.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer for one request (pure, so it is tested without sockets).
pub fn respond(
    method: &http::Method,
    path: &str,
    readiness: &Readiness,
    metrics: &AgentMetrics,
) -> Response {
    if method != http::Method::GET && method != http::Method::HEAD {
        return Response::error(405, "method_not_allowed", "use GET")
            .with_header("allow", "GET, HEAD");
    }
    match path {
        "/healthz" => Response::json(200, br#"{"status":"ok"}"#.to_vec()),
        "/readyz" => match readiness.not_ready_reason() {
            None => Response::json(200, br#"{"status":"ready"}"#.to_vec()),
            Some(reason) => {
                let reason = miniserde::json::to_string(&reason);
                Response::json(
                    503,
                    format!(r#"{{"status":"not_ready","reason":{reason}}}"#).into_bytes(),
                )
            }
        },
        "/metrics" => {
            let mut doc = String::with_capacity(8 * 1024);
            metrics.render(&mut doc);
            Response {
                status: 200,
                headers: vec![("content-type".into(), METRICS_CONTENT_TYPE.into())],
                body: crate::net::http_server::Body::Bytes(doc.into_bytes()),
            }
        }
        _ => Response::error(404, "not_found", "try /healthz, /readyz or /metrics"),
    }
}

/// Serves until `shutdown` fires. Health checks are tiny: small limits.
pub async fn serve(
    listener: Listener,
    readiness: Arc<Readiness>,
    metrics: Arc<AgentMetrics>,
    ex: Rc<LocalExecutor<'static>>,
    shutdown: Shutdown,
) {
    let handler = move |req: Request| {
        let resp = respond(&req.method, req.uri.path(), &readiness, &metrics);
        async move { resp }
    };
    let handler: Rc<dyn Handler> = Rc::new(handler);
    let limits = Limits {
        max_body_bytes: 1024,
        max_connections: 64,
        drain: Duration::from_secs(1),
        ..Limits::default()
    };
    match listener {
        Listener::Tcp(l) => serve_tcp(l, handler, limits, ex, shutdown).await,
        Listener::Unix(l) => serve_unix(l, handler, limits, ex, shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::http_server::Body;

    fn body(r: &Response) -> String {
        match &r.body {
            Body::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        }
    }

    #[test]
    fn health_and_readiness() {
        let r = Readiness::new();
        let m = AgentMetrics::new(&[crate::proto::channel::Channel::main()]);
        let respond =
            |method: &http::Method, path: &str, r: &Readiness| respond(method, path, r, &m);
        let get = http::Method::GET;
        assert_eq!(respond(&get, "/healthz", &r).status, 200);
        let not_ready = respond(&get, "/readyz", &r);
        assert_eq!(not_ready.status, 503);
        assert!(body(&not_ready).contains("MCP server"));
        r.set_target_ready(true);
        assert_eq!(respond(&get, "/readyz", &r).status, 200);
        r.set_auth_failure(Some("HTTP 403 tunnel_use_forbidden".into()));
        let forbidden = respond(&get, "/readyz", &r);
        assert_eq!(forbidden.status, 503);
        assert!(body(&forbidden).contains("403"));
        let metrics = respond(&get, "/metrics", &r);
        assert_eq!(metrics.status, 200);
        assert!(body(&metrics).contains("# TYPE mcp_tunnel_agent_polls_total counter\n"));
        assert!(metrics
            .headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.starts_with("text/plain; version=0.0.4")));
        assert_eq!(respond(&get, "/nope", &r).status, 404);
        assert_eq!(respond(&http::Method::POST, "/healthz", &r).status, 405);
    }
}
