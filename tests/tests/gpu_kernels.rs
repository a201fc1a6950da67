//! Every shader that reads weights, against the CPU code it mirrors, for each block format the
//! GPU reads: on random blocks of every format, and on every matrix of the two real models. Runs
//! on the adapter `gpu` picks (lavapipe, Mesa's software Vulkan driver, in CI: `.ci/run`
//! installs it).
//!
//! The reference is the CPU's dequantisation (`QMatrix::row_to_f32`) with products summed in
//! f64. A shader sums in f32 in its own order, so a product may differ from the exact one by
//! the bound f32 summation allows: `cols · ε · Σ|w·x|`.

use hearth_shards::gpu::{single, Gpu, FORMATS};
use hearth_shards::quant::{GgmlType, QMatrix};
use hearth_shards::Gguf;
use hearth_tests::{gpu, TestModel};

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    fn float(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// `rows` rows of `cols` values of `ty`: random quants, and scales in a sane range (random
/// bits there would make infinities).
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QMatrix {
    let blocks = rows * cols / ty.block_size();
    let mut bytes = vec![0u8; blocks * ty.type_size()];
    match ty {
        GgmlType::F32 => {
            for b in bytes.chunks_exact_mut(4) {
                b.copy_from_slice(&rng.float().to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for b in bytes.chunks_exact_mut(2) {
                b.copy_from_slice(&f16_bytes(rng.float()));
            }
        }
        _ => {
            for b in bytes.iter_mut() {
                *b = rng.next() as u8;
            }
            // Where each block keeps its f16 scales.
            let scales: &[usize] = match ty {
                GgmlType::Q8_0 | GgmlType::Q5_0 => &[0],
                GgmlType::Q4_1 | GgmlType::Q4K => &[0, 2],
                GgmlType::Q6K => &[208],
                other => panic!("no generator for {other}"),
            };
            for block in bytes.chunks_exact_mut(ty.type_size()) {
                for &at in scales {
                    block[at..at + 2].copy_from_slice(&f16_bytes(rng.float() * 0.05));
                }
            }
        }
    }
    QMatrix::from_bytes("random", ty, rows, cols, bytes).expect("valid blocks")
}

/// Compares the device's product with the exact one of the CPU's dequantised rows.
fn check_matmul(gpu: &Gpu, w: &QMatrix, n: usize, rng: &mut Rng) {
    let (rows, cols) = (w.rows(), w.cols());
    let xs: Vec<f32> = (0..n * cols).map(|_| rng.float()).collect();
    let got = single::matmul(gpu, w, &xs).unwrap_or_else(|e| panic!("{w:?}: {e}"));
    assert_eq!(got.len(), n * rows);
    let mut row = vec![0f32; cols];
    let mut worst = 0f64;
    for r in 0..rows {
        w.row_to_f32(r, &mut row);
        for t in 0..n {
            let x = &xs[t * cols..(t + 1) * cols];
            let exact: f64 = row
                .iter()
                .zip(x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let magnitude: f64 = row
                .iter()
                .zip(x)
                .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
                .sum();
            let bound = cols as f64 * f64::from(f32::EPSILON) * magnitude + 1e-30;
            let err = (f64::from(got[t * rows + r]) - exact).abs();
            assert!(
                err <= bound,
                "{w:?} row {r} input {t}: device {} exact {exact} (error {err:e} > bound {bound:e})",
                got[t * rows + r]
            );
            worst = worst.max(err / bound);
        }
    }
    eprintln!("{w:?} x {n}: worst error {:.3} of the bound", worst);
}

/// Compares the device's dequantisation (the embedding lookup) with the CPU's.
fn check_rows(gpu: &Gpu, w: &QMatrix, rows: &[u32]) {
    let got = single::dequantize_rows(gpu, w, rows).unwrap_or_else(|e| panic!("{w:?}: {e}"));
    let cols = w.cols();
    let mut want = vec![0f32; cols];
    for (i, &r) in rows.iter().enumerate() {
        w.row_to_f32(r as usize, &mut want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (c, (&g, &e)) in got[i * cols..(i + 1) * cols].iter().zip(&want).enumerate() {
            // The same few f32 operations; a fused multiply-add may round once less.
            assert!(
                (g - e).abs() <= 4.0 * f32::EPSILON * scale,
                "{w:?} row {r} col {c}: device {g} CPU {e}"
            );
        }
    }
}

#[test]
fn every_format_on_random_blocks() {
    let gpu = gpu();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for ty in FORMATS {
        // 3 rows (an odd pair), 512 columns (two K super-blocks, sixteen groups); one to five
        // input rows (a whole tile of four and a partial one).
        let w = random_matrix(ty, 67, 512, &mut rng);
        for n in [1, 4, 5] {
            check_matmul(&gpu, &w, n, &mut rng);
        }
        check_rows(&gpu, &w, &[0, 66, 31]);
    }
}

#[test]
fn every_matrix_of_the_real_models() {
    let gpu = gpu();
    let mut rng = Rng(7);
    for m in TestModel::ALL {
        let gguf = Gguf::open(&m.path()).expect("model opens");
        let mut seen = Vec::new();
        for name in &gguf.tensor_order {
            let info = &gguf.tensors[name];
            if info.dims.len() != 2 {
                continue;
            }
            let w = QMatrix::load(&gguf, name, info.dims[0]).expect("tensor loads");
            // One matrix of each format and shape is enough: the rest are the same code.
            let key = (w.ty(), w.rows(), w.cols());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            check_matmul(&gpu, &w, 2, &mut rng);
            check_rows(&gpu, &w, &[0, (w.rows() - 1) as u32]);
        }
        eprintln!("{}: {} kinds of matrix checked", m.name(), seen.len());
        assert!(
            seen.len() >= 5,
            "{}: only {} matrices",
            m.name(),
            seen.len()
        );
    }
}
