//! Rate limit for lines a child writes to stderr (and garbage on stdout), so
//! a chatty or broken server cannot flood our log: at most N lines per
//! second, the rest counted and summarised once the window ends.

use std::time::{Duration, Instant};

pub const LINES_PER_SECOND: u32 = 20;
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct LineLimiter {
    per_window: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Log this line.
    pub log: bool,
    /// Lines suppressed in the previous window(s), to report before this one.
    pub report_suppressed: u64,
}

impl LineLimiter {
    pub fn new(per_window: u32) -> LineLimiter {
        LineLimiter {
            per_window,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    pub fn line(&mut self, now: Instant) -> Verdict {
        let mut report = 0;
        let fresh = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW);
        if fresh {
            report = std::mem::take(&mut self.suppressed);
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.per_window {
            self.in_window += 1;
            Verdict {
                log: true,
                report_suppressed: report,
            }
        } else {
            self.suppressed += 1;
            Verdict {
                log: false,
                report_suppressed: report,
            }
        }
    }

    /// At end of stream: lines suppressed and not yet reported.
    pub fn finish(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_a_window_and_reports_the_rest() {
        let t0 = Instant::now();
        let mut l = LineLimiter::new(3);
        let logged = (0..10).filter(|_| l.line(t0).log).count();
        assert_eq!(logged, 3);
        let v = l.line(t0 + Duration::from_millis(999));
        assert!(!v.log);
        assert_eq!(v.report_suppressed, 0);
        let v = l.line(t0 + WINDOW);
        assert_eq!(
            v,
            Verdict {
                log: true,
                report_suppressed: 8
            }
        );
        for _ in 0..5 {
            l.line(t0 + WINDOW);
        }
        assert_eq!(l.finish(), 3);
        assert_eq!(l.finish(), 0);
    }
}
