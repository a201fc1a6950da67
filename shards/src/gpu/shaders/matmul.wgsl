// y[t][r] = sum_c W[r][c] * x[t][c] for up to four activation rows per workgroup, the weight in
// its file's block format (`load32`, from the format's file, dequantises one group of 32 values).
// A workgroup holds two weight rows of 32 lanes; lane i takes groups i, i + 32, ... A matrix
// larger than one binding runs as pieces of rows: this piece's rows go to outputs y_off + row,
// of rows `stride` apart.

struct P {
    rows: u32,
    cols: u32,
    n: u32,
    row_bytes: u32,
    x_off: u32,
    y_off: u32,
    grid: u32,
    stride: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const T: u32 = 4u;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let lane = li & 31u;
    let row = (wg.x + wg.y * p.grid) * 2u + (li >> 5u);
    let t0 = wg.z * T;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    if (row < p.rows) {
        let groups = p.cols / 32u;
        let rb = row * p.row_bytes;
        var vals: array<f32, 32>;
        for (var g = lane; g < groups; g += 32u) {
            load32(rb, g, &vals);
            for (var t = 0u; t < T; t++) {
                if (t0 + t < p.n) {
                    let xb = p.x_off + (t0 + t) * p.cols + g * 32u;
                    var s = 0.0;
                    for (var i = 0u; i < 32u; i++) {
                        s += vals[i] * x[xb + i];
                    }
                    acc[t] += s;
                }
            }
        }
    }
    for (var t = 0u; t < T; t++) {
        part[li * T + t] = acc[t];
    }
    workgroupBarrier();
    for (var stride = 16u; stride > 0u; stride >>= 1u) {
        if (lane < stride) {
            for (var t = 0u; t < T; t++) {
                part[li * T + t] += part[(li + stride) * T + t];
            }
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.rows) {
        for (var t = 0u; t < T; t++) {
            if (t0 + t < p.n) {
                y[p.y_off + (t0 + t) * p.stride + row] = part[li * T + t];
            }
        }
    }
}
