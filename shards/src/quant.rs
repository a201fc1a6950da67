//! Quantized weight matrices and the matrix products the engine runs on them. Weights stay in
//! their GGUF block format; activations are quantized once per product into the block type the
//! weight's dot-product kernel wants (Q8_0, Q8_1 or Q8_K). Q4_1, Q5_0, Q8_0, Q4_K and Q6_K run on
//! hearth's own kernels (`kernels.rs`), the other types on candle's.

use std::fmt;
use std::sync::Arc;

use candle_core::quantized::k_quants::{self as kq, GgmlType as Block};
use candle_core::quantized::GgmlDType;

use crate::packed::{self, Layout, GROUP, MAX_ROWS};
use crate::{activation, kernels};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Storage, TensorInfo};

/// Tensor element types found in GGUF files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
}

impl GgmlType {
    /// The type for a raw GGUF type id, if hearth knows its layout.
    pub fn from_raw(raw: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match raw {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            I8 => 1,
            F16 | BF16 | I16 => 2,
            F32 | I32 => 4,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
        }
    }

    /// Whether the engine can multiply with a weight of this type.
    pub fn is_computable(self) -> bool {
        use GgmlType::*;
        !matches!(self, Q8_1 | Q8K | I8 | I16 | I32 | I64 | F64)
    }

    /// The list of computable types, for error messages.
    pub fn supported_list() -> String {
        "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K".to_owned()
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgmlType::*;
        let s = match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
        };
        f.write_str(s)
    }
}

/// A 2-D weight (`rows` outputs × `cols` inputs) kept in its file's block format.
#[derive(Clone)]
pub struct QMatrix {
    name: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: Arc<Storage>,
    offset: usize,
    len: usize,
    /// The weight repacked eight rows at a time (see `packed`), once [`QMatrix::pack`] has run.
    packed: Option<(Layout, Arc<Vec<u8>>)>,
}

impl fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QMatrix({} {} {}x{})",
            self.name, self.ty, self.rows, self.cols
        )
    }
}

/// Reusable buffer for quantized activations; grows to the largest product and stays there.
#[derive(Default)]
pub struct QuantScratch {
    words: Vec<u64>,
    /// The block type of the activations now in `words`, while [`matmul_shared`] may reuse them.
    holds: Option<GgmlDType>,
    /// Integer sums of the activation blocks in `words`, once a packed weight wanted them
    /// (`packed::block_sums`; the block type in `holds` tells which layout's sums they are).
    sums: Vec<i32>,
    has_sums: bool,
}

impl QuantScratch {
    fn bytes(&mut self, len: usize) -> &mut [u8] {
        let words = len.div_ceil(8);
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
        // SAFETY: u64 storage reinterpreted as bytes; any bit pattern is a valid u8.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }

    /// Quantizes the `cols`-wide rows of `xs` into `row_bytes` bytes each of `dtype` blocks with
    /// `quantize`, unless the activations already there are of that type (see
    /// [`matmul_shared`]).
    fn quantize(
        &mut self,
        dtype: GgmlDType,
        row_bytes: usize,
        xs: &[f32],
        cols: usize,
        quantize: impl Fn(&[f32], &mut [u8]) + Sync,
    ) {
        let reuse = self.holds == Some(dtype);
        self.holds = Some(dtype);
        if !reuse {
            self.has_sums = false;
        }
        let q = self.bytes(xs.len() / cols * row_bytes);
        if !reuse {
            q.par_chunks_mut(row_bytes)
                .zip(xs.par_chunks(cols))
                .for_each(|(qt, xt)| quantize(xt, qt));
        }
    }
}

impl QMatrix {
    /// Reads a weight from the file, checking it is 2-D with the expected row length.
    pub fn load(gguf: &Gguf, name: &str, cols: usize) -> Result<Self> {
        let info = gguf.tensor(name)?;
        let rows = match info.dims.as_slice() {
            [c, r] if *c == cols => *r,
            [c] if *c == cols => 1,
            dims => {
                return Err(Error::BadShape {
                    name: name.to_owned(),
                    found: dims.to_vec(),
                    expected: vec![cols, 0],
                })
            }
        };
        Self::from_info(gguf, info, rows, cols)
    }

