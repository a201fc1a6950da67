//! `hearth bench`: prompt processing (one forward pass over `-p` tokens) and generation (`-n`
//! tokens decoded one at a time) in tokens/s, mean ± sd over repetitions, like llama-bench.

use std::time::Instant;

use anyhow::{Context, Result};
use hearth_shards::gpu::DeviceChoice;
use hearth_shards::{default_threads, Stage, StageInput};

use crate::devices::Compute;

use crate::cli::BenchArgs;
use crate::models::ModelCache;

pub(super) fn bench(cache: &ModelCache, args: BenchArgs) -> Result<()> {
    let choice: DeviceChoice = args
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let resolved = cache.resolve(&args.model)?;
    let size = std::fs::metadata(&resolved.path)?.len();
    let threads = if args.threads.is_empty() {
        vec![default_threads() as u32]
    } else {
        args.threads.clone()
    };
    if !args.json {
        println!("| model | size | threads | test | t/s |");
        println!("| --- | ---: | ---: | ---: | ---: |");
    }
    let mut label = String::new();
    for &t in &threads {
        let compute = Compute::open(choice, None, t as usize)?;
        let model = compute
            .open_model(&resolved.path)
            .with_context(|| format!("cannot load {}", resolved.path.display()))?;
        let stage = model.full_stage()?;
        let device = match stage.gpu() {
            Some((info, _)) => format!("{info}"),
            None => "cpu".to_owned(),
        };
        if !args.json && t == threads[0] {
            eprintln!("running on {device}");
        }
        label = resolved
            .entry
            .as_ref()
            .map_or_else(|| resolved.path.display().to_string(), |e| e.name.clone());
        let quant = hearth_shards::ModelSummary::of(model.gguf())?.quantization;
        let sessions = args.sessions as usize;
        let batched = if sessions > 1 { args.n_gen } else { 0 };
        let tests = [
            ("pp", args.n_prompt, 1),
            ("tg", args.n_gen, 1),
            ("tg", batched, sessions),
        ];
        for (kind, n, sessions) in tests.into_iter().filter(|(_, n, _)| *n > 0) {
            let name = if sessions > 1 {
                format!("{kind}{n}x{sessions}")
            } else {
                format!("{kind}{n}")
            };
            let rates = (0..=args.repetitions)
                .map(|_| {
                    if sessions > 1 {
                        run_batched(&stage, n, sessions)
                    } else {
                        run_once(&stage, kind, n)
                    }
                })
                .collect::<Result<Vec<f64>>>()?
                .split_off(1); // the first run warms caches and page-ins
            let (mean, sd) = mean_sd(&rates);
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"model": label, "quantization": quant, "size": size, "threads": t, "device": device, "test": name, "tokens_per_s": mean, "sd": sd, "samples": rates})
                );
            } else {
                println!(
                    "| {label} {quant} | {:.1} MB | {t} | {name} | {mean:.2} ± {sd:.2} |",
                    size as f64 / 1e6
                );
            }
        }
    }
    let peak = peak_rss_bytes();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"model": label, "peak_rss_bytes": peak, "file_bytes": size})
        );
    } else if let Some(peak) = peak {
        println!(
            "\npeak RSS {:.1} MB (model file {:.1} MB)",
            peak as f64 / 1e6,
            size as f64 / 1e6
        );
    }
    Ok(())
}

fn run_once(stage: &Stage, kind: &str, n: usize) -> Result<f64> {
    let vocab = stage.spec().vocab as u64;
    let mut cache = stage.new_cache(n + 1);
    let mut out = Vec::new();
    // Deterministic pseudo-random tokens, as llama-bench feeds random tokens.
    let token = |i: usize| ((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % vocab;
    let start = Instant::now();
    if kind == "pp" {
        let tokens: Vec<u32> = (0..n).map(|i| token(i) as u32).collect();
        stage.forward(&mut cache, StageInput::Tokens(&tokens), &mut out)?;
    } else {
        for i in 0..n {
            stage.forward(&mut cache, StageInput::Tokens(&[token(i) as u32]), &mut out)?;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `sessions` sessions decode `n` tokens each, sharing every step; returns aggregate tokens/s.
fn run_batched(stage: &Stage, n: usize, sessions: usize) -> Result<f64> {
    let vocab = stage.spec().vocab as u64;
    let mut caches: Vec<_> = (0..sessions).map(|_| stage.new_cache(n + 1)).collect();
    let mut out = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let tokens: Vec<u32> = (0..sessions)
            .map(|s| {
                (((i * sessions + s) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as u32
                    % vocab as u32
            })
            .collect();
        let mut refs: Vec<_> = caches.iter_mut().collect();
        stage.decode_batch(&mut refs, &tokens, &mut out)?;
    }
    Ok((n * sessions) as f64 / start.elapsed().as_secs_f64())
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Peak resident set size of this process (VmHWM), where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
