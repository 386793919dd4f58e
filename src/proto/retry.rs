//! Retry policy: protocol.md "Retries and backoff" — exponential backoff with
//! full jitter (reference: 200 ms min, ×2, 10 s max, reset after success),
//! 401/403 back off at the maximum, which response POSTs are retried, and
//! `Retry-After` (seconds or IMF-fixdate; invalid/past ignored; capped 60 s).
//!
//! Randomness and wall-clock time are inputs, so every branch is testable.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The cap on any `Retry-After` we honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Exponential backoff with full jitter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: u32,
    attempt: u32,
}

impl Backoff {
    /// Doubling from `min` up to `max` (`max` below `min` is raised to `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            factor: 2,
            attempt: 0,
        }
    }

    /// The reference client's poll backoff: 200 ms .. 10 s, ×2.
    pub fn reference() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
    }

    /// The ceiling for the current attempt: `min(max, min * factor^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let mut c = self.min;
        // 128 doublings of even 1 ns pass Duration::MAX; the bound also covers min = 0.
        for _ in 0..self.attempt.min(128) {
            if c >= self.max {
                break;
            }
            c = c.saturating_mul(self.factor);
        }
        c.min(self.max)
    }

    /// Next delay: uniform in `[0, ceiling]` chosen by `random`; then the ceiling grows.
    pub fn next(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.as_nanos().saturating_add(1);
        let nanos = u128::from(random) % span;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// 401/403 need operator action: the next delays use the maximum ceiling.
    pub fn at_max(&mut self) {
        // 2^64 ns is far beyond any sane max, so this many doublings always reach it.
        self.attempt = self.attempt.max(64);
    }

    /// Delays handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// `Retry-After` as seconds or an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`);
/// invalid, negative or past values → `None`; capped at 60 s. The obsolete
/// RFC 850/asctime date forms are treated as invalid.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim_matches([' ', '\t']);
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit is still "a long time": cap it.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = parse_imf_fixdate(v)?;
    let now_secs = now.duration_since(UNIX_EPOCH).ok()?;
    let at = Duration::from_secs(at);
    if at <= now_secs {
        return None;
    }
    Some((at - now_secs).min(MAX_RETRY_AFTER))
}

/// Seconds since the Unix epoch for an IMF-fixdate.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    if !DAYS.contains(&s.get(0..3)?) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0u64, |acc, d| Some(acc * 10 + u64::from(d - b'0')))
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(7, b' ') && sep(11, b' ') && sep(16, b' ') && sep(19, b':') && sep(22, b':')) {
        return None;
    }
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| s.get(8..11) == Some(*m))? as u64 + 1;
    let year = num(12..16)?;
    let (h, m, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if year < 1970 || day == 0 || day > days_in_month(year, month) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + h * 3600 + m * 60 + sec.min(59))
}

fn is_leap(y: u64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a Gregorian date (year ≥ 1970).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let days_before_year: u64 = (1970..y)
        .map(|yy| if is_leap(yy) { 366 } else { 365 })
        .sum();
    let days_before_month: u64 = (1..m).map(|mm| days_in_month(y, mm)).sum();
    days_before_year + days_before_month + d - 1
}

/// What a poll answer means for the poll loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// 200: decode the body.
    Commands,
    /// 204: nothing to do, poll again at once.
    Idle,
    /// 408, 429, 5xx and anything unexpected (1xx/3xx/other 2xx): back off and retry.
    Retry,
    /// 401/403: back off at the maximum, readiness false, log the error code.
    AuthFailure,
    /// 404: the tunnel does not exist; terminal.
    NotFound,
    /// Other 4xx: our request is wrong; back off and report.
    OtherClientError,
}

