//! The HTTP/1.1 server driver shared by the relay, the agent's health listener
//! and the sample server: ureq-proto's sans-IO `Reply` state machine driven
//! over async-io sockets, one task per connection on a `LocalExecutor`.
//!
//! All request parsing, body decoding and response framing is ureq-proto's;
//! this module owns the I/O around it: buffers, deadlines, limits, noticing a
//! client that went away, and the accept loop with its graceful drain.
//! - `accept`: the accept loop, admission and drain; half-closing sockets.
//! - `conn`: one connection driven through ureq-proto's states.
//! - `framing`: our `Response` turned into what ureq-proto frames.

mod accept;
mod conn;
mod framing;

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use async_io::Async;
use http::Method;
use smol::io::{AsyncRead, AsyncWrite};
use smol::stream::Stream;
use smol::LocalExecutor;

use crate::ops::shutdown::Shutdown;
use conn::{Conn, End};

#[cfg(unix)]
use accept::UnixAccept;
pub(crate) use accept::{run_server, Admission, Socket, TcpAccept};

/// What one connection may cost the server. Every limit has a defined answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line + headers; beyond → 431 `header_too_large`, then close.
    pub max_head_bytes: usize,
    /// Header lines per request; beyond → 431 `header_too_large`. ureq-proto
    /// parses at most [`ureq_proto::server::MAX_REQUEST_HEADERS`] (128), so
    /// larger values act as 128.
    pub max_headers: usize,
    /// Decoded request body; beyond → 413 `request_body_too_large`, then close.
    pub max_body_bytes: usize,
    /// Time to receive a whole request head once it has started (and, on a new
    /// connection, from accept) → 408 `request_timeout`, then close.
    pub head_timeout: Duration,
    /// Time to receive a whole request body after its head → 408, then close.
    pub body_timeout: Duration,
    /// Keep-alive wait for the next request → close silently.
    pub idle_timeout: Duration,
    /// Time the client gets to take each piece of a response (one buffer or
    /// one stream chunk) before the connection is dropped.
    pub write_timeout: Duration,
    /// Open connections; beyond: accept, answer 503 `too_many_connections`, close.
    pub max_connections: usize,
    /// After shutdown: how long in-flight requests may still run before they
    /// are dropped.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 4 * 1024 * 1024,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            drain: Duration::from_secs(10),
        }
    }
}

/// One request as the handler sees it: head and whole body. Its `Debug`
/// shows header names only: values can be credentials.
pub struct Request {
    pub method: Method,
    /// Path and query as sent (origin form), or the absolute form if the client used it.
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    /// The whole decoded body (chunked or content-length), within `max_body_bytes`.
    pub body: Vec<u8>,
    /// The TCP peer; `None` on a unix socket.
    pub peer: Option<SocketAddr>,
    /// DER of the TLS peer's leaf certificate, when TLS with client auth presented one.
    pub client_cert: Option<Vec<u8>>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .field("peer", &self.peer)
            .field("client_cert", &self.client_cert.as_ref().map(|c| c.len()))
            .finish()
    }
}

pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// Each chunk is written and flushed as soon as it arrives (SSE). The stream
    /// ending ends the body. Empty chunks are skipped.
    Stream(Pin<Box<dyn Stream<Item = Vec<u8>>>>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => f.write_str("Empty"),
            Body::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Body::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// A response from a handler. The server sets `content-length` for
/// `Empty`/`Bytes` and chunked framing for `Stream`; framing headers the
/// handler sets for those bodies are replaced (a `content-length` on a stream
/// body is kept and enforced). Its `Debug` shows header names only.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body", &self.body)
            .finish()
    }
}

impl Response {
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    /// `content-type: application/json` with `body` as given (no re-encoding).
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Body::Bytes(body),
        }
    }

    /// `{"error":{"code":..,"message":..}}`, both strings JSON-escaped.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        let mut body = Vec::with_capacity(96 + message.len());
        crate::proto::error_body::write(code, message, &mut body);
        Response::json(status, body)
    }

    /// A streamed body (SSE and the like): chunked, each item flushed as it comes.
    pub fn stream(status: u16, body: impl Stream<Item = Vec<u8>> + 'static) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Stream(Box::pin(body)),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What a handler keeps for the life of one connection, between its
/// requests: e.g. a verdict it may reuse while the next request on a
/// keep-alive connection presents the same credential. Starts empty; the
/// server never looks inside and drops it with the connection.
#[derive(Default)]
pub struct ConnMemo(RefCell<Option<Box<dyn Any>>>);

impl ConnMemo {
    /// Runs `f` on the handler's value of type `T`, made with `T::default()`
    /// on first use (or when a value of another type was kept). `f` must not
    /// use the same memo again (it is borrowed meanwhile).
    pub fn with<T: Any + Default, R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut slot = self.0.borrow_mut();
        if !slot.as_ref().is_some_and(|v| v.is::<T>()) {
            *slot = Some(Box::new(T::default()));
        }
        match slot.as_mut().and_then(|v| v.downcast_mut::<T>()) {
            Some(v) => f(v),
            // Unreachable (just stored); a fresh value keeps this panic-free.
            None => f(&mut T::default()),
        }
    }
}

