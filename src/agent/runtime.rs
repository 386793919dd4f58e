//! Wiring: build the clients and targets, run the startup checks, the poll
//! loop and the drain on a single-threaded smol executor.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use smol::LocalExecutor;

use super::client::{agents_per_target, ClientOptions};
use super::config::{AgentConfig, TargetSpec};
use super::control_plane::{ControlPlane, CLIENT_NAME, CLIENT_VERSION};
use super::dispatch::{Targets, WorkerCtx};
use super::lane::Lane;
use super::metrics::AgentMetrics;
use super::poller::{LoopEnd, Poller};
use super::random;
use super::readiness::Readiness;
use super::startup::{self, Startup};
use super::target::Target;
use super::target_http::HttpTarget;
use super::target_stdio::{StdioTarget, StopGrace};
use super::workers::{PoolSpec, Workers};
use crate::net::listen_addr;
use crate::ops::pidfile::PidFile;
use crate::ops::shutdown::Shutdown;
use crate::proto::channel::Channel;
use crate::proto::command::Header;
use crate::proto::retry::Backoff;
use crate::proto::server_info::{self, ChannelDecl};

/// Exit codes (documented in `--help`).
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;

/// The reference client's poll backoff.
const POLL_BACKOFF_MIN: Duration = Duration::from_millis(200);
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Knobs for embedding (tests) that are not configuration.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Install SIGTERM/SIGINT/SIGHUP handling (the CLI does; in-process tests don't).
    pub signals: bool,
    /// Shared readiness (tests observe it; the health listener serves it).
    pub readiness: Option<Arc<Readiness>>,
}

/// Runs the agent until it stops; returns the process exit code.
pub fn run(cfg: AgentConfig, shutdown: Shutdown, opts: RunOptions) -> i32 {
    let ex = Rc::new(LocalExecutor::new());
    let ex2 = ex.clone();
    smol::block_on(ex.run(run_async(cfg, shutdown, opts, ex2)))
}

fn redacted_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme_str().unwrap_or("?"),
            u.authority().map(|a| a.as_str()).unwrap_or(""),
            u.path()
        ),
        Err(_) => "(invalid)".to_string(),
    }
}

