//! The TCP transport under the agent's ureq clients (in place of ureq's own
//! `TcpConnector`; ureq's CONNECT-proxy and rustls connectors still chain on
//! top of it, see `agent::client`).
//!
//! Why not ureq's: on a reused keep-alive connection it toggles the socket's
//! blocking mode twice (two `ioctl(FIONBIO)`) around every liveness probe, and
//! a pooled connection is probed when it goes back to the pool and again when
//! it is taken; and it sets `SO_RCVTIMEO`/`SO_SNDTIMEO` before every read and
//! write, because the remaining time to the request's deadline differs each
//! time. Per command (three requests) that was 12 `ioctl` and 8 `setsockopt`.
//! Here:
//!
//! - liveness is one `recv(MSG_PEEK | MSG_DONTWAIT)`, and only when a pooled
//!   connection is taken: ureq also asks when it puts a connection back right
//!   after reading a response, where the answer is "open" (whatever arrives
//!   while it waits in the pool, bytes or an EOF, the check on taking sees);
//! - what ureq transmits is held ([`Outgoing`]) until it waits for input, or
//!   until less than half the output buffer is left: a request's head and
//!   body (and a proxy CONNECT, which ureq writes piece by piece) go out in one
//!   `send`, one TCP segment, where they fit. Nothing waits for input with
//!   bytes unsent: the only wait is [`Transport::await_input`], which sends
//!   them first. A TLS connection sits above this transport, so the records
//!   of one request coalesce the same way;
//! - writes are `send(MSG_DONTWAIT)`, which for a request that fits the socket
//!   buffer (all of ours but big bodies) is the only syscall; only if the
//!   kernel buffer is full does it wait with `poll(2)` against the deadline
//!   of the earliest transmit it holds;
//! - reads block with a `SO_RCVTIMEO` that is changed only when it would fire
//!   after the deadline, or far before it ([`read_timeout_change`]). A read
//!   woken before the deadline arms the exact rest and reads again, so a
//!   deadline fires on time, never late.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{RecvFlags, SendFlags};
use ureq::unversioned::transport::time::Duration as UreqDuration;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport,
};
use ureq::{Error, Timeout};

/// Connects plain TCP (to the target, or to the CONNECT proxy when one is
/// configured: ureq's proxy connector runs the whole chain for that hop).
#[derive(Debug, Default)]
pub struct TcpConnector;

impl<In: Transport> Connector<In> for TcpConnector {
    type Out = Either<In, TcpTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        if let Some(transport) = chained {
            // A proxy tunnel is already open: it is the connection.
            return Ok(Some(Either::A(transport)));
        }
        let config = details.config;
        let stream = connect(&details.addrs, details.timeout)?;
        if config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let transport = TcpTransport::new(
            stream,
            config.input_buffer_size(),
            config.output_buffer_size(),
        );
        (details.register_shutdown)(transport.shutdown_handle())?;
        Ok(Some(Either::B(transport)))
    }
}

/// The shortest time one address gets when several are tried.
const MIN_PER_ADDRESS: Duration = Duration::from_millis(10);

/// A remaining time as std's, `None` when there is no deadline.
fn remaining(after: UreqDuration) -> Option<Duration> {
    match after {
        UreqDuration::Exact(d) => Some(d),
        UreqDuration::NotHappening => None,
    }
}

/// The time the next of `left` addresses may take: half of what remains
/// (never under [`MIN_PER_ADDRESS`]: a host with IPv6 and IPv4 addresses of
/// which the first does not answer still leaves the other time), all of it
/// for the last one. Never more than remains: the deadline is the deadline.
fn address_budget(rest: Option<Duration>, left: usize) -> Option<Duration> {
    let rest = rest?;
    let share = if left > 1 {
        (rest / 2).max(MIN_PER_ADDRESS)
    } else {
        rest
    };
    Some(share.min(rest))
}

/// Whether a failed connect concerns only that address, so the next one may
/// still work (as ureq decides: refused, or unreachable at routing level).
fn is_address_specific(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::AddrNotAvailable
    )
}

