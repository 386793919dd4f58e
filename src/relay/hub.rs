//! The relay's shared runtime context: current state, the tunnel queues,
//! settings, audit log and counters. One per process, behind an `Rc` (the relay
//! runs on one thread); nothing here is held across an `.await`.

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use http::header::{AsHeaderName, HeaderName};
use http::HeaderMap;

/// Header names looked up on every request, made once: a `&str` name is
/// validated, lower-cased and hashed again on each lookup.
pub mod names {
    use super::HeaderName;

    pub use http::header::AUTHORIZATION;
    pub const X_TUNNEL_AUTHORIZATION: HeaderName =
        HeaderName::from_static("x-tunnel-authorization");
    pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
    pub const X_TUNNEL_MCP_SERVER_INFO: HeaderName =
        HeaderName::from_static("x-tunnel-mcp-server-info");
    pub const X_TUNNEL_CLIENT_INSTANCE_ID: HeaderName =
        HeaderName::from_static("x-tunnel-client-instance-id");
    pub const X_TUNNEL_SHARD_TOKEN: HeaderName = HeaderName::from_static("x-tunnel-shard-token");
}

use crate::net::cert_names::cert_names;
use crate::net::http_server::{ConnMemo, Response};
use crate::proto::error_body;

use super::alarms::Alarms;
use super::audit::AuditLog;
use super::auth::{self, AuthError, Principal};
use super::auth_memo::AuthMemo;
use super::ids::IdHash;
use super::keys;
use super::metrics::{Metrics, TunnelGauges};
use super::queue::{QueueConfig, TunnelQueue};
use super::state::{Role, State};

/// Settings the handlers need (a subset of `relay serve`'s flags).
#[derive(Clone, Debug)]
pub struct Settings {
    pub queue: QueueConfig,
    /// Used when a client request carries no shorter deadline.
    pub response_timeout: Duration,
    /// Longest wait of one long-poll; a longer `timeout_ms` is cut to this.
    pub poll_timeout_max: Duration,
    /// Bound for the JSON scanner (the HTTP layer bounds bodies already).
    pub max_body: usize,
    /// Bound for an agent's response POST: it carries whole MCP answers
    /// (the agent forwards up to 32 MiB), so it is larger than `max_body`.
    pub max_response_body: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue: QueueConfig::default(),
            response_timeout: Duration::from_secs(120),
            poll_timeout_max: Duration::from_secs(30),
            max_body: 4 * 1024 * 1024,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
        }
    }
}

/// The agent reads MCP answers up to 32 MiB; the POST around one adds its
/// envelope and JSON escaping headroom.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 40 * 1024 * 1024;

pub struct Hub {
    state: RefCell<Rc<State>>,
    /// Bumped by every [`Hub::replace_state`]: what connection memos check.
    generation: Cell<u64>,
    queues: RefCell<HashMap<String, TunnelQueue, IdHash>>,
    pub settings: Settings,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// Deadlines of parked handlers; its driver runs as a task of the server.
    pub alarms: Alarms,
    /// The last valid `X-Tunnel-MCP-Server-Info` seen and its decoding.
    pub server_info: RefCell<LastServerInfo>,
    closing: Cell<bool>,
}

impl Hub {
    pub fn new(state: State, settings: Settings, audit: AuditLog) -> Rc<Hub> {
        Rc::new(Hub {
            state: RefCell::new(Rc::new(state)),
            generation: Cell::new(0),
            queues: RefCell::new(HashMap::default()),
            settings,
            audit,
            metrics: Metrics::default(),
            alarms: Alarms::default(),
            server_info: RefCell::new(LastServerInfo::default()),
            closing: Cell::new(false),
        })
    }

    pub fn state(&self) -> Rc<State> {
        self.state.borrow().clone()
    }

    /// Installs a reloaded state. Queues of deleted tunnels go (their waiters
    /// learn it), and parked polls wake to re-check their key.
    pub fn replace_state(&self, state: State) {
        let mut queues = self.queues.borrow_mut();
        queues.retain(|id, _| state.tunnel(id).is_some());
        for q in queues.values_mut() {
            q.wake_all();
        }
        *self.state.borrow_mut() = Rc::new(state);
        self.generation.set(self.generation.get().wrapping_add(1));
    }

