//! What /readyz reports: has the MCP target answered, and does the control
//! plane accept our key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Readiness {
    target_ready: AtomicBool,
    /// Set while the control plane answers 401/403 (the status and error code).
    auth_failure: Mutex<Option<String>>,
    /// Set while polls fail at the network edge (proxy refusal, TLS verdict).
    control_plane_problem: Mutex<Option<String>>,
    /// Why the last MCP probe failed at the network edge, if it did.
    target_problem: Mutex<Option<String>>,
}

fn lock(m: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    pub fn set_target_ready(&self, ready: bool) {
        self.target_ready.store(ready, Ordering::Relaxed);
    }

    pub fn target_ready(&self) -> bool {
        self.target_ready.load(Ordering::Relaxed)
    }

    pub fn set_auth_failure(&self, what: Option<String>) {
        *self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()) = what;
    }

    pub fn set_control_plane_problem(&self, what: Option<String>) {
        *lock(&self.control_plane_problem) = what;
    }

    pub fn set_target_problem(&self, what: Option<String>) {
        *lock(&self.target_problem) = what;
    }

    /// None when ready, else the reason (for the 503 body and logs).
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(a) = self
            .auth_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Some(format!("control plane rejects the API key ({a})"));
        }
        if let Some(p) = lock(&self.control_plane_problem).as_ref() {
            return Some(format!("control plane unreachable: {p}"));
        }
        if !self.target_ready() {
            return Some(match lock(&self.target_problem).as_ref() {
                Some(p) => format!("MCP server unreachable: {p}"),
                None => "MCP server has not answered a probe yet".to_string(),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let r = Readiness::new();
        assert!(r.not_ready_reason().unwrap().contains("MCP server"));
        r.set_target_ready(true);
        assert_eq!(r.not_ready_reason(), None);
        r.set_auth_failure(Some("HTTP 401 invalid_api_key".into()));
        assert!(r.not_ready_reason().unwrap().contains("401"));
        r.set_auth_failure(None);
        assert_eq!(r.not_ready_reason(), None);
    }

    #[test]
    fn edge_problems_are_reasons_until_cleared() {
        let r = Readiness::new();
        r.set_target_problem(Some("server requires a client certificate".into()));
        assert_eq!(
            r.not_ready_reason().as_deref(),
            Some("MCP server unreachable: server requires a client certificate")
        );
        r.set_target_ready(true);
        r.set_control_plane_problem(Some("proxy authentication failed (407 to CONNECT)".into()));
        assert!(r
            .not_ready_reason()
            .unwrap()
            .starts_with("control plane unreachable: proxy"));
        r.set_control_plane_problem(None);
        assert_eq!(r.not_ready_reason(), None);
    }
}
