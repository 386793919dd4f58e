//! One command on a worker thread: check the deadline, forward to the
//! channel's target, post notifications as they arrive and then the final answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control_plane::ControlPlane;
use super::metrics::{AgentMetrics, CommandOutcome, CommandType};
use super::post::PostOutcome;
use super::target::{Budget, Expect, NotifyVerdict, Outcome, Target, TargetBuffers};
use super::target_http::json_limits;
use crate::proto::channel::Channel;
use crate::proto::command::{Command, CommandKind};
use crate::proto::failure::{write_error, FailureSource, TransportErrorKind, TunnelFailure};
use crate::proto::jsonrpc::{inspect, MessageInfo, MessageKind};
use crate::proto::response::{encode, RespType, ResponsePost};
use crate::proto::retry::PostKind;
use crate::proto::timeout::Deadline;

/// A command with the deadline computed from its batch's receipt instant.
pub struct Job {
    pub command: Command,
    pub deadline: Option<Deadline>,
    /// When the poll answer carrying it arrived (the latency metric's start).
    pub receipt: Instant,
}

/// The channel → target map; a handful of entries, so a list.
pub struct Targets {
    entries: Vec<(Channel, Arc<Target>)>,
}

impl Targets {
    pub fn new(entries: Vec<(Channel, Arc<Target>)>) -> Targets {
        Targets { entries }
    }

    pub fn get(&self, channel: &Channel) -> Option<&Target> {
        self.entries
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, t)| t.as_ref())
    }
}

pub struct WorkerCtx {
    pub cp: Arc<ControlPlane>,
    pub targets: Arc<Targets>,
    /// Cap on an MCP exchange for commands without a deadline.
    pub max_request_duration: Duration,
    pub metrics: Arc<AgentMetrics>,
}

/// Per-worker buffers, reused across commands.
#[derive(Default)]
pub struct WorkerBuffers {
    pub target: TargetBuffers,
    pub post: Vec<u8>,
    pub synth: Vec<u8>,
}

/// What became of a command (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Expired before work started: MCP not contacted, nothing posted.
    ExpiredBeforeStart,
    /// The deadline passed during MCP work or before the post: nothing posted.
    ExpiredDuringWork,
    /// The final answer went out; `failure` when it was a synthesized tunnel failure.
    Posted {
        post: PostOutcome,
        failure: bool,
    },
    Aborted,
}

impl Handled {
    fn outcome(self) -> CommandOutcome {
        match self {
            Handled::ExpiredBeforeStart => CommandOutcome::ExpiredBeforeStart,
            Handled::ExpiredDuringWork => CommandOutcome::Expired,
            Handled::Aborted => CommandOutcome::Aborted,
            Handled::Posted { post, failure } => match post {
                PostOutcome::Delivered if failure => CommandOutcome::McpFailure,
                PostOutcome::Delivered => CommandOutcome::Answered,
                PostOutcome::AlreadyFulfilled => CommandOutcome::Rejected,
                PostOutcome::Failed => CommandOutcome::PostFailed,
                PostOutcome::DeadlineExpired => CommandOutcome::Expired,
            },
        }
    }
}

/// Handles one command and counts what became of it.
pub fn handle(job: Job, ctx: &WorkerCtx, bufs: &mut WorkerBuffers) -> Handled {
    let _log_scope = crate::ops::log::RequestScope::enter(&job.command.request_id);
    let receipt = job.receipt;
    // Inspected once here: the type is a metric label and steers the forwarding.
    let info = match &job.command.kind {
        CommandKind::JsonRpc { body } => inspect(body, &json_limits()).ok(),
        CommandKind::SessionTermination => None,
    };
    let kind = match (&job.command.kind, info.as_ref().map(|i| &i.kind)) {
        (CommandKind::SessionTermination, _) => CommandType::SessionTermination,
        (_, Some(MessageKind::Notification)) => CommandType::Notification,
        (_, Some(MessageKind::Response | MessageKind::Error)) => CommandType::Response,
        _ => CommandType::Request,
    };
    let handled = handle_command(&job, info, ctx, bufs);
    let outcome = handled.outcome();
    let channel = &job.command.channel;
    ctx.metrics.command(channel, kind, outcome);
    if matches!(
        outcome,
        CommandOutcome::Answered | CommandOutcome::McpFailure
    ) {
        ctx.metrics.answered_after(channel, receipt.elapsed());
    }
    handled
}

