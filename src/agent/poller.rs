//! The poll loop (async, on the single-threaded executor): ask for as many
//! commands as there are free slots, hand them to the workers, back off on errors.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::channel::Receiver;
use smol::future;

use super::control_plane::{ControlPlane, PollFailure, PollResult};
use super::dispatch::Job;
use super::lane::Lane;
use super::metrics::{AgentMetrics, PollOutcome, RetryKind};
use super::random;
use super::readiness::Readiness;
use super::workers::Workers;
use crate::ops::shutdown::Shutdown;
use crate::proto::command::Decoded;
use crate::proto::retry::Backoff;
use crate::proto::timeout::Deadline;

/// The protocol's cap on one poll's `limit`.
pub const MAX_POLL_LIMIT: usize = 25;

pub struct Poller<'a> {
    pub cp: Arc<ControlPlane>,
    pub lane: &'a Lane,
    pub workers: &'a Arc<Workers>,
    pub readiness: Arc<Readiness>,
    pub shutdown: Shutdown,
    pub max_inflight: usize,
    pub backoff: Backoff,
}

pub enum LoopEnd {
    /// Shutdown requested; a poll may still be outstanding (its commands, if
    /// any arrive during the drain, are still processed), and commands of the
    /// last batch may still wait for a queue slot.
    Stopped {
        pending: Option<Receiver<Polled>>,
        overflow: VecDeque<Job>,
    },
    /// Polling cannot continue (the tunnel does not exist): the message says why.
    Terminal(String),
}

/// What the poll thread hands back to the loop.
pub enum Polled {
    /// A batch: already queued to the workers from the poll thread, so a
    /// command reaches a worker without waiting for the loop to wake up;
    /// `rest` did not fit and waits, in order. `count` is the batch's size.
    Queued { count: usize, rest: VecDeque<Job> },
    /// Anything else a poll produced.
    Other(PollResult),
}

/// Polls on the poll thread; a batch goes straight to the workers. With
/// `keep_going` (polling is healthy) the thread issues the next poll itself
/// while every command fit and slots are free, as the loop would have, so a
/// poll cycle does not cost a round trip through the async loop. It hands
/// back on anything else (a failure, commands that did not fit, a full
/// queue, shutdown), so backoff, readiness and overflow stay the loop's.
pub fn poll_and_queue(
    cp: &ControlPlane,
    workers: &Workers,
    mut limit: usize,
    keep_going: Option<(usize, &Shutdown)>,
) -> Polled {
    loop {
        let polled = match cp.poll(limit) {
            PollResult::Batch { receipt, commands } => {
                // Counted here, before any worker can take (and finish) a
                // command of the batch: a scrape never sees its commands
                // before its poll.
                let metrics = workers.metrics();
                metrics.poll(PollOutcome::Commands);
                let count = commands.len();
                let mut rest = VecDeque::with_capacity(count);
                accept(receipt, commands, &mut rest, metrics);
                workers.feed(&mut rest);
                Polled::Queued { count, rest }
            }
            other => Polled::Other(other),
        };
        let Some((max_inflight, shutdown)) = keep_going else {
            return polled;
        };
        let fitted = match &polled {
            Polled::Queued { rest, .. } => rest.is_empty(),
            Polled::Other(PollResult::Idle) => true,
            Polled::Other(_) => false,
        };
        let free = max_inflight.saturating_sub(workers.inflight());
        if !fitted || free == 0 || shutdown.is_triggered() {
            return polled;
        }
        if matches!(polled, Polled::Other(PollResult::Idle)) {
            // The loop never sees this poll: count it here, as it would.
            workers.metrics().poll(PollOutcome::Empty);
        }
        limit = free.min(MAX_POLL_LIMIT);
    }
}

enum Wake<T> {
    Value(T),
    Stop,
}

