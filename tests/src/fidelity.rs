//! The teacher-forced greedy check against llama.cpp's fixtures, for any placement of a model
//! (CPU: `shards_fidelity`; GPU: `gpu_model`). See `shards_fidelity` for why it is
//! teacher-forced and what the near-tie rule is.

use crate::{PromptCase, TestModel};
use hearth_shards::sampling::argmax;
use hearth_shards::{Model, StageInput};

/// Logit gap under which the reference itself cannot tell two tokens apart: switching llama.cpp's
/// KV cache from f16 to f32 moves top logits by up to 0.4 on these models.
pub const NEAR_TIE: f32 = 0.5;

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

/// How much of the reference a check runs.
#[derive(Debug, Clone, Copy)]
pub struct Extent {
    /// The first this many prompts.
    pub prompts: usize,
    /// The first this many greedy steps of each.
    pub steps: usize,
    /// Percent of all steps that must agree exactly (near-ties or not).
    pub exact_percent: usize,
}

impl Extent {
    /// Every prompt, every step.
    pub const ALL: Extent = Extent {
        prompts: usize::MAX,
        steps: usize::MAX,
        exact_percent: 95,
    };
}

/// Checks `extent` of `m`'s reference on `model` (`m` opened on some device). Returns the
/// summary it printed.
pub fn check(m: TestModel, model: &Model, extent: Extent) -> String {
    let mut reference = m.reference();
    reference.prompts.truncate(extent.prompts);
    for p in &mut reference.prompts {
        p.greedy.truncate(extent.steps);
        p.gaps.truncate(extent.steps);
    }
    let n = reference.prompts.len();
    assert!(n >= 4);
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
        let misses = teacher_forced(model, p);
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
         {full_free}/{n} agree on all their tokens free-running\n{}",
        m.name(),
        reference.reference,
        report.join("\n")
    );
    eprintln!("{summary}");
    assert!(faithful * 10 >= n * 9, "{summary}");
    assert!(
        exact_steps * 100 >= steps * extent.exact_percent,
        "{summary}"
    );
    summary
}
