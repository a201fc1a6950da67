// Element-wise steps over `count` values: the gated MLP's middle (gate = act(gate) * up) and
// the residual add (x += o).

struct P {
    count: u32,
    gelu: u32,
    grid: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> a: array<f32>;

fn index(wg: vec3<u32>, li: u32) -> u32 {
    return (wg.x + wg.y * p.grid) * 256u + li;
}

fn round16(v: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(v, 0.0))).x;
}

// GELU with the tanh approximation, as ggml computes it: at the f16 nearest the input, the
// result rounded to f16; the tails passed through.
fn gelu(v: f32) -> f32 {
    if (v <= -10.0) {
        return 0.0;
    }
    if (v >= 10.0) {
        return v;
    }
    let x = round16(v);
    return round16(0.5 * x * (1.0 + tanh(0.7978846 * x * (1.0 + 0.044715 * x * x))));
}

@compute @workgroup_size(256)
fn gated(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = index(wg, li);
    if (i < p.count) {
        let g = a[i];
        if (p.gelu != 0u) {
            a[i] = gelu(g) * b[i];
        } else {
            a[i] = g / (1.0 + exp(-g)) * b[i];
        }
    }
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = index(wg, li);
    if (i < p.count) {
        a[i] += b[i];
    }
}
