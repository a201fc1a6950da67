//! A model file opened for inference: its GGUF, spec, tokenizer, chat template and the thread
//! pool its stages run on.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use hearth_protocol::{ModelLayout, Prompt};
use rayon::ThreadPool;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{Error, Result};
use crate::family;
use crate::generate::Generator;
use crate::gguf::{Gguf, Value};
use crate::gpu::{plan, Gpu};
use crate::quant::GgmlType;
use crate::sampling::{SamplingOverrides, SamplingParams};
use crate::spec::ModelSpec;
use crate::stage::{Placement, Stage};
use crate::tokenizer::Tokenizer;

/// What `hearth models list` shows about a file; readable even for unsupported architectures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSummary {
    /// `general.name`, if present.
    pub name: Option<String>,
    pub architecture: String,
    pub quantization: String,
    pub layers: Option<usize>,
    pub context: Option<usize>,
    pub tensors: usize,
    /// Weights in the file (summed over its tensors); 0 in cache entries written before hearth
    /// recorded it.
    #[serde(default)]
    pub parameters: u64,
    /// What its parts weigh, for planning splits; `None` where hearth cannot run the file (and
    /// in cache entries written before hearth recorded it).
    #[serde(default)]
    pub layout: Option<ModelLayout>,
}

impl ModelSummary {
    /// Summarises a parsed GGUF file.
    pub fn of(gguf: &Gguf) -> Result<Self> {
        let architecture = gguf.get_str("general.architecture")?.to_owned();
        let quantization = match gguf
            .metadata
            .get("general.file_type")
            .and_then(Value::as_u64)
        {
            Some(ft) => file_type_name(ft).map(str::to_owned),
            None => None,
        }
        .unwrap_or_else(|| dominant_weight_type(gguf));
        Ok(ModelSummary {
            name: gguf.get_str("general.name").ok().map(str::to_owned),
            layers: gguf.get_usize(&format!("{architecture}.block_count")).ok(),
            context: gguf
                .get_usize(&format!("{architecture}.context_length"))
                .ok(),
            architecture,
            quantization,
            tensors: gguf.tensors.len(),
            parameters: gguf
                .tensors
                .values()
                .map(|t| t.dims.iter().map(|&d| d as u64).product::<u64>())
                .sum(),
            layout: layout(gguf).ok(),
        })
    }
}

/// What each part of a model in a file weighs once loaded (the quantized blocks as stored).
pub fn layout(gguf: &Gguf) -> Result<ModelLayout> {
    let spec = family::spec_for(gguf)?;
    let bytes = |name: &str| gguf.tensor(name).map(|t| t.len as u64);
    let layer_bytes = (0..spec.n_layers())
        .map(|i| {
            let prefix = format!("blk.{i}.");
            gguf.tensors
                .values()
                .filter(|t| t.name.starts_with(&prefix))
                .map(|t| t.len as u64)
                .sum()
        })
        .collect();
    let output = if gguf.tensors.contains_key("output.weight") {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    Ok(ModelLayout {
        layer_bytes,
        embedding_bytes: bytes("token_embd.weight")?,
        head_bytes: bytes(output)? + bytes("output_norm.weight")?,
        // Keys and values, f16 each.
        kv_bytes_per_token: 2 * 2 * spec.kv_dim() as u64,
        dim: spec.dim as u32,
        context: spec.context as u32,
    })
}

/// llama.cpp's `general.file_type` names.
fn file_type_name(ft: u64) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

fn dominant_weight_type(gguf: &Gguf) -> String {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in gguf.tensors.values().filter(|t| t.dims.len() == 2) {
        match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some((_, c)) => *c += 1,
            None => counts.push((t.ty, 1)),
        }
    }
    counts
        .iter()
        .max_by_key(|(_, c)| *c)
        .map_or_else(|| "unknown".to_owned(), |(ty, _)| ty.to_string())
}

