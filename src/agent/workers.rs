//! The bounded worker pools. Each pool has its own threads and a queue of at
//! most `max-inflight` commands, and serves a set of channels: all HTTP
//! channels share one pool of `max-concurrent-requests` threads; each stdio
//! channel has a pool of one thread (one request in flight per child); commands
//! for a channel nobody serves go to a one-thread pool that answers them with
//! an error. A slow channel therefore never takes another channel's threads.
//! Blocking MCP calls and response posts happen here, never on the async loop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use smol::channel::{bounded, Receiver, Sender};

use super::dispatch::{handle, Job, WorkerBuffers, WorkerCtx};
use super::metrics::AgentMetrics;
use crate::proto::channel::Channel;

/// One pool: a thread name prefix, its size and the channels it serves
/// (empty: the pool for channels nobody serves).
pub struct PoolSpec {
    pub name: String,
    pub threads: usize,
    pub channels: Vec<Channel>,
}

struct Pool {
    channels: Vec<Channel>,
    tx: Sender<Job>,
}

pub struct Workers {
    pools: Vec<Pool>,
    /// Commands accepted and not yet finished (queued + running).
    inflight: Arc<AtomicUsize>,
    done_rx: Receiver<()>,
    metrics: Arc<AgentMetrics>,
}

impl Workers {
    /// Starts every pool. Fails only if a pool could not start one thread.
    pub fn start(
        specs: Vec<PoolSpec>,
        queue: usize,
        ctx: Arc<WorkerCtx>,
    ) -> std::io::Result<Workers> {
        // One pending wake-up is enough: the loop re-reads the counter.
        let (done_tx, done_rx) = bounded::<()>(1);
        let inflight = Arc::new(AtomicUsize::new(0));
        let metrics = ctx.metrics.clone();
        let mut pools = Vec::with_capacity(specs.len());
        for spec in specs {
            let (tx, rx) = bounded::<Job>(queue.max(1));
            let threads = spec.threads.max(1);
            let mut started = 0;
            let mut last_err = None;
            for i in 0..threads {
                let rx = rx.clone();
                let ctx = ctx.clone();
                let inflight = inflight.clone();
                let done_tx = done_tx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("{}-{i}", spec.name))
                    .spawn(move || {
                        let mut bufs = WorkerBuffers::default();
                        while let Ok(job) = rx.recv_blocking() {
                            ctx.metrics.started();
                            handle(job, &ctx, &mut bufs);
                            ctx.metrics.finished();
                            inflight.fetch_sub(1, Ordering::AcqRel);
                            let _ = done_tx.try_send(());
                        }
                    });
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => last_err = Some(e),
                }
            }
            if started == 0 {
                // Threads already started end once their queues close.
                for p in &pools {
                    let p: &Pool = p;
                    p.tx.close();
                }
                return Err(last_err.unwrap_or_else(|| std::io::Error::other("no worker thread")));
            }
            if started < threads {
                log::warn!(
                    "only {started} of {threads} {} threads could start",
                    spec.name
                );
            }
            pools.push(Pool {
                channels: spec.channels,
                tx,
            });
        }
        Ok(Workers {
            pools,
            inflight,
            done_rx,
            metrics,
        })
    }

    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
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
