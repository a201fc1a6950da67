//! A model split into 2 or 3 layer-range stages, run one after another, gives exactly the logits
//! of the whole model as one stage — for the prompt and for every decoded token after it.

use hearth_shards::{Error, Generator, Stage, StageInput, StageOutput};
use hearth_tests::TestModel;

/// Runs the prompt then `steps` greedy decode steps through `stages`; returns every logits row.
fn run(stages: &[Stage], prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut caches: Vec<_> = stages.iter().map(|s| s.new_cache(64)).collect();
    let mut all = Vec::new();
    let mut input: Vec<u32> = prompt.to_vec();
    for _ in 0..=steps {
        let mut hidden = Vec::new();
        let mut out = Vec::new();
        for (i, (stage, cache)) in stages.iter().zip(&mut caches).enumerate() {
            let inp = if i == 0 {
                StageInput::Tokens(&input)
            } else {
                StageInput::Hidden(&hidden)
            };
            let kind = stage.forward(cache, inp, &mut out).unwrap();
            assert_eq!(kind == StageOutput::Logits, i == stages.len() - 1);
            hidden = out.clone();
        }
        let next = hearth_shards::sampling::argmax(&out);
        all.push(out);
        input = vec![next];
    }
    all
}

fn check(m: TestModel, cuts: &[usize]) {
    let model = m.open(2);
    let n = model.spec().n_layers();
    let prompt =
        model
            .tokenizer()
            .encode("The kitchen light is on and the oven is warm.", true, true);
    let whole = run(&[model.full_stage().unwrap()], &prompt, 4);
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(n);
    let stages: Vec<Stage> = bounds
        .windows(2)
        .map(|w| model.stage(w[0]..w[1]).unwrap())
        .collect();
    let split = run(&stages, &prompt, 4);
    assert_eq!(whole.len(), split.len());
    for (step, (a, b)) in whole.iter().zip(&split).enumerate() {
        assert_eq!(a.len(), model.spec().vocab);
        assert!(
            a == b,
            "{} split at {cuts:?}: logits differ at step {step}",
            m.name()
        );
    }
}

#[test]
fn smollm2_two_and_three_stages_equal_the_whole_model() {
    check(TestModel::SmolLm2, &[15]);
    check(TestModel::SmolLm2, &[7, 19]);
}

#[test]
fn gemma3_two_and_three_stages_equal_the_whole_model() {
    check(TestModel::Gemma3, &[9]);
    check(TestModel::Gemma3, &[5, 6]);
}

#[test]
fn stages_refuse_input_they_cannot_take() {
    let model = TestModel::SmolLm2.open(1);
    let first = model.stage(0..10).unwrap();
    let middle = model.stage(10..20).unwrap();
    let mut out = Vec::new();
    let mut cache = middle.new_cache(16);
    let err = middle
        .forward(&mut cache, StageInput::Tokens(&[1, 2]), &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("hidden states"), "{err}");
    let err = middle
        .forward(&mut cache, StageInput::Hidden(&[0.0; 7]), &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("rows"), "{err}");
    let mut cache = first.new_cache(16);
    let err = first
        .forward(&mut cache, StageInput::Tokens(&[u32::MAX]), &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    assert!(model.stage(20..40).is_err());
    assert!(model.stage(5..5).is_err());
    // A first stage holds only its layers' tensors: the rest of the file is never read.
    assert!(first.is_first() && !first.is_last() && middle.layers() == (10..20));
}

#[test]
fn a_generator_over_part_of_a_model_is_an_error_not_a_panic() {
    let model = TestModel::SmolLm2.open(1);
    let n = model.spec().n_layers();
    for range in [0..n / 2, n / 2..n] {
        let stage = std::sync::Arc::new(model.stage(range.clone()).unwrap());
        match Generator::new(stage, model.tokenizer().clone(), 64) {
            Err(Error::BadStageInput(message)) => {
                assert!(message.contains("whole model"), "{message}")
            }
            other => panic!("layers {range:?}: {:?}", other.map(|_| ())),
        }
    }
}
