//! When to restart a stdio MCP server that exited: capped exponential
//! backoff, reset once a child stayed up long enough to count as healthy.

use std::time::Duration;

pub const RESTART_MIN: Duration = Duration::from_millis(200);
pub const RESTART_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long was healthy: its crash starts a fresh backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct RestartBackoff {
    min: Duration,
    max: Duration,
    stable_after: Duration,
    next: Duration,
}

impl RestartBackoff {
    pub fn new(min: Duration, max: Duration, stable_after: Duration) -> RestartBackoff {
        RestartBackoff {
            min,
            max: max.max(min),
            stable_after,
            next: min,
        }
    }

    pub fn standard() -> RestartBackoff {
        RestartBackoff::new(RESTART_MIN, RESTART_MAX, STABLE_AFTER)
    }

    /// The wait before the next start, after a child that ran for `uptime`
    /// (zero when it could not even be started). No jitter: one process, one
    /// restarter, nothing to spread.
    pub fn after_exit(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.stable_after {
            self.next = self.min;
        }
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_to_the_cap() {
        let mut b = RestartBackoff::standard();
        let got: Vec<Duration> = (0..10).map(|_| b.after_exit(Duration::ZERO)).collect();
        assert_eq!(
            got,
            [
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400),
                ms(12800),
                ms(25600),
                RESTART_MAX,
                RESTART_MAX
            ]
        );
    }

    #[test]
    fn resets_after_a_stable_run_only() {
        let mut b = RestartBackoff::standard();
        b.after_exit(Duration::ZERO);
        b.after_exit(Duration::from_secs(59));
        assert_eq!(
            b.after_exit(Duration::from_secs(5)),
            ms(800),
            "short runs keep growing"
        );
        assert_eq!(
            b.after_exit(STABLE_AFTER),
            RESTART_MIN,
            "a stable run resets"
        );
        assert_eq!(b.after_exit(Duration::ZERO), ms(400));
    }
}
