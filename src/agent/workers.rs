//! The bounded worker pool: up to `max-concurrent-requests` threads fed by a
//! queue of at most `max-inflight` commands. Blocking MCP calls and response
//! posts happen here, never on the async loop.
//!
//! Workers start on demand: one at first, another whenever a command is queued
//! and no worker is idle, up to the maximum. An agent that serves one request
//! at a time keeps one worker thread (its stack, its buffers, and with glibc
//! its malloc arena) instead of the configured maximum.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use smol::channel::{bounded, Receiver, Sender};

use super::dispatch::{handle, Job, WorkerBuffers, WorkerCtx};

/// Stack of a worker thread. A command's deepest path (ureq, rustls, the SSE
/// parser; the JSON scanner keeps its own stack on the heap) needs far less;
/// the default 2 MiB is address space, this keeps the reservation honest.
pub const WORKER_STACK: usize = 256 * 1024;

pub struct Workers {
    tx: Sender<Job>,
    /// Commands accepted and not yet finished (queued + running).
    inflight: Arc<AtomicUsize>,
    done_rx: Receiver<()>,
    pool: Pool,
}

/// What starting another worker needs.
struct Pool {
    rx: Receiver<Job>,
    ctx: Arc<WorkerCtx>,
    done_tx: Sender<()>,
    /// Workers waiting for a job.
    idle: Arc<AtomicUsize>,
    started: AtomicUsize,
    max: usize,
}

impl Pool {
    fn spawn(&self, inflight: &Arc<AtomicUsize>) -> std::io::Result<()> {
        let i = self.started.load(Ordering::Acquire);
        let rx = self.rx.clone();
        let ctx = self.ctx.clone();
        let inflight = inflight.clone();
        let done_tx = self.done_tx.clone();
        let idle = self.idle.clone();
        // Counted idle before it runs, so a burst does not start one thread per job.
        idle.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name(format!("mcp-worker-{i}"))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                let mut bufs = WorkerBuffers::default();
                while let Ok(job) = rx.recv_blocking() {
                    idle.fetch_sub(1, Ordering::AcqRel);
                    handle(job, &ctx, &mut bufs);
                    inflight.fetch_sub(1, Ordering::AcqRel);
                    idle.fetch_add(1, Ordering::AcqRel);
                    let _ = done_tx.try_send(());
                }
            });
        match spawned {
            Ok(_) => {
                self.started.store(i + 1, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }
}

impl Workers {
    /// Prepares up to `threads` workers and starts the first. Fails only if
    /// that one cannot start.
    pub fn start(threads: usize, queue: usize, ctx: Arc<WorkerCtx>) -> std::io::Result<Workers> {
        let (tx, rx) = bounded::<Job>(queue.max(1));
        // One pending wake-up is enough: the loop re-reads the counter.
        let (done_tx, done_rx) = bounded::<()>(1);
        let inflight = Arc::new(AtomicUsize::new(0));
        let pool = Pool {
            rx,
            ctx,
            done_tx,
            idle: Arc::new(AtomicUsize::new(0)),
            started: AtomicUsize::new(0),
            max: threads.max(1),
        };
        pool.spawn(&inflight)?;
        Ok(Workers {
            tx,
            inflight,
            done_rx,
            pool,
        })
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Worker threads started so far.
    pub fn threads(&self) -> usize {
        self.pool.started.load(Ordering::Acquire)
    }

    /// Moves commands from `overflow` into the queue while there is room, and
    /// starts a worker when queued commands outnumber the idle ones.
    pub fn feed(&self, overflow: &mut VecDeque<Job>) {
        while let Some(job) = overflow.pop_front() {
            self.inflight.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = self.tx.try_send(job) {
                // Full (or closed after the drain): keep it for later.
                self.inflight.fetch_sub(1, Ordering::AcqRel);
                overflow.push_front(e.into_inner());
                break;
            }
            self.grow();
        }
    }

    fn grow(&self) {
        let pool = &self.pool;
        while self.tx.len() > pool.idle.load(Ordering::Acquire)
            && pool.started.load(Ordering::Acquire) < pool.max
        {
            if let Err(e) = pool.spawn(&self.inflight) {
                // The running workers still serve the queue, only slower.
                log::warn!(
                    "cannot start another worker thread ({e}); continuing with {}",
                    self.threads()
                );
                break;
            }
        }
    }

    /// Resolves after some command finished since the last call.
    pub async fn completed(&self) {
        let _ = self.done_rx.recv().await;
    }

    /// No more commands: workers exit once the queue is empty.
    pub fn close(&self) {
        self.tx.close();
    }
}
