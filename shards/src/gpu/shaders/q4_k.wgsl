// Q4_K (144 bytes per 256 values, eight groups of 32): d: f16, dmin: f16, 12 bytes of 6-bit
// scales and mins, 128 bytes of nibbles (groups 2c and 2c + 1 share bytes 32c..32c + 32: low
// and high nibbles); x = d * scale * q - dmin * min.
fn load32(rb: u32, g: u32, out: ptr<function, array<f32, 32>>) {
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
    let qs = base + 16u + (s >> 1u) * 32u;
    let shift = (s & 1u) * 4u;
    for (var l = 0u; l < 32u; l++) {
        (*out)[l] = d * f32((byte_at(qs + l) >> shift) & 15u) - m;
    }
}
