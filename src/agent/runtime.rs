//! Wiring: build the clients and targets, run the startup checks, the poll
//! loop and the drain on a single-threaded smol executor.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use smol::LocalExecutor;

use super::client::{agents, ClientOptions};
use super::config::AgentConfig;
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
use super::workers::Workers;
use crate::net::listen_addr;
use crate::ops::pidfile::PidFile;
use crate::ops::shutdown::Shutdown;
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
            proc_affinity: false,
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
    let (cp_agent, mcp_agent) = agents(
        &ClientOptions {
            user_agent: user_agent.clone(),
            max_idle: 4,
            max_idle_age: Duration::from_secs(60),
        },
        &ClientOptions {
            user_agent,
            max_idle: cfg.max_concurrent,
            max_idle_age: cfg.connection_max_ttl,
        },
        super::edge::clients(&cfg.edge, &cfg.base_url),
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
    let static_headers: Vec<Header> = cfg
        .mcp_extra_headers
        .iter()
        .map(|h| Header {
            name: h.name.clone(),
            value: h.value.expose().to_string(),
        })
        .collect();
    let http_target = Arc::new(Target::Http(HttpTarget::new(
        mcp_agent,
        cfg.mcp_server_url.clone(),
        static_headers,
        readiness.clone(),
    )));
    let targets = Arc::new(Targets::new(
        cfg.channels
            .iter()
            .map(|c| (c.clone(), http_target.clone()))
            .collect(),
    ));
    log::info!(
        "mcp-tunnel agent {CLIENT_VERSION} starting: control plane {}, tunnel {}, MCP server {}, channels [{}], max-inflight {}, workers {}",
        redacted_url(&cfg.base_url),
        cfg.tunnel_id,
        redacted_url(&cfg.mcp_server_url),
        cfg.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","),
        cfg.max_inflight,
        cfg.max_concurrent
    );

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
        match startup::wait_for_target(&http_target, &lane, cfg.startup_wait_timeout, &shutdown)
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
        startup::spawn_readiness_probe(
            &ex,
            http_target.clone(),
            readiness.clone(),
            shutdown.clone(),
        );
    }

    let ctx = Arc::new(WorkerCtx {
        cp: cp.clone(),
        targets,
        max_request_duration: cfg.max_request_duration,
        metrics,
    });
    let workers = match Workers::start(cfg.max_concurrent, cfg.max_inflight, ctx) {
        Ok(w) => w,
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
