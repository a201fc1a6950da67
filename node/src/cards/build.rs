//! This node's card, measured now: devices, cached and loaded models, speeds, load, revocations.

use hearth_protocol::{Card, ModelInfo, ModelSpeed, PROTOCOL_VERSION};

use crate::devices;
use crate::jobs::Engine;
use crate::mesh::Mesh;

/// The card of the node named `name`. Takes only short locks: a model being loaded shows up
/// once it is ready, and never delays the card.
pub fn build_card(name: &str, mesh: &Mesh, engine: &Engine) -> Card {
    let occupancy = engine.occupancy();
    let (kv_reserved, _, kv_budget) = engine.kv_memory();
    let models = engine
        .cache()
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|m| ModelInfo {
            digest: m.digest,
            name: m.name,
            family: m.summary.architecture,
            quantization: m.summary.quantization,
            size: m.size,
            layers: m.summary.layers.unwrap_or(0) as u32,
            parameters: m.summary.parameters,
            layout: m.summary.layout,
            manifest_root: m.manifest_root,
        })
        .collect();
    Card {
        name: name.to_owned(),
        peer_id: mesh.peer_id().to_string(),
        version: PROTOCOL_VERSION,
        os: devices::os(),
        devices: devices::probe(),
        models,
        loaded: engine.loaded(),
        speeds: engine
            .speeds()
            .into_iter()
            .map(|(digest, tokens_per_s)| ModelSpeed {
                digest,
                tokens_per_s,
            })
            .collect(),
        queue_depth: occupancy.waiting,
        active_jobs: occupancy.running,
        split_jobs: occupancy.split,
        max_jobs: engine.max_jobs() as u32,
        draining: engine.is_draining(),
        revoked: mesh.revoked().iter().map(ToString::to_string).collect(),
        max_memory: engine.budget().cap(),
        memory_used: engine.memory_used(),
        kv_budget,
        kv_reserved,
        placements: engine.placements(),
        tokens_generated: engine.tokens_generated(),
    }
}
