//! The history API as tests use it: conversations, their messages, and chats recorded in them.

use std::time::Duration;

use serde_json::{json, Value};

use crate::mesh::{http, wait_for, TestNode};

/// Every conversation the node lists, newest first.
pub fn conversations(node: &TestNode) -> Vec<Value> {
    node.get("/api/conversations")["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Conversation `id` with its messages, or `None` when the node does not have it.
pub fn conversation(node: &TestNode, id: &str) -> Option<Value> {
    let r = http()
        .get(node.url(&format!("/api/conversations/{id}")))
        .send()
        .ok()?;
    r.status().is_success().then(|| r.json().ok()).flatten()
}

/// (role, text, status) of each message, in the stored order.
pub fn messages(c: &Value) -> Vec<(String, String, String)> {
    c["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["text"].as_str().unwrap_or_default().to_owned(),
                m["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A greedy chat of `max_tokens` sent to `node`, recorded in `conversation` (an id or "new");
/// returns the response body.
pub fn chat_in(node: &TestNode, conversation: &str, text: &str, max_tokens: u32) -> Value {
    let r = http()
        .post(node.url("/v1/chat/completions"))
        .json(&json!({
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "hearth": {"conversation": conversation},
        }))
        .send()
        .expect("chat request");
    assert_eq!(r.status(), 200, "{}", node.log());
    r.json().expect("chat response is JSON")
}

/// Waits (bounded) until `node` holds conversation `id` exactly as `want` (title and messages).
pub fn wait_for_copy(node: &TestNode, id: &str, want: &Value, limit: Duration) -> bool {
    wait_for(limit, || {
        let got = conversation(node, id)?;
        (got["title"] == want["title"] && messages(&got) == messages(want)).then_some(())
    })
    .is_some()
}
