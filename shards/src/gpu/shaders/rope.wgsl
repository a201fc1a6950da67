// Rotary embeddings, in place, on rows of `heads` heads: head h of row t is rotated by the
// angles of row t's position, from a table of (cos, sin) pairs the host computed for this
// layer's base (as the CPU path computes them, so both rotate alike).

struct P {
    heads: u32,
    head_dim: u32,
    half: u32,
    halves: u32,
    table: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> angles: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x / p.heads;
    let base = wg.x * p.head_dim;
    for (var i = li; i < p.half; i += 32u) {
        let at = p.table + (t * p.half + i) * 2u;
        let c = angles[at];
        let s = angles[at + 1u];
        var ia = base + 2u * i;
        var ib = ia + 1u;
        if (p.halves != 0u) {
            ia = base + i;
            ib = base + i + p.half;
        }
        let a = x[ia];
        let b = x[ib];
        x[ia] = a * c - b * s;
        x[ib] = a * s + b * c;
    }
}
