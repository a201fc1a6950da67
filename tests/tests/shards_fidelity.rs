//! Greedy decoding agrees with llama.cpp on the same GGUF files (fixtures written by
//! scripts/make-reference-fixtures).
//!
//! These small quantized models meet near-ties often: every 32-token greedy path in the fixtures
//! has a step where llama.cpp's own best and second-best logits are within 0.4 of each other, and
//! there the rounding of any two correct implementations decides the token. llama.cpp disagrees with
//! itself there: run with 1 thread and batch 1 against its own fixtures (2 threads, batch 512), it
//! reproduces all 32 tokens for only 7/24 SmolLM2 and 16/24 Gemma 3 prompts (747/768 and 756/768
//! steps). So the check is teacher-forced: the reference tokens are fed in, and at every one of the
//! 32 steps our choice must equal llama.cpp's unless llama.cpp's own margin there is under
//! `NEAR_TIE`; and 95% of all steps must agree exactly. Free-running agreement is printed.
//!
//! Measured with the eight-row packed kernels (`shards/src/packed.rs`, which sum each block in
//! integers before scaling, where llama.cpp's one-row kernels scale partial sums): 24/24 prompts
//! pass for both models; 742/768 (SmolLM2) and 739/768 (Gemma 3) steps agree exactly;
//! free-running, 8/24 and 11/24 prompts agree on all 32. (With kernels in llama.cpp's order: 742
//! and 754 steps, 8/24 and 16/24.)

use hearth_shards::sampling::argmax;
use hearth_shards::{Model, StageInput};
use hearth_tests::{PromptCase, TestModel};

/// Logit gap under which the reference itself cannot tell two tokens apart: switching llama.cpp's
/// KV cache from f16 to f32 moves top logits by up to 0.4 on these models.
const NEAR_TIE: f32 = 0.5;

/// Steps where our greedy choice differs from the reference token, with the reference's margin.
fn teacher_forced(model: &Model, p: &PromptCase) -> Vec<(usize, f32)> {
    let stage = model.full_stage().unwrap();
    let mut cache = stage.new_cache(p.ids.len() + p.greedy.len() + 1);
    let mut logits = Vec::new();
    stage
        .forward(&mut cache, StageInput::Tokens(&p.ids), &mut logits)
        .unwrap();
    let mut misses = Vec::new();
    for (step, &want) in p.greedy.iter().enumerate() {
        if argmax(&logits) != want {
            misses.push((step, p.gaps[step]));
        }
        stage
            .forward(&mut cache, StageInput::Tokens(&[want]), &mut logits)
            .unwrap();
    }
    misses
}

fn check(m: TestModel) {
    let model = m.open(2);
    let reference = m.reference();
    let n = reference.prompts.len();
    assert!(n >= 10);
    let (mut faithful, mut exact_steps, mut steps, mut full_free) = (0, 0, 0, 0);
    let mut report = Vec::new();
    for p in &reference.prompts {
        // The prompt must reach the model as the same ids llama.cpp saw.
        let ids = if p.messages.is_empty() {
            model.tokenizer().encode(&p.text, true, true)
        } else {
            let text = model.chat_template().render(&p.messages, true).unwrap();
            assert_eq!(
                text, p.text,
                "chat template renders differently from transformers' rules"
            );
            model.chat_prompt(&p.messages).unwrap()
        };
        assert_eq!(ids, p.ids, "prompt {:?} tokenizes differently", p.text);
        let misses = teacher_forced(&model, p);
        steps += p.greedy.len();
        exact_steps += p.greedy.len() - misses.len();
        if misses.iter().all(|&(_, gap)| gap < NEAR_TIE) {
            faithful += 1;
        }
        // Free-running generation follows the reference until the first miss.
        let free = misses.first().map_or(p.greedy.len(), |&(step, _)| step);
        if free == p.greedy.len() {
            full_free += 1;
        }
        let tail: String = p
            .text
            .chars()
            .rev()
            .take(36)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        report.push(format!(
            "free-running {free:>2}/{} misses (step, llama.cpp margin) {misses:?} {tail:?}",
            p.greedy.len()
        ));
    }
    let summary = format!(
        "{} vs {}: {faithful}/{n} prompts agree at every step that is not a near-tie; {exact_steps}/{steps} steps agree exactly; \
         {full_free}/{n} agree on all 32 tokens free-running\n{}",
        m.name(),
        reference.reference,
        report.join("\n")
    );
    eprintln!("{summary}");
    assert!(faithful * 10 >= n * 9, "{summary}");
    assert!(exact_steps * 100 >= steps * 95, "{summary}");
}

#[test]
fn smollm2_greedy_agrees_with_llama_cpp() {
    check(TestModel::SmolLm2);
}

#[test]
fn gemma3_greedy_agrees_with_llama_cpp() {
    check(TestModel::Gemma3);
}
