//! Model families. Each family is one adapter file that reads its GGUF metadata into a
//! [`ModelSpec`]; tensor names follow llama.cpp's conventions and are shared by all families.
//! Adding a family means adding a file under `family/` and a line in [`FAMILIES`].

mod gemma3;
mod llama;

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::spec::{Activation, LayerSpec, ModelSpec, RopeStyle};

/// Reads a family's hyperparameters from GGUF metadata.
pub trait FamilyAdapter {
    /// The `general.architecture` value this adapter handles.
    const ARCHITECTURE: &'static str;
    /// Builds the spec, or says which metadata is missing or wrong.
    fn spec(gguf: &Gguf) -> Result<ModelSpec>;
}

type SpecFn = fn(&Gguf) -> Result<ModelSpec>;

/// Every supported family: architecture name and its adapter.
const FAMILIES: &[(&str, SpecFn)] = &[
    (llama::Llama::ARCHITECTURE, llama::Llama::spec),
    (gemma3::Gemma3::ARCHITECTURE, gemma3::Gemma3::spec),
];

/// Names of the supported architectures.
pub fn supported_architectures() -> Vec<&'static str> {
    FAMILIES.iter().map(|(name, _)| *name).collect()
}

/// Builds the spec of a GGUF model with its family's adapter.
pub fn spec_for(gguf: &Gguf) -> Result<ModelSpec> {
    let arch = gguf.get_str("general.architecture")?;
    let (_, spec) = FAMILIES
        .iter()
        .find(|(name, _)| *name == arch)
        .ok_or_else(|| {
            Error::UnsupportedArchitecture(arch.to_owned(), supported_architectures().join(", "))
        })?;
    let spec = spec(gguf)?;
    validate(&spec)?;
    Ok(spec)
}

/// Metadata shared by every family, read under the `{arch}.` prefix.
struct Common {
    arch: String,
    dim: usize,
    ffn_dim: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    context: usize,
    vocab: usize,
    norm_eps: f32,
    rope_base: f32,
}

impl Common {
    fn read(gguf: &Gguf) -> Result<Self> {
        let arch = gguf.get_str("general.architecture")?.to_owned();
        let key = |k: &str| format!("{arch}.{k}");
        let dim = gguf.get_usize(&key("embedding_length"))?;
        let heads = gguf.get_usize(&key("attention.head_count"))?;
        let kv_heads = gguf
            .get_usize(&key("attention.head_count_kv"))
            .unwrap_or(heads);
        if heads == 0
            || !dim.is_multiple_of(heads)
                && !gguf.metadata.contains_key(&key("attention.key_length"))
        {
            return Err(Error::BadMetadata {
                key: key("attention.head_count"),
                reason: format!("{heads} heads for width {dim}"),
            });
        }
        let head_dim = match gguf.get_usize(&key("attention.key_length")) {
            Ok(d) => d,
            Err(_) => dim / heads,
        };
        let vocab = match gguf.get_usize(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => gguf.get_array("tokenizer.ggml.tokens")?.len(),
        };
        Ok(Common {
            dim,
            ffn_dim: gguf.get_usize(&key("feed_forward_length"))?,
            layers: gguf.get_usize(&key("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            context: gguf.get_usize(&key("context_length"))?,
            vocab,
            norm_eps: gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: gguf.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            arch,
        })
    }
}

impl Common {
    /// The plain pre-norm transformer these sizes describe (llama-style); families change what
    /// differs with struct update syntax.
    fn base_spec(self, layers: Vec<LayerSpec>) -> ModelSpec {
        ModelSpec {
            dim: self.dim,
            ffn_dim: self.ffn_dim,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            context: self.context,
            vocab: self.vocab,
            norm_eps: self.norm_eps,
            rope_style: RopeStyle::Interleaved,
            rope_dims: self.head_dim,
            activation: Activation::Silu,
            embed_scale: None,
            attn_scale: 1.0 / (self.head_dim as f32).sqrt(),
            qk_norm: false,
            post_norms: false,
            layers,
            architecture: self.arch,
        }
    }
}

fn validate(spec: &ModelSpec) -> Result<()> {
    let bad = |reason: String| {
        Err(Error::BadMetadata {
            key: format!("{}.*", spec.architecture),
            reason,
        })
    };
    if spec.dim == 0
        || spec.ffn_dim == 0
        || spec.layers.is_empty()
        || spec.vocab == 0
        || spec.context == 0
    {
        return bad(format!("zero-sized model: {spec:?}"));
    }
    if spec.kv_heads == 0 || !spec.heads.is_multiple_of(spec.kv_heads) {
        return bad(format!(
            "{} query heads cannot share {} key/value heads",
            spec.heads, spec.kv_heads
        ));
    }
    if spec.rope_dims > spec.head_dim || !spec.rope_dims.is_multiple_of(2) {
        return bad(format!(
            "rope over {} of {} head dimensions",
            spec.rope_dims, spec.head_dim
        ));
    }
    // Sizes beyond these are not models hearth could hold; refusing them keeps a corrupt header
    // from turning into a giant allocation.
    if spec.dim > 65_536 || spec.head_dim > 1024 || spec.heads > 1024 || spec.layers.len() > 1024 {
        return bad(format!("implausible sizes: {spec:?}"));
    }
    Ok(())
}
