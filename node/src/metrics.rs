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
    /// Replies served as a split, and re-plans after a stage was lost.
    pub split_replies: AtomicU64,
    pub split_replans: AtomicU64,
    /// Stage frames refused (wrong session, shape, dtype, layers).
    pub stage_frames_refused: AtomicU64,
    /// Bytes this node sent to the next stage of a split, by the sending stage's index.
    pub split_hop_bytes: [AtomicU64; MAX_HOPS],
    /// Model bytes sent to peers, and verified model bytes received from them.
    pub blob_bytes_sent: AtomicU64,
    pub blob_bytes_received: AtomicU64,
    /// Chunks a peer sent that did not verify (the peer is not asked again for that model).
    pub blob_bad_chunks: AtomicU64,
    /// Pulls finished (the file verified and in the cache), and pulls that failed.
    pub pulls_completed: AtomicU64,
    pub pulls_failed: AtomicU64,
}

/// Hops counted separately in `/metrics` (stages beyond share the last count).
pub const MAX_HOPS: usize = 8;

impl Metrics {
    /// Counts `bytes` sent by stage `index` to the next stage.
    pub fn hop_bytes(&self, index: usize, bytes: usize) {
        self.split_hop_bytes[index.min(MAX_HOPS - 1)].fetch_add(bytes as u64, Ordering::Relaxed);
    }
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
    /// Bytes offered for models (`--max-memory`; 0: no cap) and taken by whole models and
    /// split sessions' caches.
    pub memory_offered: u64,
    pub memory_used: u64,
    /// Bytes of keys and values held by finished replies' caches, kept for follow-up turns.
    pub idle_cache: u64,
    /// Bytes of keys and values for every reply together (`--kv-memory`), and those that
    /// running replies reserved.
    pub kv_budget: u64,
    pub kv_reserved: u64,
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
                "hearth_split_replies_total",
                "Replies this node served through a split over several nodes.",
                counter(&self.split_replies),
            ),
            (
                "hearth_split_replans_total",
                "Split replies re-planned after a stage was lost.",
                counter(&self.split_replans),
            ),
            (
                "hearth_stage_frames_refused_total",
                "Stage frames refused: wrong session, shape, dtype or layers.",
                counter(&self.stage_frames_refused),
            ),
            (
                "hearth_blob_bytes_sent_total",
                "Model bytes sent to peers pulling a model.",
                counter(&self.blob_bytes_sent),
            ),
            (
                "hearth_blob_bytes_received_total",
                "Verified model bytes received from peers.",
                counter(&self.blob_bytes_received),
            ),
            (
                "hearth_blob_bad_chunks_total",
                "Model chunks from peers that did not verify (each peer is then not asked again for that model).",
                counter(&self.blob_bad_chunks),
            ),
            (
                "hearth_pulls_completed_total",
                "Models pulled from peers and verified.",
                counter(&self.pulls_completed),
            ),
            (
                "hearth_pulls_failed_total",
                "Pulls that failed (what they fetched is kept for the next try).",
                counter(&self.pulls_failed),
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
                "hearth_memory_offered_bytes",
                "Bytes this node offers for models (--max-memory); 0: all that is free.",
                gauge(gauges.memory_offered),
            ),
            (
                "hearth_memory_used_bytes",
                "Bytes taken by loaded whole models and split sessions' caches.",
                gauge(gauges.memory_used),
            ),
            (
                "hearth_idle_cache_bytes",
                "Keys and values held by finished replies' caches (at most 128 MB, and only what running replies leave of --kv-memory).",
                gauge(gauges.idle_cache),
            ),
            (
                "hearth_kv_budget_bytes",
                "Memory for every reply's keys and values together (--kv-memory).",
                gauge(gauges.kv_budget),
            ),
            (
                "hearth_kv_reserved_bytes",
                "Keys and values reserved by running replies (prompt plus max_tokens each).",
                gauge(gauges.kv_reserved),
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
        let hops: Vec<(String, f64)> = self
            .split_hop_bytes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    format!("{{stage=\"{i}\"}}"),
                    b.load(Ordering::Relaxed) as f64,
                )
            })
            .filter(|(_, b)| *b > 0.0)
            .collect();
        metric(
            "hearth_split_hop_bytes_total",
            "counter",
            "Bytes sent from split stage STAGE to the next (the last stage's are tokens to the first).",
            &hops,
        );
        metric(
            "hearth_tokens_per_second",
            "gauge",
            "Measured decode speed per model.",
            &speeds,
        );
        out
    }
}
