//! The accept loop shared by TCP, unix sockets and TLS: admission against
//! the connection cap, one task per connection, graceful drain.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use async_io::{Async, Timer};
use smol::io::{AsyncRead, AsyncWrite};
use smol::LocalExecutor;

use super::Limits;
use crate::ops::shutdown::Shutdown;

// ------------------------------------------------------------------------------------ sockets

/// A socket whose write side can be shut down on its own.
pub(crate) trait ShutdownWrite {
    fn shutdown_write(&self) -> io::Result<()>;
}

impl ShutdownWrite for std::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

#[cfg(unix)]
impl ShutdownWrite for std::os::unix::net::UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// An async-io socket whose `poll_close` half-closes (async-io's own only
/// flushes), so the lingering close can send FIN and keep reading. TLS wraps
/// this: its close_notify goes out first, then the FIN.
pub(crate) struct Socket<T> {
    io: Async<T>,
    /// The last read would have blocked and left read interest armed with
    /// async-io; no readiness event has been seen since.
    armed: bool,
}

impl<T> Socket<T> {
    pub(crate) fn new(io: Async<T>) -> Socket<T> {
        Socket { io, armed: false }
    }
}

impl<T> AsyncRead for Socket<T>
where
    Async<T>: AsyncRead,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.armed && self.io.poll_readable(cx).is_pending() {
            // Nothing arrived since the last read would have blocked: trying
            // again would only be another `recvfrom` returning EAGAIN. (Bytes
            // the reactor has not reported yet are read when it does.)
            return Poll::Pending;
        }
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        self.armed = match read {
            Poll::Pending => true,
            // async-io remembers the readiness event that led here until the
            // next `poll_readable`; left there, the next read that would block
            // is tried twice (one wasted `recvfrom` per event). Taking it now
            // costs no syscall. When there was none, this arms the interest
            // now (epoll reports bytes already waiting at once), and, when
            // this read drained the socket (it did not fill `buf`), the next
            // read waits for the reactor instead of trying first: after a
            // whole request the next read would nearly always block.
            Poll::Ready(Ok(n)) if n > 0 => self.io.poll_readable(cx).is_pending() && n < buf.len(),
            Poll::Ready(_) => false,
        };
        read
    }
}

impl<T: ShutdownWrite> AsyncWrite for Socket<T>
where
    Async<T>: AsyncWrite,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        smol::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(self.io.get_ref().shutdown_write())
    }
}

// ------------------------------------------------------------------------------------ accept loop

/// Whether an accepted connection gets served or only a 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Serve,
    Reject,
}

/// Connections being turned away with a 503 at the same time; beyond this
/// they are dropped without an answer, so a flood cannot grow without bound.
const MAX_REJECTING: usize = 64;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A listening socket the accept loop can take connections from.
pub(crate) trait Accept {
    type Stream: 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Option<SocketAddr>)>>;
}

pub(crate) struct TcpAccept(pub(crate) Async<TcpListener>);

impl Accept for TcpAccept {
    type Stream = Async<std::net::TcpStream>;
    async fn accept(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((stream, Some(peer)))
    }
}

#[cfg(unix)]
pub(super) struct UnixAccept(pub(super) Async<std::os::unix::net::UnixListener>);

#[cfg(unix)]
impl Accept for UnixAccept {
    type Stream = Async<std::os::unix::net::UnixStream>;
    async fn accept(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, _) = self.0.accept().await?;
        Ok((stream, None))
    }
}

/// Counts a connection task while it lives; the tracker sender lets the drain
/// wait for the last task without polling.
struct Slot {
    count: Rc<Cell<usize>>,
    _track: smol::channel::Sender<()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.set(self.count.get().saturating_sub(1));
    }
}

/// The accept loop shared by plain TCP, unix sockets and TLS: admission
/// against `max_connections`, one task per connection, graceful drain.
pub(crate) async fn run_server<L, C>(
    listener: L,
    connect: C,
    limits: Limits,
    ex: &LocalExecutor<'static>,
    shutdown: &Shutdown,
) where
    L: Accept,
    C: Fn(L::Stream, Option<SocketAddr>, Admission) -> Pin<Box<dyn Future<Output = ()>>>,
{
    let (track_tx, track_rx) = smol::channel::bounded::<()>(1);
    let serving = Rc::new(Cell::new(0usize));
    let rejecting = Rc::new(Cell::new(0usize));
    // Fired when the drain time is over: every remaining connection task is
    // dropped, and with it its handler future.
    let force = Shutdown::new();

    loop {
        let accepted = smol::future::or(async { Some(listener.accept().await) }, async {
            shutdown.wait().await;
            None
        })
        .await;
        let (stream, peer) = match accepted {
            None => break,
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                log::warn!("accept failed: {e}");
                Timer::after(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let (admission, count) = if serving.get() < limits.max_connections {
            (Admission::Serve, &serving)
        } else if rejecting.get() < MAX_REJECTING {
            log::warn!(
                "connection limit ({}) reached: answering 503 to {peer:?}",
                limits.max_connections
            );
            (Admission::Reject, &rejecting)
        } else {
            continue;
        };
        count.set(count.get() + 1);
        let slot = Slot {
            count: count.clone(),
            _track: track_tx.clone(),
        };
        let conn = connect(stream, peer, admission);
        let force = force.clone();
        ex.spawn(async move {
            let _slot = slot;
            smol::future::or(conn, force.wait()).await;
        })
        .detach();
    }

    drop(listener);
    drop(track_tx);
    let open = serving.get();
    if open > 0 {
        log::info!("stopped accepting; draining {open} open connection(s)");
    }
    // `recv` only fails once every connection task has dropped its tracker.
    let drained = smol::future::or(
        async {
            let _ = track_rx.recv().await;
            true
        },
        async {
            Timer::after(limits.drain).await;
            false
        },
    )
    .await;
    if !drained {
        log::warn!(
            "drain time ({:?}) over: dropping {} unfinished connection(s)",
            limits.drain,
            serving.get()
        );
        force.trigger();
        let _ = track_rx.recv().await;
    }
}
