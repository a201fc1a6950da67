//! A split reply whose middle stage is SIGKILLed (or shut down) mid-reply: the reply is
//! re-planned without it, replayed through the new pipeline and completes identical to the
//! uninterrupted reply; when no plan is left, the client gets an error event and a clean close.

use std::time::Duration;

use hearth_tests::mesh::{chunk_text, wait_for, Household, NodeOptions, SseReader, TestNode};
use hearth_tests::TestModel;
use serde_json::{json, Value};

/// No two of these nodes hold SmolLM2 at this context, so every plan has at least 3 stages.
const CAP: &str = "60MB";

/// A long, deterministic reply (greedy, no repeat penalty), through the stages named, if any.
fn request(stages: Option<&[&str]>) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "Count from 1 to 100, separated by commas."}],
        "max_tokens": 120, "temperature": 0, "repeat_penalty": 1.0, "stream": true,
    });
    if let Some(s) = stages {
        body["hearth"] = json!({ "stages": s });
    }
    body
}

/// Reads `events` events of the stream (at least), returning their text.
fn read(stream: &mut SseReader, events: usize) -> String {
    let mut text = String::new();
    for _ in 0..events {
        let ev = stream.next_event().expect("the reply goes on");
        assert!(ev.get("error").is_none(), "{ev}");
        text.push_str(chunk_text(&ev));
    }
    text
}

/// Four capped nodes, a to d, all connected.
fn four_nodes() -> Vec<TestNode> {
    let household = Household::new();
    let mut nodes: Vec<TestNode> = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let opts = NodeOptions {
            peers: nodes.iter().map(|n| n.listen.clone()).collect(),
            ..NodeOptions::holding(TestModel::SmolLm2)
        };
        nodes.push(TestNode::start(
            name,
            &household,
            opts.with_args(&["--max-memory", CAP, "--ctx", "512"]),
        ));
    }
    for n in &nodes {
        assert!(
            n.wait_for_members(&["a", "b", "c", "d"], Duration::from_secs(30)),
            "{}",
            n.log()
        );
    }
    nodes
}

#[test]
fn a_stage_shutting_down_mid_reply_is_replanned_around() {
    let mut nodes = four_nodes();
    let url = nodes[0].url("/v1/chat/completions");
    let pinned = request(Some(&["a", "b", "c"]));
    let (expected, _) = SseReader::open(&url, &pinned).rest();
    let mut stream = SseReader::open(&url, &pinned);
    let mut text = read(&mut stream, 8);
    // SIGTERM: the middle stage drains, ending its session with an error naming itself.
    let status = nodes[1].terminate().expect("the node exits");
    assert!(status.success(), "{status:?}");
    let (rest, last) = stream.rest();
    text.push_str(&rest);
    assert_eq!(
        last.expect("the reply went on")["usage"]["completion_tokens"],
        120
    );
    assert_eq!(text, expected, "the re-planned reply differs");
    let log = nodes[0].log();
    assert!(
        log.contains("re-planning without it") && log.contains("shutting down"),
        "{log}"
    );
}

#[test]
fn a_stage_killed_mid_reply_is_replanned_around_and_the_reply_is_unbroken() {
    let mut nodes = four_nodes();
    let entry = &nodes[0];
    let url = entry.url("/v1/chat/completions");

    // The uninterrupted reply, through a, b, c.
    let pinned = request(Some(&["a", "b", "c"]));
    let (expected, _) = SseReader::open(&url, &pinned).rest();
    assert!(expected.contains("10, 11"), "{expected}");

    // The same reply, with the middle stage killed after a few tokens.
    let mut stream = SseReader::open(&url, &pinned);
    let mut text = read(&mut stream, 8);
    nodes[1].kill();
    let (rest, last) = stream.rest();
    text.push_str(&rest);
    let last = last.expect("events after the kill");
    assert_eq!(last["usage"]["completion_tokens"], 120, "{last}");
    assert_eq!(text, expected, "the re-planned reply differs");
    let entry = &nodes[0];
    assert_eq!(
        entry.metric("hearth_split_replans_total"),
        1.0,
        "{}",
        entry.log()
    );
    assert!(
        entry.log().contains("re-planning without it"),
        "{}",
        entry.log()
    );

    // Three nodes left, and one more goes mid-reply: no plan is left, so an error event.
    // A longer reply, so that it is still running when its stage goes.
    let mut long = request(None);
    long["max_tokens"] = json!(400);
    let mut stream = SseReader::open(&url, &long);
    read(&mut stream, 8);
    // Cards catch up with the kill and the new sessions within a poll or two.
    let route = wait_for(Duration::from_secs(20), || {
        let route = entry.get("/api/route?model=smollm2-135m");
        (route["split"]["status"] == "planned").then_some(route)
    })
    .unwrap_or_else(|| panic!("{}", entry.get("/api/route?model=smollm2-135m")));
    let stages: Vec<String> = route["split"]["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("{route}"))
        .iter()
        .map(|s| s["node"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stages.len(), 3, "{route}");
    let victim = nodes
        .iter_mut()
        .find(|n| n.name != "a" && stages.contains(&n.name))
        .unwrap();
    victim.kill();
    let mut events = Vec::new();
    while let Some(ev) = stream.next_event() {
        events.push(ev);
    }
    let error = events.last().expect("an event after the kill");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no node could serve")),
        "{error}"
    );
    // The node itself carries on.
    assert_eq!(nodes[0].get("/healthz")["status"], "ok");
}
