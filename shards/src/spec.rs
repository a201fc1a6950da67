//! The shape of a transformer as the engine runs it: sizes plus every per-family switch
//! (norm placement, activation, rope style, per-layer rope base and attention window).

/// Activation inside the gated MLP: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation.
    GeluTanh,
}

/// How rotary embeddings pair up dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])` (llama.cpp's "normal" rope; llama GGUFs are permuted for it).
    Interleaved,
    /// Halves `(x[i], x[i + d/2])` (GPT-NeoX style; Gemma, Qwen).
    Halves,
}

/// Per-layer attention settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSpec {
    pub rope_base: f32,
    /// Sliding window: a query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
}

/// Everything needed to build and run a model's layers.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// GGUF `general.architecture`.
    pub architecture: String,
    pub dim: usize,
    pub ffn_dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub vocab: usize,
    pub norm_eps: f32,
    pub rope_style: RopeStyle,
    /// Leading dimensions of each head that are rotated.
    pub rope_dims: usize,
    pub activation: Activation,
    /// Multiplier applied to token embeddings (Gemma: sqrt(dim)).
    pub embed_scale: Option<f32>,
    /// Multiplier on attention scores.
    pub attn_scale: f32,
    /// RMSNorm on each query and key head before rope.
    pub qk_norm: bool,
    /// RMSNorm on the attention and MLP outputs before the residual add (Gemma 2/3).
    pub post_norms: bool,
    pub layers: Vec<LayerSpec>,
}

impl ModelSpec {
    /// Number of transformer blocks.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Width of one key or value row in the cache.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
}
