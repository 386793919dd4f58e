//! A dedicated thread for blocking calls made on behalf of the async loop
//! (the long poll, startup checks, probes). One thread per lane, a tiny
//! bounded queue: the loop never has more than one call outstanding per lane.

use smol::channel::{bounded, Receiver, Sender};

type Job = Box<dyn FnOnce() + Send>;

pub struct Lane {
    tx: Sender<Job>,
}

#[derive(Debug)]
pub struct LaneBusy;

impl Lane {
    pub fn start(name: &str) -> std::io::Result<Lane> {
        let (tx, rx) = bounded::<Job>(2);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Ends when the Lane (sender) is dropped.
                while let Ok(job) = rx.recv_blocking() {
                    job();
                }
            })?;
        Ok(Lane { tx })
    }

    /// Queues `f`; its result arrives on the returned receiver (closed without
    /// a value if the lane is gone).
    pub fn run<T, F>(&self, f: F) -> Receiver<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done_tx, done_rx) = bounded::<T>(1);
        let job: Job = Box::new(move || {
            let _ = done_tx.try_send(f());
        });
        // Full or closed: the receiver then reports "closed" at once (the job and
        // its sender were dropped), which callers handle like a lost lane.
        let _ = self.tx.try_send(job);
        done_rx
    }
}
