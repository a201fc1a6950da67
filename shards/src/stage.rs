//! A stage: a contiguous range of a model's layers, plus the token embedding when it starts at
//! layer 0 and the final norm and output head when it ends at the last layer. A whole model is
//! the stage `0..n_layers`. Stages of a split, run one after another, compute exactly what the
//! whole model computes.

use std::ops::Range;
use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use rayon::ThreadPool;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};
use crate::gpu::part::{DeviceCache, Part};
use crate::gpu::{AdapterInfo, Gpu};
use crate::kv_cache::{sized, KvCache};
use crate::quant::{GgmlType, QMatrix};
use crate::spec::ModelSpec;
use crate::{kernels, ops, quant};

/// What a stage consumes.
#[derive(Debug, Clone, Copy)]
pub enum StageInput<'a> {
    /// Token ids (first stage only).
    Tokens(&'a [u32]),
    /// Hidden states from the previous stage, `n × dim` floats.
    Hidden(&'a [f32]),
}

/// What a stage produced in the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOutput {
    /// `n × dim` hidden states for the next stage.
    Hidden,
    /// Logits over the vocabulary for the last input position.
    Logits,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
    post_ffn_norm: Option<Vec<f32>>,
}

struct Head {
    norm: Vec<f32>,
    output: QMatrix,
}

/// Where a stage's layers run.
#[derive(Debug, Clone, Default)]
pub enum Placement {
    #[default]
    Cpu,
    /// The stage's last `layers` layers, and its head when it ends the model, on the GPU; the
    /// rest (with the embedding) on the CPU, in this process. When `layers` covers the stage,
    /// all of it is on the GPU, embedding included.
    Gpu { gpu: Arc<Gpu>, layers: usize },
}

/// Weights of a layer range, ready to run: on the CPU, on a GPU, or its first layers on the
/// CPU and the rest on a GPU (the CPU part hands its hidden states to the GPU part).
pub struct Stage {
    spec: Arc<ModelSpec>,
    range: Range<usize>,
    /// The CPU part: the embedding when the stage starts the model and the GPU does not hold
    /// it, layers `range.start..` up to the GPU part's first, the head when there is no GPU part.
    embedding: Option<QMatrix>,
    layers: Vec<Layer>,
    head: Option<Head>,
    gpu: Option<Part>,
    pool: Arc<ThreadPool>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Stage({} layers {:?}",
            self.spec.architecture, self.range
        )?;
        match &self.gpu {
            Some(part) => write!(f, ", {part:?})"),
            None => write!(f, ")"),
        }
    }
}

pub(crate) fn load_vector(gguf: &Gguf, name: &str, len: usize) -> Result<Vec<f32>> {
    let info: &TensorInfo = gguf.tensor(name)?;
    if info.dims.iter().product::<usize>() != len {
        return Err(Error::BadShape {
            name: name.to_owned(),
            found: info.dims.clone(),
            expected: vec![len],
        });
    }
    let bytes = gguf.tensor_bytes(info);
    match info.ty {
        GgmlType::F32 => Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect()),
        GgmlType::F16 => Ok(bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32())
            .collect()),
        other => Err(Error::UnsupportedTensorType {
            name: name.to_owned(),
            ty: other.to_string(),
            supported: "F32, F16 (norm weights)".to_owned(),
        }),
    }
}

/// Byte ranges in the file of the tensors a stage holding `layers` of an `n_layers`-layer model
/// reads (what [`Stage::load`] loads): its blocks, the token embedding when it is first (or last,
/// with tied embeddings), the output norm and matrix when it is last, and any other tensor outside
/// the blocks. What a node fetches to run only its part of a split.
pub fn tensor_ranges(gguf: &Gguf, layers: Range<usize>, n_layers: usize) -> Vec<Range<u64>> {
    let first = layers.start == 0;
    let last = layers.end == n_layers;
    let tied = !gguf.tensors.contains_key("output.weight");
    let mut out: Vec<Range<u64>> = gguf
        .tensors
        .values()
        .filter(|t| {
            if let Some(rest) = t.name.strip_prefix("blk.") {
                return rest
                    .split('.')
                    .next()
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|i| layers.contains(&i));
            }
            match t.name.as_str() {
                "token_embd.weight" => first || (last && tied),
                "output.weight" | "output_norm.weight" => last,
                _ => true,
            }
        })
        .map(|t| t.offset as u64..(t.offset + t.len) as u64)
        .collect();
    out.sort_by_key(|r| r.start);
    out
}

