//! Server-sent events: protocol.md "Forwarding to an MCP server" — read a
//! `text/event-stream` response as it arrives; comments, `retry:`, unknown
//! fields and priming events with empty `data:` are not delivered; multi-line
//! `data:` joins with `\n`; CR, LF and CRLF all end lines (WHATWG rules).
//!
//! Bounds: the bytes buffered for one event (the current line plus the data
//! collected so far) may not exceed `max_event`; comment lines are skipped
//! without buffering, so keep-alive comments of any length cost nothing.
//! After an error the parser is reset; the caller should drop the stream.

use std::fmt;

/// One dispatched event. `data` is raw bytes (the caller validates it as JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` type; `None` means the default (`message`).
    pub event: Option<&'a str>,
    pub data: &'a [u8],
    /// The last `id:` seen on the stream (ids persist across events).
    pub id: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseError {
    /// One event grew past the configured byte limit (`SseParser::new`).
    EventTooLarge,
    /// An `event:` or `id:` value is not UTF-8.
    InvalidUtf8,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::EventTooLarge => f.write_str("SSE event exceeds the size limit"),
            SseError::InvalidUtf8 => f.write_str("SSE event or id field is not UTF-8"),
        }
    }
}

impl std::error::Error for SseError {}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Incremental `text/event-stream` parser with reusable buffers.
#[derive(Debug)]
pub struct SseParser {
    max_event: usize,
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    event: String,
    last_id: String,
    /// The previous chunk ended in CR: a leading LF now belongs to it.
    pending_cr: bool,
    /// Inside a comment line: bytes are dropped until its end.
    in_comment: bool,
    /// Bytes of a leading BOM matched so far; `None` once past the stream start.
    bom_seen: Option<usize>,
}

impl SseParser {
    pub fn new(max_event: usize) -> Self {
        SseParser {
            max_event,
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event: String::new(),
            last_id: String::new(),
            pending_cr: false,
            in_comment: false,
            bom_seen: Some(0),
        }
    }

    /// Back to the start-of-stream state (buffers keep their capacity).
    pub fn reset(&mut self) {
        self.line.clear();
        self.data.clear();
        self.has_data = false;
        self.event.clear();
        self.last_id.clear();
        self.pending_cr = false;
        self.in_comment = false;
        self.bom_seen = Some(0);
    }

    /// The last `id:` value seen (for `Last-Event-ID` on resume).
    pub fn last_event_id(&self) -> Option<&str> {
        (!self.last_id.is_empty()).then_some(self.last_id.as_str())
    }

