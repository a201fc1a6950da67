// F16: two values per word (a row of whole groups starts on a word).
fn load32(rb: u32, g: u32, out: ptr<function, array<f32, 32>>) {
    let base = (rb + g * 64u) >> 2u;
    for (var i = 0u; i < 16u; i++) {
        let v = unpack2x16float(w[base + i]);
        (*out)[2u * i] = v.x;
        (*out)[2u * i + 1u] = v.y;
    }
}
