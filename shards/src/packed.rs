//! Weights repacked eight output rows at a time, and the kernels that multiply them.
//!
//! In GGUF a row's blocks are contiguous, so a dot-product kernel meets one row at a time and
//! pays, per 32-weight block and per activation row, for turning the block's integer sum into
//! floats (convert, scale, accumulate) — more than the integer multiply-adds themselves. Here
//! block `b` of eight consecutive rows is stored together: the eight scales, then the quants
//! interleaved four bytes per row, so one 256-bit register holds four consecutive weights of each
//! of the eight rows. Broadcasting four activation bytes against it gives the eight rows' partial
//! sums in eight lanes; a block's integer sums are finished in integer arithmetic and meet their
//! scales once per eight rows. Up to four activation rows (a batched decoding step, a prompt) share
//! each unpacked weight register.
//!
//! Every path — one activation row or four, AVX2 or portable — computes each output with the same
//! operations in the same order (exact integer block sums, then `fma(sum, d_w × d_y, acc)` per
//! block; for Q4_1, `fma(m_w, s_y, macc)` apart, added at the end), so a session's logits do not depend on what it was batched with, and the portable code
//! is bit-identical to the SIMD code.
//!
//! Layouts (per group of eight rows and block index, `r` = row in the group):
//! - Q4_1 (160 bytes): 8 × f16 d, 8 × f16 m, then 4 registers; register `g`, lane `r` = the row's
//!   nibble bytes `4g..4g + 4` (low nibbles: values `4g..`, high nibbles: values `16 + 4g..`).
//! - Q5_0 (176 bytes): 8 × f16 d, 8 × u32 fifth bits rearranged (byte `i`, bit `j` holds value
//!   `4j + i` for `j < 4`, `16 + 4(j - 4) + i` otherwise, so one shift and mask moves the right
//!   bit under each nibble), then 4 nibble registers as for Q4_1.
//! - Q8_0 (272 bytes): 8 × f16 d, then 8 registers; register `g`, lane `r` = the row's quants
//!   `4g..4g + 4`.
//! - Q4_K (1184 bytes per 256-value super-block): 8 × f16 d, 8 × f16 dmin, the rows' 6-bit
//!   scales as bytes (sub-block `j`: 8 bytes, one per row), their mins as bytes (sub-blocks `2k`
//!   and `2k + 1`: 16 bytes, a pair per row), then 32 nibble registers; register `8c + g`, lane
//!   `r` = the row's nibble bytes `32c + 4g..` (low nibbles: sub-block `2c`, high: `2c + 1`).
//!   Unpacked scales would save the kernel three instructions a sub-block but cost a quarter more
//!   bytes, which decoding (bound by memory) pays for: 9.4 against 11.0 GB/s streamed.

use candle_core::quantized::GgmlDType;
use half::f16;

use crate::quant::GgmlType;

/// Rows repacked together.
pub const GROUP: usize = 8;
/// Activation rows one kernel call takes at most.
pub const MAX_ROWS: usize = 4;

/// The packed layouts: the block types of the models at hand, but Q6_K.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
}

impl Layout {
    /// The packed layout for a GGUF block type, if there is one.
    pub fn of(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q4_1 => Some(Layout::Q4_1),
            GgmlType::Q5_0 => Some(Layout::Q5_0),
            GgmlType::Q8_0 => Some(Layout::Q8_0),
            GgmlType::Q4K => Some(Layout::Q4K),
            _ => None,
        }
    }

    /// Weights in one block of one row.
    pub const fn block_values(self) -> usize {
        match self {
            Layout::Q4K => 256,
            _ => 32,
        }
    }

    /// Bytes of one GGUF block (one row's).
    pub const fn block_bytes(self) -> usize {
        match self {
            Layout::Q4_1 => 20,
            Layout::Q5_0 => 22,
            Layout::Q8_0 => 34,
            Layout::Q4K => 144,
        }
    }

    /// Bytes of one packed block (eight rows').
    pub const fn packed_bytes(self) -> usize {
        match self {
            Layout::Q4K => 1184,
            other => GROUP * other.block_bytes(),
        }
    }

    /// The block type activations are quantized to for this layout's kernel.
    pub const fn activation_type(self) -> GgmlDType {
        match self {
            Layout::Q4_1 => GgmlDType::Q8_1,
            Layout::Q5_0 | Layout::Q8_0 => GgmlDType::Q8_0,
            Layout::Q4K => GgmlDType::Q8K,
        }
    }

    /// Bytes of one activation block: Q8_1 for Q4_1 weights, Q8_K for Q4_K, Q8_0 otherwise.
    pub const fn activation_bytes(self) -> usize {
        match self {
            Layout::Q4_1 => 36,
            Layout::Q5_0 | Layout::Q8_0 => 34,
            Layout::Q4K => 292,
        }
    }

    /// Integer words per activation block the kernel wants alongside it ([`block_sums`]): Q5_0's
    /// −16 offset needs each block's sum, Q4_K's mins the sums of its 32-value sub-blocks.
    pub const fn sums_per_block(self) -> usize {
        match self {
            Layout::Q5_0 => 1,
            Layout::Q4K => 4,
            Layout::Q4_1 | Layout::Q8_0 => 0,
        }
    }
}

