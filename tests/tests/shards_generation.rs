//! Generation as a user meets it: streaming, reuse of the cached conversation, stop strings,
//! seeds, and clear errors for prompts that do not fit.

use hearth_shards::{ChatMessage, Error, Finish, GenerateParams, Piece, Resume, SamplingParams};
use hearth_tests::TestModel;

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop: Vec::new(),
        json: false,
    }
}

#[test]
fn streamed_pieces_add_up_to_the_reply() {
    let model = TestModel::SmolLm2.open(2);
    let mut g = model.generator(512).unwrap();
    let prompt = model
        .chat_prompt(&[ChatMessage::new("user", "Name three fruits.")])
        .unwrap();
    let mut streamed = String::new();
    let c = g
        .generate(&prompt, &greedy(24), |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
    assert!(!c.text.is_empty());
    assert_eq!(streamed, c.text);
    assert_eq!(c.text, model.tokenizer().decode(&c.tokens));
    assert_eq!(c.prompt_tokens, prompt.len());
}

#[test]
fn a_follow_up_turn_reuses_the_cache_and_changes_nothing() {
    let model = TestModel::SmolLm2.open(2);
    let first = vec![ChatMessage::new("user", "What is 2 + 2?")];
    let mut g = model.generator(1024).unwrap();
    let p1 = model.chat_prompt(&first).unwrap();
    let r1 = g.generate(&p1, &greedy(16), |_| true).unwrap();
    assert_eq!(r1.reused_tokens, 0);
    let mut second = first.clone();
    second.push(ChatMessage::new("assistant", r1.text.clone()));
    second.push(ChatMessage::new("user", "And 3 + 3?"));
    let p2 = model.chat_prompt(&second).unwrap();
    let r2 = g.generate(&p2, &greedy(16), |_| true).unwrap();
    assert!(
        r2.reused_tokens >= p1.len(),
        "reused {} of the {} first-turn tokens",
        r2.reused_tokens,
        p1.len()
    );
    // A fresh generator computing the whole second prompt gives the same reply.
    let mut fresh = model.generator(1024).unwrap();
    let r3 = fresh.generate(&p2, &greedy(16), |_| true).unwrap();
    assert_eq!(r3.reused_tokens, 0);
    assert_eq!(r2.tokens, r3.tokens);
    // Asking the same thing again reuses all but the last prompt token.
    let r4 = fresh.generate(&p2, &greedy(16), |_| true).unwrap();
    assert_eq!(r4.reused_tokens, p2.len() - 1);
    assert_eq!(r4.tokens, r3.tokens);
}

#[test]
fn stop_strings_end_the_reply_before_them() {
    let model = TestModel::Gemma3.open(2);
    let prompt = model
        .tokenizer()
        .encode("Count: 1, 2, 3, 4, 5, 6,", true, true);
    let mut g = model.generator(256).unwrap();
    let free = g.generate(&prompt, &greedy(24), |_| true).unwrap();
    assert!(
        free.text.contains(" 9"),
        "expected the count to go on: {:?}",
        free.text
    );
    let params = GenerateParams {
        stop: vec![" 9".into()],
        json: false,
        ..greedy(24)
    };
    let stopped = g.generate(&prompt, &params, |_| true).unwrap();
    assert_eq!(stopped.finish, Finish::Stop);
    assert!(!stopped.text.contains(" 9"));
    assert!(free.text.starts_with(&stopped.text));
}

#[test]
fn the_same_seed_gives_the_same_reply() {
    let model = TestModel::Gemma3.open(2);
    let prompt = model
        .tokenizer()
        .encode("My favourite animal is", true, true);
    let run = |seed| {
        let params = GenerateParams {
            sampling: SamplingParams {
                temperature: 1.0,
                seed,
                ..Default::default()
            },
            max_tokens: 20,
            stop: vec![],
            json: false,
        };
        model
            .generator(128)
            .unwrap()
            .generate(&prompt, &params, |_| true)
            .unwrap()
            .tokens
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn cancelling_stops_generation() {
    let model = TestModel::SmolLm2.open(2);
    let prompt = model.tokenizer().encode("Once upon a time", true, true);
    let mut pieces = 0;
    let c = model
        .generator(128)
        .unwrap()
        .generate(&prompt, &greedy(50), |_| {
            pieces += 1;
            pieces < 3
        })
        .unwrap();
    assert_eq!(c.finish, Finish::Cancelled);
    assert!(c.tokens.len() < 10);
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_error() {
    let model = TestModel::SmolLm2.open(2);
    let prompt = model
        .tokenizer()
        .encode(&"many words ".repeat(100), true, true);
    let err = model
        .generator(64)
        .unwrap()
        .generate(&prompt, &greedy(4), |_| true)
        .unwrap_err();
    assert!(
        matches!(err, Error::ContextOverflow { context: 64, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("shorten"), "{err}");
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let model = TestModel::Gemma3.open(2);
    let prompt = model.tokenizer().encode("1, 2, 3,", true, true);
    let c = model
        .generator(24)
        .unwrap()
        .generate(&prompt, &greedy(100), |_| true)
        .unwrap();
    assert_eq!(c.finish, Finish::Length);
    assert!(prompt.len() + c.tokens.len() <= 24);
}

#[test]
fn a_reply_resumed_elsewhere_continues_as_if_never_interrupted() {
    let model = TestModel::SmolLm2.open(2);
    let prompt = model
        .chat_prompt(&[ChatMessage::new(
            "user",
            "Write one sentence about café au lait.",
        )])
        .unwrap();
    let mut g = model.generator(512).unwrap();
    let mut pieces: Vec<(Option<u32>, String)> = Vec::new();
    let whole = g
        .resume(&prompt, &Resume::default(), &greedy(24), |p| {
            let id = match p {
                Piece::Token { id, .. } => Some(id),
                Piece::Tail(_) | Piece::Prefill { .. } => None,
            };
            pieces.push((id, p.text().to_owned()));
            true
        })
        .unwrap();
    assert_eq!(
        pieces.iter().map(|p| p.1.as_str()).collect::<String>(),
        whole.text
    );
    for cut in [1, 7, 15] {
        // What the first node had delivered when it went away.
        let before = &pieces[..cut];
        let resume = Resume {
            tokens: before.iter().filter_map(|p| p.0).collect(),
            emitted_bytes: before.iter().map(|p| p.1.len() as u64).sum(),
        };
        let delivered: String = before.iter().map(|p| p.1.as_str()).collect();
        // Another node, with a fresh cache, picks up.
        let mut other = model.generator(512).unwrap();
        let mut rest = String::new();
        let c = other
            .resume(&prompt, &resume, &greedy(24), |p| {
                rest.push_str(p.text());
                true
            })
            .unwrap();
        assert_eq!(delivered + &rest, whole.text, "resumed after {cut} tokens");
        assert_eq!(c.tokens, whole.tokens);
    }
}

#[test]
fn a_models_own_sampling_recommendation_fills_what_a_request_leaves_unset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recommends.gguf");
    let bytes = hearth_tests::GgufWriter::default()
        .string("general.architecture", "llama")
        .f32("general.sampling.temp", 0.6)
        .u32("general.sampling.top_k", 20)
        .f32("general.sampling.min_p", 0.1)
        .bytes();
    std::fs::write(&path, bytes).unwrap();
    let gguf = hearth_shards::Gguf::open(&path).unwrap();
    let recommended = hearth_shards::sampling::recommended(&gguf);
    assert_eq!(recommended.temperature, Some(0.6));
    assert_eq!(recommended.top_k, Some(20));
    assert_eq!(recommended.min_p, Some(0.1));
    assert_eq!(recommended.top_p, None);
    let request = hearth_shards::SamplingOverrides {
        temperature: Some(0.0),
        ..Default::default()
    };
    let p = SamplingParams::resolve(&request.over(&recommended), 1);
    assert_eq!((p.temperature, p.top_k, p.min_p), (0.0, 20, 0.1));
    assert_eq!(p.top_p, SamplingParams::default().top_p);
    // The models at hand recommend nothing: hearth's defaults apply.
    let smol = TestModel::SmolLm2.open(1);
    assert_eq!(
        smol.sampling(&Default::default(), 1).unwrap(),
        SamplingParams::resolve(&Default::default(), 1)
    );
}

#[test]
fn a_prompt_run_in_chunks_gives_the_reply_it_gives_in_one_pass() {
    for m in [TestModel::SmolLm2, TestModel::Gemma3] {
        let model = m.open(2);
        let text = "The kitchen light flickers when the kettle is on. ".repeat(12);
        let prompt = model.encode_text(&text, true);
        assert!(prompt.len() > 100, "{}", prompt.len());
        let mut whole = model.generator(512).unwrap();
        whole.set_prefill_chunk(usize::MAX);
        let one_pass = whole.generate(&prompt, &greedy(16), |_| true).unwrap();
        let mut chunked = model.generator(512).unwrap();
        chunked.set_prefill_chunk(7);
        let mut progress = Vec::new();
        let c = chunked
            .resume(&prompt, &Resume::default(), &greedy(16), |p| {
                if let Piece::Prefill { done, total } = p {
                    progress.push((done, total));
                }
                true
            })
            .unwrap();
        assert_eq!(c.tokens, one_pass.tokens, "{}", m.name());
        assert_eq!(progress.len(), prompt.len().div_ceil(7) - 1);
        assert_eq!(progress[0], (7, prompt.len()));
        // Stopped between two chunks: nothing generated, and the reply says so.
        let mut stopped = model.generator(512).unwrap();
        stopped.set_prefill_chunk(7);
        let c = stopped
            .resume(
                &prompt,
                &Resume::default(),
                &greedy(16),
                |p| !matches!(p, Piece::Prefill { done, .. } if done >= 21),
            )
            .unwrap();
        assert_eq!(c.finish, Finish::Cancelled);
        assert!(c.tokens.is_empty());
    }
}
