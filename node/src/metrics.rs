//! Counters the node exposes at `/metrics` in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters, shared by the API and the engine.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub request_errors: AtomicU64,
    pub tokens_generated: AtomicU64,
    pub jobs_served: AtomicU64,
    pub failovers: AtomicU64,
    pub refused_connections: AtomicU64,
}

/// Gauges read at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    pub queue_depth: u64,
    pub active_jobs: u64,
    pub peers: u64,
    /// (model name, tokens/s)
    pub speeds: Vec<(String, f32)>,
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of the counters and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let c = |a: &AtomicU64| vec![(String::new(), a.load(Ordering::Relaxed) as f64)];
        let g = |v: u64| vec![(String::new(), v as f64)];
        metric(
            "hearth_requests_total",
            "counter",
            "API requests received.",
            &c(&self.requests),
        );
        metric(
            "hearth_request_errors_total",
            "counter",
            "API requests answered with an error.",
            &c(&self.request_errors),
        );
        metric(
            "hearth_tokens_generated_total",
            "counter",
            "Tokens this node generated.",
            &c(&self.tokens_generated),
        );
        metric(
            "hearth_jobs_served_total",
            "counter",
            "Generation jobs this node ran, for itself or for peers.",
            &c(&self.jobs_served),
        );
        metric(
            "hearth_failovers_total",
            "counter",
            "Replies moved to another node after the serving one failed.",
            &c(&self.failovers),
        );
        metric(
            "hearth_refused_connections_total",
            "counter",
            "Connections refused: not of this household, or revoked.",
            &c(&self.refused_connections),
        );
        metric(
            "hearth_queue_depth",
            "gauge",
            "Jobs waiting for a slot.",
            &g(gauges.queue_depth),
        );
        metric(
            "hearth_active_jobs",
            "gauge",
            "Jobs running.",
            &g(gauges.active_jobs),
        );
        metric(
            "hearth_peers",
            "gauge",
            "Household peers connected.",
            &g(gauges.peers),
        );
        let speeds: Vec<(String, f64)> = gauges
            .speeds
            .iter()
            .map(|(m, t)| {
                (
                    format!("{{model=\"{}\"}}", m.replace(['"', '\\', '\n'], "_")),
                    f64::from(*t),
                )
            })
            .collect();
        metric(
            "hearth_tokens_per_second",
            "gauge",
            "Measured decode speed per model.",
            &speeds,
        );
        out
    }
}
