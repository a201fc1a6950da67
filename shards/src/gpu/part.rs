//! A layer range on the GPU: its weights uploaded once in their block formats, the sessions'
//! caches on the device, and one step through it (a prompt chunk, or one row per session of a
//! batched decode) recorded as one compute pass against bind groups made at load, with one
//! parameter upload and one submission per step.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::gpu::device::Gpu;
use crate::gpu::kernels::{Kernel, PARAMS};
use crate::ops;
use crate::quant::{GgmlType, QMatrix};
use crate::spec::{Activation, ModelSpec, RopeStyle};
use crate::stage::{load_vector, StageInput};

/// Most rows one recorded step takes; a longer prompt runs in chunks of this many.
pub(crate) const MAX_ROWS: usize = 64;
/// Most rows whose logits one step returns; a larger batched step runs in parts.
pub(crate) const LOGIT_ROWS: usize = 16;
/// Positions a session's device cache holds at first; it doubles as its reply grows.
const FIRST_POSITIONS: usize = 256;
/// Dispatches of one layer besides the per-session ones (norms, products, rope, adds).
const LAYER_DISPATCHES: usize = 20;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A weight matrix on the device, as the file stores it.
pub(super) struct Weight {
    /// Consecutive pieces of rows, each within the device's largest binding.
    pub(super) pieces: Vec<Piece>,
    pub(super) kernel: Arc<Kernel>,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
}

impl Weight {
    /// `m` on the device, with the product kernel for its format.
    pub(super) fn upload(gpu: &Gpu, m: &QMatrix) -> Result<Self> {
        let raw = m.raw();
        let row_bytes = raw.len() / m.rows();
        let per_piece = ((gpu.max_buffer() / row_bytes as u64) as usize).clamp(1, m.rows());
        let pieces = (0..m.rows())
            .step_by(per_piece)
            .map(|row0| {
                let rows = per_piece.min(m.rows() - row0);
                let bytes = &raw[row0 * row_bytes..(row0 + rows) * row_bytes];
                Ok(Piece {
                    buf: upload(gpu, m.name(), bytes)?,
                    row0,
                    rows,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Weight {
            pieces,
            kernel: gpu.kernels.matmul(&gpu.device, m.ty())?,
            ty: m.ty(),
            rows: m.rows(),
            cols: m.cols(),
            row_bytes,
        })
    }

    /// One bind group per piece: the piece at binding 1, then `rest`.
    pub(super) fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        rest: &[(u32, &wgpu::Buffer)],
    ) -> Vec<wgpu::BindGroup> {
        self.pieces
            .iter()
            .map(|piece| {
                let mut bufs = vec![(1, &piece.buf)];
                bufs.extend_from_slice(rest);
                group(gpu, &self.kernel, params, &bufs)
            })
            .collect()
    }

    /// The embedding lookup over the same buffer.
    pub(super) fn lookup(&self, gpu: &Gpu) -> Result<Self> {
        Ok(Weight {
            pieces: self.pieces.clone(),
            kernel: gpu.kernels.get_rows(&gpu.device, self.ty)?,
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            row_bytes: self.row_bytes,
        })
    }

    /// Records the embedding lookup of `n` tokens (one dispatch per piece).
    pub(super) fn record_lookup<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        groups: &'a [wgpu::BindGroup],
        n: usize,
        scale: f32,
    ) {
        for (piece, g) in self.pieces.iter().zip(groups) {
            let p = [
                self.cols as u32,
                self.row_bytes as u32,
                scale.to_bits(),
                piece.row0 as u32,
                piece.rows as u32,
                0,
                0,
                0,
            ];
            rec.push(&self.kernel, g, p, [n as u32, 1, 1]);
        }
    }
}

/// Rows `row0..row0 + rows` of a weight.
#[derive(Clone)]
pub(super) struct Piece {
    pub(super) buf: wgpu::Buffer,
    row0: usize,
    rows: usize,
}

/// A weight and its bind groups (one per piece) against a step's buffers.
pub(super) type Bound = (Weight, Vec<wgpu::BindGroup>);

/// One layer's bind groups: its weights against the step's activation buffers.
struct LayerGroups {
    attn_norm: wgpu::BindGroup,
    q: Bound,
    k: Bound,
    v: Bound,
    q_norm: Option<wgpu::BindGroup>,
    k_norm: Option<wgpu::BindGroup>,
    rope_q: wgpu::BindGroup,
    rope_k: wgpu::BindGroup,
    o: Bound,
    post_attn_norm: Option<wgpu::BindGroup>,
    residual: wgpu::BindGroup,
    ffn_norm: wgpu::BindGroup,
    gate: Bound,
    up: Bound,
    gated: wgpu::BindGroup,
    down: Bound,
    post_ffn_norm: Option<wgpu::BindGroup>,
}

/// Activation buffers of one step (`MAX_ROWS` rows each), shared by every step of the part:
/// one step runs at a time.
struct Work {
    params: wgpu::Buffer,
    x: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    att: wgpu::Buffer,
    tokens: wgpu::Buffer,
    pos: wgpu::Buffer,
    angles: wgpu::Buffer,
    logits: Option<wgpu::Buffer>,
    staging: wgpu::Buffer,
}

/// Layers `range` of a model on the device, with the embedding when it starts the model and
/// the head when it ends it.
pub(crate) struct Part {
    id: u64,
    gpu: Arc<Gpu>,
    spec: Arc<ModelSpec>,
    range: Range<usize>,
    embedding: Option<Bound>,
    layers: Vec<LayerGroups>,
    head: Option<(wgpu::BindGroup, Bound)>,
    /// Distinct rope bases, and each layer's index among them.
    bases: Vec<f32>,
    layer_base: Vec<usize>,
    work: Mutex<Work>,
    bytes: u64,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gpu::Part({:?} on {})", self.range, self.gpu.info())
    }
}