    /// Feed bytes as they arrive; calls `on_event` for each complete event.
    pub fn feed(
        &mut self,
        input: &[u8],
        on_event: &mut dyn FnMut(SseEvent<'_>),
    ) -> Result<(), SseError> {
        let r = self.feed_inner(input, on_event);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn feed_inner(
        &mut self,
        mut input: &[u8],
        on_event: &mut dyn FnMut(SseEvent<'_>),
    ) -> Result<(), SseError> {
        while let Some(seen) = self.bom_seen {
            let Some(&b) = input.first() else {
                return Ok(());
            };
            if seen < BOM.len() && b == BOM[seen] {
                self.bom_seen = Some(seen + 1);
                input = &input[1..];
                if seen + 1 == BOM.len() {
                    self.bom_seen = None;
                }
            } else {
                // A partial BOM match was real content after all.
                self.line.extend_from_slice(&BOM[..seen]);
                self.bom_seen = None;
            }
        }
        if self.pending_cr && !input.is_empty() {
            self.pending_cr = false;
            if let Some(rest) = input.strip_prefix(b"\n") {
                input = rest;
            }
        }
        while !input.is_empty() {
            if self.line.is_empty() && !self.in_comment && input[0] == b':' {
                self.in_comment = true;
            }
            let end = input.iter().position(|&b| b == b'\n' || b == b'\r');
            let chunk = match end {
                Some(i) => &input[..i],
                None => input,
            };
            if !self.in_comment {
                if self.line.len() + chunk.len() + self.data.len() > self.max_event {
                    return Err(SseError::EventTooLarge);
                }
                self.line.extend_from_slice(chunk);
            }
            let Some(i) = end else {
                return Ok(());
            };
            // Consume the terminator; CRLF counts once, even across feeds.
            let mut next = i + 1;
            if input[i] == b'\r' {
                match input.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            input = &input[next..];
            if self.in_comment {
                self.in_comment = false;
            } else {
                self.process_line(on_event)?;
            }
        }
        Ok(())
    }

    fn process_line(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) -> Result<(), SseError> {
        if self.line.is_empty() {
            self.dispatch(on_event);
            return Ok(());
        }
        let line = std::mem::take(&mut self.line);
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &[][..]),
        };
        let result = match name {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
                Ok(())
            }
            b"event" => match std::str::from_utf8(value) {
                Ok(v) => {
                    self.event.clear();
                    self.event.push_str(v);
                    Ok(())
                }
                Err(_) => Err(SseError::InvalidUtf8),
            },
            b"id" if !value.contains(&0) => match std::str::from_utf8(value) {
                Ok(v) => {
                    self.last_id.clear();
                    self.last_id.push_str(v);
                    Ok(())
                }
                Err(_) => Err(SseError::InvalidUtf8),
            },
            // retry:, ids containing NUL and unknown fields are ignored.
            _ => Ok(()),
        };
        // Give the allocation back so the next line reuses it.
        self.line = line;
        self.line.clear();
        result
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.has_data {
            if self.data.last() == Some(&b'\n') {
                self.data.pop();
            }
            // Priming events (`data:` with nothing) carry no message.
            if !self.data.is_empty() {
                on_event(SseEvent {
                    event: (!self.event.is_empty()).then_some(self.event.as_str()),
                    data: &self.data,
                    id: (!self.last_id.is_empty()).then_some(self.last_id.as_str()),
                });
            }
        }
        self.data.clear();
        self.has_data = false;
        self.event.clear();
    }
}

/// Relay side: append one `event: message` event carrying `data` to `out`.
/// Line breaks in `data` (CR, LF, CRLF) split it into several `data:` lines,
/// which the reader joins with `\n` — lossless for JSON.
pub fn write_event(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(b"event: message\n");
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.extend_from_slice(b"data: ");
        match end {
            None => {
                out.extend_from_slice(rest);
                out.push(b'\n');
                break;
            }
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.push(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, Clone)]
    struct Ev {
        event: Option<String>,
        data: String,
        id: Option<String>,
    }

    fn collect(p: &mut SseParser, input: &[u8], out: &mut Vec<Ev>) -> Result<(), SseError> {
        p.feed(input, &mut |e: SseEvent<'_>| {
            out.push(Ev {
                event: e.event.map(str::to_owned),
                data: String::from_utf8_lossy(e.data).into_owned(),
                id: e.id.map(str::to_owned),
            })
        })
    }

    fn parse(input: &[u8]) -> Vec<Ev> {
        let mut p = SseParser::new(1 << 16);
        let mut out = Vec::new();
        collect(&mut p, input, &mut out).unwrap();
        out
    }

    fn ev(event: Option<&str>, data: &str, id: Option<&str>) -> Ev {
        Ev {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: id.map(str::to_owned),
        }
    }

    #[test]
    fn basic_and_multiline_data() {
        assert_eq!(
            parse(b"event: message\ndata: {\"a\":\ndata:1}\n\n"),
            vec![ev(Some("message"), "{\"a\":\n1}", None)]
        );
        assert_eq!(
            parse(b"data:x\n\ndata: y\n\n"),
            vec![ev(None, "x", None), ev(None, "y", None)]
        );
        // Only one leading space is stripped.
        assert_eq!(parse(b"data:  two\n\n"), vec![ev(None, " two", None)]);
    }

    #[test]
    fn line_endings_crlf_cr_lf() {
        let want = vec![ev(Some("message"), "a\nb", None)];
        assert_eq!(parse(b"event: message\r\ndata: a\r\ndata: b\r\n\r\n"), want);
        assert_eq!(parse(b"event: message\rdata: a\rdata: b\r\r"), want);
        assert_eq!(parse(b"event: message\ndata: a\rdata: b\r\n\n"), want);
    }

    #[test]
    fn comments_retry_unknown_fields_ignored() {
        assert_eq!(
            parse(b": keep-alive\nretry: 1000\nfoo: bar\ndata: x\n: mid comment\n\n"),
            vec![ev(None, "x", None)]
        );
        assert_eq!(parse(b": only a comment\n\n"), vec![]);
    }

