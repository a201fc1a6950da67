// F32: one group of 32 values against x[xb..xb + 8] (vec4s).
fn dot_group(rb: u32, g: u32, xb: u32) -> f32 {
    let b = (rb + g * 128u) >> 2u;
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        let v = vec4<f32>(bitcast<f32>(w[b + 4u * j]), bitcast<f32>(w[b + 4u * j + 1u]),
            bitcast<f32>(w[b + 4u * j + 2u]), bitcast<f32>(w[b + 4u * j + 3u]));
        s += v * x[xb + j];
    }
    return sum4(s);
}
