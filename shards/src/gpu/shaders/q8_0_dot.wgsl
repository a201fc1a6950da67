// Q8_0: one block against x[xb..xb + 8].
fn dot_group(rb: u32, g: u32, xb: u32) -> f32 {
    let base = rb + g * 34u;
    let d = f16_at(base);
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        s += (d * signed4(word_at(base + 2u + 4u * j))) * x[xb + j];
    }
    return sum4(s);
}
