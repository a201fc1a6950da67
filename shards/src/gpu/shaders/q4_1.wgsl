// Q4_1 (20 bytes per 32 values): d: f16, m: f16, 16 bytes of nibbles; value j is the low nibble
// of byte j, value j + 16 its high nibble; x = d * q + m.
fn load32(rb: u32, g: u32, out: ptr<function, array<f32, 32>>) {
    let base = rb + g * 20u;
    let dm = unpack2x16float(w[base >> 2u]);
    for (var j = 0u; j < 16u; j++) {
        let q = byte_at(base + 4u + j);
        (*out)[j] = dm.x * f32(q & 15u) + dm.y;
        (*out)[j + 16u] = dm.x * f32(q >> 4u) + dm.y;
    }
}
