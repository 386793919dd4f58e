//! What /readyz reports: has each channel's MCP target answered (or, for
//! stdio, is its process running), and does the control plane accept our key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::proto::channel::Channel;

const NOT_ANSWERED: &str = "MCP server has not answered a probe yet";

#[derive(Default)]
pub struct Readiness {
    /// Used when no channel is registered (a bare embedding or test).
    target_ready: AtomicBool,
    /// Per target, by the channel it serves: None when ready, else why not.
    channels: Mutex<Vec<(Channel, Option<String>)>>,
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

    /// Registers a target as not ready until it answers.
    pub fn register(&self, channel: &Channel) {
        self.set_channel(channel, Some(NOT_ANSWERED.to_string()));
    }

    /// `None`: the channel's target is ready; `Some(reason)`: it is not.
    pub fn set_channel(&self, channel: &Channel, not_ready: Option<String>) {
        let mut chans = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        match chans.iter_mut().find(|(c, _)| c == channel) {
            Some((_, r)) => *r = not_ready,
            None => chans.push((channel.clone(), not_ready)),
        }
    }

    /// Ready, or back to "has not answered" (HTTP targets after a failed probe).
    pub fn set_channel_ready(&self, channel: &Channel, ready: bool) {
        self.set_channel(channel, (!ready).then(|| NOT_ANSWERED.to_string()));
    }

    pub fn channel_ready(&self, channel: &Channel) -> bool {
        let chans = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        match chans.iter().find(|(c, _)| c == channel) {
            Some((_, r)) => r.is_none(),
            None => self.target_ready.load(Ordering::Relaxed),
        }
    }

    pub fn set_target_ready(&self, ready: bool) {
        self.target_ready.store(ready, Ordering::Relaxed);
    }

    /// Every registered target is ready (or, with none registered, the flag).
    pub fn target_ready(&self) -> bool {
        let chans = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if chans.is_empty() {
            return self.target_ready.load(Ordering::Relaxed);
        }
        chans.iter().all(|(_, r)| r.is_none())
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
        let chans = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if chans.is_empty() {
            if self.target_ready.load(Ordering::Relaxed) {
                return None;
            }
            return Some(match lock(&self.target_problem).as_ref() {
                Some(p) => format!("MCP server unreachable: {p}"),
                None => NOT_ANSWERED.to_string(),
            });
        }
        let down: Vec<String> = chans
            .iter()
            .filter_map(|(c, r)| r.as_ref().map(|r| format!("channel {c}: {r}")))
            .collect();
        (!down.is_empty()).then(|| down.join("; "))
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
    fn per_channel_reasons_name_the_channel() {
        let r = Readiness::new();
        let main = Channel::main();
        let fs = Channel::parse("fs").unwrap();
        r.register(&main);
        r.register(&fs);
        assert!(!r.target_ready());
        r.set_channel_ready(&main, true);
        assert!(r.channel_ready(&main));
        let why = r.not_ready_reason().unwrap();
        assert!(
            why.contains("channel fs") && !why.contains("channel main"),
            "{why}"
        );
        r.set_channel(&fs, None);
        assert!(r.target_ready());
        assert_eq!(r.not_ready_reason(), None);
        r.set_channel(&fs, Some("stdio MCP server exited; restarting".into()));
        let why = r.not_ready_reason().unwrap();
        assert!(why.contains("channel fs: stdio MCP server exited"), "{why}");
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