impl fmt::Debug for ConnMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnMemo")
    }
}

/// A handler returns a future; when the client disconnects (EOF/reset on the
/// socket) while the future is pending, the server DROPS the future — that is
/// how a long-poll or a connector request learns it was cancelled (handlers use
/// Drop guards). The same holds for a `Body::Stream` while it is being sent.
pub trait Handler {
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response>>>;

    /// [`Handler::handle`] with the memo of the connection the request came
    /// on, for handlers that keep something between the requests of one
    /// connection. The server calls this one; the default ignores the memo.
    fn handle_on(
        &self,
        req: Request,
        memo: &Rc<ConnMemo>,
    ) -> Pin<Box<dyn Future<Output = Response>>> {
        let _ = memo;
        self.handle(req)
    }

    /// The largest body accepted for a request to `uri`, decided from the
    /// head before any body byte is read; `None` keeps
    /// [`Limits::max_body_bytes`]. Lets one listener take large agent answers
    /// on one route while keeping client requests small on the others.
    fn max_body_bytes(&self, method: &http::Method, uri: &http::Uri) -> Option<usize> {
        let _ = (method, uri);
        None
    }
}

/// Any `Fn(Request) -> impl Future<Output = Response>` is a handler.
impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response> + 'static,
{
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response>>> {
        Box::pin(self(req))
    }
}

/// Accept loop over TCP. Each connection is a task on `ex` (run `ex` to make
/// progress). Keep-alive, 100-continue, chunked request bodies, HEAD and
/// `Connection: close` as ureq-proto handles them. Stops accepting when
/// `shutdown` fires; in-flight requests then get up to `limits.drain` to
/// finish, idle connections close at once. Returns when the drain is over.
pub async fn serve_tcp(
    listener: Async<TcpListener>,
    handler: Rc<dyn Handler>,
    limits: Limits,
    ex: Rc<LocalExecutor<'static>>,
    shutdown: Shutdown,
) {
    let conn_shutdown = shutdown.clone();
    let connect = move |stream: Async<std::net::TcpStream>, peer, admission| {
        let handler = handler.clone();
        let shutdown = conn_shutdown.clone();
        let fut: Pin<Box<dyn Future<Output = ()>>> = Box::pin(async move {
            // Small writes (SSE events, short answers) must leave at once.
            if let Err(e) = stream.get_ref().set_nodelay(true) {
                log::debug!("set_nodelay failed: {e}");
            }
            let stream = Socket::new(stream);
            match admission {
                Admission::Serve => {
                    serve_connection(stream, peer, None, handler, limits, shutdown).await
                }
                Admission::Reject => reject_connection(stream, limits).await,
            }
        });
        fut
    };
    run_server(TcpAccept(listener), connect, limits, &ex, &shutdown).await;
}

/// [`serve_tcp`] for a unix socket (the agent's health listener option).
/// `Request::peer` is `None`. The socket file is the caller's to remove.
#[cfg(unix)]
pub async fn serve_unix(
    listener: Async<std::os::unix::net::UnixListener>,
    handler: Rc<dyn Handler>,
    limits: Limits,
    ex: Rc<LocalExecutor<'static>>,
    shutdown: Shutdown,
) {
    let conn_shutdown = shutdown.clone();
    let connect = move |stream: Async<std::os::unix::net::UnixStream>, _peer, admission| {
        let handler = handler.clone();
        let shutdown = conn_shutdown.clone();
        let fut: Pin<Box<dyn Future<Output = ()>>> = Box::pin(async move {
            let stream = Socket::new(stream);
            match admission {
                Admission::Serve => {
                    serve_connection(stream, None, None, handler, limits, shutdown).await
                }
                Admission::Reject => reject_connection(stream, limits).await,
            }
        });
        fut
    };
    run_server(UnixAccept(listener), connect, limits, &ex, &shutdown).await;
}

/// Serves requests on one established connection until it closes. Once
/// `shutdown` has fired, the connection closes after the request in flight
/// (which is answered with `connection: close`) or at once when idle.
///
/// Closing is lingering: `poll_close` on `stream` should half-close (send FIN)
/// so the client sees the end while the server still drains its input; a
/// stream whose `poll_close` only flushes (a bare `async_io::Async`) still
/// works, the client just sees the end a little later.
pub async fn serve_connection<S>(
    stream: S,
    peer: Option<SocketAddr>,
    client_cert: Option<Vec<u8>>,
    handler: Rc<dyn Handler>,
    limits: Limits,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(stream, limits, shutdown);
    let end = conn.serve(peer, client_cert, &*handler).await;
    match &end {
        End::Io(e) => log::debug!("connection from {peer:?} ended: {end} ({e})"),
        _ => log::debug!("connection from {peer:?} ended: {end}"),
    }
}

/// Answers 503 `too_many_connections` without reading a request, then closes.
pub(crate) async fn reject_connection<S>(stream: S, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(stream, limits, Shutdown::new());
    conn.answer_and_close(
        503,
        "too_many_connections",
        "the server is at its connection limit",
    )
    .await;
}
