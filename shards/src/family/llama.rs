//! Llama family (Llama 2/3, SmolLM, Mistral-style GGUFs): pre-norm blocks, SwiGLU MLP,
//! interleaved rope (llama.cpp permutes Q/K weights at conversion for it).

use super::{Common, FamilyAdapter};
use crate::error::Result;
use crate::gguf::Gguf;
use crate::spec::{LayerSpec, ModelSpec};

/// The `llama` architecture.
pub struct Llama;

impl FamilyAdapter for Llama {
    const ARCHITECTURE: &'static str = "llama";

    fn spec(gguf: &Gguf) -> Result<ModelSpec> {
        let c = Common::read(gguf)?;
        let rope_dims = gguf
            .get_usize("llama.rope.dimension_count")
            .unwrap_or(c.head_dim);
        let layers = vec![
            LayerSpec {
                rope_base: c.rope_base,
                window: None
            };
            c.layers
        ];
        Ok(ModelSpec {
            rope_dims,
            ..c.base_spec(layers)
        })
    }
}
