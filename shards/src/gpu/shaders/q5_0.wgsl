// Q5_0 (22 bytes per 32 values): d: f16, qh: u32 (the fifth bits), 16 bytes of nibbles (as
// Q4_1); x = d * (q - 16).
struct Head {
    base: u32,
    d: f32,
    qh: u32,
}

fn head(rb: u32, g: u32) -> Head {
    let base = rb + g * 22u;
    return Head(base, f16_at(base), word_at(base + 2u));
}

fn load4(h: Head, j: u32) -> vec4<f32> {
    let k = j & 3u;
    let q = bytes4(word_at(h.base + 6u + 4u * k));
    let bit = vec4<u32>(4u * k) + vec4<u32>(0u, 1u, 2u, 3u);
    let qh = vec4<u32>(h.qh);
    var v: vec4<u32>;
    if (j < 4u) {
        v = (q & vec4<u32>(15u)) | (((qh >> bit) << vec4<u32>(4u)) & vec4<u32>(16u));
    } else {
        v = (q >> vec4<u32>(4u)) | ((qh >> (bit + vec4<u32>(12u))) & vec4<u32>(16u));
    }
    return h.d * (vec4<f32>(v) - 16.0);
}