    /// Like [`QMatrix::load`] but also checks the row count.
    pub fn load_exact(gguf: &Gguf, name: &str, cols: usize, rows: usize) -> Result<Self> {
        let m = Self::load(gguf, name, cols)?;
        if m.rows != rows {
            return Err(Error::BadShape {
                name: name.to_owned(),
                found: vec![cols, m.rows],
                expected: vec![cols, rows],
            });
        }
        Ok(m)
    }

    fn from_info(gguf: &Gguf, info: &TensorInfo, rows: usize, cols: usize) -> Result<Self> {
        if !info.ty.is_computable() {
            return Err(Error::UnsupportedTensorType {
                name: info.name.clone(),
                ty: info.ty.to_string(),
                supported: GgmlType::supported_list(),
            });
        }
        let base = gguf.bytes.as_ptr() as usize + info.offset;
        if !base.is_multiple_of(4) {
            return Err(Error::Corrupt {
                path: gguf.path.clone(),
                reason: format!("tensor {} is misaligned", info.name),
            });
        }
        Ok(QMatrix {
            name: info.name.clone(),
            ty: info.ty,
            rows,
            cols,
            bytes: gguf.bytes.clone(),
            offset: info.offset,
            len: info.len,
            packed: None,
        })
    }

    /// A weight from raw GGUF block bytes (`rows` rows of `cols` values each), for benchmarks
    /// and tools that build matrices outside a model file.
    pub fn from_bytes(
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self> {
        let len = rows * (cols / ty.block_size()) * ty.type_size();
        if !cols.is_multiple_of(ty.block_size()) || bytes.len() != len {
            return Err(Error::BadParameter(format!(
                "weight {name}: {} bytes, but {rows} rows of {cols} {ty} values take {len} \
                 (and a row must be whole blocks of {})",
                bytes.len(),
                ty.block_size()
            )));
        }
        if !ty.is_computable() {
            return Err(Error::UnsupportedTensorType {
                name: name.to_owned(),
                ty: ty.to_string(),
                supported: GgmlType::supported_list(),
            });
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(4) {
            return Err(Error::BadParameter(format!(
                "weight {name}: block bytes must start at a 4-byte aligned address"
            )));
        }
        Ok(QMatrix {
            name: name.to_owned(),
            ty,
            rows,
            cols,
            bytes: Arc::new(Storage::Owned(bytes)),
            offset: 0,
            len,
            packed: None,
        })
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Output size.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input size.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element type of the stored weight.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub(crate) fn raw(&self) -> &[u8] {
        &self.bytes[self.offset..self.offset + self.len]
    }

    /// Repacks the weight eight rows at a time for the kernels in `packed` when its type has them
    /// and its rows come in eights, and lets the OS drop the file pages it no longer reads (the
    /// unpacked bytes stay readable for [`QMatrix::row_to_f32`]). Products are then computed from
    /// the packed copy; weights of other types are returned as they are.
    pub fn pack(mut self) -> Self {
        if let Some(layout) = Layout::of(self.ty) {
            if self.rows.is_multiple_of(GROUP) && self.packed.is_none() {
                // A few MiB at a time, each released once packed: the file pages and the packed
                // copy of a large matrix (Gemma 3's 178 MB output head) are never both resident.
                let blocks = self.cols / layout.block_values();
                let raw_group = GROUP * blocks * layout.block_bytes();
                let packed_group = blocks * layout.packed_bytes();
                let per_chunk = ((4 << 20) / raw_group).max(1);
                let mut bytes = vec![0u8; self.rows / GROUP * packed_group];
                for (i, out) in bytes.chunks_mut(per_chunk * packed_group).enumerate() {
                    let at = i * per_chunk * raw_group;
                    packed::pack(layout, &self.raw()[at..], blocks, out);
                    self.bytes
                        .release(self.offset + at, out.len() / packed_group * raw_group);
                }
                self.packed = Some((layout, Arc::new(bytes)));
            }
        }
        self
    }

    /// Whether products use the packed copy (see [`QMatrix::pack`]).
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// `out[t][r] = sum_c W[r][c] * xs[t][c]` for `n = xs.len() / cols` activation rows.
    pub fn matmul(&self, xs: &[f32], out: &mut [f32], scratch: &mut QuantScratch) {
        scratch.holds = None;
        self.matmul_reusing(xs, out, scratch);
    }

    /// Like [`QMatrix::matmul`], but takes the quantized activations already in `scratch` when
    /// they are in the block type this weight's kernel wants (they must come from `xs`).
    fn matmul_reusing(&self, xs: &[f32], out: &mut [f32], scratch: &mut QuantScratch) {
        use GgmlType::*;
        let n = xs.len() / self.cols;
        debug_assert_eq!(xs.len(), n * self.cols);
        debug_assert_eq!(out.len(), n * self.rows);
        if let Some((layout, packed)) = &self.packed {
            let target = PackedTarget {
                packed,
                rows: self.rows,
                out: SharedOut(out.as_mut_ptr()),
            };
            return matmul_packed(*layout, &[target], self.cols, xs, scratch);
        }
        let w = self.raw();
        let (rows, cols) = (self.rows, self.cols);
        // Types at hand run on hearth's kernels (one and four activation rows over raw block
        // bytes); the rest on candle's block dot product.
        macro_rules! own {
            ($block:ty, $dot:ident, $dot4:ident) => {{
                type Y = <$block as Block>::VecDotType;
                const B: usize = <$block as Block>::BLCK_SIZE;
                let one = |c: usize, x: &[$block], y: &[Y]| {
                    kernels::$dot(as_bytes(x), as_bytes(y), c / B)
                };
                let four = |c: usize, x: &[$block], ys: [&[Y]; 4]| {
                    kernels::$dot4(as_bytes(x), ys.map(as_bytes), c / B)
                };
                matmul_with::<$block>(w, rows, cols, xs, out, scratch, one, Some(four))
            }};
        }
        macro_rules! candle {
            ($block:ty) => {
                matmul_with::<$block>(w, rows, cols, xs, out, scratch, <$block>::vec_dot, None)
            };
        }
        match self.ty {
            F32 => candle!(f32),
            F16 => candle!(f16),
            BF16 => candle!(bf16),
            Q4_0 => candle!(kq::BlockQ4_0),
            Q4_1 => own!(kq::BlockQ4_1, dot_q4_1_q8_1, dot_q4_1_q8_1_x4),
            Q5_0 => own!(kq::BlockQ5_0, dot_q5_0_q8_0, dot_q5_0_q8_0_x4),
            Q5_1 => candle!(kq::BlockQ5_1),
            Q8_0 => own!(kq::BlockQ8_0, dot_q8_0_q8_0, dot_q8_0_q8_0_x4),
            Q2K => candle!(kq::BlockQ2K),
            Q3K => candle!(kq::BlockQ3K),
            Q4K => own!(kq::BlockQ4K, dot_q4_k_q8_k, dot_q4_k_q8_k_x4),
            Q5K => candle!(kq::BlockQ5K),
            Q6K => own!(kq::BlockQ6K, dot_q6_k_q8_k, dot_q6_k_q8_k_x4),
            Q8_1 | Q8K | I8 | I16 | I32 | I64 | F64 => unreachable!("rejected at load"),
        }
    }

    /// Dequantizes row `row` into `out` (length `cols`): the embedding lookup.
    pub fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        use GgmlType::*;
        let w = self.raw();
        match self.ty {
            F32 => row_blocks::<f32>(w, self.cols, row, out),
            F16 => row_blocks::<f16>(w, self.cols, row, out),
            BF16 => row_blocks::<bf16>(w, self.cols, row, out),
            Q4_0 => row_blocks::<kq::BlockQ4_0>(w, self.cols, row, out),
            Q4_1 => row_blocks::<kq::BlockQ4_1>(w, self.cols, row, out),
            Q5_0 => row_blocks::<kq::BlockQ5_0>(w, self.cols, row, out),
            Q5_1 => row_blocks::<kq::BlockQ5_1>(w, self.cols, row, out),
            Q8_0 => row_blocks::<kq::BlockQ8_0>(w, self.cols, row, out),
            Q2K => row_blocks::<kq::BlockQ2K>(w, self.cols, row, out),
            Q3K => row_blocks::<kq::BlockQ3K>(w, self.cols, row, out),
            Q4K => row_blocks::<kq::BlockQ4K>(w, self.cols, row, out),
            Q5K => row_blocks::<kq::BlockQ5K>(w, self.cols, row, out),
            Q6K => row_blocks::<kq::BlockQ6K>(w, self.cols, row, out),
            Q8_1 | Q8K | I8 | I16 | I32 | I64 | F64 => unreachable!("rejected at load"),
        }
    }
}

/// `outs[i] = ws[i] × xs` for weights that share one input (Q, K and V; gate and up): the input is
/// quantized once for consecutive weights whose kernels take the same block type.
pub fn matmul_shared<const N: usize>(
    ws: [&QMatrix; N],
    xs: &[f32],
    outs: [&mut [f32]; N],
    scratch: &mut QuantScratch,
) {
    scratch.holds = None;
    let mut pairs = ws.into_iter().zip(outs).peekable();
    while let Some((w, out)) = pairs.next() {
        let Some((layout, packed)) = &w.packed else {
            w.matmul_reusing(xs, out, scratch);
            continue;
        };
        // This weight and the next ones packed alike run in one parallel loop (a fixed array:
        // decoding allocates nothing).
        let target = |packed, rows, out: &mut [f32]| PackedTarget {
            packed,
            rows,
            out: SharedOut(out.as_mut_ptr()),
        };
        let mut targets: [PackedTarget; N] = std::array::from_fn(|_| target(&[], 0, &mut []));
        targets[0] = target(packed, w.rows, out);
        let mut count = 1;
        while let Some(&(next, _)) = pairs.peek() {
            match &next.packed {
                Some((l, p)) if l == layout && next.cols == w.cols => {
                    let out = pairs.next().expect("peeked").1;
                    targets[count] = target(p, next.rows, out);
                    count += 1;
                }
                _ => break,
            }
        }
        matmul_packed(*layout, &targets[..count], w.cols, xs, scratch);
    }
    scratch.holds = None;
}

/// Reinterprets GGUF bytes as blocks.
fn as_blocks<T>(bytes: &[u8]) -> &[T] {
    debug_assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    // SAFETY: block types are `repr(C)` plain data (f16/u8/i8/f32 fields) for which every bit
    // pattern is valid; alignment was checked when the matrix was loaded (GGUF aligns tensors to
    // 32 bytes, and the largest block alignment is 4).
    unsafe {
        std::slice::from_raw_parts(
            bytes.as_ptr().cast::<T>(),
            bytes.len() / std::mem::size_of::<T>(),
        )
    }
}

fn as_blocks_mut<T>(bytes: &mut [u8]) -> &mut [T] {
    debug_assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    // SAFETY: as in `as_blocks`; the scratch buffer is u64-aligned.
    unsafe {
        std::slice::from_raw_parts_mut(
            bytes.as_mut_ptr().cast::<T>(),
            bytes.len() / std::mem::size_of::<T>(),
        )
    }
}

fn row_blocks<T: Block>(w: &[u8], cols: usize, row: usize, out: &mut [f32]) {
    let per_row = cols / T::BLCK_SIZE;
    let blocks = as_blocks::<T>(w);
    T::to_float(&blocks[row * per_row..(row + 1) * per_row], out);
}

/// Rows per parallel task: enough work per task that scheduling stays cheap.
const ROWS_PER_TASK: usize = 32;

/// Multiply-adds under which a product runs on the calling thread: on the 2-core machine of the
/// README, a 64×576 decode product takes 4.4 µs alone and 5.3 µs forked to two threads, a 192×576
/// one 9.4 µs and 8.6 µs (`cargo bench -p hearth-shards --bench kernels -- fork`).
pub const SERIAL_WORK: usize = 64 * 1024;

/// A row dot product: `cols` weights against one quantized activation row.
type RowDot<T> = fn(usize, &[T], &[<T as Block>::VecDotType]) -> f32;
/// One weight row against four quantized activation rows.
type RowDot4<T> = fn(usize, &[T], [&[<T as Block>::VecDotType]; 4]) -> [f32; 4];

fn as_bytes<T>(blocks: &[T]) -> &[u8] {
    // SAFETY: any initialized memory can be viewed as bytes.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul_with<T: Block>(
    w: &[u8],
    rows: usize,
    cols: usize,
    xs: &[f32],
    out: &mut [f32],
    scratch: &mut QuantScratch,
    dot: RowDot<T>,
    dot4: Option<RowDot4<T>>,
) {
    let n = xs.len() / cols;
    let per_row = cols / T::BLCK_SIZE;
    let dot_block = std::mem::size_of::<T::VecDotType>();
    let dot_per_row = cols / T::VecDotType::BLCK_SIZE;
    let row_bytes = dot_per_row * dot_block;
    let dtype = T::VecDotType::DTYPE;
    let own = activation::quantizer(dtype);
    scratch.quantize(dtype, row_bytes, xs, cols, |xt, qt| match own {
        Some(quantize) => quantize(xt, qt),
        None => T::VecDotType::from_float(xt, as_blocks_mut::<T::VecDotType>(qt)),
    });
    let q: &[T::VecDotType] = as_blocks::<T::VecDotType>(scratch.bytes(n * row_bytes));
    let w = as_blocks::<T>(w);
    if n == 1 {
        out.par_chunks_mut(ROWS_PER_TASK)
            .with_min_len(tasks_per_split(rows * cols))
            .enumerate()
            .for_each(|(i, chunk)| {
                let r0 = i * ROWS_PER_TASK;
                for (j, o) in chunk.iter_mut().enumerate() {
                    let r = r0 + j;
                    *o = dot(cols, &w[r * per_row..(r + 1) * per_row], q);
                }
            });
        return;
    }
    // Several activation rows: each task holds a band of weight rows in cache and runs every
    // activation row against it (four at a time, so the band and four activation rows stay in L1),
    // writing its own disjoint cells of `out`.
    let out_ptr = SharedOut(out.as_mut_ptr());
    (0..rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .with_min_len(tasks_per_split(rows * cols * n))
        .for_each(|band| {
            let out_ptr = &out_ptr;
            let band_rows = band * ROWS_PER_TASK..((band + 1) * ROWS_PER_TASK).min(rows);
            let wrow = |r: usize| &w[r * per_row..(r + 1) * per_row];
            let qrow = |t: usize| &q[t * dot_per_row..(t + 1) * dot_per_row];
            // SAFETY (both writes): cell (t, r) is written by exactly one task (the one owning
            // row r), and `out` outlives the parallel loop.
            let put = |t: usize, r: usize, v: f32| unsafe { *out_ptr.0.add(t * rows + r) = v };
            let mut t = 0;
            if let Some(dot4) = dot4 {
                while t + 4 <= n {
                    let ys = [qrow(t), qrow(t + 1), qrow(t + 2), qrow(t + 3)];
                    for r in band_rows.clone() {
                        let v = dot4(cols, wrow(r), ys);
                        (0..4).for_each(|i| put(t + i, r, v[i]));
                    }
                    t += 4;
                }
            }
            for t in t..n {
                for r in band_rows.clone() {
                    put(t, r, dot(cols, wrow(r), qrow(t)));
                }
            }
        });
}

/// A packed weight and where its products go, for [`matmul_packed`].
struct PackedTarget<'a> {
    packed: &'a [u8],
    rows: usize,
    out: SharedOut,
}

/// [`QMatrix::matmul`] on packed weights of one layout sharing the input `xs` (Q, K and V; gate
/// and up), in one parallel loop: each task takes a band of one weight's row groups and runs every
/// activation row against it, up to four at a time, so the band and those rows stay in cache.
fn matmul_packed(
    layout: Layout,
    targets: &[PackedTarget<'_>],
    cols: usize,
    xs: &[f32],
    scratch: &mut QuantScratch,
) {
    let n = xs.len() / cols;
    let blocks = cols / layout.block_values();
    let row_bytes = blocks * layout.activation_bytes();
    let dtype = layout.activation_type();
    let quantize = activation::quantizer(dtype).expect("packed layouts take Q8 activations");
    scratch.quantize(dtype, row_bytes, xs, cols, quantize);
    let QuantScratch {
        words,
        sums,
        has_sums,
        ..
    } = scratch;
    // SAFETY: u64 storage viewed as bytes; `quantize` sized it to at least this length.
    let q = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), n * row_bytes) };
    let per = layout.sums_per_block();
    if per > 0 && !*has_sums {
        sums.resize(n * blocks * per, 0);
        packed::block_sums(layout, q, sums);
        *has_sums = true;
    }
    let sums: &[i32] = sums;
    let group_bytes = blocks * layout.packed_bytes();
    let per_task = ROWS_PER_TASK / GROUP;
    let bands = |t: &PackedTarget| (t.rows / GROUP).div_ceil(per_task);
    let total: usize = targets.iter().map(bands).sum();
    let work: usize = targets.iter().map(|t| t.rows * cols * n).sum();
    (0..total)
        .into_par_iter()
        .with_min_len(tasks_per_split(work))
        .for_each(|mut band| {
            let target = targets
                .iter()
                .find(|t| {
                    let here = band < bands(t);
                    if !here {
                        band -= bands(t);
                    }
                    here
                })
                .expect("band within the targets");
            let (packed, rows, out_ptr) = (target.packed, target.rows, &target.out);
            let groups = rows / GROUP;
            let band_groups = band * per_task..((band + 1) * per_task).min(groups);
            let mut cells = [[0.0f32; GROUP]; MAX_ROWS];
            for t0 in (0..n).step_by(MAX_ROWS) {
                let tn = (n - t0).min(MAX_ROWS);
                let ys: [&[u8]; MAX_ROWS] = std::array::from_fn(|i| {
                    let t = (t0 + i).min(n - 1);
                    &q[t * row_bytes..(t + 1) * row_bytes]
                });
                let ss: [&[i32]; MAX_ROWS] = std::array::from_fn(|i| {
                    let t = (t0 + i).min(n - 1);
                    sums.get(t * blocks * per..(t + 1) * blocks * per)
                        .unwrap_or(&[])
                });
                for g in band_groups.clone() {
                    let w = &packed[g * group_bytes..(g + 1) * group_bytes];
                    packed::group_dot(layout, w, &ys[..tn], &ss[..tn], blocks, &mut cells[..tn]);
                    for (t, cell) in cells[..tn].iter().enumerate() {
                        // SAFETY: rows g*8..g*8+8 of every activation row belong to this task
                        // alone, and `out` outlives the parallel loop.
                        unsafe {
                            let at = out_ptr.0.add((t0 + t) * rows + g * GROUP);
                            std::ptr::copy_nonoverlapping(cell.as_ptr(), at, GROUP);
                        }
                    }
                }
            }
        });
}

/// Rayon's minimum tasks per split: all of them (no fork) for products under [`SERIAL_WORK`].
fn tasks_per_split(work: usize) -> usize {
    if work < SERIAL_WORK {
        usize::MAX
    } else {
        1
    }
}

struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint cells; see `matmul_with`.
unsafe impl Sync for SharedOut {}