fn connect(addrs: &[SocketAddr], timeout: NextTimeout) -> Result<TcpStream, Error> {
    let deadline = remaining(timeout.after).and_then(|r| Instant::now().checked_add(r));
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate() {
        let rest = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if rest.is_some_and(|r| r.is_zero()) {
            return Err(Error::Timeout(timeout.reason));
        }
        let attempt = match address_budget(rest, addrs.len() - i) {
            Some(budget) => TcpStream::connect_timeout(addr, budget),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                last = Some(Error::Timeout(Timeout::Connect));
            }
            Err(e) if is_address_specific(&e) => last = Some(Error::Io(e)),
            Err(e) => return Err(Error::Io(e)),
        }
    }
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(Error::Timeout(timeout.reason));
    }
    Err(last.unwrap_or_else(|| {
        Error::Io(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "no address to connect to",
        ))
    }))
}

/// Output ureq has transmitted that is not sent yet: it goes out with the
/// rest of the request, in one `send`, when ureq waits for the answer.
///
/// ureq writes from the start of [`Buffers::output`] each time; here that is
/// the free part after what is held. Sent at the latest when less than half
/// the buffer is free, so ureq always gets room for a body chunk and for the
/// longest head line it could write at the start (ureq-proto refuses a line
/// that does not fit). A request's head always starts at an empty buffer:
/// the request before it on the connection ended waiting for its answer.
#[derive(Debug)]
pub struct Outgoing {
    /// Allocated at the first write (a pooled connection keeps it).
    buf: Vec<u8>,
    size: usize,
    held: usize,
    /// The earliest deadline (and its reason) of the transmits held.
    deadline: Option<Instant>,
    reason: Timeout,
}

impl Outgoing {
    pub fn new(size: usize) -> Outgoing {
        Outgoing {
            buf: Vec::new(),
            size: size.max(1),
            held: 0,
            deadline: None,
            reason: Timeout::Global,
        }
    }

    /// Where ureq writes next: after what is held.
    pub fn free(&mut self) -> &mut [u8] {
        if self.buf.len() < self.size {
            self.buf.resize(self.size, 0);
        }
        self.buf.get_mut(self.held..).unwrap_or_default()
    }

    /// Holds the `amount` bytes just written to [`Outgoing::free`], due by
    /// `deadline`. True when they must go now: the rest is too small for the
    /// next write.
    pub fn hold(&mut self, amount: usize, deadline: Option<Instant>, reason: Timeout) -> bool {
        if amount == 0 {
            return false;
        }
        if self.held == 0 || earlier(deadline, self.deadline) {
            self.deadline = deadline;
            self.reason = reason;
        }
        let size = self.buf.len();
        self.held = (self.held + amount).min(size);
        size - self.held < size.div_ceil(2)
    }

    /// The bytes held, oldest first.
    pub fn pending(&self) -> &[u8] {
        self.buf.get(..self.held).unwrap_or_default()
    }

    /// Forgets what is held (sent, or the connection failed).
    pub fn clear(&mut self) {
        self.held = 0;
    }
}

