//! Which node should serve a request: a pure ranking over what the capability cards say, with the
//! reasons for every decision kept so that users can see them.

use std::cmp::Ordering;

use libp2p::PeerId;
use serde::Serialize;

use crate::mesh::peers::optional_peer_id_text;
use crate::split::plan::{NoPlan, Plan};

/// What routing knows about one node for one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// The node's name.
    pub node: String,
    /// Its peer id; `None` for this node.
    #[serde(serialize_with = "optional_peer_id_text")]
    pub peer_id: Option<PeerId>,
    /// The model is in memory.
    pub loaded: bool,
    /// The model is in the node's cache.
    pub cached: bool,
    /// Bytes free on the device the model would run on.
    pub free_memory: u64,
    /// What loading the model takes: its weights and one reply's cache.
    pub model_size: u64,
    pub queue_depth: u32,
    pub active_jobs: u32,
    /// Measured decode speed, if any.
    pub tokens_per_s: Option<f32>,
    /// Round-trip time in milliseconds (0 for this node).
    pub latency_ms: Option<f32>,
    /// The node is shutting down.
    pub draining: bool,
}

/// A candidate that can serve, with why it ranks where it does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    #[serde(flatten)]
    pub candidate: Candidate,
    pub reasons: Vec<String>,
    /// The split this candidate drives as its last stage; `None`: it runs the whole model.
    #[serde(skip)]
    pub split: Option<hearth_protocol::Split>,
}

/// A node that cannot serve, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub node: String,
    pub reason: String,
}

/// The routing decision: candidates best first, the nodes left out, and the split considered
/// when no node can serve the model whole (or the request asks for one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub ranked: Vec<Ranked>,
    pub rejected: Vec<Rejected>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitRoute>,
}

/// The split a route would take, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SplitRoute {
    Planned(Plan),
    Impossible(NoPlan),
}

const MB: u64 = 1 << 20;

/// Ranks `candidates`: model loaded before cached, then fewer queued jobs, fewer running jobs,
/// higher measured tokens/s, lower latency, this node before peers, and name. Nodes without the
/// model, without the memory to load it, shutting down, or not the pinned node are rejected.
pub fn rank(candidates: Vec<Candidate>, pin: Option<&str>) -> Route {
    let mut ranked = Vec::new();
    let mut rejected = Vec::new();
    for c in candidates {
        let reject = |reason: String| Rejected {
            node: c.node.clone(),
            reason,
        };
        if let Some(pin) = pin.filter(|p| *p != c.node) {
            rejected.push(reject(format!("the request is pinned to {pin}")));
        } else if !c.cached {
            rejected.push(reject("does not have the model".into()));
        } else if c.draining {
            rejected.push(reject("is shutting down".into()));
        } else if !c.loaded && c.free_memory < c.model_size {
            rejected.push(reject(format!(
                "needs {} MB to load the model, has {} MB free",
                c.model_size.div_ceil(MB),
                c.free_memory / MB
            )));
        } else {
            let reasons = reasons(&c);
            ranked.push(Ranked {
                candidate: c,
                reasons,
                split: None,
            });
        }
    }
    ranked.sort_by(|a, b| compare(&a.candidate, &b.candidate));
    Route {
        ranked,
        rejected,
        split: None,
    }
}

fn compare(a: &Candidate, b: &Candidate) -> Ordering {
    let speed = |c: &Candidate| c.tokens_per_s.unwrap_or(0.0);
    let latency = |c: &Candidate| c.latency_ms.unwrap_or(f32::MAX);
    b.loaded
        .cmp(&a.loaded)
        .then(a.queue_depth.cmp(&b.queue_depth))
        .then(a.active_jobs.cmp(&b.active_jobs))
        .then(speed(b).total_cmp(&speed(a)))
        .then(latency(a).total_cmp(&latency(b)))
        .then(b.peer_id.is_none().cmp(&a.peer_id.is_none()))
        .then(a.node.cmp(&b.node))
}

