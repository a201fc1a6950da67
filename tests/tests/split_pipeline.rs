//! One model split over several real nodes because none offers the memory to hold it whole
//! (`--max-memory`): the planner picks the stages, the reply runs round the ring of stages, and
//! it is identical, token for token, to the single-node reply — streamed and not, chat and
//! completions, for both models, over 2 and over 3 nodes.

use std::time::Duration;

use hearth_tests::mesh::{connected, post, Household, NodeOptions, SseReader, TestNode};
use hearth_tests::TestModel;
use serde_json::{json, Value};

const CTX: &str = "512";

/// Nodes named `names` holding `model`, each offering `cap` for models, each dialing the ones
/// before it (stages talk to each other directly, so every pair is connected).
fn capped(household: &Household, names: &[&str], model: TestModel, cap: &str) -> Vec<TestNode> {
    started(
        household,
        names,
        model,
        &["--max-memory", cap, "--ctx", CTX],
    )
}

/// Nodes named `names` holding `model`, started with `args`, all connected.
fn started(
    household: &Household,
    names: &[&str],
    model: TestModel,
    args: &[&str],
) -> Vec<TestNode> {
    let nodes = names
        .iter()
        .map(|name| (*name, NodeOptions::holding(model).with_args(args)))
        .collect();
    connected(household, nodes)
}

/// The requests compared: chat and completions, each whole and streamed.
fn requests(model: TestModel) -> Vec<(&'static str, Value)> {
    let chat = json!({
        "model": model.name(),
        "messages": [{"role": "user", "content": "Name three colours and say why you like them."}],
        "max_tokens": 24, "temperature": 0,
    });
    let text = json!({
        "model": model.name(), "prompt": "The three primary colours are",
        "max_tokens": 24, "temperature": 0,
    });
    let mut out = Vec::new();
    for (path, body) in [("/v1/chat/completions", chat), ("/v1/completions", text)] {
        out.push((path, body.clone()));
        let mut streamed = body;
        streamed["stream"] = json!(true);
        out.push((path, streamed));
    }
    out
}

/// The reply's text and the node that served it.
fn reply(node: &TestNode, path: &str, body: &Value) -> (String, String) {
    if body["stream"] == true {
        let mut s = SseReader::open(&node.url(path), body);
        let serving = s.headers["x-hearth-node"].to_str().unwrap().to_owned();
        return (s.rest().0, serving);
    }
    let (status, v) = post(node, path, body.to_string());
    assert_eq!(status, 200, "{v}\n{}", node.log());
    let c = &v["choices"][0];
    let text = c["message"]["content"]
        .as_str()
        .or(c["text"].as_str())
        .unwrap();
    (
        text.to_owned(),
        v["hearth"]["nodes"][0].as_str().unwrap_or("").to_owned(),
    )
}

