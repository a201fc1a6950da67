// Q8_0 (34 bytes per 32 values): d: f16, q: i8[32]; x = d * q.
struct Head {
    base: u32,
    d: f32,
}

fn head(rb: u32, g: u32) -> Head {
    let base = rb + g * 34u;
    return Head(base, f16_at(base));
}

fn load4(h: Head, j: u32) -> vec4<f32> {
    return h.d * signed4(word_at(h.base + 2u + 4u * j));
}
