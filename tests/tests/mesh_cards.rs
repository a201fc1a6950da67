//! Capability cards while a node is busy loading a model: the node keeps answering card requests
//! and its own API, so its peers keep it in their tables, and the reply that waited for the load
//! arrives. (Peers drop a node whose card takes more than 5 s; the load here takes 8 s more than
//! it would, through the node's test hook.)

use std::time::{Duration, Instant};

use hearth_tests::mesh::{http, wait_for, Household, NodeOptions, TestNode};
use hearth_tests::TestModel;
use serde_json::{json, Value};

/// What one look at both nodes during the load found.
#[derive(Debug)]
struct Look {
    at: Duration,
    entry_sees_holder: bool,
    holder_answers: bool,
    loaded_on_holder: bool,
}

fn look(entry: &TestNode, holder: &TestNode, start: Instant) -> Look {
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let peers: Option<Value> = quick
        .get(holder.url("/api/peers"))
        .send()
        .and_then(|r| r.json())
        .ok();
    Look {
        at: start.elapsed(),
        entry_sees_holder: entry.member_names().iter().any(|n| n == "holder"),
        holder_answers: peers.is_some(),
        loaded_on_holder: peers.is_some_and(|p| {
            p[0]["card"]["loaded"]
                .as_array()
                .is_some_and(|l| !l.is_empty())
        }),
    }
}

#[test]
fn a_node_loading_a_model_stays_in_its_peers_tables_and_answers_its_api() {
    let household = Household::new();
    let holder = TestNode::start(
        "holder",
        &household,
        NodeOptions::holding(TestModel::SmolLm2).with_env("HEARTH_TEST_LOAD_DELAY_MS", "8000"),
    );
    let entry = TestNode::start("entry", &household, NodeOptions::dialing(&[&holder]));
    assert!(
        entry.wait_for_members(&["entry", "holder"], Duration::from_secs(20)),
        "{}",
        entry.log()
    );
    // The chat makes the holder load the model; it waits out the slow load.
    let url = entry.url("/v1/chat/completions");
    let chat = std::thread::spawn(move || {
        http()
            .post(url)
            .json(&json!({
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 4,
                "temperature": 0,
            }))
            .send()
            .map(|r| r.status().as_u16())
    });
    let mut looks = Vec::new();
    let start = Instant::now();
    // Bounded: the load takes 8 s plus the real load; 90 s is far beyond it.
    while !chat.is_finished() && start.elapsed() < Duration::from_secs(90) {
        looks.push(look(&entry, &holder, start));
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = chat.join().expect("chat thread").expect("chat request");
    assert_eq!(status, 200, "{}\n{}", entry.log(), holder.log());
    // The looks span the load, longer than a peer waits for a card.
    let during_load: Vec<Duration> = looks
        .iter()
        .filter(|l| !l.loaded_on_holder)
        .map(|l| l.at)
        .collect();
    let span = during_load
        .last()
        .zip(during_load.first())
        .map(|(b, a)| *b - *a);
    assert!(
        span.is_some_and(|s| s > Duration::from_secs(5)),
        "the load was not watched for 5 s: {looks:?}"
    );
    assert!(
        looks
            .iter()
            .all(|l| l.entry_sees_holder && l.holder_answers),
        "{looks:?}\n{}\n{}",
        entry.log(),
        holder.log()
    );
    // The card shows the model once it is ready.
    let loaded = wait_for(Duration::from_secs(10), || {
        look(&entry, &holder, start).loaded_on_holder.then_some(())
    });
    assert!(loaded.is_some());
}
