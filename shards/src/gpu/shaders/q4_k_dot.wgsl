// Q4_K: group g (of eight per 256-value block) against x[xb..xb + 8].
fn dot_group(rb: u32, g: u32, xb: u32) -> f32 {
    let base = rb + (g >> 3u) * 144u;
    let s = g & 7u;
    let dm = unpack2x16float(w[base >> 2u]);
    let sc = base + 4u;
    var scale: u32;
    var mn: u32;
    if (s < 4u) {
        scale = byte_at(sc + s) & 63u;
        mn = byte_at(sc + s + 4u) & 63u;
    } else {
        scale = (byte_at(sc + s + 4u) & 15u) | ((byte_at(sc + s - 4u) >> 6u) << 4u);
        mn = (byte_at(sc + s + 4u) >> 4u) | ((byte_at(sc + s) >> 6u) << 4u);
    }
    let d = dm.x * f32(scale);
    let m = dm.y * f32(mn);
    let qs = (base + 16u + (s >> 1u) * 32u) >> 2u;
    let shift = vec4<u32>((s & 1u) * 4u);
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        let q = (bytes4(w[qs + j]) >> shift) & vec4<u32>(15u);
        acc += (d * vec4<f32>(q) - m) * x[xb + j];
    }
    return sum4(acc);
}
