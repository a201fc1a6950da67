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
