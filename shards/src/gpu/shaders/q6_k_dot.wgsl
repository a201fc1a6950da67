// Q6_K: group g (of eight per 256-value block) against x[xb..xb + 8]; see q6_k.wgsl for where
// its bits are.
fn dot_group(rb: u32, g: u32, xb: u32) -> f32 {
    let base = rb + (g >> 3u) * 210u;
    let s = g & 7u;
    let n = s >> 2u;
    let k = s & 3u;
    let d = f16_at(base + 208u);
    let ql = base + n * 64u + (k & 1u) * 32u;
    let qh = base + 128u + n * 32u;
    let shift = vec4<u32>((k >> 1u) * 4u);
    let hshift = vec4<u32>(2u * k);
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        let lo = (bytes4(word_at(ql + 4u * j)) >> shift) & vec4<u32>(15u);
        let hi = (bytes4(word_at(qh + 4u * j)) >> hshift) & vec4<u32>(3u);
        let q = vec4<f32>(vec4<i32>(lo | (hi << vec4<u32>(4u))) - vec4<i32>(32));
        let scale = i8_at(base + 192u + n * 8u + (j >> 2u) + 2u * k);
        acc += (d * scale) * q * x[xb + j];
    }
    return sum4(acc);
}
