//! Graceful stop: no new polls; in-flight commands finish and post their
//! answers, bounded by the drain timeout.

use std::collections::VecDeque;
use std::time::Duration;

use smol::channel::Receiver;
use smol::future;

use super::control_plane::PollResult;
use super::dispatch::Job;
use super::poller::accept;
use super::workers::Workers;

/// Waits until no command is in flight or `timeout` passes. A poll still
/// outstanding is not waited for, but if it returns commands while others are
/// draining, they are processed too (the control plane already handed them out).
/// Returns the number of commands abandoned at the timeout.
pub async fn drain(
    workers: &Workers,
    mut pending: Option<Receiver<PollResult>>,
    mut overflow: VecDeque<Job>,
    timeout: Duration,
) -> usize {
    enum Ev {
        Poll(Option<PollResult>),
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
                if let Some(PollResult::Batch { receipt, commands }) = result {
                    log::info!(
                        "a poll returned {} command(s) during the drain; processing them",
                        commands.len()
                    );
                    accept(receipt, commands, &mut overflow, workers.metrics());
                }
            }
            Ev::Done => {}
            Ev::Timeout => break,
        }
    }
    workers.close();
    workers.inflight() + overflow.len()
}
