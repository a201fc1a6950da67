//! A request that no node starts in time (every job slot busy) gets "busy" at the queue
//! deadline: HTTP 503 with Retry-After, instead of waiting blind; a streamed one waiting gets its
//! headers, keep-alive comments, and its reply once a slot frees.

use std::time::Duration;

use hearth_tests::mesh::{http, wait_for, Household, NodeOptions, SseReader, TestNode};
use hearth_tests::TestModel;
use serde_json::json;

/// A node with one job slot (and `args`), and a long streamed reply that has taken it.
fn one_busy_slot(args: &[&str], tokens: u32) -> (TestNode, SseReader) {
    let opts = NodeOptions::holding(TestModel::SmolLm2)
        .with_args(&["--load", "smollm2-135m", "--max-jobs", "1"])
        .with_args(args);
    let node = TestNode::start("one-slot", &Household::new(), opts);
    let long = json!({
        "messages": [{"role": "user", "content": "Count from 1 to 2000, separated by commas."}],
        "max_tokens": tokens, "temperature": 0, "repeat_penalty": 1.0, "stream": true,
    });
    let mut busy = SseReader::open(&node.url("/v1/chat/completions"), &long);
    busy.next_event().expect("the long reply has begun");
    (node, busy)
}

#[test]
fn a_request_waiting_past_the_queue_deadline_gets_busy() {
    let (node, mut busy) = one_busy_slot(&["--queue-timeout", "1"], 400);
    let r = http()
        .post(node.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("within 1 s"), "{message}");
    // The long reply was not disturbed, and the abandoned request never ran.
    let (_, last) = busy.rest();
    let last = last.expect("the long reply went on");
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    let settled = wait_for(Duration::from_secs(10), || {
        (node.metric("hearth_active_jobs") == 0.0).then_some(())
    });
    assert!(settled.is_some());
    assert_eq!(
        node.metric("hearth_jobs_served_total"),
        1.0,
        "{}",
        node.log()
    );
}

#[test]
fn a_streamed_request_waiting_for_a_slot_gets_its_headers_and_keep_alives() {
    let (node, mut busy) = one_busy_slot(&[], 900);
    // Queued behind it: the headers come before the long reply ends.
    let short =
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true});
    let mut waiting = SseReader::open(&node.url("/v1/chat/completions"), &short);
    assert!(
        node.metric("hearth_queue_depth") >= 1.0,
        "the request was not queued, so this proves nothing"
    );
    let (_, last) = busy.rest();
    assert!(last.is_some());
    let (text, last) = waiting.rest();
    assert!(!text.is_empty());
    assert_eq!(last.unwrap()["usage"]["completion_tokens"], 4);
}
