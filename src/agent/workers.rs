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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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

/// A pool's bounded job queue. A hand-off costs one futex wake, and only
/// when a worker sleeps: the feeder knows (under the lock) whether anyone
/// waits, and a worker that finds a job queued takes it without sleeping.
struct JobQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    cap: usize,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Workers blocked in [`JobQueue::pop_blocking`].
    sleeping: usize,
    closed: bool,
}

impl JobQueue {
    fn new(cap: usize) -> JobQueue {
        JobQueue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                sleeping: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A worker never panics while holding it (panic=abort); stay usable regardless.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` unless the queue is full or closed: then hands it back.
    fn try_push(&self, job: Job) -> Option<Job> {
        let mut st = self.lock();
        if st.closed || st.jobs.len() >= self.cap {
            return Some(job);
        }
        st.jobs.push_back(job);
        let wake = st.sleeping > 0;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        None
    }

    /// The next job; `None` once the queue is closed and empty.
    fn pop_blocking(&self) -> Option<Job> {
        let mut st = self.lock();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st.sleeping += 1;
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
            st.sleeping -= 1;
        }
    }

    fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// No more jobs are accepted; queued ones are still handed out.
    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

struct Pool {
    name: String,
    channels: Vec<Channel>,
    queue: Arc<JobQueue>,
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
            let pool = Pool {
                name: spec.name,
                channels: spec.channels,
                queue: Arc::new(JobQueue::new(queue)),
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
        let queue = pool.queue.clone();
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
                while let Some(job) = queue.pop_blocking() {
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
        while pool.queue.len() > pool.idle.load(Ordering::Acquire) {
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
            if let Some(job) = pool.queue.try_push(job) {
                // Full (or closed after the drain): keep it for later, in order.
                self.inflight.fetch_sub(1, Ordering::AcqRel);
                overflow.push_front(job);
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
            p.queue.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::proto::command::{Command, CommandKind, ShardToken};

    fn job(id: &str) -> Job {
        Job {
            command: Command {
                request_id: id.to_string(),
                shard_token: ShardToken::parse("shard").unwrap(),
                channel: Channel::main(),
                created_at: None,
                response_timeout: None,
                headers: Vec::new(),
                kind: CommandKind::SessionTermination,
                warnings: Vec::new(),
            },
            deadline: None,
            receipt: Instant::now(),
        }
    }

    fn id(j: Option<Job>) -> Option<String> {
        j.map(|j| j.command.request_id)
    }

    #[test]
    fn queue_is_bounded_fifo_and_drains_after_close() {
        let q = JobQueue::new(2);
        assert!(q.try_push(job("a")).is_none());
        assert!(q.try_push(job("b")).is_none());
        let back = q.try_push(job("c")).map(|j| j.command.request_id);
        assert_eq!(
            back.as_deref(),
            Some("c"),
            "a full queue hands the job back"
        );
        assert_eq!(q.len(), 2);
        assert_eq!(id(q.pop_blocking()).as_deref(), Some("a"));
        q.close();
        assert!(q.try_push(job("d")).is_some(), "closed: nothing new");
        assert_eq!(
            id(q.pop_blocking()).as_deref(),
            Some("b"),
            "queued jobs still served"
        );
        assert_eq!(id(q.pop_blocking()), None);
    }

    #[test]
    fn sleeping_workers_are_woken_by_a_job_and_by_close() {
        let q = Arc::new(JobQueue::new(4));
        let (tx, rx) = std::sync::mpsc::channel();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (q, tx) = (q.clone(), tx.clone());
                std::thread::spawn(move || {
                    while let Some(j) = q.pop_blocking() {
                        tx.send(j.command.request_id).unwrap();
                    }
                })
            })
            .collect();
        // Both asleep before the jobs arrive.
        let until = Instant::now() + Duration::from_secs(10);
        while q.lock().sleeping < 2 {
            assert!(Instant::now() < until, "workers did not block");
            std::thread::yield_now();
        }
        assert!(q.try_push(job("x")).is_none());
        assert!(q.try_push(job("y")).is_none());
        let mut got = vec![
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        ];
        got.sort();
        assert_eq!(got, ["x", "y"]);
        q.close();
        for w in workers {
            w.join().unwrap();
        }
    }
}