/// Repacks GGUF rows of `blocks` blocks each into `out` (as many groups of [`GROUP`] rows as
/// `out` holds).
pub fn pack(layout: Layout, raw: &[u8], blocks: usize, out: &mut [u8]) {
    let (bb, pb) = (layout.block_bytes(), layout.packed_bytes());
    let groups = out.len() / (blocks * pb);
    assert!(out.len() == groups * blocks * pb && raw.len() >= groups * GROUP * blocks * bb);
    for (gi, group) in out.chunks_exact_mut(blocks * pb).enumerate() {
        for (b, dst) in group.chunks_exact_mut(pb).enumerate() {
            for r in 0..GROUP {
                let src = &raw[((gi * GROUP + r) * blocks + b) * bb..][..bb];
                dst[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
                let (quants, words) = match layout {
                    Layout::Q4_1 => {
                        dst[16 + 2 * r..18 + 2 * r].copy_from_slice(&src[2..4]);
                        (&src[4..], 32)
                    }
                    Layout::Q5_0 => {
                        let qh = u32::from_le_bytes(src[2..6].try_into().expect("4 bytes"));
                        dst[16 + 4 * r..20 + 4 * r].copy_from_slice(&fifth_bits(qh).to_le_bytes());
                        (&src[6..], 48)
                    }
                    Layout::Q8_0 => (&src[2..], 16),
                    Layout::Q4K => {
                        dst[16 + 2 * r..18 + 2 * r].copy_from_slice(&src[2..4]);
                        let sm = q4_k_scales(src);
                        for (j, &scale) in sm[..8].iter().enumerate() {
                            dst[32 + 8 * j + r] = scale;
                        }
                        for k in 0..4 {
                            let at = 96 + 16 * k + 2 * r;
                            dst[at..at + 2].copy_from_slice(&sm[8 + 2 * k..10 + 2 * k]);
                        }
                        (&src[16..], 160)
                    }
                };
                for (g, four) in quants.chunks_exact(4).enumerate() {
                    let at = words + 32 * g + 4 * r;
                    dst[at..at + 4].copy_from_slice(four);
                }
            }
        }
    }
}

/// A Q4_K block's eight 6-bit scales, then its eight mins.
fn q4_k_scales(block: &[u8]) -> [u8; 16] {
    let mut sm = [0u8; 16];
    let words = crate::kernels::q4_k_scales_mins(&block[4..16]);
    for (c, w) in sm.chunks_exact_mut(4).zip(words) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    sm
}

/// Q5_0's fifth bits (bit `k` for value `k`) rearranged as the module doc describes.
fn fifth_bits(qh: u32) -> u32 {
    let mut out = 0;
    for i in 0..4 {
        for j in 0..8 {
            let value = if j < 4 {
                4 * j + i
            } else {
                16 + 4 * (j - 4) + i
            };
            out |= ((qh >> value) & 1) << (8 * i + j);
        }
    }
    out
}

/// The words [`Layout::sums_per_block`] asks for, for activation blocks `act` of `layout`'s
/// activation type: Q5_0, each Q8_0 block's sum of quants; Q4_K, for each Q8_K block, the sums
/// of its 32-value sub-blocks `2k` and `2k + 1` as an i16 pair per word.
pub fn block_sums(layout: Layout, act: &[u8], out: &mut [i32]) {
    let per = layout.sums_per_block().max(1);
    for (block, s) in act
        .chunks_exact(layout.activation_bytes())
        .zip(out.chunks_exact_mut(per))
    {
        match layout {
            Layout::Q5_0 => s[0] = block[2..].iter().map(|&q| i32::from(q as i8)).sum(),
            Layout::Q4K => {
                let bsum = |i: usize| i16::from_le_bytes([block[260 + 2 * i], block[261 + 2 * i]]);
                for (k, word) in s.iter_mut().enumerate() {
                    let lo = bsum(4 * k) + bsum(4 * k + 1);
                    let hi = bsum(4 * k + 2) + bsum(4 * k + 3);
                    *word = (u32::from(lo as u16) | u32::from(hi as u16) << 16) as i32;
                }
            }
            Layout::Q4_1 | Layout::Q8_0 => {}
        }
    }
}

/// The instruction sets the packed kernels come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Portable,
    /// AVX2, FMA and F16C.
    Avx2,
    /// AVX2, FMA, F16C and AVX-VNNI.
    AvxVnni,
}

impl Kernels {
    /// Slowest first.
    const ALL: [Kernels; 3] = [Kernels::Portable, Kernels::Avx2, Kernels::AvxVnni];

