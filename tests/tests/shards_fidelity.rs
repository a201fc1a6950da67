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

use hearth_tests::{fidelity, TestModel};

#[test]
fn smollm2_greedy_agrees_with_llama_cpp() {
    fidelity::check(
        TestModel::SmolLm2,
        &TestModel::SmolLm2.open(2),
        fidelity::Extent::ALL,
    );
}

#[test]
fn gemma3_greedy_agrees_with_llama_cpp() {
    fidelity::check(
        TestModel::Gemma3,
        &TestModel::Gemma3.open(2),
        fidelity::Extent::ALL,
    );
}
