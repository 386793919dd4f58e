//! The validity window (`notBefore`, `notAfter`) of an X.509 certificate,
//! read with the bounded DER walk of `net::der`, and UTC dates for messages.

use std::fmt;

pub use crate::net::der::DerError;
use crate::net::der::{tlv, Tbs};

/// Seconds since the Unix epoch (UTC); negative before 1970.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UtcSeconds(pub i64);

/// `YYYY-MM-DDTHH:MM:SSZ`.
impl fmt::Display for UtcSeconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400);
        let secs = self.0.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: UtcSeconds,
    pub not_after: UtcSeconds,
}

const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

pub fn validity(cert_der: &[u8]) -> Result<Validity, DerError> {
    let tbs = Tbs::parse(cert_der)?;
    let (tag, not_before, rest) = tlv(tbs.validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = tlv(rest)?;
    let not_after = time(tag, not_after)?;
    Ok(Validity {
        not_before,
        not_after,
    })
}

/// UTCTime `YYMMDDHHMMSSZ` (YY < 50 → 20YY) or GeneralizedTime
/// `YYYYMMDDHHMMSSZ`: the only forms RFC 5280 allows.
fn time(tag: u8, s: &[u8]) -> Result<UtcSeconds, DerError> {
    let bad = DerError("bad time");
    let digits = match (tag, s.split_last()) {
        (UTC_TIME, Some((b'Z', d))) if d.len() == 12 => d,
        (GENERALIZED_TIME, Some((b'Z', d))) if d.len() == 14 => d,
        _ => return Err(bad),
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let num = |r: std::ops::Range<usize>| {
        digits[r]
            .iter()
            .fold(0i64, |acc, &b| acc * 10 + i64::from(b - b'0'))
    };
    let (year, at) = if tag == UTC_TIME {
        let yy = num(0..2);
        (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
    } else {
        (num(0..4), 4)
    };
    let (mo, d, h, mi, sec) = (
        num(at..at + 2),
        num(at + 2..at + 4),
        num(at + 4..at + 6),
        num(at + 6..at + 8),
        num(at + 8..at + 10),
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad);
    }
    Ok(UtcSeconds(
        days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + sec,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::der::{INTEGER, SEQUENCE};

    const VERSION: u8 = 0xa0;

    /// A hand-built certificate skeleton: only the fields the walk reads.
    fn cert(version: bool, nb: (u8, &[u8]), na: (u8, &[u8])) -> Vec<u8> {
        fn wrap(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag];
            if body.len() < 128 {
                v.push(body.len() as u8);
            } else {
                v.push(0x82);
                v.extend_from_slice(&(body.len() as u16).to_be_bytes());
            }
            v.extend_from_slice(body);
            v
        }
        let mut tbs = Vec::new();
        if version {
            tbs.extend(wrap(VERSION, &wrap(INTEGER, &[2])));
        }
        tbs.extend(wrap(INTEGER, &[1, 2, 3]));
        tbs.extend(wrap(SEQUENCE, &[0x06, 0x01, 0x2a]));
        tbs.extend(wrap(SEQUENCE, &[0u8; 140])); // a long-form length
        let mut validity = wrap(nb.0, nb.1);
        validity.extend(wrap(na.0, na.1));
        tbs.extend(wrap(SEQUENCE, &validity));
        tbs.extend(wrap(SEQUENCE, &[]));
        let mut c = wrap(SEQUENCE, &tbs);
        c.extend(wrap(SEQUENCE, &[]));
        wrap(SEQUENCE, &c)
    }

    #[test]
    fn utc_and_generalized_times() {
        let der = cert(
            true,
            (UTC_TIME, b"700101000000Z"),
            (GENERALIZED_TIME, b"20500301123456Z"),
        );
        let v = validity(&der).unwrap();
        assert_eq!(v.not_before, UtcSeconds(0));
        assert_eq!(v.not_after.to_string(), "2050-03-01T12:34:56Z");
        let der = cert(
            false,
            (UTC_TIME, b"491231235959Z"),
            (UTC_TIME, b"500101000000Z"),
        );
        let v = validity(&der).unwrap();
        assert_eq!(v.not_before.to_string(), "2049-12-31T23:59:59Z");
        assert_eq!(v.not_after.to_string(), "1950-01-01T00:00:00Z");
    }

    #[test]
    fn known_instants() {
        let der = cert(
            true,
            (UTC_TIME, b"000229000000Z"),
            (UTC_TIME, b"381231235959Z"),
        );
        let v = validity(&der).unwrap();
        assert_eq!(v.not_before, UtcSeconds(951_782_400));
        assert_eq!(v.not_after, UtcSeconds(2_177_452_799));
        assert_eq!(UtcSeconds(-1).to_string(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn malformed_times_are_errors() {
        for (tag, t) in [
            (UTC_TIME, &b"700101000000"[..]),
            (UTC_TIME, b"7001010000Z"),
            (UTC_TIME, b"701301000000Z"),
            (UTC_TIME, b"700100000000Z"),
            (UTC_TIME, b"700101250000Z"),
            (UTC_TIME, b"70010100000aZ"),
            (GENERALIZED_TIME, b"700101000000Z"),
            (GENERALIZED_TIME, b"19700101000000.5Z"),
            (0x04, b"700101000000Z"),
        ] {
            let der = cert(true, (tag, t), (UTC_TIME, b"700101000000Z"));
            assert_eq!(validity(&der), Err(DerError("bad time")), "{t:?}");
        }
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let der = cert(
            true,
            (UTC_TIME, b"700101000000Z"),
            (UTC_TIME, b"700101000000Z"),
        );
        for n in 0..der.len() {
            assert!(validity(&der[..n]).is_err(), "prefix {n}");
        }
        for junk in [
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x04, 0x00],
        ] {
            assert!(validity(junk).is_err());
        }
    }

    #[test]
    fn round_trip_dates() {
        for (y, m, d) in [
            (1970, 1, 1),
            (2000, 2, 29),
            (2024, 12, 31),
            (2100, 3, 1),
            (1900, 1, 1),
        ] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
    }
}
