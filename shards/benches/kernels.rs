//! Throughput of the quantized matrix products at the shapes of the models at hand, next to the
//! machine's memory bandwidth. Decoding (one activation row) is reported in GB/s of weights read,
//! the number to hold against the bandwidth: once with the matrix in cache (the kernel's own speed)
//! and once streaming through copies that together exceed the caches, as a decode step streams a
//! whole model. Prompt batches (4 and 64 rows) are reported in elements/s, where one element is
//! one floating-point operation (a multiply-add counts two), i.e. GFLOP/s.
//!
//! `cargo bench -p hearth-shards --bench kernels`

use candle_core::quantized::k_quants::{self as kq, GgmlType as Block};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hearth_shards::quant::{GgmlType, QMatrix, QuantScratch};
use rayon::prelude::*;

/// Bytes read by the bandwidth reference: far beyond any cache.
const BANDWIDTH_BYTES: usize = 256 << 20;

/// Weight bytes the streamed decode cycles through, also beyond any cache.
const STREAM_BYTES: usize = 128 << 20;

/// Weight types and `rows × cols` shapes: SmolLM2's MLP gate (Q4_1, and the same shape in the
/// other 32-value block types) and Gemma 3's MLP down projection (its K-quant types).
const CASES: [(GgmlType, usize, usize); 5] = [
    (GgmlType::Q4_1, 1536, 576),
    (GgmlType::Q5_0, 1536, 576),
    (GgmlType::Q8_0, 1536, 576),
    (GgmlType::Q4K, 640, 2048),
    (GgmlType::Q6K, 640, 2048),
];

/// A pool of `threads` workers; benchmarks iterate inside it, as the engine runs a whole step
/// inside its pool (entering a pool from outside costs a wake-up, tens of microseconds).
fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

/// Block bytes of a `rows × cols` matrix of smooth pseudo-random values quantized by candle.
fn quantized<T: Block>(rows: usize, cols: usize) -> Vec<u8> {
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| ((i as f32) * 0.618_034).sin())
        .collect();
    let mut blocks = vec![T::zeros(); rows * cols / T::BLCK_SIZE];
    T::from_float(&values, &mut blocks);
    // SAFETY: candle's blocks are `repr(C)` plain data laid out as in GGUF files.
    unsafe {
        std::slice::from_raw_parts(
            blocks.as_ptr().cast::<u8>(),
            std::mem::size_of_val(blocks.as_slice()),
        )
    }
    .to_vec()
}

fn matrix(ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    match ty {
        GgmlType::Q4_1 => quantized::<kq::BlockQ4_1>(rows, cols),
        GgmlType::Q5_0 => quantized::<kq::BlockQ5_0>(rows, cols),
        GgmlType::Q8_0 => quantized::<kq::BlockQ8_0>(rows, cols),
        GgmlType::Q4K => quantized::<kq::BlockQ4K>(rows, cols),
        GgmlType::Q6K => quantized::<kq::BlockQ6K>(rows, cols),
        other => unreachable!("no bench case for {other}"),
    }
}

