//! The bounded worker pools. Each pool has its own threads and a queue of at
//! most `max-inflight` commands, and serves a set of channels: all HTTP
//! channels share one pool of `max-concurrent-requests` threads; each stdio
//! channel has a pool of one thread (one request in flight per child); commands
//! for a channel nobody serves go to a one-thread pool that answers them with
//! an error. A slow channel therefore never takes another channel's threads.
//! Blocking MCP calls and response posts happen here, never on the async loop.
//!
//! Threads start on demand: one per pool at first, another whenever a command
//! is queued and none of the pool's threads is idle, up to the pool's size. An
//! agent serving one request at a time keeps one worker thread (its stack, its
//! buffers and, with glibc, its malloc arena) instead of the configured maximum.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use smol::channel::{bounded, Receiver, Sender};

use super::dispatch::{handle, Job, WorkerBuffers, WorkerCtx};
use super::metrics::AgentMetrics;
use crate::proto::channel::Channel;

/// Stack of a worker or lane thread. A command's deepest path (ureq, rustls,
/// the SSE parser; the JSON scanner keeps its own stack on the heap) needs far
/// less; the default 2 MiB is only address space, this keeps it honest.
pub const WORKER_STACK: usize = 256 * 1024;

/// One pool: a thread name prefix, its size and the channels it serves
/// (empty: the pool for channels nobody serves).
pub struct PoolSpec {
    pub name: String,
    pub threads: usize,
    pub channels: Vec<Channel>,
}

struct Pool {
    name: String,
    channels: Vec<Channel>,
    tx: Sender<Job>,
    rx: Receiver<Job>,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
    started: AtomicUsize,
    max: usize,
}

pub struct Workers {
    pools: Vec<Pool>,
    /// Commands accepted and not yet finished (queued + running).
    inflight: Arc<AtomicUsize>,
    done_tx: Sender<()>,
    done_rx: Receiver<()>,
    ctx: Arc<WorkerCtx>,
}

impl Workers {
    /// Prepares every pool and starts its first thread. Fails only if a pool
    /// could not start that one thread.
    pub fn start(
        specs: Vec<PoolSpec>,
        queue: usize,
        ctx: Arc<WorkerCtx>,
    ) -> std::io::Result<Workers> {
        // One pending wake-up is enough: the loop re-reads the counter.
        let (done_tx, done_rx) = bounded::<()>(1);
        let mut workers = Workers {
            pools: Vec::with_capacity(specs.len()),
            inflight: Arc::new(AtomicUsize::new(0)),
            done_tx,
            done_rx,
            ctx,
        };
        for spec in specs {
            let (tx, rx) = bounded::<Job>(queue.max(1));
            let pool = Pool {
                name: spec.name,
                channels: spec.channels,
                tx,
                rx,
                idle: Arc::new(AtomicUsize::new(0)),
                started: AtomicUsize::new(0),
                max: spec.threads.max(1),
            };
            if let Err(e) = workers.spawn(&pool) {
                // Threads already started end once their queues close.
                workers.close();
                return Err(e);
            }
            workers.pools.push(pool);
        }
        Ok(workers)
    }

    /// Starts one more thread for `pool` unless it has its maximum; returns
    /// whether one started. The slot is taken atomically: the poll thread and
    /// the async loop both feed the queues.
    fn spawn(&self, pool: &Pool) -> std::io::Result<bool> {
        let Ok(i) = pool
            .started
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < pool.max).then_some(n + 1)
            })
        else {
            return Ok(false);
        };
        let rx = pool.rx.clone();
        let ctx = self.ctx.clone();
        let inflight = self.inflight.clone();
        let done_tx = self.done_tx.clone();
        let idle = pool.idle.clone();
        // Counted idle before it runs, so a burst does not start one thread per job.
        idle.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{i}", pool.name))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                let mut bufs = WorkerBuffers::default();
                while let Ok(job) = rx.recv_blocking() {
                    idle.fetch_sub(1, Ordering::AcqRel);
                    ctx.metrics.started();
                    handle(job, &ctx, &mut bufs);
                    ctx.metrics.finished();
                    inflight.fetch_sub(1, Ordering::AcqRel);
                    idle.fetch_add(1, Ordering::AcqRel);
                    let _ = done_tx.try_send(());
                }
            });
        match spawned {
            Ok(_) => Ok(true),
            Err(e) => {
                pool.idle.fetch_sub(1, Ordering::AcqRel);
                pool.started.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Starts threads while a pool's queued commands outnumber its idle threads.
    fn grow(&self, pool: &Pool) {
        while pool.tx.len() > pool.idle.load(Ordering::Acquire) {
            match self.spawn(pool) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // The running threads still serve the queue, only slower.
                    log::warn!(
                        "cannot start another {} thread ({e}); continuing with {}",
                        pool.name,
                        pool.started.load(Ordering::Acquire)
                    );
                    break;
                }
            }
        }
    }

    pub fn metrics(&self) -> &AgentMetrics {
        &self.ctx.metrics
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    fn pool_for(&self, channel: &Channel) -> Option<&Pool> {
        self.pools
            .iter()
            .find(|p| p.channels.contains(channel))
            .or_else(|| self.pools.iter().find(|p| p.channels.is_empty()))
            .or_else(|| self.pools.first())
    }

    /// Moves commands from `overflow` into their pools' queues while there is room.
    pub fn feed(&self, overflow: &mut VecDeque<Job>) {
        while let Some(job) = overflow.pop_front() {
            let Some(pool) = self.pool_for(&job.command.channel) else {
                overflow.push_front(job);
                break;
            };
            self.inflight.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = pool.tx.try_send(job) {
                // Full (or closed after the drain): keep it for later, in order.
                self.inflight.fetch_sub(1, Ordering::AcqRel);
                overflow.push_front(e.into_inner());
                break;
            }
            self.grow(pool);
        }
    }

    /// Resolves after some command finished since the last call.
    pub async fn completed(&self) {
        let _ = self.done_rx.recv().await;
    }

    /// No more commands: workers exit once their queues are empty.
    pub fn close(&self) {
        for p in &self.pools {
            p.tx.close();
        }
    }
}
