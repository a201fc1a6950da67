//! Household admission: a node of another household gets nothing and is logged; a revoked device
//! is refused by every node; a node without a household will not start; the API wants a token
//! once it leaves loopback.

use std::time::Duration;

use hearth_tests::mesh::{http, wait_for, Household, NodeOptions, TestNode};
use hearth_tests::{hearth, TestModel};
use serde_json::json;

/// Runs `hearth node` in `dir` with the API on `api`, for nodes expected to refuse to start.
fn start_node_in(dir: &std::path::Path, api: &str) -> std::process::Output {
    let loopback = ["--mdns", "false", "--listen", "/ip4/127.0.0.1/tcp/0"];
    hearth(dir, &[&["node", "--api", api][..], &loopback].concat(), "")
}

#[test]
fn a_node_of_another_household_gets_no_card_no_jobs_no_models() {
    let home = Household::new();
    let holder = TestNode::start("holder", &home, NodeOptions::holding(TestModel::SmolLm2));
    let stranger = TestNode::start(
        "stranger",
        &Household::new(),
        NodeOptions::dialing(&[&holder]),
    );
    // The stranger keeps dialling; the holder refuses each attempt before any hearth protocol.
    let refused = wait_for(Duration::from_secs(15), || {
        holder.log().contains("refused a connection").then_some(())
    });
    assert!(refused.is_some(), "holder log:\n{}", holder.log());
    assert!(holder.metric("hearth_refused_connections_total") >= 1.0);
    // Neither side lists the other, the stranger cannot see or use the model.
    assert_eq!(holder.member_names(), ["holder"]);
    assert_eq!(stranger.member_names(), ["stranger"]);
    assert_eq!(stranger.get("/v1/models")["data"], json!([]));
    let r = http()
        .post(stranger.url("/v1/chat/completions"))
        .json(&json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let err: serde_json::Value = r.json().unwrap();
    assert_eq!(err["error"]["code"], "model_not_found");
    assert!(!holder.log().contains("serving a job"), "{}", holder.log());
}

#[test]
fn a_revoked_device_is_refused_by_every_node() {
    let home = Household::new();
    let a = TestNode::start("a", &home, NodeOptions::default());
    let b = TestNode::start("b", &home, NodeOptions::dialing(&[&a]));
    let c = TestNode::start("c", &home, NodeOptions::dialing(&[&a, &b]));
    assert!(
        a.wait_for_members(&["a", "b", "c"], Duration::from_secs(20)),
        "{:?}",
        a.member_names()
    );
    assert!(
        b.wait_for_members(&["a", "b", "c"], Duration::from_secs(20)),
        "{:?}",
        b.member_names()
    );
    // Remove c, by name, from a's CLI.
    let out = a.cli(&["household", "remove", "c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&c.peer_id));
    // a drops c at once; b learns of it from a's card and drops c too; c keeps being refused.
    assert!(
        a.wait_for_members(&["a", "b"], Duration::from_secs(10)),
        "{:?}",
        a.member_names()
    );
    assert!(
        b.wait_for_members(&["a", "b"], Duration::from_secs(10)),
        "{:?}",
        b.member_names()
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.member_names(), ["c"], "{}", c.log());
    let household = std::fs::read_to_string(b.data().join("household.toml")).unwrap();
    assert!(
        household.contains(&c.peer_id),
        "b saved the revocation: {household}"
    );
    let shown = b.cli(&["household", "show"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&c.peer_id));
}

#[test]
fn a_node_without_a_household_refuses_to_start_and_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = start_node_in(dir.path(), "127.0.0.1:0");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hearth household init") && err.contains("household join"),
        "{err}"
    );
    // Bad join codes are explained, not stored.
    let out = hearth(dir.path(), &["household", "join", "hearth-abcde"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("too short or too long"));
    assert!(!dir.path().join("household.toml").exists());
}

#[test]
fn the_api_needs_a_token_beyond_loopback() {
    let home = Household::new();
    let dir = tempfile::tempdir().unwrap();
    assert!(hearth(dir.path(), &["household", "join", &home.code], "")
        .status
        .success());
    let out = start_node_in(dir.path(), "0.0.0.0:0");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-token"));

    let node = TestNode::start(
        "guarded",
        &home,
        NodeOptions::default().with_args(&["--api-token", "s3cret"]),
    );
    let client = http();
    let r = client.get(node.url("/api/peers")).send().unwrap();
    assert_eq!(r.status(), 401);
    let err: serde_json::Value = r.json().unwrap();
    assert_eq!(err["error"]["type"], "authentication_error");
    let r = client
        .get(node.url("/api/peers"))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(node.url("/api/peers"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Health checks stay open.
    assert_eq!(
        client.get(node.url("/healthz")).send().unwrap().status(),
        200
    );
}
