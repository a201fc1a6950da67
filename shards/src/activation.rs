//! Quantization of activations into the block formats the dot-product kernels take, written
//! byte for byte as ggml writes them (round half to even, scales computed in f32), so products
//! round the way llama.cpp's do.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Quantizes one row of activations into blocks.
pub type Quantize = fn(&[f32], &mut [u8]);

/// hearth's quantizer for activations of block type `dtype` (Q8_0, Q8_1, Q8_K), if it has one.
pub fn quantizer(dtype: GgmlDType) -> Option<Quantize> {
    match dtype {
        GgmlDType::Q8_0 => Some(quantize_q8_0),
        GgmlDType::Q8_1 => Some(quantize_q8_1),
        GgmlDType::Q8K => Some(quantize_q8_k),
        _ => None,
    }
}

/// Q8_0: 32 values → f16 scale + 32 × i8.
pub fn quantize_q8_0(xs: &[f32], out: &mut [u8]) {
    for (x, block) in xs.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let (d, id) = scale_127(x);
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, &v) in block[2..].iter_mut().zip(x) {
            *q = nearest(v * id) as i8 as u8;
        }
    }
}

/// Q8_1: like Q8_0 plus f16 `d × sum(q)` (used with Q4_1/Q5_1 weights' offsets).
pub fn quantize_q8_1(xs: &[f32], out: &mut [u8]) {
    for (x, block) in xs.chunks_exact(32).zip(out.chunks_exact_mut(36)) {
        let (d, id) = scale_127(x);
        let mut sum = 0i32;
        for (q, &v) in block[4..].iter_mut().zip(x) {
            let qi = nearest(v * id) as i8;
            sum += i32::from(qi);
            *q = qi as u8;
        }
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_le_bytes());
    }
}

/// Q8_K: 256 values → f32 scale, 256 × i8, 16 × i16 sums of 16 (for K-quant weights).
pub fn quantize_q8_k(xs: &[f32], out: &mut [u8]) {
    for (x, block) in xs.chunks_exact(256).zip(out.chunks_exact_mut(292)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            block.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        let (qs, sums) = block[4..].split_at_mut(256);
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (nearest(iscale * v) as i32).min(127) as i8 as u8;
        }
        for (j, s) in sums.chunks_exact_mut(2).enumerate() {
            let sum: i16 = qs[j * 16..j * 16 + 16]
                .iter()
                .map(|&q| i16::from(q as i8))
                .sum();
            s.copy_from_slice(&sum.to_le_bytes());
        }
        block[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// Rounds half to even, like `f32::round_ties_even` for the magnitudes met here (below 2^22), by
/// adding and removing 1.5 × 2^23 (ggml's `nearest_int`): without SSE4.1 at compile time the
/// standard method is a call to `rintf` per value.
#[inline]
fn nearest(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Scale and inverse scale mapping a block's largest magnitude to 127.
fn scale_127(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (amax / 127.0, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType};

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173 + (i as f32).sin())
            .collect()
    }

    /// Our bytes, read back through candle's block types, dequantize to the input within one step.
    fn roundtrip<T: GgmlType>(
        quant: fn(&[f32], &mut [u8]),
        n: usize,
        block_bytes: usize,
        tol: f32,
    ) {
        let xs = sample(n);
        let mut bytes = vec![0u64; (n / T::BLCK_SIZE * block_bytes).div_ceil(8)];
        // SAFETY: u64 storage viewed as bytes, then as plain-data blocks of the matching layout.
        let raw = unsafe {
            std::slice::from_raw_parts_mut(
                bytes.as_mut_ptr().cast::<u8>(),
                n / T::BLCK_SIZE * block_bytes,
            )
        };
        quant(&xs, raw);
        let blocks =
            unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<T>(), n / T::BLCK_SIZE) };
        let mut back = vec![0.0; n];
        T::to_float(blocks, &mut back);
        for (a, b) in xs.iter().zip(&back) {
            assert!((a - b).abs() <= tol, "{a} vs {b}");
        }
    }

    #[test]
    fn blocks_round_trip_through_candle_layouts() {
        roundtrip::<BlockQ8_0>(quantize_q8_0, 256, 34, 0.05);
        roundtrip::<BlockQ8_1>(quantize_q8_1, 256, 36, 0.05);
        roundtrip::<BlockQ8K>(quantize_q8_k, 512, 292, 0.05);
    }

    #[test]
    fn nearest_rounds_half_to_even() {
        for v in [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -127.49, 3.7, -3.2] {
            assert_eq!(nearest(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn q8_1_sum_matches_quants() {
        let xs = sample(32);
        let mut b = [0u8; 36];
        quantize_q8_1(&xs, &mut b);
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let s = f16::from_le_bytes([b[2], b[3]]).to_f32();
        let sum: i32 = b[4..].iter().map(|&q| i32::from(q as i8)).sum();
        assert!((s - d * sum as f32).abs() <= (d * sum as f32).abs() * 1e-3);
    }
}
