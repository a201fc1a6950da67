//! `--pull-when-faster`: a node that lacks a model pulls it when routing estimates that serving it
//! here pays within a few replies (the holder is busy), loads it, and then serves it. In a test
//! binary of its own: the estimate rests on speeds the nodes measured, which other tests running
//! at the same time would disturb.

use std::time::Duration;

use hearth_tests::mesh::{post, wait_for, Household, NodeOptions, SseReader, TestNode};
use hearth_tests::TestModel;
use serde_json::{json, Value};

const SMOLLM2_SHA256: &str = TestModel::SmolLm2.sha256();

fn card<'a>(peers: &'a Value, name: &str) -> &'a Value {
    peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["card"]["name"] == name)
        .map(|p| &p["card"])
        .unwrap_or(&Value::Null)
}

/// A long reply pinned to `node`, kept running while the returned reader lives.
fn long_reply(node: &TestNode) -> SseReader {
    SseReader::open(
        &node.url("/v1/completions"),
        &json!({"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 4000,
                "temperature": 0, "stream": true, "hearth": {"node": "holder"}}),
    )
}

#[test]
fn an_idle_node_pulls_a_model_a_busy_holder_serves_and_then_serves_it() {
    let household = Household::new();
    // The entry node has measured its speed on Gemma 3 (loaded at start) and lacks SmolLM2.
    let entry = TestNode::start(
        "entry",
        &household,
        NodeOptions::holding(TestModel::Gemma3).with_args(&[
            "--load",
            "gemma3-270m",
            "--pull-when-faster",
            "true",
        ]),
    );
    let holder = TestNode::start(
        "holder",
        &household,
        NodeOptions::holding(TestModel::SmolLm2).with_args(&[
            "--load",
            "smollm2-135m",
            "--max-jobs",
            "1",
            "--peer",
            &entry.listen,
        ]),
    );
    let measured = wait_for(Duration::from_secs(30), || {
        let peers = entry.get("/api/peers");
        let ok = card(&peers, "holder")["speeds"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
            && card(&peers, "entry")["speeds"]
                .as_array()
                .is_some_and(|s| !s.is_empty());
        ok.then_some(())
    });
    assert!(measured.is_some(), "{}\n{}", entry.log(), holder.log());

    // Idle, the holder serves: the estimate is shown with its figures.
    let route = entry.get("/api/route?model=smollm2-135m");
    assert_eq!(route["pull_when_faster"], true, "{route}");
    assert_eq!(route["pull"]["from"], "holder", "{route}");
    assert!(
        route["pull"]["here_tokens_per_s"].as_f64().unwrap() > 0.0,
        "{route}"
    );
    assert_eq!(route["pull"]["link_measured"], false, "{route}");

    // Busy with a reply and another queued, the holder is slower than this node would be.
    let first = long_reply(&holder);
    let second = long_reply(&holder);
    let busy = wait_for(Duration::from_secs(30), || {
        let route = entry.get("/api/route?model=smollm2-135m");
        (route["pull"]["there_load"].as_f64() >= Some(3.0)).then_some(route)
    })
    .expect("the holder's card shows it busy");
    assert_eq!(busy["pull"]["pull"], true, "{busy}");
    assert!(
        busy["pull"]["pays_after_replies"].as_u64().unwrap() <= 3,
        "{busy}"
    );

    // A request now goes where routing sends it (the holder's queue), and starts the pull.
    let queued = std::thread::spawn({
        let url = entry.url("/v1/chat/completions");
        move || {
            let _ = hearth_tests::mesh::http()
                .post(url)
                .json(&json!({"model": "smollm2-135m", "max_tokens": 4,
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send();
        }
    });
    let loaded = wait_for(Duration::from_secs(90), || {
        let peers = entry.get("/api/peers");
        card(&peers, "entry")["loaded"]
            .as_array()
            .is_some_and(|l| l.contains(&json!(SMOLLM2_SHA256)))
            .then_some(())
    });
    assert!(loaded.is_some(), "{}", entry.log());
    assert!(
        entry.log().contains("pulling a model here: it pays"),
        "{}",
        entry.log()
    );

    // Loaded here and idle, while the holder is busy: this node serves.
    let (status, reply) = post(
        &entry,
        "/v1/chat/completions",
        json!({"model": "smollm2-135m", "max_tokens": 4,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["hearth"]["nodes"], json!(["entry"]), "{reply}");
    drop((first, second, holder));
    let _ = queued.join();
}
