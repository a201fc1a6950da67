// Q8_0 (34 bytes per 32 values): d: f16, q: i8[32]; x = d * q.
fn load32(rb: u32, g: u32, out: ptr<function, array<f32, 32>>) {
    let base = rb + g * 34u;
    let d = f16_at(base);
    for (var i = 0u; i < 32u; i++) {
        (*out)[i] = d * i8_at(base + 2u + i);
    }
}