/// Whether deadline `a` comes before `b` (no deadline is never).
fn earlier(a: Option<Instant>, b: Option<Instant>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// ureq's buffers for input; ours for output ([`Outgoing`]).
#[derive(Debug)]
struct TcpBuffers {
    /// Its output part is never used: it is created with one byte of it.
    input: LazyBuffers,
    output: Outgoing,
}

impl Buffers for TcpBuffers {
    fn output(&mut self) -> &mut [u8] {
        self.output.free()
    }

    fn input(&self) -> &[u8] {
        self.input.input()
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.input.input_append_buf()
    }

    fn input_appended(&mut self, amount: usize) {
        self.input.input_appended(amount);
    }

    fn input_consume(&mut self, amount: usize) {
        self.input.input_consume(amount);
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        let (tmp, _) = self.input.tmp_and_output();
        (tmp, self.output.free())
    }

    fn can_use_input(&self) -> bool {
        self.input.can_use_input()
    }
}

pub struct TcpTransport {
    /// Shared (weakly) with the shutdown handle, which can end a blocked read.
    stream: Arc<TcpStream>,
    buffers: TcpBuffers,
    /// The socket's `SO_RCVTIMEO` now (`None`: reads block without limit).
    read_timeout: Option<Duration>,
    /// A read returned bytes since ureq last asked [`Transport::is_open`]:
    /// the next question is ureq putting the connection back in its pool.
    just_read: bool,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

impl TcpTransport {
    /// A transport over a connected stream, with ureq's buffer sizes.
    pub fn new(stream: TcpStream, input_size: usize, output_size: usize) -> TcpTransport {
        TcpTransport {
            stream: Arc::new(stream),
            buffers: TcpBuffers {
                input: LazyBuffers::new(input_size.max(1), 1),
                output: Outgoing::new(output_size),
            },
            read_timeout: None,
            just_read: false,
        }
    }

    /// Sends what is held, by its own deadline or `by` if earlier.
    fn flush(&mut self, by: Option<Instant>, reason: Timeout) -> Result<(), Error> {
        let out = &self.buffers.output;
        let (deadline, reason) = if earlier(out.deadline, by) {
            (out.deadline, out.reason)
        } else {
            (by, reason)
        };
        let result = send_all(&self.stream, out.pending(), deadline, reason);
        self.buffers.output.clear();
        result
    }

    fn shutdown_handle(&self) -> Weak<dyn ShutdownHandle> {
        // ureq implements the handle for TcpStream (shutdown of both directions).
        Arc::downgrade(&self.stream) as Weak<dyn ShutdownHandle>
    }
}

/// The `SO_RCVTIMEO` to arm before a read with `rest` left to its deadline,
/// or `None` to keep `current`. `exact` after a read woke before the
/// deadline: then the rest itself, so it fires on time.
///
/// Otherwise a value a little under the rest, so that the next reads of the
/// same request (whose rest has shrunk a little) and the next requests with
/// the same timeout keep it without a syscall. It is kept while it fires no
/// later than the deadline and no earlier than halfway there; a read woken
/// early costs one more `setsockopt` and `recv`, but only on a read that
/// waited that long anyway.
fn read_timeout_change(
    current: Option<Duration>,
    rest: Option<Duration>,
    exact: bool,
) -> Option<Option<Duration>> {
    let Some(rest) = rest else {
        return current.map(|_| None);
    };
    if exact {
        return (current != Some(rest)).then_some(Some(rest));
    }
    match current {
        Some(c) if c <= rest && c >= rest / 2 => None,
        _ => Some(Some(rest - rest / 8)),
    }
}

/// The time left to `deadline`, `Ok(None)` without one, the timeout when it has passed.
fn left(deadline: Option<Instant>, reason: Timeout) -> Result<Option<Duration>, Error> {
    match deadline {
        None => Ok(None),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(r) if !r.is_zero() => Ok(Some(r)),
            _ => Err(Error::Timeout(reason)),
        },
    }
}

fn deadline_of(timeout: NextTimeout) -> Result<Option<Instant>, Error> {
    match remaining(timeout.after) {
        Some(r) if r.is_zero() => Err(Error::Timeout(timeout.reason)),
        Some(r) => Ok(Instant::now().checked_add(r)),
        None => Ok(None),
    }
}

/// Waits until the socket can take more bytes or the deadline passes.
fn wait_writable(
    stream: &TcpStream,
    deadline: Option<Instant>,
    reason: Timeout,
) -> Result<(), Error> {
    loop {
        let rest = left(deadline, reason)?;
        let ts = match rest.map(Timespec::try_from) {
            Some(Ok(ts)) => Some(ts),
            // Too far away to express: as good as no limit.
            Some(Err(_)) | None => None,
        };
        let mut fds = [PollFd::new(stream, PollFlags::OUT)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            // Ready, or an error/hang-up that the next send reports.
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::Io(e.into())),
        }
    }
}

