//! Dot-product kernels for Q4_1 × Q8_1, Q5_0 × Q8_0, Q8_0 × Q8_0, Q4_K × Q8_K and Q6_K × Q8_K
//! (candle's are scalar, convert scales through a feature check per block, or take one activation
//! row at a time), each also four activation rows at a time, with AVX2/FMA paths chosen at run time
//! and portable fallbacks tested to agree with them. Blocks are raw GGUF bytes: Q4_1 = f16 d, f16 m,
//! 16 nibble bytes; Q5_0 = f16 d, u32 high bits, 16 nibble bytes; Q8_1 = f16 d, f16 s, 32 i8;
//! Q8_0 = f16 d, 32 i8; Q4_K = f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 nibble
//! bytes; Q6_K = 128 low-nibble bytes, 64 high-bit bytes, 16 i8 scales, f16 d; Q8_K = f32 d,
//! 256 i8, 16 i16 sums of 16.

use half::f16;

const Q4_1: usize = 20;
const Q5_0: usize = 22;
const Q8_0: usize = 34;
const Q8_1: usize = 36;
const Q4_K: usize = 144;
const Q6_K: usize = 210;
const Q8_K: usize = 292;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A Q4_K block's twelve bytes of packed 6-bit values → eight scales (bytes 0..8) and eight mins
/// (bytes 8..16), as four little-endian words.
#[inline]
pub(crate) fn q4_k_scales_mins(b: &[u8]) -> [u32; 4] {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let (a, b, c) = (u32_at(b, 0), u32_at(b, 4), u32_at(b, 8));
    [
        a & LOW6,
        (c & LOW4) | (((a >> 6) & LOW2) << 4),
        b & LOW6,
        ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4),
    ]
}

/// Whether the AVX2 + FMA + F16C kernels can run here.
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU also has AVX-VNNI (byte products summed in one instruction), which the packed
/// kernels use beside AVX2.
pub fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs the AVX2 kernel `$simd` when the CPU has it, else the portable expression.
macro_rules! simd_or {
    ($simd:ident($($arg:expr),*), $portable:expr) => {{
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2, FMA and F16C are present; each kernel asserts its own bounds.
            return unsafe { avx2::$simd($($arg),*) };
        }
        $portable
    }};
}

/// Dot product of `blocks` Q4_1 weight blocks with Q8_1 activation blocks.
pub fn dot_q4_1_q8_1(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    simd_or!(
        dot_q4_1_q8_1(x, y, blocks),
        dot_q4_1_q8_1_portable(x, y, blocks)
    )
}

/// Four dot products of one Q4_1 weight row with four Q8_1 activation rows.
pub fn dot_q4_1_q8_1_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
    simd_or!(
        dot_q4_1_q8_1_x4(x, ys, blocks),
        ys.map(|y| dot_q4_1_q8_1_portable(x, y, blocks))
    )
}

/// Dot product of `blocks` Q5_0 weight blocks with Q8_0 activation blocks.
pub fn dot_q5_0_q8_0(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    simd_or!(
        dot_q5_0_q8_0(x, y, blocks),
        dot_q5_0_q8_0_portable(x, y, blocks)
    )
}

/// Four dot products of one Q5_0 weight row with four Q8_0 activation rows.
pub fn dot_q5_0_q8_0_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
    simd_or!(
        dot_q5_0_q8_0_x4(x, ys, blocks),
        ys.map(|y| dot_q5_0_q8_0_portable(x, y, blocks))
    )
}

/// Dot product of `blocks` Q8_0 weight blocks with Q8_0 activation blocks.
pub fn dot_q8_0_q8_0(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    simd_or!(
        dot_q8_0_q8_0(x, y, blocks),
        dot_q8_0_q8_0_portable(x, y, blocks)
    )
}

/// Four dot products of one Q8_0 weight row with four Q8_0 activation rows.
pub fn dot_q8_0_q8_0_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
    simd_or!(
        dot_q8_0_q8_0_x4(x, ys, blocks),
        ys.map(|y| dot_q8_0_q8_0_portable(x, y, blocks))
    )
}

/// Dot product of `blocks` Q4_K weight blocks with Q8_K activation blocks.
pub fn dot_q4_k_q8_k(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    simd_or!(
        dot_q4_k_q8_k(x, y, blocks),
        dot_q4_k_q8_k_portable(x, y, blocks)
    )
}

/// Four dot products of one Q4_K weight row with four Q8_K activation rows.
pub fn dot_q4_k_q8_k_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
    simd_or!(
        dot_q4_k_q8_k_x4(x, ys, blocks),
        ys.map(|y| dot_q4_k_q8_k_portable(x, y, blocks))
    )
}

/// Dot product of `blocks` Q6_K weight blocks with Q8_K activation blocks.
pub fn dot_q6_k_q8_k(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    simd_or!(
        dot_q6_k_q8_k(x, y, blocks),
        dot_q6_k_q8_k_portable(x, y, blocks)
    )
}

/// Four dot products of one Q6_K weight row with four Q8_K activation rows.
pub fn dot_q6_k_q8_k_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
    simd_or!(
        dot_q6_k_q8_k_x4(x, ys, blocks),
        ys.map(|y| dot_q6_k_q8_k_portable(x, y, blocks))
    )
}

/// Attention scores of one query head `q` against `out.len()` f16 key rows: row `j` is
/// `keys[j * stride..][..q.len()]`, and `out[j] = (row j · q) × scale`.
pub fn scores_f16(keys: &[f16], stride: usize, q: &[f32], scale: f32, out: &mut [f32]) {
    let hd = q.len();
    assert!(out.is_empty() || keys.len() >= (out.len() - 1) * stride + hd);
    // One row of the grouped kernel is this kernel.
    simd_or!(scores_f16_rows(keys, stride, q, hd, scale, out), {
        for (j, o) in out.iter_mut().enumerate() {
            let k = &keys[j * stride..][..hd];
            *o = k.iter().zip(q).map(|(a, b)| a.to_f32() * b).sum::<f32>() * scale;
        }
    })
}

/// `out = Σ_j w[j] × row j` over `w.len()` f16 value rows, row `j` being
/// `values[j * stride..][..out.len()]`.
pub fn weighted_sum_f16(values: &[f16], stride: usize, w: &[f32], out: &mut [f32]) {
    let hd = out.len();
    assert!(w.is_empty() || values.len() >= (w.len() - 1) * stride + hd);
    simd_or!(weighted_sum_f16_rows(values, stride, w, out, hd), {
        out.fill(0.0);
        for (j, &wj) in w.iter().enumerate() {
            for (o, x) in out.iter_mut().zip(&values[j * stride..][..hd]) {
                *o += wj * x.to_f32();
            }
        }
    })
}

/// `scores_f16` for several query heads that share one key head: row `r` of `qs`
/// (`qs[r * hd..][..hd]`) against the same `len` key rows, into `out[r * len..][..len]`. Each key
/// is read and converted once for all the rows, and each row's scores are bit-identical to
/// `scores_f16` on that row alone.
pub fn scores_f16_rows(
    keys: &[f16],
    stride: usize,
    qs: &[f32],
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    assert!(hd > 0 && qs.len().is_multiple_of(hd));
    let rows = qs.len() / hd;
    assert!(rows > 0 && out.len().is_multiple_of(rows));
    let len = out.len() / rows;
    assert!(len == 0 || keys.len() >= (len - 1) * stride + hd);
    simd_or!(scores_f16_rows(keys, stride, qs, hd, scale, out), {
        for (q, o) in qs.chunks_exact(hd).zip(out.chunks_exact_mut(len.max(1))) {
            scores_f16(keys, stride, q, scale, &mut o[..len]);
        }
    })
}

