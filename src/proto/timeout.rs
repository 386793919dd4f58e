//! Command deadlines: protocol.md "`response_timeout`" (the wire grammar
//! `^[0-9]+(ns|us|ms|s|m|h)$`, deadline = receipt instant + timeout, `0s` is
//! already expired) plus the Go-style durations used by config flags.
//!
//! Overflow: a value above Go's `time.Duration` maximum (i64::MAX ns, about
//! 292 years) is an error, so we accept exactly what the reference control
//! plane can produce.

use std::fmt;
use std::time::{Duration, Instant};

/// Largest duration the wire and config grammars accept (Go's `time.Duration` max).
pub const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeoutError {
    Empty,
    /// No digits where a number must start (covers signs, whitespace, fractions).
    ExpectedDigit {
        offset: usize,
    },
    /// Missing or unknown unit (covers exponents, trailing text, compounds on the wire).
    BadUnit {
        offset: usize,
    },
    /// Larger than [`MAX_DURATION`].
    Overflow,
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeoutError::Empty => f.write_str("empty duration"),
            TimeoutError::ExpectedDigit { offset } => {
                write!(f, "expected a digit at byte {offset}")
            }
            TimeoutError::BadUnit { offset } => write!(
                f,
                "expected one unit of ns, us, ms, s, m, h at byte {offset}"
            ),
            TimeoutError::Overflow => f.write_str("duration too large"),
        }
    }
}

impl std::error::Error for TimeoutError {}

/// Nanoseconds per unit, longest unit names first so `ms` wins over `m`.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Which unit starts at `rest`: (nanoseconds per unit, byte length).
fn unit_at(rest: &str, allow_micro_sign: bool) -> Option<(u128, usize)> {
    UNITS
        .iter()
        .filter(|(name, _)| allow_micro_sign || name.is_ascii())
        .filter(|(name, _)| rest.starts_with(name))
        .max_by_key(|(name, _)| name.len())
        .map(|&(name, per)| (per, name.len()))
}

fn to_duration(nanos: u128) -> Result<Duration, TimeoutError> {
    if nanos > MAX_DURATION.as_nanos() {
        return Err(TimeoutError::Overflow);
    }
    let secs = (nanos / 1_000_000_000) as u64;
    let sub = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// Leading decimal digits of `s` from `i`; returns (value, end). The value
/// saturates past `u128` range, which is far beyond [`MAX_DURATION`] anyway.
fn digits(s: &[u8], mut i: usize) -> (u128, usize) {
    let mut v: u128 = 0;
    while let Some(d) = s.get(i).filter(|b| b.is_ascii_digit()) {
        v = v.saturating_mul(10).saturating_add(u128::from(d - b'0'));
        i += 1;
    }
    (v, i)
}

/// The wire grammar: one non-negative integer and one unit of ns|us|ms|s|m|h.
/// No sign, fraction, compound, whitespace, exponent; overflow is an error.
pub fn parse_response_timeout(s: &str) -> Result<Duration, TimeoutError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(TimeoutError::Empty);
    }
    let (n, end) = digits(b, 0);
    if end == 0 {
        return Err(TimeoutError::ExpectedDigit { offset: 0 });
    }
    let rest = &s[end..];
    match unit_at(rest, false) {
        Some((per, len)) if len == rest.len() => to_duration(n.saturating_mul(per)),
        _ => Err(TimeoutError::BadUnit { offset: end }),
    }
}

/// Formats a duration in the wire grammar: whole milliseconds as `"<n>ms"`
/// (e.g. `"30000ms"`), anything finer as `"<n>ns"`. Durations above
/// [`MAX_DURATION`] are clamped to it so the peer can parse the result.
pub fn format_response_timeout(d: Duration) -> String {
    let d = d.min(MAX_DURATION);
    let nanos = d.as_nanos();
    if nanos % 1_000_000 == 0 {
        format!("{}ms", nanos / 1_000_000)
    } else {
        format!("{nanos}ns")
    }
}

/// Config durations (flags, env): Go's `time.ParseDuration` without signs:
/// `"30s"`, `"1m30s"`, `"1.5s"`, `"250ms"`, `"0"`. A bare number other than
/// `0` is refused, since its unit would be a guess.
pub fn parse_config_duration(s: &str) -> Result<Duration, TimeoutError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(TimeoutError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut i = 0;
    let mut total: u128 = 0;
    while i < b.len() {
        let (int, after_int) = digits(b, i);
        let mut j = after_int;
        let (mut frac, mut frac_scale, mut frac_digits) = (0u128, 1u128, 0usize);
        if b.get(j) == Some(&b'.') {
            j += 1;
            while let Some(d) = b.get(j).filter(|b| b.is_ascii_digit()) {
                // Digits beyond nanosecond precision cannot change the result.
                if frac_digits < 18 {
                    frac = frac * 10 + u128::from(d - b'0');
                    frac_scale *= 10;
                }
                frac_digits += 1;
                j += 1;
            }
        }
        if after_int == i && frac_digits == 0 {
            return Err(TimeoutError::ExpectedDigit { offset: i });
        }
        let Some((per, len)) = unit_at(&s[j..], true) else {
            return Err(TimeoutError::BadUnit { offset: j });
        };
        let part = int
            .saturating_mul(per)
            .saturating_add(frac.saturating_mul(per) / frac_scale);
        total = total.saturating_add(part);
        if total > MAX_DURATION.as_nanos() {
            return Err(TimeoutError::Overflow);
        }
        i = j + len;
    }
    to_duration(total)
}

