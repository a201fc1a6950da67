// F32: values as they are.
fn load32(rb: u32, g: u32, out: ptr<function, array<f32, 32>>) {
    let base = (rb + g * 128u) >> 2u;
    for (var i = 0u; i < 32u; i++) {
        (*out)[i] = bitcast<f32>(w[base + i]);
    }
}
