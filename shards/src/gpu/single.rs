//! Kernels run one at a time on plain inputs, outside any stage: what the checks compare,
//! shader by shader, with the CPU code each one mirrors.

use crate::error::Result;
use crate::gpu::device::Gpu;
use crate::gpu::part::{
    params_buffer, record, staging, storage, submit_and_read, upload, Recorder, Weight,
};
use crate::quant::QMatrix;

/// `out[t][r] = sum_c W[r][c] * xs[t][c]` on the device, `w` read in its block format.
pub fn matmul(gpu: &Gpu, w: &QMatrix, xs: &[f32]) -> Result<Vec<f32>> {
    let n = xs.len() / w.cols();
    gpu.checked("a product", || {
        let weight = Weight::upload(gpu, w)?;
        let x = upload(gpu, "x", bytemuck::cast_slice(xs))?;
        let y = storage(gpu, "y", n * w.rows() * 4, wgpu::BufferUsages::COPY_SRC);
        let params = params_buffer(gpu, weight.pieces.len());
        let g = weight.bind(gpu, &params, &[(2, &x), (3, &y)]);
        let product = (weight, g);
        let mut rec = Recorder::new(gpu);
        rec.matmul(&product, n, 0);
        let mut out = Vec::new();
        let encoder = record(gpu, &rec, &params);
        submit_and_read(
            gpu,
            encoder,
            &y,
            &staging(gpu, n * w.rows()),
            n * w.rows(),
            &mut out,
        )?;
        Ok(out)
    })?
}

/// Rows `rows` of `w`, dequantised on the device (the embedding lookup's shader).
pub fn dequantize_rows(gpu: &Gpu, w: &QMatrix, rows: &[u32]) -> Result<Vec<f32>> {
    gpu.checked("an embedding lookup", || {
        let weight = Weight::upload(gpu, w)?.lookup(gpu)?;
        let tokens = upload(gpu, "tokens", bytemuck::cast_slice(rows))?;
        let floats = rows.len() * w.cols();
        let y = storage(gpu, "y", floats * 4, wgpu::BufferUsages::COPY_SRC);
        let params = params_buffer(gpu, weight.pieces.len());
        let g = weight.bind(gpu, &params, &[(2, &tokens), (3, &y)]);
        let mut rec = Recorder::new(gpu);
        weight.record_lookup(&mut rec, &g, rows.len(), 1.0);
        let mut out = Vec::new();
        let encoder = record(gpu, &rec, &params);
        submit_and_read(gpu, encoder, &y, &staging(gpu, floats), floats, &mut out)?;
        Ok(out)
    })?
}
