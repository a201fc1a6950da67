// Q5_0: one block against x[xb..xb + 8].
fn dot_group(rb: u32, g: u32, xb: u32) -> f32 {
    let base = rb + g * 22u;
    let d = f16_at(base);
    let qh = word_at(base + 2u);
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let q = bytes4(word_at(base + 6u + 4u * j));
        let bit = vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u);
        let lo = (q & vec4<u32>(15u)) | (((vec4<u32>(qh) >> bit) << vec4<u32>(4u)) & vec4<u32>(16u));
        let hi = (q >> vec4<u32>(4u)) | ((vec4<u32>(qh) >> (bit + vec4<u32>(12u))) & vec4<u32>(16u));
        s += (d * (vec4<f32>(lo) - 16.0)) * x[xb + j];
        s += (d * (vec4<f32>(hi) - 16.0)) * x[xb + 4u + j];
    }
    return sum4(s);
}
