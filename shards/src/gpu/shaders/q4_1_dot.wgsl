// Q4_1: one block against x[xb..xb + 8]; word j holds values 4j.. (low nibbles) and 16 + 4j..
// (high nibbles).
fn dot_group(rb: u32, g: u32, xb: u32) -> f32 {
    let base = (rb + g * 20u) >> 2u;
    let dm = unpack2x16float(w[base]);
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let q = bytes4(w[base + 1u + j]);
        s += (dm.x * vec4<f32>(q & vec4<u32>(15u)) + dm.y) * x[xb + j];
        s += (dm.x * vec4<f32>(q >> vec4<u32>(4u)) + dm.y) * x[xb + 4u + j];
    }
    return sum4(s);
}
