//! Batched decoding: one step serves several sessions, and each session gets exactly the logits
//! it would get decoding alone.

use hearth_shards::sampling::argmax;
use hearth_shards::{KvCache, StageInput};
use hearth_tests::TestModel;

fn check(m: TestModel) {
    let model = m.open(2);
    let stage = model.full_stage().unwrap();
    let vocab = model.spec().vocab;
    let prompts = [
        "The weather today is",
        "My grandmother's recipe for soup",
        "1, 2, 3,",
        "Hello",
    ];
    let prefill = |p: &str| {
        let mut cache = stage.new_cache(64);
        let mut logits = Vec::new();
        let ids = model.tokenizer().encode(p, true, true);
        stage
            .forward(&mut cache, StageInput::Tokens(&ids), &mut logits)
            .unwrap();
        (cache, argmax(&logits))
    };
    // Alone: each session decodes 6 greedy tokens by itself.
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|p| {
            let (mut cache, mut next) = prefill(p);
            (0..6)
                .map(|_| {
                    let mut logits = Vec::new();
                    stage
                        .forward(&mut cache, StageInput::Tokens(&[next]), &mut logits)
                        .unwrap();
                    next = argmax(&logits);
                    logits
                })
                .collect()
        })
        .collect();
    // Together: the same sessions (different prompt lengths) share each step.
    let (mut caches, mut next): (Vec<KvCache>, Vec<u32>) =
        prompts.iter().map(|p| prefill(p)).unzip();
    for step in 0..6 {
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let mut logits = Vec::new();
        stage.decode_batch(&mut refs, &next, &mut logits).unwrap();
        assert_eq!(logits.len(), prompts.len() * vocab);
        for (i, (row, session)) in logits.chunks_exact(vocab).zip(&alone).enumerate() {
            assert!(
                row == session[step].as_slice(),
                "{}: session {i} differs at step {step}",
                m.name()
            );
            next[i] = argmax(row);
        }
    }
}

#[test]
fn smollm2_batched_sessions_equal_separate_ones() {
    check(TestModel::SmolLm2);
}

#[test]
fn gemma3_batched_sessions_equal_separate_ones() {
    check(TestModel::Gemma3);
}

#[test]
fn batched_decoding_refuses_what_it_cannot_do() {
    let model = TestModel::SmolLm2.open(1);
    let stage = model.full_stage().unwrap();
    let mut a = stage.new_cache(2);
    let mut b = stage.new_cache(2);
    let mut logits = Vec::new();
    let err = stage
        .decode_batch(&mut [&mut a, &mut b], &[1], &mut logits)
        .unwrap_err();
    assert!(err.to_string().contains("2 sessions but 1 tokens"), "{err}");
    stage
        .decode_batch(&mut [&mut a, &mut b], &[1, 2], &mut logits)
        .unwrap();
    stage
        .decode_batch(&mut [&mut a, &mut b], &[1, 2], &mut logits)
        .unwrap();
    let err = stage
        .decode_batch(&mut [&mut a, &mut b], &[1, 2], &mut logits)
        .unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    let half = model.stage(0..15).unwrap();
    let mut c = half.new_cache(4);
    assert!(half.decode_batch(&mut [&mut c], &[1], &mut logits).is_err());
}

#[test]
fn generators_on_separate_threads_meet_in_batched_steps_and_decode_as_alone() {
    use hearth_shards::{DecodeBatcher, GenerateParams, Generator, SamplingParams};
    use std::sync::Arc;
    let model = TestModel::SmolLm2.open(2);
    let stage = Arc::new(model.full_stage().unwrap());
    let tok = model.tokenizer().clone();
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 24,
        stop: Vec::new(),
        json: false,
    };
    let prompts = [
        "The river",
        "My favourite book",
        "Bread is made",
        "At night the",
    ];
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, true, false)).collect();
    let alone: Vec<Vec<u32>> = ids
        .iter()
        .map(|p| {
            let mut g = Generator::new(stage.clone(), tok.clone(), 64).unwrap();
            g.generate(p, &params, |_| true).unwrap().tokens
        })
        .collect();
    let batcher = Arc::new(DecodeBatcher::new(stage.clone()));
    let together: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|p| {
                let (batcher, tok, params) = (batcher.clone(), tok.clone(), &params);
                s.spawn(move || {
                    let mut g = Generator::batched(batcher, tok, 64).unwrap();
                    g.generate(p, params, |_| true).unwrap().tokens
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
    let stats = batcher.stats();
    assert_eq!(stats.rows, 4 * 23, "{stats:?}");
    assert!(
        stats.steps < stats.rows,
        "no step served two sessions: {stats:?}"
    );
}