/// The instant a command must be finished by (receipt instant + timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// `receipt + timeout`, saturating: a timeout too large for the platform's
    /// `Instant` becomes the latest representable instant we can find.
    pub fn after(receipt: Instant, timeout: Duration) -> Deadline {
        let mut t = timeout;
        loop {
            if let Some(at) = receipt.checked_add(t) {
                return Deadline { at };
            }
            // Halving converges in at most ~100 steps; 1 ns always fits in practice.
            t /= 2;
            if t.is_zero() {
                return Deadline { at: receipt };
            }
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// Time left, or `None` once expired (a zero timeout is expired at receipt).
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        match self.at.checked_duration_since(now) {
            Some(d) if !d.is_zero() => Some(d),
            _ => None,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.at
    }

    /// `d` shortened so that it ends no later than the deadline; `None` when expired.
    pub fn cap(&self, now: Instant, d: Duration) -> Option<Duration> {
        self.remaining(now).map(|left| left.min(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_grammar_accepts() {
        for (s, d) in [
            ("30s", Duration::from_secs(30)),
            ("4500ms", Duration::from_millis(4500)),
            ("0s", Duration::ZERO),
            ("0ns", Duration::ZERO),
            ("7ns", Duration::from_nanos(7)),
            ("15us", Duration::from_micros(15)),
            ("2m", Duration::from_secs(120)),
            ("3h", Duration::from_secs(3 * 3600)),
            ("007s", Duration::from_secs(7)),
            ("9223372036854775807ns", MAX_DURATION),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
        ] {
            assert_eq!(parse_response_timeout(s), Ok(d), "{s}");
        }
    }

    #[test]
    fn wire_grammar_rejects() {
        for s in [
            "",
            "s",
            "30",
            "1.5s",
            ".5s",
            "1.s",
            "-1s",
            "+1s",
            "1m30s",
            " 30s",
            "30s ",
            "30 s",
            "3e1s",
            "1e3ms",
            "30sec",
            "30S",
            "30x",
            "30\u{b5}s",
            "30\u{3bc}s",
            "1d",
            "30s\n",
            "1_000s",
            "0x10s",
            "30",
            "NaN",
            "inf",
        ] {
            assert!(parse_response_timeout(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn wire_grammar_overflow() {
        assert_eq!(
            parse_response_timeout("9223372036854775808ns"),
            Err(TimeoutError::Overflow)
        );
        assert_eq!(
            parse_response_timeout("2562048h"),
            Err(TimeoutError::Overflow)
        );
        let huge = format!("{}h", "9".repeat(200));
        assert_eq!(parse_response_timeout(&huge), Err(TimeoutError::Overflow));
    }

    #[test]
    fn format_round_trips_through_wire_grammar() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(30),
            Duration::from_millis(4500),
            Duration::from_nanos(1_500),
            MAX_DURATION,
        ] {
            assert_eq!(parse_response_timeout(&format_response_timeout(d)), Ok(d));
        }
        assert_eq!(format_response_timeout(Duration::from_secs(30)), "30000ms");
        assert_eq!(
            parse_response_timeout(&format_response_timeout(Duration::MAX)),
            Ok(MAX_DURATION)
        );
    }

    #[test]
    fn config_durations() {
        for (s, d) in [
            ("0", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("250ms", Duration::from_millis(250)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("3\u{b5}s", Duration::from_micros(3)),
            ("0.0000000001s", Duration::ZERO),
        ] {
            assert_eq!(parse_config_duration(s), Ok(d), "{s}");
        }
        for s in [
            "", "30", "-1s", "+1s", " 1s", "1s ", "1 s", "1x", "s", ".s", "1e3s", "1.5", "1m30",
            "00",
        ] {
            assert!(parse_config_duration(s).is_err(), "{s:?}");
        }
        assert_eq!(
            parse_config_duration("300000000h"),
            Err(TimeoutError::Overflow)
        );
    }

    #[test]
    fn deadline_arithmetic() {
        let t0 = Instant::now();
        let d = Deadline::after(t0, Duration::from_secs(5));
        assert_eq!(d.at(), t0 + Duration::from_secs(5));
        assert_eq!(d.remaining(t0), Some(Duration::from_secs(5)));
        assert_eq!(
            d.remaining(t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(3))
        );
        assert!(!d.is_expired(t0 + Duration::from_millis(4999)));
        assert!(d.is_expired(t0 + Duration::from_secs(5)));
        assert_eq!(d.remaining(t0 + Duration::from_secs(5)), None);
        assert_eq!(d.remaining(t0 + Duration::from_secs(6)), None);
        assert_eq!(
            d.cap(t0 + Duration::from_secs(4), Duration::from_secs(10)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            d.cap(t0, Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn zero_timeout_is_expired_at_receipt() {
        let t0 = Instant::now();
        let d = Deadline::after(t0, Duration::ZERO);
        assert!(d.is_expired(t0));
        assert_eq!(d.remaining(t0), None);
    }

    #[test]
    fn huge_timeout_saturates_instead_of_panicking() {
        let t0 = Instant::now();
        let d = Deadline::after(t0, Duration::MAX);
        assert!(d.at() > t0 + Duration::from_secs(3600 * 24 * 365));
        assert!(!d.is_expired(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn fuzz_smoke_timeouts() {
        let mut rng = crate::proto::testutil::XorShift::new(0x7133);
        let samples = ["30s", "4500ms", "1m30s", "0s", "9223372036854775807ns"];
        for round in 0..4000 {
            let raw = rng.mutate(samples[round % samples.len()].as_bytes());
            let s = String::from_utf8_lossy(&raw);
            if let Ok(d) = parse_response_timeout(&s) {
                assert!(d <= MAX_DURATION);
                assert!(s.bytes().next().is_some_and(|b| b.is_ascii_digit()));
            }
            if let Ok(d) = parse_config_duration(&s) {
                assert!(d <= MAX_DURATION);
            }
        }
    }
}
