// Q6_K (210 bytes per 256 values): ql: 128 bytes of low nibbles, qh: 64 bytes of high bit
// pairs, 16 signed 8-bit scales, d: f16. Each half of 128 values has four groups k = 0..3:
// low nibbles of ql[l] (k 0), ql[l + 32] (k 1), high nibbles of ql[l] (k 2), ql[l + 32] (k 3),
// with bits 2k of qh[l]; x = d * scale * (q - 32), a scale per 16 values.
fn load32(rb: u32, g: u32, out: ptr<function, array<f32, 32>>) {
    let base = rb + (g >> 3u) * 210u;
    let s = g & 7u;
    let n = s >> 2u;
    let k = s & 3u;
    let d = f16_at(base + 208u);
    let ql = base + n * 64u + (k & 1u) * 32u;
    let qh = base + 128u + n * 32u;
    let shift = (k >> 1u) * 4u;
    for (var l = 0u; l < 32u; l++) {
        let lo = (byte_at(ql + l) >> shift) & 15u;
        let hi = (byte_at(qh + l) >> (2u * k)) & 3u;
        let q = i32(lo | (hi << 4u)) - 32;
        let scale = i8_at(base + 192u + n * 8u + (l >> 4u) + 2u * k);
        (*out)[l] = d * scale * f32(q);
    }
}
