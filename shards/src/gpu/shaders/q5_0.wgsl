// Q5_0 (22 bytes per 32 values): d: f16, qh: u32 (the fifth bits), 16 bytes of nibbles;
// x = d * (q - 16).
fn load32(rb: u32, g: u32, out: ptr<function, array<f32, 32>>) {
    let base = rb + g * 22u;
    let d = f16_at(base);
    let qh = byte_at(base + 2u) | (byte_at(base + 3u) << 8u) | (byte_at(base + 4u) << 16u)
        | (byte_at(base + 5u) << 24u);
    for (var j = 0u; j < 16u; j++) {
        let q = byte_at(base + 6u + j);
        let lo = (q & 15u) | (((qh >> j) << 4u) & 16u);
        let hi = (q >> 4u) | ((qh >> (j + 12u)) & 16u);
        (*out)[j] = d * f32(i32(lo) - 16);
        (*out)[j + 16u] = d * f32(i32(hi) - 16);
    }
}
