//! Forwarding commands to a stdio MCP server: protocol.md "stdio MCP servers".
//!
//! One child process per channel, JSON-RPC one message per line. Threads per
//! child: a writer (owns stdin), a reader (stdout: frames lines and routes each
//! message), a stderr pump (rate-limited log lines); one supervisor per channel
//! starts the child, restarts it with backoff when it dies and stops it at the
//! end. The channel's single worker thread runs one request at a time.
//!
//! Requests are written under wire ids of ours (see `State::next_wire_id`);
//! the client's id is put back into the answer.
//!
//! Routing (reader): a notification goes to the request in flight (else it is
//! dropped); an answer goes to the request in flight when the ids match, is
//! discarded when its id was retired, and is skipped otherwise; a server→client
//! request is answered at once (`ping` with `{}`, anything else with -32601)
//! so the server is never left waiting; a line that is not JSON is logged and
//! skipped; a line over the cap fails the request in flight.

mod process;
pub mod restart;
pub mod retired;
pub mod stderr_limit;

use std::io::{ErrorKind, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::AgentMetrics;
use super::readiness::Readiness;
use super::target::{Budget, Expect, NotifyVerdict, Outcome, TargetBuffers, MAX_RESPONSE_BYTES};
use super::target_http::json_limits;
use crate::proto::channel::Channel;
use crate::proto::failure::{FailureSource as S, TransportErrorKind as K, TunnelFailure};
use crate::proto::jsonrpc::{inspect, same_id, MessageKind};
use crate::proto::lines::{LineEvent, LineFramer};
use process::Sig;
use restart::RestartBackoff;
use retired::{RetiredIds, MAX_RETIRED};
use stderr_limit::{LineLimiter, LINES_PER_SECOND};

/// One stdout line, like one HTTP answer, is at most 32 MiB.
pub const MAX_LINE_BYTES: usize = MAX_RESPONSE_BYTES;
/// Longer stderr lines are reported as skipped, not logged.
const MAX_STDERR_LINE: usize = 4096;
/// How much of a non-JSON stdout line goes into the log.
const LOG_EXCERPT: usize = 200;
/// How long a command waits for a restarting child before failing.
const WAIT_FOR_CHILD: Duration = Duration::from_secs(5);
/// How often the supervisor checks on a child that keeps its stdout open.
const SUPERVISE_TICK: Duration = Duration::from_millis(250);
const READ_CHUNK: usize = 64 * 1024;

/// Stop timings: after stdin closes, then after SIGTERM.
#[derive(Clone, Copy, Debug)]
pub struct StopGrace {
    pub after_close: Duration,
    pub after_term: Duration,
}

impl Default for StopGrace {
    fn default() -> Self {
        StopGrace {
            after_close: Duration::from_secs(2),
            after_term: Duration::from_secs(3),
        }
    }
}

/// What the reader hands the request in flight.
enum Ev {
    /// The request line was written (or could not be).
    Written(Result<(), ErrorKind>),
    Notify(Vec<u8>),
    /// The answer line and where its id is in it.
    Final(Vec<u8>, std::ops::Range<usize>),
    TooLong,
    Closed,
}

struct WriteJob {
    line: Vec<u8>,
    done: Option<SyncSender<Ev>>,
}

struct Slot {
    generation: u64,
    /// The id the child saw (see [`State::next_wire_id`]).
    wire_id: Vec<u8>,
    tx: SyncSender<Ev>,
}

struct Running {
    generation: u64,
    pid: u32,
    writer: SyncSender<WriteJob>,
    /// The reader reached the end of stdout.
    stdout_closed: bool,
    /// Killed on purpose (initialize timeout): no new request may use it.
    killed: bool,
}

impl Running {
    fn up(&self) -> bool {
        !self.stdout_closed && !self.killed
    }
}

struct State {
    stopping: bool,
    running: Option<Running>,
    slot: Option<Slot>,
    retired: RetiredIds,
    /// Requests reach the child under ids of ours, never reused: two clients
    /// of one channel can both send id 1, and a late answer to a request that
    /// timed out must never be taken for a later request's answer. The
    /// client's own id is put back into the answer.
    next_wire_id: u64,
    /// The client's last successful `initialize` (its raw message and id),
    /// replayed to a restarted child before anything else reaches it.
    handshake: Option<(Vec<u8>, Vec<u8>)>,
    /// The child generation that has been initialized (by the client or a replay).
    initialized: u64,
}

struct Shared {
    channel: Channel,
    argv: Vec<String>,
    readiness: Arc<Readiness>,
    grace: StopGrace,
    /// Counts restarts (`mcp_tunnel_agent_child_restarts_total`).
    metrics: Arc<AgentMetrics>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct StdioTarget {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

fn fail(source: S, kind: K) -> Outcome {
    Outcome::Failure(TunnelFailure::new(source, Some(kind)))
}

fn excerpt(line: &[u8], max: usize) -> String {
    let cut = &line[..line.len().min(max)];
    let mut s = String::from_utf8_lossy(cut).escape_debug().to_string();
    if line.len() > max {
        s.push_str(&format!("… ({} bytes)", line.len()));
    }
    s
}

impl StdioTarget {
    /// Starts the supervisor, which starts the child at once.
    pub fn start(
        channel: Channel,
        argv: Vec<String>,
        readiness: Arc<Readiness>,
        grace: StopGrace,
        metrics: Arc<AgentMetrics>,
    ) -> std::io::Result<StdioTarget> {
        readiness.set_channel(&channel, Some("stdio MCP server starting".into()));
        let shared = Arc::new(Shared {
            channel,
            argv,
            readiness,
            grace,
            metrics,
            state: Mutex::new(State {
                stopping: false,
                running: None,
                slot: None,
                retired: RetiredIds::new(MAX_RETIRED),
                next_wire_id: 1,
                handshake: None,
                initialized: 0,
            }),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("stdio-{}", shared.channel))
            .spawn(move || supervise(&s))?;
        Ok(StdioTarget {
            shared,
            supervisor: Mutex::new(Some(handle)),
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.shared.channel
    }

    /// The running child's process id (None while it is down).
    pub fn pid(&self) -> Option<u32> {
        let st = self.shared.lock();
        st.running.as_ref().filter(|r| r.up()).map(|r| r.pid)
    }

    /// Ok when the child runs.
    pub fn probe(&self) -> Result<u16, String> {
        match self.pid() {
            Some(_) => Ok(200),
            None => Err(format!(
                "stdio MCP server for channel {} is not running",
                self.shared.channel
            )),
        }
    }

    /// Starts the stop sequence without waiting for it (several channels stop
    /// in parallel, each within its own grace periods).
    pub fn request_stop(&self) {
        {
            let mut st = self.shared.lock();
            st.stopping = true;
        }
        self.shared.changed.notify_all();
    }

    /// Closes stdin, then SIGTERM and SIGKILL after the grace periods; reaps.
    /// Returns once the supervisor (and so the child) is gone.
    pub fn stop(&self) {
        self.request_stop();
        let handle = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// stdio has no sessions to end: 405, and the server keeps serving.
    pub fn terminate_session(&self, budget: Budget) -> Outcome {
        if budget.expired(Instant::now()) {
            return Outcome::Expired;
        }
        Outcome::Ack {
            status: 405,
            headers: Vec::new(),
        }
    }

    /// Writes one message and, for a request, waits for its answer, posting
    /// the server's notifications through `on_notify` in order.
    pub fn forward(
        &self,
        body: &[u8],
        expect: Expect<'_>,
        budget: Budget,
        bufs: &mut TargetBuffers,
        on_notify: &mut dyn FnMut(&[u8]) -> NotifyVerdict,
    ) -> Outcome {
        if budget.remaining(Instant::now()).is_none() {
            return Outcome::Expired;
        }
        let Ok(info) = inspect(body, &json_limits()) else {
            log::warn!(
                "channel {}: command is not one JSON-RPC message; not written to the stdio server",
                self.shared.channel
            );
            return fail(S::ClientInternal, K::Unknown);
        };
        let is_initialize = info.method.as_deref() == Some("initialize");
        if !is_initialize && info.method.as_deref() != Some("notifications/initialized") {
            self.replay_handshake(budget, bufs);
        }
        // One message per line: raw newlines can only be whitespace between
        // JSON tokens (inside strings they are escaped), so blanking them
        // keeps the message and its meaning.
        let mut line: Vec<u8> = body
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
            .collect();
        line.push(b'\n');
        let id: Option<Vec<u8>> = match expect {
            Expect::Response { id } => id.map(<[u8]>::to_vec),
            Expect::Ack => None,
        };
        if matches!(expect, Expect::Response { .. }) && id.is_none() {
            return fail(S::ClientInternal, K::Unknown);
        }

        let Some(generation) = self.wait_until_up(budget) else {
            return if budget.expired(Instant::now()) {
                Outcome::Expired
            } else {
                fail(S::TransportClosed, K::ConnectionClosed)
            };
        };
        let (tx, rx) = sync_channel::<Ev>(1);
        let (writer, wire_id) = {
            let mut st = self.shared.lock();
            let Some(run) = st
                .running
                .as_ref()
                .filter(|r| r.generation == generation && r.up())
            else {
                return fail(S::TransportClosed, K::ConnectionClosed);
            };
            let writer = run.writer.clone();
            let mut wire_id = None;
            if let (Some(_), Some(range)) = (&id, info.id.clone()) {
                let wire = st.next_wire_id.to_string().into_bytes();
                st.next_wire_id += 1;
                // Blanking newlines kept every offset: the body's id range is the line's.
                line.splice(range, wire.iter().copied());
                st.slot = Some(Slot {
                    generation,
                    wire_id: wire.clone(),
                    tx: tx.clone(),
                });
                wire_id = Some(wire);
            }
            (writer, wire_id)
        };
        if writer
            .send(WriteJob {
                line,
                done: Some(tx),
            })
            .is_err()
        {
            self.clear_slot(generation, None);
            return fail(S::TransportClosed, K::ClosedPipe);
        }
        drop(writer);
        let outcome = self.await_answer(&rx, id.as_deref(), budget, bufs, on_notify);
        match &outcome {
            Outcome::Answer { .. } | Outcome::Ack { .. } => {
                self.clear_slot(generation, None);
                if is_initialize {
                    self.remember_handshake(generation, body, id.as_deref(), &bufs.body);
                }
            }
            Outcome::Expired | Outcome::Failure(_) | Outcome::Aborted => {
                let timed_out = matches!(outcome, Outcome::Expired)
                    || matches!(&outcome, Outcome::Failure(f) if f.source == S::Timeout);
                if timed_out && is_initialize {
                    log::warn!(
                        "channel {}: initialize timed out; restarting the stdio MCP server",
                        self.shared.channel
                    );
                    self.clear_slot(generation, None);
                    self.kill(generation);
                } else {
                    // Its answer may still come: discard it then, keep the pipes open.
                    self.clear_slot(generation, wire_id.as_deref());
                }
            }
        }
        outcome
    }

    /// Keeps a successful `initialize` for [`Self::replay_handshake`].
    fn remember_handshake(
        &self,
        generation: u64,
        request: &[u8],
        id: Option<&[u8]>,
        answer: &[u8],
    ) {
        let succeeded =
            inspect(answer, &json_limits()).is_ok_and(|a| matches!(a.kind, MessageKind::Response));
        if let (true, Some(id)) = (succeeded, id) {
            let mut st = self.shared.lock();
            st.handshake = Some((request.to_vec(), id.to_vec()));
            st.initialized = generation;
        }
    }

    /// A restarted child has lost the session the client opened with
    /// `initialize`; servers refuse requests before one. The client cannot
    /// know (stdio has no session id to lose), so the agent replays the
    /// client's `initialize` and `notifications/initialized` first, within
    /// this request's budget. The replay's answer goes nowhere.
    fn replay_handshake(&self, budget: Budget, bufs: &mut TargetBuffers) {
        {
            // The common case in one look: nothing to replay, or the running
            // child already has it.
            let st = self.shared.lock();
            let running = st.running.as_ref().filter(|r| r.up());
            if st.handshake.is_none() || running.is_some_and(|r| r.generation == st.initialized) {
                return;
            }
        }
        let Some(generation) = self.wait_until_up(budget) else {
            return;
        };
        let (request, id) = {
            let st = self.shared.lock();
            match &st.handshake {
                Some(h) if st.initialized != generation => h.clone(),
                _ => return,
            }
        };
        let ch = &self.shared.channel;
        let mut ignore = |_: &[u8]| NotifyVerdict::Continue;
        let expect = Expect::Response { id: Some(&id) };
        match self.forward(&request, expect, budget, bufs, &mut ignore) {
            Outcome::Answer { .. } => {
                let initialized = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
                let _ = self.forward(initialized, Expect::Ack, budget, bufs, &mut ignore);
                log::info!("channel {ch}: the restarted stdio MCP server was given the client's initialize again");
                // One replay per child, whatever it answered: a child that
                // refuses it answers the requests themselves with its own errors.
                let mut st = self.shared.lock();
                st.initialized = st.initialized.max(generation);
            }
            // No answer (the child hung and was killed, or died): the next
            // request replays to the child that replaces it.
            _ => log::warn!(
                "channel {ch}: replaying initialize to the restarted stdio MCP server failed"
            ),
        }
        bufs.body.clear();
    }

    fn await_answer(
        &self,
        rx: &Receiver<Ev>,
        id: Option<&[u8]>,
        budget: Budget,
        bufs: &mut TargetBuffers,
        on_notify: &mut dyn FnMut(&[u8]) -> NotifyVerdict,
    ) -> Outcome {
        loop {
            let Some(left) = budget.remaining(Instant::now()) else {
                return Outcome::Expired;
            };
            let ev = match rx.recv_timeout(left) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => {
                    return if budget.expired(Instant::now()) {
                        Outcome::Expired
                    } else {
                        Outcome::Failure(TunnelFailure::timeout())
                    };
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return fail(S::TransportClosed, K::UnexpectedEof)
                }
            };
            match ev {
                Ev::Written(Ok(())) if id.is_none() => {
                    // A notification releases the slot once written; stdio has
                    // no status, 202 is what an HTTP server answers.
                    return Outcome::Ack {
                        status: 202,
                        headers: Vec::new(),
                    };
                }
                Ev::Written(Ok(())) => {}
                Ev::Written(Err(kind)) => {
                    return fail(S::TransportClosed, K::from_io(kind));
                }
                Ev::Notify(msg) => {
                    if on_notify(&msg) == NotifyVerdict::Abort {
                        return Outcome::Aborted;
                    }
                }
                Ev::Final(msg, id_at) => {
                    // The client's own id back in place of the wire id.
                    bufs.body.clear();
                    match (msg.get(..id_at.start), msg.get(id_at.end..), id) {
                        (Some(head), Some(tail), Some(id)) => {
                            bufs.body.extend_from_slice(head);
                            bufs.body.extend_from_slice(id);
                            bufs.body.extend_from_slice(tail);
                        }
                        _ => bufs.body.extend_from_slice(&msg),
                    }
                    return Outcome::Answer {
                        status: 200,
                        headers: vec![(
                            "Content-Type".to_string(),
                            vec!["application/json".to_string()],
                        )],
                    };
                }
                Ev::TooLong => return fail(S::Protocol, K::ResponseBodyTooLarge),
                Ev::Closed => return fail(S::TransportClosed, K::UnexpectedEof),
            }
        }
    }

    /// Waits (bounded) for a running child; its generation.
    fn wait_until_up(&self, budget: Budget) -> Option<u64> {
        let now = Instant::now();
        let limit = budget.remaining(now)?.min(WAIT_FOR_CHILD);
        let until = now + limit;
        let mut st = self.shared.lock();
        loop {
            if st.stopping {
                return None;
            }
            if let Some(r) = st.running.as_ref().filter(|r| r.up()) {
                return Some(r.generation);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ends the request in flight; `retire` its id when an answer may still come.
    fn clear_slot(&self, generation: u64, retire: Option<&[u8]>) {
        let mut st = self.shared.lock();
        if st.slot.as_ref().is_some_and(|s| s.generation == generation) {
            st.slot = None;
        }
        if let Some(id) = retire {
            st.retired.retire(id);
        }
    }

    fn kill(&self, generation: u64) {
        let mut st = self.shared.lock();
        // Under the lock the supervisor has not reaped this child: the pid is still ours.
        if let Some(r) = st.running.as_mut().filter(|r| r.generation == generation) {
            r.killed = true;
            kill_pid(r.pid);
        }
    }
}

impl Drop for StdioTarget {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(unix)]
fn kill_pid(pid: u32) {
    process::signal_pid(pid, Sig::Kill);
}

#[cfg(not(unix))]
fn kill_pid(_pid: u32) {}

/// The supervisor: start, watch, restart with backoff, stop.
fn supervise(shared: &Arc<Shared>) {
    let ch = shared.channel.clone();
    let mut backoff = RestartBackoff::standard();
    let mut generation: u64 = 0;
    let mut last_spawn_error: Option<ErrorKind> = None;
    loop {
        if shared.lock().stopping {
            break;
        }
        generation += 1;
        let started = Instant::now();
        let delay = match process::spawn(&shared.argv) {
            Err(e) => {
                if last_spawn_error != Some(e.kind()) {
                    log::error!(
                        "channel {ch}: cannot start the stdio MCP server: {}",
                        e.kind()
                    );
                    last_spawn_error = Some(e.kind());
                }
                shared.readiness.set_channel(
                    &ch,
                    Some(format!("stdio MCP server cannot be started ({})", e.kind())),
                );
                backoff.after_exit(Duration::ZERO)
            }
            Ok(sp) => {
                last_spawn_error = None;
                let mut child = sp.child;
                log::info!("channel {ch}: stdio MCP server started (pid {})", sp.pid);
                let writer = start_io_threads(shared, generation, sp.stdin, sp.stdout, sp.stderr);
                {
                    let mut st = shared.lock();
                    st.running = Some(Running {
                        generation,
                        pid: sp.pid,
                        writer,
                        stdout_closed: false,
                        killed: false,
                    });
                }
                shared.changed.notify_all();
                shared.readiness.set_channel(&ch, None);
                match watch(shared, &mut child, generation) {
                    Watch::Stop => {
                        // Closing stdin is the polite stop for a stdio server.
                        let status = process::stop(
                            &mut child,
                            shared.grace.after_close,
                            shared.grace.after_term,
                        );
                        log::info!(
                            "channel {ch}: stdio MCP server stopped ({})",
                            describe(status)
                        );
                        break;
                    }
                    Watch::Exited(status) => {
                        let uptime = started.elapsed();
                        let delay = backoff.after_exit(uptime);
                        log::warn!(
                            "channel {ch}: stdio MCP server exited ({}) after {:.1}s; restarting in {:?}",
                            describe(status),
                            uptime.as_secs_f64(),
                            delay
                        );
                        shared.readiness.set_channel(
                            &ch,
                            Some("stdio MCP server exited; restarting".to_string()),
                        );
                        shared.metrics.child_restart(&ch);
                        delay
                    }
                }
            }
        };
        let until = Instant::now() + delay;
        let mut st = shared.lock();
        while !st.stopping {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    shared
        .readiness
        .set_channel(&ch, Some("stopped".to_string()));
}

enum Watch {
    Stop,
    Exited(Option<std::process::ExitStatus>),
}

/// Waits until the child exits (reaped here) or the target stops. A child
/// that closed stdout is killed: it can no longer answer.
fn watch(shared: &Arc<Shared>, child: &mut std::process::Child, generation: u64) -> Watch {
    let mut st = shared.lock();
    loop {
        if st.stopping {
            // The writer's sender goes: the writer thread ends and closes stdin.
            let run = st.running.take();
            drop(st);
            drop(run);
            fail_slot(shared, generation);
            return Watch::Stop;
        }
        let closed = st.running.as_ref().is_some_and(|r| r.stdout_closed);
        // Reaping under the lock: nobody signals a pid after it was reaped.
        let exited = match child.try_wait() {
            Ok(Some(s)) => Some(Some(s)),
            Ok(None) if closed => {
                process::signal(child, Sig::Kill);
                Some(child.wait().ok())
            }
            Ok(None) => None,
            Err(_) => Some(None),
        };
        if let Some(status) = exited {
            let run = st.running.take();
            drop(st);
            drop(run);
            fail_slot(shared, generation);
            shared.changed.notify_all();
            return Watch::Exited(status);
        }
        st = shared
            .changed
            .wait_timeout(st, SUPERVISE_TICK)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// The request in flight on a child that is gone gets `transport_closed`.
fn fail_slot(shared: &Shared, generation: u64) {
    let slot = {
        let mut st = shared.lock();
        match &st.slot {
            Some(s) if s.generation == generation => st.slot.take(),
            _ => None,
        }
    };
    if let Some(s) = slot {
        let _ = s.tx.try_send(Ev::Closed);
    }
}

fn describe(status: Option<std::process::ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "status unknown".to_string(),
    }
}

fn start_io_threads(
    shared: &Arc<Shared>,
    generation: u64,
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
    stderr: std::process::ChildStderr,
) -> SyncSender<WriteJob> {
    let ch = shared.channel.clone();
    // A few queued writes: the request plus answers to server→client requests.
    let (wtx, wrx) = sync_channel::<WriteJob>(4);
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        if let Err(e) = std::thread::Builder::new().name(name).spawn(f) {
            log::error!("channel {ch}: cannot start a stdio thread: {e}");
        }
    };
    spawn(
        format!("stdio-w-{ch}"),
        Box::new(move || write_loop(stdin, &wrx)),
    );
    let s = shared.clone();
    spawn(
        format!("stdio-r-{ch}"),
        Box::new(move || read_loop(&s, generation, stdout)),
    );
    let ch2 = shared.channel.clone();
    spawn(
        format!("stdio-e-{ch}"),
        Box::new(move || stderr_loop(&ch2, stderr)),
    );
    wtx
}

/// Owns stdin; ends (closing stdin) when every sender is gone.
fn write_loop(mut stdin: std::process::ChildStdin, rx: &Receiver<WriteJob>) {
    while let Ok(job) = rx.recv() {
        let r = stdin
            .write_all(&job.line)
            .and_then(|()| stdin.flush())
            .map_err(|e| e.kind());
        if let Some(done) = job.done {
            let _ = done.send(Ev::Written(r));
        }
    }
}

/// Reads stdout until it closes. It holds no writer handle of its own (it
/// borrows the running child's for replies), so closing stdin at stop is not
/// held up by this thread.
fn read_loop(shared: &Arc<Shared>, generation: u64, mut stdout: std::process::ChildStdout) {
    let mut framer = LineFramer::new(MAX_LINE_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut garbage_log = LineLimiter::new(LINES_PER_SECOND);
    loop {
        let n = match stdout.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        framer.feed(&chunk[..n], &mut |ev| {
            route(shared, generation, ev, &mut garbage_log)
        });
    }
    if let Some(last) = framer.finish() {
        route(shared, generation, LineEvent::Line(&last), &mut garbage_log);
    }
    let slot = {
        let mut st = shared.lock();
        if let Some(r) = st.running.as_mut().filter(|r| r.generation == generation) {
            r.stdout_closed = true;
        }
        match &st.slot {
            Some(s) if s.generation == generation => st.slot.take(),
            _ => None,
        }
    };
    shared.changed.notify_all();
    if let Some(s) = slot {
        let _ = s.tx.send(Ev::Closed);
    }
}

/// The request in flight on this child, if any.
fn current(shared: &Shared, generation: u64) -> Option<SyncSender<Ev>> {
    let st = shared.lock();
    st.slot
        .as_ref()
        .filter(|s| s.generation == generation)
        .map(|s| s.tx.clone())
}

fn route(shared: &Shared, generation: u64, ev: LineEvent<'_>, garbage_log: &mut LineLimiter) {
    let ch = &shared.channel;
    let line = match ev {
        LineEvent::Line(l) => l,
        LineEvent::TooLong => {
            log::warn!("channel {ch}: stdio MCP server wrote a line over {MAX_LINE_BYTES} bytes; skipped to the next line");
            if let Some(tx) = current(shared, generation) {
                let _ = tx.send(Ev::TooLong);
            }
            return;
        }
    };
    let info = match inspect(line, &json_limits()) {
        Ok(i) => i,
        Err(_) => {
            let v = garbage_log.line(Instant::now());
            if v.report_suppressed > 0 {
                log::warn!(
                    "channel {ch}: {} more non-JSON stdout line(s) suppressed",
                    v.report_suppressed
                );
            }
            if v.log {
                log::warn!(
                    "channel {ch}: skipping a non-JSON-RPC line on stdout: \"{}\"",
                    excerpt(line, LOG_EXCERPT)
                );
            }
            return;
        }
    };
    match info.kind {
        MessageKind::Notification => match current(shared, generation) {
            Some(tx) => {
                let _ = tx.send(Ev::Notify(line.to_vec()));
            }
            None => log::debug!(
                "channel {ch}: notification {} with no request in flight; dropped",
                info.method.as_deref().unwrap_or("?")
            ),
        },
        MessageKind::Request => {
            let method = info.method.as_deref().unwrap_or("");
            let id = info.id_bytes(line).unwrap_or(b"null");
            let mut reply = Vec::with_capacity(128);
            reply.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
            reply.extend_from_slice(id);
            if method == "ping" {
                reply.extend_from_slice(b",\"result\":{}}\n");
            } else {
                log::warn!(
                    "channel {ch}: the stdio MCP server sent a {} request; the tunnel cannot carry server requests, answered -32601",
                    excerpt(method.as_bytes(), 64)
                );
                reply.extend_from_slice(
                    b",\"error\":{\"code\":-32601,\"message\":\"Method not found\"}}\n",
                );
            }
            let writer = shared
                .lock()
                .running
                .as_ref()
                .filter(|r| r.generation == generation)
                .map(|r| r.writer.clone());
            let Some(writer) = writer else {
                return;
            };
            match writer.try_send(WriteJob {
                line: reply,
                done: None,
            }) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    log::warn!("channel {ch}: stdin busy; a reply to a server request was dropped")
                }
            }
        }
        MessageKind::Response | MessageKind::Error => {
            let (Some(id), Some(id_at)) = (info.id_bytes(line), info.id.clone()) else {
                return;
            };
            let tx = {
                let mut st = shared.lock();
                if st.retired.take(id) {
                    log::info!("channel {ch}: late answer for a request that timed out; discarded");
                    return;
                }
                match &st.slot {
                    Some(s) if s.generation == generation && same_id(&s.wire_id, id) => {
                        Some(s.tx.clone())
                    }
                    _ => None,
                }
            };
            match tx {
                Some(tx) => {
                    let _ = tx.send(Ev::Final(line.to_vec(), id_at));
                }
                None => log::warn!(
                    "channel {ch}: answer for id {} matches no request in flight; skipped",
                    excerpt(id, 64)
                ),
            }
        }
    }
}

/// Logs the child's stderr, prefixed with the channel, at most
/// LINES_PER_SECOND lines a second.
fn stderr_loop(ch: &Channel, mut stderr: std::process::ChildStderr) {
    let mut framer = LineFramer::new(MAX_STDERR_LINE);
    let mut limiter = LineLimiter::new(LINES_PER_SECOND);
    let mut chunk = vec![0u8; 8192];
    let emit = |ev: LineEvent<'_>, limiter: &mut LineLimiter| {
        let v = limiter.line(Instant::now());
        if v.report_suppressed > 0 {
            log::warn!(
                "channel {ch}: stderr: {} line(s) suppressed",
                v.report_suppressed
            );
        }
        if !v.log {
            return;
        }
        match ev {
            LineEvent::Line(l) => log::info!("channel {ch}: stderr: {}", excerpt(l, 1024)),
            LineEvent::TooLong => {
                log::info!("channel {ch}: stderr: (a line over {MAX_STDERR_LINE} bytes skipped)")
            }
        }
    };
    loop {
        let n = match stderr.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        framer.feed(&chunk[..n], &mut |ev| emit(ev, &mut limiter));
    }
    if let Some(last) = framer.finish() {
        emit(LineEvent::Line(&last), &mut limiter);
    }
    let left = limiter.finish();
    if left > 0 {
        log::warn!("channel {ch}: stderr: {left} line(s) suppressed");
    }
}
