//! The GGUF tokenizers give exactly llama.cpp's token ids on tricky texts, and decode back.

use hearth_tests::TestModel;

#[test]
fn token_ids_match_llama_cpp_on_tricky_texts() {
    for m in TestModel::ALL {
        let model = m.open(1);
        let tok = model.tokenizer();
        let reference = m.reference();
        assert!(reference.tokenizer.len() >= 15);
        let mut failures = Vec::new();
        for case in &reference.tokenizer {
            let ids = tok.encode(&case.text, false, true);
            if ids != case.ids {
                failures.push(format!(
                    "{:?}\n  hearth:    {ids:?}\n  llama.cpp: {:?}",
                    case.text, case.ids
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{}: {} of {} texts differ:\n{}",
            m.name(),
            failures.len(),
            reference.tokenizer.len(),
            failures.join("\n")
        );
    }
}

#[test]
fn decoding_gives_back_the_text() {
    for m in TestModel::ALL {
        let model = m.open(1);
        let tok = model.tokenizer();
        for case in m
            .reference()
            .tokenizer
            .iter()
            .filter(|c| !c.text.contains('<'))
        {
            assert_eq!(tok.decode(&case.ids), case.text, "{}", m.name());
        }
    }
}

#[test]
fn special_tokens_are_plain_text_unless_parsed() {
    let model = TestModel::SmolLm2.open(1);
    let tok = model.tokenizer();
    let im_start = tok
        .token_id("<|im_start|>")
        .expect("SmolLM2 has <|im_start|>");
    assert_eq!(tok.encode("<|im_start|>", false, true), vec![im_start]);
    let plain = tok.encode("<|im_start|>", false, false);
    assert!(plain.len() > 1 && !plain.contains(&im_start), "{plain:?}");
}

#[test]
fn gemma_adds_bos_and_smollm_does_not() {
    let gemma = TestModel::Gemma3.open(1);
    let ids = gemma.tokenizer().encode("Hi", true, true);
    assert_eq!(Some(ids[0]), gemma.tokenizer().bos());
    let smol = TestModel::SmolLm2.open(1);
    let ids = smol.tokenizer().encode("Hi", true, true);
    assert_ne!(Some(ids[0]), smol.tokenizer().bos());
}
