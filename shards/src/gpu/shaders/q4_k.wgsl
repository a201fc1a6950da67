// Q4_K (144 bytes per 256 values, eight groups of 32): d: f16, dmin: f16, 12 bytes of 6-bit
// scales and mins, 128 bytes of nibbles (groups 2c and 2c + 1 share bytes 32c..32c + 32: low
// and high nibbles); x = d * scale * q - dmin * min.
struct Head {
    qs: u32,
    shift: u32,
    d: f32,
    m: f32,
}

fn head(rb: u32, g: u32) -> Head {
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
    let qs = (base + 16u + (s >> 1u) * 32u) >> 2u;
    return Head(qs, (s & 1u) * 4u, dm.x * f32(scale), dm.y * f32(mn));
}

fn load4(h: Head, j: u32) -> vec4<f32> {
    let q = (bytes4(w[h.qs + j]) >> vec4<u32>(h.shift)) & vec4<u32>(15u);
    return h.d * vec4<f32>(q) - h.m;
}
