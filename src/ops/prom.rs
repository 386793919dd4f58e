//! Prometheus text exposition (format 0.0.4) and the three metric kinds the
//! agent and the relay need.
//!
//! Metrics are plain atomics owned by the runtime that updates them; labels are
//! chosen by the caller from small fixed sets (outcomes, failure sources,
//! configured channels), which keeps cardinality bounded by construction.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency buckets in seconds: sub-millisecond tunnel overhead up to the
/// minutes a long tool call may take.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// A cumulative histogram over fixed bucket bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (non-cumulative) counts; the last slot is `+Inf`.
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_BUCKETS)
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Writes one exposition document into a reused `String`.
pub struct Exposition<'a> {
    out: &'a mut String,
}

impl<'a> Exposition<'a> {
    /// Starts a document; `out` is cleared so a caller can reuse one buffer.
    pub fn new(out: &'a mut String) -> Exposition<'a> {
        out.clear();
        Exposition { out }
    }

    /// `# HELP` and `# TYPE` lines; call once per metric family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        write_labels(self.out, labels, None);
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }

    pub fn counter(&mut self, name: &str, labels: &[(&str, &str)], c: &Counter) -> &mut Self {
        self.sample(name, labels, c.get() as f64)
    }

    pub fn gauge(&mut self, name: &str, labels: &[(&str, &str)], g: &Gauge) -> &mut Self {
        self.sample(name, labels, g.get() as f64)
    }

    /// `_bucket` (cumulative, with `le`), `_sum` and `_count` lines.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut cumulative = 0u64;
        for (i, bucket) in h.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match h.bounds.get(i) {
                Some(b) => format_value(*b),
                None => "+Inf".to_string(),
            };
            let _ = write!(self.out, "{name}_bucket");
            write_labels(self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = write!(self.out, "{name}_sum");
        write_labels(self.out, labels, None);
        let _ = writeln!(self.out, " {}", format_value(sum));
        let _ = write!(self.out, "{name}_count");
        write_labels(self.out, labels, None);
        let _ = writeln!(self.out, " {}", h.count());
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let le_pair = le.map(|v| ("le", v));
    for (k, v) in labels.iter().copied().chain(le_pair) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_and_gauge_lines() {
        let c = Counter::new();
        c.add(3);
        let g = Gauge::new();
        g.inc();
        g.inc();
        g.dec();
        let mut buf = String::new();
        let mut e = Exposition::new(&mut buf);
        e.family("x_total", Kind::Counter, "Things.")
            .counter("x_total", &[("outcome", "ok")], &c);
        e.family("y", Kind::Gauge, "Level.").gauge("y", &[], &g);
        assert_eq!(
            buf,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{outcome=\"ok\"} 3\n\
             # HELP y Level.\n# TYPE y gauge\ny 1\n"
        );
    }

    #[test]
    fn histogram_is_cumulative_with_inf() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut buf = String::new();
        Exposition::new(&mut buf).histogram("lat_seconds", &[("channel", "main")], &h);
        let lines: Vec<&str> = buf.lines().collect();
        assert_eq!(
            lines[0],
            "lat_seconds_bucket{channel=\"main\",le=\"0.001\"} 1"
        );
        assert_eq!(
            lines[1],
            "lat_seconds_bucket{channel=\"main\",le=\"0.01\"} 2"
        );
        assert_eq!(
            lines[2],
            "lat_seconds_bucket{channel=\"main\",le=\"+Inf\"} 3"
        );
        assert_eq!(lines[3], "lat_seconds_sum{channel=\"main\"} 1.0055");
        assert_eq!(lines[4], "lat_seconds_count{channel=\"main\"} 3");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut buf = String::new();
        Exposition::new(&mut buf).sample("m", &[("v", "a\"b\\c\nd")], 1.0);
        assert_eq!(buf, "m{v=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn exposition_reuses_and_clears_the_buffer() {
        let mut buf = String::from("stale");
        Exposition::new(&mut buf).sample("m", &[], 2.5);
        assert_eq!(buf, "m 2.5\n");
    }
}