/// Threads to use when the caller does not say.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A worker pool for stages.
pub fn thread_pool(threads: usize) -> Result<Arc<ThreadPool>> {
    if threads == 0 || threads > 1024 {
        return Err(Error::BadParameter(format!(
            "threads must be between 1 and 1024, not {threads}"
        )));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("hearth-worker-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::BadParameter(format!("cannot start {threads} worker threads: {e}")))
}

/// An opened model file.
pub struct Model {
    gguf: Arc<Gguf>,
    spec: Arc<ModelSpec>,
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    pool: Arc<ThreadPool>,
    /// The GPU its stages run on, and the device memory they may take (`None`: not known).
    gpu: Option<(Arc<Gpu>, Option<u64>)>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model({})", self.gguf.path.display())
    }
}

impl Model {
    /// Opens `path`, reads its family, tokenizer and template, and makes a pool of `threads`.
    pub fn open(path: &Path, threads: usize) -> Result<Self> {
        let gguf = Gguf::open(path)?;
        Self::from_gguf(gguf, thread_pool(threads)?)
    }

    /// Builds a model from an already parsed file and an existing pool.
    pub fn from_gguf(gguf: Gguf, pool: Arc<ThreadPool>) -> Result<Self> {
        let spec = family::spec_for(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        if tokenizer.vocab_size() != spec.vocab {
            return Err(Error::BadMetadata {
                key: "tokenizer.ggml.tokens".into(),
                reason: format!(
                    "{} tokens but the model has {} embeddings",
                    tokenizer.vocab_size(),
                    spec.vocab
                ),
            });
        }
        let template = ChatTemplate::from_gguf(&gguf, &tokenizer)?;
        Ok(Model {
            gguf: Arc::new(gguf),
            spec: Arc::new(spec),
            tokenizer: Arc::new(tokenizer),
            template: Arc::new(template),
            pool,
            gpu: None,
        })
    }

    /// The parsed file.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// Sizes and per-family settings.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The model's chat template (or the plain-transcript fallback).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Renders `messages` with the chat template, ready for the assistant's reply, and tokenizes
    /// the result (control tokens parsed; BOS added unless the template wrote it).
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        Ok(self.encode_text(&text, true))
    }

    /// Tokenizes raw text the way every interface does: control tokens written in it parsed as
    /// the tokens they name when `parse_special` (as llama.cpp does), and BOS added unless the
    /// text starts with it.
    pub fn encode_text(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let tok = &self.tokenizer;
        let starts_with_bos = parse_special
            && tok
                .bos()
                .and_then(|b| tok.token_text(b))
                .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        tok.encode(text, !starts_with_bos, parse_special)
    }

    /// The tokens of `prompt`, and the stop strings it brings (a chat ends where the template
    /// starts the next turn). The one path from a prompt to tokens, for every interface.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<(Vec<u32>, Vec<String>)> {
        Ok(match prompt {
            Prompt::Chat(messages) => (
                self.chat_prompt(messages)?,
                self.template.stop_strings().to_vec(),
            ),
            Prompt::Text {
                text,
                parse_special,
            } => (self.encode_text(text, *parse_special), Vec::new()),
        })
    }

    /// The model's own sampling recommendation, where its file has one.
    pub fn recommended_sampling(&self) -> SamplingOverrides {
        crate::sampling::recommended(&self.gguf)
    }

    /// Sampling for a request: its settings where set, else the model's recommendation, else
    /// hearth's defaults; validated.
    pub fn sampling(&self, request: &SamplingOverrides, seed: u64) -> Result<SamplingParams> {
        let p = SamplingParams::resolve(&request.over(&self.recommended_sampling()), seed);
        p.validate()?;
        Ok(p)
    }

    /// Runs this model's stages on `gpu`: all of each stage when it fits in `memory` bytes of
    /// the device (or `memory` is not known), otherwise its last layers on the GPU and the
    /// rest on the CPU (see [`crate::gpu::plan`]).
    pub fn on_gpu(mut self, gpu: Arc<Gpu>, memory: Option<u64>) -> Self {
        self.gpu = Some((gpu, memory));
        self
    }

    /// The GPU the model's stages run on.
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        self.gpu.as_ref().map(|(g, _)| g)
    }

    /// Where the stage holding `layers` runs.
    pub fn placement(&self, layers: Range<usize>) -> Placement {
        let Some((gpu, memory)) = &self.gpu else {
            return Placement::Cpu;
        };
        let Some(sizes) = self.gpu_sizes(layers) else {
            return Placement::Cpu;
        };
        match plan::gpu_layers(&sizes, *memory) {
            Some(layers) => Placement::Gpu {
                gpu: gpu.clone(),
                layers,
            },
            None => Placement::Cpu,
        }
    }

    /// What the stage holding `layers` would put on a GPU, from the file's [`layout`]
    /// (`None` when the file lacks a tensor: the stage's load then says which).
    fn gpu_sizes(&self, layers: Range<usize>) -> Option<plan::Sizes> {
        let s = &*self.spec;
        let l = layout(&self.gguf).ok()?;
        let last = layers.end == s.n_layers();
        let tied = !self.gguf.tensors.contains_key("output.weight");
        // Room for one session's keys and values over a typical context.
        let positions = s.context.min(4096) as u64;
        let rows = crate::gpu::part::MAX_ROWS as u64;
        let widths = (3 * s.dim + 2 * s.q_dim() + 2 * s.kv_dim() + 2 * s.ffn_dim) as u64;
        let logits = 8 * crate::gpu::part::LOGIT_ROWS as u64 * s.vocab as u64;
        Some(plan::Sizes {
            head: if last { l.head_bytes } else { 0 },
            // A tied head holds the embedding already.
            embedding: if layers.start == 0 && !(last && tied) {
                l.embedding_bytes
            } else {
                0
            },
            layers: l.layer_bytes[layers].to_vec(),
            cache_per_layer: positions * l.kv_bytes_per_token,
            fixed: 4 * rows * widths + if last { logits } else { 0 },
        })
    }

    /// Loads the stage holding `layers` on the CPU, whatever the model's GPU.
    pub fn cpu_stage(&self, layers: Range<usize>) -> Result<Stage> {
        Stage::load(&self.gguf, self.spec.clone(), layers, self.pool.clone())
    }

    /// Loads the stage holding `layers`, on the GPU when the model has one (see
    /// [`Model::on_gpu`]).
    pub fn stage(&self, layers: Range<usize>) -> Result<Stage> {
        let placement = self.placement(layers.clone());
        Stage::load_placed(
            &self.gguf,
            self.spec.clone(),
            layers,
            self.pool.clone(),
            placement,
        )
    }

    /// Loads the whole model as one stage.
    pub fn full_stage(&self) -> Result<Stage> {
        self.stage(0..self.spec.n_layers())
    }

    /// A generator over the whole model with a context of `context` positions (0: the model's).
    pub fn generator(&self, context: usize) -> Result<Generator> {
        let ctx = if context == 0 {
            self.spec.context
        } else {
            context.min(self.spec.context)
        };
        Generator::new(Arc::new(self.full_stage()?), self.tokenizer.clone(), ctx)
    }
}
