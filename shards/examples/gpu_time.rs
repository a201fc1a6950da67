use std::time::Instant;
use hearth_shards::gpu::{DeviceChoice, Gpu};
use hearth_shards::{Model, StageInput};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let gpu = Gpu::open(DeviceChoice::Gpu(None)).unwrap().unwrap();
    let t = Instant::now();
    let model = Model::open(path.as_ref(), 2).unwrap().on_gpu(gpu, None);
    let stage = model.full_stage().unwrap();
    eprintln!("load {:?}", t.elapsed());
    let mut cache = stage.new_cache(256);
    let mut out = Vec::new();
    let prompt: Vec<u32> = (1..40).collect();
    let t = Instant::now();
    stage.forward(&mut cache, StageInput::Tokens(&prompt), &mut out).unwrap();
    eprintln!("prompt 39 {:?}", t.elapsed());
    for name in ["token_embd.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_down.weight"] {
        let info = &model.gguf().tensors[name];
        let w = hearth_shards::quant::QMatrix::load(model.gguf(), name, info.dims[0]).unwrap();
        let gpu = model.gpu().unwrap();
        let xs: Vec<f32> = (0..w.cols()).map(|i| (i as f32 * 0.37).sin()).collect();
        for reps in [1, 11, 41] {
            let t = Instant::now();
            let _ = reps; hearth_shards::gpu::single::matmul(gpu, &w, &xs).unwrap();
            eprintln!("{w:?} x{reps} {:?}", t.elapsed());
        }
    }
    for _ in 0..3 {
        let t = Instant::now();
        stage.forward(&mut cache, StageInput::Tokens(&[5]), &mut out).unwrap();
        eprintln!("token {:?}", t.elapsed());
    }
}
#[allow(dead_code)]
fn unused() {}
