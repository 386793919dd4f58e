//! Process affinity (`proc_affinity` in `X-Tunnel-MCP-Server-Info`): the work
//! of a process-local channel must stay on the agent that runs the process.
//!
//! A pin maps an affinity key — the channel plus the command's
//! `Mcp-Session-Id`, or the channel alone when there is no session (stdio) —
//! to the agent instance that was handed its first command. While that
//! instance is alive, later commands with the key go only to its polls; when
//! it is gone, the next agent declaring affinity for the channel takes the
//! key over. The table is bounded: the oldest pin is forgotten first.

use std::collections::{HashMap, VecDeque};

/// Far more sessions than one tunnel carries at once.
pub const MAX_PINS: usize = 4096;
/// Longer session ids are not pinned (the protocol's are 32 hex characters).
const MAX_SESSION_ID: usize = 256;

/// `channel` + `\n` + session id (or empty): `\n` is in neither.
pub fn key(channel: &str, session: Option<&str>) -> Option<String> {
    let session = session.unwrap_or("");
    if session.len() > MAX_SESSION_ID || session.contains('\n') {
        return None;
    }
    let mut key = String::with_capacity(channel.len() + 1 + session.len());
    key.push_str(channel);
    key.push('\n');
    key.push_str(session);
    Some(key)
}

#[derive(Debug)]
pub struct Pins {
    owner: HashMap<String, String>,
    order: VecDeque<String>,
    cap: usize,
}

impl Pins {
    pub fn new(cap: usize) -> Pins {
        Pins {
            owner: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    pub fn owner(&self, key: &str) -> Option<&str> {
        self.owner.get(key).map(String::as_str)
    }

    /// Pins `key` to `instance` (a handover replaces the old owner).
    pub fn pin(&mut self, key: &str, instance: &str) {
        if let Some(o) = self.owner.get_mut(key) {
            if o != instance {
                *o = instance.to_string();
            }
            return;
        }
        while self.owner.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.owner.remove(&old);
                }
                None => break,
            }
        }
        self.owner.insert(key.to_string(), instance.to_string());
        self.order.push_back(key.to_string());
    }

    /// The session ended: its key is free again.
    pub fn unpin(&mut self, key: &str) {
        if self.owner.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }

    pub fn len(&self) -> usize {
        self.owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }
}

impl Default for Pins {
    fn default() -> Self {
        Pins::new(MAX_PINS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key("fs", None).unwrap(), "fs\n");
        assert_eq!(key("fs", Some("abc")).unwrap(), "fs\nabc");
        assert_ne!(key("fs", Some("a")), key("fs", None));
        assert_eq!(key("fs", Some("a\nb")), None);
        assert_eq!(key("fs", Some(&"x".repeat(300))), None);
    }

    #[test]
    fn pin_handover_unpin_and_bound() {
        let mut p = Pins::new(2);
        p.pin("a", "agent-1");
        assert_eq!(p.owner("a"), Some("agent-1"));
        p.pin("a", "agent-2");
        assert_eq!(p.owner("a"), Some("agent-2"), "handover");
        assert_eq!(p.len(), 1);
        p.pin("b", "agent-1");
        p.pin("c", "agent-1");
        assert_eq!(p.len(), 2);
        assert_eq!(p.owner("a"), None, "oldest forgotten first");
        p.unpin("b");
        assert_eq!(p.owner("b"), None);
        assert_eq!(p.owner("c"), Some("agent-1"));
    }
}