async fn run_async(
    cfg: AgentConfig,
    shutdown: Shutdown,
    opts: RunOptions,
    ex: Rc<LocalExecutor<'static>>,
) -> i32 {
    let readiness = opts.readiness.clone().unwrap_or_default();
    let metrics = Arc::new(AgentMetrics::new(&cfg.channels));
    // A unix socket's file is removed when this returns.
    let mut _health_socket = None;
    if let Some(addr) = &cfg.health_listen {
        match listen_addr::bind(addr) {
            Ok((listener, socket_file)) => {
                _health_socket = socket_file;
                let local = listener.local();
                ex.spawn(super::health::serve(
                    listener,
                    readiness.clone(),
                    metrics.clone(),
                    ex.clone(),
                    shutdown.clone(),
                ))
                .detach();
                log::info!("health endpoints /healthz, /readyz and /metrics on {local}");
            }
            Err(e) => {
                log::error!(
                    "cannot listen on --health.listen-addr (HEALTH_LISTEN_ADDR) {addr}: {e}"
                );
                return EXIT_FAILURE;
            }
        }
    }

    let decls: Vec<ChannelDecl> = cfg
        .channels
        .iter()
        .map(|c| ChannelDecl {
            name: c.clone(),
            proc_affinity: cfg
                .targets
                .iter()
                .any(|t| t.channels.contains(c) && matches!(t.spec, TargetSpec::Stdio { .. })),
        })
        .collect();
    let server_info = match server_info::encode(&decls) {
        Ok(s) => s,
        Err(e) => {
            log::error!("invalid channel declaration: {e}");
            return EXIT_FAILURE;
        }
    };
    let user_agent = format!("{CLIENT_NAME}/{CLIENT_VERSION}");
    // Each HTTP target's own network settings, in target order (build_targets
    // takes the agents in the same order).
    let http_edges: Vec<(String, &super::edge::ChannelEdge)> = cfg
        .targets
        .iter()
        .filter_map(|t| match &t.spec {
            TargetSpec::Http { edge, .. } => Some((channel_list(&t.channels), edge.as_ref())),
            TargetSpec::Stdio { .. } => None,
        })
        .collect();
    let (cp_agent, mcp_agents) = agents_per_target(
        &ClientOptions {
            user_agent: user_agent.clone(),
            // Fewer made every burst (c=64) reconnect a third of its posts.
            max_idle: cfg.control_plane_connections(),
            max_idle_age: Duration::from_secs(60),
        },
        &ClientOptions {
            user_agent,
            max_idle: cfg.max_concurrent,
            max_idle_age: cfg.connection_max_ttl,
        },
        super::edge::clients(&cfg.edge, &cfg.base_url, cfg.dials_https()),
        &http_edges,
    );
    let cp = Arc::new(
        ControlPlane::new(&cfg, cp_agent, random::instance_id(), server_info)
            .with_metrics(metrics.clone()),
    );
    if opts.signals {
        let s = shutdown.clone();
        let cp_hup = cp.clone();
        ex.spawn(async move {
            // SIGHUP reopens the log file (logrotate) and re-reads a key file (as a 401 does).
            let on_hup = move || {
                match crate::ops::log::reopen() {
                    Ok(true) => log::info!("log file reopened"),
                    Ok(false) => {}
                    Err(e) => log::warn!("cannot reopen --log.file (LOG_FILE): {e}"),
                }
                cp_hup.key.reload();
            };
            if let Err(e) = crate::ops::shutdown::watch_signals(s, on_hup).await {
                log::warn!("cannot watch signals: {e}");
            }
        })
        .detach();
    }
    log::info!(
        "mcp-tunnel agent {CLIENT_VERSION} starting: control plane {}, tunnel {}, channels [{}], max-inflight {}, HTTP workers {}",
        redacted_url(&cfg.base_url),
        cfg.tunnel_id,
        cfg.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","),
        cfg.max_inflight,
        cfg.max_concurrent
    );
    let built = match build_targets(&cfg, mcp_agents, &readiness, &metrics) {
        Ok(b) => b,
        Err(e) => {
            log::error!("{e}");
            return EXIT_FAILURE;
        }
    };
    // Every return from here on stops the stdio children (and reaps them).
    let _stop = StopTargets(built.all.clone());
    let targets = Arc::new(Targets::new(built.by_channel));

    let lane = match Lane::start("cp-poll") {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot start the poll thread: {e}");
            return EXIT_FAILURE;
        }
    };

    match startup::check_tunnel(&cp, &lane, &shutdown).await {
        Startup::Continue => {}
        Startup::Stopped => return EXIT_OK,
        Startup::Failed => return EXIT_FAILURE,
    }
    if !cfg.startup_wait_timeout.is_zero() {
        match startup::wait_for_targets(&built.all, &lane, cfg.startup_wait_timeout, &shutdown)
            .await
        {
            Startup::Continue => {}
            Startup::Stopped => return EXIT_OK,
            Startup::Failed => return EXIT_FAILURE,
        }
    }
    // Written once the checks passed; dropped (removed) whenever this returns.
    let _pid_file = match &cfg.pid_file {
        Some(path) => match PidFile::write(path) {
            Ok(f) => Some(f),
            Err(e) => {
                log::error!("cannot write --pid-file (PID_FILE) {}: {e}", path.display());
                return EXIT_FAILURE;
            }
        },
        None => None,
    };
    if cfg.health_listen.is_some() {
        startup::spawn_readiness_probe(&ex, built.all.clone(), readiness.clone(), shutdown.clone());
    }

    let ctx = Arc::new(WorkerCtx {
        cp: cp.clone(),
        targets,
        max_request_duration: cfg.max_request_duration,
        metrics,
    });
    let workers = match Workers::start(built.pools, cfg.max_inflight, ctx) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            log::error!("cannot start worker threads: {e}");
            return EXIT_FAILURE;
        }
    };
    let mut poller = Poller {
        cp,
        lane: &lane,
        workers: &workers,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        max_inflight: cfg.max_inflight,
        backoff: Backoff::new(POLL_BACKOFF_MIN, POLL_BACKOFF_MAX),
    };
    match poller.run().await {
        LoopEnd::Terminal(why) => {
            log::error!("stopping: {why}");
            workers.close();
            EXIT_FAILURE
        }
        LoopEnd::Stopped { pending, overflow } => {
            let n = workers.inflight() + overflow.len();
            log::info!(
                "stopping: draining {n} in-flight command(s) (up to {:?})",
                cfg.drain_timeout
            );
            let left = super::drain::drain(&workers, pending, overflow, cfg.drain_timeout).await;
            if left > 0 {
                log::warn!("drain timeout: {left} command(s) abandoned");
            } else {
                log::info!("drained; bye");
            }
            EXIT_OK
        }
    }
}

