//! What /readyz reports: has the MCP target answered, and does the control
//! plane accept our key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Readiness {
    target_ready: AtomicBool,
    /// Set while the control plane answers 401/403 (the status and error code).
    auth_failure: Mutex<Option<String>>,
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
        if !self.target_ready() {
            return Some("MCP server has not answered a probe yet".to_string());
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
}
