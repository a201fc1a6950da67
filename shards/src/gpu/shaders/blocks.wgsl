// Reading GGUF block bytes from the weight's word array `w`. Blocks of some formats (Q5_0: 22
// bytes, Q8_0: 34, Q6_K: 210) do not start on a word, so bytes are picked out of words.

fn byte_at(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 3u) << 3u)) & 0xffu;
}

fn i8_at(b: u32) -> f32 {
    return f32(i32(byte_at(b) << 24u) >> 24u);
}

fn f16_at(b: u32) -> f32 {
    return unpack2x16float(byte_at(b) | (byte_at(b + 1u) << 8u)).x;
}

// Four bytes from byte b on, whatever its alignment.
fn word_at(b: u32) -> u32 {
    let i = b >> 2u;
    let s = (b & 3u) << 3u;
    return select((w[i] >> s) | (w[i + 1u] << (32u - s)), w[i], s == 0u);
}

// The four bytes of a word, lowest first.
fn bytes4(q: u32) -> vec4<u32> {
    return vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) & vec4<u32>(255u);
}

// The four bytes of a word as signed values.
fn signed4(q: u32) -> vec4<f32> {
    let v = vec4<i32>(bitcast<i32>(q << 24u), bitcast<i32>(q << 16u), bitcast<i32>(q << 8u), bitcast<i32>(q));
    return vec4<f32>(v >> vec4<u32>(24u));
}

fn sum4(v: vec4<f32>) -> f32 {
    return v.x + v.y + v.z + v.w;
}
