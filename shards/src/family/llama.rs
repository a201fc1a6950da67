//! Llama family (Llama 2/3, SmolLM, Mistral-style GGUFs): pre-norm blocks, SwiGLU MLP,
//! interleaved rope (llama.cpp permutes Q/K weights at conversion for it).

use super::{Common, FamilyAdapter};
use crate::error::Result;
use crate::gguf::Gguf;
use crate::spec::{Activation, LayerSpec, ModelSpec, RopeStyle};

/// The `llama` architecture.
pub struct Llama;

impl FamilyAdapter for Llama {
    const ARCHITECTURE: &'static str = "llama";

    fn spec(gguf: &Gguf) -> Result<ModelSpec> {
        let c = Common::read(gguf)?;
        let rope_dims = gguf.get_usize("llama.rope.dimension_count").unwrap_or(c.head_dim);
        Ok(ModelSpec {
            dim: c.dim,
            ffn_dim: c.ffn_dim,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            context: c.context,
            vocab: c.vocab,
            norm_eps: c.norm_eps,
            rope_style: RopeStyle::Interleaved,
            rope_dims,
            activation: Activation::Silu,
            embed_scale: None,
            attn_scale: 1.0 / (c.head_dim as f32).sqrt(),
            qk_norm: false,
            post_norms: false,
            layers: vec![LayerSpec { rope_base: c.rope_base, window: None }; c.layers],
            architecture: c.arch,
        })
    }
}
