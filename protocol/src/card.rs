//! The capability card: what a node is and can do, exchanged after admission and polled to keep
//! it fresh. Routing reads nothing else about a peer.

use serde::{Deserialize, Serialize};

/// The opening frame of a card exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardRequest {
    /// The asker's [`crate::PROTOCOL_VERSION`].
    pub version: u32,
}

/// The answer to a [`CardRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CardReply {
    /// The node's card.
    Card(Box<Card>),
    /// The asker speaks another protocol version.
    Refused { reason: String },
}

/// A node's capabilities and load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// The node's human name (host name by default).
    pub name: String,
    /// The node's libp2p peer id.
    pub peer_id: String,
    pub version: u32,
    /// Operating system and architecture, e.g. "linux x86_64".
    pub os: String,
    pub devices: Vec<Device>,
    /// Models in the node's cache.
    pub models: Vec<ModelInfo>,
    /// Digests of the models loaded in memory, ready to serve.
    pub loaded: Vec<String>,
    /// Measured decode speed per model.
    pub speeds: Vec<ModelSpeed>,
    /// Jobs waiting for a slot.
    pub queue_depth: u32,
    /// Jobs running now.
    pub active_jobs: u32,
    /// Of the jobs queued and running, replies the node drives through a split (their load is
    /// the split's own, so planners leave it out).
    pub split_jobs: u32,
    /// Jobs the node runs at once.
    pub max_jobs: u32,
    /// Whether the node is shutting down (takes no new work).
    pub draining: bool,
    /// Peer ids this node's household has revoked; peers merge them into their own lists.
    pub revoked: Vec<String>,
    /// Bytes the node offers for models (`--max-memory`); `None`: as much as is free.
    pub max_memory: Option<u64>,
    /// Bytes its loaded models take now (split stages' weights are shared by sessions and
    /// taken back when idle, so they do not count).
    pub memory_used: u64,
    /// Bytes the node keeps for replies' keys and values (`--kv-memory`), its own replies' and
    /// its split stages' together.
    pub kv_budget: u64,
    /// Of those, bytes running replies and split sessions have reserved now (finished replies'
    /// caches give way to new replies, so they do not count).
    pub kv_reserved: u64,
    /// Where each loaded model runs.
    pub placements: Vec<ModelPlacement>,
    /// Tokens the node has generated since it started (a counter: its rate is the node's
    /// throughput, which the desktop client plots).
    pub tokens_generated: u64,
}

/// A compute device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub kind: DeviceKind,
    pub name: String,
    /// Bytes of memory (RAM for the CPU, VRAM for a GPU).
    pub total_memory: u64,
    pub free_memory: u64,
    /// Cores (CPU only).
    pub cores: Option<u32>,
    /// For a GPU wgpu sees: how `--device gpu:N` names it and what drives it.
    pub adapter: Option<GpuAdapter>,
}

/// A GPU adapter as wgpu reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuAdapter {
    /// N in `--device gpu:N`.
    pub index: u32,
    /// `vulkan`, `metal` or `dx12`.
    pub backend: String,
    /// `NVIDIA`, `AMD`, `Intel`, `Apple`, `Mesa`, or the PCI vendor id.
    pub vendor: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` (software, such as lavapipe) or `other`.
    pub kind: String,
}

/// Where a loaded model runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPlacement {
    pub digest: String,
    /// `cpu`, or the GPU as `gpu:N name`.
    pub device: String,
    /// Layers on the GPU: all of them, or (a model larger than the GPU's memory) the last ones,
    /// the rest running on the CPU; 0 on the CPU.
    pub gpu_layers: u32,
    pub layers: u32,
}

/// What kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    Cpu,
    /// An NVIDIA GPU NVML reports that wgpu does not see (no Vulkan driver).
    Cuda,
    Metal,
    /// A GPU wgpu sees (Vulkan, Metal or DX12): models can run on it.
    Gpu,
}

/// A cached model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// SHA-256 of the GGUF file, hex.
    pub digest: String,
    pub name: String,
    pub family: String,
    pub quantization: String,
    /// File size in bytes.
    pub size: u64,
    pub layers: u32,
    /// Weights in the model (0: not known).
    pub parameters: u64,
    /// The model's layers, for planning splits; `None` for architectures hearth cannot run.
    pub layout: Option<ModelLayout>,
    /// Root of the file's chunk manifest (`blob::Manifest::root`), when the node has one: what
    /// a peer pulling the model verifies the manifest against before the first byte.
    pub manifest_root: Option<String>,
}

/// What a model's parts weigh in memory: what the split planner places on nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLayout {
    /// Weight bytes of each layer, in order.
    pub layer_bytes: Vec<u64>,
    /// The token embedding (held by the first stage).
    pub embedding_bytes: u64,
    /// The final norm and output head (held by the last stage; a copy of the embedding when the
    /// model ties them).
    pub head_bytes: u64,
    /// Key and value cache bytes per position per layer.
    pub kv_bytes_per_token: u64,
    /// Width of the hidden states passed between stages.
    pub dim: u32,
    /// The model's own context length.
    pub context: u32,
}

impl ModelLayout {
    /// Layers in the model.
    pub fn layers(&self) -> u32 {
        self.layer_bytes.len() as u32
    }

    /// Bytes a stage holding `start..end` needs with a cache of `context` positions.
    pub fn stage_bytes(&self, start: u32, end: u32, context: u32) -> u64 {
        let n = self.layers();
        let layers: u64 = self.layer_bytes[start.min(n) as usize..end.min(n) as usize]
            .iter()
            .sum();
        let kv =
            self.kv_bytes_per_token * u64::from(end.saturating_sub(start)) * u64::from(context);
        let embedding = if start == 0 { self.embedding_bytes } else { 0 };
        let head = if end == n { self.head_bytes } else { 0 };
        layers + kv + embedding + head
    }

    /// Bytes the whole model needs with a cache of `context` positions.
    pub fn whole_bytes(&self, context: u32) -> u64 {
        self.stage_bytes(0, self.layers(), context)
    }
}

/// Measured decode speed of one model on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpeed {
    pub digest: String,
    pub tokens_per_s: f32,
}

impl Card {
    /// Bytes free for models: the free memory of its best device, within what it offers.
    pub fn memory_free(&self) -> u64 {
        let free = self.free_memory();
        match self.max_memory {
            Some(cap) => free.min(cap.saturating_sub(self.memory_used)),
            None => free,
        }
    }

    /// Free memory of the device a model would run on: the largest free GPU memory, else RAM.
    pub fn free_memory(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.free_memory)
            .max()
            .unwrap_or(0)
    }

    /// The cached model with this digest.
    pub fn model(&self, digest: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|m| m.digest == digest)
    }

    /// Measured tokens/s for a model, if any.
    pub fn speed(&self, digest: &str) -> Option<f32> {
        self.speeds
            .iter()
            .find(|s| s.digest == digest)
            .map(|s| s.tokens_per_s)
    }
}
