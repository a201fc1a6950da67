//! A running node's shared state: what the API, the chat path and the protocols share.

use std::sync::Arc;

use crate::cards::{CardSource, Cards};
use crate::drain::Drain;
use crate::history::History;
use crate::jobs::Engine;
use crate::mesh::Mesh;
use crate::metrics::{Gauges, Metrics};
use crate::share::Share;

/// A running node.
pub struct Node {
    pub name: String,
    pub engine: Arc<Engine>,
    pub mesh: Mesh,
    /// Peers' latest cards.
    pub cards: Cards,
    /// Builds this node's card.
    pub card: CardSource,
    pub metrics: Arc<Metrics>,
    pub api_token: Option<String>,
    /// Whether the node is shutting down, and what is still in flight.
    pub drain: Arc<Drain>,
    /// Models pulled from peers.
    pub share: Arc<Share>,
    /// The household's conversations.
    pub history: Arc<History>,
    /// Sampling defaults for requests received here (the node's `[sampling]` config).
    pub sampling: hearth_protocol::SamplingOverrides,
    /// Longest a request waits for some node to start its reply.
    pub queue_timeout: std::time::Duration,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({})", self.name)
    }
}

impl Node {
    /// Gauges for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let occupancy = self.engine.occupancy();
        let names = self.engine.cache().list().unwrap_or_default();
        let batches = self.engine.batch_stats();
        let (kv_reserved, idle_cache, kv_budget) = self.engine.kv_memory();
        Gauges {
            queue_depth: u64::from(occupancy.waiting),
            active_jobs: u64::from(occupancy.running),
            peers: self.mesh.peers().len() as u64,
            decode_steps: batches.steps,
            decode_step_sessions: batches.rows,
            memory_offered: self.engine.budget().cap().unwrap_or(0),
            memory_used: self.engine.memory_used(),
            idle_cache,
            kv_budget,
            kv_reserved,
            speeds: self
                .engine
                .speeds()
                .into_iter()
                .map(|(d, t)| {
                    let name = names
                        .iter()
                        .find(|m| m.digest == d)
                        .map_or(d, |m| m.name.clone());
                    (name, t)
                })
                .collect(),
        }
    }
}
