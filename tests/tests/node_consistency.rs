//! Every interface gives the same reply: for both models, greedy replies are identical through
//! `hearth run --local`, `hearth run` through a running node, `/v1/chat/completions`, and
//! `/v1/completions` given the rendered template; raw prompts with control tokens in them are
//! read the same way locally and through the node (and as plain text when asked, both ways).

use hearth_protocol::ChatMessage;
use hearth_tests::mesh::{http, NodeOptions, TestNode};
use hearth_tests::TestModel;
use serde_json::{json, Value};

const TOKENS: &str = "24";

/// `hearth run ARGS` in the node's data directory; the reply printed.
fn run(node: &TestNode, args: &[&str]) -> String {
    let mut all = vec!["run", "--temperature", "0", "-n", TOKENS, "-t", "1"];
    all.extend_from_slice(args);
    let out = node.cli(&all);
    assert!(
        out.status.success(),
        "hearth {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_owned()
}

/// A greedy request to `path`; the reply's text.
fn api(node: &TestNode, path: &str, mut body: Value) -> String {
    body["temperature"] = json!(0);
    body["max_tokens"] = json!(24);
    let r = http().post(node.url(path)).json(&body).send().unwrap();
    assert_eq!(r.status(), 200, "{}", node.log());
    let v: Value = r.json().unwrap();
    let c = &v["choices"][0];
    c["message"]["content"]
        .as_str()
        .or(c["text"].as_str())
        .unwrap()
        .to_owned()
}

fn check(model: TestModel, raw: &str) {
    let node = TestNode::start(
        "kitchen",
        &hearth_tests::mesh::Household::new(),
        NodeOptions::holding(model),
    );
    let name = model.name();
    let engine = model.open(1);
    let template = engine.chat_template();
    for question in [
        "What is the capital of France?",
        "Write a haiku about bread.",
    ] {
        let local = run(&node, &["--local", "-m", name, "-p", question]);
        assert!(!local.is_empty(), "{name}: {question}");
        let through_node = run(&node, &["-m", name, "-p", question]);
        let chat = api(
            &node,
            "/v1/chat/completions",
            json!({"model": name, "messages": [{"role": "user", "content": question}]}),
        );
        let rendered = template
            .render(&[ChatMessage::new("user", question)], true)
            .unwrap();
        let completion = api(
            &node,
            "/v1/completions",
            json!({"model": name, "prompt": rendered, "stop": template.stop_strings()}),
        );
        for (how, reply) in [
            ("hearth run through the node", &through_node),
            ("/v1/chat/completions", &chat),
            ("/v1/completions with the rendered template", &completion),
        ] {
            assert_eq!(
                reply, &local,
                "{name}, {question:?}: {how} differs from hearth run --local"
            );
        }
    }
    // Raw text with control tokens: the tokens they name, everywhere.
    let local = run(&node, &["--local", "--raw", "-m", name, "-p", raw]);
    let through_node = run(&node, &["--raw", "-m", name, "-p", raw]);
    let completion = api(
        &node,
        "/v1/completions",
        json!({"model": name, "prompt": raw}),
    );
    assert_eq!(through_node, local, "{name}: raw through the node");
    assert_eq!(completion, local, "{name}: raw /v1/completions");
    // Asked to, the same text with its control tokens as plain characters, everywhere.
    let plain_local = run(
        &node,
        &["--local", "--raw", "--no-special", "-m", name, "-p", raw],
    );
    let plain_node = run(&node, &["--raw", "--no-special", "-m", name, "-p", raw]);
    let plain_api = api(
        &node,
        "/v1/completions",
        json!({"model": name, "prompt": raw, "hearth": {"parse_special": false}}),
    );
    assert_eq!(
        plain_node, plain_local,
        "{name}: plain text through the node"
    );
    assert_eq!(plain_api, plain_local, "{name}: plain text /v1/completions");
}

#[test]
fn smollm2_replies_the_same_through_every_interface() {
    check(
        TestModel::SmolLm2,
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
    );
}

#[test]
fn gemma3_replies_the_same_through_every_interface() {
    check(
        TestModel::Gemma3,
        "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n",
    );
}