/// The targets, the channel → target map and the worker pools they need.
struct Built {
    all: Vec<Arc<Target>>,
    by_channel: Vec<(Channel, Arc<Target>)>,
    pools: Vec<PoolSpec>,
}

fn build_targets(
    cfg: &AgentConfig,
    mcp_agents: Vec<ureq::Agent>,
    readiness: &Arc<Readiness>,
    metrics: &Arc<AgentMetrics>,
) -> Result<Built, String> {
    let mut agents = mcp_agents.into_iter();
    let mut built = Built {
        all: Vec::new(),
        by_channel: Vec::new(),
        pools: Vec::new(),
    };
    let mut http_channels: Vec<Channel> = Vec::new();
    for t in &cfg.targets {
        let Some(first) = t.channels.first().cloned() else {
            continue;
        };
        let target = match &t.spec {
            TargetSpec::Http { url, headers, .. } => {
                let agent = agents
                    .next()
                    .ok_or_else(|| "internal: no HTTP client for a channel".to_string())?;
                // Only this channel's headers: a credential configured for
                // one origin is never sent to another.
                let static_headers: Vec<Header> = headers
                    .iter()
                    .map(|h| Header {
                        name: h.name.clone(),
                        value: h.value.expose().to_string(),
                    })
                    .collect();
                log::info!(
                    "channel {}: Streamable HTTP MCP server {}",
                    channel_list(&t.channels),
                    redacted_url(url)
                );
                http_channels.extend(t.channels.iter().cloned());
                Target::Http(HttpTarget::new(
                    agent,
                    url.clone(),
                    static_headers,
                    readiness.clone(),
                    first.clone(),
                ))
            }
            TargetSpec::Stdio { argv } => {
                // Arguments may hold credentials: only the program is logged.
                log::info!(
                    "channel {first}: stdio MCP server {:?} ({} argument(s))",
                    argv.first().map(String::as_str).unwrap_or(""),
                    argv.len().saturating_sub(1)
                );
                built.pools.push(PoolSpec {
                    name: format!("mcp-stdio-{first}"),
                    threads: 1,
                    channels: t.channels.clone(),
                });
                let st = StdioTarget::start(
                    first.clone(),
                    argv.clone(),
                    readiness.clone(),
                    StopGrace::default(),
                    metrics.clone(),
                )
                .map_err(|e| format!("cannot start the supervisor for channel {first}: {e}"))?;
                Target::Stdio(st)
            }
        };
        let target = Arc::new(target);
        for c in &t.channels {
            built.by_channel.push((c.clone(), target.clone()));
        }
        built.all.push(target);
    }
    if !http_channels.is_empty() {
        built.pools.push(PoolSpec {
            name: "mcp-worker".to_string(),
            threads: cfg.max_concurrent,
            channels: http_channels,
        });
    }
    // Commands for channels nobody serves get their error from here.
    built.pools.push(PoolSpec {
        name: "mcp-unrouted".to_string(),
        threads: 1,
        channels: Vec::new(),
    });
    Ok(built)
}

fn channel_list(channels: &[Channel]) -> String {
    channels
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Stops every target when the runtime returns, whichever way it does.
struct StopTargets(Vec<Arc<Target>>);

impl Drop for StopTargets {
    fn drop(&mut self) {
        for t in &self.0 {
            t.request_stop();
        }
        for t in &self.0 {
            t.stop();
        }
    }
}
