// Q6_K (210 bytes per 256 values): ql: 128 bytes of low nibbles, qh: 64 bytes of high bit
// pairs, 16 signed 8-bit scales, d: f16. Each half of 128 values has four groups k = 0..3:
// low nibbles of ql[l] (k 0), ql[l + 32] (k 1), high nibbles of ql[l] (k 2), ql[l + 32] (k 3),
// with bits 2k of qh[l]; x = d * scale * (q - 32), a scale per 16 values.
struct Head {
    ql: u32,
    qh: u32,
    k: u32,
    scales: vec2<f32>,
}

fn head(rb: u32, g: u32) -> Head {
    let base = rb + (g >> 3u) * 210u;
    let s = g & 7u;
    let n = s >> 2u;
    let k = s & 3u;
    let d = f16_at(base + 208u);
    let sc = base + 192u + n * 8u + 2u * k;
    let scales = vec2<f32>(d * i8_at(sc), d * i8_at(sc + 1u));
    return Head(base + n * 64u + (k & 1u) * 32u, base + 128u + n * 32u, k, scales);
}

fn load4(h: Head, j: u32) -> vec4<f32> {
    let lo = (bytes4(word_at(h.ql + 4u * j)) >> vec4<u32>((h.k >> 1u) * 4u)) & vec4<u32>(15u);
    let hi = (bytes4(word_at(h.qh + 4u * j)) >> vec4<u32>(2u * h.k)) & vec4<u32>(3u);
    let q = vec4<f32>(vec4<i32>(lo | (hi << vec4<u32>(4u))) - vec4<i32>(32));
    return h.scales[j >> 2u] * q;
}
