//! Whether pulling a model to this node pays: the pure estimate behind `--pull-when-faster`.
//! A reply on the node serving now takes its tokens at that node's measured speed, slowed by the
//! jobs it runs and queues; here it would take them at this node's speed, estimated from a model
//! it has measured, scaled by size (decoding reads every weight once a token, so tokens/s goes as
//! one over the bytes); the pull costs the file at the link's measured rate (or an assumed one)
//! and a load. It pays when the time saved over this reply and the next few covers that cost.

use serde::Serialize;

/// Replies, this one included, over which a pull must pay for itself.
pub const FEW_REPLIES: u32 = 3;
/// Tokens a reply is taken to have when the request asks for fewer.
pub const TYPICAL_REPLY: u32 = 256;
/// Link rate assumed before a pull from that node measured one (bytes/s): a fair Wi-Fi link.
pub const ASSUMED_LINK: f64 = 50e6;
/// Rate at which a fetched model loads (bytes/s; it is in the page cache).
const LOAD_RATE: f64 = 1e9;

/// The node that would serve the reply now.
#[derive(Debug, Clone, PartialEq)]
pub struct Serving {
    pub node: String,
    pub tokens_per_s: Option<f32>,
    /// Jobs it runs and queues, and runs at once.
    pub active: u32,
    pub queued: u32,
    pub max_jobs: u32,
}

/// This node, which lacks the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Here {
    pub node: String,
    /// No job runs or waits here.
    pub idle: bool,
    /// Bytes free for a model, and what this one needs loaded.
    pub free_memory: u64,
    pub needs: u64,
    /// (file bytes, measured tokens/s) of models this node has run.
    pub measured: Vec<(u64, f32)>,
}

/// The estimate, with every figure it used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub from: String,
    pub to: String,
    pub model_bytes: u64,
    pub link_bytes_per_s: f64,
    /// Whether the link rate was measured (by an earlier pull) or assumed.
    pub link_measured: bool,
    /// Seconds to fetch and load the model here.
    pub pull_s: f64,
    pub tokens_per_reply: u32,
    pub there_tokens_per_s: Option<f64>,
    /// The serving node's slowdown from its own jobs (1: idle).
    pub there_load: f64,
    pub here_tokens_per_s: Option<f64>,
    pub reply_s_there: Option<f64>,
    pub reply_s_here: Option<f64>,
    /// Replies after which the pull has paid for itself.
    pub pays_after_replies: Option<u32>,
    pub pull: bool,
    pub reason: String,
}