pub fn classify_poll(status: u16) -> PollOutcome {
    match status {
        200 => PollOutcome::Commands,
        204 => PollOutcome::Idle,
        401 | 403 => PollOutcome::AuthFailure,
        404 => PollOutcome::NotFound,
        408 | 429 => PollOutcome::Retry,
        400..=499 => PollOutcome::OtherClientError,
        _ => PollOutcome::Retry,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostKind {
    /// `jsonrpc_response`, `notify_ack`, `session_termination_response`.
    Final,
    /// `jsonrpc_notify`.
    Notify,
}

/// How one POST attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Status(u16),
    /// Failed before the request could have reached the server (DNS, connect, TLS).
    NetworkBeforeSend,
    /// Failed after (some of) the request was sent: it may have been processed.
    NetworkAfterSend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostDecision {
    Done,
    Retry,
    GiveUp,
    /// 404: the command was already fulfilled or expired; never replay MCP work.
    AlreadyFulfilled,
}

/// `attempts_made` counts attempts including the one that just ended; a retry
/// is only offered while it is below `max_attempts`.
/// Final: retry network errors, 408, 429, 502, 503, 504; 404 → AlreadyFulfilled;
/// other statuses → GiveUp. Notify: retry only 429 and NetworkBeforeSend.
pub fn decide_post(
    kind: PostKind,
    attempt: Attempt,
    attempts_made: u32,
    max_attempts: u32,
) -> PostDecision {
    let retryable = match (kind, attempt) {
        (_, Attempt::Status(200..=299)) => return PostDecision::Done,
        (_, Attempt::Status(404)) => return PostDecision::AlreadyFulfilled,
        (PostKind::Final, Attempt::Status(s)) => matches!(s, 408 | 429 | 502 | 503 | 504),
        (PostKind::Final, _) => true,
        (PostKind::Notify, Attempt::Status(s)) => s == 429,
        (PostKind::Notify, Attempt::NetworkBeforeSend) => true,
        (PostKind::Notify, Attempt::NetworkAfterSend) => false,
    };
    if retryable && attempts_made < max_attempts {
        PostDecision::Retry
    } else {
        PostDecision::GiveUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn full_jitter_bounds_grow_and_cap() {
        let mut b = Backoff::reference();
        let ceilings: Vec<Duration> = (0..9)
            .map(|_| {
                let c = b.ceiling();
                // The largest random value modulo the span lands on the ceiling or below.
                assert!(b.clone().next(u64::MAX) <= c);
                assert_eq!(b.clone().next(0), Duration::ZERO);
                b.next(0);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            vec![
                200 * MS,
                400 * MS,
                800 * MS,
                1600 * MS,
                3200 * MS,
                6400 * MS,
                10_000 * MS,
                10_000 * MS,
                10_000 * MS
            ]
        );
        // A random value equal to the ceiling in ns maps to exactly the ceiling.
        let mut b = Backoff::reference();
        assert_eq!(b.next(200_000_000), 200 * MS);
        assert_eq!(b.next(200_000_001), Duration::from_nanos(200_000_001));
    }

    #[test]
    fn jitter_spreads_across_the_range() {
        let mut rng = crate::proto::testutil::XorShift::new(9);
        let (mut low, mut high) = (false, false);
        for _ in 0..200 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            let d = b.next(rng.next());
            assert!(d <= Duration::from_secs(1));
            low |= d < Duration::from_millis(250);
            high |= d > Duration::from_millis(750);
        }
        assert!(low && high);
    }

    #[test]
    fn reset_and_at_max() {
        let mut b = Backoff::reference();
        for _ in 0..3 {
            b.next(1);
        }
        assert_eq!(b.ceiling(), 1600 * MS);
        b.reset();
        assert_eq!((b.attempt(), b.ceiling()), (0, 200 * MS));
        b.at_max();
        assert_eq!(b.ceiling(), Duration::from_secs(10));
        b.next(7);
        assert_eq!(b.ceiling(), Duration::from_secs(10));
        b.reset();
        assert_eq!(b.ceiling(), 200 * MS);
        // Extremes do not overflow.
        let mut huge = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            huge.next(u64::MAX);
        }
        assert!(huge.ceiling() >= Duration::from_secs(1 << 60));
        let inverted = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(inverted.ceiling(), Duration::from_secs(5));
        let mut zero = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        zero.attempt = u32::MAX;
        assert_eq!(zero.ceiling(), Duration::ZERO);
        assert_eq!(zero.next(u64::MAX), Duration::ZERO);
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    // Sun, 06 Nov 1994 08:49:37 GMT
    const RFC_EXAMPLE: u64 = 784_111_777;

    #[test]
    fn retry_after_seconds() {
        let now = at(RFC_EXAMPLE);
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("61", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        for bad in ["", " ", "-1", "+5", "1.5", "5s", "1e3", "abc", "5 5"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_http_date() {
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(parse_imf_fixdate(date), Some(RFC_EXAMPLE));
        assert_eq!(
            parse_retry_after(date, at(RFC_EXAMPLE - 10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after(date, at(RFC_EXAMPLE - 3600)),
            Some(MAX_RETRY_AFTER)
        );
        // Past or present dates are ignored.
        assert_eq!(parse_retry_after(date, at(RFC_EXAMPLE)), None);
        assert_eq!(parse_retry_after(date, at(RFC_EXAMPLE + 5)), None);
        assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_imf_fixdate("Thu, 29 Feb 2024 23:59:59 GMT"),
            Some(1_709_251_199)
        );
        assert_eq!(
            parse_imf_fixdate("Sat, 01 Jan 2000 00:00:00 GMT"),
            Some(946_684_800)
        );
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Thu, 29 Feb 2023 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:3x GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_imf_fixdate(bad), None, "{bad}");
            assert_eq!(parse_retry_after(bad, at(0)), None, "{bad}");
        }
        // Clock before the epoch: no basis for a date.
        assert_eq!(
            parse_retry_after(date, UNIX_EPOCH - Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn poll_classification() {
        use PollOutcome::*;
        for (s, want) in [
            (200, Commands),
            (204, Idle),
            (401, AuthFailure),
            (403, AuthFailure),
            (404, NotFound),
            (408, Retry),
            (429, Retry),
            (500, Retry),
            (502, Retry),
            (503, Retry),
            (400, OtherClientError),
            (413, OtherClientError),
            (302, Retry),
            (202, Retry),
        ] {
            assert_eq!(classify_poll(s), want, "{s}");
        }
    }

    #[test]
    fn final_post_decisions() {
        use Attempt::*;
        use PostDecision::*;
        let f = |a, n| decide_post(PostKind::Final, a, n, 4);
        assert_eq!(f(Status(200), 1), Done);
        assert_eq!(f(Status(204), 4), Done);
        assert_eq!(f(Status(404), 1), AlreadyFulfilled);
        for s in [408, 429, 502, 503, 504] {
            assert_eq!(f(Status(s), 1), Retry, "{s}");
            assert_eq!(f(Status(s), 3), Retry, "{s}");
            assert_eq!(f(Status(s), 4), GiveUp, "{s}");
        }
        for s in [400, 401, 403, 409, 413, 422, 500, 501, 302] {
            assert_eq!(f(Status(s), 1), GiveUp, "{s}");
        }
        assert_eq!(f(NetworkBeforeSend, 1), Retry);
        assert_eq!(f(NetworkAfterSend, 3), Retry);
        assert_eq!(f(NetworkAfterSend, 4), GiveUp);
    }

    #[test]
    fn notify_post_decisions() {
        use Attempt::*;
        use PostDecision::*;
        let n = |a, k| decide_post(PostKind::Notify, a, k, 4);
        assert_eq!(n(Status(200), 1), Done);
        assert_eq!(n(Status(429), 1), Retry);
        assert_eq!(n(Status(429), 4), GiveUp);
        assert_eq!(n(NetworkBeforeSend, 1), Retry);
        assert_eq!(n(NetworkAfterSend, 1), GiveUp);
        assert_eq!(n(Status(404), 1), AlreadyFulfilled);
        for s in [408, 500, 502, 503, 504, 400] {
            assert_eq!(n(Status(s), 1), GiveUp, "{s}");
        }
    }

    #[test]
    fn fuzz_smoke_retry_after() {
        let samples = ["Sun, 06 Nov 1994 08:49:37 GMT", "120", "0"];
        let mut rng = crate::proto::testutil::XorShift::new(0xda7e);
        let now = at(RFC_EXAMPLE - 30);
        for round in 0..4000 {
            let raw = rng.mutate(samples[round % 3].as_bytes());
            let s = String::from_utf8_lossy(&raw);
            if let Some(d) = parse_retry_after(&s, now) {
                assert!(d <= MAX_RETRY_AFTER, "{s:?}");
            }
        }
    }
}
