// y[t][r] = sum_c W[r][c] * x[t][c] for up to four activation rows per workgroup, the weight in
// its file's block format (the format's file says how to read a group of 32 values: `head`,
// then `load4` for each four, dequantised as the CPU does). A workgroup of 64 holds
// 64 / LANES weight rows; a row's LANES lanes take groups lane, lane + LANES, ... and add up
// their sums. LANES is set per device: 32 on GPUs (a row's reads side by side), 1 where the
// "GPU" is the CPU (lavapipe: one row per lane, no barriers). A matrix larger than one binding
// runs as pieces of rows: this piece's rows go to outputs y_off + row, of rows `stride` apart.

override LANES: u32 = 32u;

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
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> part: array<vec4<f32>, 64>;

// One group of 32 weights against x[xb..xb + 8] (vec4s).
fn dot_group(rb: u32, g: u32, xb: u32) -> f32 {
    let h = head(rb, g);
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        s += load4(h, j) * x[xb + j];
    }
    return sum4(s);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let lane = li % LANES;
    let row = (wg.x + wg.y * p.grid) * (64u / LANES) + li / LANES;
    let t0 = wg.z * 4u;
    let tokens = min(p.n - t0, 4u);
    var acc = vec4<f32>(0.0);
    if (row < p.rows) {
        let groups = p.cols / 32u;
        let rb = row * p.row_bytes;
        // Inputs as vec4s: x_off and cols are multiples of 4.
        let x0 = (p.x_off + t0 * p.cols) / 4u;
        let stride = p.cols / 4u;
        for (var g = lane; g < groups; g += LANES) {
            acc.x += dot_group(rb, g, x0 + g * 8u);
            if (tokens > 1u) {
                acc.y += dot_group(rb, g, x0 + stride + g * 8u);
            }
            if (tokens > 2u) {
                acc.z += dot_group(rb, g, x0 + 2u * stride + g * 8u);
            }
            if (tokens > 3u) {
                acc.w += dot_group(rb, g, x0 + 3u * stride + g * 8u);
            }
        }
    }
    if (LANES > 1u) {
        part[li] = acc;
        workgroupBarrier();
        for (var s = LANES / 2u; s > 0u; s >>= 1u) {
            if (lane < s) {
                part[li] += part[li + s];
            }
            workgroupBarrier();
        }
        acc = part[li];
    }
    if (lane == 0u && row < p.rows) {
        for (var t = 0u; t < tokens; t++) {
            y[p.y_off + (t0 + t) * p.stride + row] = acc[t];
        }
    }
}
