// RMSNorm of rows (one workgroup each): dst = src / sqrt(mean(src^2) + eps) * weight, where the
// weight is `width` wide (a whole row, or one head when rows are heads). `in_place` normalises
// dst itself.

struct P {
    width: u32,
    eps: f32,
    src_off: u32,
    dst_off: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

var<workgroup> part: array<f32, 64>;

fn mean_square_scale(li: u32) -> f32 {
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            part[li] += part[li + stride];
        }
        workgroupBarrier();
    }
    return 1.0 / sqrt(part[0] / f32(p.width) + p.eps);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let s = p.src_off + wg.x * p.width;
    let d = p.dst_off + wg.x * p.width;
    var sum = 0.0;
    for (var i = li; i < p.width; i += 64u) {
        sum += src[s + i] * src[s + i];
    }
    part[li] = sum;
    let scale = mean_square_scale(li);
    for (var i = li; i < p.width; i += 64u) {
        dst[d + i] = src[s + i] * scale * weight[i];
    }
}

@compute @workgroup_size(64)
fn in_place(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let d = p.dst_off + wg.x * p.width;
    var sum = 0.0;
    for (var i = li; i < p.width; i += 64u) {
        sum += dst[d + i] * dst[d + i];
    }
    part[li] = sum;
    let scale = mean_square_scale(li);
    for (var i = li; i < p.width; i += 64u) {
        dst[d + i] = dst[d + i] * (scale * weight[i]);
    }
}