    /// Authorizes `credential` and the TLS client certificate (DER of the
    /// leaf, already verified against `--client-ca`) for `role` on
    /// `tunnel_id` against the current state.
    pub fn authorize(
        &self,
        credential: Option<&str>,
        client_cert: Option<&[u8]>,
        tunnel_id: &str,
        role: Role,
    ) -> Result<Principal, AuthError> {
        let state = self.state.borrow();
        // A verified certificate always parses; one that does not names nothing.
        let names = client_cert.map(|der| cert_names(der).unwrap_or_default());
        auth::authorize_caller(&state, credential, names.as_deref(), tunnel_id, role)
            .map(|(p, _)| p)
    }

    /// [`Hub::authorize`] for a request on a connection whose `memo` holds
    /// its last verdict: the same inputs against the same state reuse it
    /// (a key hash saved per request); anything else is checked afresh.
    pub fn authorize_on(
        &self,
        memo: &ConnMemo,
        credential: Option<&str>,
        client_cert: Option<&[u8]>,
        tunnel_id: &str,
        role: Role,
    ) -> Result<Principal, AuthError> {
        self.authorize_with(
            memo,
            credential,
            client_cert,
            tunnel_id,
            role,
            Principal::clone,
        )
    }

    /// [`Hub::authorize_on`] handing the principal to `f` instead of
    /// copying it out (its strings are allocations).
    pub fn authorize_with<R>(
        &self,
        memo: &ConnMemo,
        credential: Option<&str>,
        client_cert: Option<&[u8]>,
        tunnel_id: &str,
        role: Role,
        f: impl FnOnce(&Principal) -> R,
    ) -> Result<R, AuthError> {
        let generation = self.generation.get();
        memo.with(|m: &mut AuthMemo| {
            if let Some(p) = m.recall(generation, credential, client_cert, tunnel_id, role) {
                return Ok(f(p));
            }
            let p = self.authorize(credential, client_cert, tunnel_id, role)?;
            m.remember(generation, credential, client_cert, tunnel_id, role, &p);
            Ok(f(&p))
        })
    }