impl Stage {
    /// Builds the stage holding `range` of the model's layers on the CPU, reading only its
    /// tensors.
    pub fn load(
        gguf: &Gguf,
        spec: Arc<ModelSpec>,
        range: Range<usize>,
        pool: Arc<ThreadPool>,
    ) -> Result<Self> {
        Self::load_placed(gguf, spec, range, pool, Placement::Cpu)
    }

    /// Builds the stage holding `range`, placed as `placement` says.
    pub fn load_placed(
        gguf: &Gguf,
        spec: Arc<ModelSpec>,
        range: Range<usize>,
        pool: Arc<ThreadPool>,
        placement: Placement,
    ) -> Result<Self> {
        let n_layers = spec.n_layers();
        if range.start >= range.end || range.end > n_layers {
            return Err(Error::BadLayerRange {
                start: range.start,
                end: range.end,
                layers: n_layers,
            });
        }
        let s = &spec;
        // Matrices that only multiply are repacked for the eight-row kernels; the embedding is
        // read a row at a time and stays as the file has it.
        let weight = |name: &str, cols: usize, rows: usize| {
            QMatrix::load_exact(gguf, name, cols, rows).map(QMatrix::pack)
        };
        let first = range.start == 0;
        let last = range.end == n_layers;
        let gpu = match placement {
            Placement::Gpu { gpu, layers } if layers > 0 || last => {
                let start = range.end - layers.min(range.len());
                Some(Part::load(&gpu, gguf, spec.clone(), start..range.end)?)
            }
            _ => None,
        };
        let cpu_end = gpu.as_ref().map_or(range.end, |p| p.layers().start);
        let embedding = if first && cpu_end > 0 {
            Some(QMatrix::load_exact(
                gguf,
                "token_embd.weight",
                s.dim,
                s.vocab,
            )?)
        } else {
            None
        };
        let layers = (range.start..cpu_end)
            .map(|i| {
                let t = |n: &str| format!("blk.{i}.{n}.weight");
                let optional = |n: &str, len: usize, want: bool| -> Result<Option<Vec<f32>>> {
                    want.then(|| load_vector(gguf, &t(n), len)).transpose()
                };
                Ok(Layer {
                    attn_norm: load_vector(gguf, &t("attn_norm"), s.dim)?,
                    wq: weight(&t("attn_q"), s.dim, s.q_dim())?,
                    wk: weight(&t("attn_k"), s.dim, s.kv_dim())?,
                    wv: weight(&t("attn_v"), s.dim, s.kv_dim())?,
                    wo: weight(&t("attn_output"), s.q_dim(), s.dim)?,
                    q_norm: optional("attn_q_norm", s.head_dim, s.qk_norm)?,
                    k_norm: optional("attn_k_norm", s.head_dim, s.qk_norm)?,
                    post_attn_norm: optional("post_attention_norm", s.dim, s.post_norms)?,
                    ffn_norm: load_vector(gguf, &t("ffn_norm"), s.dim)?,
                    gate: weight(&t("ffn_gate"), s.dim, s.ffn_dim)?,
                    up: weight(&t("ffn_up"), s.dim, s.ffn_dim)?,
                    down: weight(&t("ffn_down"), s.ffn_dim, s.dim)?,
                    post_ffn_norm: optional("post_ffw_norm", s.dim, s.post_norms)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = if last && gpu.is_none() {
            // Tied embeddings: models without an output matrix reuse the token embedding.
            let name = if gguf.tensors.contains_key("output.weight") {
                "output.weight"
            } else {
                "token_embd.weight"
            };
            Some(Head {
                norm: load_vector(gguf, "output_norm.weight", s.dim)?,
                output: weight(name, s.dim, s.vocab)?,
            })
        } else {
            None
        };
        Ok(Stage {
            spec,
            range,
            embedding,
            layers,
            head,
            gpu,
            pool,
        })
    }

    /// The GPU this stage runs on, and the layers it holds there (with the head when the stage
    /// ends the model, and the embedding when it holds every layer of a first stage).
    pub fn gpu(&self) -> Option<(&AdapterInfo, Range<usize>)> {
        self.gpu.as_ref().map(|p| (p.gpu().info(), p.layers()))
    }

    /// Weight bytes the stage keeps on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.gpu.as_ref().map_or(0, Part::bytes)
    }

    /// Whether the CPU part has any work: layers, or the embedding lookup.
    fn runs_on_cpu(&self) -> bool {
        !self.layers.is_empty() || self.embedding.is_some()
    }

    /// The layers this stage holds.
    pub fn layers(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The model's spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Whether this stage ends with the output head (produces logits).
    pub fn is_last(&self) -> bool {
        self.range.end == self.spec.n_layers()
    }

    /// Whether this stage starts with the embedding (takes tokens).
    pub fn is_first(&self) -> bool {
        self.range.start == 0
    }

    /// A fresh per-session cache for up to `capacity` positions (capped at the model's context).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let capacity = capacity.clamp(1, self.spec.context);
        let mut cache = KvCache::new(self.layers.len(), self.spec.kv_dim(), capacity);
        cache.device = self.gpu.as_ref().map(|p| p.new_cache(capacity));
        cache
    }

    /// Runs the stage on `input` at the cache's next positions, appending them to the cache.
    /// `out` receives `n × dim` hidden states, or the last position's logits on the last stage.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        input: StageInput<'_>,
        out: &mut Vec<f32>,
    ) -> Result<StageOutput> {
        let dim = self.spec.dim;
        let n = match input {
            StageInput::Tokens(tokens) => {
                if !self.is_first() {
                    return Err(Error::BadStageInput(format!(
                        "stage {:?} starts mid-model and takes hidden states, not tokens",
                        self.range
                    )));
                }
                self.check_tokens(tokens)?;
                tokens.len()
            }
            StageInput::Hidden(h) => {
                if self.is_first() {
                    return Err(Error::BadStageInput(
                        "the first stage takes token ids, not hidden states".into(),
                    ));
                }
                if h.len() % dim != 0 {
                    return Err(Error::BadStageInput(format!(
                        "{} floats is not a whole number of {dim}-wide rows",
                        h.len()
                    )));
                }
                h.len() / dim
            }
        };
        if n == 0 {
            return Err(Error::BadStageInput("no positions to run".into()));
        }
        self.check_cache(cache, n)?;
        let rows = Rows::Contiguous { pos0: cache.len };
        let kind = self.run_parts(
            std::slice::from_mut(&mut &mut *cache),
            &rows,
            input,
            n,
            out,
            false,
        )?;
        cache.len += n;
        Ok(kind)
    }

    /// Runs the CPU part, then the GPU part on its hidden states.
    #[allow(clippy::too_many_arguments)]
    fn run_parts(
        &self,
        caches: &mut [&mut KvCache],
        rows: &Rows,
        input: StageInput<'_>,
        n: usize,
        out: &mut Vec<f32>,
        all_logits: bool,
    ) -> Result<StageOutput> {
        let Some(part) = &self.gpu else {
            return Ok(self
                .pool
                .install(|| self.run(caches, rows, input, n, out, all_logits)));
        };
        let hidden;
        let input = if self.runs_on_cpu() {
            self.pool
                .install(|| self.run(caches, rows, input, n, out, all_logits));
            hidden = std::mem::take(out);
            StageInput::Hidden(&hidden)
        } else {
            input
        };
        let at: Vec<(usize, usize)> = (0..n).map(|t| rows.at(t)).collect();
        let mut device: Vec<&mut DeviceCache> = caches
            .iter_mut()
            .map(|c| c.device.as_mut().expect("checked in check_cache"))
            .collect();
        part.run(&mut device, &at, input, all_logits, out)?;
        Ok(if self.is_last() {
            StageOutput::Logits
        } else {
            StageOutput::Hidden
        })
    }

    /// One decoding step for several sessions at once: session `i` feeds `tokens[i]` at its
    /// cache's next position and gets its logits in `logits[i * vocab..(i + 1) * vocab]`. Every
    /// weight is read once for the whole step, and each session's logits are bit-identical to
    /// what [`Stage::forward`] gives it alone. Needs a whole-model stage.
    pub fn decode_batch(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if !(self.is_first() && self.is_last()) {
            return Err(Error::BadStageInput(format!(
                "batched decoding needs the whole model, not layers {:?}",
                self.range
            )));
        }
        self.step_batch(caches, StageInput::Tokens(tokens), logits)
    }

    /// One step for several sessions of this stage at once, one row each: session `i` feeds
    /// token `i` (first stage) or hidden row `i` at its cache's next position, and `out` gets
    /// one row per session: logits on the last stage, hidden states otherwise. Every weight is
    /// read once for the whole step; each session's row is bit-identical to what
    /// [`Stage::forward`] gives it alone.
    pub fn step_batch(
        &self,
        caches: &mut [&mut KvCache],
        input: StageInput<'_>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let rows = match input {
            StageInput::Tokens(tokens) => {
                if !self.is_first() {
                    return Err(Error::BadStageInput(format!(
                        "stage {:?} starts mid-model and takes hidden states, not tokens",
                        self.range
                    )));
                }
                self.check_tokens(tokens)?;
                tokens.len()
            }
            StageInput::Hidden(h) => {
                if self.is_first() {
                    return Err(Error::BadStageInput(
                        "the first stage takes token ids, not hidden states".into(),
                    ));
                }
                if h.len() != caches.len() * self.spec.dim {
                    return Err(Error::BadStageInput(format!(
                        "{} floats for {} sessions of {}-wide rows",
                        h.len(),
                        caches.len(),
                        self.spec.dim
                    )));
                }
                caches.len()
            }
        };
        if caches.is_empty() || caches.len() != rows {
            let what = match input {
                StageInput::Tokens(_) => "tokens",
                StageInput::Hidden(_) => "rows",
            };
            return Err(Error::BadStageInput(format!(
                "{} sessions but {rows} {what}",
                caches.len()
            )));
        }
        for cache in caches.iter() {
            self.check_cache(cache, 1)?;
        }
        let positions = Rows::Sessions(caches.iter().map(|c| c.len).collect());
        self.run_parts(caches, &positions, input, rows, out, true)?;
        caches.iter_mut().for_each(|c| c.len += 1);
        Ok(())
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.spec.vocab) {
            Some(bad) => Err(Error::BadStageInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.spec.vocab
            ))),
            None => Ok(()),
        }
    }

    /// Checks `cache` belongs to this stage and has room for `n` more positions.
    fn check_cache(&self, cache: &KvCache, n: usize) -> Result<()> {
        let device_matches = match (&self.gpu, &cache.device) {
            (Some(part), Some(device)) => part.owns(device),
            (None, None) => true,
            _ => false,
        };
        if cache.layers.len() != self.layers.len() || !device_matches {
            return Err(Error::BadStageInput(
                "cache was made for a different stage".into(),
            ));
        }
        if cache.len + n > cache.capacity {
            return Err(Error::ContextOverflow {
                prompt: cache.len + n,
                context: cache.capacity,
            });
        }
        Ok(())
    }

    /// Runs `n` rows through the stage. Row `t` belongs to the cache and position `rows.at(t)`;
    /// the first cache's scratch buffers serve the whole step.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        caches: &mut [&mut KvCache],
        rows: &Rows,
        input: StageInput<'_>,
        n: usize,
        out: &mut Vec<f32>,
        all_logits: bool,
    ) -> StageOutput {
        // Taken out for the step so the caches' layers can be borrowed beside it.
        let mut scratch = std::mem::take(&mut caches[0].scratch);
        let s = &mut scratch;
        let spec = &*self.spec;
        let dim = spec.dim;
        let x = sized(&mut s.x, n * dim);
        match input {
            StageInput::Tokens(tokens) => {
                let emb = self.embedding.as_ref().expect("checked in forward");
                for (row, &t) in x.chunks_exact_mut(dim).zip(tokens) {
                    emb.row_to_f32(t as usize, row);
                    if let Some(scale) = spec.embed_scale {
                        row.iter_mut().for_each(|v| *v *= scale);
                    }
                }
            }
            StageInput::Hidden(h) => x.copy_from_slice(h),
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let layer_spec = spec.layers[self.range.start + li];
            let x = &mut s.x[..n * dim];
            let xn = sized(&mut s.xn, n * dim);
            ops::rms_norm_rows(x, &layer.attn_norm, spec.norm_eps, xn);
            let q = sized(&mut s.q, n * spec.q_dim());
            let k = sized(&mut s.k, n * spec.kv_dim());
            let v = sized(&mut s.v, n * spec.kv_dim());
            quant::matmul_shared(
                [&layer.wq, &layer.wk, &layer.wv],
                xn,
                [q, k, v],
                &mut s.quant,
            );
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                ops::rms_norm_rows_in_place(q, qn, spec.norm_eps);
                ops::rms_norm_rows_in_place(k, kn, spec.norm_eps);
            }
            let half = spec.rope_dims / 2;
            let cos = sized(&mut s.cos, half);
            let sin = sized(&mut s.sin, half);
            for t in 0..n {
                ops::rope_angles(rows.at(t).1, layer_spec.rope_base, spec.rope_dims, cos, sin);
                for head in
                    q[t * spec.q_dim()..(t + 1) * spec.q_dim()].chunks_exact_mut(spec.head_dim)
                {
                    ops::rope_apply(head, spec.rope_style, cos, sin);
                }
                for head in
                    k[t * spec.kv_dim()..(t + 1) * spec.kv_dim()].chunks_exact_mut(spec.head_dim)
                {
                    ops::rope_apply(head, spec.rope_style, cos, sin);
                }
            }
            let kv = spec.kv_dim();
            for t in 0..n {
                let (ci, p) = rows.at(t);
                let lc = &mut caches[ci].layers[li];
                lc.k[p * kv..(p + 1) * kv].convert_from_f32_slice(&k[t * kv..(t + 1) * kv]);
                lc.v[p * kv..(p + 1) * kv].convert_from_f32_slice(&v[t * kv..(t + 1) * kv]);
            }
            let att = sized(&mut s.att, n * spec.q_dim());
            let views: &[&mut KvCache] = caches;
            let layer_kv = |ci: usize| (&views[ci].layers[li].k[..], &views[ci].layers[li].v[..]);
            attention(spec, layer_spec.window, rows, layer_kv, q, att, &mut s.attn);
            let o = sized(&mut s.o, n * dim);
            layer.wo.matmul(att, o, &mut s.quant);
            if let Some(pn) = &layer.post_attn_norm {
                ops::rms_norm_rows_in_place(o, pn, spec.norm_eps);
            }
            x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);

            ops::rms_norm_rows(x, &layer.ffn_norm, spec.norm_eps, xn);
            let gate = sized(&mut s.gate, n * spec.ffn_dim);
            let up = sized(&mut s.up, n * spec.ffn_dim);
            quant::matmul_shared([&layer.gate, &layer.up], xn, [gate, up], &mut s.quant);
            ops::gated_activation(gate, up, spec.activation);
            layer.down.matmul(gate, o, &mut s.quant);
            if let Some(pn) = &layer.post_ffn_norm {
                ops::rms_norm_rows_in_place(o, pn, spec.norm_eps);
            }
            x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);
        }
        let x = &s.x[..n * dim];
        let kind = match &self.head {
            Some(head) => {
                // Logits for every row in a batched step; for the last row only otherwise.
                let first = if all_logits { 0 } else { n - 1 };
                let xn = sized(&mut s.xn, (n - first) * dim);
                ops::rms_norm_rows(&x[first * dim..], &head.norm, spec.norm_eps, xn);
                out.resize((n - first) * spec.vocab, 0.0);
                head.output.matmul(xn, out, &mut s.quant);
                StageOutput::Logits
            }
            None => {
                out.clear();
                out.extend_from_slice(x);
                StageOutput::Hidden
            }
        };
        caches[0].scratch = scratch;
        kind
    }
}

