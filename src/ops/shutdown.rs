//! The process-wide "stop now, finish what you hold" signal, and the process
//! signals (SIGTERM, SIGINT, SIGHUP) that drive it.

use std::io;

use smol::channel::{Receiver, Sender};
use smol::stream::StreamExt;

/// A cloneable shutdown signal. Clones share one state; triggering any clone
/// wakes every `wait()`. `Send + Sync`, so blocking worker threads can hold one.
#[derive(Clone, Debug)]
pub struct Shutdown {
    // Closing the channel is the trigger: a closed channel wakes every
    // receiver at once and stays closed, which is exactly a one-shot broadcast.
    // Every clone holds a sender, so the channel never closes by accident
    // while a `Shutdown` is alive to wait on it.
    tx: Sender<Never>,
    rx: Receiver<Never>,
}

/// No message is ever sent; only closing the channel carries meaning.
#[derive(Debug)]
enum Never {}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = smol::channel::bounded(1);
        Shutdown { tx, rx }
    }

    /// Fires the signal; later calls do nothing.
    pub fn trigger(&self) {
        self.tx.close();
    }

    pub fn is_triggered(&self) -> bool {
        self.rx.is_closed()
    }

    /// Completes once the signal has fired (at once if it already has).
    pub async fn wait(&self) {
        // `recv` can only end with `Err(Closed)`: nothing is ever sent.
        let _ = self.rx.recv().await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

/// The exit code of a process killed by `signal` (128 + signal number), used
/// when a second SIGTERM/SIGINT cuts the drain short.
fn exit_code(signal: async_signal::Signal) -> i32 {
    match signal {
        async_signal::Signal::Int => 130,
        _ => 143,
    }
}

/// SIGHUP handlers registered by [`hold_hangups`], kept until
/// [`watch_signals`] has its own.
static EARLY_HANGUPS: std::sync::Mutex<Option<async_signal::Signals>> = std::sync::Mutex::new(None);

/// Catches SIGHUP from process start until [`watch_signals`] runs. Its default
/// action kills the process, and an init system's reload (logrotate, OpenRC
/// `reload`) can land while the configuration is still being read; a SIGHUP
/// then has nothing to reload, so it is dropped. Call it first thing.
pub fn hold_hangups() {
    if let Ok(signals) = async_signal::Signals::new([async_signal::Signal::Hup]) {
        *EARLY_HANGUPS.lock().unwrap_or_else(|e| e.into_inner()) = Some(signals);
    }
}

/// Process signals via async-signal: the first SIGTERM or SIGINT triggers
/// `shutdown`; a second one exits the process at once (exit code 130 for
/// SIGINT, 143 for SIGTERM); each SIGHUP calls `on_hup` (reopen logs, reload
/// state). The handlers are installed on the first poll; the future only ends
/// with an error (the signal pipe failed).
pub async fn watch_signals(
    shutdown: Shutdown,
    mut on_hup: impl FnMut() + 'static,
) -> io::Result<()> {
    use async_signal::{Signal, Signals};

    let mut signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])?;
    // Ours are installed: the early catcher can go (what it caught is dropped).
    drop(
        EARLY_HANGUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    while let Some(signal) = signals.next().await {
        match signal? {
            Signal::Hup => {
                log::info!("SIGHUP received");
                on_hup();
            }
            signal @ (Signal::Term | Signal::Int) => {
                if shutdown.is_triggered() {
                    log::warn!("second {signal:?} received: exiting without finishing the drain");
                    std::process::exit(exit_code(signal));
                }
                log::info!("{signal:?} received: shutting down (send it again to exit at once)");
                shutdown.trigger();
            }
            _ => {}
        }
    }
    Err(io::Error::other("the signal stream ended"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    #[test]
    fn trigger_wakes_every_clone_and_stays_triggered() {
        let shutdown = Shutdown::new();
        let other = shutdown.clone();
        assert!(!other.is_triggered());
        let waiter = std::thread::spawn(move || smol::block_on(other.wait()));
        shutdown.trigger();
        shutdown.trigger();
        assert!(waiter.join().is_ok());
        assert!(shutdown.is_triggered());
        // Waiting after the fact completes at once.
        smol::block_on(shutdown.wait());
    }

    #[test]
    fn wait_pends_until_triggered() {
        let shutdown = Shutdown::new();
        let mut wait = Box::pin(shutdown.wait());
        assert!(smol::block_on(smol::future::poll_once(&mut wait)).is_none());
        shutdown.trigger();
        assert!(smol::block_on(smol::future::poll_once(&mut wait)).is_some());
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(async_signal::Signal::Int), 130);
        assert_eq!(exit_code(async_signal::Signal::Term), 143);
    }

    /// Sends real signals to this test process: SIGHUP calls the hook, the
    /// first SIGTERM triggers shutdown (a second one would exit, so it is not sent).
    #[test]
    fn sighup_calls_hook_and_sigterm_triggers_shutdown() {
        let shutdown = Shutdown::new();
        let hups = Rc::new(Cell::new(0));
        let counter = hups.clone();
        let mut watch = Box::pin(watch_signals(shutdown.clone(), move || {
            counter.set(counter.get() + 1)
        }));
        let kill = |sig: &str| {
            let pid = std::process::id().to_string();
            let sent = std::process::Command::new("kill")
                .args([sig, &pid])
                .status();
            assert!(sent.is_ok_and(|s| s.success()), "kill {sig} failed");
        };
        smol::block_on(async {
            // The first poll installs the handlers; only then is it safe to signal.
            assert!(smol::future::poll_once(&mut watch).await.is_none());
            kill("-HUP");
            let hup_seen = smol::future::or(
                async {
                    let _ = (&mut watch).await;
                    false
                },
                async {
                    let limit = Instant::now() + Duration::from_secs(5);
                    while hups.get() == 0 && Instant::now() < limit {
                        async_io::Timer::after(Duration::from_millis(5)).await;
                    }
                    hups.get() == 1
                },
            )
            .await;
            assert!(hup_seen, "SIGHUP did not reach the hook exactly once");
            assert!(!shutdown.is_triggered());

            kill("-TERM");
            let triggered = smol::future::or(
                async {
                    let _ = (&mut watch).await;
                    false
                },
                smol::future::or(
                    async {
                        shutdown.wait().await;
                        true
                    },
                    async {
                        async_io::Timer::after(Duration::from_secs(5)).await;
                        false
                    },
                ),
            )
            .await;
            assert!(triggered, "SIGTERM did not trigger shutdown");
        });
    }
}