    /// The queue of a tunnel, created on first use. Callers must not hold it across `.await`.
    pub fn queue(&self, tunnel_id: &str) -> RefMut<'_, TunnelQueue> {
        // Looked up first: `entry` needs an owned key, an allocation on every call.
        match RefMut::filter_map(self.queues.borrow_mut(), |qs| qs.get_mut(tunnel_id)) {
            Ok(q) => q,
            Err(qs) => RefMut::map(qs, |qs| {
                qs.entry(tunnel_id.to_string())
                    .or_insert_with(|| TunnelQueue::new(self.settings.queue.clone()))
            }),
        }
    }

    /// Forgets a command; called from drop guards, so it never panics on a busy map
    /// (the periodic sweep catches what this misses).
    pub fn cancel(&self, tunnel_id: &str, request_id: &str) {
        if let Ok(mut qs) = self.queues.try_borrow_mut() {
            if let Some(q) = qs.get_mut(tunnel_id) {
                q.cancel(request_id);
            }
        }
    }

    /// A poll ended (answered or dropped). Like [`Hub::cancel`], safe in drop
    /// guards, and it does not resurrect the queue of a deleted tunnel.
    pub fn poll_ended(&self, tunnel_id: &str, instance: &str, now: Instant) {
        if let Ok(mut qs) = self.queues.try_borrow_mut() {
            if let Some(q) = qs.get_mut(tunnel_id) {
                q.poll_ended(instance, now);
            }
        }
    }

    /// A woken poll left without taking its command: wake another. Like
    /// [`Hub::cancel`], safe in drop guards.
    pub fn pass_on(&self, tunnel_id: &str, now: Instant) {
        if let Ok(mut qs) = self.queues.try_borrow_mut() {
            if let Some(q) = qs.get_mut(tunnel_id) {
                q.pass_on(now);
            }
        }
    }

    pub fn queues(&self) -> Ref<'_, HashMap<String, TunnelQueue, IdHash>> {
        self.queues.borrow()
    }

    /// Periodic housekeeping: forget commands whose waiter vanished long ago.
    pub fn sweep(&self, now: Instant) {
        for q in self.queues.borrow_mut().values_mut() {
            q.expire(now, Duration::from_secs(30));
        }
    }

    /// Draining: parked polls answer 204 at once and new polls do not wait.
    pub fn close(&self) {
        self.closing.set(true);
        for q in self.queues.borrow_mut().values_mut() {
            q.wake_all();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    pub fn gauges(&self, now: Instant) -> Vec<TunnelGauges> {
        let mut v: Vec<TunnelGauges> = self
            .queues
            .borrow()
            .iter()
            .map(|(id, q)| TunnelGauges {
                tunnel_id: id.clone(),
                connected_agents: q.connected_agents(now),
                queue_depth: q.depth(),
                in_flight: q.in_flight(),
            })
            .collect();
        v.sort_by(|a, b| a.tunnel_id.cmp(&b.tunnel_id));
        v
    }
}

/// One remembered `X-Tunnel-MCP-Server-Info` value (bounded: one entry, at
/// most the header limit long) and the `proc_affinity` channels it declares.
#[derive(Default)]
pub struct LastServerInfo {
    value: String,
    channels: Vec<String>,
}

impl LastServerInfo {
    pub fn get(&self, value: &str) -> Option<Vec<String>> {
        (!self.value.is_empty() && self.value == value).then(|| self.channels.clone())
    }

    pub fn put(&mut self, value: &str, channels: &[String]) {
        value.clone_into(&mut self.value);
        self.channels = channels.to_vec();
    }
}

/// The relay's own error answer: `{"error":{"code","message","type"}}` as the
/// OpenAPI `APIErrorBody` has it.
pub fn error_response(status: u16, code: &str, message: &str) -> Response {
    let mut body = Vec::new();
    error_body::write(code, message, &mut body);
    Response::json(status, body)
}

/// A header's value as text; absent, repeated-and-ambiguous or non-UTF-8 is `None`.
pub fn header(headers: &HeaderMap, name: impl AsHeaderName) -> Option<&str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// The bearer token of a header, if it holds one.
pub fn bearer_of(headers: &HeaderMap, name: impl AsHeaderName) -> Option<&str> {
    header(headers, name).and_then(keys::bearer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn last_server_info_answers_only_for_the_same_value() {
        let mut last = LastServerInfo::default();
        assert_eq!(last.get(""), None);
        assert_eq!(last.get("a"), None);
        last.put("a", &["main".to_string()]);
        assert_eq!(last.get("a"), Some(vec!["main".to_string()]));
        assert_eq!(last.get("b"), None);
        last.put("b", &[]);
        assert_eq!(last.get("a"), None);
        assert_eq!(last.get("b"), Some(Vec::new()));
    }

    #[test]
    fn header_helpers() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer k1"));
        assert_eq!(bearer_of(&h, "authorization"), Some("k1"));
        assert_eq!(bearer_of(&h, "x-tunnel-authorization"), None);
        h.append("authorization", HeaderValue::from_static("Bearer k2"));
        // Two credentials: use neither.
        assert_eq!(bearer_of(&h, "authorization"), None);
        assert_eq!(bearer_of(&h, names::AUTHORIZATION), None);
        // The prepared names find what the spelled-out ones find.
        h.insert("X-Tunnel-Shard-Token", HeaderValue::from_static("t1"));
        h.insert(
            "x-tunnel-authorization",
            HeaderValue::from_static("Bearer k3"),
        );
        assert_eq!(header(&h, names::X_TUNNEL_SHARD_TOKEN), Some("t1"));
        assert_eq!(bearer_of(&h, names::X_TUNNEL_AUTHORIZATION), Some("k3"));
        assert_eq!(header(&h, names::MCP_SESSION_ID), None);
    }
}