fn reasons(c: &Candidate) -> Vec<String> {
    let mut r = vec![if c.loaded {
        "model loaded".to_owned()
    } else {
        format!(
            "model cached, not loaded ({} MB free for {} MB)",
            c.free_memory / MB,
            c.model_size.div_ceil(MB)
        )
    }];
    r.push(format!(
        "{} queued, {} running",
        c.queue_depth, c.active_jobs
    ));
    r.push(match c.tokens_per_s {
        Some(t) => format!("{t:.1} tokens/s measured"),
        None => "speed not measured yet".into(),
    });
    r.push(match (&c.peer_id, c.latency_ms) {
        (None, _) => "this node".into(),
        (Some(_), Some(ms)) => format!("{ms:.1} ms away"),
        (Some(_), None) => "latency not measured yet".into(),
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Candidate {
        Candidate {
            node: name.into(),
            peer_id: Some(PeerId::random()),
            loaded: false,
            cached: true,
            free_memory: 8 << 30,
            model_size: 100 * MB,
            queue_depth: 0,
            active_jobs: 0,
            tokens_per_s: None,
            latency_ms: Some(1.0),
            draining: false,
        }
    }

    fn order(route: &Route) -> Vec<&str> {
        route
            .ranked
            .iter()
            .map(|r| r.candidate.node.as_str())
            .collect()
    }

    #[test]
    fn loaded_beats_cached_even_when_busier() {
        let a = node("a");
        let b = Candidate {
            loaded: true,
            queue_depth: 2,
            ..node("b")
        };
        assert_eq!(order(&rank(vec![a, b], None)), ["b", "a"]);
    }

    #[test]
    fn then_fewer_queued_then_faster_then_closer() {
        let a = Candidate {
            queue_depth: 1,
            tokens_per_s: Some(500.0),
            ..node("a")
        };
        let b = Candidate {
            tokens_per_s: Some(50.0),
            ..node("b")
        };
        let c = Candidate {
            tokens_per_s: Some(90.0),
            latency_ms: Some(9.0),
            ..node("c")
        };
        let d = Candidate {
            tokens_per_s: Some(90.0),
            latency_ms: Some(2.0),
            ..node("d")
        };
        assert_eq!(order(&rank(vec![a, b, c, d], None)), ["d", "c", "b", "a"]);
    }

    #[test]
    fn this_node_wins_a_tie() {
        let peer = node("peer");
        let me = Candidate {
            peer_id: None,
            latency_ms: Some(0.0),
            ..node("me")
        };
        let route = rank(vec![peer, me], None);
        assert_eq!(order(&route), ["me", "peer"]);
        assert!(route.ranked[0].reasons.contains(&"this node".to_owned()));
    }

    #[test]
    fn nodes_that_cannot_serve_are_rejected_with_a_reason() {
        let missing = Candidate {
            cached: false,
            ..node("missing")
        };
        let small = Candidate {
            free_memory: 50 * MB,
            ..node("small")
        };
        let small_loaded = Candidate {
            free_memory: 50 * MB,
            loaded: true,
            ..node("small-loaded")
        };
        let leaving = Candidate {
            draining: true,
            ..node("leaving")
        };
        let route = rank(vec![missing, small, small_loaded, leaving], None);
        assert_eq!(order(&route), ["small-loaded"]);
        let why: Vec<_> = route
            .rejected
            .iter()
            .map(|r| (r.node.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                ("missing", "does not have the model"),
                ("small", "needs 100 MB to load the model, has 50 MB free"),
                ("leaving", "is shutting down"),
            ]
        );
    }

    #[test]
    fn a_pin_keeps_only_that_node() {
        let route = rank(vec![node("a"), node("b")], Some("b"));
        assert_eq!(order(&route), ["b"]);
        assert_eq!(route.rejected[0].reason, "the request is pinned to b");
        assert!(rank(vec![node("a")], Some("zzz")).ranked.is_empty());
    }
}
