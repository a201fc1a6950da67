// The embedding lookup: y[t] = scale * W[tokens[t]], dequantised from the block format. A table
// larger than one binding runs as pieces: this one holds rows row0..row0 + rows.

struct P {
    cols: u32,
    row_bytes: u32,
    scale: f32,
    row0: u32,
    rows: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let t = wg.x;
    let token = tokens[t];
    if (token < p.row0 || token >= p.row0 + p.rows) {
        return;
    }
    let rb = (token - p.row0) * p.row_bytes;
    for (var g = lane; g < p.cols / 32u; g += 32u) {
        let h = head(rb, g);
        for (var j = 0u; j < 8u; j++) {
            let v = load4(h, j) * p.scale;
            let at = t * p.cols + g * 32u + 4u * j;
            y[at] = v.x;
            y[at + 1u] = v.y;
            y[at + 2u] = v.z;
            y[at + 3u] = v.w;
        }
    }
}