/// Where each row of a step goes: consecutive positions of one cache (a prompt, a decode step),
/// or one row per session cache at that cache's next position (a batched decode step).
enum Rows {
    Contiguous { pos0: usize },
    Sessions(Vec<usize>),
}

impl Rows {
    /// (cache index, position) of row `t`.
    fn at(&self, t: usize) -> (usize, usize) {
        match self {
            Rows::Contiguous { pos0 } => (0, pos0 + t),
            Rows::Sessions(positions) => (t, positions[t]),
        }
    }
}

/// Consecutive prompt tokens whose attention is done together (their query heads that share a key
/// head meet each key and value once).
const TOKEN_BLOCK: usize = 8;

/// Causal (optionally sliding-window) grouped-query attention for each row, whose keys and
/// values are already in its cache (`layer_kv(cache index)`). Like llama.cpp's default path, the
/// query meets the f16 keys as f16, and the attention weights meet the f16 values as f16.
///
/// The query heads that share a key head — of up to `TOKEN_BLOCK` consecutive tokens of a prompt
/// — are done together, reading each key and value once for all of them, tile by tile. Each
/// head's result is bit-identical to doing it alone: a token's scores past its own position (or
/// before its window) are computed but not used, and its weights there are zero, which leaves
/// its sums exactly as they were.
fn attention<'c>(
    spec: &ModelSpec,
    window: Option<usize>,
    rows: &Rows,
    layer_kv: impl Fn(usize) -> (&'c [f16], &'c [f16]) + Sync,
    q: &[f32],
    att: &mut [f32],
    scratch: &mut AttnScratch,
) {
    let hd = spec.head_dim;
    let group = spec.heads / spec.kv_heads;
    let kv = spec.kv_dim();
    let q_dim = spec.q_dim();
    let block = match rows {
        Rows::Contiguous { .. } => TOKEN_BLOCK,
        Rows::Sessions(_) => 1,
    };
    // One unit: the tokens of block b (one cache), every key head.
    let one = |b: usize, out: &mut [f32], s: &mut AttnScratch| {
        let t0 = b * block;
        let tokens = out.len() / q_dim;
        let span = |t: usize| {
            let (ci, p) = rows.at(t);
            (ci, window.map_or(0, |w| (p + 1).saturating_sub(w)), p)
        };
        let (ci, lo, _) = span(t0);
        let (_, _, hi) = span(t0 + tokens - 1);
        let len = hi + 1 - lo;
        let (k_cache, v_cache) = layer_kv(ci);
        let m = tokens * group;
        for g in 0..spec.kv_heads {
            let qs = sized(&mut s.q, m * hd);
            for (t, qt) in qs.chunks_exact_mut(group * hd).enumerate() {
                let at = (t0 + t) * q_dim + g * group * hd;
                qt.copy_from_slice(&q[at..at + group * hd]);
            }
            kernels::round_f16(qs);
            let sc = sized(&mut s.scores, m * len);
            let first = lo * kv + g * hd;
            kernels::scores_f16_rows(&k_cache[first..], kv, qs, hd, spec.attn_scale, sc);
            for (t, rows_t) in sc.chunks_exact_mut(group * len).enumerate() {
                let (_, start, p) = span(t0 + t);
                for row in rows_t.chunks_exact_mut(len) {
                    let (before, rest) = row.split_at_mut(start - lo);
                    let (own, after) = rest.split_at_mut(p + 1 - start);
                    kernels::softmax(own);
                    kernels::round_f16(own);
                    before.fill(0.0);
                    after.fill(0.0);
                }
            }
            let o = sized(&mut s.out, m * hd);
            kernels::weighted_sum_f16_rows(&v_cache[first..], kv, sc, o, hd);
            for (t, ot) in o.chunks_exact(group * hd).enumerate() {
                let at = t * q_dim + g * group * hd;
                out[at..at + group * hd].copy_from_slice(ot);
            }
        }
    };
    let unit = block * q_dim;
    let n_rows = att.len() / hd;
    if n_rows * (rows.at(n_rows / spec.heads - 1).1 + 1) < 4096 {
        // Short decode steps: threads would cost more than they save.
        for (b, out) in att.chunks_mut(unit).enumerate() {
            one(b, out, scratch);
        }
    } else {
        att.par_chunks_mut(unit)
            .enumerate()
            .for_each_init(AttnScratch::default, |s, (b, out)| one(b, out, s));
    }
}

/// Buffers one unit of attention needs.
#[derive(Default)]
pub(crate) struct AttnScratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
}
