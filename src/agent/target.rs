//! What a channel's MCP target is, and what forwarding one command produced.
//! Streamable HTTP and stdio targets.

use std::time::{Duration, Instant};

use super::target_http::HttpTarget;
use super::target_stdio::StdioTarget;
use crate::proto::failure::TunnelFailure;
use crate::proto::sse::SseParser;
use crate::proto::timeout::Deadline;

/// One SSE event may be as large as a whole JSON answer.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

pub enum Target {
    Http(HttpTarget),
    Stdio(StdioTarget),
}

impl Target {
    /// Readiness probe: Ok(status) when the target answered like a live
    /// server (stdio: its process runs).
    pub fn probe(&self, timeout: Duration) -> Result<u16, String> {
        match self {
            Target::Http(t) => t.probe(timeout),
            Target::Stdio(t) => t.probe(),
        }
    }

    /// Process-local targets ask the relay to keep their work on this agent.
    pub fn proc_affinity(&self) -> bool {
        matches!(self, Target::Stdio(_))
    }

    /// Begins stopping what the target runs, without waiting.
    pub fn request_stop(&self) {
        if let Target::Stdio(t) = self {
            t.request_stop();
        }
    }

    /// Stops what the target runs (stdio: the child process). Idempotent.
    pub fn stop(&self) {
        if let Target::Stdio(t) = self {
            t.stop();
        }
    }
}

/// Per-worker buffers, reused across commands.
pub struct TargetBuffers {
    /// The final answer's bytes (JSON body or the final SSE event's data).
    pub body: Vec<u8>,
    /// Chunks of an SSE stream; empty until this worker first reads a stream
    /// (a JSON answer is read straight into `body`).
    pub read: Vec<u8>,
    pub sse: SseParser,
    /// The largest SSE event of the current command (the parser keeps its capacity).
    pub largest_event: usize,
}

impl TargetBuffers {
    pub fn new() -> TargetBuffers {
        TargetBuffers {
            body: Vec::new(),
            read: Vec::new(),
            sse: SseParser::new(MAX_RESPONSE_BYTES),
            largest_event: 0,
        }
    }

    /// The SSE read buffer, allocated on first use.
    pub fn stream_chunk(&mut self) {
        if self.read.len() < READ_CHUNK {
            self.read.resize(READ_CHUNK, 0);
        }
    }

    /// Keeps steady-state memory small after an occasional huge answer.
    pub fn trim(&mut self) {
        const KEEP: usize = 1024 * 1024;
        if self.body.capacity() > KEEP {
            self.body = Vec::new();
        }
        if self.largest_event > KEEP {
            self.sse = SseParser::new(MAX_RESPONSE_BYTES);
        } else {
            self.sse.reset();
        }
        self.largest_event = 0;
    }
}

impl Default for TargetBuffers {
    fn default() -> Self {
        Self::new()
    }
}

/// Time allowed for one MCP exchange: the command deadline, else the configured cap.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub deadline: Option<Deadline>,
    pub cap: Duration,
}

impl Budget {
    /// The time left, or None when the deadline has passed.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        match self.deadline {
            Some(d) => d.remaining(now).map(|r| r.min(self.cap)),
            None => Some(self.cap),
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d.is_expired(now))
    }
}

/// What the command expects back from the MCP server.
#[derive(Clone, Copy, Debug)]
pub enum Expect<'a> {
    /// A request: the answer carries this raw id (None when the id is unknown).
    Response { id: Option<&'a [u8]> },
    /// A notification (or a client's response): the server only acknowledges.
    Ack,
}

/// What the notification sink says after posting one `jsonrpc_notify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyVerdict {
    Continue,
    /// The command is over (404 from the control plane, or the deadline passed).
    Abort,
}

pub type RespHeaders = Vec<(String, Vec<String>)>;

#[derive(Debug)]
pub enum Outcome {
    /// The final JSON-RPC message is in `TargetBuffers::body`.
    Answer {
        status: u16,
        headers: RespHeaders,
    },
    /// The server's status for a notification or a session DELETE.
    Ack {
        status: u16,
        headers: RespHeaders,
    },
    Failure(TunnelFailure),
    /// The deadline passed: nothing may be posted.
    Expired,
    /// The sink asked to stop.
    Aborted,
}
