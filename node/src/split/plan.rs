//! The split planner: a pure function from a model's layout and the household's nodes to an
//! ordered pipeline of layer ranges, with an estimate of its speed and the reasons for it.
//!
//! Every stage must fit its node's free memory with its cache at the requested context. Among
//! the plans that fit, the planner minimises the estimated time per token: each stage's share
//! of the model's compute at its node's measured speed (slowed by the jobs it already runs),
//! plus one network hop per stage boundary, one for the sampled token's way back to the first
//! stage and one to the planning node, which serves the client (so it prefers to drive itself). A plan with fewer stages wins when its estimate is within [`FEWER_STAGES`].

use hearth_protocol::ModelLayout;
use serde::Serialize;

/// A plan with fewer stages is preferred when its time per token is at most this factor of
/// the best plan's.
pub const FEWER_STAGES: f64 = 1.05;
/// Most stages an automatic plan uses.
pub const MAX_AUTO_STAGES: usize = 4;
/// Most nodes the planner considers (the ones with the most free memory).
const MAX_NODES: usize = 8;
/// Speed assumed for a node that has not measured the model, when no node has.
const NOMINAL_TOKENS_PER_S: f64 = 20.0;
/// Assumed link throughput for hidden states, bytes per millisecond (1 Gbit/s).
const LINK_BYTES_PER_MS: f64 = 125_000.0;

/// Weight of the evenness term (per ms², against ms): small enough that it only breaks ties.
const BALANCE: f64 = 1e-4;

const MB: u64 = 1 << 20;

/// What the planner knows about one node.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanNode {
    pub name: String,
    /// The node holds the model file.
    pub has_model: bool,
    /// Lacking it, the node can fetch its stage's part from a household node that holds it
    /// (used when the request names the stages).
    pub can_fetch: bool,
    /// Bytes it offers for models now.
    pub memory_free: u64,
    /// Its measured decode speed for the whole model, if any.
    pub tokens_per_s: Option<f32>,
    /// Round-trip time from the planning node, in milliseconds.
    pub latency_ms: Option<f32>,
    /// Jobs queued and running there now.
    pub busy: u32,
    pub draining: bool,
}

/// What the request asks of the split.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ask {
    /// The planner chooses (2 to [`MAX_AUTO_STAGES`] stages).
    #[default]
    Auto,
    /// Exactly this many stages.
    Stages(usize),
    /// These nodes, in this order.
    Nodes(Vec<String>),
}

impl Ask {
    /// What a request's `split` (a stage count) and `stages` (node names in order) options ask;
    /// `None` when neither is set.
    pub fn from_request(
        split: Option<u32>,
        stages: Option<Vec<String>>,
    ) -> Result<Option<Ask>, String> {
        match (split, stages) {
            (Some(_), Some(_)) => Err(
                "give either split (a number of stages) or stages (node names), not both".into(),
            ),
            (Some(n), None) if n < 2 => Err(format!("split must be at least 2 stages, not {n}")),
            (Some(n), None) => Ok(Some(Ask::Stages(n as usize))),
            (None, Some(names)) if names.len() < 2 => Err(format!(
                "stages must name at least 2 nodes, not {}",
                names.len()
            )),
            (None, Some(names)) => Ok(Some(Ask::Nodes(names))),
            (None, None) => Ok(None),
        }
    }
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedStage {
    /// Index of the node in the planner's input.
    #[serde(skip)]
    pub node_index: usize,
    pub node: String,
    pub start: u32,
    pub end: u32,
    pub embedding: bool,
    pub head: bool,
    /// Bytes the stage needs: weights and cache.
    pub memory: u64,
    /// The node's free memory.
    pub memory_free: u64,
    /// Estimated milliseconds of compute per token.
    pub ms_per_token: f64,
}

/// A pipeline, in order, with its estimate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub stages: Vec<PlannedStage>,
    pub tokens_per_s: f64,
    pub reasons: Vec<String>,
}

/// Why no plan exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", reasons.join("; "))]
pub struct NoPlan {
    pub reasons: Vec<String>,
}

