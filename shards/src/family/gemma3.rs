//! Gemma 3: four RMSNorms per block (pre and post, around attention and MLP), QK-norm, GELU-tanh
//! MLP, embeddings scaled by sqrt(dim), rope in halves, and interleaved sliding-window layers
//! (five local layers with rope base 10 000, then one global layer with the file's rope base).
//! GGUF conversion already folds Gemma's `1 + weight` into the norm weights.

use super::{Common, FamilyAdapter};
use crate::error::Result;
use crate::gguf::Gguf;
use crate::spec::{Activation, LayerSpec, ModelSpec, RopeStyle};

/// The `gemma3` architecture.
pub struct Gemma3;

/// Every `PATTERN`-th layer is global; the others use the sliding window.
const DEFAULT_PATTERN: usize = 6;
/// Rope base of the sliding-window layers (fixed by the architecture, not stored in GGUF).
const LOCAL_ROPE_BASE: f32 = 10_000.0;
/// The 27B model is the one size whose query scale is not head_dim^-1/2.
const GEMMA3_27B_LAYERS: usize = 62;

impl FamilyAdapter for Gemma3 {
    const ARCHITECTURE: &'static str = "gemma3";

    fn spec(gguf: &Gguf) -> Result<ModelSpec> {
        let c = Common::read(gguf)?;
        let window = gguf.get_usize("gemma3.attention.sliding_window")?;
        let pattern = gguf
            .get_usize("gemma3.attention.sliding_window_pattern")
            .unwrap_or(DEFAULT_PATTERN)
            .max(1);
        let global_base = c.rope_base;
        let layers = (0..c.layers)
            .map(|i| {
                if (i + 1) % pattern == 0 {
                    LayerSpec {
                        rope_base: global_base,
                        window: None,
                    }
                } else {
                    LayerSpec {
                        rope_base: LOCAL_ROPE_BASE,
                        window: Some(window),
                    }
                }
            })
            .collect();
        let attn_scale = if c.layers == GEMMA3_27B_LAYERS {
            1.0 / ((c.dim / c.heads) as f32).sqrt()
        } else {
            1.0 / (c.head_dim as f32).sqrt()
        };
        let embed_scale = Some((c.dim as f32).sqrt());
        Ok(ModelSpec {
            rope_style: RopeStyle::Halves,
            activation: Activation::GeluTanh,
            embed_scale,
            // Gemma 3 scales queries by query_pre_attn_scalar^-1/2, which equals head_dim for
            // every released size but the 27B (llama.cpp applies the same rule).
            attn_scale,
            qk_norm: true,
            post_norms: true,
            ..c.base_spec(layers)
        })
    }
}
