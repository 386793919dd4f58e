//! The names a client certificate claims: subject common names and the DNS
//! and URI entries of subjectAltName. The relay binds tunnels to these names;
//! `doctor` shows them. Pure: DER in, names out, via the bounded walk of
//! `net::der` (hostile input is an error, never a panic; at most
//! [`MAX_NAMES`] names of at most [`MAX_NAME_LEN`] bytes are kept).
//!
//! The certificate's chain has already been verified by the TLS layer; this
//! only reads what it says.

use std::fmt;

use super::der::{elements, expect, tlv, DerError, Tbs, BOOLEAN, OCTET_STRING, OID, SEQUENCE, SET};

/// Names beyond this count are ignored (a real certificate has a handful).
pub const MAX_NAMES: usize = 64;
/// Longer names are ignored (DNS names are ≤ 253, URIs in certificates short).
pub const MAX_NAME_LEN: usize = 1024;

/// id-at-commonName, 2.5.4.3.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// GeneralName `[2] dNSName`, `[6] uniformResourceIdentifier` (IMPLICIT IA5String).
const GN_DNS: u8 = 0x82;
const GN_URI: u8 = 0x86;

/// What kind of name it is; DNS names compare case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    CommonName,
    Dns,
    Uri,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertName {
    pub kind: NameKind,
    pub value: String,
}

impl CertName {
    /// Does this name equal `bound` (a name bound to a tunnel)? Exact for
    /// CN and URI; ASCII case-insensitive for DNS. No wildcard expansion:
    /// a `*.corp` entry matches only the bound name `*.corp`.
    pub fn matches(&self, bound: &str) -> bool {
        match self.kind {
            NameKind::Dns => self.value.eq_ignore_ascii_case(bound),
            NameKind::CommonName | NameKind::Uri => self.value == bound,
        }
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            NameKind::CommonName => "CN",
            NameKind::Dns => "DNS",
            NameKind::Uri => "URI",
        };
        write!(f, "{kind}={}", self.value)
    }
}

/// Subject CNs first, then SAN DNS and URI entries, in certificate order.
/// Values that are not printable text (control characters, non-UTF-8,
/// BMPString and other exotic string types) are skipped, not errors.
pub fn cert_names(cert_der: &[u8]) -> Result<Vec<CertName>, DerError> {
    let tbs = Tbs::parse(cert_der)?;
    let mut names = Vec::new();
    subject_cns(tbs.subject()?, &mut names)?;
    if let Some(exts) = tbs.extensions()? {
        san_names(exts, &mut names)?;
    }
    Ok(names)
}

/// The first of `bound` that some name of the certificate matches.
pub fn first_match<'b>(names: &[CertName], bound: &'b [String]) -> Option<&'b str> {
    bound
        .iter()
        .find(|b| names.iter().any(|n| n.matches(b)))
        .map(String::as_str)
}

fn push(names: &mut Vec<CertName>, kind: NameKind, bytes: &[u8]) {
    if names.len() >= MAX_NAMES || bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return;
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if text.chars().any(char::is_control) {
        return;
    }
    names.push(CertName {
        kind,
        value: text.to_string(),
    });
}

/// Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue).
fn subject_cns(subject: &[u8], names: &mut Vec<CertName>) -> Result<(), DerError> {
    for rdn in elements(subject) {
        let (tag, rdn) = rdn?;
        if tag != SET {
            return Err(DerError("subject RDN"));
        }
        for atv in elements(rdn) {
            let (tag, atv) = atv?;
            if tag != SEQUENCE {
                return Err(DerError("subject attribute"));
            }
            let (oid, rest) = expect(atv, OID, "subject attribute type")?;
            if oid != OID_CN {
                continue;
            }
            let (string_tag, value, _) = tlv(rest)?;
            // UTF8String, PrintableString, IA5String, VisibleString; T61String
            // only when it is plain ASCII (its charset is ambiguous otherwise).
            match string_tag {
                0x0c | 0x13 | 0x16 | 0x1a => push(names, NameKind::CommonName, value),
                0x14 if value.is_ascii() => push(names, NameKind::CommonName, value),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }.
fn san_names(exts: &[u8], names: &mut Vec<CertName>) -> Result<(), DerError> {
    for ext in elements(exts) {
        let (tag, ext) = ext?;
        if tag != SEQUENCE {
            return Err(DerError("extension"));
        }
        let (oid, mut rest) = expect(ext, OID, "extension id")?;
        if oid != OID_SAN {
            continue;
        }
        if rest.first() == Some(&BOOLEAN) {
            rest = tlv(rest)?.2;
        }
        let (value, _) = expect(rest, OCTET_STRING, "extension value")?;
        let (general_names, _) = expect(value, SEQUENCE, "subjectAltName")?;
        for gn in elements(general_names) {
            let (tag, body) = gn?;
            match tag {
                GN_DNS => push(names, NameKind::Dns, body),
                GN_URI => push(names, NameKind::Uri, body),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        match body.len() {
            n if n < 0x80 => v.push(n as u8),
            n if n < 0x100 => v.extend([0x81, n as u8]),
            n => {
                v.push(0x82);
                v.extend((n as u16).to_be_bytes());
            }
        }
        v.extend_from_slice(body);
        v
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    fn atv(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        wrap(
            SET,
            &wrap(SEQUENCE, &cat(&[wrap(OID, oid), wrap(tag, value)])),
        )
    }

    fn san(entries: &[(u8, &[u8])], critical: bool) -> Vec<u8> {
        let gns = cat(&entries.iter().map(|(t, v)| wrap(*t, v)).collect::<Vec<_>>());
        let mut ext = wrap(OID, OID_SAN);
        if critical {
            ext.extend(wrap(BOOLEAN, &[0xff]));
        }
        ext.extend(wrap(OCTET_STRING, &wrap(SEQUENCE, &gns)));
        wrap(SEQUENCE, &ext)
    }

    /// A certificate skeleton with the given subject RDNs and extensions.
    fn cert(subject: &[u8], extensions: Option<Vec<u8>>, uids: bool) -> Vec<u8> {
        let mut tbs = cat(&[
            wrap(0xa0, &wrap(0x02, &[2])),
            wrap(0x02, &[1]),
            wrap(SEQUENCE, &wrap(OID, &[0x2a])),
            wrap(SEQUENCE, &[]),
            wrap(
                SEQUENCE,
                &cat(&[wrap(0x17, b"700101000000Z"), wrap(0x17, b"700101000000Z")]),
            ),
            wrap(SEQUENCE, subject),
            wrap(SEQUENCE, &[0u8; 10]),
        ]);
        if uids {
            tbs.extend(wrap(0x81, &[0, 1]));
            tbs.extend(wrap(0x82, &[0, 2]));
        }
        if let Some(e) = extensions {
            tbs.extend(wrap(0xa3, &wrap(SEQUENCE, &e)));
        }
        wrap(
            SEQUENCE,
            &cat(&[wrap(SEQUENCE, &tbs), wrap(SEQUENCE, &[]), wrap(0x03, &[0])]),
        )
    }

    fn names(der: &[u8]) -> Vec<String> {
        cert_names(der)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn subject_cn_and_san_entries() {
        let subject = cat(&[
            atv(&[0x55, 0x04, 0x0a], 0x0c, b"Corp"),
            atv(OID_CN, 0x0c, b"agent-1"),
        ]);
        let ext = cat(&[
            wrap(
                SEQUENCE,
                &cat(&[
                    wrap(OID, &[0x55, 0x1d, 0x13]),
                    wrap(OCTET_STRING, &[0x30, 0]),
                ]),
            ),
            san(
                &[
                    (GN_DNS, b"Agent-1.Corp.Example"),
                    (0x87, &[127, 0, 0, 1]),
                    (GN_URI, b"spiffe://corp/agent"),
                ],
                true,
            ),
        ]);
        let der = cert(&subject, Some(ext), true);
        assert_eq!(
            names(&der),
            [
                "CN=agent-1",
                "DNS=Agent-1.Corp.Example",
                "URI=spiffe://corp/agent"
            ]
        );
        let n = cert_names(&der).unwrap();
        let bound = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(first_match(&n, &bound(&["x", "agent-1"])), Some("agent-1"));
        assert_eq!(
            first_match(&n, &bound(&["agent-1.corp.example"])),
            Some("agent-1.corp.example"),
            "DNS names compare without case"
        );
        assert_eq!(first_match(&n, &bound(&["AGENT-1"])), None, "CN is exact");
        assert_eq!(first_match(&n, &bound(&["spiffe://corp/AGENT"])), None);
        assert_eq!(first_match(&n, &bound(&["Corp"])), None, "O is not a name");
        assert_eq!(first_match(&n, &[]), None);
    }

    #[test]
    fn no_extensions_and_exotic_strings() {
        let subject = cat(&[
            atv(OID_CN, 0x13, b"printable"),
            atv(OID_CN, 0x1e, &[0, b'b', 0, b'm']),
            atv(OID_CN, 0x14, &[0xe9]),
            atv(OID_CN, 0x0c, b"tab\there"),
            atv(OID_CN, 0x0c, &[0xff, 0xfe]),
            atv(OID_CN, 0x0c, b""),
        ]);
        assert_eq!(names(&cert(&subject, None, false)), ["CN=printable"]);
        assert!(names(&cert(&[], None, false)).is_empty());
    }

    #[test]
    fn names_are_capped() {
        let many: Vec<(u8, &[u8])> = (0..MAX_NAMES + 10)
            .map(|_| (GN_DNS, &b"a.example"[..]))
            .collect();
        let der = cert(&[], Some(san(&many, false)), false);
        assert_eq!(cert_names(&der).unwrap().len(), MAX_NAMES);
        let long = vec![b'a'; MAX_NAME_LEN + 1];
        let der = cert(&[], Some(san(&[(GN_DNS, &long)], false)), false);
        assert!(cert_names(&der).unwrap().is_empty());
    }

    /// Every truncation, every single-byte corruption and some classic
    /// hostile length fields: an answer or an error, never a panic.
    #[test]
    fn hostile_der_never_panics() {
        let subject = atv(OID_CN, 0x0c, b"agent-1");
        let der = cert(
            &subject,
            Some(san(&[(GN_DNS, b"a.example"), (GN_URI, b"u:x")], false)),
            true,
        );
        for n in 0..der.len() {
            assert!(cert_names(&der[..n]).is_err(), "prefix {n}");
        }
        for i in 0..der.len() {
            for b in [0x00, 0x30, 0x7f, 0x80, 0x81, 0x84, 0xff] {
                let mut bad = der.clone();
                bad[i] = b;
                let _ = cert_names(&bad);
            }
        }
        for junk in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x02, 0x30, 0x85],
            &[0x1f, 0xff, 0xff, 0x01],
        ] {
            assert!(cert_names(junk).is_err());
        }
        // A pseudo-random byte soup, deterministic.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut buf = der.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = (x as usize) % buf.len();
                buf[i] = (x >> 8) as u8;
            }
            let _ = cert_names(&buf);
        }
    }

    #[test]
    fn structural_errors_are_named() {
        // An RDN that is not a SET.
        let bad_rdn = wrap(SEQUENCE, &[]);
        assert_eq!(
            cert_names(&cert(&bad_rdn, None, false)),
            Err(DerError("subject RDN"))
        );
        // Something other than UIDs or extensions after the key.
        let tbs_tail = wrap(0x04, &[1]);
        let tbs = cat(&[
            wrap(0x02, &[1]),
            wrap(SEQUENCE, &[]),
            wrap(SEQUENCE, &[]),
            wrap(SEQUENCE, &[]),
            wrap(SEQUENCE, &[]),
            wrap(SEQUENCE, &[]),
            tbs_tail,
        ]);
        let der = wrap(SEQUENCE, &wrap(SEQUENCE, &tbs));
        assert!(cert_names(&der).is_err());
    }
}
