// Writes rows row0.. of k and v into one session's cache of one layer at their positions, as
// f16 pairs (the cache is f16 on the device, as on the CPU).

struct P {
    row0: u32,
    kv_dim: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<u32>;
@group(0) @binding(4) var<storage, read_write> kc: array<u32>;
@group(0) @binding(5) var<storage, read_write> vc: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = p.row0 + wg.x;
    let src = t * p.kv_dim;
    let dst = pos[t] * p.kv_dim / 2u;
    for (var i = li; i < p.kv_dim / 2u; i += 64u) {
        kc[dst + i] = pack2x16float(vec2<f32>(k[src + 2u * i], k[src + 2u * i + 1u]));
        vc[dst + i] = pack2x16float(vec2<f32>(v[src + 2u * i], v[src + 2u * i + 1u]));
    }
}