/// `weighted_sum_f16` for several query heads that share one value head: weights `ws[r * len..]
/// [..len]` → `out[r * hd..][..hd]`, each value row read and converted once for all the rows,
/// and each row's output bit-identical to `weighted_sum_f16` on that row alone.
pub fn weighted_sum_f16_rows(
    values: &[f16],
    stride: usize,
    ws: &[f32],
    out: &mut [f32],
    hd: usize,
) {
    assert!(hd > 0 && out.len().is_multiple_of(hd));
    let rows = out.len() / hd;
    assert!(rows > 0 && ws.len().is_multiple_of(rows));
    let len = ws.len() / rows;
    assert!(len == 0 || values.len() >= (len - 1) * stride + hd);
    simd_or!(weighted_sum_f16_rows(values, stride, ws, out, hd), {
        for (r, o) in out.chunks_exact_mut(hd).enumerate() {
            weighted_sum_f16(values, stride, &ws[r * len..(r + 1) * len], o);
        }
    })
}

/// Numerically stable softmax in place, with a vectorised `exp` (below) and the sum in f64, as
/// ggml computes attention weights; the SIMD and portable versions give the same bits.
pub fn softmax(xs: &mut [f32]) {
    if xs.is_empty() {
        return;
    }
    simd_or!(softmax(xs), softmax_portable(xs))
}

/// `exp` for softmax: exp(x) = 2^n · e^r, n = round(x / ln 2), r = x − n·ln 2 (in two parts),
/// e^r from Cephes' degree-7 polynomial on |r| ≤ ln 2 / 2; within two ulps of libm's. Below −87
/// (where e^x leaves f32's normal range; a softmax weight that small is nothing next to the
/// maximum's 1) it returns 0.
mod exp_consts {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    pub const FLOOR: f32 = -87.0;
}

fn exp_portable(x: f32) -> f32 {
    use exp_consts::*;
    if x < FLOOR {
        return 0.0;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let p = P[1..].iter().fold(P[0], |p, &c| p.mul_add(r, c));
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

fn softmax_portable(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Eight running sums, element i in sum i % 8, then added in order: the SIMD version's order.
    let mut lanes = [0.0f64; 8];
    let whole = xs.len() / 8 * 8;
    for (i, x) in xs.iter_mut().enumerate() {
        *x = exp_portable(*x - max);
        if i < whole {
            lanes[i % 8] += f64::from(*x);
        }
    }
    let mut sum = lanes.iter().fold(0.0f64, |s, &l| s + l);
    for &x in &xs[whole..] {
        sum += f64::from(x);
    }
    let inv = (1.0 / sum) as f32;
    for x in xs.iter_mut() {
        *x *= inv;
    }
}

/// Rounds each value to the nearest f16 (kept as f32), as ggml rounds what meets f16 caches.
pub fn round_f16(xs: &mut [f32]) {
    simd_or!(round_f16(xs), {
        for x in xs {
            *x = f16::from_f32(*x).to_f32();
        }
    })
}

/// Portable Q8_0 × Q8_0.
pub fn dot_q8_0_q8_0_portable(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    let mut sum = 0.0f32;
    for (xb, yb) in x.chunks_exact(Q8_0).zip(y.chunks_exact(Q8_0)).take(blocks) {
        let sumi: i32 = xb[2..]
            .iter()
            .zip(&yb[2..])
            .map(|(&a, &b)| i32::from(a as i8) * i32::from(b as i8))
            .sum();
        sum += sumi as f32 * f16_at(xb, 0) * f16_at(yb, 0);
    }
    sum
}

/// Portable Q4_1 × Q8_1.
pub fn dot_q4_1_q8_1_portable(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    let mut sum = 0.0f32;
    for (xb, yb) in x.chunks_exact(Q4_1).zip(y.chunks_exact(Q8_1)).take(blocks) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = i32::from(xb[4 + j] & 0x0F);
            let hi = i32::from(xb[4 + j] >> 4);
            sumi += lo * i32::from(yb[4 + j] as i8) + hi * i32::from(yb[20 + j] as i8);
        }
        sum += sumi as f32 * f16_at(xb, 0) * f16_at(yb, 0) + f16_at(xb, 2) * f16_at(yb, 2);
    }
    sum
}

/// Portable Q5_0 × Q8_0.
pub fn dot_q5_0_q8_0_portable(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    let mut sum = 0.0f32;
    for (xb, yb) in x.chunks_exact(Q5_0).zip(y.chunks_exact(Q8_0)).take(blocks) {
        let qh = u32::from_le_bytes([xb[2], xb[3], xb[4], xb[5]]);
        let mut sumi = 0i32;
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((u32::from(xb[6 + j]) & 0x0F) | h0) as i32 - 16;
            let x1 = ((u32::from(xb[6 + j]) >> 4) | h1) as i32 - 16;
            sumi += x0 * i32::from(yb[2 + j] as i8) + x1 * i32::from(yb[18 + j] as i8);
        }
        sum += sumi as f32 * f16_at(xb, 0) * f16_at(yb, 0);
    }
    sum
}

/// Portable Q4_K × Q8_K.
pub fn dot_q4_k_q8_k_portable(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    let mut sum = 0.0f32;
    for (xb, yb) in x.chunks_exact(Q4_K).zip(y.chunks_exact(Q8_K)).take(blocks) {
        let dy = f32::from_bits(u32_at(yb, 0));
        let mut sm = [0u8; 16];
        for (c, w) in sm.chunks_exact_mut(4).zip(q4_k_scales_mins(&xb[4..16])) {
            c.copy_from_slice(&w.to_le_bytes());
        }
        let (qy, bsums) = (&yb[4..260], &yb[260..292]);
        let bsum = |i: usize| i32::from(i16::from_le_bytes([bsums[2 * i], bsums[2 * i + 1]]));
        let mins: i32 = (0..8)
            .map(|s| i32::from(sm[8 + s]) * (bsum(2 * s) + bsum(2 * s + 1)))
            .sum();
        let mut sumi = 0i32;
        for (j, q) in xb[16..].chunks_exact(32).enumerate() {
            let (lo, hi) = (i32::from(sm[2 * j]), i32::from(sm[2 * j + 1]));
            for (l, &b) in q.iter().enumerate() {
                sumi += lo * i32::from(b & 0x0F) * i32::from(qy[64 * j + l] as i8)
                    + hi * i32::from(b >> 4) * i32::from(qy[64 * j + 32 + l] as i8);
            }
        }
        sum += dy * f16_at(xb, 0) * sumi as f32 - dy * f16_at(xb, 2) * mins as f32;
    }
    sum
}