    /// Whether this CPU has the instructions these kernels need.
    pub fn runs_here(self) -> bool {
        match self {
            Kernels::Portable => true,
            Kernels::Avx2 => crate::kernels::has_avx2(),
            Kernels::AvxVnni => crate::kernels::has_avx2() && crate::kernels::has_avx_vnni(),
        }
    }

    /// Those this CPU runs, fastest last.
    pub fn available() -> Vec<Kernels> {
        Self::ALL.into_iter().filter(|k| k.runs_here()).collect()
    }

    /// The fastest this CPU runs.
    pub fn best() -> Kernels {
        Self::ALL
            .into_iter()
            .rev()
            .find(|k| k.runs_here())
            .unwrap_or(Kernels::Portable)
    }
}

/// The eight rows of one packed group (`blocks` blocks) against up to [`MAX_ROWS`] quantized
/// activation rows: `out[t][r]` = row `r` · activation row `t`. `sums[t]` holds activation row
/// `t`'s block sums where the layout needs them (else it may be empty).
pub fn group_dot(
    layout: Layout,
    w: &[u8],
    ys: &[&[u8]],
    sums: &[&[i32]],
    blocks: usize,
    out: &mut [[f32; GROUP]],
) {
    group_dot_with(Kernels::best(), layout, w, ys, sums, blocks, out)
}