/// Plans `layout` at `context` positions over `nodes` as `ask` says.
pub fn plan(
    layout: &ModelLayout,
    context: u32,
    nodes: &[PlanNode],
    ask: &Ask,
) -> Result<Plan, NoPlan> {
    let mut reasons = Vec::new();
    let usable: Vec<usize> = match ask {
        Ask::Nodes(names) => {
            let mut picked = Vec::new();
            for name in names {
                match nodes.iter().position(|n| &n.name == name) {
                    Some(i) if picked.contains(&i) => {
                        reasons.push(format!("{name} is named twice"))
                    }
                    Some(i) => match unusable(&nodes[i], true) {
                        Some(why) => reasons.push(format!("{name} {why}")),
                        None => picked.push(i),
                    },
                    None => reasons.push(format!("no node named {name} is in the household")),
                }
            }
            if !reasons.is_empty() {
                return Err(NoPlan { reasons });
            }
            picked
        }
        _ => {
            let mut usable = Vec::new();
            for (i, n) in nodes.iter().enumerate() {
                match unusable(n, false) {
                    Some(why) => reasons.push(format!("{} {why}", n.name)),
                    None => usable.push(i),
                }
            }
            // The nodes offering the most memory, in a stable order.
            usable.sort_by_key(|&i| std::cmp::Reverse(nodes[i].memory_free));
            usable.truncate(MAX_NODES);
            usable.sort_unstable();
            usable
        }
    };
    let layers = layout.layers() as usize;
    let counts: Vec<usize> = match ask {
        Ask::Auto => (2..=MAX_AUTO_STAGES.min(usable.len()).min(layers)).collect(),
        Ask::Stages(k) => vec![*k],
        Ask::Nodes(names) => vec![names.len()],
    };
    let least = counts.first().copied().unwrap_or(2).max(2);
    let refusal = match ask {
        Ask::Stages(k) if *k < 2 => Some(format!("a split has at least 2 stages, not {k}")),
        _ if least > layers => Some(format!("{least} stages for a model of {layers} layers")),
        _ if least > usable.len() => Some(format!(
            "a split needs at least {least} nodes with the model, and {} can take part",
            usable.len()
        )),
        _ => None,
    };
    if let Some(why) = refusal {
        reasons.push(why);
        return Err(NoPlan { reasons });
    }
    let speed = speeds(nodes, &usable);
    let mut best: Vec<Option<Plan>> = vec![None; counts.iter().max().copied().unwrap_or(0) + 1];
    for &k in &counts {
        let orders: Vec<Vec<usize>> = match ask {
            Ask::Nodes(_) => vec![usable.clone()],
            _ => arrangements(&usable, k),
        };
        for order in orders {
            if let Some(p) = best_ranges(layout, context, nodes, &speed, &order) {
                let better = best[k]
                    .as_ref()
                    .is_none_or(|b| p.tokens_per_s > b.tokens_per_s);
                if better {
                    best[k] = Some(p);
                }
            }
        }
    }
    let fastest = best
        .iter()
        .flatten()
        .map(|p| p.tokens_per_s)
        .fold(0.0, f64::max);
    let Some(mut chosen) = best
        .into_iter()
        .flatten()
        .find(|p| p.tokens_per_s * FEWER_STAGES >= fastest)
    else {
        reasons.push(format!(
            "the model needs {} MB with a {context}-position cache, and no arrangement of the nodes' free memory ({}) holds it",
            layout.whole_bytes(context).div_ceil(MB),
            usable
                .iter()
                .map(|&i| format!("{} {} MB", nodes[i].name, nodes[i].memory_free / MB))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Err(NoPlan { reasons });
    };
    for s in &chosen.stages {
        let n = &nodes[s.node_index];
        let mut what = format!("{}: layers {}..{}", s.node, s.start, s.end);
        if s.embedding {
            what.push_str(" + embedding");
        }
        if s.head {
            what.push_str(" + head");
        }
        what.push_str(&format!(
            ", {} MB of {} MB free, {:.1} ms/token at {}",
            s.memory.div_ceil(MB),
            s.memory_free / MB,
            s.ms_per_token,
            match n.tokens_per_s {
                Some(t) => format!("{t:.1} tokens/s measured"),
                None => format!("{:.1} tokens/s assumed (not measured)", speed[s.node_index]),
            }
        ));
        if n.busy > 0 {
            what.push_str(&format!(", {} jobs there", n.busy));
        }
        chosen.reasons.push(what);
    }
    chosen.reasons.extend(reasons);
    Ok(chosen)
}

/// Why a node cannot be a stage, if it cannot: a node named by the request may fetch its part of
/// a file it lacks; the planner's own choices hold the file already.
fn unusable(n: &PlanNode, named: bool) -> Option<&'static str> {
    if !(n.has_model || named && n.can_fetch) {
        Some(if named {
            "does not have the model file, and no household node can send it"
        } else {
            "does not have the model file"
        })
    } else if n.draining {
        Some("is shutting down")
    } else {
        None
    }
}

/// Tokens/s for the whole model per node: measured, else the median of those measured, else a
/// nominal figure.
fn speeds(nodes: &[PlanNode], usable: &[usize]) -> Vec<f64> {
    let mut measured: Vec<f64> = usable
        .iter()
        .filter_map(|&i| nodes[i].tokens_per_s)
        .filter(|t| *t > 0.0)
        .map(f64::from)
        .collect();
    measured.sort_by(f64::total_cmp);
    let assumed = measured
        .get(measured.len() / 2)
        .copied()
        .unwrap_or(NOMINAL_TOKENS_PER_S);
    nodes
        .iter()
        .map(|n| {
            n.tokens_per_s
                .filter(|t| *t > 0.0)
                .map_or(assumed, f64::from)
        })
        .collect()
}

/// Every ordered choice of `k` of `items`.
fn arrangements(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut current = Vec::with_capacity(k);
    fn go(items: &[usize], k: usize, current: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if current.len() == k {
            out.push(current.clone());
            return;
        }
        for &i in items {
            if !current.contains(&i) {
                current.push(i);
                go(items, k, current, out);
                current.pop();
            }
        }
    }
    go(items, k, &mut current, &mut out);
    out
}

/// The fastest layer ranges for nodes in `order` (first holds the embedding, last the head),
/// each stage non-empty and within its node's memory; `None` when nothing fits.
fn best_ranges(
    layout: &ModelLayout,
    context: u32,
    nodes: &[PlanNode],
    speed: &[f64],
    order: &[usize],
) -> Option<Plan> {
    let layers = layout.layers() as usize;
    let k = order.len();
    // Compute is weighed by bytes: every layer's weights and the head are read once per token.
    let total: f64 = layout.layer_bytes.iter().sum::<u64>() as f64 + layout.head_bytes as f64;
    let ms = |stage: usize, start: usize, end: usize| -> Option<f64> {
        let n = &nodes[order[stage]];
        let bytes = layout.stage_bytes(start as u32, end as u32, context);
        if bytes > n.memory_free {
            return None;
        }
        let mut work: f64 = layout.layer_bytes[start..end].iter().sum::<u64>() as f64;
        if end == layers {
            work += layout.head_bytes as f64;
        }
        let whole_ms = 1000.0 / speed[order[stage]];
        Some(work / total * whole_ms * f64::from(1 + n.busy))
    };
    // cost[i][l]: least time for stages 0..i covering layers 0..l; from[i][l]: where stage i-1 starts.
    let mut cost = vec![vec![f64::INFINITY; layers + 1]; k + 1];
    let mut from = vec![vec![0usize; layers + 1]; k + 1];
    cost[0][0] = 0.0;
    for i in 1..=k {
        for end in i..=layers - (k - i) {
            for start in (i - 1)..end {
                if !cost[i - 1][start].is_finite() {
                    continue;
                }
                if let Some(t) = ms(i - 1, start, end) {
                    // Among splits of equal time, the most even one: it keeps every stage busy
                    // when several replies share the pipeline.
                    let c = cost[i - 1][start] + t + BALANCE * t * t;
                    if c < cost[i][end] {
                        cost[i][end] = c;
                        from[i][end] = start;
                    }
                }
            }
        }
    }
    if !cost[k][layers].is_finite() {
        return None;
    }
    let mut bounds = vec![layers];
    for i in (1..=k).rev() {
        let end = *bounds.last().expect("bounds");
        bounds.push(from[i][end]);
    }
    bounds.reverse();
    let stages: Vec<PlannedStage> = (0..k)
        .map(|i| {
            let (start, end) = (bounds[i], bounds[i + 1]);
            let n = &nodes[order[i]];
            PlannedStage {
                node_index: order[i],
                node: n.name.clone(),
                start: start as u32,
                end: end as u32,
                embedding: start == 0,
                head: end == layers,
                memory: layout.stage_bytes(start as u32, end as u32, context),
                memory_free: n.memory_free,
                ms_per_token: ms(i, start, end).expect("fits"),
            }
        })
        .collect();
    // Hops: each boundary, and the sampled token back to the first stage.
    let hidden = f64::from(layout.dim) * 4.0 / LINK_BYTES_PER_MS;
    let hop = |a: usize, b: usize| -> f64 {
        let l = |i: usize| f64::from(nodes[i].latency_ms.unwrap_or(1.0));
        (l(a) + l(b)) / 2.0
    };
    // The last stage also sends each token to the planning node, which serves the client.
    let hops: f64 = (0..k)
        .map(|i| hop(order[i], order[(i + 1) % k]) + if i + 1 < k { hidden } else { 0.0 })
        .sum::<f64>()
        + f64::from(nodes[order[k - 1]].latency_ms.unwrap_or(1.0)) / 2.0;
    let compute: f64 = stages.iter().map(|s| s.ms_per_token).sum();
    let total_ms = compute + hops;
    Some(Plan {
        stages,
        tokens_per_s: 1000.0 / total_ms,
        reasons: vec![format!(
            "{k} stages: about {:.1} tokens/s ({compute:.1} ms compute + {hops:.1} ms on the network per token)",
            1000.0 / total_ms
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 layers of 10 MB, a 20 MB embedding and head, 1 KB of cache per position per layer.
    fn layout() -> ModelLayout {
        ModelLayout {
            layer_bytes: vec![10 * MB; 10],
            embedding_bytes: 20 * MB,
            head_bytes: 20 * MB,
            kv_bytes_per_token: 1024,
            dim: 512,
            context: 4096,
        }
    }

    fn node(name: &str, free_mb: u64) -> PlanNode {
        PlanNode {
            name: name.into(),
            has_model: true,
            can_fetch: false,
            memory_free: free_mb * MB,
            tokens_per_s: Some(50.0),
            latency_ms: Some(0.5),
            busy: 0,
            draining: false,
        }
    }

    fn shape(p: &Plan) -> Vec<(&str, u32, u32)> {
        p.stages
            .iter()
            .map(|s| (s.node.as_str(), s.start, s.end))
            .collect()
    }

    // The whole model: 100 + 20 + 20 MB, and 10 KB per position of cache (1 MB at 100).
    const CTX: u32 = 100;

    #[test]
    fn a_model_no_node_holds_is_split_and_every_stage_fits() {
        let nodes = [node("a", 90), node("b", 90)];
        let p = plan(&layout(), CTX, &nodes, &Ask::Auto).unwrap();
        assert_eq!(p.stages.len(), 2);
        for s in &p.stages {
            assert!(s.memory <= s.memory_free, "{s:?}");
        }
        assert!(p.stages[0].embedding && p.stages[1].head);
        assert_eq!(p.stages[0].start, 0);
        assert_eq!(p.stages[0].end, p.stages[1].start);
        assert_eq!(p.stages[1].end, 10);
        assert!(p.tokens_per_s > 0.0);
        assert!(p.reasons[0].starts_with("2 stages"), "{:?}", p.reasons);
        assert!(p.reasons.iter().any(|r| r.starts_with("a: layers 0..")));
    }

    #[test]
    fn too_little_memory_everywhere_is_no_plan_with_the_figures() {
        let nodes = [node("a", 40), node("b", 40)];
        let err = plan(&layout(), CTX, &nodes, &Ask::Auto).unwrap_err();
        let why = err.to_string();
        assert!(why.contains("141 MB") && why.contains("a 40 MB"), "{why}");
    }

    #[test]
    fn a_faster_node_gets_more_layers() {
        let even = plan(
            &layout(),
            CTX,
            &[node("a", 200), node("b", 200)],
            &Ask::Stages(2),
        )
        .unwrap();
        let fast = PlanNode {
            tokens_per_s: Some(200.0),
            ..node("b", 200)
        };
        let uneven = plan(&layout(), CTX, &[node("a", 200), fast], &Ask::Stages(2)).unwrap();
        let layers_of = |p: &Plan, n: &str| {
            p.stages
                .iter()
                .filter(|s| s.node == n)
                .map(|s| s.end - s.start)
                .sum::<u32>()
        };
        assert!(
            layers_of(&uneven, "b") > layers_of(&even, "b"),
            "{:?} vs {:?}",
            shape(&uneven),
            shape(&even)
        );
        assert!(uneven.tokens_per_s > even.tokens_per_s);
        // The slow node keeps only what the fast one has no room for... here, one layer.
        assert_eq!(layers_of(&uneven, "a"), 1);
    }

    #[test]
    fn busy_nodes_count_as_slower() {
        let busy = PlanNode {
            busy: 3,
            ..node("a", 200)
        };
        let p = plan(&layout(), CTX, &[busy, node("b", 200)], &Ask::Stages(2)).unwrap();
        let layers_of = |n: &str| {
            let s = p.stages.iter().find(|s| s.node == n).unwrap();
            s.end - s.start
        };
        assert!(layers_of("b") > layers_of("a"), "{:?}", shape(&p));
        assert!(p.reasons.iter().any(|r| r.contains("3 jobs there")));
    }

    #[test]
    fn a_node_over_its_memory_is_never_chosen() {
        let nodes = [node("a", 90), node("tiny", 5), node("b", 90)];
        for ask in [Ask::Auto, Ask::Stages(2)] {
            let p = plan(&layout(), CTX, &nodes, &ask).unwrap();
            assert!(p.stages.iter().all(|s| s.node != "tiny"), "{:?}", shape(&p));
        }
        // Asked for by name, it is refused with the figures rather than overfilled.
        let err = plan(
            &layout(),
            CTX,
            &nodes,
            &Ask::Nodes(vec!["tiny".into(), "a".into()]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tiny 5 MB"), "{err}");
    }

    #[test]
    fn ties_prefer_fewer_stages() {
        // Three equal nodes, each able to hold half: 2 stages beat 3 (one hop fewer, same compute).
        let nodes = [node("a", 90), node("b", 90), node("c", 90)];
        let p = plan(&layout(), CTX, &nodes, &Ask::Auto).unwrap();
        assert_eq!(p.stages.len(), 2, "{:?}", shape(&p));
        // Within the margin, fewer stages win even when more would be a hair faster.
        let mut faster = nodes.to_vec();
        faster[2].tokens_per_s = Some(51.0);
        let p = plan(&layout(), CTX, &faster, &Ask::Auto).unwrap();
        assert_eq!(p.stages.len(), 2, "{:?}", shape(&p));
    }

    #[test]
    fn asked_stage_counts_and_node_orders_are_kept() {
        let nodes = [node("a", 200), node("b", 200), node("c", 200)];
        let p = plan(&layout(), CTX, &nodes, &Ask::Stages(3)).unwrap();
        assert_eq!(p.stages.len(), 3);
        let p = plan(
            &layout(),
            CTX,
            &nodes,
            &Ask::Nodes(vec!["c".into(), "a".into()]),
        )
        .unwrap();
        assert_eq!(
            p.stages.iter().map(|s| s.node.as_str()).collect::<Vec<_>>(),
            ["c", "a"]
        );
        let err = plan(&layout(), CTX, &nodes, &Ask::Stages(4)).unwrap_err();
        assert!(err.to_string().contains("at least 4 nodes"), "{err}");
        let err = plan(
            &layout(),
            CTX,
            &nodes,
            &Ask::Nodes(vec!["a".into(), "zz".into()]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no node named zz"), "{err}");
    }

    #[test]
    fn nodes_without_the_file_or_leaving_are_left_out_with_the_reason() {
        let missing = PlanNode {
            has_model: false,
            can_fetch: true,
            ..node("missing", 500)
        };
        let leaving = PlanNode {
            draining: true,
            ..node("leaving", 500)
        };
        let p = plan(
            &layout(),
            CTX,
            &[missing.clone(), leaving, node("a", 90), node("b", 90)],
            &Ask::Auto,
        )
        .unwrap();
        assert!(p.stages.iter().all(|s| s.node == "a" || s.node == "b"));
        assert!(p
            .reasons
            .contains(&"missing does not have the model file".to_owned()));
        assert!(p.reasons.contains(&"leaving is shutting down".to_owned()));
        // Named, a node without the file takes part when it can fetch its stage's part.
        let named = Ask::Nodes(vec!["a".into(), "missing".into()]);
        let nodes = [missing.clone(), node("a", 90)];
        let p = plan(&layout(), CTX, &nodes, &named).unwrap();
        assert_eq!(p.stages[1].node, "missing");
        let stranded = PlanNode {
            can_fetch: false,
            ..missing
        };
        let err = plan(&layout(), CTX, &[stranded, node("a", 90)], &named).unwrap_err();
        assert!(
            err.to_string().contains("no household node can send it"),
            "{err}"
        );
    }

    #[test]
    fn the_cache_at_the_requested_context_counts() {
        // 10 layers × 1 KB × 100 000 positions ≈ 977 MB of cache: no longer fits.
        let nodes = [node("a", 200), node("b", 200)];
        assert!(plan(&layout(), CTX, &nodes, &Ask::Auto).is_ok());
        assert!(plan(&layout(), 100_000, &nodes, &Ask::Auto).is_err());
    }
}
