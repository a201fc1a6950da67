// F32: values as they are.
struct Head {
    base: u32,
}

fn head(rb: u32, g: u32) -> Head {
    return Head((rb + g * 128u) >> 2u);
}

fn load4(h: Head, j: u32) -> vec4<f32> {
    let b = h.base + 4u * j;
    return vec4<f32>(bitcast<f32>(w[b]), bitcast<f32>(w[b + 1u]), bitcast<f32>(w[b + 2u]),
        bitcast<f32>(w[b + 3u]));
}
