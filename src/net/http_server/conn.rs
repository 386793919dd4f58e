//! One connection: reads requests through ureq-proto's `Reply` states, runs
//! the handler while watching for the client going away, writes what
//! ureq-proto frames, and closes with a linger.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_io::Timer;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Method;
use smol::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use smol::stream::Stream;
use ureq_proto::server::state::{Cleanup, ProvideResponse, RecvBody, RecvRequest, SendBody};
use ureq_proto::server::{RecvRequestResult, Reply, SendResponseResult};

use super::framing::{body_too_large, canned_reply, end_chunked_body, into_http};
use super::{Body, ConnMemo, Handler, Limits, Request, Response};
use crate::ops::shutdown::Shutdown;

// ------------------------------------------------------------------------------------ connection

/// Size of the per-connection output buffer: response heads and body pieces
/// are framed into it by ureq-proto and written from it.
const OUT_BUF: usize = 16 * 1024;

/// The input buffer never shrinks below this, so pipelined requests and body
/// bytes have room even with a tiny `max_head_bytes`.
const MIN_IN_BUF: usize = 4 * 1024;

/// Upper bound on the lingering close: how long we keep reading (and
/// discarding) after our last answer so the client gets to read it.
const LINGER: Duration = Duration::from_secs(2);

/// Bytes discarded during a lingering close before giving up on it.
const LINGER_BYTES: usize = 256 * 1024;

/// Why a connection ended (for the debug log).
#[derive(Debug)]
pub(super) enum End {
    /// Client sent `connection: close`, HTTP/1.0 without keep-alive, or we did.
    Closed,
    /// The client closed or reset the connection.
    ClientGone,
    Idle,
    Shutdown,
    /// We answered an error status and closed.
    Answered(u16),
    Io(io::Error),
    /// ureq-proto refused the handler's response before anything was written.
    Unsendable(ureq_proto::Error),
    /// ureq-proto refused part of a response already under way.
    BadResponse(ureq_proto::Error),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Closed => f.write_str("closed after the last response"),
            End::ClientGone => f.write_str("client went away"),
            End::Idle => f.write_str("idle keep-alive timeout"),
            End::Shutdown => f.write_str("server shutting down"),
            End::Answered(s) => write!(f, "answered {s} and closed"),
            End::Io(_) => f.write_str("i/o error"),
            End::Unsendable(e) => write!(f, "handler response rejected by ureq-proto: {e}"),
            End::BadResponse(e) => write!(f, "response broke off: {e}"),
        }
    }
}

/// What a wait for more input produced.
enum Input {
    Data,
    Eof,
    Timeout,
    /// Shutdown fired while we were idle.
    Shutdown,
    /// No room left in the input buffer.
    Full,
}

pub(super) struct Conn<S> {
    io: S,
    /// Input: unconsumed bytes are `inbuf[start..end]`; leftovers (pipelined
    /// requests) stay for the next request.
    inbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// Output: `outbuf[..out]` is framed and not yet written.
    outbuf: Vec<u8>,
    out: usize,
    limits: Limits,
    shutdown: Shutdown,
    /// The read deadline's reactor timer, kept for the connection's life.
    alarm: Alarm,
}

/// One reactor timer per connection for the read deadlines. Registering a
/// timer with async-io costs a wake-up of the reactor (an eventfd write and
/// an extra `epoll_pwait` round), so it is set again only when a wait needs
/// it to fire earlier than it already will. Deadlines on a keep-alive
/// connection mostly move forward (now + the same timeout), so it is
/// usually left alone; when it fires for an older, earlier deadline, the
/// wait finds its own deadline not yet reached and sets it for that.
struct Alarm {
    timer: Timer,
    /// When `timer` is set to fire; `None` once it has fired (or never was set).
    at: Option<Instant>,
}

impl Alarm {
    fn new() -> Alarm {
        Alarm {
            timer: Timer::never(),
            at: None,
        }
    }

