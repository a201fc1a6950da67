// F16: two values per word (a row of whole groups starts on a word).
struct Head {
    base: u32,
}

fn head(rb: u32, g: u32) -> Head {
    return Head((rb + g * 64u) >> 2u);
}

fn load4(h: Head, j: u32) -> vec4<f32> {
    let b = h.base + 2u * j;
    return vec4<f32>(unpack2x16float(w[b]), unpack2x16float(w[b + 1u]));
}