    #[test]
    fn ids_persist_and_nul_ids_are_ignored() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        collect(
            &mut p,
            b"id: 7\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                ev(None, "a", Some("7")),
                ev(None, "b", Some("7")),
                ev(None, "c", Some("7"))
            ]
        );
        assert_eq!(p.last_event_id(), Some("7"));
        p.reset();
        assert_eq!(p.last_event_id(), None);
    }

    #[test]
    fn priming_events_are_not_delivered() {
        assert_eq!(parse(b"id: 1\ndata:\n\n"), vec![]);
        assert_eq!(parse(b"id: 1\ndata\n\n"), vec![]);
        assert_eq!(parse(b"event: ping\n\n"), vec![]);
        // The event type of a dropped event does not leak into the next one.
        assert_eq!(
            parse(b"event: ping\n\ndata: x\n\n"),
            vec![ev(None, "x", None)]
        );
        // An incomplete event at end of input is not delivered.
        assert_eq!(parse(b"data: x\n"), vec![]);
    }

    #[test]
    fn bom_at_start_is_ignored_even_split() {
        assert_eq!(parse(b"\xEF\xBB\xBFdata: x\n\n"), vec![ev(None, "x", None)]);
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        for b in b"\xEF\xBB\xBFdata: x\n\n" {
            collect(&mut p, &[*b], &mut out).unwrap();
        }
        assert_eq!(out, vec![ev(None, "x", None)]);
        // A BOM later in the stream is content, so that line is an unknown field.
        assert_eq!(
            parse(b"data: a\n\n\xEF\xBB\xBFdata: x\n\n"),
            vec![ev(None, "a", None)]
        );
    }

    #[test]
    fn event_split_at_every_byte_boundary() {
        let stream: &[u8] = b"\xEF\xBB\xBF: hi\r\nevent: message\r\nid: 42\r\ndata: {\"jsonrpc\":\"2.0\",\r\ndata: \"id\":1}\r\n\r\nretry: 5\rdata: second\r\r";
        let want = parse(stream);
        assert_eq!(want.len(), 2);
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let mut p = SseParser::new(1024);
                let mut out = Vec::new();
                collect(&mut p, &stream[..i], &mut out).unwrap();
                collect(&mut p, &stream[i..j], &mut out).unwrap();
                collect(&mut p, &stream[j..], &mut out).unwrap();
                assert_eq!(out, want, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn event_size_cap() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        assert_eq!(collect(&mut p, b"data: 0123456789\n", &mut out), Ok(()));
        assert_eq!(
            collect(&mut p, b"data: 0123456789\n\n", &mut out),
            Err(SseError::EventTooLarge)
        );
        assert!(out.is_empty());
        // A line that never ends cannot grow past the cap either.
        let mut p = SseParser::new(16);
        assert!(collect(&mut p, &[b'x'; 10], &mut out).is_ok());
        assert_eq!(
            collect(&mut p, &[b'x'; 10], &mut out),
            Err(SseError::EventTooLarge)
        );
        // Comments are skipped without buffering, whatever their length.
        let mut p = SseParser::new(16);
        let mut long = b":".to_vec();
        long.extend(std::iter::repeat_n(b'c', 10_000));
        long.extend_from_slice(b"\ndata: ok\n\n");
        collect(&mut p, &long, &mut out).unwrap();
        assert_eq!(out, vec![ev(None, "ok", None)]);
    }

    #[test]
    fn invalid_utf8_in_event_or_id() {
        let mut p = SseParser::new(64);
        assert_eq!(
            p.feed(b"event: \xff\n", &mut |_| {}),
            Err(SseError::InvalidUtf8)
        );
        assert_eq!(
            p.feed(b"id: \xc3\n", &mut |_| {}),
            Err(SseError::InvalidUtf8)
        );
        // Data bytes are passed through; the JSON layer judges them.
        let mut n = 0;
        p.feed(b"data: \xff\n\n", &mut |e| {
            assert_eq!(e.data, b"\xff");
            n += 1;
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn write_event_round_trips() {
        let mut out = Vec::new();
        write_event(&mut out, b"{\"a\":1}");
        assert_eq!(out, b"event: message\ndata: {\"a\":1}\n\n");
        let mut out = Vec::new();
        write_event(&mut out, b"{\r\n\"a\":\r1\n}");
        assert_eq!(
            parse(&out),
            vec![ev(Some("message"), "{\n\"a\":\n1\n}", None)]
        );
        let mut out = Vec::new();
        write_event(&mut out, b"");
        assert_eq!(out, b"event: message\ndata: \n\n");
    }

    #[test]
    fn fuzz_smoke_feed() {
        let sample: &[u8] =
            b"event: message\r\nid: 1\ndata: {\"a\":1}\ndata: x\n\n: c\rretry: 3\r\ndata: y\r\r";
        let mut rng = crate::proto::testutil::XorShift::new(0x55e);
        for _ in 0..3000 {
            let input = rng.mutate(sample);
            let mut p = SseParser::new(32);
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len());
                let (chunk, tail) = rest.split_at(n);
                let r = p.feed(chunk, &mut |e| {
                    assert!(!e.data.is_empty() && e.data.len() <= 32);
                });
                if r.is_err() {
                    break;
                }
                rest = tail;
            }
            assert!(p.line.capacity() <= 64 && p.data.capacity() <= 64);
        }
    }
}
