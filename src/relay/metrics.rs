//! Counters the relay keeps, and their Prometheus exposition (served by
//! `--metrics-listen`, see server.rs).
//!
//! Single-threaded relay, so plain `Cell`/`RefCell`. Gauges that live in the
//! queues (connected agents, depth) are read from there at export time.
//! Label values: endpoints and error codes are `'static` names the relay
//! itself chose, statuses are the few it answers with, and tunnel ids are
//! admin-created (queues exist only for tunnels of the state), so the number of
//! series stays bounded whatever clients send.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use crate::ops::prom::{Exposition, Histogram, Kind};

/// A per-tunnel gauge: name, help and how to read it.
type PerTunnel = (&'static str, &'static str, fn(&TunnelGauges) -> usize);

/// Where a counted request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Connector,
    Metadata,
    Poll,
    Response,
    Other,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Connector => "connector",
            Endpoint::Metadata => "metadata",
            Endpoint::Poll => "poll",
            Endpoint::Response => "response",
            Endpoint::Other => "other",
        }
    }
}

pub struct Metrics {
    /// (endpoint, status, error code or "") → count.
    pub requests: RefCell<BTreeMap<(Endpoint, u16, &'static str), u64>>,
    pub connector_latency: Histogram,
    pub commands_enqueued: Cell<u64>,
    pub commands_delivered: Cell<u64>,
    pub notifications_streamed: Cell<u64>,
    pub state_reloads: Cell<u64>,
    pub state_reload_errors: Cell<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: RefCell::default(),
            connector_latency: Histogram::latency(),
            commands_enqueued: Cell::default(),
            commands_delivered: Cell::default(),
            notifications_streamed: Cell::default(),
            state_reloads: Cell::default(),
            state_reload_errors: Cell::default(),
        }
    }
}

impl Metrics {
    pub fn count(&self, endpoint: Endpoint, status: u16, code: &'static str) {
        *self
            .requests
            .borrow_mut()
            .entry((endpoint, status, code))
            .or_insert(0) += 1;
    }

    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().saturating_add(n));
    }

    /// The whole exposition document into `out` (cleared first).
    pub fn render(&self, gauges: &[TunnelGauges], out: &mut String) {
        let mut e = Exposition::new(out);
        e.family(
            "mcp_tunnel_build_info",
            Kind::Gauge,
            "Build of this process (always 1).",
        )
        .sample(
            "mcp_tunnel_build_info",
            &[("version", crate::cli::VERSION), ("role", "relay")],
            1.0,
        );
        let per_tunnel: [PerTunnel; 3] = [
            (
                "mcp_tunnel_relay_connected_agents",
                "Agent instances that polled this tunnel within --agent-liveness.",
                |g| g.connected_agents,
            ),
            (
                "mcp_tunnel_relay_queue_depth",
                "Commands waiting for an agent to poll them.",
                |g| g.queue_depth,
            ),
            (
                "mcp_tunnel_relay_commands_in_flight",
                "Commands handed to an agent and not answered yet.",
                |g| g.in_flight,
            ),
        ];
        for (name, help, value) in per_tunnel {
            e.family(name, Kind::Gauge, help);
            for g in gauges {
                e.sample(name, &[("tunnel", &g.tunnel_id)], value(g) as f64);
            }
        }
        let name = "mcp_tunnel_relay_requests_total";
        e.family(
            name,
            Kind::Counter,
            "HTTP requests by endpoint, status and error code (empty when none).",
        );
        for ((endpoint, status, code), n) in self.requests.borrow().iter() {
            let status = status.to_string();
            e.sample(
                name,
                &[
                    ("endpoint", endpoint.as_str()),
                    ("status", &status),
                    ("code", code),
                ],
                *n as f64,
            );
        }
        let name = "mcp_tunnel_relay_request_duration_seconds";
        e.family(
            name,
            Kind::Histogram,
            "MCP endpoint requests: arrival to the answer from the agent (or the error).",
        )
        .histogram(name, &[], &self.connector_latency);
        let counters: [(&str, &str, &Cell<u64>); 5] = [
            (
                "mcp_tunnel_relay_commands_enqueued_total",
                "Commands queued for agents.",
                &self.commands_enqueued,
            ),
            (
                "mcp_tunnel_relay_commands_delivered_total",
                "Commands handed to agents by polls.",
                &self.commands_delivered,
            ),
            (
                "mcp_tunnel_relay_notifications_streamed_total",
                "Notifications streamed to MCP clients.",
                &self.notifications_streamed,
            ),
            (
                "mcp_tunnel_relay_state_reloads_total",
                "State file reloads.",
                &self.state_reloads,
            ),
            (
                "mcp_tunnel_relay_state_reload_errors_total",
                "State file reloads that failed (the previous state stays).",
                &self.state_reload_errors,
            ),
        ];
        for (name, help, cell) in counters {
            e.family(name, Kind::Counter, help)
                .sample(name, &[], cell.get() as f64);
        }
    }
}

/// Per-tunnel gauges at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelGauges {
    pub tunnel_id: String,
    pub connected_agents: usize,
    pub queue_depth: usize,
    pub in_flight: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_bounded_labels() {
        let m = Metrics::default();
        m.count(Endpoint::Connector, 503, "tunnel_queue_full");
        m.count(Endpoint::Poll, 204, "");
        m.connector_latency
            .observe(std::time::Duration::from_millis(7));
        Metrics::add(&m.commands_enqueued, 2);
        let gauges = [TunnelGauges {
            tunnel_id: "tunnel_a".into(),
            connected_agents: 1,
            queue_depth: 3,
            in_flight: 2,
        }];
        let mut doc = String::new();
        m.render(&gauges, &mut doc);
        for line in [
            "mcp_tunnel_relay_connected_agents{tunnel=\"tunnel_a\"} 1\n",
            "mcp_tunnel_relay_queue_depth{tunnel=\"tunnel_a\"} 3\n",
            "mcp_tunnel_relay_commands_in_flight{tunnel=\"tunnel_a\"} 2\n",
            "mcp_tunnel_relay_requests_total{endpoint=\"connector\",status=\"503\",code=\"tunnel_queue_full\"} 1\n",
            "mcp_tunnel_relay_requests_total{endpoint=\"poll\",status=\"204\",code=\"\"} 1\n",
            "mcp_tunnel_relay_request_duration_seconds_count 1\n",
            "mcp_tunnel_relay_commands_enqueued_total 2\n",
            "mcp_tunnel_relay_state_reload_errors_total 0\n",
            "# TYPE mcp_tunnel_relay_request_duration_seconds histogram\n",
        ] {
            assert!(doc.contains(line), "{line} in\n{doc}");
        }
        assert!(doc.contains("role=\"relay\""));
    }

    #[test]
    fn counts_by_key() {
        let m = Metrics::default();
        m.count(Endpoint::Poll, 204, "");
        m.count(Endpoint::Poll, 204, "");
        m.count(Endpoint::Connector, 503, "tunnel_queue_full");
        let r = m.requests.borrow();
        assert_eq!(r[&(Endpoint::Poll, 204, "")], 2);
        assert_eq!(r[&(Endpoint::Connector, 503, "tunnel_queue_full")], 1);
    }
}
