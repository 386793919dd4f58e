//! `SseParser::feed` with the stream split at a fuzzer-chosen point.
//!
//! Input layout: byte 0 picks the event cap, bytes 1..3 the split point, the
//! rest is the stream. Invariants: no delivered event is empty or larger than
//! the cap, and how the stream is chunked (whole, split in two, byte by byte)
//! changes neither the events, the error nor the last event id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_tunnel::proto::sse::{SseError, SseParser};

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    event: Option<String>,
    data: Vec<u8>,
    id: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Seen>,
    error: Option<SseError>,
    last_id: Option<String>,
}

fn run<'a>(cap: usize, chunks: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = SseParser::new(cap);
    let mut events = Vec::new();
    let mut error = None;
    for chunk in chunks {
        let r = parser.feed(chunk, &mut |e| {
            assert!(!e.data.is_empty(), "empty event delivered");
            assert!(
                e.data.len() <= cap,
                "event of {} bytes over cap {cap}",
                e.data.len()
            );
            events.push(Seen {
                event: e.event.map(str::to_owned),
                data: e.data.to_vec(),
                id: e.id.map(str::to_owned),
            });
        });
        if let Err(e) = r {
            // The parser resets itself after an error; the caller drops the stream.
            assert_eq!(parser.last_event_id(), None);
            error = Some(e);
            break;
        }
    }
    Outcome {
        events,
        error,
        last_id: parser.last_event_id().map(str::to_owned),
    }
}

fuzz_target!(|data: &[u8]| {
    let (Some(&c), Some(s)) = (data.first(), data.get(1..3)) else {
        return;
    };
    let stream = &data[3..];
    // Mostly small caps so EventTooLarge is reachable; 255 stands for "roomy".
    let cap = if c == 255 { 1 << 20 } else { usize::from(c) };
    let split = usize::from(u16::from_le_bytes([s[0], s[1]])) % (stream.len() + 1);

    let whole = run(cap, std::iter::once(stream));
    let (a, b) = stream.split_at(split);
    let halves = run(cap, [a, b].into_iter());
    assert_eq!(whole, halves, "split at {split} changed the outcome");
    if stream.len() <= 4096 {
        let bytes = run(cap, stream.chunks(1));
        assert_eq!(whole, bytes, "byte-by-byte feeding changed the outcome");
    }
});
