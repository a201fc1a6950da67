//! Remote jobs under stress: the serving node killed mid-reply (the reply completes elsewhere),
//! a client that goes away (the peer stops generating), and a full queue (a clear "busy").

use std::time::Duration;

use hearth_tests::mesh::{
    chunk_text, holder_and_entry, http, wait_for, Household, NodeOptions, SseReader, TestNode,
};
use hearth_tests::TestModel;
use serde_json::{json, Value};

/// A long, deterministic reply: greedy, and without the default repeat penalty, which would end
/// a count early.
const PROMPT: &str = "Count from 1 to 100, separated by commas.";

fn holders_and_entry() -> (TestNode, TestNode, TestNode) {
    let household = Household::new();
    let a = TestNode::start(
        "holder-a",
        &household,
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let b = TestNode::start(
        "holder-b",
        &household,
        NodeOptions {
            peers: vec![a.listen.clone()],
            ..NodeOptions::holding(TestModel::SmolLm2)
        },
    );
    let entry = TestNode::start("entry", &household, NodeOptions::dialing(&[&a, &b]));
    assert!(
        entry.wait_for_members(&["entry", "holder-a", "holder-b"], Duration::from_secs(20)),
        "{}",
        entry.log()
    );
    (a, b, entry)
}

#[test]
fn killing_the_serving_node_mid_reply_does_not_break_the_reply() {
    let (mut a, mut b, entry) = holders_and_entry();
    let body = json!({
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 160, "temperature": 0, "repeat_penalty": 1.0, "stream": true,
    });
    let mut stream = SseReader::open(&entry.url("/v1/chat/completions"), &body);
    let first = stream.headers["x-hearth-node"].to_str().unwrap().to_owned();
    let mut text = String::new();
    let mut events: Vec<Value> = Vec::new();
    while events.len() < 12 {
        let ev = stream.next_event().expect("the reply has begun");
        text.push_str(chunk_text(&ev));
        events.push(ev);
    }
    let (serving, other) = if first == "holder-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    serving.kill();
    let (rest, last) = stream.rest();
    text.push_str(&rest);
    let last = last.expect("events after the kill");
    assert_eq!(
        last["hearth"]["node"],
        other.name.as_str(),
        "the rest came from the other holder"
    );
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 160, "{last}");
    assert!(
        entry.log().contains("serving node dropped the reply"),
        "{}",
        entry.log()
    );
    assert_eq!(entry.metric("hearth_failovers_total"), 1.0);

    // The reply is the one the surviving node gives when asked directly: nothing lost, nothing
    // repeated at the seam.
    let direct: Value = http()
        .post(other.url("/v1/chat/completions"))
        .json(&json!({
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 160, "temperature": 0, "repeat_penalty": 1.0,
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        text,
        direct["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[test]
fn with_no_candidate_left_the_client_gets_an_error_event() {
    let (mut a, entry) = holder_and_entry("only-holder");
    let mut stream = SseReader::open(
        &entry.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 300, "temperature": 0, "repeat_penalty": 1.0, "stream": true}),
    );
    for _ in 0..5 {
        stream.next_event().expect("the reply has begun");
    }
    a.kill();
    let mut error = None;
    while let Some(ev) = stream.next_event() {
        if ev.get("error").is_some() {
            error = Some(ev);
        }
    }
    let error = error.expect("an error event before the stream closes");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("went away"),
        "{error}"
    );
}

#[test]
fn a_client_that_goes_away_stops_generation_on_the_peer() {
    let (holder, entry) = holder_and_entry("holder");
    // Load the model and let its self-benchmark finish, so the counter below is only this reply.
    let warm = http()
        .post(holder.url("/v1/completions"))
        .json(&json!({"prompt": "Hi", "max_tokens": 1}))
        .send()
        .unwrap();
    assert_eq!(warm.status(), 200);
    let before = holder.metric("hearth_tokens_generated_total");
    let mut stream = SseReader::open(
        &entry.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 400, "temperature": 0, "repeat_penalty": 1.0, "stream": true}),
    );
    let mut received = 0;
    while received < 6 {
        let ev = stream.next_event().unwrap();
        if !chunk_text(&ev).is_empty() {
            received += 1;
        }
    }
    drop(stream);
    // Bounded wait for the holder to notice, then the count must stop growing.
    let settled = wait_for(Duration::from_secs(10), || {
        let log = holder.log();
        log.contains("requester went away").then_some(())
    });
    assert!(settled.is_some(), "{}", holder.log());
    let at_notice = holder.metric("hearth_tokens_generated_total") - before;
    std::thread::sleep(Duration::from_millis(500));
    let generated = holder.metric("hearth_tokens_generated_total") - before;
    // At most the token being computed when the peer noticed.
    assert!(
        generated <= at_notice + 1.0,
        "generation went on after the requester left ({at_notice} then {generated}):\n{}",
        holder.log()
    );
    // A few tokens may be in flight between the nodes when the client leaves, never the 400.
    assert!(
        generated < 60.0,
        "the holder generated {generated} tokens for a client that left after 6"
    );
}

#[test]
fn a_full_node_says_busy_instead_of_queueing_without_bound() {
    let household = Household::new();
    let holder = TestNode::start(
        "small",
        &household,
        NodeOptions::holding(TestModel::SmolLm2).with_args(&[
            "--max-jobs",
            "1",
            "--max-queue",
            "1",
        ]),
    );
    let long = json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 300, "temperature": 0, "repeat_penalty": 1.0, "stream": true});
    // One running, one queued...
    let mut running = SseReader::open(&holder.url("/v1/chat/completions"), &long);
    running.next_event().unwrap();
    let url = holder.url("/v1/chat/completions");
    let queued = std::thread::spawn(move || {
        let r = http()
            .post(url)
            .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
            .send()
            .unwrap();
        r.status().as_u16()
    });
    let queue_filled = wait_for(Duration::from_secs(10), || {
        (holder.metric("hearth_queue_depth") >= 1.0).then_some(())
    });
    assert!(queue_filled.is_some());
    // ...and the third is refused at once.
    let refused = http()
        .post(holder.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let err: Value = refused.json().unwrap();
    assert_eq!(err["error"]["code"], "busy", "{err}");
    drop(running);
    assert_eq!(
        queued.join().unwrap(),
        200,
        "the queued request is served once the slot frees"
    );
}

#[test]
fn many_replies_at_once_over_one_connection_all_complete() {
    // Many concurrent streams on one yamux connection (rust-libp2p #5410 reports deadlocks with
    // many libp2p-stream streams): 12 replies through the entry node, 4 running at a time on the
    // holder and the rest queued there.
    let (holder, entry) = holder_and_entry("holder");
    let url = entry.url("/v1/chat/completions");
    let replies: Vec<_> = (0..12)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = json!({
                    "messages": [{"role": "user", "content": format!("Say the number {i}.")}],
                    "max_tokens": 8, "temperature": 0, "repeat_penalty": 1.0,
                });
                let r = http().post(url).json(&body).send().unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().unwrap();
                (status, v)
            })
        })
        .collect();
    for r in replies {
        let (status, v) = r.join().unwrap();
        assert_eq!(status, 200, "{v}\nentry:\n{}", entry.log());
        assert!(v["usage"]["completion_tokens"]
            .as_u64()
            .is_some_and(|t| t >= 1));
    }
    assert_eq!(holder.metric("hearth_jobs_served_total"), 12.0);
}
