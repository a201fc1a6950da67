//! Three nodes on loopback, one holding the model: requests sent anywhere are served by the
//! holder, and the route, the models list, the peers table and the CLI say so.

use std::time::Duration;

use hearth_tests::mesh::{chunk_text, http, Household, NodeOptions, SseReader, TestNode};
use hearth_tests::TestModel;
use serde_json::{json, Value};

fn three_nodes() -> (TestNode, TestNode, TestNode) {
    let household = Household::new();
    let holder = TestNode::start(
        "holder",
        &household,
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let b = TestNode::start("bare-b", &household, NodeOptions::dialing(&[&holder]));
    let c = TestNode::start("bare-c", &household, NodeOptions::dialing(&[&holder]));
    // b and c each dial only the holder: the holder sees everyone, b and c see the holder.
    let all = ["holder", "bare-b", "bare-c"];
    assert!(
        holder.wait_for_members(&all, Duration::from_secs(20)),
        "holder sees {:?}",
        holder.member_names()
    );
    assert!(
        b.wait_for_members(&["holder", "bare-b"], Duration::from_secs(20)),
        "{}",
        b.log()
    );
    assert!(
        c.wait_for_members(&["holder", "bare-c"], Duration::from_secs(20)),
        "{}",
        c.log()
    );
    (holder, b, c)
}

#[test]
fn a_chat_sent_to_a_node_without_the_model_is_served_by_the_holder() {
    let (holder, _b, c) = three_nodes();
    let body = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Name three fruits."}],
        "max_tokens": 12,
        "temperature": 0,
    });
    let r = http()
        .post(c.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-hearth-node"], "holder");
    let v: serde_json::Value = r.json().unwrap();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 5);

    // The same request on the holder itself gives the same greedy reply.
    let local: serde_json::Value = http()
        .post(holder.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(local["choices"][0]["message"]["content"], text);

    // Streaming from the bare node: chunks, then usage, then [DONE].
    let mut stream = SseReader::open(
        &c.url("/v1/chat/completions"),
        &json!({
            "messages": [{"role": "user", "content": "Name three fruits."}],
            "max_tokens": 12, "temperature": 0, "stream": true,
        }),
    );
    assert_eq!(stream.headers["x-hearth-node"], "holder");
    let mut streamed = String::new();
    let mut last = None;
    while let Some(ev) = stream.next_event() {
        streamed.push_str(chunk_text(&ev));
        last = Some(ev);
    }
    let last = last.unwrap();
    assert_eq!(streamed, text);
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 12);

    // Raw completions too.
    let v: serde_json::Value = http()
        .post(c.url("/v1/completions"))
        .json(&json!({"model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty());
}

#[test]
fn route_models_and_peers_explain_where_things_are() {
    let (holder, _b, c) = three_nodes();
    let route = c.get("/api/route?model=smollm2-135m");
    assert_eq!(route["ranked"][0]["node"], "holder", "{route}");
    let reasons = route["ranked"][0]["reasons"].to_string();
    assert!(
        reasons.contains("model cached") || reasons.contains("model loaded"),
        "{reasons}"
    );
    let rejected = route["rejected"].as_array().unwrap();
    assert!(rejected
        .iter()
        .any(|r| r["node"] == "bare-c" && r["reason"] == "does not have the model"));

    let models = c.get("/v1/models");
    let m = &models["data"][0];
    assert_eq!(m["id"], "smollm2-135m");
    assert_eq!(m["hearth"]["nodes"], json!(["holder"]));

    // Cards carry what routing needs.
    let peers = holder.get("/api/peers");
    let me = &peers[0];
    assert_eq!(me["this_node"], true);
    let card = &me["card"];
    assert_eq!(card["models"][0]["name"], "smollm2-135m");
    assert_eq!(card["models"][0]["layers"], 30);
    assert!(card["devices"][0]["cores"].as_u64().unwrap() >= 1);
    assert!(card["devices"][0]["free_memory"].as_u64().unwrap() > 0);

    // A pin to a node without the model is refused with the reason; an unknown node is a 400.
    let pinned = http()
        .post(c.url("/v1/chat/completions"))
        .json(
            &json!({"messages": [{"role": "user", "content": "hi"}], "hearth": {"node": "bare-c"}}),
        )
        .send()
        .unwrap();
    assert_eq!(pinned.status(), 503);
    let err: serde_json::Value = pinned.json().unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not have the model"),
        "{err}"
    );
    let unknown = http()
        .post(c.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}], "hearth": {"node": "nowhere"}}))
        .send()
        .unwrap();
    assert_eq!(unknown.status(), 400);

    // The CLI: `hearth peers` lists the nodes, `hearth run` goes through the running node.
    let out = c.cli(&["peers"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("holder") && table.contains("bare-c") && table.contains("smollm2-135m"),
        "{table}"
    );
    let out = c.cli(&[
        "run",
        "-p",
        "Say hi",
        "-n",
        "6",
        "--temperature",
        "0",
        "--stats",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("served by holder"));
    let out = c.cli(&["run", "-p", "Say hi", "--node", "bare-b"]);
    assert!(!out.status.success());
}

#[test]
fn a_follow_up_turn_reuses_the_conversation_cached_on_the_serving_node() {
    let (_holder, _b, c) = three_nodes();
    let ask = |messages: &Value| -> Value {
        http()
            .post(c.url("/v1/chat/completions"))
            .json(&json!({"messages": messages, "max_tokens": 12, "temperature": 0}))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let mut messages = json!([{"role": "user", "content": "What is 2 + 2?"}]);
    let first = ask(&messages);
    let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let answer = first["choices"][0]["message"]["content"].clone();
    let list = messages.as_array_mut().unwrap();
    list.push(json!({"role": "assistant", "content": answer}));
    list.push(json!({"role": "user", "content": "And 3 + 3?"}));
    let second = ask(&messages);
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= first_prompt,
        "the second turn recomputed its history: {cached} of {first_prompt} first-turn tokens cached"
    );
}
