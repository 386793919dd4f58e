//! A minimal, bounds-checked DER walk over X.509 certificates (RFC 5280
//! §4.1): just enough to reach the fields we read (validity, subject,
//! extensions). Every length is checked against the remaining input, so
//! hostile bytes end in a [`DerError`], never a panic or a large allocation
//! (nothing here allocates).

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DerError(pub &'static str);

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed certificate: {}", self.0)
    }
}

impl std::error::Error for DerError {}

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const INTEGER: u8 = 0x02;
pub const OID: u8 = 0x06;
pub const BOOLEAN: u8 = 0x01;
pub const OCTET_STRING: u8 = 0x04;
/// `[0] EXPLICIT Version` in tbsCertificate.
const VERSION: u8 = 0xa0;
/// `[1] IMPLICIT issuerUniqueID`, `[2] IMPLICIT subjectUniqueID`.
const ISSUER_UID: u8 = 0x81;
const SUBJECT_UID: u8 = 0x82;
/// `[3] EXPLICIT Extensions`.
const EXTENSIONS: u8 = 0xa3;

/// One TLV: (tag, contents, rest). Single-byte tags only (all X.509 uses in
/// the fields we walk); lengths up to 4 bytes, always within `input`.
pub fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(DerError("multi-byte tag"));
    }
    let (&first, rest) = rest.split_first().ok_or(DerError("truncated"))?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if len > rest.len() {
        return Err(DerError("truncated"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// A TLV that must carry tag `want`; `what` names it in the error.
pub fn expect<'a>(
    input: &'a [u8],
    want: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DerError> {
    let (tag, body, rest) = tlv(input)?;
    if tag != want {
        return Err(DerError(what));
    }
    Ok((body, rest))
}

/// Iterates over the TLVs of a constructed value's contents.
pub fn elements(mut input: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), DerError>> {
    std::iter::from_fn(move || {
        if input.is_empty() {
            return None;
        }
        match tlv(input) {
            Ok((tag, body, rest)) => {
                input = rest;
                Some(Ok((tag, body)))
            }
            Err(e) => {
                input = &[];
                Some(Err(e))
            }
        }
    })
}

/// tbsCertificate read up to `validity`; later fields are read on demand,
/// so a reader of the dates does not depend on the rest being well formed.
#[derive(Clone, Copy, Debug)]
pub struct Tbs<'a> {
    /// Contents of the `Validity` SEQUENCE.
    pub validity: &'a [u8],
    /// The fields after validity: subject, subjectPublicKeyInfo, optional ones.
    after_validity: &'a [u8],
}

impl<'a> Tbs<'a> {
    /// Certificate → tbsCertificate → [version] serial signature issuer validity.
    pub fn parse(cert_der: &'a [u8]) -> Result<Tbs<'a>, DerError> {
        let (cert, _) = expect(cert_der, SEQUENCE, "certificate")?;
        let (mut tbs, _) = expect(cert, SEQUENCE, "tbsCertificate")?;
        if tbs.first() == Some(&VERSION) {
            tbs = tlv(tbs)?.2;
        }
        let (_, tbs) = expect(tbs, INTEGER, "serial number")?;
        let (_, tbs) = expect(tbs, SEQUENCE, "signature algorithm")?;
        let (_, tbs) = expect(tbs, SEQUENCE, "issuer")?;
        let (validity, after_validity) = expect(tbs, SEQUENCE, "validity")?;
        Ok(Tbs {
            validity,
            after_validity,
        })
    }

    /// Contents of the subject `Name` (a SEQUENCE of RDNs).
    pub fn subject(&self) -> Result<&'a [u8], DerError> {
        Ok(expect(self.after_validity, SEQUENCE, "subject")?.0)
    }

    /// Contents of the `Extensions` SEQUENCE, if the certificate has any.
    pub fn extensions(&self) -> Result<Option<&'a [u8]>, DerError> {
        let (_, rest) = expect(self.after_validity, SEQUENCE, "subject")?;
        let (_, mut rest) = expect(rest, SEQUENCE, "subject public key info")?;
        while let Some(&tag) = rest.first() {
            let (_, body, next) = tlv(rest)?;
            match tag {
                ISSUER_UID | SUBJECT_UID => rest = next,
                EXTENSIONS => return Ok(Some(expect(body, SEQUENCE, "extensions")?.0)),
                _ => return Err(DerError("unexpected field after the public key")),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_bounded_by_the_input() {
        assert_eq!(
            tlv(&[0x04, 0x02, 1, 2, 9]),
            Ok((0x04, &[1u8, 2][..], &[9u8][..]))
        );
        assert_eq!(tlv(&[0x04, 0x03, 1, 2]), Err(DerError("truncated")));
        assert_eq!(tlv(&[0x04, 0x80]), Err(DerError("bad length")));
        assert_eq!(
            tlv(&[0x04, 0x85, 0, 0, 0, 0, 1]),
            Err(DerError("bad length"))
        );
        assert_eq!(
            tlv(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff]),
            Err(DerError("truncated"))
        );
        assert_eq!(tlv(&[0x1f, 0x81, 0x00]), Err(DerError("multi-byte tag")));
        assert_eq!(tlv(&[]), Err(DerError("truncated")));
        let long = [&[0x04, 0x81, 0x81][..], &[7u8; 0x81]].concat();
        assert_eq!(tlv(&long).unwrap().1.len(), 0x81);
    }

    #[test]
    fn elements_stop_at_the_first_error() {
        let items: Vec<_> = elements(&[0x02, 0x01, 5, 0x04, 0x05, 1]).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], Ok((0x02, &[5u8][..])));
        assert!(items[1].is_err());
        assert_eq!(elements(&[]).count(), 0);
    }
}