/// [`group_dot`] with the kernels of `kernels`, which must [`Kernels::runs_here`]; every
/// choice gives the same bits.
pub fn group_dot_with(
    kernels: Kernels,
    layout: Layout,
    w: &[u8],
    ys: &[&[u8]],
    sums: &[&[i32]],
    blocks: usize,
    out: &mut [[f32; GROUP]],
) {
    assert!(!ys.is_empty() && ys.len() <= MAX_ROWS && out.len() >= ys.len());
    assert!(w.len() >= blocks * layout.packed_bytes());
    assert!(ys
        .iter()
        .all(|y| y.len() >= blocks * layout.activation_bytes()));
    let per = layout.sums_per_block();
    assert!(per == 0 || (sums.len() >= ys.len() && sums.iter().all(|s| s.len() >= blocks * per)));
    assert!(
        kernels.runs_here(),
        "{kernels:?} kernels cannot run on this CPU"
    );
    #[cfg(target_arch = "x86_64")]
    if kernels != Kernels::Portable {
        macro_rules! rows {
            ($module:ident, $t:literal) => {{
                let ys: [&[u8]; $t] = ys.try_into().expect("length matched");
                let out: &mut [[f32; GROUP]; $t] =
                    (&mut out[..$t]).try_into().expect("length matched");
                // SAFETY: the module's instruction set is present (`runs_here`, asserted above),
                // and so are the lengths.
                unsafe {
                    match layout {
                        Layout::Q4_1 => $module::q4_1::<$t>(w, ys, blocks, out),
                        Layout::Q5_0 => {
                            let sums: [&[i32]; $t] = sums[..$t].try_into().expect("length matched");
                            $module::q5_0::<$t>(w, ys, sums, blocks, out)
                        }
                        Layout::Q8_0 => $module::q8_0::<$t>(w, ys, blocks, out),
                        Layout::Q4K => {
                            let sums: [&[i32]; $t] = sums[..$t].try_into().expect("length matched");
                            $module::q4_k::<$t>(w, ys, sums, blocks, out)
                        }
                    }
                }
            }};
        }
        macro_rules! with {
            ($module:ident) => {
                match ys.len() {
                    1 => rows!($module, 1),
                    2 => rows!($module, 2),
                    3 => rows!($module, 3),
                    _ => rows!($module, 4),
                }
            };
        }
        if kernels == Kernels::AvxVnni {
            with!(avx_vnni);
        } else {
            with!(avx2);
        }
        return;
    }
    group_dot_portable(layout, w, ys, sums, blocks, out);
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Portable [`group_dot`]: the same arithmetic in the same order, one value at a time.
pub fn group_dot_portable(
    layout: Layout,
    w: &[u8],
    ys: &[&[u8]],
    sums: &[&[i32]],
    blocks: usize,
    out: &mut [[f32; GROUP]],
) {
    if layout == Layout::Q4K {
        return q4_k_portable(w, ys, sums, blocks, out);
    }
    // The 32-value layouts.
    let (gb, ab) = (layout.packed_bytes(), layout.activation_bytes());
    for (t, (y, o)) in ys.iter().zip(out.iter_mut()).enumerate() {
        let mut acc = [0.0f32; GROUP];
        let mut macc = [0.0f32; GROUP];
        for b in 0..blocks {
            let (wb, yb) = (&w[b * gb..(b + 1) * gb], &y[b * ab..(b + 1) * ab]);
            let dy = f16_at(yb, 0);
            for r in 0..GROUP {
                let lane = |g: usize, base: usize| &wb[base + 32 * g + 4 * r..][..4];
                let isum: i32 = match layout {
                    Layout::Q4_1 => (0..4)
                        .flat_map(|g| (0..4).map(move |i| (g, i)))
                        .map(|(g, i)| {
                            let q = lane(g, 32)[i];
                            i32::from(q & 0x0F) * i32::from(yb[4 + 4 * g + i] as i8)
                                + i32::from(q >> 4) * i32::from(yb[20 + 4 * g + i] as i8)
                        })
                        .sum(),
                    Layout::Q5_0 => {
                        let qh = u32::from_le_bytes(wb[16 + 4 * r..20 + 4 * r].try_into().unwrap());
                        let unsigned: i32 = (0..4)
                            .flat_map(|g| (0..4).map(move |i| (g, i)))
                            .map(|(g, i)| {
                                let q = lane(g, 48)[i];
                                let lo = (q & 0x0F) | ((((qh >> (8 * i + g)) & 1) as u8) << 4);
                                let hi = (q >> 4) | ((((qh >> (8 * i + 4 + g)) & 1) as u8) << 4);
                                i32::from(lo) * i32::from(yb[2 + 4 * g + i] as i8)
                                    + i32::from(hi) * i32::from(yb[18 + 4 * g + i] as i8)
                            })
                            .sum();
                        unsigned - 16 * sums[t][b]
                    }
                    Layout::Q8_0 => (0..8)
                        .flat_map(|g| (0..4).map(move |i| (g, i)))
                        .map(|(g, i)| {
                            i32::from(lane(g, 16)[i] as i8) * i32::from(yb[2 + 4 * g + i] as i8)
                        })
                        .sum(),
                    Layout::Q4K => unreachable!("handled above"),
                };
                acc[r] = (isum as f32).mul_add(f16_at(wb, 2 * r) * dy, acc[r]);
                if layout == Layout::Q4_1 {
                    macc[r] = f16_at(wb, 16 + 2 * r).mul_add(f16_at(yb, 2), macc[r]);
                }
            }
        }
        for r in 0..GROUP {
            o[r] = if layout == Layout::Q4_1 {
                acc[r] + macc[r]
            } else {
                acc[r]
            };
        }
    }
}

/// Portable Q4_K [`group_dot`].
fn q4_k_portable(w: &[u8], ys: &[&[u8]], sums: &[&[i32]], blocks: usize, out: &mut [[f32; GROUP]]) {
    for (t, (y, o)) in ys.iter().zip(out.iter_mut()).enumerate() {
        let mut acc = [0.0f32; GROUP];
        let mut macc = [0.0f32; GROUP];
        for b in 0..blocks {
            let (wb, yb) = (&w[b * 1184..(b + 1) * 1184], &y[b * 292..(b + 1) * 292]);
            let dy = f32::from_le_bytes(yb[..4].try_into().expect("4 bytes"));
            for r in 0..GROUP {
                let mut isum = 0i32;
                for j in 0..8 {
                    let (c, high) = (j / 2, j % 2 == 1);
                    let part: i32 = (0..32)
                        .map(|l| {
                            let byte = wb[160 + 32 * (8 * c + l / 4) + 4 * r + l % 4];
                            let q = if high { byte >> 4 } else { byte & 0x0F };
                            i32::from(q) * i32::from(yb[4 + 32 * j + l] as i8)
                        })
                        .sum();
                    isum += i32::from(wb[32 + 8 * j + r]) * part;
                }
                let imin: i32 = (0..4)
                    .map(|k| {
                        let word = sums[t][4 * b + k];
                        let (lo, hi) = (i32::from(word as i16), i32::from((word >> 16) as i16));
                        let at = 96 + 16 * k + 2 * r;
                        i32::from(wb[at]) * lo + i32::from(wb[at + 1]) * hi
                    })
                    .sum();
                acc[r] = (isum as f32).mul_add(f16_at(wb, 2 * r) * dy, acc[r]);
                macc[r] = (imin as f32).mul_add(f16_at(wb, 16 + 2 * r) * dy, macc[r]);
            }
        }
        for r in 0..GROUP {
            o[r] = acc[r] - macc[r];
        }
    }
}

/// The packed kernels for the instruction set `$features`, built on that module's byte products:
/// `dot(s, u, i)` adds to `s` the products of unsigned bytes `u` and signed bytes `i` (lanes of
/// the module's choosing), `widen` turns those lanes into each row's i32 sum, `dot_wide` adds
/// the i32 sums directly, `scales`/`scaled` multiply one sub-block's sums by each row's 6-bit
/// scale. Every integer is exact in both modules, so their results are the same bits.
#[cfg(target_arch = "x86_64")]
macro_rules! packed_kernels {
    ($features:literal) => {
        /// How far ahead of the block in hand the kernels ask for weights (1, 2, 4 and 8 KB
        /// tried: 4 KB was among the best for both models, within this VM's noise).
        const PREFETCH: usize = 4096;

        /// Asks for the cache lines `PREFETCH` bytes past a block of `bytes` at `p` (a hint: it
        /// never faults, past the end of the weights too). Weights stream from memory once per
        /// step, and the hardware's own prefetching left the kernels waiting (SmolLM2 decoding,
        /// 1 thread, Intel Xeon VM: 54 → ~85 tokens/s; four sessions 140 → ~210).
        #[inline]
        #[target_feature(enable = $features)]
        fn prefetch(p: *const u8, bytes: usize) {
            for line in (0..bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + line).cast());
            }
        }

        /// Eight f16 at `p` as eight floats.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16x8(p: *const u8) -> __m256 {
            // SAFETY: the caller passes a pointer to 16 readable bytes.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
        }

        /// The f16 at `p` in all eight lanes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16_all(p: *const u8) -> __m256 {
            // SAFETY: the caller passes a pointer to 2 readable bytes.
            _mm256_cvtph_ps(_mm_set1_epi16(unsafe { p.cast::<i16>().read_unaligned() }))
        }

        /// The four bytes at `p` repeated in every 32-bit lane.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn four_all(p: *const u8) -> __m256i {
            // SAFETY: the caller passes a pointer to 4 readable bytes.
            _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
        }

        /// A nibble register's low nibbles and high nibbles, as bytes.
        #[inline]
        #[target_feature(enable = $features)]
        fn nibbles(p: __m256i) -> (__m256i, __m256i) {
            let low = _mm256_set1_epi8(0x0F);
            (
                _mm256_and_si256(p, low),
                _mm256_and_si256(_mm256_srli_epi16(p, 4), low),
            )
        }

        /// `s` plus the products of `lo` against the activation bytes at `yp` and of `hi` against
        /// those 16 further on (a 32-value block's values `4g..` and `16 + 4g..`), in [`dot`]'s lanes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn lo_hi_products(s: __m256i, lo: __m256i, hi: __m256i, yp: *const u8) -> __m256i {
            // SAFETY: the caller passes a pointer to 20 readable bytes.
            let (ylo, yhi) = unsafe { (four_all(yp), four_all(yp.add(16))) };
            dot(dot(s, lo, ylo), hi, yhi)
        }

        /// Stores each activation row's eight results.
        #[inline]
        #[target_feature(enable = $features)]
        fn store<const T: usize>(out: &mut [[f32; GROUP]; T], acc: [__m256; T]) {
            for (o, a) in out.iter_mut().zip(acc) {
                // SAFETY: `o` holds eight floats.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
            }
        }

        /// # Safety
        /// Needs the instruction set the module is for; `w` holds `blocks` packed Q4_1 blocks and each `ys[t]` `blocks`
        /// Q8_1 blocks.
        #[target_feature(enable = $features)]
        pub unsafe fn q4_1<const T: usize>(
            w: &[u8],
            ys: [&[u8]; T],
            blocks: usize,
            out: &mut [[f32; GROUP]; T],
        ) {
            assert!(w.len() >= blocks * 160 && ys.iter().all(|y| y.len() >= blocks * 36));
            let mut acc = [_mm256_setzero_ps(); T];
            // The offsets' products (m × s) sum apart from the quants', as ggml sums them.
            let mut macc = [_mm256_setzero_ps(); T];
            for b in 0..blocks {
                // SAFETY: block `b` is in bounds of `w` and of every `ys[t]` (asserted above).
                unsafe {
                    let wp = w.as_ptr().add(b * 160);
                    prefetch(wp, 160);
                    // Per lane: 8 products of at most 15 × 127 per pair sum: fits an i16 of `dot`.
                    let mut s = [_mm256_setzero_si256(); T];
                    for g in 0..4 {
                        let (lo, hi) = nibbles(_mm256_loadu_si256(wp.add(32 + 32 * g).cast()));
                        for t in 0..T {
                            let yp = ys[t].as_ptr().add(b * 36 + 4 + 4 * g);
                            s[t] = lo_hi_products(s[t], lo, hi, yp);
                        }
                    }
                    let (d, m) = (f16x8(wp), f16x8(wp.add(16)));
                    for t in 0..T {
                        let yp = ys[t].as_ptr().add(b * 36);
                        let isum = _mm256_cvtepi32_ps(widen(s[t]));
                        acc[t] = _mm256_fmadd_ps(isum, _mm256_mul_ps(d, f16_all(yp)), acc[t]);
                        macc[t] = _mm256_fmadd_ps(m, f16_all(yp.add(2)), macc[t]);
                    }
                }
            }
            store(out, std::array::from_fn(|t| _mm256_add_ps(acc[t], macc[t])));
        }

        /// # Safety
        /// Needs the instruction set the module is for; `w` holds `blocks` packed Q5_0 blocks, each `ys[t]` `blocks`
        /// Q8_0 blocks and each `sums[t]` their `blocks` sums.
        #[target_feature(enable = $features)]
        pub unsafe fn q5_0<const T: usize>(
            w: &[u8],
            ys: [&[u8]; T],
            sums: [&[i32]; T],
            blocks: usize,
            out: &mut [[f32; GROUP]; T],
        ) {
            assert!(w.len() >= blocks * 176 && ys.iter().all(|y| y.len() >= blocks * 34));
            assert!(sums.iter().all(|s| s.len() >= blocks));
            let bit = _mm256_set1_epi8(0x10);
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..blocks {
                // SAFETY: block `b` is in bounds of `w`, of every `ys[t]` and `sums[t]` (asserted).
                unsafe {
                    let wp = w.as_ptr().add(b * 176);
                    prefetch(wp, 176);
                    let qh = _mm256_loadu_si256(wp.add(16).cast());
                    // Values 0..=31 (the −16 comes off through the block sum): pair sums up to
                    // 2 × 31 × 127, so an i16 lane of `dot` takes two registers' worth before widening.
                    let mut s = [[_mm256_setzero_si256(); 2]; T];
                    for g in 0..4 {
                        let (lo, hi) = nibbles(_mm256_loadu_si256(wp.add(48 + 32 * g).cast()));
                        let hlo = _mm256_sllv_epi32(qh, _mm256_set1_epi32(4 - g as i32));
                        let hhi = _mm256_srlv_epi32(qh, _mm256_set1_epi32(g as i32));
                        let lo = _mm256_or_si256(lo, _mm256_and_si256(hlo, bit));
                        let hi = _mm256_or_si256(hi, _mm256_and_si256(hhi, bit));
                        for t in 0..T {
                            let yp = ys[t].as_ptr().add(b * 34 + 2 + 4 * g);
                            s[t][g / 2] = lo_hi_products(s[t][g / 2], lo, hi, yp);
                        }
                    }
                    let d = f16x8(wp);
                    for t in 0..T {
                        let yp = ys[t].as_ptr().add(b * 34);
                        let isum = _mm256_add_epi32(widen(s[t][0]), widen(s[t][1]));
                        let offset = _mm256_set1_epi32(16 * *sums[t].get_unchecked(b));
                        let isum = _mm256_cvtepi32_ps(_mm256_sub_epi32(isum, offset));
                        acc[t] = _mm256_fmadd_ps(isum, _mm256_mul_ps(d, f16_all(yp)), acc[t]);
                    }
                }
            }
            store(out, acc);
        }

        /// # Safety
        /// Needs the instruction set the module is for; `w` holds `blocks` packed Q8_0 blocks and each `ys[t]` `blocks`
        /// Q8_0 blocks.
        #[target_feature(enable = $features)]
        pub unsafe fn q8_0<const T: usize>(
            w: &[u8],
            ys: [&[u8]; T],
            blocks: usize,
            out: &mut [[f32; GROUP]; T],
        ) {
            assert!(w.len() >= blocks * 272 && ys.iter().all(|y| y.len() >= blocks * 34));
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..blocks {
                // SAFETY: block `b` is in bounds of `w` and of every `ys[t]` (asserted above).
                unsafe {
                    let wp = w.as_ptr().add(b * 272);
                    prefetch(wp, 272);
                    let mut s = [_mm256_setzero_si256(); T];
                    for g in 0..8 {
                        let p = _mm256_loadu_si256(wp.add(16 + 32 * g).cast());
                        // |w| × (y with w's sign): unsigned × signed, as the byte products want.
                        let a = _mm256_abs_epi8(p);
                        for t in 0..T {
                            let y = four_all(ys[t].as_ptr().add(b * 34 + 2 + 4 * g));
                            s[t] = dot_wide(s[t], a, _mm256_sign_epi8(y, p));
                        }
                    }
                    let d = f16x8(wp);
                    for t in 0..T {
                        let dy = f16_all(ys[t].as_ptr().add(b * 34));
                        let isum = _mm256_cvtepi32_ps(s[t]);
                        acc[t] = _mm256_fmadd_ps(isum, _mm256_mul_ps(d, dy), acc[t]);
                    }
                }
            }
            store(out, acc);
        }

        /// # Safety
        /// Needs the instruction set the module is for; `w` holds `blocks` packed Q4_K blocks, each `ys[t]` `blocks`
        /// Q8_K blocks and each `sums[t]` their `4 × blocks` sub-block sum pairs.
        #[target_feature(enable = $features)]
        pub unsafe fn q4_k<const T: usize>(
            w: &[u8],
            ys: [&[u8]; T],
            sums: [&[i32]; T],
            blocks: usize,
            out: &mut [[f32; GROUP]; T],
        ) {
            assert!(w.len() >= blocks * 1184 && ys.iter().all(|y| y.len() >= blocks * 292));
            assert!(sums.iter().all(|s| s.len() >= blocks * 4));
            let mut acc = [_mm256_setzero_ps(); T];
            let mut macc = [_mm256_setzero_ps(); T];
            for b in 0..blocks {
                // SAFETY: block `b` is in bounds of `w`, of every `ys[t]` and `sums[t]` (asserted).
                unsafe {
                    let wp = w.as_ptr().add(b * 1184);
                    prefetch(wp, 1184);
                    let mut isum = [_mm256_setzero_si256(); T];
                    for j in 0..8 {
                        let (c, high) = (j / 2, j % 2 == 1);
                        // Per lane: 16 products of at most 15 × 127: fits an i16 of `dot`.
                        let mut s = [_mm256_setzero_si256(); T];
                        for g in 0..8 {
                            let p = _mm256_loadu_si256(wp.add(160 + 32 * (8 * c + g)).cast());
                            let v = if high { nibbles(p).1 } else { nibbles(p).0 };
                            for t in 0..T {
                                let y = four_all(ys[t].as_ptr().add(b * 292 + 4 + 32 * j + 4 * g));
                                s[t] = dot(s[t], v, y);
                            }
                        }
                        let sc = scales(wp.add(32 + 8 * j));
                        for t in 0..T {
                            isum[t] = _mm256_add_epi32(isum[t], scaled(s[t], sc));
                        }
                    }
                    let (d, dmin) = (f16x8(wp), f16x8(wp.add(16)));
                    for t in 0..T {
                        let mut imin = _mm256_setzero_si256();
                        for k in 0..4 {
                            let mins =
                                _mm256_cvtepu8_epi16(_mm_loadu_si128(wp.add(96 + 16 * k).cast()));
                            let ysum = _mm256_set1_epi32(*sums[t].get_unchecked(4 * b + k));
                            imin = _mm256_add_epi32(imin, _mm256_madd_epi16(mins, ysum));
                        }
                        let yp = ys[t].as_ptr().add(b * 292);
                        let dy = _mm256_set1_ps(yp.cast::<f32>().read_unaligned());
                        let isum = _mm256_cvtepi32_ps(isum[t]);
                        acc[t] = _mm256_fmadd_ps(isum, _mm256_mul_ps(d, dy), acc[t]);
                        let imin = _mm256_cvtepi32_ps(imin);
                        macc[t] = _mm256_fmadd_ps(imin, _mm256_mul_ps(dmin, dy), macc[t]);
                    }
                }
            }
            store(out, std::array::from_fn(|t| _mm256_sub_ps(acc[t], macc[t])));
        }
    };
}

