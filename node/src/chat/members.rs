//! The household as this node sees it at one moment: itself and its peers with their cards.
//! Pure data: which models exist where, which one a request names, and how routing ranks the
//! nodes for it.

use hearth_protocol::{Card, ModelInfo, Split, StagePlan, WireDtype};
use libp2p::PeerId;
use serde::Serialize;

use super::routing::{self, Candidate, Route, SplitRoute};
use crate::mesh::peers::peer_id_text;
use crate::node::Node;
use crate::split::plan::{self, NoPlan};

/// One household node with its card, as `/api/peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    #[serde(serialize_with = "peer_id_text")]
    pub peer_id: PeerId,
    pub addr: Option<String>,
    pub latency_ms: Option<f32>,
    pub this_node: bool,
    pub card: Card,
}

/// A model found somewhere in the household.
#[derive(Debug, Clone, Serialize)]
pub struct MeshModel {
    pub info: ModelInfo,
    /// Nodes holding it.
    pub nodes: Vec<String>,
    /// Nodes with it loaded.
    pub loaded_on: Vec<String>,
}

/// A request named a model no household node holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {query} is not on any node of this household{}", available_hint(.available))]
pub struct UnknownModel {
    pub query: String,
    /// Names of the models the household has.
    pub available: Vec<String>,
}

fn available_hint(available: &[String]) -> String {
    if available.is_empty() {
        ", and no node has any model; import one with `hearth models import`".into()
    } else {
        format!("; available: {}", available.join(", "))
    }
}

/// A snapshot of the household: this node first, then every peer with a card.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Members(pub Vec<Member>);

impl Members {
    /// `node` and every connected peer with a card, `node` first: one snapshot, taken once per
    /// request (building this node's card reads /proc and the model index).
    pub fn of(node: &Node) -> Members {
        let mut all = vec![Member {
            peer_id: node.mesh.peer_id(),
            addr: node.mesh.listen_addrs().first().map(ToString::to_string),
            latency_ms: Some(0.0),
            this_node: true,
            card: (node.card)(),
        }];
        for link in node.mesh.peers() {
            if let Some(card) = node.cards.get(&link.peer) {
                all.push(Member {
                    peer_id: link.peer,
                    addr: Some(link.addr.to_string()),
                    latency_ms: link.rtt.map(|d| d.as_secs_f32() * 1000.0),
                    this_node: false,
                    card,
                });
            }
        }
        Members(all)
    }

    /// The member named `name`.
    pub fn named(&self, name: &str) -> Option<&Member> {
        self.0.iter().find(|m| m.card.name == name)
    }

    /// Every model in the household, by digest, in the order nodes list them.
    pub fn models(&self) -> Vec<MeshModel> {
        let mut out: Vec<MeshModel> = Vec::new();
        for card in self.0.iter().map(|m| &m.card) {
            for m in &card.models {
                let i = match out.iter().position(|e| e.info.digest == m.digest) {
                    Some(i) => i,
                    None => {
                        out.push(MeshModel {
                            info: m.clone(),
                            nodes: Vec::new(),
                            loaded_on: Vec::new(),
                        });
                        out.len() - 1
                    }
                };
                out[i].nodes.push(card.name.clone());
                if card.loaded.contains(&m.digest) {
                    out[i].loaded_on.push(card.name.clone());
                }
            }
        }
        out
    }

    /// The household model a request names: by name, or by a digest prefix of 6+ characters.
    pub fn find_model(&self, query: &str) -> Result<MeshModel, UnknownModel> {
        let models = self.models();
        let q = query.to_ascii_lowercase();
        models
            .iter()
            .find(|m| m.info.name.eq_ignore_ascii_case(query))
            .or_else(|| {
                models
                    .iter()
                    .find(|m| q.len() >= 6 && m.info.digest.starts_with(&q))
            })
            .cloned()
            .ok_or_else(|| {
                let mut available: Vec<String> =
                    models.iter().map(|m| m.info.name.clone()).collect();
                available.sort_unstable();
                available.dedup();
                UnknownModel {
                    query: query.to_owned(),
                    available,
                }
            })
    }

