//! Framing for stdio MCP servers: protocol.md "stdio MCP servers" — one
//! JSON-RPC message per line.
//!
//! Bytes go in as they are read; complete lines come out. A line longer than
//! the cap is reported once, the moment it crosses the cap, and its remaining
//! bytes are skipped up to the next newline without being stored: memory stays
//! at most the cap however long a line is, and the stream resynchronises at the
//! next line.

/// What the framer found in the bytes fed so far.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent<'a> {
    /// One line without its `\n` (and without a `\r` before it). Never empty.
    Line(&'a [u8]),
    /// A line passed the cap; its bytes up to the next newline are dropped.
    TooLong,
}

#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    cap: usize,
    /// Inside an oversized line: drop bytes until the next newline.
    skipping: bool,
}

/// After an occasional large line the buffer is released down to this.
const KEEP: usize = 1024 * 1024;

impl LineFramer {
    /// `cap`: the longest line accepted, in bytes (without the newline).
    pub fn new(cap: usize) -> LineFramer {
        LineFramer {
            buf: Vec::new(),
            cap,
            skipping: false,
        }
    }

    /// Feeds bytes; `on` sees each event in stream order.
    pub fn feed(&mut self, mut bytes: &[u8], on: &mut dyn FnMut(LineEvent<'_>)) {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let (piece, rest, ended) = match nl {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.skipping {
                if ended {
                    self.skipping = false;
                }
                continue;
            }
            // A `\r` that ends the line does not count against the cap.
            let counted = if ended {
                piece.strip_suffix(b"\r").unwrap_or(piece).len()
            } else {
                piece.len()
            };
            if self.buf.len() + counted > self.cap {
                self.buf.clear();
                self.release();
                self.skipping = !ended;
                on(LineEvent::TooLong);
                continue;
            }
            self.buf.extend_from_slice(piece);
            if ended {
                let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
                if !line.is_empty() {
                    on(LineEvent::Line(line));
                }
                self.buf.clear();
                self.release();
            }
        }
    }

    /// At end of stream: the unterminated last line, if any (once).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let skipping = std::mem::take(&mut self.skipping);
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.strip_suffix(b"\r").unwrap_or(&rest).to_vec();
        (!skipping && !rest.is_empty()).then_some(rest)
    }

    /// Bytes held for the current partial line.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn release(&mut self) {
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        L(String),
        Long,
    }

    fn feed_all(f: &mut LineFramer, chunks: &[&[u8]]) -> Vec<Ev> {
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut |e| {
                out.push(match e {
                    LineEvent::Line(l) => Ev::L(String::from_utf8_lossy(l).into_owned()),
                    LineEvent::TooLong => Ev::Long,
                })
            });
        }
        out
    }

    fn l(s: &str) -> Ev {
        Ev::L(s.to_string())
    }

    #[test]
    fn lines_across_chunks() {
        let mut f = LineFramer::new(100);
        let ev = feed_all(
            &mut f,
            &[b"{\"a\"", b":1}\n{\"b\":2}\r\n\n", b"\r\nta", b"il"],
        );
        assert_eq!(
            ev,
            [l("{\"a\":1}"), l("{\"b\":2}")],
            "blank lines are skipped"
        );
        assert_eq!(f.buffered(), 4);
        assert_eq!(f.finish(), Some(b"tail".to_vec()));
        assert_eq!(f.finish(), None);
    }

    #[test]
    fn exactly_the_cap_is_accepted() {
        let mut f = LineFramer::new(5);
        assert_eq!(
            feed_all(&mut f, &[b"12345\r\n", b"123", b"45\n"]),
            [l("12345"), l("12345")]
        );
    }

    #[test]
    fn too_long_reported_once_then_resync() {
        let mut f = LineFramer::new(8);
        let ev = feed_all(
            &mut f,
            &[b"ok\n0123", b"456789", b"abcdef", b"ghi", b"jk\nnext\n"],
        );
        assert_eq!(ev, [l("ok"), Ev::Long, l("next")]);
        // The oversized line ending inside one chunk also resyncs there.
        let ev = feed_all(&mut f, &[b"0123456789\nafter\n"]);
        assert_eq!(ev, [Ev::Long, l("after")]);
    }

    /// An endless line: reported at the cap, and nothing after it is stored.
    #[test]
    fn endless_line_does_not_grow_the_buffer() {
        let cap = 64 * 1024;
        let mut f = LineFramer::new(cap);
        let chunk = vec![b'x'; 16 * 1024];
        let mut longs = 0;
        for _ in 0..1000 {
            f.feed(&chunk, &mut |e| {
                assert_eq!(e, LineEvent::TooLong);
                longs += 1;
            });
            assert!(f.buffered() <= cap);
            assert!(f.capacity() <= 2 * cap);
        }
        assert_eq!(longs, 1);
        assert_eq!(f.buffered(), 0);
        assert_eq!(f.finish(), None, "the oversized tail is not a line");
        assert_eq!(feed_all(&mut f, &[b"fresh\n"]), [l("fresh")]);
    }

    #[test]
    fn big_buffers_are_released() {
        let mut f = LineFramer::new(4 * 1024 * 1024);
        let big = vec![b'y'; 2 * 1024 * 1024];
        f.feed(&big, &mut |_| panic!("no line yet"));
        let mut n = 0;
        f.feed(b"\n", &mut |_| n += 1);
        assert_eq!(n, 1);
        assert!(f.capacity() <= KEEP);
    }
}
