//! `/healthz` and `/readyz` for the agent, served by `net::http_server` on the
//! agent's executor.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_io::Async;
use smol::LocalExecutor;

use super::readiness::Readiness;
use crate::net::http_server::{serve_tcp, Handler, Limits, Request, Response};
use crate::ops::shutdown::Shutdown;

pub fn bind(addr: SocketAddr) -> std::io::Result<Async<TcpListener>> {
    Async::<TcpListener>::bind(addr)
}

/// The answer for one request (pure, so it is tested without sockets).
pub fn respond(method: &http::Method, path: &str, readiness: &Readiness) -> Response {
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
        _ => Response::error(404, "not_found", "try /healthz or /readyz"),
    }
}

/// Serves until `shutdown` fires. Health checks are tiny: small limits.
pub async fn serve(
    listener: Async<TcpListener>,
    readiness: Arc<Readiness>,
    ex: Rc<LocalExecutor<'static>>,
    shutdown: Shutdown,
) {
    let handler = move |req: Request| {
        let resp = respond(&req.method, req.uri.path(), &readiness);
        async move { resp }
    };
    let handler: Rc<dyn Handler> = Rc::new(handler);
    let limits = Limits {
        max_body_bytes: 1024,
        max_connections: 64,
        drain: Duration::from_secs(1),
        ..Limits::default()
    };
    serve_tcp(listener, handler, limits, ex, shutdown).await;
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
        assert_eq!(respond(&get, "/metrics", &r).status, 404);
        assert_eq!(respond(&http::Method::POST, "/healthz", &r).status, 405);
    }
}