/// AVX2: byte products through `maddubs` into i16 pair sums, widened by `madd`.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::GROUP;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot(s: __m256i, u: __m256i, i: __m256i) -> __m256i {
        _mm256_add_epi16(s, _mm256_maddubs_epi16(u, i))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn widen(s: __m256i) -> __m256i {
        _mm256_madd_epi16(s, _mm256_set1_epi16(1))
    }

    /// A pair sum reaches 2 × 128 × 127, so each is widened at once.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_wide(s: __m256i, u: __m256i, i: __m256i) -> __m256i {
        _mm256_add_epi32(s, widen(_mm256_maddubs_epi16(u, i)))
    }

    /// The eight rows' scales at `p`, each in both halves of its lane, for one `madd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(p: *const u8) -> __m256i {
        // SAFETY: the caller passes a pointer to 8 readable bytes.
        let sc = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p.cast()) });
        _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scaled(s: __m256i, sc: __m256i) -> __m256i {
        _mm256_madd_epi16(s, sc)
    }

    packed_kernels!("avx2,fma,f16c");
}

/// AVX-VNNI: byte products summed straight into each row's i32 lane by `vpdpbusd` (one
/// instruction where AVX2 takes two or three).
#[cfg(target_arch = "x86_64")]
mod avx_vnni {
    use std::arch::x86_64::*;