/// Peak resident memory of a node's process, in MiB.
fn peak_rss_mib(node: &TestNode) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// The plan `node` would take now: (node, start, end) per stage.
fn plan(node: &TestNode, model: TestModel) -> Vec<(String, u64, u64)> {
    let route = node.get(&format!("/api/route?model={}", model.name()));
    assert_eq!(route["split"]["status"], "planned", "{route}");
    assert!(
        route["ranked"].as_array().unwrap().len() == 1,
        "only the split can serve: {route}"
    );
    route["split"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_owned(),
                s["start"].as_u64().unwrap(),
                s["end"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn split_replies_match_the_single_node(model: TestModel, two_way: &str, three_way: &str) {
    // The reference: one node holding the whole model, in a household of its own.
    let whole = TestNode::start(
        "whole",
        &Household::new(),
        NodeOptions::holding(model).with_args(&["--ctx", CTX]),
    );
    let expected: Vec<String> = requests(model)
        .iter()
        .map(|(path, body)| reply(&whole, path, body).0)
        .collect();
    assert!(expected.iter().all(|t| !t.is_empty()), "{expected:?}");

    let household = Household::new();
    let mut nodes = capped(&household, &["a", "b"], model, two_way);
    for (stages, cap) in [(2, two_way), (3, three_way)] {
        if stages == 3 {
            // Tighter caps: no two of them hold the model any more.
            let args = ["--max-memory", cap, "--ctx", CTX];
            let mut dial = Vec::new();
            for n in &mut nodes {
                let opts = NodeOptions {
                    peers: dial.clone(),
                    ..NodeOptions::default()
                };
                n.restart(&opts.with_args(&args));
                dial.push(n.listen.clone());
            }
            let opts = NodeOptions {
                peers: dial,
                ..NodeOptions::holding(model)
            };
            nodes.push(TestNode::start("c", &household, opts.with_args(&args)));
            for n in &nodes {
                assert!(
                    n.wait_for_members(&["a", "b", "c"], Duration::from_secs(30)),
                    "{}",
                    n.log()
                );
            }
        }
        let entry = &nodes[0];
        let planned = plan(entry, model);
        assert_eq!(planned.len(), stages, "{planned:?}");
        let models = entry.get("/v1/models");
        let listed = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == model.name())
            .unwrap();
        assert_eq!(listed["hearth"]["servable"], "split", "{listed}");
        let cli = entry.cli(&["route", model.name()]);
        let shown = String::from_utf8_lossy(&cli.stdout);
        assert!(
            shown.contains(&format!("split over {stages} nodes")) && shown.contains("tokens/s"),
            "{shown}"
        );
        for ((path, body), want) in requests(model).iter().zip(&expected) {
            let (got, serving) = reply(entry, path, body);
            assert_eq!(&got, want, "{stages} stages, {path} {body}");
            let last = &planned.last().unwrap().0;
            assert_eq!(&serving, last, "the last stage drives the reply");
        }
        let served: f64 = nodes
            .iter()
            .map(|n| n.metric("hearth_split_replies_total"))
            .sum();
        assert!(served >= 4.0, "{served}");
        let peaks: Vec<String> = planned
            .iter()
            .map(|(name, start, end)| {
                let n = nodes.iter().find(|n| &n.name == name).unwrap();
                format!("{name} layers {start}..{end}: {:.0} MiB", peak_rss_mib(n))
            })
            .collect();
        let whole_peak = peak_rss_mib(&whole);
        eprintln!(
            "{} split {stages} ways, peak RSS per stage: {} (whole model on one node: {whole_peak:.0} MiB)",
            model.name(),
            peaks.join(", ")
        );
        for n in &nodes {
            assert!(
                peak_rss_mib(n) < whole_peak,
                "{}: {peaks:?} vs {whole_peak}",
                n.name
            );
        }
    }
}

#[test]
fn smollm2_split_over_two_and_three_nodes_replies_as_one_node() {
    split_replies_match_the_single_node(TestModel::SmolLm2, "100MB", "60MB");
}

#[test]
fn gemma3_split_over_two_and_three_nodes_replies_as_one_node() {
    split_replies_match_the_single_node(TestModel::Gemma3, "300MB", "200MB");
}

/// Each stage's cache comes out of its node's budget for keys and values (`--kv-memory`, shown on
/// its card), sized for the reply (prompt + max_tokens) rather than the whole context: reserved
/// while the reply runs, given back after; a reply too long for a stage's budget is refused
/// with the reason.
#[test]
fn split_sessions_reserve_their_caches_in_the_kv_budget() {
    let model = TestModel::SmolLm2;
    // SmolLM2's keys and values per position and layer: 192 × (key, value) × 2 bytes.
    const PER_LAYER: u64 = 192 * 2 * 2;
    const BUDGET: u64 = 2_000_000;
    let household = Household::new();
    let args = ["--max-memory", "100MB", "--ctx", CTX, "--kv-memory", "2MB"];
    let nodes = started(&household, &["a", "b"], model, &args);
    let entry = &nodes[0];
    let planned = plan(entry, model);
    assert_eq!(planned.len(), 2, "{planned:?}");
    let peers = entry.get("/api/peers");
    for p in peers.as_array().unwrap() {
        assert_eq!(p["card"]["kv_budget"], BUDGET, "{p}");
        assert_eq!(p["card"]["kv_reserved"], 0, "{p}");
    }

    let body = json!({
        "model": model.name(), "prompt": "The three primary colours are",
        "max_tokens": 24, "temperature": 0, "stream": true,
    });
    let mut stream = SseReader::open(&entry.url("/v1/completions"), &body);
    assert!(stream.next_event().is_some(), "no first token");
    // Mid-reply: every stage holds a reservation for this reply's positions only.
    for (name, start, end) in &planned {
        let node = nodes.iter().find(|n| &n.name == name).unwrap();
        let reserved = node.metric("hearth_kv_reserved_bytes") as u64;
        let per_position = PER_LAYER * (end - start);
        assert!(
            reserved > 0 && reserved.is_multiple_of(per_position),
            "{name} layers {start}..{end}: {reserved} bytes reserved"
        );
        let positions = reserved / per_position;
        eprintln!("{name} layers {start}..{end}: {positions} positions reserved mid-reply");
        assert!(
            (24..64).contains(&positions),
            "{name}: {positions} positions reserved for a short prompt and 24 tokens (context {CTX})"
        );
    }
    let (text, _) = stream.rest();
    assert!(!text.is_empty());
    for node in &nodes {
        let given_back = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            node.metric("hearth_kv_reserved_bytes") == 0.0
        });
        assert!(
            given_back,
            "{} still holds keys and values\n{}",
            node.name,
            node.log()
        );
    }

    // 480 positions of at least 15 layers (one of the two stages has them) need 5.5 MB.
    let (status, v) = post(
        entry,
        "/v1/completions",
        json!({
            "model": model.name(), "prompt": "The three primary colours are",
            "max_tokens": 480, "temperature": 0,
        })
        .to_string(),
    );
    eprintln!("a reply too long for a stage's budget: {status} {v}");
    assert_ne!(status, 200, "{v}");
    assert!(v.to_string().contains("--kv-memory"), "{status} {v}");
}