fn handle_command(
    job: &Job,
    info: Option<MessageInfo>,
    ctx: &WorkerCtx,
    bufs: &mut WorkerBuffers,
) -> Handled {
    let cmd = &job.command;
    let deadline = job.deadline;
    if deadline.is_some_and(|d| d.is_expired(Instant::now())) {
        log::info!(
            "command {} expired before it could start; dropped without contacting the MCP server",
            cmd.request_id
        );
        return Handled::ExpiredBeforeStart;
    }
    let budget = Budget {
        deadline,
        cap: ctx.max_request_duration,
    };
    let WorkerBuffers {
        target: tb,
        post,
        synth,
    } = bufs;
    let handled = match &cmd.kind {
        CommandKind::JsonRpc { body } => {
            forward_jsonrpc(cmd, body, info, budget, ctx, tb, post, synth)
        }
        CommandKind::SessionTermination => {
            let outcome = match ctx.targets.get(&cmd.channel) {
                Some(Target::Http(t)) => t.terminate_session(&cmd.headers, budget),
                Some(Target::Stdio(t)) => t.terminate_session(budget),
                None => unknown_channel(cmd),
            };
            finish(
                cmd,
                outcome,
                None,
                RespType::SessionTerminationResponse,
                budget,
                ctx,
                tb,
                post,
                synth,
            )
        }
    };
    tb.trim();
    handled
}

fn unknown_channel(cmd: &Command) -> Outcome {
    log::warn!(
        "command {}: unsupported_channel: channel {} is not served by this agent",
        cmd.request_id,
        cmd.channel
    );
    Outcome::Failure(TunnelFailure {
        source: FailureSource::ClientInternal,
        kind: Some(TransportErrorKind::Unknown),
        upstream_status: None,
    })
}

