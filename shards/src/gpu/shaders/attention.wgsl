// Causal grouped-query attention (optionally within a sliding window) for rows row0.. of one
// session, one workgroup per (head, row). As on the CPU: the query meets the f16 keys rounded
// to f16, and the softmax weights, rounded to f16, meet the f16 values. Scores live in `scores`
// (one span of `span` floats per row and head).

struct P {
    row0: u32,
    heads: u32,
    group: u32,
    head_dim: u32,
    kv_dim: u32,
    window: u32,
    span: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;
@group(0) @binding(3) var<storage, read> kc: array<u32>;
@group(0) @binding(4) var<storage, read> vc: array<u32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> att: array<f32>;

var<workgroup> qv: array<f32, 256>;
var<workgroup> red: array<f32, 64>;

fn round16(v: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(v, 0.0))).x;
}

fn reduce(li: u32, v: f32, is_max: bool) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            if (is_max) {
                red[li] = max(red[li], red[li + stride]);
            } else {
                red[li] += red[li + stride];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let t = p.row0 + wg.y;
    let hd = p.head_dim;
    let position = pos[t];
    var lo = 0u;
    if (p.window != 0u && position + 1u > p.window) {
        lo = position + 1u - p.window;
    }
    let len = position + 1u - lo;
    let qb = (t * p.heads + h) * hd;
    for (var d = li; d < hd; d += 64u) {
        qv[d] = round16(q[qb + d]);
    }
    workgroupBarrier();
    let kb = (h / p.group) * hd;
    let sb = (t * p.heads + h) * p.span;
    var mx = -3.4e38;
    for (var j = li; j < len; j += 64u) {
        let at = ((lo + j) * p.kv_dim + kb) / 2u;
        var s = 0.0;
        for (var d = 0u; d < hd / 2u; d++) {
            let kv = unpack2x16float(kc[at + d]);
            s += qv[2u * d] * kv.x + qv[2u * d + 1u] * kv.y;
        }
        s *= p.scale;
        scores[sb + j] = s;
        mx = max(mx, s);
    }
    let m = reduce(li, mx, true);
    var sum = 0.0;
    for (var j = li; j < len; j += 64u) {
        let e = exp(scores[sb + j] - m);
        scores[sb + j] = e;
        sum += e;
    }
    let total = reduce(li, sum, false);
    for (var j = li; j < len; j += 64u) {
        scores[sb + j] = round16(scores[sb + j] / total);
    }
    storageBarrier();
    workgroupBarrier();
    for (var d = li; d < hd; d += 64u) {
        var acc = 0.0;
        let half = d & 1u;
        for (var j = 0u; j < len; j++) {
            let vv = unpack2x16float(vc[((lo + j) * p.kv_dim + kb + d) / 2u]);
            acc += scores[sb + j] * select(vv.x, vv.y, half == 1u);
        }
        att[qb + d] = acc;
    }
}
