//! Keys and values stay within the node's budget (`--kv-memory`): eight long chats at once, more
//! than the budget holds together, all finish, with running replies' reservations and the
//! caches kept for follow-up turns never above it; a reply that could never fit is refused at
//! once with the reason — or served by a peer whose budget holds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hearth_tests::mesh::{connected, post, Household, NodeOptions, TestNode};
use hearth_tests::TestModel;
use serde_json::json;

/// SmolLM2's keys and values per position: 30 layers × 192 × (key, value) × 2 bytes.
const PER_POSITION: u64 = 30 * 192 * 2 * 2;
const BUDGET: u64 = 60_000_000;

/// A prompt of roughly 1,000 tokens; each chat's differs from its first word on (no shared prefix).
fn prompt(i: usize) -> String {
    format!(
        "Chat {i}. {}",
        "The boiler in the cellar was serviced in March and the radiators bled in October. "
            .repeat(50)
    )
}

/// (reserved, idle, budget) from one read of `/metrics`.
fn kv_sample(node: &TestNode) -> (u64, u64, u64) {
    let text = reqwest::blocking::get(node.url("/metrics"))
        .and_then(|r| r.text())
        .unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}")) as u64
    };
    (
        value("hearth_kv_reserved_bytes"),
        value("hearth_idle_cache_bytes"),
        value("hearth_kv_budget_bytes"),
    )
}

#[test]
fn eight_long_chats_stay_within_the_kv_budget_and_all_finish() {
    let node = Arc::new(TestNode::start(
        "kv",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2).with_args(&[
            "--load",
            "smollm2-135m",
            "--kv-memory",
            "60MB",
            "--max-jobs",
            "8",
        ]),
    ));
    assert_eq!(kv_sample(&node).2, BUDGET);
    // The card tells the household too.
    let peers = node.get("/api/peers");
    assert_eq!(peers[0]["card"]["kv_budget"], BUDGET, "{peers}");

    // Too much for the whole budget: refused before anything runs, with the reason.
    let (status, body) = post(
        &node,
        "/v1/completions",
        json!({"prompt": prompt(0), "max_tokens": 3000, "temperature": 0}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("--kv-memory"), "{body}");

    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (node, done) = (node.clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !done.load(Ordering::SeqCst) {
                samples.push(kv_sample(&node));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };
    let chats: Vec<_> = (0..8)
        .map(|i| {
            let node = node.clone();
            std::thread::spawn(move || {
                post(
                    &node,
                    "/v1/completions",
                    json!({"prompt": prompt(i), "max_tokens": 8, "temperature": 0}).to_string(),
                )
            })
        })
        .collect();
    for chat in chats {
        let (status, body) = chat.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(tokens > 900, "{body}");
        // Each reply reserved more than a third of the budget: at most two ran at once.
        assert!((tokens + 8) * PER_POSITION > BUDGET / 3, "{tokens}");
    }
    done.store(true, Ordering::SeqCst);
    let samples = watcher.join().unwrap();
    let peak = samples.iter().map(|s| s.0).max().unwrap();
    assert!(peak > 0, "no reservation was ever seen");
    for &(reserved, idle, budget) in &samples {
        assert!(
            reserved + idle <= budget,
            "reserved {reserved} + kept {idle} > {budget}"
        );
    }
    // Some replies had to wait for memory: the budget, not the job slots, held them back.
    assert!(
        node.log()
            .contains("a reply waits for memory for its keys and values"),
        "{}",
        node.log()
    );
}

#[test]
fn a_reply_too_large_for_one_nodes_budget_is_served_by_a_peer_with_room() {
    // The entry has the model loaded (so it ranks first) and 10 MB for keys and values.
    let holding = || NodeOptions::holding(TestModel::SmolLm2);
    let nodes = connected(
        &Household::new(),
        vec![
            (
                "small",
                holding().with_args(&["--load", "smollm2-135m", "--kv-memory", "10MB"]),
            ),
            ("large", holding().with_args(&["--kv-memory", "40MB"])),
        ],
    );
    let small = &nodes[0];
    let route = small.get("/api/route?model=smollm2-135m");
    assert_eq!(route["ranked"][0]["node"], "small", "{route}");
    // ~1,000 tokens: 23 MB of keys and values, more than the first choice keeps.
    let body = json!({"prompt": prompt(0), "max_tokens": 8, "temperature": 0}).to_string();
    let (status, v) = post(small, "/v1/completions", body);
    assert_eq!(status, 200, "{v}\n{}", small.log());
    assert_eq!(v["hearth"]["nodes"][0], "large", "{v}");
    assert_eq!(small.metric("hearth_tokens_generated_total"), 0.0);

    // ~2,500 positions, 58 MB: larger than both budgets, so 400 with both nodes' reasons.
    let (status, v) = post(
        small,
        "/v1/completions",
        json!({"prompt": prompt(1), "max_tokens": 1500, "temperature": 0}).to_string(),
    );
    assert_eq!(status, 400, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("small keeps 9 MB") && text.contains("large keeps 38 MB"),
        "{v}"
    );
}