    /// Ranks the household's nodes for the model with `digest` as `ask` says: whole on one
    /// node where any can serve it, else (or when asked) split over several.
    pub fn route(&self, digest: &str, ask: &RouteAsk<'_>) -> Route {
        let lost = |m: &Member| ask.exclude.contains(&m.peer_id);
        let model = self.0.iter().find_map(|m| m.card.model(digest));
        let layout = model.and_then(|m| m.layout.as_ref());
        let context = layout.map_or(ask.context, |l| ask.context.min(l.context));
        let candidates = self
            .0
            .iter()
            .map(|m| {
                let card = &m.card;
                let model = card.model(digest);
                Candidate {
                    node: card.name.clone(),
                    peer_id: (!m.this_node).then_some(m.peer_id),
                    loaded: card.loaded.iter().any(|d| d == digest),
                    cached: model.is_some(),
                    free_memory: card.memory_free(),
                    model_size: model.map_or(0, |m| {
                        m.layout.as_ref().map_or(m.size, |l| l.whole_bytes(context))
                    }),
                    queue_depth: card.queue_depth,
                    active_jobs: card.active_jobs,
                    tokens_per_s: card.speed(digest),
                    latency_ms: m.latency_ms,
                    // A node lost during this reply is as good as gone.
                    draining: card.draining || lost(m),
                }
            })
            .collect();
        let mut route = routing::rank(candidates, ask.pin);
        let split_ask = match &ask.split {
            Some(a) => a.clone(),
            None if route.ranked.is_empty() && ask.pin.is_none() => plan::Ask::Auto,
            None => return route,
        };
        if ask.split.is_some() {
            // Asked for a split: the whole-model candidates are not used.
            route.ranked.clear();
        }
        let Some(layout) = layout else {
            route.split = Some(SplitRoute::Impossible(NoPlan {
                reasons: vec![
                    "the model's cards do not describe its layers (an unsupported architecture, or imported by an older hearth: import it again)".into(),
                ],
            }));
            return route;
        };
        // A node without the file can fetch its part when a holder has the file's manifest.
        let fetchable = self.0.iter().any(|m| {
            m.card
                .model(digest)
                .is_some_and(|i| i.manifest_root.is_some())
        });
        let nodes: Vec<plan::PlanNode> = self
            .0
            .iter()
            .map(|m| plan::PlanNode {
                name: m.card.name.clone(),
                has_model: m.card.model(digest).is_some(),
                can_fetch: fetchable,
                memory_free: m.card.memory_free(),
                tokens_per_s: m.card.speed(digest),
                latency_ms: m.latency_ms,
                // Split replies' own load is not a reason to move their stages (which would
                // stop concurrent replies sharing, and batching in, the same stages).
                busy: (m.card.queue_depth + m.card.active_jobs).saturating_sub(m.card.split_jobs),
                draining: m.card.draining || lost(m),
            })
            .collect();
        match plan::plan(layout, context, &nodes, &split_ask) {
            Ok(p) => {
                let stages: Vec<StagePlan> = p
                    .stages
                    .iter()
                    .map(|s| StagePlan {
                        peer: self.0[s.node_index].peer_id.to_string(),
                        start: s.start,
                        end: s.end,
                    })
                    .collect();
                let last = p.stages.last().expect("a plan has stages").node_index;
                let driver = &self.0[last];
                let mut candidate = routing::rank(
                    vec![Candidate {
                        node: driver.card.name.clone(),
                        peer_id: (!driver.this_node).then_some(driver.peer_id),
                        loaded: false,
                        cached: true,
                        free_memory: driver.card.memory_free(),
                        model_size: 0,
                        queue_depth: driver.card.queue_depth,
                        active_jobs: driver.card.active_jobs,
                        tokens_per_s: Some(p.tokens_per_s as f32),
                        latency_ms: driver.latency_ms,
                        draining: false,
                    }],
                    None,
                )
                .ranked;
                for c in &mut candidate {
                    c.reasons = p.reasons.clone();
                    c.split = Some(Split {
                        stages: stages.clone(),
                        wire: ask.wire,
                    });
                }
                route.ranked.extend(candidate);
                route.split = Some(SplitRoute::Planned(p));
            }
            Err(no) => route.split = Some(SplitRoute::Impossible(no)),
        }
        route
    }
}

