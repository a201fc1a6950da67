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
    /// Decoding steps run, and the session-steps they served (more than one per step when
    /// concurrent jobs shared a step).
    pub decode_steps: u64,
    pub decode_step_sessions: u64,
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
        let counter = |a: &AtomicU64| ("counter", a.load(Ordering::Relaxed));
        let gauge = |v: u64| ("gauge", v);
        let plain = [
            (
                "hearth_requests_total",
                "API requests received.",
                counter(&self.requests),
            ),
            (
                "hearth_request_errors_total",
                "API requests answered with an error.",
                counter(&self.request_errors),
            ),
            (
                "hearth_tokens_generated_total",
                "Tokens this node generated.",
                counter(&self.tokens_generated),
            ),
            (
                "hearth_jobs_served_total",
                "Generation jobs this node ran, for itself or for peers.",
                counter(&self.jobs_served),
            ),
            (
                "hearth_failovers_total",
                "Replies moved to another node after the serving one failed.",
                counter(&self.failovers),
            ),
            (
                "hearth_refused_connections_total",
                "Connections refused: not of this household, or revoked.",
                counter(&self.refused_connections),
            ),
            (
                "hearth_queue_depth",
                "Jobs waiting for a slot.",
                gauge(gauges.queue_depth),
            ),
            (
                "hearth_active_jobs",
                "Jobs running.",
                gauge(gauges.active_jobs),
            ),
            (
                "hearth_peers",
                "Household peers connected.",
                gauge(gauges.peers),
            ),
            (
                "hearth_decode_steps_total",
                "Decoding steps run (one step serves every job decoding the model at the time).",
                ("counter", gauges.decode_steps),
            ),
            (
                "hearth_decode_step_sessions_total",
                "Tokens decoded by those steps, summed over the jobs each served.",
                ("counter", gauges.decode_step_sessions),
            ),
        ];
        for (name, help, (kind, value)) in plain {
            metric(name, kind, help, &[(String::new(), value as f64)]);
        }
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