/// One layer of a session's cache on the device.
struct CacheLayer {
    store: wgpu::BindGroup,
    attend: wgpu::BindGroup,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
}

/// A session's keys and values (f16) for a part's layers, grown as positions are written.
pub(crate) struct DeviceCache {
    part: u64,
    capacity: usize,
    positions: usize,
    layers: Vec<CacheLayer>,
}

/// Bytes between two dispatches' parameter blocks.
fn param_slot(gpu: &Gpu) -> u64 {
    u64::from(
        gpu.device
            .limits()
            .min_uniform_buffer_offset_alignment
            .max(PARAMS as u32),
    )
}

/// A uniform buffer of `slots` parameter blocks.
pub(super) fn params_buffer(gpu: &Gpu, slots: usize) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("params"),
        size: slots as u64 * param_slot(gpu),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// A buffer results are read back through, for up to `floats` values.
pub(super) fn staging(gpu: &Gpu, floats: usize) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("staging"),
        size: (floats.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

pub(super) fn storage(
    gpu: &Gpu,
    label: &str,
    bytes: usize,
    extra: wgpu::BufferUsages,
) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4).next_multiple_of(4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra,
        mapped_at_creation: false,
    })
}

pub(super) fn upload(gpu: &Gpu, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
    let size = bytes.len().max(4).next_multiple_of(4) as u64;
    if size > gpu.max_buffer() {
        return Err(Error::Gpu(format!(
            "{label} takes {} MB, more than the largest buffer {} takes ({} MB)",
            size >> 20,
            gpu.info(),
            gpu.max_buffer() >> 20
        )));
    }
    let buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: true,
    });
    buf.slice(..)
        .get_mapped_range_mut()
        .slice(..bytes.len())
        .copy_from_slice(bytes);
    buf.unmap();
    Ok(buf)
}

pub(super) fn group(
    gpu: &Gpu,
    k: &Kernel,
    params: &wgpu::Buffer,
    bufs: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: params,
            offset: 0,
            size: wgpu::BufferSize::new(PARAMS),
        }),
    }];
    entries.extend(bufs.iter().map(|&(binding, buf)| wgpu::BindGroupEntry {
        binding,
        resource: buf.as_entire_binding(),
    }));
    gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &k.layout,
        entries: &entries,
    })
}

/// The dispatches of one step and their parameter blocks.
pub(super) struct Recorder<'a> {
    lanes: u32,
    slot: u64,
    params: Vec<u8>,
    dispatches: Vec<(
        &'a wgpu::ComputePipeline,
        &'a wgpu::BindGroup,
        u32,
        [u32; 3],
    )>,
}

