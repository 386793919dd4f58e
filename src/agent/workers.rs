//! The bounded worker pool: `max-concurrent-requests` threads fed by a queue of
//! at most `max-inflight` commands. Blocking MCP calls and response posts happen
//! here, never on the async loop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use smol::channel::{bounded, Receiver, Sender};

use super::dispatch::{handle, Job, WorkerBuffers, WorkerCtx};
use super::metrics::AgentMetrics;

pub struct Workers {
    tx: Sender<Job>,
    /// Commands accepted and not yet finished (queued + running).
    inflight: Arc<AtomicUsize>,
    done_rx: Receiver<()>,
    metrics: Arc<AgentMetrics>,
}

impl Workers {
    /// Starts `threads` workers. Fails only if not one thread could start.
    pub fn start(threads: usize, queue: usize, ctx: Arc<WorkerCtx>) -> std::io::Result<Workers> {
        let (tx, rx) = bounded::<Job>(queue.max(1));
        // One pending wake-up is enough: the loop re-reads the counter.
        let (done_tx, done_rx) = bounded::<()>(1);
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut started = 0;
        let mut last_err = None;
        let metrics = ctx.metrics.clone();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let ctx = ctx.clone();
            let inflight = inflight.clone();
            let done_tx = done_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("mcp-worker-{i}"))
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
            return Err(last_err.unwrap_or_else(|| std::io::Error::other("no worker thread")));
        }
        if started < threads {
            log::warn!("only {started} of {threads} worker threads could start");
        }
        Ok(Workers {
            tx,
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

    /// Moves commands from `overflow` into the queue while there is room.
    pub fn feed(&self, overflow: &mut VecDeque<Job>) {
        while let Some(job) = overflow.pop_front() {
            self.inflight.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = self.tx.try_send(job) {
                // Full (or closed after the drain): keep it for later.
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

    /// No more commands: workers exit once the queue is empty.
    pub fn close(&self) {
        self.tx.close();
    }
}
