// Q4_1 (20 bytes per 32 values): d: f16, m: f16, 16 bytes of nibbles; value i < 16 is the low
// nibble of byte i, value 16 + i its high nibble; x = d * q + m.
struct Head {
    base: u32,
    dm: vec2<f32>,
}

fn head(rb: u32, g: u32) -> Head {
    let base = (rb + g * 20u) >> 2u;
    return Head(base, unpack2x16float(w[base]));
}

fn load4(h: Head, j: u32) -> vec4<f32> {
    let q = (bytes4(w[h.base + 1u + (j & 3u)]) >> vec4<u32>(4u * (j >> 2u))) & vec4<u32>(15u);
    return h.dm.x * vec4<f32>(q) + h.dm.y;
}