    use super::GROUP;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    fn dot(s: __m256i, u: __m256i, i: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(s, u, i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    fn widen(s: __m256i) -> __m256i {
        s
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    fn dot_wide(s: __m256i, u: __m256i, i: __m256i) -> __m256i {
        dot(s, u, i)
    }

    /// The eight rows' scales at `p`, one per lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn scales(p: *const u8) -> __m256i {
        // SAFETY: the caller passes a pointer to 8 readable bytes.
        _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p.cast()) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    fn scaled(s: __m256i, sc: __m256i) -> __m256i {
        _mm256_mullo_epi32(s, sc)
    }

    packed_kernels!("avx2,fma,f16c,avxvnni");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::quantizer;
    use crate::kernels::{self, tests::bytes};

    /// Pseudo-random values in −2..2.
    fn floats(n: usize, seed: u64) -> Vec<f32> {
        bytes(n, seed)
            .into_iter()
            .map(|b| (f32::from(b) / 255.0 - 0.5) * 4.0)
            .collect()
    }

    /// `rows` GGUF rows of random quants with sane f16 scales (and Q4_1 mins).
    fn weights(layout: Layout, rows: usize, blocks: usize, seed: u64) -> Vec<u8> {
        let bb = layout.block_bytes();
        let mut raw = bytes(rows * blocks * bb, seed);
        for (i, block) in raw.chunks_exact_mut(bb).enumerate() {
            let d = f16::from_f32(0.002 + (i % 17) as f32 * 0.001);
            block[..2].copy_from_slice(&d.to_le_bytes());
            if matches!(layout, Layout::Q4_1 | Layout::Q4K) {
                let m = f16::from_f32(-0.01 - (i % 5) as f32 * 0.003);
                block[2..4].copy_from_slice(&m.to_le_bytes());
            }
        }
        raw
    }

    fn activations(layout: Layout, n: usize, cols: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|t| {
                let x = floats(cols, 7 + t as u64);
                let mut q = vec![0u8; cols / layout.block_values() * layout.activation_bytes()];
                let quantize = quantizer(layout.activation_type()).expect("Q8 activations");
                quantize(&x, &mut q);
                q
            })
            .collect()
    }

    /// The GGUF row-at-a-time kernel for the same product.
    fn row_dot(layout: Layout, x: &[u8], y: &[u8], blocks: usize) -> f32 {
        match layout {
            Layout::Q4_1 => kernels::dot_q4_1_q8_1_portable(x, y, blocks),
            Layout::Q5_0 => kernels::dot_q5_0_q8_0_portable(x, y, blocks),
            Layout::Q8_0 => kernels::dot_q8_0_q8_0_portable(x, y, blocks),
            Layout::Q4K => kernels::dot_q4_k_q8_k_portable(x, y, blocks),
        }
    }

    #[test]
    fn packed_products_agree_with_row_kernels_and_do_not_depend_on_the_batch() {
        for layout in [Layout::Q4_1, Layout::Q5_0, Layout::Q8_0, Layout::Q4K] {
            for blocks in [1, 3, 18, 64] {
                let (rows, cols) = (16, blocks * layout.block_values());
                let raw = weights(layout, rows, blocks, blocks as u64 * 31 + layout as u64);
                let mut packed = vec![0; rows / GROUP * blocks * layout.packed_bytes()];
                pack(layout, &raw, blocks, &mut packed);
                let ys = activations(layout, 4, cols);
                let sums: Vec<Vec<i32>> = ys
                    .iter()
                    .map(|y| {
                        let mut s = vec![0; blocks * layout.sums_per_block()];
                        block_sums(layout, y, &mut s);
                        s
                    })
                    .collect();
                let y_refs: Vec<&[u8]> = ys.iter().map(|y| y.as_slice()).collect();
                let s_refs: Vec<&[i32]> = sums.iter().map(|s| s.as_slice()).collect();
                let gb = blocks * layout.packed_bytes();
                for g in 0..rows / GROUP {
                    let w = &packed[g * gb..(g + 1) * gb];
                    let mut portable = [[0.0; GROUP]; 4];
                    group_dot_portable(layout, w, &y_refs, &s_refs, blocks, &mut portable);
                    for kernels in Kernels::available() {
                        let mut four = [[0.0; GROUP]; 4];
                        group_dot_with(kernels, layout, w, &y_refs, &s_refs, blocks, &mut four);
                        for t in 0..4 {
                            // One activation row alone gives the same bits as inside a batch.
                            let mut one = [[0.0; GROUP]; 1];
                            group_dot_with(
                                kernels,
                                layout,
                                w,
                                &y_refs[t..t + 1],
                                &s_refs[t..t + 1],
                                blocks,
                                &mut one,
                            );
                            for r in 0..GROUP {
                                let what = format!(
                                "{kernels:?} {layout:?} blocks {blocks} group {g} row {r} t {t}"
                            );
                                assert_eq!(four[t][r].to_bits(), one[0][r].to_bits(), "{what}");
                                assert_eq!(
                                    four[t][r].to_bits(),
                                    portable[t][r].to_bits(),
                                    "{what}"
                                );
                                let bb = layout.block_bytes();
                                let row = &raw[(g * GROUP + r) * blocks * bb..][..blocks * bb];
                                let want = row_dot(layout, row, &ys[t], blocks);
                                let tol = 1e-4 * want.abs().max(1.0);
                                assert!(
                                    (four[t][r] - want).abs() <= tol,
                                    "{what}: {} vs {want}",
                                    four[t][r]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fifth_bits_put_each_value_under_its_nibble() {
        for k in 0..32 {
            let moved = fifth_bits(1 << k);
            assert_eq!(moved.count_ones(), 1, "{k}");
            let at = moved.trailing_zeros();
            let (i, j) = (at / 8, at % 8);
            let value = if j < 4 {
                4 * j + i
            } else {
                16 + 4 * (j - 4) + i
            };
            assert_eq!(value, k, "{k}");
        }
    }
}
