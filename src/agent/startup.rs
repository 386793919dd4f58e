//! Startup checks (the tunnel exists and accepts our key; optionally the MCP
//! server answers) and the background readiness probe.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::future;
use smol::LocalExecutor;

use super::control_plane::ControlPlane;
use super::lane::Lane;
use super::readiness::Readiness;
use super::target::Target;
use crate::ops::shutdown::Shutdown;

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
const READINESS_PROBE_INTERVAL: Duration = Duration::from_secs(10);

pub enum Startup {
    Continue,
    /// Shutdown was requested meanwhile.
    Stopped,
    /// Logged; the process exits non-zero.
    Failed,
}

/// `GET /v1/tunnels/{id}`: 401/403/404 stop the agent with a clear message.
pub async fn check_tunnel(cp: &Arc<ControlPlane>, lane: &Lane, shutdown: &Shutdown) -> Startup {
    let cp = cp.clone();
    let rx = lane.run(move || cp.metadata());
    match race_stop(shutdown, rx.recv()).await {
        None => Startup::Stopped,
        Some(Ok(Ok(()))) => Startup::Continue,
        Some(Ok(Err(e))) => {
            log::error!("startup check failed: {e}");
            Startup::Failed
        }
        Some(Err(_)) => {
            log::error!("startup check could not run");
            Startup::Failed
        }
    }
}

/// `--mcp.startup-wait-timeout`: probe until every target answers or time is up.
pub async fn wait_for_targets(
    targets: &[Arc<Target>],
    lane: &Lane,
    wait: Duration,
    shutdown: &Shutdown,
) -> Startup {
    let until = Instant::now() + wait;
    let mut pending: Vec<Arc<Target>> = targets.to_vec();
    loop {
        let Some(target) = pending.first() else {
            return Startup::Continue;
        };
        let t = target.clone();
        let timeout = until
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), PROBE_TIMEOUT);
        let rx = lane.run(move || t.probe(timeout));
        match race_stop(shutdown, rx.recv()).await {
            None => return Startup::Stopped,
            Some(Ok(Ok(status))) => {
                log::info!("MCP server answered the startup probe (status {status})");
                pending.remove(0);
                continue;
            }
            Some(Ok(Err(why))) => {
                if Instant::now() >= until {
                    log::error!(
                        "MCP server not ready within --mcp.startup-wait-timeout (MCP_STARTUP_WAIT_TIMEOUT): {why}"
                    );
                    return Startup::Failed;
                }
            }
            Some(Err(_)) => return Startup::Failed,
        }
        let nap = PROBE_INTERVAL.min(until.saturating_duration_since(Instant::now()));
        if race_stop(shutdown, async_io::Timer::after(nap))
            .await
            .is_none()
        {
            return Startup::Stopped;
        }
    }
}

/// While the target is not ready, probe it every few seconds on a thread of
/// its own (the poll thread is busy with long polls).
pub fn spawn_readiness_probe(
    ex: &Rc<LocalExecutor<'static>>,
    targets: Vec<Arc<Target>>,
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
) {
    let lane = match Lane::start("mcp-probe") {
        Ok(l) => l,
        Err(e) => {
            log::warn!("cannot start the readiness probe thread: {e}");
            return;
        }
    };
    ex.spawn(async move {
        loop {
            if !readiness.target_ready() {
                // Stdio targets report their own state; probing them is a cheap check.
                for t in &targets {
                    let t = t.clone();
                    let rx = lane.run(move || t.probe(PROBE_TIMEOUT));
                    if race_stop(&shutdown, rx.recv()).await.is_none() {
                        return;
                    }
                }
            }
            let nap = async_io::Timer::after(READINESS_PROBE_INTERVAL);
            if race_stop(&shutdown, nap).await.is_none() {
                return;
            }
        }
    })
    .detach();
}

/// `Some(value)` unless shutdown fires first.
pub async fn race_stop<T>(
    shutdown: &Shutdown,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    future::or(async { Some(f.await) }, async {
        shutdown.wait().await;
        None
    })
    .await
}
