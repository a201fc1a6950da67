//! Element-wise and row-wise kernels of a transformer block, on plain f32 slices.

use std::sync::OnceLock;

use half::f16;

use crate::spec::{Activation, RopeStyle};

/// RMSNorm of each `weight.len()`-wide row of `x` into `out`: `x / sqrt(mean(x^2) + eps) * weight`.
pub fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let scale = rms_scale(row, eps);
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// `1 / sqrt(mean(x^2) + eps)`, summed in f64 and finished in f32 as ggml does.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// RMSNorm of each `weight.len()`-wide row of `x`, in place.
pub fn rms_norm_rows_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(weight.len()) {
        let scale = rms_scale(row, eps);
        for (v, &w) in row.iter_mut().zip(weight) {
            *v *= scale * w;
        }
    }
}

/// Fills `cos`/`sin` (length `dims / 2`) with the rotation angles of position `pos`.
pub fn rope_angles(pos: usize, base: f32, dims: usize, cos: &mut [f32], sin: &mut [f32]) {
    let step = base.powf(-2.0 / dims as f32);
    let mut theta = pos as f32;
    for i in 0..dims / 2 {
        cos[i] = theta.cos();
        sin[i] = theta.sin();
        theta *= step;
    }
}

/// Rotates the first `2 * cos.len()` dimensions of one head in place.
pub fn rope_apply(head: &mut [f32], style: RopeStyle, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    match style {
        RopeStyle::Interleaved => {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
        RopeStyle::Halves => {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = a * sin[i] + b * cos[i];
            }
        }
    }
}

/// `gate[i] = act(gate[i]) * up[i]`: the gated MLP's middle step.
pub fn gated_activation(gate: &mut [f32], up: &[f32], act: Activation) {
    match act {
        Activation::Silu => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
        Activation::GeluTanh => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = gelu_f16_table(*g) * u;
            }
        }
    }
}

/// GELU (tanh approximation) as ggml computes it: looked up at the f16 nearest the input in a
/// table of f16 results, with the tails passed through exactly.
fn gelu_f16_table(x: f32) -> f32 {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    // One entry per f16 bit pattern (128 KiB): tanh per element costs more than the matmuls
    // around it.
    let table = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())))
            .collect()
    });
    table[usize::from(f16::from_f32(x).to_bits())].to_f32()
}

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// Dot product of two equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorize without reassociating a single sum.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

/// `out += w * v`.
pub fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_weight_gives_unit_rms() {
        let x = [3.0, -4.0, 0.0, 5.0];
        let mut out = [0.0; 4];
        rms_norm_rows(&x, &[1.0; 4], 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
        assert!(out[1] < 0.0 && out[2] == 0.0);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let mut cos = [0.0; 4];
        let mut sin = [0.0; 4];
        let head: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
        rope_angles(0, 10_000.0, 8, &mut cos, &mut sin);
        let mut h = head.clone();
        rope_apply(&mut h, RopeStyle::Halves, &cos, &sin);
        assert_eq!(h, head);
        rope_angles(17, 10_000.0, 8, &mut cos, &mut sin);
        for style in [RopeStyle::Halves, RopeStyle::Interleaved] {
            let mut h = head.clone();
            rope_apply(&mut h, style, &cos, &sin);
            assert_ne!(h, head);
            let n0: f32 = head.iter().map(|v| v * v).sum();
            let n1: f32 = h.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
        }
    }

    #[test]
    fn gelu_tanh_matches_known_values() {
        let mut g = [1.0f32, -1.0, 0.0];
        gated_activation(&mut g, &[1.0; 3], Activation::GeluTanh);
        assert!((g[0] - 0.841_192).abs() < 1e-3, "{}", g[0]);
        assert!((g[1] + 0.158_808).abs() < 1e-3, "{}", g[1]);
        assert_eq!(g[2], 0.0);
    }
}