    /// Ready once `deadline` has passed; registers the task's waker otherwise.
    fn poll_until(&mut self, cx: &mut std::task::Context<'_>, deadline: Instant) -> Poll<()> {
        loop {
            if self.at.is_none_or(|at| at > deadline) {
                self.timer.set_at(deadline);
                self.at = Some(deadline);
            }
            match Pin::new(&mut self.timer).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => {
                    self.at = None;
                    if Instant::now() >= deadline {
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

/// The request parts the driver keeps while the body is read and the handler runs.
struct Head {
    method: Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    content_length: Option<u64>,
    /// The body limit for this request: the handler's choice for its route,
    /// else [`Limits::max_body_bytes`].
    max_body: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn new(io: S, limits: Limits, shutdown: Shutdown) -> Conn<S> {
        Conn {
            io,
            inbuf: vec![0; limits.max_head_bytes.max(MIN_IN_BUF)],
            start: 0,
            end: 0,
            outbuf: vec![0; OUT_BUF],
            out: 0,
            limits,
            shutdown,
            alarm: Alarm::new(),
        }
    }

    pub(super) async fn serve(
        &mut self,
        peer: Option<SocketAddr>,
        client_cert: Option<Vec<u8>>,
        handler: &dyn Handler,
    ) -> End {
        let mut first = true;
        let memo = std::rc::Rc::new(ConnMemo::default());
        loop {
            if let Err(end) = self.await_request(first).await {
                return end;
            }
            first = false;
            let (mut head, reply) = match self.recv_head().await {
                Ok(v) => v,
                Err(end) => return end,
            };
            head.max_body = handler
                .max_body_bytes(&head.method, &head.uri)
                .unwrap_or(self.limits.max_body_bytes);
            let (reply, body) = match self.recv_body_state(&head, reply).await {
                Ok(v) => v,
                Err(end) => return end,
            };
            let request = Request {
                method: head.method,
                uri: head.uri,
                headers: head.headers,
                body,
                peer,
                client_cert: client_cert.clone(),
            };
            let response = match self.run_handler(handler.handle_on(request, &memo)).await {
                Some(r) => r,
                None => return End::ClientGone,
            };
            let closing = self.shutdown.is_triggered();
            let cleanup = match self.respond(reply, response, closing, true).await {
                Ok(c) => c,
                Err(End::Unsendable(e)) => {
                    log::error!("handler response cannot be sent ({e}); answering 500");
                    return self
                        .answer_and_close(500, "internal_error", "the response could not be sent")
                        .await;
                }
                Err(end) => return end,
            };
            if cleanup.must_close_connection() || self.shutdown.is_triggered() {
                self.linger_close().await;
                return if closing { End::Shutdown } else { End::Closed };
            }
        }
    }

    /// Waits for the first byte of the next request (unless pipelined bytes
    /// are already here). A new connection gets `head_timeout` and a 408; a
    /// keep-alive one gets `idle_timeout` and a silent close.
    async fn await_request(&mut self, first: bool) -> Result<(), End> {
        if self.start < self.end {
            return Ok(());
        }
        if self.shutdown.is_triggered() {
            return Err(End::Shutdown);
        }
        let wait = if first {
            self.limits.head_timeout
        } else {
            self.limits.idle_timeout
        };
        match self.fill(deadline_after(wait), true).await {
            Ok(Input::Data) => Ok(()),
            Ok(Input::Eof) => Err(End::ClientGone),
            Ok(Input::Shutdown) => Err(End::Shutdown),
            Ok(Input::Timeout) if first => Err(self.request_timeout().await),
            Ok(Input::Timeout) | Ok(Input::Full) => Err(End::Idle),
            Err(e) => Err(End::Io(e)),
        }
    }

    async fn request_timeout(&mut self) -> End {
        self.answer_and_close(408, "request_timeout", "the request did not arrive in time")
            .await
    }

    async fn header_too_large(&mut self) -> End {
        self.answer_and_close(431, "header_too_large", "the request head is too large")
            .await
    }

    async fn bad_request(&mut self, why: &str) -> End {
        log::debug!("bad request: {why}");
        self.answer_and_close(400, "bad_request", why).await
    }

    /// Reads until ureq-proto has a whole request head, within `head_timeout`
    /// and `max_head_bytes`.
    async fn recv_head(&mut self) -> Result<(Head, Reply<RecvRequest>), End> {
        let deadline = deadline_after(self.limits.head_timeout);
        let mut reply = match Reply::new() {
            Ok(r) => r,
            Err(e) => return Err(End::BadResponse(e)),
        };
        // httparse re-parses from the start each time; a head can only have
        // completed if the new bytes hold a line end, so a byte-at-a-time
        // client costs one scan per line, not one per byte.
        let mut parse = true;
        let request = loop {
            if parse {
                match reply.try_request(&self.inbuf[self.start..self.end]) {
                    Ok((used, Some(request))) => {
                        if used > self.limits.max_head_bytes {
                            return Err(self.header_too_large().await);
                        }
                        self.start += used;
                        break request;
                    }
                    Ok((_, None)) => {}
                    Err(ureq_proto::Error::HttpParseTooManyHeaders) => {
                        return Err(self.header_too_large().await)
                    }
                    Err(e) => return Err(self.bad_request(&e.to_string()).await),
                }
            }
            if self.end - self.start >= self.limits.max_head_bytes {
                return Err(self.header_too_large().await);
            }
            let had = self.end - self.start;
            match self.fill(deadline, false).await {
                Ok(Input::Data) => {}
                Ok(Input::Eof) => return Err(End::ClientGone),
                Ok(Input::Timeout) => return Err(self.request_timeout().await),
                Ok(Input::Full) => return Err(self.header_too_large().await),
                Ok(Input::Shutdown) => return Err(End::Shutdown),
                Err(e) => return Err(End::Io(e)),
            }
            // `fill` may have moved the unconsumed bytes to the front, so count from `start`.
            parse = self.inbuf[self.start + had..self.end].contains(&b'\n');
        };

        if request.headers().len() > self.limits.max_headers {
            return Err(self.header_too_large().await);
        }
        let headers = request.headers();
        let has_te = headers.contains_key(TRANSFER_ENCODING);
        let has_cl = headers.contains_key(CONTENT_LENGTH);
        if has_te && has_cl {
            // Both framings at once is the request-smuggling shape (RFC 9112 §6.1).
            return Err(self
                .bad_request("both transfer-encoding and content-length")
                .await);
        }
        if has_te {
            let mut values = headers.get_all(TRANSFER_ENCODING).iter();
            let only_chunked = matches!(
                (values.next(), values.next()),
                (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")
            );
            if !only_chunked {
                return Err(self
                    .answer_and_close(
                        501,
                        "unsupported_transfer_encoding",
                        "only transfer-encoding: chunked is supported",
                    )
                    .await);
            }
        }
        let content_length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let (parts, ()) = request.into_parts();
        let head = Head {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            content_length,
            max_body: self.limits.max_body_bytes,
        };
        Ok((head, reply))
    }

    /// Moves the reply past the request body: 100-continue, the body itself,
    /// and the body size limit.
    async fn recv_body_state(
        &mut self,
        head: &Head,
        reply: Reply<RecvRequest>,
    ) -> Result<(Reply<ProvideResponse>, Vec<u8>), End> {
        let Some(next) = reply.proceed() else {
            return Err(self.bad_request("incomplete request").await);
        };
        let too_large = head
            .content_length
            .is_some_and(|n| n > head.max_body as u64);
        match next {
            RecvRequestResult::ProvideResponse(r) => Ok((r, Vec::new())),
            RecvRequestResult::Send100(r) => {
                if too_large {
                    // The client has not sent the body yet: refuse it in place of 100.
                    let answer = body_too_large();
                    let _ = self.respond(r.reject(), answer, true, false).await;
                    self.linger_close().await;
                    return Err(End::Answered(413));
                }
                let (n, r) = match r.accept(&mut self.outbuf[self.out..]) {
                    Ok(v) => v,
                    Err(e) => return Err(End::BadResponse(e)),
                };
                self.out += n;
                if let Err(e) = self.write_out(true).await {
                    return Err(End::Io(e));
                }
                self.recv_body(head, r).await
            }
            RecvRequestResult::RecvBody(r) => {
                if too_large {
                    return Err(self.body_too_large().await);
                }
                self.recv_body(head, r).await
            }
        }
    }

    async fn body_too_large(&mut self) -> End {
        let answer = body_too_large();
        self.answer_response_and_close(answer).await
    }

    async fn recv_body(
        &mut self,
        head: &Head,
        mut reply: Reply<RecvBody>,
    ) -> Result<(Reply<ProvideResponse>, Vec<u8>), End> {
        let max = head.max_body;
        if self.body_defaults_to_chunked(head) {
            // ureq-proto treats a POST/PUT/PATCH with neither content-length nor
            // transfer-encoding as chunked; HTTP/1.1 says it has no body
            // (RFC 9112 §6.3). End its chunked reader with a zero-length
            // last-chunk of our own instead of waiting for bytes that never come.
            end_chunked_body(&mut reply);
        }
        let deadline = deadline_after(self.limits.body_timeout);
        // Grow the body only as bytes arrive, so a large declared length costs
        // nothing until it is actually sent.
        let limit = match head.content_length {
            Some(n) => n as usize,
            None => max.saturating_add(1),
        };
        let mut body = Vec::new();
        let mut filled = 0;
        while !reply.is_ended() {
            let avail = self.end - self.start;
            if avail > 0 && filled < limit {
                body.resize(filled.saturating_add(avail).min(limit), 0);
                match reply.read(&self.inbuf[self.start..self.end], &mut body[filled..]) {
                    Ok((i, o)) => {
                        self.start += i;
                        filled += o;
                        if filled > max {
                            return Err(self.body_too_large().await);
                        }
                        if i > 0 || o > 0 {
                            continue;
                        }
                    }
                    Err(e) => return Err(self.bad_request(&e.to_string()).await),
                }
            }
            if filled >= limit {
                return Err(self.body_too_large().await);
            }
            match self.fill(deadline, false).await {
                Ok(Input::Data) => {}
                Ok(Input::Eof) => return Err(End::ClientGone),
                Ok(Input::Timeout) => return Err(self.request_timeout().await),
                // A chunk-size or trailer line longer than the whole buffer.
                Ok(Input::Full) => {
                    return Err(self.bad_request("chunk framing line too long").await)
                }
                Ok(Input::Shutdown) => return Err(End::Shutdown),
                Err(e) => return Err(End::Io(e)),
            }
        }
        body.truncate(filled);
        match reply.proceed() {
            Ok(r) => Ok((r, body)),
            Err(e) => Err(self.bad_request(&e.to_string()).await),
        }
    }

    fn body_defaults_to_chunked(&self, head: &Head) -> bool {
        let needs_body = matches!(head.method, Method::POST | Method::PUT | Method::PATCH);
        needs_body
            && !head.headers.contains_key(CONTENT_LENGTH)
            && !head.headers.contains_key(TRANSFER_ENCODING)
    }

    /// Polls the handler future while also reading the socket: EOF or an error
    /// means the client is gone and the future is dropped (`None`). Bytes that
    /// arrive meanwhile (a pipelined request) are kept.
    async fn run_handler(
        &mut self,
        mut fut: Pin<Box<dyn Future<Output = Response>>>,
    ) -> Option<Response> {
        self.make_room();
        let mut watching = self.end < self.inbuf.len();
        poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            while watching {
                match Pin::new(&mut self.io).poll_read(cx, &mut self.inbuf[self.end..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(n)) => {
                        self.end += n;
                        watching = self.end < self.inbuf.len();
                    }
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Hands the response to ureq-proto and writes what it frames. With
    /// `watch`, a streamed body is dropped as soon as the client goes away.
    async fn respond(
        &mut self,
        reply: Reply<ProvideResponse>,
        response: Response,
        closing: bool,
        watch: bool,
    ) -> Result<Reply<Cleanup>, End> {
        let (head, body) = match into_http(response, closing) {
            Ok(v) => v,
            Err(why) => {
                log::error!("handler produced an unsendable response: {why}");
                into_http(
                    Response::error(500, "internal_error", "the response could not be sent"),
                    closing,
                )
                .map_err(|_| End::Answered(500))?
            }
        };
        let mut reply = reply.provide(head).map_err(End::Unsendable)?;
        while !reply.is_finished() {
            match reply.write(&mut self.outbuf[self.out..]) {
                Ok(n) => self.out += n,
                Err(ureq_proto::Error::OutputOverflow) if self.out > 0 => {}
                Err(e) => return Err(End::BadResponse(e)),
            }
            if !reply.is_finished() {
                self.write_out(false).await.map_err(End::Io)?;
            }
        }
        let mut reply = match reply.proceed() {
            SendResponseResult::Cleanup(r) => {
                self.write_out(true).await.map_err(End::Io)?;
                return Ok(r);
            }
            SendResponseResult::SendBody(r) => r,
        };
        match body {
            Body::Empty => {}
            Body::Bytes(bytes) => {
                if !reply.is_chunked() && bytes.len() > self.outbuf.len() - self.out {
                    // Large sized body: write it straight from the handler's buffer.
                    self.write_out(false).await.map_err(End::Io)?;
                    reply
                        .consume_direct_write(bytes.len())
                        .map_err(End::BadResponse)?;
                    self.write_all(&bytes).await.map_err(End::Io)?;
                } else {
                    self.frame_body(&mut reply, &bytes).await?;
                }
            }
            Body::Stream(mut stream) => {
                // Let the client see the head before the first event.
                self.write_out(true).await.map_err(End::Io)?;
                loop {
                    let next = if watch {
                        match self.next_or_gone(stream.as_mut()).await {
                            Some(next) => next,
                            None => return Err(End::ClientGone),
                        }
                    } else {
                        std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await
                    };
                    let Some(chunk) = next else { break };
                    if chunk.is_empty() {
                        continue;
                    }
                    self.frame_body(&mut reply, &chunk).await?;
                    self.write_out(true).await.map_err(End::Io)?;
                }
            }
        }
        // Ends a chunked body ("0\r\n\r\n"). ureq-proto marks the body ended even
        // when the terminator did not fit, so make room first.
        if self.outbuf.len() - self.out < 16 {
            self.write_out(false).await.map_err(End::Io)?;
        }
        if !reply.is_finished() {
            let (_, n) = reply
                .write(&[], &mut self.outbuf[self.out..])
                .map_err(End::BadResponse)?;
            self.out += n;
        }
        self.write_out(true).await.map_err(End::Io)?;
        if !reply.is_finished() {
            // A stream shorter than the content-length it declared: the framing
            // is broken, only closing tells the client.
            return Err(End::BadResponse(
                ureq_proto::Error::BodyLargerThanContentLength,
            ));
        }
        Ok(reply.proceed())
    }

    /// Frames `data` as body bytes into the output buffer, writing out whenever it fills.
    async fn frame_body(
        &mut self,
        reply: &mut Reply<SendBody>,
        mut data: &[u8],
    ) -> Result<(), End> {
        while !data.is_empty() {
            let (i, o) = reply
                .write(data, &mut self.outbuf[self.out..])
                .map_err(End::BadResponse)?;
            self.out += o;
            data = &data[i..];
            if i == 0 && o == 0 {
                if self.out == 0 {
                    return Err(End::BadResponse(ureq_proto::Error::OutputOverflow));
                }
                self.write_out(false).await.map_err(End::Io)?;
            }
        }
        Ok(())
    }

    /// The next stream item, or `None` when the client went away first.
    async fn next_or_gone(
        &mut self,
        mut stream: Pin<&mut (dyn Stream<Item = Vec<u8>> + '_)>,
    ) -> Option<Option<Vec<u8>>> {
        self.make_room();
        let mut watching = self.end < self.inbuf.len();
        poll_fn(|cx| {
            if let Poll::Ready(item) = stream.as_mut().poll_next(cx) {
                return Poll::Ready(Some(item));
            }
            while watching {
                match Pin::new(&mut self.io).poll_read(cx, &mut self.inbuf[self.end..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(n)) => {
                        self.end += n;
                        watching = self.end < self.inbuf.len();
                    }
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Answers an error status outside the normal request flow, then closes.
    pub(super) async fn answer_and_close(&mut self, status: u16, code: &str, message: &str) -> End {
        self.answer_response_and_close(Response::error(status, code, message))
            .await
    }

    /// ureq-proto only frames an answer to a request it has parsed. Answers
    /// given before (or instead of) finishing one go through a throwaway Reply
    /// fed a canned GET, so the bytes on the wire still come from its
    /// serializer; `connection: close` follows because the input is not in sync.
    async fn answer_response_and_close(&mut self, response: Response) -> End {
        let status = response.status;
        if let Some(reply) = canned_reply() {
            if let Err(end) = self.respond(reply, response, true, false).await {
                log::debug!("could not answer {status}: {end}");
                return end;
            }
        }
        self.linger_close().await;
        End::Answered(status)
    }

    /// Half-closes, then reads and discards for a short while: closing with
    /// unread input would make the kernel send a reset that can destroy our
    /// answer before the client reads it.
    async fn linger_close(&mut self) {
        let deadline = deadline_after(LINGER.min(self.limits.head_timeout));
        let closed = smol::future::or(async { Some(self.io.close().await) }, async {
            Timer::at(deadline).await;
            None
        })
        .await;
        if !matches!(closed, Some(Ok(()))) {
            return;
        }
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            self.start = 0;
            self.end = 0;
            // Shutdown ends the linger too: the drain must not wait on it.
            match self.fill(deadline, true).await {
                Ok(Input::Data) => discarded += self.end,
                _ => return,
            }
        }
    }

    /// Moves unconsumed input to the front when the free tail is gone.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.inbuf.len() && self.start > 0 {
            self.inbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Reads more input into the buffer's free tail until `deadline`.
    async fn fill(&mut self, deadline: Instant, stop_on_shutdown: bool) -> io::Result<Input> {
        self.make_room();
        if self.end == self.inbuf.len() {
            return Ok(Input::Full);
        }
        let mut shutdown = pin!(self.shutdown.wait());
        poll_fn(|cx| {
            if stop_on_shutdown && shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Input::Shutdown));
            }
            match Pin::new(&mut self.io).poll_read(cx, &mut self.inbuf[self.end..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Input::Eof)),
                Poll::Ready(Ok(n)) => {
                    self.end += n;
                    return Poll::Ready(Ok(Input::Data));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if self.alarm.poll_until(cx, deadline).is_ready() {
                return Poll::Ready(Ok(Input::Timeout));
            }
            Poll::Pending
        })
        .await
    }

    /// Writes the framed output (and flushes with `flush`, which TLS needs to
    /// put records on the wire).
    async fn write_out(&mut self, flush: bool) -> io::Result<()> {
        let limit = self.limits.write_timeout;
        let (io, outbuf, out) = (&mut self.io, &self.outbuf, self.out);
        let done = smol::future::or(
            async {
                if out > 0 {
                    io.write_all(&outbuf[..out]).await?;
                }
                if flush {
                    io.flush().await?;
                }
                Ok::<_, io::Error>(true)
            },
            async {
                Timer::after(limit).await;
                Ok(false)
            },
        )
        .await?;
        self.out = 0;
        if done {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not take the response in time",
            ))
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let limit = self.limits.write_timeout;
        let io = &mut self.io;
        let done = smol::future::or(
            async {
                io.write_all(data).await?;
                Ok::<_, io::Error>(true)
            },
            async {
                Timer::after(limit).await;
                Ok(false)
            },
        )
        .await?;
        if done {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not take the response in time",
            ))
        }
    }
}

/// `now + d`, saturating: a configured timeout of "practically forever" must
/// not overflow `Instant`.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}
