//! Branches through the API, as any client makes them: an edit resent under the edited
//! message's parent (`hearth.parent`), a regeneration under the question (`hearth.reply_to`),
//! the old branch kept; mistakes in naming messages refused before anything is recorded.

use hearth_tests::history::{chat_in, conversation};
use hearth_tests::mesh::{post, Household, NodeOptions, TestNode};
use hearth_tests::TestModel;
use serde_json::{json, Value};

fn chat(node: &TestNode, messages: Value, hearth: Value) -> (u16, Value) {
    let body = json!({"messages": messages, "max_tokens": 6, "temperature": 0, "hearth": hearth});
    post(node, "/v1/chat/completions", body.to_string())
}

fn parents(c: &Value, role: &str) -> Vec<Value> {
    c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == role)
        .map(|m| m["parent"].clone())
        .collect()
}

#[test]
fn history_branches_from_edits_and_regenerations() {
    let node = TestNode::start(
        "den",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let first = chat_in(&node, "new", "Name a colour.", 6);
    let id = first["hearth"]["conversation"].as_str().unwrap().to_owned();
    let c = conversation(&node, &id).unwrap();
    let question = c["messages"][0]["id"].as_str().unwrap().to_owned();
    let before = c["messages"].as_array().unwrap().len();

    // A regeneration: one new reply, a sibling of the first, and nothing else.
    let (status, body) = chat(
        &node,
        json!([{"role": "user", "content": "Name a colour."}]),
        json!({"conversation": id, "reply_to": question}),
    );
    assert_eq!(status, 200, "{body}");
    let c = conversation(&node, &id).unwrap();
    assert_eq!(c["messages"].as_array().unwrap().len(), before + 1);
    assert_eq!(parents(&c, "assistant"), [json!(question), json!(question)]);

    // An edit of the first message resent: a second first message, with its own reply; the
    // newest branch is the new one, and the old messages are all still there.
    let (status, body) = chat(
        &node,
        json!([{"role": "user", "content": "Name an animal."}]),
        json!({"conversation": id, "parent": "root"}),
    );
    assert_eq!(status, 200, "{body}");
    let c = conversation(&node, &id).unwrap();
    assert_eq!(parents(&c, "user"), [Value::Null, Value::Null]);
    assert_eq!(c["messages"].as_array().unwrap().len(), before + 3);
    let branch: Vec<&str> = c["branch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert_eq!(branch.len(), 2);
    let newest_question = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == branch[0])
        .unwrap();
    assert_eq!(newest_question["text"], "Name an animal.");

    // Mistakes are refused before anything is recorded.
    let unknown = "0123456789abcdef0123456789abcdef";
    for (hearth, want) in [
        (json!({"conversation": "new", "parent": question}), 400),
        (
            json!({"conversation": id, "parent": question, "reply_to": question}),
            400,
        ),
        (json!({"parent": question}), 400),
        (json!({"conversation": id, "parent": "nope"}), 400),
        (json!({"conversation": id, "reply_to": unknown}), 404),
    ] {
        let (status, body) = chat(
            &node,
            json!([{"role": "user", "content": "Hi"}]),
            hearth.clone(),
        );
        assert_eq!(status, want, "{hearth}: {body}");
        assert!(body["error"]["message"].as_str().is_some(), "{body}");
    }
    let c = conversation(&node, &id).unwrap();
    assert_eq!(
        c["messages"].as_array().unwrap().len(),
        before + 3,
        "nothing recorded"
    );
}