impl Poller<'_> {
    async fn or_stop<T>(&self, f: impl std::future::Future<Output = T>) -> Wake<T> {
        future::or(async { Wake::Value(f.await) }, async {
            self.shutdown.wait().await;
            Wake::Stop
        })
        .await
    }

    async fn sleep(&self, d: Duration) -> Wake<()> {
        self.or_stop(async {
            async_io::Timer::after(d).await;
        })
        .await
    }

    pub async fn run(&mut self) -> LoopEnd {
        let mut last_problem: Option<String> = None;
        // Commands beyond the free slots (a batch may exceed the limit asked
        // for): at most one batch, fed to the queue as slots free up.
        let mut overflow: VecDeque<Job> = VecDeque::new();
        let stopped = |pending, overflow| LoopEnd::Stopped { pending, overflow };
        loop {
            if self.shutdown.is_triggered() {
                return stopped(None, overflow);
            }
            self.workers.feed(&mut overflow);
            let free = self.max_inflight.saturating_sub(self.workers.inflight());
            if free == 0 || !overflow.is_empty() {
                // A full queue pauses polling until a command finishes.
                if let Wake::Stop = self.or_stop(self.workers.completed()).await {
                    return stopped(None, overflow);
                }
                continue;
            }
            let limit = free.min(MAX_POLL_LIMIT);
            let cp = self.cp.clone();
            let workers = self.workers.clone();
            // After a problem the loop sees the next result itself (it logs
            // the recovery and resets the backoff).
            let keep_going = last_problem.is_none().then(|| self.shutdown.clone());
            let max_inflight = self.max_inflight;
            let rx = self.lane.run(move || {
                let keep_going = keep_going.as_ref().map(|s| (max_inflight, s));
                poll_and_queue(&cp, &workers, limit, keep_going)
            });
            let result = match self.or_stop(rx.recv()).await {
                Wake::Stop => return stopped(Some(rx), overflow),
                Wake::Value(Ok(r)) => r,
                Wake::Value(Err(_)) => return LoopEnd::Terminal("the poll thread stopped".into()),
            };
            let result = match result {
                // Counted (poll outcome, queued commands) on the poll thread.
                Polled::Queued { rest, .. } => {
                    self.recovered(&mut last_problem);
                    overflow.extend(rest);
                    continue;
                }
                Polled::Other(r) => r,
            };
            let delay = match result {
                // A batch arrives as `Polled::Queued`.
                PollResult::Batch { .. } => {
                    self.recovered(&mut last_problem);
                    continue;
                }
                PollResult::Idle => {
                    self.workers.metrics().poll(PollOutcome::Empty);
                    self.recovered(&mut last_problem);
                    continue;
                }
                PollResult::Failed(PollFailure::NotFound { code }) => {
                    self.workers.metrics().poll(PollOutcome::NotFound);
                    return LoopEnd::Terminal(PollFailure::NotFound { code }.to_string());
                }
                PollResult::Failed(f) => self.failed(f, &mut last_problem),
            };
            if let Wake::Stop = self.sleep(delay).await {
                return stopped(None, overflow);
            }
        }
    }

    fn recovered(&mut self, last_problem: &mut Option<String>) {
        self.backoff.reset();
        if last_problem.take().is_some() {
            log::info!("polling recovered");
            self.readiness.set_auth_failure(None);
            self.readiness.set_control_plane_problem(None);
        }
    }

    /// Logs a problem once per change (not per poll) and picks the wait.
    fn failed(&mut self, f: PollFailure, last_problem: &mut Option<String>) -> Duration {
        let metrics = self.workers.metrics();
        metrics.poll(match &f {
            PollFailure::Network(_) => PollOutcome::NetworkError,
            PollFailure::Edge(_) => PollOutcome::EdgeError,
            PollFailure::Status { .. } => PollOutcome::HttpError,
            PollFailure::Auth { .. } => PollOutcome::Rejected,
            PollFailure::NotFound { .. } => PollOutcome::NotFound,
            PollFailure::Body(_) => PollOutcome::InvalidBody,
        });
        // Every failed poll (except 404, which ends the loop) waits and polls again.
        metrics.retry(RetryKind::Poll);
        let text = f.to_string();
        let changed = last_problem.as_deref() != Some(text.as_str());
        match &f {
            PollFailure::Auth { status, code } => {
                if changed {
                    log::error!("poll rejected: {text}; backing off");
                }
                self.readiness.set_auth_failure(Some(match code {
                    Some(c) => format!("HTTP {status} {c}"),
                    None => format!("HTTP {status}"),
                }));
                if *status == 401 {
                    self.cp.key.reload();
                }
                // Operator action is needed: wait at least half the maximum so a
                // jitter draw near zero can never make this a tight loop.
                self.backoff.at_max();
                let max = self.backoff.ceiling();
                let j = self.backoff.next(random::u64());
                *last_problem = Some(text);
                return max / 2 + j / 2;
            }
            PollFailure::Edge(reason) => {
                if changed {
                    log::error!("poll failed: {text}; retrying with backoff");
                }
                self.readiness
                    .set_control_plane_problem(Some(reason.clone()));
            }
            _ => {
                if changed {
                    log::warn!("poll failed: {text}; retrying with backoff");
                }
                // An older proxy/TLS verdict no longer describes what fails now.
                self.readiness.set_control_plane_problem(None);
            }
        }
        *last_problem = Some(text);
        let jitter = self.backoff.next(random::u64());
        match f {
            PollFailure::Status {
                retry_after: Some(ra),
                ..
            } => ra.max(jitter),
            _ => jitter,
        }
    }
}

/// Turns a batch into jobs (all of them, even beyond the limit asked for);
/// skipped entries are logged with their request id.
pub fn accept(
    receipt: Instant,
    commands: Vec<Decoded>,
    out: &mut VecDeque<Job>,
    metrics: &AgentMetrics,
) {
    for d in commands {
        match d {
            Decoded::Command(command) => {
                for w in &command.warnings {
                    log::warn!("command {}: {w}", command.request_id);
                }
                let deadline = command
                    .response_timeout
                    .map(|t| Deadline::after(receipt, t));
                metrics.queued();
                out.push_back(Job {
                    command,
                    deadline,
                    receipt,
                });
            }
            Decoded::Skipped { request_id, reason } => {
                log::warn!(
                    "skipped command {}: {reason}",
                    request_id.as_deref().unwrap_or("(no request id)")
                );
            }
        }
    }
}