#[allow(clippy::too_many_arguments)]
fn forward_jsonrpc(
    cmd: &Command,
    body: &[u8],
    info: Option<MessageInfo>,
    budget: Budget,
    ctx: &WorkerCtx,
    tb: &mut TargetBuffers,
    post: &mut Vec<u8>,
    synth: &mut Vec<u8>,
) -> Handled {
    let id: Option<&[u8]> = info
        .as_ref()
        .and_then(|i| i.id.clone())
        .and_then(|r| body.get(r));
    // Notifications and a client's own responses get only an acknowledgement.
    let expect_ack = matches!(
        info.as_ref().map(|i| &i.kind),
        Some(MessageKind::Notification) | Some(MessageKind::Response) | Some(MessageKind::Error)
    );
    let (expect, final_type) = if expect_ack {
        (Expect::Ack, RespType::NotifyAck)
    } else {
        (Expect::Response { id }, RespType::JsonrpcResponse)
    };

    let mut notify_failed = false;
    let mut skipped = 0usize;
    let mut notify_buf = Vec::new();
    std::mem::swap(&mut notify_buf, post);
    let target = ctx.targets.get(&cmd.channel);
    let outcome = if target.is_none() {
        unknown_channel(cmd)
    } else {
        let mut on_notify = |msg: &[u8]| -> NotifyVerdict {
            if notify_failed {
                skipped += 1;
                return NotifyVerdict::Continue;
            }
            encode(
                &ResponsePost {
                    request_id: &cmd.request_id,
                    channel: cmd.channel.as_str(),
                    resp_json: Some(msg),
                    resp_headers: &[],
                    resp_code: 200,
                    resp_type: RespType::JsonrpcNotify,
                },
                &mut notify_buf,
            );
            match ctx.cp.post_response(
                &cmd.shard_token,
                &notify_buf,
                PostKind::Notify,
                budget.deadline,
                &cmd.request_id,
            ) {
                PostOutcome::Delivered => NotifyVerdict::Continue,
                PostOutcome::AlreadyFulfilled | PostOutcome::DeadlineExpired => {
                    NotifyVerdict::Abort
                }
                PostOutcome::Failed => {
                    // Later notifications would arrive out of order: skip them, keep the final.
                    notify_failed = true;
                    NotifyVerdict::Continue
                }
            }
        };
        match target {
            Some(Target::Http(t)) => {
                t.forward(&cmd.headers, body, expect, budget, tb, &mut on_notify)
            }
            Some(Target::Stdio(t)) => t.forward(body, expect, budget, tb, &mut on_notify),
            None => unknown_channel(cmd),
        }
    };
    std::mem::swap(&mut notify_buf, post);
    if skipped > 0 {
        log::warn!(
            "command {}: {skipped} notification(s) skipped after a failed notification post",
            cmd.request_id
        );
    }
    finish(cmd, outcome, id, final_type, budget, ctx, tb, post, synth)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    cmd: &Command,
    outcome: Outcome,
    id: Option<&[u8]>,
    ack_type: RespType,
    budget: Budget,
    ctx: &WorkerCtx,
    tb: &TargetBuffers,
    post: &mut Vec<u8>,
    synth: &mut Vec<u8>,
) -> Handled {
    // Built only for a synthesized error (it allocates).
    let json_ct: [(String, Vec<String>); 1];
    let base = ResponsePost {
        request_id: &cmd.request_id,
        channel: cmd.channel.as_str(),
        resp_json: None,
        resp_headers: &[],
        resp_code: 0,
        resp_type: ack_type,
    };
    let answer = match &outcome {
        Outcome::Expired => {
            log::info!(
                "command {}: deadline passed during MCP work; nothing posted",
                cmd.request_id
            );
            return Handled::ExpiredDuringWork;
        }
        Outcome::Aborted => {
            log::info!(
                "command {}: stopped (the control plane no longer wants it)",
                cmd.request_id
            );
            return Handled::Aborted;
        }
        Outcome::Answer { status, headers } => ResponsePost {
            resp_json: Some(&tb.body[..]),
            resp_headers: headers,
            resp_code: *status,
            resp_type: RespType::JsonrpcResponse,
            ..base
        },
        Outcome::Ack { status, headers } => ResponsePost {
            resp_headers: headers,
            resp_code: *status,
            ..base
        },
        Outcome::Failure(f) => {
            if budget.expired(Instant::now()) {
                log::info!(
                    "command {}: deadline passed during MCP work; nothing posted",
                    cmd.request_id
                );
                return Handled::ExpiredDuringWork;
            }
            ctx.metrics.mcp_failure(f.source);
            log::warn!(
                "command {}: MCP exchange failed (source {}{})",
                cmd.request_id,
                f.source.as_str(),
                f.kind
                    .map(|k| format!(", {}", k.as_str()))
                    .unwrap_or_default()
            );
            if matches!(ack_type, RespType::JsonrpcResponse) {
                synth.clear();
                write_error(id, f, synth);
                json_ct = [(
                    "Content-Type".to_string(),
                    vec!["application/json".to_string()],
                )];
                ResponsePost {
                    resp_json: Some(&synth[..]),
                    resp_headers: &json_ct[..],
                    resp_code: f.resp_code(),
                    ..base
                }
            } else {
                ResponsePost {
                    resp_code: f.resp_code(),
                    ..base
                }
            }
        }
    };
    let resp_code = answer.resp_code;
    let failure = matches!(outcome, Outcome::Failure(_));
    encode(&answer, post);
    let result = ctx.cp.post_response(
        &cmd.shard_token,
        post,
        PostKind::Final,
        budget.deadline,
        &cmd.request_id,
    );
    match result {
        PostOutcome::Delivered => log::debug!("command {}: answered ({resp_code})", cmd.request_id),
        PostOutcome::AlreadyFulfilled => log::info!(
            "command {}: the control plane answered 404 (already fulfilled or expired)",
            cmd.request_id
        ),
        PostOutcome::DeadlineExpired => log::info!(
            "command {}: deadline passed before the answer could be posted",
            cmd.request_id
        ),
        PostOutcome::Failed => {}
    }
    Handled::Posted {
        post: result,
        failure,
    }
}
