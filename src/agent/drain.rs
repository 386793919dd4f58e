//! Graceful stop: no new polls; in-flight commands finish and post their
//! answers, bounded by the drain timeout.

use std::collections::VecDeque;
use std::time::Duration;

use smol::channel::Receiver;
use smol::future;

use super::dispatch::Job;
use super::poller::Polled;
use super::workers::Workers;

/// Waits until no command is in flight or `timeout` passes. A poll still
/// outstanding is not waited for, but if it returns commands while others are
/// draining, they are processed too (the control plane already handed them out).
/// Returns the number of commands abandoned at the timeout.
pub async fn drain(
    workers: &Workers,
    mut pending: Option<Receiver<Polled>>,
    mut overflow: VecDeque<Job>,
    timeout: Duration,
) -> usize {
    enum Ev {
        Poll(Option<Polled>),
        Done,
        Timeout,
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        workers.feed(&mut overflow);
        if workers.inflight() == 0 && overflow.is_empty() {
            break;
        }
        let poll = async {
            match &pending {
                Some(rx) => Ev::Poll(rx.recv().await.ok()),
                None => future::pending().await,
            }
        };
        let ev = future::or(
            poll,
            future::or(
                async {
                    workers.completed().await;
                    Ev::Done
                },
                async {
                    async_io::Timer::at(deadline).await;
                    Ev::Timeout
                },
            ),
        )
        .await;
        match ev {
            Ev::Poll(result) => {
                pending = None;
                if let Some(Polled::Queued { count, rest }) = result {
                    log::info!(
                        "a poll returned {count} command(s) during the drain; processing them"
                    );
                    // Counted (poll outcome, queued) on the poll thread.
                    overflow.extend(rest);
                }
            }
            Ev::Done => {}
            Ev::Timeout => break,
        }
    }
    workers.close();
    workers.inflight() + overflow.len()
}