/// Portable Q6_K × Q8_K.
pub fn dot_q6_k_q8_k_portable(x: &[u8], y: &[u8], blocks: usize) -> f32 {
    let mut sum = 0.0f32;
    for (xb, yb) in x.chunks_exact(Q6_K).zip(y.chunks_exact(Q8_K)).take(blocks) {
        let qy = &yb[4..260];
        let mut sumi = 0i32;
        for half in 0..2 {
            let (ql, qh) = (&xb[64 * half..], &xb[128 + 32 * half..]);
            for l in 0..32 {
                // The four 32-value runs of this half: low nibbles of ql[l], ql[l + 32], then
                // their high nibbles, each with two more bits from qh[l].
                let values = [ql[l] & 0x0F, ql[l + 32] & 0x0F, ql[l] >> 4, ql[l + 32] >> 4];
                for (k, v) in values.into_iter().enumerate() {
                    let q = i32::from(v | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
                    let e = 128 * half + 32 * k + l;
                    sumi += i32::from(xb[192 + e / 16] as i8) * q * i32::from(qy[e] as i8);
                }
            }
        }
        sum += f32::from_bits(u32_at(yb, 0)) * f16_at(xb, 208) * sumi as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{q4_k_scales_mins, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0, Q8_1, Q8_K};

    /// # Safety
    /// Needs AVX2, FMA and F16C; the caller checked the shapes (see `super::scores_f16_rows`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores_f16_rows(
        keys: &[f16],
        stride: usize,
        qs: &[f32],
        hd: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let len = out.len() / (qs.len() / hd);
        // Sixty-four keys at a time stay in the first-level cache while every group of up to
        // four rows meets them, two keys per pass: eight independent sums in flight.
        for j0 in (0..len).step_by(64) {
            let tile = Tile {
                j0,
                n: (len - j0).min(64),
                len,
            };
            for (c, q) in qs.chunks(4 * hd).enumerate() {
                let o = &mut out[4 * c * len..];
                // SAFETY: forwarded from the caller.
                unsafe {
                    match q.len() / hd {
                        1 => scores_rows::<1>(keys, stride, q, hd, scale, o, tile),
                        2 => scores_rows::<2>(keys, stride, q, hd, scale, o, tile),
                        3 => scores_rows::<3>(keys, stride, q, hd, scale, o, tile),
                        _ => scores_rows::<4>(keys, stride, q, hd, scale, o, tile),
                    }
                }
            }
        }
    }

    /// Columns `j0..j0 + n` of rows `len` long.
    #[derive(Clone, Copy)]
    struct Tile {
        j0: usize,
        n: usize,
        len: usize,
    }

    /// `R` rows of `scores_f16_rows`, one tile of keys. Each row's sum runs over the eights of
    /// the head in order, as in `scores_f16`, so its value is the same bit for bit.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_rows<const R: usize>(
        keys: &[f16],
        stride: usize,
        qs: &[f32],
        hd: usize,
        scale: f32,
        out: &mut [f32],
        Tile { j0, n, len }: Tile,
    ) {
        let whole = hd / 8 * 8;
        let finish = |acc: __m256, j: usize, r: usize| {
            let tail: f32 = keys[j * stride + whole..][..hd - whole]
                .iter()
                .zip(&qs[r * hd + whole..(r + 1) * hd])
                .map(|(a, b)| a.to_f32() * b)
                .sum();
            (hsum(acc) + tail) * scale
        };
        let mut j = j0;
        while j + 2 <= j0 + n {
            let (k0, k1) = (&keys[j * stride..][..hd], &keys[(j + 1) * stride..][..hd]);
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for i in (0..whole).step_by(8) {
                // SAFETY: i + 8 <= hd = k0.len() = k1.len(), and each row of qs is hd long.
                unsafe {
                    let a = _mm256_cvtph_ps(_mm_loadu_si128(k0.as_ptr().add(i).cast()));
                    let b = _mm256_cvtph_ps(_mm_loadu_si128(k1.as_ptr().add(i).cast()));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let q = _mm256_loadu_ps(qs.as_ptr().add(r * hd + i));
                        acc[0] = _mm256_fmadd_ps(a, q, acc[0]);
                        acc[1] = _mm256_fmadd_ps(b, q, acc[1]);
                    }
                }
            }
            if whole == hd {
                // Lanes 0..4: the first key's rows, 4..8: the second key's.
                let mut x = [_mm256_setzero_ps(); 8];
                for (r, acc) in acc.iter().enumerate() {
                    (x[r], x[4 + r]) = (acc[0], acc[1]);
                }
                let mut sums = [0.0f32; 8];
                // SAFETY: eight floats.
                unsafe {
                    _mm256_storeu_ps(
                        sums.as_mut_ptr(),
                        _mm256_mul_ps(hsum8(x), _mm256_set1_ps(scale)),
                    );
                }
                for r in 0..R {
                    out[r * len + j] = sums[r];
                    out[r * len + j + 1] = sums[4 + r];
                }
            } else {
                for (r, acc) in acc.iter().enumerate() {
                    out[r * len + j] = finish(acc[0], j, r);
                    out[r * len + j + 1] = finish(acc[1], j + 1, r);
                }
            }
            j += 2;
        }
        if j < j0 + n {
            let k = &keys[j * stride..][..hd];
            let mut acc = [_mm256_setzero_ps(); R];
            for i in (0..whole).step_by(8) {
                // SAFETY: as above.
                unsafe {
                    let a = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i).cast()));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let q = _mm256_loadu_ps(qs.as_ptr().add(r * hd + i));
                        *acc = _mm256_fmadd_ps(a, q, *acc);
                    }
                }
            }
            for (r, &acc) in acc.iter().enumerate() {
                out[r * len + j] = finish(acc, j, r);
            }
        }
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; the caller checked the shapes (see
    /// `super::weighted_sum_f16_rows`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum_f16_rows(
        values: &[f16],
        stride: usize,
        ws: &[f32],
        out: &mut [f32],
        hd: usize,
    ) {
        let rows = out.len() / hd;
        let len = ws.len() / rows;
        if len == 0 {
            out.fill(0.0);
            return;
        }
        // A tile of value rows (about 16 KB) stays in the first-level cache while every group of
        // rows and outputs passes over it, the sums kept in `out` between tiles.
        let step = (8192 / hd).max(8);
        for j0 in (0..len).step_by(step) {
            let tile = Tile {
                j0,
                n: (len - j0).min(step),
                len,
            };
            for (g, o) in out.chunks_mut(4 * hd).enumerate() {
                let w = &ws[4 * g * len..];
                // SAFETY: forwarded from the caller.
                unsafe {
                    match o.len() / hd {
                        1 => weighted_rows::<1, 8>(values, stride, w, o, hd, tile),
                        2 => weighted_rows::<2, 4>(values, stride, w, o, hd, tile),
                        3 => weighted_rows::<3, 4>(values, stride, w, o, hd, tile),
                        _ => weighted_rows::<4, 2>(values, stride, w, o, hd, tile),
                    }
                }
            }
        }
    }

    /// `R` rows of `weighted_sum_f16_rows`, `C` eights of outputs per pass, one tile of value
    /// rows, continuing the sums in `out` after the first tile. Each output is summed over the
    /// value rows in order from zero, as in `weighted_sum_f16`: the same bits.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_rows<const R: usize, const C: usize>(
        values: &[f16],
        stride: usize,
        ws: &[f32],
        out: &mut [f32],
        hd: usize,
        tile: Tile,
    ) {
        let Tile { j0, n, len } = tile;
        let whole = hd / 8 * 8;
        assert!(values.len() >= (j0 + n - 1) * stride + hd && ws.len() >= (R - 1) * len + j0 + n);
        assert!(out.len() >= R * hd);
        let mut c0 = 0;
        // SAFETY (both calls): c0 + 8 × eights <= whole <= hd, and the asserts above.
        while c0 + 8 * C <= whole {
            unsafe { weighted_block::<R, C>(values, stride, ws, out, hd, tile, c0) };
            c0 += 8 * C;
        }
        while c0 < whole {
            unsafe { weighted_block::<R, 1>(values, stride, ws, out, hd, tile, c0) };
            c0 += 8;
        }
        for r in 0..R {
            for i in whole..hd {
                let from = if j0 > 0 { out[r * hd + i] } else { 0.0 };
                out[r * hd + i] = (j0..j0 + n).fold(from, |acc, j| {
                    acc + ws[r * len + j] * values[j * stride + i].to_f32()
                });
            }
        }
    }

    /// Outputs `c0..c0 + 8C` of `R` rows over one tile, the sums in registers.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `c0 + 8C <= hd` and the bounds `weighted_rows` asserts.
    #[inline(always)]
    unsafe fn weighted_block<const R: usize, const C: usize>(
        values: &[f16],
        stride: usize,
        ws: &[f32],
        out: &mut [f32],
        hd: usize,
        Tile { j0, n, len }: Tile,
        c0: usize,
    ) {
        // SAFETY: every pointer below stays inside the bounds the caller checked.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            if j0 > 0 {
                for (r, acc) in acc.iter_mut().enumerate() {
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_loadu_ps(out.as_ptr().add(r * hd + c0 + 8 * k));
                    }
                }
            }
            let mut v = values.as_ptr().add(j0 * stride + c0);
            let w = ws.as_ptr().add(j0);
            for j in 0..n {
                let mut x = [_mm256_setzero_ps(); C];
                for (k, x) in x.iter_mut().enumerate() {
                    *x = _mm256_cvtph_ps(_mm_loadu_si128(v.add(8 * k).cast()));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*w.add(r * len + j));
                    for (a, &x) in acc.iter_mut().zip(&x) {
                        *a = _mm256_fmadd_ps(wv, x, *a);
                    }
                }
                v = v.add(stride);
            }
            for (r, acc) in acc.iter().enumerate() {
                for (k, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(r * hd + c0 + 8 * k), *a);
                }
            }
        }
    }

    /// The horizontal sums of eight vectors, each summed exactly as `hsum` sums one:
    /// lane `i` of the result is `hsum(x[i])`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum8(x: [__m256; 8]) -> __m256 {
        // Per vector, hsum adds its halves (s = lo + hi), then (s0 + s2) + (s1 + s3).
        let halves = |a: __m256, b: __m256| {
            let lo = _mm256_permute2f128_ps::<0x20>(a, b);
            let hi = _mm256_permute2f128_ps::<0x31>(a, b);
            _mm256_add_ps(hi, lo)
        };
        // [s(x0) | s(x4)], [s(x1) | s(x5)], [s(x2) | s(x6)], [s(x3) | s(x7)].
        let (p, q) = (halves(x[0], x[4]), halves(x[1], x[5]));
        let (r, t) = (halves(x[2], x[6]), halves(x[3], x[7]));
        // Per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3].
        let pair = |a: __m256, b: __m256| {
            _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b))
        };
        let (pq, rt) = (pair(p, q), pair(r, t));
        let evens = _mm256_shuffle_ps::<0b01_00_01_00>(pq, rt);
        let odds = _mm256_shuffle_ps::<0b11_10_11_10>(pq, rt);
        _mm256_add_ps(evens, odds)
    }

    /// `super::exp_portable` on eight lanes, operation for operation.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn exp8(x: __m256) -> __m256 {
        use super::exp_consts::*;
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(FLOOR));
        _mm256_and_ps(_mm256_mul_ps(y, pow2), keep)
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `xs` is not empty.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn softmax(xs: &mut [f32]) {
        let whole = xs.len() / 8 * 8;
        let p = xs.as_mut_ptr();
        // SAFETY (throughout): i + 8 <= whole <= xs.len().
        unsafe {
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            for i in (0..whole).step_by(8) {
                m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            let max = lanes
                .iter()
                .chain(&xs[whole..])
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let mv = _mm256_set1_ps(max);
            let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
            for i in (0..whole).step_by(8) {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
                _mm256_storeu_ps(p.add(i), e);
                lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
                hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
            }
            let mut sums = [0.0f64; 8];
            _mm256_storeu_pd(sums.as_mut_ptr(), lo);
            _mm256_storeu_pd(sums.as_mut_ptr().add(4), hi);
            let mut sum = sums.iter().fold(0.0f64, |s, &l| s + l);
            for x in &mut xs[whole..] {
                *x = super::exp_portable(*x - max);
                sum += f64::from(*x);
            }
            let inv = (1.0 / sum) as f32;
            let iv = _mm256_set1_ps(inv);
            for i in (0..whole).step_by(8) {
                _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), iv));
            }
            for x in &mut xs[whole..] {
                *x *= inv;
            }
        }
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_f16(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: eight floats at `c`.
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
        }
        for x in chunks.into_remainder() {
            *x = f16::from_f32(*x).to_f32();
        }
    }

    /// 16 bytes of nibbles → 32 bytes: low nibbles, then high nibbles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: the caller passes a pointer to 16 readable bytes.
        let both = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast())) };
        // Shifting only the upper copy costs one shift and no lane insert.
        let shifted = _mm256_srlv_epi32(both, _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0));
        _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
    }

    /// Sum of unsigned × signed byte products, as 8 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mul_sum_us8(ax: __m256i, sy: __m256i) -> __m256 {
        let dot = _mm256_maddubs_epi16(ax, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// f16 at `p`, converted with F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_ptr(p: *const u8) -> f32 {
        // SAFETY: the caller passes a pointer to 2 readable bytes.
        let bits = u32::from(unsafe { p.cast::<u16>().read_unaligned() });
        let out: __m128;
        // Written out because the compiler otherwise inserts the 16 bits into a live register
        // (often the accumulator), chaining every block to the previous block's FMA; `vmovd`
        // from a general register starts a fresh value.
        // SAFETY: register-only instructions, available with F16C (enabled for this function).
        unsafe {
            std::arch::asm!(
                "vmovd {x}, {bits:e}",
                "vcvtph2ps {x}, {x}",
                bits = in(reg) bits,
                x = out(xmm_reg) out,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        _mm_cvtss_f32(out)
    }

    /// The f16 at the start of a block of at least 8 bytes, converted straight from memory. Moving
    /// it through a general register as [`f16_ptr`] does costs a `vmovd`, which this CPU issues
    /// once every two cycles: with two scales a block, that bounded the Q5_0 kernel.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_lead(p: *const u8) -> f32 {
        let out: __m128;
        // Written out so that the load stays a full 64-bit operand of the conversion (a narrowed
        // load would bring back the general-register move or a partial-register insert).
        // SAFETY: the caller passes a pointer to 8 readable bytes; F16C is enabled for this
        // function.
        unsafe {
            std::arch::asm!(
                "vcvtph2ps {x}, qword ptr [{p}]",
                p = in(reg) p,
                x = out(xmm_reg) out,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        _mm_cvtss_f32(out)
    }

    /// The two f16 scales at the start of a Q4_1 or Q8_1 block, as lanes 0 and 1. Converting both
    /// at once keeps the load a full 32 bits: a 16-bit insert into a live register would chain each
    /// block to the previous one through a false dependency.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_pair(p: *const u8) -> __m128 {
        // SAFETY: the caller passes a pointer to 4 readable bytes.
        let bits = unsafe { p.cast::<i32>().read_unaligned() };
        _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
    }

    /// The leading f16 of four blocks (one per pointer), converted together: lanes 0..4. One
    /// conversion for four activation rows instead of four.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_x4(p: [*const u8; 4]) -> __m128 {
        // SAFETY: the caller passes pointers to 2 readable bytes each.
        let h = p.map(|p| u64::from(unsafe { p.cast::<u16>().read_unaligned() }));
        let bits = h[0] | h[1] << 16 | h[2] << 32 | h[3] << 48;
        _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
    }

    /// Lane `i` of `v` in all eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn lane(v: __m256, i: usize) -> __m256 {
        _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i as i32))
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and `y` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1_q8_1(x: &[u8], y: &[u8], blocks: usize) -> f32 {
        assert!(x.len() >= blocks * Q4_1 && y.len() >= blocks * Q8_1);
        let mut acc = _mm256_setzero_ps();
        // Lane 1 sums m_x * s_y over blocks (lane 0 is unused).
        let mut offsets = _mm_setzero_ps();
        let (mut xp, mut yp) = (x.as_ptr(), y.as_ptr());
        for _ in 0..blocks {
            // SAFETY: `blocks` whole blocks are in bounds (asserted above).
            unsafe {
                // (d_x * d_y, m_x * s_y)
                let scales = _mm_mul_ps(f16_pair(xp), f16_pair(yp));
                offsets = _mm_add_ps(offsets, scales);
                let d = _mm256_broadcastss_ps(scales);
                let qx = nibbles(xp.add(4));
                let qy = _mm256_loadu_si256(yp.add(4).cast());
                acc = _mm256_fmadd_ps(d, mul_sum_us8(qx, qy), acc);
                xp = xp.add(Q4_1);
                yp = yp.add(Q8_1);
            }
        }
        hsum(acc) + _mm_cvtss_f32(_mm_movehdup_ps(offsets))
    }

    /// Four activation rows against one weight row, unpacking each weight block once.
    ///
    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and every `ys[i]` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1_q8_1_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
        assert!(x.len() >= blocks * Q4_1 && ys.iter().all(|y| y.len() >= blocks * Q8_1));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offsets = [_mm_setzero_ps(); 4];
        for b in 0..blocks {
            // SAFETY: block `b` is in bounds of `x` and of every `ys[i]` (asserted above).
            unsafe {
                let xp = x.as_ptr().add(b * Q4_1);
                let xs = f16_pair(xp);
                let qx = nibbles(xp.add(4));
                for i in 0..4 {
                    let yp = ys[i].as_ptr().add(b * Q8_1);
                    // Same operations in the same order as the one-row kernel: identical results.
                    let scales = _mm_mul_ps(xs, f16_pair(yp));
                    offsets[i] = _mm_add_ps(offsets[i], scales);
                    let d = _mm256_broadcastss_ps(scales);
                    let qy = _mm256_loadu_si256(yp.add(4).cast());
                    acc[i] = _mm256_fmadd_ps(d, mul_sum_us8(qx, qy), acc[i]);
                }
            }
        }
        [0, 1, 2, 3].map(|i| hsum(acc[i]) + _mm_cvtss_f32(_mm_movehdup_ps(offsets[i])))
    }

    /// Q5_0 block at `xp` → 32 signed values in -16..=15.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_values(xp: *const u8) -> __m256i {
        let shuffle = _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        );
        let bit_mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        // SAFETY: the caller passes a pointer to a whole Q5_0 block.
        let (qh, lo) = unsafe { (xp.add(2).cast::<i32>().read_unaligned(), nibbles(xp.add(6))) };
        // 0xFF in each byte whose fifth bit is set.
        let bits = _mm256_cmpeq_epi8(
            _mm256_or_si256(
                _mm256_shuffle_epi8(_mm256_set1_epi32(qh), shuffle),
                bit_mask,
            ),
            _mm256_set1_epi64x(-1),
        );
        // Where the fifth bit is clear, value - 16 is the nibble with 0xF0 set (two's complement).
        _mm256_or_si256(
            lo,
            _mm256_andnot_si256(bits, _mm256_set1_epi8(0xF0u8 as i8)),
        )
    }

    /// Signed × signed byte products summed, as 8 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mul_sum_i8(qx: __m256i, qy: __m256i) -> __m256 {
        mul_sum_us8(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx))
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and `y` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q5_0_q8_0(x: &[u8], y: &[u8], blocks: usize) -> f32 {
        assert!(x.len() >= blocks * Q5_0 && y.len() >= blocks * Q8_0);
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            // SAFETY: block `b` is in bounds (asserted above).
            unsafe {
                let (xp, yp) = (x.as_ptr().add(b * Q5_0), y.as_ptr().add(b * Q8_0));
                let d = _mm256_set1_ps(f16_lead(xp) * f16_lead(yp));
                let qy = _mm256_loadu_si256(yp.add(2).cast());
                acc = _mm256_fmadd_ps(d, mul_sum_i8(q5_values(xp), qy), acc);
            }
        }
        hsum(acc)
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and `y` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0_q8_0(x: &[u8], y: &[u8], blocks: usize) -> f32 {
        assert!(x.len() >= blocks * Q8_0 && y.len() >= blocks * Q8_0);
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            // SAFETY: block `b` is in bounds (asserted above).
            unsafe {
                let (xp, yp) = (x.as_ptr().add(b * Q8_0), y.as_ptr().add(b * Q8_0));
                let d = _mm256_set1_ps(f16_ptr(xp) * f16_ptr(yp));
                let qx = _mm256_loadu_si256(xp.add(2).cast());
                let qy = _mm256_loadu_si256(yp.add(2).cast());
                acc = _mm256_fmadd_ps(d, mul_sum_i8(qx, qy), acc);
            }
        }
        hsum(acc)
    }

    /// Four activation rows against one Q8_0 weight row.
    ///
    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and every `ys[i]` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0_q8_0_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
        assert!(x.len() >= blocks * Q8_0 && ys.iter().all(|y| y.len() >= blocks * Q8_0));
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..blocks {
            // SAFETY: block `b` is in bounds of `x` and of every `ys[i]` (asserted above).
            unsafe {
                let xp = x.as_ptr().add(b * Q8_0);
                let qx = _mm256_loadu_si256(xp.add(2).cast());
                let ax = _mm256_sign_epi8(qx, qx);
                let yps = ys.map(|y| y.as_ptr().add(b * Q8_0));
                // d_x * d_y for each row in lanes 0..4: the one-row kernel's products.
                let d = _mm256_castps128_ps256(_mm_mul_ps(_mm_set1_ps(f16_ptr(xp)), f16_x4(yps)));
                for i in 0..4 {
                    let sy = _mm256_sign_epi8(_mm256_loadu_si256(yps[i].add(2).cast()), qx);
                    acc[i] = _mm256_fmadd_ps(lane(d, i), mul_sum_us8(ax, sy), acc[i]);
                }
            }
        }
        acc.map(|a| hsum(a))
    }

    /// Four activation rows against one Q5_0 weight row, unpacking each weight block once.
    ///
    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and every `ys[i]` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q5_0_q8_0_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
        assert!(x.len() >= blocks * Q5_0 && ys.iter().all(|y| y.len() >= blocks * Q8_0));
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..blocks {
            // SAFETY: block `b` is in bounds of `x` and of every `ys[i]` (asserted above).
            unsafe {
                let xp = x.as_ptr().add(b * Q5_0);
                let qx = q5_values(xp);
                let yps = ys.map(|y| y.as_ptr().add(b * Q8_0));
                let d = _mm256_castps128_ps256(_mm_mul_ps(_mm_set1_ps(f16_lead(xp)), f16_x4(yps)));
                for i in 0..4 {
                    let qy = _mm256_loadu_si256(yps[i].add(2).cast());
                    acc[i] = _mm256_fmadd_ps(lane(d, i), mul_sum_i8(qx, qy), acc[i]);
                }
            }
        }
        acc.map(|a| hsum(a))
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and `y` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_k_q8_k(x: &[u8], y: &[u8], blocks: usize) -> f32 {
        // SAFETY: forwarded.
        unsafe { q4_k_rows(x, [y], blocks)[0] }
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and every `ys[i]` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_k_q8_k_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
        // SAFETY: forwarded.
        unsafe { q4_k_rows(x, ys, blocks) }
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and `y` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q6_k_q8_k(x: &[u8], y: &[u8], blocks: usize) -> f32 {
        // SAFETY: forwarded.
        unsafe { q6_k_rows(x, [y], blocks)[0] }
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and every `ys[i]` hold at least `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q6_k_q8_k_x4(x: &[u8], ys: [&[u8]; 4], blocks: usize) -> [f32; 4] {
        // SAFETY: forwarded.
        unsafe { q6_k_rows(x, ys, blocks) }
    }

    /// `_mm256_shuffle_epi8` control that repeats the 16-bit lane `i` of each 128-bit half.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn repeat_u16(i: i32) -> __m256i {
        _mm256_set1_epi16((((2 * i + 1) << 8) | (2 * i)) as i16)
    }

    /// One Q4_K weight row against `N` Q8_K activation rows; each weight block is unpacked once
    /// and every row runs the same operations in the same order, so any `N` gives the same bits.
    ///
    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and every `ys[i]` hold at least `blocks` blocks.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_k_rows<const N: usize>(x: &[u8], ys: [&[u8]; N], blocks: usize) -> [f32; N] {
        assert!(x.len() >= blocks * Q4_K && ys.iter().all(|y| y.len() >= blocks * Q8_K));
        let low4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); N];
        // Minimum terms, four lanes per row.
        let mut acc_m = [_mm_setzero_ps(); N];
        for b in 0..blocks {
            // SAFETY: block `b` is in bounds of `x` and of every `ys[i]` (asserted above).
            unsafe {
                let xp = x.as_ptr().add(b * Q4_K);
                // (d, dmin)
                let dx = f16_pair(xp);
                let [w0, w1, w2, w3] = q4_k_scales_mins(std::slice::from_raw_parts(xp.add(4), 12));
                let scales_mins =
                    _mm256_cvtepu8_epi16(_mm_set_epi32(w3 as i32, w2 as i32, w1 as i32, w0 as i32));
                let mins = _mm256_extracti128_si256(scales_mins, 1);
                let sc = _mm256_castsi256_si128(scales_mins);
                let scales = _mm256_set_m128i(sc, sc);
                let mut q = [_mm256_setzero_si256(); 8];
                let mut s = [_mm256_setzero_si256(); 8];
                for j in 0..4 {
                    let bits = _mm256_loadu_si256(xp.add(16 + 32 * j).cast());
                    q[2 * j] = _mm256_and_si256(bits, low4);
                    q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
                    s[2 * j] = _mm256_shuffle_epi8(scales, repeat_u16(2 * j as i32));
                    s[2 * j + 1] = _mm256_shuffle_epi8(scales, repeat_u16(2 * j as i32 + 1));
                }
                for i in 0..N {
                    let yp = ys[i].as_ptr().add(b * Q8_K);
                    // (d_x d_y, dmin_x d_y)
                    let d = _mm_mul_ps(dx, _mm_set1_ps(yp.cast::<f32>().read_unaligned()));
                    let bsums = _mm256_loadu_si256(yp.add(260).cast());
                    let sums32 = _mm_hadd_epi16(
                        _mm256_castsi256_si128(bsums),
                        _mm256_extracti128_si256(bsums, 1),
                    );
                    let m = _mm_cvtepi32_ps(_mm_madd_epi16(mins, sums32));
                    acc_m[i] =
                        _mm_fnmadd_ps(_mm_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(d))), m, acc_m[i]);
                    let mut sumi = _mm256_setzero_si256();
                    for k in 0..8 {
                        let qy = _mm256_loadu_si256(yp.add(4 + 32 * k).cast());
                        let p = _mm256_madd_epi16(s[k], _mm256_maddubs_epi16(q[k], qy));
                        sumi = _mm256_add_epi32(sumi, p);
                    }
                    acc[i] =
                        _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(sumi), acc[i]);
                }
            }
        }
        std::array::from_fn(|i| {
            let m = _mm_add_ps(acc_m[i], _mm_movehl_ps(acc_m[i], acc_m[i]));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            hsum(acc[i]) + _mm_cvtss_f32(m)
        })
    }

    /// One Q6_K weight row against `N` Q8_K activation rows, unpacking each weight block once
    /// (bit-identical for any `N`, as for Q4_K).
    ///
    /// # Safety
    /// Needs AVX2, FMA and F16C; `x` and every `ys[i]` hold at least `blocks` blocks.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_rows<const N: usize>(x: &[u8], ys: [&[u8]; N], blocks: usize) -> [f32; N] {
        assert!(x.len() >= blocks * Q6_K && ys.iter().all(|y| y.len() >= blocks * Q8_K));
        let low4 = _mm256_set1_epi8(0x0F);
        let low2 = _mm256_set1_epi8(3);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..blocks {
            // SAFETY: block `b` is in bounds of `x` and of every `ys[i]` (asserted above).
            unsafe {
                let xp = x.as_ptr().add(b * Q6_K);
                let dx = f16_ptr(xp.add(208));
                let scales8 = _mm_loadu_si128(xp.add(192).cast());
                // Values 0..=63 (the -32 offset is applied per product below), in activation
                // order: 32 per vector.
                let mut q = [_mm256_setzero_si256(); 8];
                // Per vector, each half's 16-value scale as i16 lanes.
                let mut s = [_mm256_setzero_si256(); 8];
                for half in 0..2 {
                    let ql0 = _mm256_loadu_si256(xp.add(64 * half).cast());
                    let ql1 = _mm256_loadu_si256(xp.add(64 * half + 32).cast());
                    let qh = _mm256_loadu_si256(xp.add(128 + 32 * half).cast());
                    let low = [
                        _mm256_and_si256(ql0, low4),
                        _mm256_and_si256(ql1, low4),
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                    ];
                    for (k, lo) in low.into_iter().enumerate() {
                        let hi = _mm256_and_si256(
                            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)),
                            low2,
                        );
                        q[4 * half + k] = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
                        let first = (8 * half + 2 * k) as i8;
                        let pick = _mm_set_epi64x(
                            i64::from_le_bytes([first as u8 + 1; 8]),
                            i64::from_le_bytes([first as u8; 8]),
                        );
                        s[4 * half + k] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, pick));
                    }
                }
                let m32 = _mm256_set1_epi8(32);
                for i in 0..N {
                    let yp = ys[i].as_ptr().add(b * Q8_K);
                    let d = _mm256_set1_ps(yp.cast::<f32>().read_unaligned() * dx);
                    let mut sumi = _mm256_setzero_si256();
                    for k in 0..8 {
                        let qy = _mm256_loadu_si256(yp.add(4 + 32 * k).cast());
                        // (q - 32) · y per pair, as 16-bit lanes.
                        let p16 = _mm256_sub_epi16(
                            _mm256_maddubs_epi16(q[k], qy),
                            _mm256_maddubs_epi16(m32, qy),
                        );
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s[k], p16));
                    }
                    acc[i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[i]);
                }
            }
        }
        acc.map(|a| hsum(a))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Pseudo-random bytes (also the packed kernels' test data).
    pub(crate) fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect()
    }

    /// Random blocks with sane f16 scales at the given byte offsets. Quantized activations never
    /// hold -128 (their range is ±127), so neither do these.
    fn blocks(count: usize, size: usize, scales: &[usize], seed: u64) -> Vec<u8> {
        let mut b: Vec<u8> = bytes(count * size, seed)
            .into_iter()
            .map(|v| if v == 0x80 { 0x81 } else { v })
            .collect();
        for (i, chunk) in b.chunks_exact_mut(size).enumerate() {
            for (k, &at) in scales.iter().enumerate() {
                let v = f16::from_f32(0.01 + ((i * 7 + k * 3) % 13) as f32 * 0.003);
                chunk[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn q4_1_simd_agrees_with_portable_and_candle() {
        use candle_core::quantized::k_quants::{BlockQ4_1, BlockQ8_1, GgmlType};
        for n in [1, 2, 18, 48] {
            let x = blocks(n, Q4_1, &[0, 2], n as u64);
            let y = blocks(n, Q8_1, &[0, 2], 99 + n as u64);
            let portable = dot_q4_1_q8_1_portable(&x, &y, n);
            assert!(close(dot_q4_1_q8_1(&x, &y, n), portable), "{n}");
            let others: Vec<Vec<u8>> = (0..3).map(|k| blocks(n, Q8_1, &[0, 2], 500 + k)).collect();
            let four = dot_q4_1_q8_1_x4(&x, [&others[0], &y, &others[1], &others[2]], n);
            assert_eq!(four[1].to_bits(), dot_q4_1_q8_1(&x, &y, n).to_bits(), "{n}");
            assert!(close(four[1], portable), "{n}");
            assert!(
                close(four[3], dot_q4_1_q8_1_portable(&x, &others[2], n)),
                "{n}"
            );
            // SAFETY: test buffers hold n blocks of each layout; alignment 2 holds for Vec<u8>
            // allocations in practice and is checked here.
            assert_eq!(x.as_ptr() as usize % 2, 0);
            let (xc, yc) = unsafe {
                (
                    std::slice::from_raw_parts(x.as_ptr().cast::<BlockQ4_1>(), n),
                    std::slice::from_raw_parts(y.as_ptr().cast::<BlockQ8_1>(), n),
                )
            };
            assert!(
                close(BlockQ4_1::vec_dot_unopt(n * 32, xc, yc), portable),
                "{n}"
            );
        }
    }

    #[test]
    fn q8_0_simd_agrees_with_portable_and_candle() {
        use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
        for n in [1, 2, 20, 64] {
            let x = blocks(n, Q8_0, &[0], 3 * n as u64);
            let y = blocks(n, Q8_0, &[0], 77 + n as u64);
            let portable = dot_q8_0_q8_0_portable(&x, &y, n);
            assert!(close(dot_q8_0_q8_0(&x, &y, n), portable), "{n}");
            let others: Vec<Vec<u8>> = (0..3).map(|k| blocks(n, Q8_0, &[0], 900 + k)).collect();
            let four = dot_q8_0_q8_0_x4(&x, [&y, &others[0], &others[1], &others[2]], n);
            assert_eq!(four[0].to_bits(), dot_q8_0_q8_0(&x, &y, n).to_bits(), "{n}");
            assert!(close(four[0], portable), "{n}");
            assert!(
                close(four[2], dot_q8_0_q8_0_portable(&x, &others[1], n)),
                "{n}"
            );
            // SAFETY: the buffers hold n blocks of this layout; Vec<u8> allocations are 2-aligned here.
            let (xc, yc) = unsafe {
                (
                    std::slice::from_raw_parts(x.as_ptr().cast::<BlockQ8_0>(), n),
                    std::slice::from_raw_parts(y.as_ptr().cast::<BlockQ8_0>(), n),
                )
            };
            assert!(
                close(BlockQ8_0::vec_dot_unopt(n * 32, xc, yc), portable),
                "{n}"
            );
        }
    }

    #[test]
    fn attention_rows_simd_agree_with_portable() {
        // Five 72-wide rows (a tail past the eights) inside a 100-wide cache row.
        let (stride, hd, n) = (100, 72, 5);
        let cache: Vec<f16> = (0..stride * n)
            .map(|i| f16::from_f32((i as f32 * 0.37).sin()))
            .collect();
        let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut scores = vec![0.0; n];
        scores_f16(&cache[3..], stride, &q, 0.5, &mut scores);
        for (j, &s) in scores.iter().enumerate() {
            let row = &cache[3 + j * stride..][..hd];
            let want: f32 = row.iter().zip(&q).map(|(a, b)| a.to_f32() * b).sum::<f32>() * 0.5;
            assert!(close(s, want), "{j}: {s} vs {want}");
        }
        let mut out = vec![9.0; hd];
        weighted_sum_f16(&cache[3..], stride, &scores, &mut out);
        for (i, &o) in out.iter().enumerate() {
            let want: f32 = (0..n)
                .map(|j| scores[j] * cache[3 + j * stride + i].to_f32())
                .sum();
            assert!(close(o, want), "{i}: {o} vs {want}");
        }
        let mut xs: Vec<f32> = (0..21).map(|i| i as f32 * 0.123_456_7 - 1.0).collect();
        let want: Vec<f32> = xs.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        round_f16(&mut xs);
        assert_eq!(xs, want);
    }

    #[test]
    fn softmax_is_close_to_libm_and_the_same_bits_with_and_without_simd() {
        let mut xs = [1000.0, 1001.0, 999.0];
        softmax(&mut xs);
        assert!((xs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(xs[1] > xs[0] && xs[0] > xs[2]);
        // exp within two ulps of libm over the range softmax meets, 0 far below it.
        for i in 0..=200_000 {
            let x = -90.0 + i as f32 * 0.00045;
            let (got, want) = (exp_portable(x), x.exp());
            if x < -87.0 {
                assert_eq!(got, 0.0);
            } else {
                let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulps <= 2, "exp({x}) = {got}, libm {want}");
            }
        }
        for len in [1, 7, 8, 9, 64, 1001] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1000) as f32 * 0.07 - 50.0)
                .collect();
            let (mut simd, mut portable) = (xs.clone(), xs.clone());
            softmax(&mut simd);
            softmax_portable(&mut portable);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&simd), bits(&portable), "{len}");
            let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = xs.iter().map(|&x| f64::from((x - max).exp())).sum();
            for (s, &x) in simd.iter().zip(&xs) {
                let want = (f64::from((x - max).exp()) / sum) as f32;
                assert!((s - want).abs() <= want * 1e-6, "{len}: {s} vs {want}");
            }
        }
    }

    #[test]
    fn grouped_attention_rows_are_bit_identical_to_one_row_at_a_time() {
        // Head widths with and without a tail past the eights; 1 to 9 rows (chunks of four and a
        // remainder); odd and even key counts, and none.
        for (hd, stride) in [(64, 192), (72, 100), (256, 256), (12, 12)] {
            for rows in [1, 2, 3, 4, 5, 9] {
                for len in [0, 1, 2, 7, 33, 150] {
                    let cache: Vec<f16> = (0..stride * len.max(1))
                        .map(|i| f16::from_f32((i as f32 * 0.37).sin()))
                        .collect();
                    let qs: Vec<f32> = (0..rows * hd).map(|i| (i as f32 * 0.11).cos()).collect();
                    let mut grouped = vec![7.0; rows * len];
                    scores_f16_rows(&cache, stride, &qs, hd, 0.125, &mut grouped);
                    let mut want = vec![0.0; rows * len];
                    for r in 0..rows {
                        let o = &mut want[r * len..(r + 1) * len];
                        scores_f16(&cache, stride, &qs[r * hd..(r + 1) * hd], 0.125, o);
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&grouped), bits(&want), "scores {hd} {rows} {len}");

                    let ws: Vec<f32> = (0..rows * len).map(|i| (i as f32 * 0.7).cos()).collect();
                    let mut grouped = vec![7.0; rows * hd];
                    weighted_sum_f16_rows(&cache, stride, &ws, &mut grouped, hd);
                    let mut want = vec![0.0; rows * hd];
                    for r in 0..rows {
                        let w = &ws[r * len..(r + 1) * len];
                        weighted_sum_f16(&cache, stride, w, &mut want[r * hd..(r + 1) * hd]);
                    }
                    assert_eq!(bits(&grouped), bits(&want), "sums {hd} {rows} {len}");
                }
            }
        }
    }

    #[test]
    fn q5_0_simd_agrees_with_portable_and_candle() {
        use candle_core::quantized::k_quants::{BlockQ5_0, BlockQ8_0, GgmlType};
        for n in [1, 2, 20, 64] {
            let x = blocks(n, Q5_0, &[0], 7 * n as u64);
            let y = blocks(n, Q8_0, &[0], 31 + n as u64);
            let portable = dot_q5_0_q8_0_portable(&x, &y, n);
            assert!(
                close(dot_q5_0_q8_0(&x, &y, n), portable),
                "{n}: {} vs {portable}",
                dot_q5_0_q8_0(&x, &y, n)
            );
            let others: Vec<Vec<u8>> = (0..3).map(|k| blocks(n, Q8_0, &[0], 700 + k)).collect();
            let four = dot_q5_0_q8_0_x4(&x, [&others[0], &others[1], &y, &others[2]], n);
            assert_eq!(four[2].to_bits(), dot_q5_0_q8_0(&x, &y, n).to_bits(), "{n}");
            assert!(close(four[2], portable), "{n}");
            assert!(
                close(four[0], dot_q5_0_q8_0_portable(&x, &others[0], n)),
                "{n}"
            );
            let (xc, yc) = unsafe {
                (
                    std::slice::from_raw_parts(x.as_ptr().cast::<BlockQ5_0>(), n),
                    std::slice::from_raw_parts(y.as_ptr().cast::<BlockQ8_0>(), n),
                )
            };
            assert!(
                close(BlockQ5_0::vec_dot_unopt(n * 32, xc, yc), portable),
                "{n}"
            );
        }
    }

    /// Q8_K activation rows as the engine writes them (their block sums must match their values).
    fn q8_k_rows(count: usize, blocks: usize, seed: u64) -> Vec<Vec<u8>> {
        (0..count as u64)
            .map(|r| {
                let xs: Vec<f32> = bytes(blocks * 256, seed + r)
                    .into_iter()
                    .map(|b| (f32::from(b) - 127.5) * 0.01)
                    .collect();
                let mut out = vec![0u8; blocks * Q8_K];
                crate::activation::quantize_q8_k(&xs, &mut out);
                out
            })
            .collect()
    }

    type Dot4 = fn(&[u8], [&[u8]; 4], usize) -> [f32; 4];

    /// Runs a K-quant kernel family against its portable version and candle's `vec_dot`.
    fn k_quant_agrees<
        T: candle_core::quantized::k_quants::GgmlType<
            VecDotType = candle_core::quantized::k_quants::BlockQ8K,
        >,
    >(
        size: usize,
        scales: &[usize],
        one: fn(&[u8], &[u8], usize) -> f32,
        four: Dot4,
        portable: fn(&[u8], &[u8], usize) -> f32,
    ) {
        use candle_core::quantized::k_quants::BlockQ8K;
        for n in [1, 2, 3, 8] {
            let x = blocks(n, size, scales, 11 * n as u64);
            let ys = q8_k_rows(4, n, 40 + n as u64);
            let expect = portable(&x, &ys[0], n);
            assert!(
                close(one(&x, &ys[0], n), expect),
                "{n}: {} vs {expect}",
                one(&x, &ys[0], n)
            );
            let got = four(&x, [&ys[0], &ys[1], &ys[2], &ys[3]], n);
            for (i, y) in ys.iter().enumerate() {
                // The four-row kernel gives the one-row kernel's exact bits.
                assert_eq!(got[i].to_bits(), one(&x, y, n).to_bits(), "{n} row {i}");
            }
            assert_eq!(x.as_ptr() as usize % 4, 0);
            // SAFETY: the buffers hold n blocks of each layout; Vec<u8> allocations are 4-aligned
            // here (checked above for x; y is allocated the same way).
            let (xc, yc) = unsafe {
                (
                    std::slice::from_raw_parts(x.as_ptr().cast::<T>(), n),
                    std::slice::from_raw_parts(ys[0].as_ptr().cast::<BlockQ8K>(), n),
                )
            };
            for candle in [
                T::vec_dot_unopt(n * 256, xc, yc),
                T::vec_dot(n * 256, xc, yc),
            ] {
                assert!(close(candle, expect), "{n}: candle {candle} vs {expect}");
            }
        }
    }

    #[test]
    fn q4_k_simd_agrees_with_portable_and_candle() {
        use candle_core::quantized::k_quants::BlockQ4K;
        k_quant_agrees::<BlockQ4K>(
            Q4_K,
            &[0, 2],
            dot_q4_k_q8_k,
            dot_q4_k_q8_k_x4,
            dot_q4_k_q8_k_portable,
        );
    }

    #[test]
    fn q6_k_simd_agrees_with_portable_and_candle() {
        use candle_core::quantized::k_quants::BlockQ6K;
        k_quant_agrees::<BlockQ6K>(
            Q6_K,
            &[208],
            dot_q6_k_q8_k,
            dot_q6_k_q8_k_x4,
            dot_q6_k_q8_k_portable,
        );
    }
}
