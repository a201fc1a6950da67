// F16: one group of 32 values (two per word) against x[xb..xb + 8].
fn dot_group(rb: u32, g: u32, xb: u32) -> f32 {
    let b = (rb + g * 64u) >> 2u;
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        let v = vec4<f32>(unpack2x16float(w[b + 2u * j]), unpack2x16float(w[b + 2u * j + 1u]));
        s += v * x[xb + j];
    }
    return sum4(s);
}
