//! Counters the relay keeps for the metrics endpoint (exported elsewhere).
//!
//! Single-threaded relay, so plain `Cell`/`RefCell`. Gauges that live in the
//! queues (connected agents, depth) are read from there at export time.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Duration;

/// Upper bounds (seconds) of the connector latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Default)]
pub struct Histogram {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], then +Inf.
    pub buckets: RefCell<[u64; LATENCY_BUCKETS.len() + 1]>,
    pub sum_seconds: Cell<f64>,
    pub count: Cell<u64>,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let mut b = self.buckets.borrow_mut();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *bound {
                b[i] += 1;
            }
        }
        b[LATENCY_BUCKETS.len()] += 1;
        self.sum_seconds.set(self.sum_seconds.get() + s);
        self.count.set(self.count.get() + 1);
    }
}

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

#[derive(Default)]
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
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(100));
        let b = h.buckets.borrow();
        assert_eq!(b[0], 0);
        assert_eq!(b[1], 1);
        assert_eq!(b[LATENCY_BUCKETS.len() - 1], 1);
        assert_eq!(b[LATENCY_BUCKETS.len()], 2);
        assert_eq!(h.count.get(), 2);
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