fn qmatrix(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> QMatrix {
    QMatrix::from_bytes("bench", ty, rows, cols, bytes.to_vec()).expect("valid blocks")
}

/// The layouts a weight of this type can run in: as the file has it ("rows", one weight row per
/// kernel call) and, where the engine repacks it, eight rows at a time ("packed", what models
/// run on).
fn layouts(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Vec<(&'static str, QMatrix)> {
    let m = qmatrix(ty, rows, cols, bytes);
    let packed = m.clone().pack();
    if packed.is_packed() {
        vec![("rows", m), ("packed", packed)]
    } else {
        vec![("rows", m)]
    }
}

/// A separate copy of `m` (its own bytes), in the same layout.
fn copy_of(m: &QMatrix, bytes: &[u8]) -> QMatrix {
    let copy = qmatrix(m.ty(), m.rows(), m.cols(), bytes);
    if m.is_packed() {
        copy.pack()
    } else {
        copy
    }
}

fn memory_bandwidth(c: &mut Criterion) {
    let buf = vec![1u64; BANDWIDTH_BYTES / 8];
    let mut group = c.benchmark_group("memory_read");
    group.throughput(Throughput::BytesDecimal(BANDWIDTH_BYTES as u64));
    for threads in [1, 2] {
        let pool = pool(threads);
        group.bench_function(BenchmarkId::from_parameter(format!("{threads}t")), |b| {
            pool.install(|| {
                b.iter(|| {
                    buf.par_chunks(BANDWIDTH_BYTES / 8 / threads)
                        .map(|chunk| chunk.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
                        .reduce(|| 0, u64::wrapping_add)
                })
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (ty, rows, cols) in CASES {
        let bytes = matrix(ty, rows, cols);
        for (layout, m) in layouts(ty, rows, cols, &bytes) {
            let copies: Vec<QMatrix> = (0..STREAM_BYTES.div_ceil(bytes.len()))
                .map(|_| copy_of(&m, &bytes))
                .collect();
            group.throughput(Throughput::BytesDecimal(bytes.len() as u64));
            let xs: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).cos()).collect();
            let mut out = vec![0.0; rows];
            let mut scratch = QuantScratch::default();
            for threads in [1, 2] {
                let pool = pool(threads);
                let id = format!("{ty} {layout} {rows}x{cols} {threads}t cached");
                group.bench_function(BenchmarkId::from_parameter(id), |b| {
                    pool.install(|| b.iter(|| m.matmul(&xs, &mut out, &mut scratch)))
                });
                let id = format!("{ty} {layout} {rows}x{cols} {threads}t streamed");
                let mut next = copies.iter().cycle();
                group.bench_function(BenchmarkId::from_parameter(id), |b| {
                    pool.install(|| {
                        b.iter(|| {
                            let m = next.next().expect("cycle");
                            m.matmul(&xs, &mut out, &mut scratch)
                        })
                    })
                });
            }
        }
    }
    group.finish();
}

/// Small decode products on one and two threads: where forking stops paying (see
/// `quant::SERIAL_WORK`).
fn fork(c: &mut Criterion) {
    let mut group = c.benchmark_group("fork");
    let cols = 576;
    for rows in [64, 192, 576, 1536] {
        let m = qmatrix(
            GgmlType::Q4_1,
            rows,
            cols,
            &matrix(GgmlType::Q4_1, rows, cols),
        )
        .pack();
        let xs: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).cos()).collect();
        let mut out = vec![0.0; rows];
        let mut scratch = QuantScratch::default();
        group.throughput(Throughput::Elements((2 * rows * cols) as u64));
        for threads in [1, 2] {
            let pool = pool(threads);
            let id = format!("Q4_1 {rows}x{cols} {threads}t");
            group.bench_function(BenchmarkId::from_parameter(id), |b| {
                pool.install(|| b.iter(|| m.matmul(&xs, &mut out, &mut scratch)))
            });
        }
    }
    group.finish();
}

fn prompt(c: &mut Criterion) {
    let mut group = c.benchmark_group("prompt");
    let pool = pool(1);
    for (ty, rows, cols) in CASES {
        for (layout, m) in layouts(ty, rows, cols, &matrix(ty, rows, cols)) {
            for n in [4, 64] {
                group.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
                let xs: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).cos()).collect();
                let mut out = vec![0.0; n * rows];
                let mut scratch = QuantScratch::default();
                let id = format!("{ty} {layout} {rows}x{cols} n={n} 1t");
                group.bench_function(BenchmarkId::from_parameter(id), |b| {
                    pool.install(|| b.iter(|| m.matmul(&xs, &mut out, &mut scratch)))
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = kernels;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = memory_bandwidth, decode, prompt, fork
}
criterion_main!(kernels);