/// What a request asks of routing.
#[derive(Debug, Clone, Default)]
pub struct RouteAsk<'a> {
    /// Serve on this node only.
    pub pin: Option<&'a str>,
    /// Split the model as this says, even when one node could serve it whole.
    pub split: Option<plan::Ask>,
    /// How hidden states travel in a split.
    pub wire: WireDtype,
    /// Nodes lost earlier in this reply.
    pub exclude: &'a [PeerId],
    /// Positions a reply's cache must hold (capped at the model's).
    pub context: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cards::sample_card;

    fn model(name: &str, digest_byte: char) -> ModelInfo {
        ModelInfo {
            digest: digest_byte.to_string().repeat(64),
            name: name.into(),
            family: "llama".into(),
            quantization: "Q4_1".into(),
            size: 1 << 20,
            layers: 30,
            parameters: 135_000_000,
            layout: None,
            manifest_root: None,
        }
    }

    fn member(name: &str, this_node: bool, models: &[ModelInfo], loaded: &[&ModelInfo]) -> Member {
        let mut card = sample_card(name);
        card.models = models.to_vec();
        card.loaded = loaded.iter().map(|m| m.digest.clone()).collect();
        Member {
            peer_id: PeerId::random(),
            addr: None,
            latency_ms: Some(if this_node { 0.0 } else { 1.0 }),
            this_node,
            card,
        }
    }

    #[test]
    fn models_are_merged_by_digest_with_where_they_live() {
        let (a, b) = (model("smol", 'a'), model("gemma", 'b'));
        let members = Members(vec![
            member("kitchen", true, std::slice::from_ref(&a), &[]),
            member("study", false, &[a.clone(), b.clone()], &[&a]),
        ]);
        let models = members.models();
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].nodes, ["kitchen", "study"]);
        assert_eq!(models[0].loaded_on, ["study"]);
        assert_eq!(models[1].nodes, ["study"]);
        assert_eq!(members.find_model("SMOL").unwrap().info.digest, a.digest);
        assert_eq!(members.find_model("bbbbbb").unwrap().info.name, "gemma");
        // Too short a prefix names nothing.
        let err = members.find_model("bbb").unwrap_err();
        assert_eq!(err.available, ["gemma", "smol"]);
        assert!(err.to_string().contains("available: gemma, smol"), "{err}");
        let empty = Members(vec![member("kitchen", true, &[], &[])]);
        assert!(empty
            .find_model("smol")
            .unwrap_err()
            .to_string()
            .contains("hearth models import"));
    }

    #[test]
    fn routes_name_peers_by_id_and_this_node_by_none() {
        let a = model("smol", 'a');
        let members = Members(vec![
            member("kitchen", true, std::slice::from_ref(&a), &[]),
            member("study", false, std::slice::from_ref(&a), &[&a]),
            member("attic", false, &[], &[]),
        ]);
        let route = members.route(
            &a.digest,
            &RouteAsk {
                context: 4096,
                ..RouteAsk::default()
            },
        );
        let order: Vec<(&str, bool)> = route
            .ranked
            .iter()
            .map(|r| (r.candidate.node.as_str(), r.candidate.peer_id.is_some()))
            .collect();
        assert_eq!(order, [("study", true), ("kitchen", false)]);
        assert_eq!(
            route.ranked[0].candidate.peer_id,
            Some(members.0[1].peer_id)
        );
        assert_eq!(route.rejected.len(), 1);
        assert_eq!(route.rejected[0].node, "attic");
        assert!(members.named("attic").is_some() && members.named("garage").is_none());
    }
}