/// Estimates pulling a model of `model_bytes` here instead of serving replies of `tokens` tokens
/// (at least [`TYPICAL_REPLY`]) on `serving`, over a link of `link` bytes/s (`None`: unmeasured).
pub fn estimate(
    model_bytes: u64,
    tokens: u32,
    serving: &Serving,
    here: &Here,
    link: Option<f64>,
) -> Estimate {
    let tokens = tokens.max(TYPICAL_REPLY);
    let rate = link.filter(|r| *r > 0.0).unwrap_or(ASSUMED_LINK);
    let pull_s = model_bytes as f64 / rate + model_bytes as f64 / LOAD_RATE;
    let there_load =
        1.0 + f64::from(serving.active + serving.queued) / f64::from(serving.max_jobs.max(1));
    let there = serving.tokens_per_s.filter(|t| *t > 0.0).map(f64::from);
    // The measured model closest in size says most about this one.
    let here_speed = here
        .measured
        .iter()
        .filter(|(size, t)| *size > 0 && *t > 0.0)
        .min_by(|a, b| {
            let off = |s: u64| (s as f64 / model_bytes as f64).ln().abs();
            off(a.0).total_cmp(&off(b.0))
        })
        .map(|&(size, t)| f64::from(t) * size as f64 / model_bytes as f64);
    let reply_s_there = there.map(|t| f64::from(tokens) / t * there_load);
    let reply_s_here = here_speed.map(|t| f64::from(tokens) / t);
    let mut e = Estimate {
        from: serving.node.clone(),
        to: here.node.clone(),
        model_bytes,
        link_bytes_per_s: rate,
        link_measured: link.is_some(),
        pull_s,
        tokens_per_reply: tokens,
        there_tokens_per_s: there,
        there_load,
        here_tokens_per_s: here_speed,
        reply_s_there,
        reply_s_here,
        pays_after_replies: None,
        pull: false,
        reason: String::new(),
    };
    e.reason = if !here.idle {
        "this node is busy".into()
    } else if here.free_memory < here.needs {
        format!(
            "this node has {} MB free and the model needs {} MB",
            here.free_memory >> 20,
            here.needs.div_ceil(1 << 20)
        )
    } else if let (Some(there_s), Some(here_s)) = (reply_s_there, reply_s_here) {
        let saved = there_s - here_s;
        if saved <= 0.0 {
            format!(
                "a reply takes {there_s:.1} s on {} and would take {here_s:.1} s here",
                serving.node
            )
        } else {
            let n = (pull_s / saved).ceil().max(1.0);
            e.pays_after_replies = Some(n.min(f64::from(u32::MAX)) as u32);
            e.pull = n <= f64::from(FEW_REPLIES);
            format!(
                "{saved:.1} s saved a reply ({there_s:.1} s on {} against {here_s:.1} s here) pays for the {pull_s:.1} s pull after {n} replies{}",
                serving.node,
                if e.pull { "" } else { ": too many" }
            )
        }
    } else if here_speed.is_none() {
        "no model's speed is measured on this node yet".into()
    } else {
        format!("{}'s speed for the model is not measured yet", serving.node)
    };
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(tokens_per_s: f32, active: u32) -> Serving {
        Serving {
            node: "slow".into(),
            tokens_per_s: Some(tokens_per_s),
            active,
            queued: 0,
            max_jobs: 1,
        }
    }

    fn here(measured: Vec<(u64, f32)>) -> Here {
        Here {
            node: "fast".into(),
            idle: true,
            free_memory: 1 << 30,
            needs: 200 << 20,
            measured,
        }
    }

    #[test]
    fn a_much_faster_idle_node_pulls_and_a_similar_one_does_not() {
        // 100 MB model; here a 200 MB model runs at 100 tokens/s, so this one at about 200.
        let fast = here(vec![(200_000_000, 100.0)]);
        let e = estimate(100_000_000, 64, &serving(20.0, 0), &fast, Some(100e6));
        assert_eq!(e.tokens_per_reply, TYPICAL_REPLY);
        assert!((e.here_tokens_per_s.unwrap() - 200.0).abs() < 1e-9);
        assert!(e.pull, "{e:?}");
        assert_eq!(e.pays_after_replies, Some(1));
        let e = estimate(100_000_000, 64, &serving(190.0, 0), &fast, Some(100e6));
        assert!(!e.pull, "{e:?}");
        assert!(e.reason.contains("too many"), "{}", e.reason);
        let e = estimate(100_000_000, 64, &serving(400.0, 0), &fast, Some(100e6));
        assert!(!e.pull && e.pays_after_replies.is_none(), "{e:?}");
    }

    #[test]
    fn a_busy_serving_node_makes_a_pull_pay_sooner() {
        let fast = here(vec![(100_000_000, 150.0)]);
        let idle = estimate(100_000_000, 256, &serving(150.0, 0), &fast, None);
        assert!(!idle.pull && !idle.link_measured, "{idle:?}");
        let busy = estimate(100_000_000, 256, &serving(150.0, 1), &fast, None);
        assert_eq!(busy.there_load, 2.0);
        assert!(busy.pull, "{busy:?}");
    }

    #[test]
    fn without_a_measured_speed_memory_or_quiet_it_stays() {
        let e = estimate(1 << 20, 256, &serving(1.0, 3), &here(vec![]), None);
        assert!(!e.pull && e.reason.contains("no model's speed"), "{e:?}");
        let mut busy = here(vec![(1 << 20, 500.0)]);
        busy.idle = false;
        assert!(!estimate(1 << 20, 256, &serving(1.0, 3), &busy, None).pull);
        let mut small = here(vec![(1 << 20, 500.0)]);
        small.free_memory = 1 << 20;
        let e = estimate(1 << 20, 256, &serving(1.0, 3), &small, None);
        assert!(!e.pull && e.reason.contains("MB free"), "{e:?}");
        let unmeasured = Serving {
            tokens_per_s: None,
            ..serving(1.0, 0)
        };
        let e = estimate(1 << 20, 256, &unmeasured, &here(vec![(1 << 20, 5.0)]), None);
        assert!(!e.pull && e.reason.contains("not measured"), "{e:?}");
    }

    #[test]
    fn the_closest_measured_model_in_size_is_used() {
        let many = here(vec![
            (10_000_000, 1000.0),
            (90_000_000, 110.0),
            (1_000_000_000, 9.0),
        ]);
        let e = estimate(100_000_000, 256, &serving(10.0, 0), &many, None);
        assert!((e.here_tokens_per_s.unwrap() - 99.0).abs() < 1e-6, "{e:?}");
    }
}