impl<'a> Recorder<'a> {
    pub(super) fn new(gpu: &Gpu) -> Self {
        Recorder {
            lanes: gpu.kernels.lanes,
            slot: param_slot(gpu),
            params: Vec::new(),
            dispatches: Vec::new(),
        }
    }

    pub(super) fn push(
        &mut self,
        k: &'a Kernel,
        g: &'a wgpu::BindGroup,
        p: [u32; 8],
        grid: [u32; 3],
    ) {
        let at = self.params.len();
        self.params.resize(at + self.slot as usize, 0);
        for (i, v) in p.iter().enumerate() {
            self.params[at + 4 * i..at + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        self.dispatches.push((&k.pipeline, g, at as u32, grid));
    }

    /// `y[t * rows + r] = sum_c W[r][c] * x[x_off + t * cols + c]` for `n` input rows.
    pub(super) fn matmul(&mut self, (w, groups): &'a Bound, n: usize, x_off: usize) {
        let per_workgroup = 64 / self.lanes as usize;
        for (piece, g) in w.pieces.iter().zip(groups) {
            let workgroups = piece.rows.div_ceil(per_workgroup);
            let gx = workgroups.min(65_535);
            let p = [
                piece.rows as u32,
                w.cols as u32,
                n as u32,
                w.row_bytes as u32,
                x_off as u32,
                piece.row0 as u32,
                gx as u32,
                w.rows as u32,
            ];
            let grid = [
                gx as u32,
                workgroups.div_ceil(gx) as u32,
                n.div_ceil(4) as u32,
            ];
            self.push(&w.kernel, g, p, grid);
        }
    }

    /// An element-wise kernel over `count` values.
    fn elementwise(&mut self, k: &'a Kernel, g: &'a wgpu::BindGroup, count: usize, gelu: bool) {
        let groups = count.div_ceil(256);
        let gx = groups.min(65_535);
        let p = [count as u32, u32::from(gelu), gx as u32, 0, 0, 0, 0, 0];
        self.push(k, g, p, [gx as u32, groups.div_ceil(gx) as u32, 1]);
    }
}

impl Part {
    /// Uploads layers `range` (with the embedding when `range` starts the model, the norm and
    /// output head when it ends it). Any device error on the way is an error, not a panic.
    pub(crate) fn load(
        gpu: &Arc<Gpu>,
        gguf: &Gguf,
        spec: Arc<ModelSpec>,
        range: Range<usize>,
    ) -> Result<Self> {
        gpu.checked("loading layers", || {
            Self::load_unchecked(gpu, gguf, spec, range)
        })?
    }

    fn load_unchecked(
        gpu: &Arc<Gpu>,
        gguf: &Gguf,
        spec: Arc<ModelSpec>,
        range: Range<usize>,
    ) -> Result<Self> {
        let s = &*spec;
        if s.head_dim > 256 || !s.head_dim.is_multiple_of(2) {
            return Err(Error::Gpu(format!(
                "heads of {} values: the attention shader takes even sizes up to 256",
                s.head_dim
            )));
        }
        let ks = &gpu.kernels;
        let first = range.start == 0;
        let last = range.end == s.n_layers();
        let mut bytes = 0u64;
        let mut weight = |name: &str, cols: usize, rows: usize| -> Result<Weight> {
            let m = QMatrix::load_exact(gguf, name, cols, rows)?;
            bytes += m.raw().len() as u64;
            Weight::upload(gpu, &m)
        };
        let vector = |name: &str, len: usize| -> Result<wgpu::Buffer> {
            upload(
                gpu,
                name,
                bytemuck::cast_slice(&load_vector(gguf, name, len)?),
            )
        };
        let f32s = |label: &str, rows: usize, width: usize| {
            storage(gpu, label, rows * width * 4, wgpu::BufferUsages::COPY_SRC)
        };
        let mut bases: Vec<f32> = Vec::new();
        let layer_base = range
            .clone()
            .map(|i| {
                let b = s.layers[i].rope_base;
                bases.iter().position(|&x| x == b).unwrap_or_else(|| {
                    bases.push(b);
                    bases.len() - 1
                })
            })
            .collect();
        // The embedding and head take a dispatch per piece: 64 pieces are 8 GB at 128 MB each.
        let slots = range.len() * (LAYER_DISPATCHES + 2 * MAX_ROWS) + 2 * 64;
        let work = Work {
            params: params_buffer(gpu, slots),
            x: f32s("x", MAX_ROWS, s.dim),
            q: f32s("q", MAX_ROWS, s.q_dim()),
            k: f32s("k", MAX_ROWS, s.kv_dim()),
            v: f32s("v", MAX_ROWS, s.kv_dim()),
            att: f32s("att", MAX_ROWS, s.q_dim()),
            tokens: storage(gpu, "tokens", MAX_ROWS * 4, wgpu::BufferUsages::empty()),
            pos: storage(gpu, "positions", MAX_ROWS * 4, wgpu::BufferUsages::empty()),
            angles: f32s("angles", bases.len() * MAX_ROWS, s.rope_dims),
            logits: last.then(|| f32s("logits", LOGIT_ROWS, s.vocab)),
            staging: staging(
                gpu,
                (MAX_ROWS * s.dim).max(if last { LOGIT_ROWS * s.vocab } else { 0 }),
            ),
        };
        let xn = f32s("xn", MAX_ROWS, s.dim);
        let o = f32s("o", MAX_ROWS, s.dim);
        let gate_buf = f32s("gate", MAX_ROWS, s.ffn_dim);
        let up_buf = f32s("up", MAX_ROWS, s.ffn_dim);
        let w = &work;
        let p = &w.params;
        let product = |m: Weight, x: &wgpu::Buffer, y: &wgpu::Buffer| {
            let g = m.bind(gpu, p, &[(2, x), (3, y)]);
            (m, g)
        };
        let norm = |weight: &wgpu::Buffer, src: &wgpu::Buffer, dst: &wgpu::Buffer| {
            group(gpu, &ks.rms_norm, p, &[(1, src), (2, weight), (3, dst)])
        };
        let norm_in_place = |weight: &wgpu::Buffer, dst: &wgpu::Buffer| {
            group(gpu, &ks.rms_norm_in_place, p, &[(2, weight), (3, dst)])
        };
        let mut layers = Vec::with_capacity(range.len());
        for i in range.clone() {
            let t = |n: &str| format!("blk.{i}.{n}.weight");
            let optional = |n: &str, len: usize, want: bool, dst: &wgpu::Buffer| {
                want.then(|| vector(&t(n), len).map(|b| norm_in_place(&b, dst)))
                    .transpose()
            };
            layers.push(LayerGroups {
                attn_norm: norm(&vector(&t("attn_norm"), s.dim)?, &w.x, &xn),
                q: product(weight(&t("attn_q"), s.dim, s.q_dim())?, &xn, &w.q),
                k: product(weight(&t("attn_k"), s.dim, s.kv_dim())?, &xn, &w.k),
                v: product(weight(&t("attn_v"), s.dim, s.kv_dim())?, &xn, &w.v),
                q_norm: optional("attn_q_norm", s.head_dim, s.qk_norm, &w.q)?,
                k_norm: optional("attn_k_norm", s.head_dim, s.qk_norm, &w.k)?,
                rope_q: group(gpu, &ks.rope, p, &[(1, &w.angles), (2, &w.q)]),
                rope_k: group(gpu, &ks.rope, p, &[(1, &w.angles), (2, &w.k)]),
                o: product(weight(&t("attn_output"), s.q_dim(), s.dim)?, &w.att, &o),
                post_attn_norm: optional("post_attention_norm", s.dim, s.post_norms, &o)?,
                residual: group(gpu, &ks.add, p, &[(1, &o), (2, &w.x)]),
                ffn_norm: norm(&vector(&t("ffn_norm"), s.dim)?, &w.x, &xn),
                gate: product(weight(&t("ffn_gate"), s.dim, s.ffn_dim)?, &xn, &gate_buf),
                up: product(weight(&t("ffn_up"), s.dim, s.ffn_dim)?, &xn, &up_buf),
                gated: group(gpu, &ks.gated, p, &[(1, &up_buf), (2, &gate_buf)]),
                down: product(weight(&t("ffn_down"), s.ffn_dim, s.dim)?, &gate_buf, &o),
                post_ffn_norm: optional("post_ffw_norm", s.dim, s.post_norms, &o)?,
            });
        }
        // Tied embeddings: the head reads the token embedding, uploaded once for both.
        let tied = !gguf.tensors.contains_key("output.weight");
        let table = if first || (last && tied) {
            Some(weight("token_embd.weight", s.dim, s.vocab)?)
        } else {
            None
        };
        let embedding = match (&table, first) {
            (Some(m), true) => {
                let lookup = m.lookup(gpu)?;
                let g = lookup.bind(gpu, p, &[(2, &w.tokens), (3, &w.x)]);
                Some((lookup, g))
            }
            _ => None,
        };
        let head = if last {
            let output = match table {
                Some(m) if tied => m,
                _ => weight("output.weight", s.dim, s.vocab)?,
            };
            let logits = w.logits.as_ref().expect("made for the last part");
            let out_norm = norm(&vector("output_norm.weight", s.dim)?, &w.x, &xn);
            let g = output.bind(gpu, p, &[(2, &xn), (3, logits)]);
            Some((out_norm, (output, g)))
        } else {
            None
        };
        Ok(Part {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            gpu: gpu.clone(),
            spec,
            range,
            embedding,
            layers,
            head,
            bases,
            layer_base,
            work: Mutex::new(work),
            bytes,
        })
    }

    /// Weight bytes on the device.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The device this part runs on.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The layers on the device.
    pub(crate) fn layers(&self) -> Range<usize> {
        self.range.clone()
    }

    /// A session's cache for up to `capacity` positions; device memory is taken as positions
    /// are written.
    pub(crate) fn new_cache(&self, capacity: usize) -> DeviceCache {
        DeviceCache {
            part: self.id,
            capacity,
            positions: 0,
            layers: Vec::new(),
        }
    }

    /// Whether `cache` was made by this part.
    pub(crate) fn owns(&self, cache: &DeviceCache) -> bool {
        cache.part == self.id
    }

    /// Grows `cache` to hold at least `needed` positions, keeping what it holds.
    fn grow(&self, cache: &mut DeviceCache, needed: usize, work: &Work) {
        if needed <= cache.positions {
            return;
        }
        let s = &*self.spec;
        let positions = needed
            .max(cache.positions * 2)
            .max(FIRST_POSITIONS)
            .min(cache.capacity)
            .max(needed);
        let kv_bytes = positions * s.kv_dim() * 2;
        let gpu = &*self.gpu;
        let ks = &gpu.kernels;
        let scores = storage(
            gpu,
            "scores",
            MAX_ROWS * s.heads * positions * 4,
            wgpu::BufferUsages::empty(),
        );
        let mut copy = gpu.device.create_command_encoder(&Default::default());
        let old = cache.positions * s.kv_dim() * 2;
        let layers = (0..self.layers.len())
            .map(|li| {
                let k = storage(gpu, "keys", kv_bytes, wgpu::BufferUsages::COPY_SRC);
                let v = storage(gpu, "values", kv_bytes, wgpu::BufferUsages::COPY_SRC);
                if let Some(prev) = cache.layers.get(li) {
                    copy.copy_buffer_to_buffer(&prev.k, 0, &k, 0, old as u64);
                    copy.copy_buffer_to_buffer(&prev.v, 0, &v, 0, old as u64);
                }
                let p = &work.params;
                let store = group(
                    gpu,
                    &ks.kv_store,
                    p,
                    &[(1, &work.k), (2, &work.v), (3, &work.pos), (4, &k), (5, &v)],
                );
                let attend = group(
                    gpu,
                    &ks.attention,
                    p,
                    &[
                        (1, &work.q),
                        (2, &work.pos),
                        (3, &k),
                        (4, &v),
                        (5, &scores),
                        (6, &work.att),
                    ],
                );
                CacheLayer {
                    store,
                    attend,
                    k,
                    v,
                }
            })
            .collect();
        gpu.queue.submit([copy.finish()]);
        cache.layers = layers;
        cache.positions = positions;
    }

    /// Runs `rows` through the part: row `t` belongs to cache `rows[t].0` at position
    /// `rows[t].1` (a cache's rows are consecutive). `out` gets, on the last part, the logits of
    /// every row (`all_logits`) or of the last; otherwise every row's hidden state.
    pub(crate) fn run(
        &self,
        caches: &mut [&mut DeviceCache],
        rows: &[(usize, usize)],
        input: StageInput<'_>,
        all_logits: bool,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        out.clear();
        let dim = self.spec.dim;
        let chunk = if all_logits { LOGIT_ROWS } else { MAX_ROWS };
        let mut work = self.work.lock().expect("gpu work");
        for start in (0..rows.len()).step_by(chunk) {
            let end = (start + chunk).min(rows.len());
            let part_input = match input {
                StageInput::Tokens(t) => StageInput::Tokens(&t[start..end]),
                StageInput::Hidden(h) => StageInput::Hidden(&h[start * dim..end * dim]),
            };
            let logits = self.head.is_some() && (all_logits || end == rows.len());
            self.gpu.checked("running a step", || {
                self.step(
                    &mut work,
                    caches,
                    &rows[start..end],
                    part_input,
                    logits,
                    all_logits,
                    out,
                )
            })??;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        work: &mut Work,
        caches: &mut [&mut DeviceCache],
        rows: &[(usize, usize)],
        input: StageInput<'_>,
        logits: bool,
        all_logits: bool,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let s = &*self.spec;
        let gpu = &*self.gpu;
        let ks = &gpu.kernels;
        let n = rows.len();
        let dim = s.dim;
        // Runs of rows per cache, each cache grown to its last position.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (t, &(ci, p)) in rows.iter().enumerate() {
            match runs.last_mut() {
                Some((c, _, len)) if *c == ci => *len += 1,
                _ => runs.push((ci, t, 1)),
            }
            let needed = p + 1;
            if caches[ci].positions < needed {
                self.grow(caches[ci], needed, work);
            }
        }
        let q = &gpu.queue;
        match input {
            StageInput::Tokens(t) => q.write_buffer(&work.tokens, 0, bytemuck::cast_slice(t)),
            StageInput::Hidden(h) => q.write_buffer(&work.x, 0, bytemuck::cast_slice(h)),
        }
        let positions: Vec<u32> = rows.iter().map(|&(_, p)| p as u32).collect();
        q.write_buffer(&work.pos, 0, bytemuck::cast_slice(&positions));
        let half = s.rope_dims / 2;
        let mut angles = vec![0f32; self.bases.len() * MAX_ROWS * half * 2];
        let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
        for (bi, &base) in self.bases.iter().enumerate() {
            for (t, &(_, p)) in rows.iter().enumerate() {
                ops::rope_angles(p, base, s.rope_dims, &mut cos, &mut sin);
                let at = (bi * MAX_ROWS + t) * half * 2;
                for i in 0..half {
                    angles[at + 2 * i] = cos[i];
                    angles[at + 2 * i + 1] = sin[i];
                }
            }
        }
        q.write_buffer(&work.angles, 0, bytemuck::cast_slice(&angles));

        let mut rec = Recorder::new(gpu);
        let eps = s.norm_eps.to_bits();
        let n32 = n as u32;
        if let (StageInput::Tokens(_), Some((w, g))) = (input, &self.embedding) {
            w.record_lookup(&mut rec, g, n, s.embed_scale.unwrap_or(1.0));
        }
        let (heads, kv_heads, hd) = (s.heads as u32, s.kv_heads as u32, s.head_dim as u32);
        let halves = u32::from(s.rope_style == RopeStyle::Halves);
        for (li, l) in self.layers.iter().enumerate() {
            let layer_spec = s.layers[self.range.start + li];
            rec.push(
                &ks.rms_norm,
                &l.attn_norm,
                [dim as u32, eps, 0, 0, 0, 0, 0, 0],
                [n32, 1, 1],
            );
            rec.matmul(&l.q, n, 0);
            rec.matmul(&l.k, n, 0);
            rec.matmul(&l.v, n, 0);
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                let p = [hd, eps, 0, 0, 0, 0, 0, 0];
                rec.push(&ks.rms_norm_in_place, qn, p, [n32 * heads, 1, 1]);
                rec.push(&ks.rms_norm_in_place, kn, p, [n32 * kv_heads, 1, 1]);
            }
            let table = (self.layer_base[li] * MAX_ROWS * half * 2) as u32;
            let rope = |h: u32| [h, hd, half as u32, halves, table, 0, 0, 0];
            rec.push(&ks.rope, &l.rope_q, rope(heads), [n32 * heads, 1, 1]);
            rec.push(&ks.rope, &l.rope_k, rope(kv_heads), [n32 * kv_heads, 1, 1]);
            for &(ci, row0, len) in &runs {
                let c = &caches[ci].layers[li];
                let p = [row0 as u32, s.kv_dim() as u32, 0, 0, 0, 0, 0, 0];
                rec.push(&ks.kv_store, &c.store, p, [len as u32, 1, 1]);
            }
            for &(ci, row0, len) in &runs {
                let c = &caches[ci].layers[li];
                let p = [
                    row0 as u32,
                    heads,
                    heads / kv_heads,
                    hd,
                    s.kv_dim() as u32,
                    layer_spec.window.unwrap_or(0) as u32,
                    caches[ci].positions as u32,
                    s.attn_scale.to_bits(),
                ];
                rec.push(&ks.attention, &c.attend, p, [heads, len as u32, 1]);
            }
            rec.matmul(&l.o, n, 0);
            let norm = [dim as u32, eps, 0, 0, 0, 0, 0, 0];
            if let Some(g) = &l.post_attn_norm {
                rec.push(&ks.rms_norm_in_place, g, norm, [n32, 1, 1]);
            }
            rec.elementwise(&ks.add, &l.residual, n * dim, false);
            rec.push(&ks.rms_norm, &l.ffn_norm, norm, [n32, 1, 1]);
            rec.matmul(&l.gate, n, 0);
            rec.matmul(&l.up, n, 0);
            let gelu = s.activation == Activation::GeluTanh;
            rec.elementwise(&ks.gated, &l.gated, n * s.ffn_dim, gelu);
            rec.matmul(&l.down, n, 0);
            if let Some(g) = &l.post_ffn_norm {
                rec.push(&ks.rms_norm_in_place, g, norm, [n32, 1, 1]);
            }
            rec.elementwise(&ks.add, &l.residual, n * dim, false);
        }
        let (result, floats) = match (&self.head, logits) {
            (Some((norm, output)), true) => {
                let (first, count) = if all_logits { (0, n) } else { (n - 1, 1) };
                let p = [dim as u32, eps, (first * dim) as u32, 0, 0, 0, 0, 0];
                rec.push(&ks.rms_norm, norm, p, [count as u32, 1, 1]);
                rec.matmul(output, count, 0);
                let logits = work.logits.as_ref().expect("made for the last part");
                (logits, count * s.vocab)
            }
            (Some(_), false) => (&work.x, 0),
            (None, _) => (&work.x, n * dim),
        };
        let encoder = record(gpu, &rec, &work.params);
        submit_and_read(gpu, encoder, result, &work.staging, floats, out)
    }
}

/// Records the pass's dispatches into a new encoder.
pub(super) fn record(gpu: &Gpu, rec: &Recorder<'_>, params: &wgpu::Buffer) -> wgpu::CommandEncoder {
    gpu.queue.write_buffer(params, 0, &rec.params);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for (pipeline, group, offset, [x, y, z]) in &rec.dispatches {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, *group, &[*offset]);
            pass.dispatch_workgroups(*x, *y, *z);
        }
    }
    encoder
}

/// Submits `encoder`, and appends the first `floats` values of `result` to `out` (through
/// `staging`, a mappable buffer at least that large).
pub(super) fn submit_and_read(
    gpu: &Gpu,
    mut encoder: wgpu::CommandEncoder,
    result: &wgpu::Buffer,
    staging: &wgpu::Buffer,
    floats: usize,
    out: &mut Vec<f32>,
) -> Result<()> {
    let bytes = (floats * 4) as u64;
    if bytes > 0 {
        encoder.copy_buffer_to_buffer(result, 0, staging, 0, bytes);
    }
    gpu.queue.submit([encoder.finish()]);
    if bytes == 0 {
        return Ok(());
    }
    let slice = staging.slice(..bytes);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu(format!("{}: waiting for a step: {e}", gpu.info())))?;
    rx.recv()
        .map_err(|_| Error::Gpu("the device dropped a step's result".into()))?
        .map_err(|e| Error::Gpu(format!("{}: reading a step's result: {e}", gpu.info())))?;
    {
        let view = slice.get_mapped_range();
        out.extend(
            view.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    staging.unmap();
    Ok(())
}
