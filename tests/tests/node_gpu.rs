//! `hearth node --device`: a node on the GPU (lavapipe, Mesa's software Vulkan driver, in CI)
//! serves chats through the mesh like any other and batches concurrent replies; its card says
//! where the model runs; `--device gpu` on a machine without a usable GPU is a clear error at
//! start, and `auto` runs on the CPU there.

use std::process::{Command, Stdio};
use std::time::Duration;

use hearth_tests::mesh::{http, wait_for, Household, NodeOptions, TestNode};
use hearth_tests::{hearth, hearth_bin, TestModel};
use serde_json::{json, Value};

/// Environment that hides every Vulkan driver from the process: a machine without a GPU.
const NO_VULKAN: [(&str, &str); 2] = [
    ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
    ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
];

fn chat(node: &TestNode, question: &str, max_tokens: u32) -> Value {
    let body = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    let r = http()
        .post(node.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 200, "{v}\n{}", node.log());
    v
}

/// The `placements` entry of the card `node` serves for itself.
fn own_placement(node: &TestNode) -> Option<Value> {
    let peers = node.get("/api/peers");
    let me = peers
        .as_array()?
        .iter()
        .find(|p| p["this_node"] == true)?
        .clone();
    me["card"]["placements"].as_array()?.first().cloned()
}

#[test]
fn a_node_on_the_gpu_serves_and_batches_chats_through_the_mesh() {
    let household = Household::new();
    let gpu = TestNode::start(
        "gpu",
        &household,
        NodeOptions::holding(TestModel::SmolLm2).with_args(&["--device", "gpu", "--max-jobs", "4"]),
    );
    let entry = TestNode::start("entry", &household, NodeOptions::dialing(&[&gpu]));
    assert!(
        entry.wait_for_members(&["gpu", "entry"], Duration::from_secs(30)),
        "{}",
        entry.log()
    );
    // Two chats at once through the entry, which holds no model: both are routed to the GPU
    // node, which decodes them in shared steps.
    let questions = ["Name a colour of the sky.", "Name a fruit that is yellow."];
    let replies: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = questions
            .iter()
            .map(|q| s.spawn(|| chat(&entry, q, 16)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &replies {
        let text = r["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(!text.trim().is_empty(), "{r}");
    }
    let steps = gpu.metric("hearth_decode_steps_total");
    let sessions = gpu.metric("hearth_decode_step_sessions_total");
    assert!(
        sessions > steps,
        "no step served both replies ({sessions} rows in {steps} steps)"
    );
    assert_eq!(
        entry.metric("hearth_decode_steps_total"),
        0.0,
        "the entry generated tokens"
    );
    // The card says where the model runs: every layer on the GPU adapter.
    let placed = wait_for(Duration::from_secs(20), || own_placement(&gpu)).expect("a placement");
    assert!(
        placed["device"].as_str().unwrap().starts_with("gpu:"),
        "{placed}"
    );
    assert_eq!(placed["gpu_layers"], 30);
    assert!(gpu.log().contains("models run on the GPU"), "{}", gpu.log());
    // Greedy replies are the GPU's own, whichever node the chat enters by (where they differ
    // from the CPU's, it is at near-ties: see gpu_model).
    let q = "What is the capital of France?";
    let direct = chat(&gpu, q, 8)["choices"][0]["message"]["content"].clone();
    let routed = chat(&entry, q, 8)["choices"][0]["message"]["content"].clone();
    assert_eq!(direct, routed);
}

#[test]
fn device_gpu_without_a_gpu_is_a_clear_error_and_auto_runs_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let household = Household::new();
    let join = hearth(dir.path(), &["household", "join", &household.code], "");
    assert!(join.status.success());
    let mut child = Command::new(hearth_bin())
        .args([
            "node",
            "--device",
            "gpu",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
            "--mdns",
            "false",
        ])
        .env("HEARTH_DATA_DIR", dir.path())
        .envs(NO_VULKAN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(60), || child.try_wait().unwrap());
    let Some(status) = status else {
        child.kill().unwrap();
        panic!("hearth node --device gpu kept running without a GPU");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("--device gpu"), "{stderr}");
    assert!(stderr.contains("no GPU adapter found"), "{stderr}");
    assert!(stderr.contains("--device cpu"), "{stderr}");

    // `auto` there: the CPU, and a chat works.
    let mut opts = NodeOptions::holding(TestModel::SmolLm2).with_args(&["--device", "auto"]);
    for (k, v) in NO_VULKAN {
        opts = opts.with_env(k, v);
    }
    let node = TestNode::start("plain", &household, opts);
    chat(&node, "Say hello.", 4);
    let placed = wait_for(Duration::from_secs(20), || own_placement(&node)).expect("a placement");
    assert_eq!(placed["device"], "cpu");
    assert_eq!(placed["gpu_layers"], 0);
    // No Vulkan driver: the card lists the CPU only.
    let devices = node.cli(&["devices"]);
    assert!(
        devices.status.success(),
        "{}",
        String::from_utf8_lossy(&devices.stderr)
    );
}