/// Sends all of `out`, waiting for room in the socket buffer until `deadline`.
fn send_all(
    stream: &TcpStream,
    mut out: &[u8],
    deadline: Option<Instant>,
    reason: Timeout,
) -> Result<(), Error> {
    while !out.is_empty() {
        match rustix::net::send(stream, out, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => out = out.get(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => wait_writable(stream, deadline, reason)?,
            Err(e) => return Err(Error::Io(e.into())),
        }
    }
    Ok(())
}

impl Transport for TcpTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        let deadline = deadline_of(timeout)?;
        if self.buffers.output.hold(amount, deadline, timeout.reason) {
            self.flush(deadline, timeout.reason)?;
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        if !self.buffers.output.pending().is_empty() {
            let write = timeout.for_write();
            self.flush(deadline_of(write)?, write.reason)?;
        }
        let timeout = timeout.for_read();
        let deadline = deadline_of(timeout)?;
        let mut exact = false;
        loop {
            let rest = left(deadline, timeout.reason)?;
            if let Some(change) = read_timeout_change(self.read_timeout, rest, exact) {
                self.stream.set_read_timeout(change)?;
                self.read_timeout = change;
            }
            let input = self.buffers.input_append_buf();
            match (&*self.stream).read(input) {
                Ok(n) => {
                    self.buffers.input_appended(n);
                    self.just_read = n > 0;
                    return Ok(n > 0);
                }
                // SO_RCVTIMEO fired: at the deadline (`left` reports it), or
                // before it when the armed value was shorter than the rest.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    exact = true;
                }
                // Linux does not restart a socket read with a timeout after a signal.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => exact = true,
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    fn is_open(&mut self) -> bool {
        if std::mem::take(&mut self.just_read) {
            return true;
        }
        let mut byte = [0u8; 1];
        loop {
            return match rustix::net::recv(
                &*self.stream,
                &mut byte[..],
                RecvFlags::PEEK | RecvFlags::DONTWAIT,
            ) {
                // Nothing to read: the peer neither closed nor sent anything.
                Err(rustix::io::Errno::AGAIN) => true,
                Err(rustix::io::Errno::INTR) => continue,
                // EOF (the server closed it), bytes nobody asked for, or an error.
                Ok(_) | Err(_) => false,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_timeout_that_fits_is_kept() {
        // Armed at 7/8 of 30 s; a later read of the same request, and the
        // next request with the same timeout, keep it.
        assert_eq!(read_timeout_change(Some(S(26)), Some(S(30)), false), None);
        assert_eq!(read_timeout_change(Some(S(26)), Some(S(27)), false), None);
        assert_eq!(read_timeout_change(Some(S(26)), Some(S(52)), false), None);
    }

    #[test]
    fn a_timeout_that_would_fire_late_is_changed() {
        assert_eq!(
            read_timeout_change(Some(S(26)), Some(S(16)), false),
            Some(Some(S(14)))
        );
        assert_eq!(
            read_timeout_change(None, Some(S(8)), false),
            Some(Some(S(7)))
        );
    }

    #[test]
    fn a_timeout_far_before_the_deadline_is_changed() {
        assert_eq!(
            read_timeout_change(Some(S(1)), Some(S(8)), false),
            Some(Some(S(7)))
        );
    }

    #[test]
    fn an_early_wake_arms_the_exact_rest() {
        assert_eq!(
            read_timeout_change(Some(S(7)), Some(S(1)), true),
            Some(Some(S(1)))
        );
        assert_eq!(read_timeout_change(Some(S(1)), Some(S(1)), true), None);
    }

    #[test]
    fn no_deadline_means_no_socket_timeout() {
        assert_eq!(read_timeout_change(Some(S(3)), None, false), Some(None));
        assert_eq!(read_timeout_change(None, None, false), None);
    }

    #[test]
    fn addresses_share_the_connect_time() {
        assert_eq!(address_budget(Some(S(10)), 1), Some(S(10)));
        assert_eq!(address_budget(Some(S(10)), 3), Some(S(5)));
        let ms = Duration::from_millis;
        assert_eq!(address_budget(Some(ms(12)), 2), Some(MIN_PER_ADDRESS));
        // Never past the deadline, not even for the floor.
        assert_eq!(address_budget(Some(ms(4)), 2), Some(ms(4)));
        assert_eq!(address_budget(Some(ms(1)), 1), Some(ms(1)));
        assert_eq!(address_budget(None, 2), None);
    }

    #[test]
    fn refusals_try_the_next_address_other_errors_do_not() {
        assert!(is_address_specific(
            &io::ErrorKind::ConnectionRefused.into()
        ));
        assert!(is_address_specific(
            &io::ErrorKind::NetworkUnreachable.into()
        ));
        assert!(!is_address_specific(
            &io::ErrorKind::PermissionDenied.into()
        ));
        assert!(!is_address_specific(&io::ErrorKind::TimedOut.into()));
    }

    #[test]
    fn an_expired_deadline_is_the_timeout_of_its_reason() {
        let past = Some(Instant::now());
        assert!(matches!(
            left(past, Timeout::Global),
            Err(Error::Timeout(Timeout::Global))
        ));
        assert!(matches!(left(None, Timeout::Global), Ok(None)));
        let zero = NextTimeout {
            after: UreqDuration::Exact(Duration::ZERO),
            ..NextTimeout::default()
        };
        assert!(matches!(deadline_of(zero), Err(Error::Timeout(_))));
    }

    fn write(out: &mut Outgoing, bytes: &[u8]) -> usize {
        let free = out.free();
        let n = bytes.len().min(free.len());
        free[..n].copy_from_slice(&bytes[..n]);
        n
    }

    #[test]
    fn a_head_and_body_that_fit_are_held_together() {
        let mut out = Outgoing::new(1024);
        let n = write(&mut out, b"POST / HTTP/1.1\r\n\r\n");
        assert!(!out.hold(n, None, Timeout::SendRequest));
        // ureq writes the body at the start of what it is given: after the head.
        let n = write(&mut out, b"{}");
        assert!(!out.hold(n, None, Timeout::SendBody));
        assert_eq!(out.pending(), b"POST / HTTP/1.1\r\n\r\n{}");
        assert_eq!(out.free().len(), 1024 - 21);
        out.clear();
        assert!(out.pending().is_empty());
        assert_eq!(out.free().len(), 1024);
    }

    #[test]
    fn held_output_goes_before_less_than_half_the_buffer_is_left() {
        let mut out = Outgoing::new(1024);
        let n = write(&mut out, &[b'h'; 500]);
        assert!(!out.hold(n, None, Timeout::SendRequest));
        let n = write(&mut out, &[b'b'; 20]);
        assert!(
            out.hold(n, None, Timeout::SendBody),
            "512 free is too little"
        );
        // A body larger than the buffer: each full buffer goes at once.
        out.clear();
        let n = write(&mut out, &[b'b'; 4096]);
        assert_eq!(n, 1024);
        assert!(out.hold(n, None, Timeout::SendBody));
        // Even a one-byte buffer makes progress.
        let mut tiny = Outgoing::new(1);
        assert_eq!(write(&mut tiny, b"ab"), 1);
        assert!(tiny.hold(1, None, Timeout::SendBody));
        assert!(!tiny.hold(0, None, Timeout::SendBody));
    }

    #[test]
    fn held_output_keeps_the_earliest_deadline() {
        let now = Instant::now();
        let mut out = Outgoing::new(1024);
        let n = write(&mut out, b"head");
        out.hold(n, None, Timeout::SendRequest);
        let n = write(&mut out, b"body");
        out.hold(n, Some(now + S(5)), Timeout::SendBody);
        let n = write(&mut out, b"more");
        out.hold(n, Some(now + S(9)), Timeout::Global);
        assert_eq!(
            (out.deadline, out.reason),
            (Some(now + S(5)), Timeout::SendBody)
        );
        // A new request starts from its own deadline.
        out.clear();
        let n = write(&mut out, b"next");
        out.hold(n, Some(now + S(30)), Timeout::Global);
        assert_eq!(out.deadline, Some(now + S(30)));
    }

    #[test]
    fn transmitted_output_is_sent_in_one_piece_when_input_is_awaited() {
        use std::io::Write;
        use std::net::TcpListener;

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut t = TcpTransport::new(client, 1024, 1024);
        let timeout = NextTimeout {
            after: UreqDuration::Exact(S(10)),
            ..NextTimeout::default()
        };
        for part in [
            &b"POST / HTTP/1.1\r\n"[..],
            b"Content-Length: 2\r\n\r\n",
            b"{}",
        ] {
            let out = t.buffers().output();
            out[..part.len()].copy_from_slice(part);
            t.transmit_output(part.len(), timeout).unwrap();
        }
        server.set_nonblocking(true).unwrap();
        let mut got = [0u8; 256];
        let nothing = (&server).read(&mut got).unwrap_err();
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);

        let expect = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let answer = std::thread::spawn(move || {
            server.set_nonblocking(false).unwrap();
            let n = (&server).read(&mut got).unwrap();
            let first = got[..n].to_vec();
            (&server)
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap();
            first
        });
        // Sends first, then waits: without the send the server would never answer.
        assert!(t.await_input(timeout).unwrap());
        assert!(t.buffers().input().starts_with(b"HTTP/1.1 204"));
        assert_eq!(answer.join().unwrap(), expect);
        assert!(t.buffers.output.pending().is_empty());
    }
}
