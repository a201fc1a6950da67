//! Models pulled from household peers: real node processes on loopback, the real model file,
//! `hearth models pull` and `POST /api/models/pull`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hearth_tests::mesh::{post, wait_for, Household, NodeOptions, SseReader, TestNode};
use hearth_tests::{repo_root, TestModel};
use serde_json::{json, Value};

const SMOLLM2_SHA256: &str = TestModel::SmolLm2.sha256();
const CHUNK_DELAY: &str = "HEARTH_TEST_CHUNK_DELAY_MS";

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn model_file(node: &TestNode) -> std::path::PathBuf {
    node.data()
        .join("models")
        .join(format!("{SMOLLM2_SHA256}.gguf"))
}

fn size() -> u64 {
    std::fs::metadata(TestModel::SmolLm2.path()).unwrap().len()
}

/// Waits until `node` sees `names` as members, with cards (so it knows what they hold).
fn meet(node: &TestNode, names: &[&str]) {
    assert!(
        node.wait_for_members(names, Duration::from_secs(30)),
        "{} sees {:?}\n{}",
        node.name,
        node.member_names(),
        node.log()
    );
}

/// The pull's progress events until it ends: calls `each` with every event; returns the last.
fn pull_watching(node: &TestNode, model: &str, mut each: impl FnMut(&Value)) -> Value {
    let mut events = SseReader::open(&node.url("/api/models/pull"), &json!({"model": model}));
    let mut last = Value::Null;
    while let Some(ev) = events.next_event() {
        each(&ev);
        last = ev;
    }
    last
}

fn peer_bytes(progress: &Value, node: &str) -> (u64, String) {
    progress["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["node"] == node)
        .map_or((0, String::new()), |p| {
            (
                p["bytes"].as_u64().unwrap(),
                p["standing"].as_str().unwrap().to_owned(),
            )
        })
}

fn chat_on(node: &TestNode, pin: &str) -> (u16, Value) {
    post(
        node,
        "/v1/chat/completions",
        json!({"model": "smollm2-135m", "max_tokens": 8, "temperature": 0,
               "messages": [{"role": "user", "content": "Say hello."}],
               "hearth": {"node": pin}})
        .to_string(),
    )
}

#[test]
fn a_model_is_pulled_into_an_empty_node_verified_and_served_there() {
    let household = Household::new();
    let holder = TestNode::start(
        "holder",
        &household,
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let empty = TestNode::start("empty", &household, NodeOptions::dialing(&[&holder]));
    meet(&empty, &["holder", "empty"]);

    // Mistakes first: an unknown model is refused before anything streams.
    let (status, body) = post(
        &empty,
        "/api/models/pull",
        json!({"model": "no-such-model"}).to_string(),
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("smollm2-135m"),
        "{body}"
    );
    let out = empty.cli(&["models", "pull", "no-such-model"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no household node holds no-such-model"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = empty.cli(&["models", "pull", "smollm2-135m"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        empty.log()
    );
    assert!(
        stdout.contains("pulled smollm2-135m as smollm2-135m"),
        "{stdout}"
    );
    assert!(stdout.contains("from holder"), "{stdout}");
    assert_eq!(sha256(&model_file(&empty)), SMOLLM2_SHA256);
    assert_eq!(
        empty.metric("hearth_blob_bytes_received_total") as u64,
        size()
    );
    assert_eq!(holder.metric("hearth_blob_bytes_sent_total") as u64, size());
    assert_eq!(empty.metric("hearth_pulls_completed_total"), 1.0);
    // No temp file is left.
    let leftovers: Vec<_> = std::fs::read_dir(empty.data().join("models"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // It serves there, pinned to the node that pulled it.
    let (status, reply) = chat_on(&empty, "empty");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["hearth"]["nodes"], json!(["empty"]), "{reply}");

    // Pulling again is a no-op.
    let out = empty.cli(&["models", "pull", "smollm2-135m"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("in this node's cache already"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let list = empty.cli(&["models", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("smollm2-135m"));
}

#[test]
fn a_sender_killed_mid_transfer_is_replaced_and_the_pull_does_not_restart() {
    let household = Household::new();
    let slow = |n: &str| NodeOptions::holding(TestModel::SmolLm2).with_env(CHUNK_DELAY, n);
    let mut first = TestNode::start("first", &household, slow("40"));
    let second = TestNode::start("second", &household, slow("40"));
    let puller = TestNode::start(
        "puller",
        &household,
        NodeOptions::dialing(&[&first, &second]),
    );
    meet(&puller, &["first", "second", "puller"]);

    let total = size();
    let mut killed_at = None;
    let last = pull_watching(&puller, "smollm2-135m", |p| {
        let done = p["completed"].as_u64().unwrap_or(0);
        if killed_at.is_none()
            && done > total / 4
            && peer_bytes(p, "first").0 > 0
            && peer_bytes(p, "second").0 > 0
        {
            first.kill();
            killed_at = Some(done);
        }
    });
    assert_eq!(last["status"], "success", "{last}\n{}", puller.log());
    let killed_at = killed_at.expect("the pull was still running at a quarter");
    assert!(killed_at < total, "{killed_at}");
    let (from_first, standing) = peer_bytes(&last, "first");
    let (from_second, _) = peer_bytes(&last, "second");
    assert_eq!(standing, "failed", "{last}");
    assert!(from_first > 0 && from_second > 0, "{last}");
    // Nothing was fetched twice: what the first holder sent before it died was kept.
    assert_eq!(from_first + from_second, total, "{last}");
    let received = puller.metric("hearth_blob_bytes_received_total") as u64;
    assert_eq!(received, total, "bytes received: {received} of {total}");
    assert_eq!(sha256(&model_file(&puller)), SMOLLM2_SHA256);
}

#[test]
fn an_interrupted_pull_resumes_where_it_stopped() {
    let household = Household::new();
    let holder = TestNode::start(
        "holder",
        &household,
        NodeOptions::holding(TestModel::SmolLm2).with_env(CHUNK_DELAY, "20"),
    );
    let options = NodeOptions::dialing(&[&holder]);
    let mut puller = TestNode::start("puller", &household, options.clone());
    meet(&puller, &["holder", "puller"]);

    let total = size();
    let mut events = SseReader::open(
        &puller.url("/api/models/pull"),
        &json!({"model": "smollm2-135m"}),
    );
    let mut before = 0;
    while let Some(ev) = events.next_event() {
        before = ev["completed"].as_u64().unwrap_or(0);
        if before > total / 3 {
            break;
        }
    }
    assert!(before > total / 3 && before < total, "{before}");
    // The node dies in the middle (no chance to tidy up), and starts again.
    puller.restart(&options);
    meet(&puller, &["holder", "puller"]);

    let out = puller.cli(&["models", "pull", "smollm2-135m"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", puller.log());
    assert!(
        stdout.contains("were here from an earlier pull"),
        "{stdout}"
    );
    let received = puller.metric("hearth_blob_bytes_received_total") as u64;
    assert!(
        received + before - 2 * (8 << 20) <= total && received < total,
        "after the restart {received} bytes came, {before} were here before, of {total}"
    );
    assert_eq!(sha256(&model_file(&puller)), SMOLLM2_SHA256);
}

#[test]
fn a_holder_sending_a_corrupt_chunk_is_caught_there_and_not_asked_again() {
    let household = Household::new();
    let bad = TestNode::start("bad", &household, NodeOptions::holding(TestModel::SmolLm2));
    // A byte flipped in the middle of the bad holder's copy (its card still advertises the
    // manifest made when the file was imported whole).
    let path = model_file(&bad);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    // The puller knows only the bad holder at first: the bad chunk is certainly its.
    let puller = TestNode::start("puller", &household, NodeOptions::dialing(&[&bad]));
    meet(&puller, &["bad", "puller"]);
    let pulling = std::thread::spawn({
        let url = puller.url("/api/models/pull");
        move || {
            let mut events = SseReader::open(&url, &json!({"model": "smollm2-135m"}));
            let mut all = Vec::new();
            while let Some(ev) = events.next_event() {
                all.push(ev);
            }
            all
        }
    });
    assert!(
        wait_for(Duration::from_secs(60), || {
            (puller.metric("hearth_blob_bad_chunks_total") >= 1.0).then_some(())
        })
        .is_some(),
        "{}",
        puller.log()
    );
    // Then a good holder joins the household, and the rest comes from it.
    let good = TestNode::start(
        "good",
        &household,
        NodeOptions::holding(TestModel::SmolLm2).with_args(&["--peer", &puller.listen]),
    );
    let events = pulling.join().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["status"], "success", "{last}\n{}", puller.log());
    let (from_bad, standing) = peer_bytes(last, "bad");
    let (from_good, _) = peer_bytes(last, "good");
    assert_eq!(standing, "bad", "{last}");
    assert!(from_bad > 0 && from_bad < size(), "{last}");
    assert_eq!(from_bad + from_good, size(), "{last}");
    assert_eq!(sha256(&model_file(&puller)), SMOLLM2_SHA256);
    assert!(
        puller.log().contains("do not verify"),
        "the event is logged:\n{}",
        puller.log()
    );
    assert_eq!(puller.metric("hearth_blob_bad_chunks_total"), 1.0);

    // Removed and pulled again: the bad holder is not asked.
    let out = puller.cli(&["models", "remove", "smollm2-135m"]);
    assert!(out.status.success());
    let again = pull_watching(&puller, "smollm2-135m", |_| {});
    assert_eq!(again["status"], "success", "{again}");
    assert_eq!(peer_bytes(&again, "bad").0, 0, "{again}");
    assert_eq!(peer_bytes(&again, "good").0, size(), "{again}");
    drop(good);
}

#[test]
fn the_ollama_client_pulls_a_model_from_the_household() {
    let household = Household::new();
    let holder = TestNode::start(
        "holder",
        &household,
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let empty = TestNode::start(
        "empty",
        &household,
        NodeOptions::dialing(&[&holder]).with_args(&["--ollama-api", "127.0.0.1:0"]),
    );
    meet(&empty, &["holder", "empty"]);
    let info: Value =
        serde_json::from_slice(&std::fs::read(empty.data().join("node.json")).unwrap()).unwrap();
    let python = repo_root().join(".cache/clients/bin/python");
    assert!(
        python.is_file(),
        "the `ollama` Python client is not installed: run `make clients` (make test does)"
    );
    let out = Command::new(python)
        .arg(repo_root().join("tests/python/ollama_pull.py"))
        .args([info["ollama_api"].as_str().unwrap(), "smollm2-135m"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        empty.log()
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses = got["statuses"].as_array().unwrap();
    assert_eq!(statuses.first().unwrap(), "pulling manifest", "{got}");
    assert_eq!(statuses.last().unwrap(), "success", "{got}");
    assert!(
        statuses.contains(&json!("verifying sha256 digest")),
        "{got}"
    );
    assert_eq!(
        got["digests"],
        json!([format!("sha256:{SMOLLM2_SHA256}")]),
        "{got}"
    );
    assert!(got["progress_lines"].as_u64().unwrap() > 1, "{got}");
    assert_eq!(got["completed"].as_u64(), Some(size()), "{got}");
    assert_eq!(got["total"].as_u64(), Some(size()), "{got}");
    assert!(
        got["tags"]
            .as_array()
            .unwrap()
            .contains(&json!("smollm2-135m:latest")),
        "{got}"
    );
    assert_eq!(got["again"], "success", "{got}");
    assert_eq!(got["unknown"][0], 404, "{got}");
    assert_eq!(sha256(&model_file(&empty)), SMOLLM2_SHA256);
}

#[test]
fn making_room_never_removes_a_loaded_or_pinned_model() {
    let household = Household::new();
    let holder = TestNode::start(
        "holder",
        &household,
        NodeOptions::holding(TestModel::Gemma3),
    );
    let gemma = std::fs::metadata(TestModel::Gemma3.path()).unwrap().len();
    // Room for the new model only if the one already here goes.
    let cap = (size() + gemma - (1 << 20)).to_string();
    let base = NodeOptions::holding(TestModel::SmolLm2).with_args(&[
        "--peer",
        &holder.listen,
        "--cache-size",
        &cap,
    ]);
    let mut node = TestNode::start(
        "small",
        &household,
        base.clone().with_args(&["--load", "smollm2-135m"]),
    );
    meet(&node, &["holder", "small"]);
    let refused = |node: &TestNode, why: &str| {
        let (status, body) = post(
            node,
            "/api/models/pull",
            json!({"model": "gemma3-270m"}).to_string(),
        );
        assert_eq!(status, 507, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("smollm2-135m (94 MB, {why})")),
            "{message}"
        );
    };
    // Loaded: it stays, and the pull is refused with the reason.
    refused(&node, "in use");

    // Not loaded but pinned: it stays too.
    node.restart(&base);
    meet(&node, &["holder", "small"]);
    let out = node.cli(&["models", "pin", "smollm2-135m"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(&node, "pinned");
    assert!(model_file(&node).is_file());

    // Unpinned and idle: the least recently used goes, and the pull goes through.
    let out = node.cli(&["models", "unpin", "smollm2-135m"]);
    assert!(out.status.success());
    let last = pull_watching(&node, "gemma3-270m", |_| {});
    assert_eq!(last["status"], "success", "{last}\n{}", node.log());
    assert!(!model_file(&node).exists());
    let list = String::from_utf8_lossy(&node.cli(&["models", "list"]).stdout).into_owned();
    assert!(
        list.contains("gemma3-270m") && !list.contains("smollm2-135m"),
        "{list}"
    );
    assert!(node.log().contains("to make room"), "{}", node.log());
}

#[test]
fn split_stages_on_nodes_without_the_model_fetch_only_their_part() {
    let household = Household::new();
    let holder = TestNode::start(
        "holder",
        &household,
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let s2 = TestNode::start("s2", &household, NodeOptions::dialing(&[&holder]));
    let s3 = TestNode::start("s3", &household, NodeOptions::dialing(&[&holder, &s2]));
    for n in [&holder, &s2, &s3] {
        meet(n, &["holder", "s2", "s3"]);
    }
    let ask = |hearth: Value| {
        let (status, v) = post(
            &holder,
            "/v1/chat/completions",
            json!({"model": "smollm2-135m", "max_tokens": 24, "temperature": 0,
                   "messages": [{"role": "user", "content": "Name three colours and say why you like them."}],
                   "hearth": hearth})
            .to_string(),
        );
        assert_eq!(status, 200, "{v}\n{}\n{}", s2.log(), s3.log());
        (
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
            v["hearth"]["nodes"].clone(),
        )
    };
    let (whole, _) = ask(json!({"node": "holder"}));
    let (split, nodes) = ask(json!({"stages": ["holder", "s2", "s3"]}));
    assert_eq!(split, whole, "{nodes}");
    let total = size();
    let moved: Vec<u64> = [&s2, &s3]
        .iter()
        .map(|n| n.metric("hearth_blob_bytes_received_total") as u64)
        .collect();
    eprintln!(
        "a 3-way split over a holder and two nodes without the {total}-byte file moved {} and {} bytes ({:.0} % and {:.0} %)",
        moved[0],
        moved[1],
        moved[0] as f64 * 100.0 / total as f64,
        moved[1] as f64 * 100.0 / total as f64
    );
    // Each moved its layers' weights (the last stage also the head, which SmolLM2 ties to the
    // embedding), the header and the rounding to chunks: no more. Which layers each got depends
    // on the speeds the planner saw; the node's log says.
    let layout =
        &holder.get("/api/peers").as_array().unwrap()[0]["card"]["models"][0]["layout"].clone();
    let layer_bytes: Vec<u64> = layout["layer_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    for (n, m) in [&s2, &s3].iter().zip(&moved) {
        let log = n.log();
        let layers = log
            .lines()
            .find(|l| l.contains("fetched a split stage's part"))
            .and_then(|l| l.split("layers=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("{} says what it fetched:\n{log}", n.name));
        let (start, end) = layers.split_once("..").unwrap();
        let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
        let mut weights: u64 = layer_bytes[start..end].iter().sum();
        if end == layer_bytes.len() {
            weights += layout["head_bytes"].as_u64().unwrap();
        }
        eprintln!(
            "{} ran layers {layers}: {weights} bytes of weights, moved {m}",
            n.name
        );
        assert!(
            *m >= weights && *m <= weights + (6 << 20) && *m < total,
            "{} fetched {m} of {total} for layers {layers} ({weights} bytes of weights)",
            n.name
        );
        // A part of a file is not a cached model.
        let list = String::from_utf8_lossy(&n.cli(&["models", "list"]).stdout).into_owned();
        assert!(!list.contains("smollm2-135m"), "{list}");
    }
    // Again: nothing more moves.
    let (again, _) = ask(json!({"stages": ["holder", "s2", "s3"]}));
    assert_eq!(again, whole);
    assert_eq!(
        s2.metric("hearth_blob_bytes_received_total") as u64,
        moved[0]
    );
}

/// Sends `request` on a new blob stream and reads the first answer, opening another stream when
/// one closes before any answer (as the node's own `Mesh::ask` does).
async fn ask_blob(
    control: &libp2p_stream::Control,
    peer: libp2p::PeerId,
    request: &hearth_protocol::BlobRequest,
) -> (libp2p::Stream, hearth_protocol::BlobFrame) {
    use hearth_node::mesh::wire::{read_frame, write_frame};
    for attempt in 1..=5u64 {
        let mut stream = control
            .clone()
            .open_stream(
                peer,
                libp2p::StreamProtocol::new(hearth_protocol::BLOB_PROTOCOL),
            )
            .await
            .unwrap();
        if write_frame(&mut stream, request).await.is_ok() {
            if let Ok(Some(first)) = read_frame(&mut stream).await {
                return (stream, first);
            }
        }
        tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
    }
    panic!("five blob streams closed before an answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_blob_streams_over_one_connection_are_all_answered_and_bad_requests_refused() {
    use hearth_node::mesh::wire::read_frame;
    use hearth_protocol::{BlobFrame, BlobRequest, ManifestReader};
    let household = Household::new();
    let holder = TestNode::start(
        "holder",
        &household,
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let (control, peer) = hearth_tests::mesh::household_client(&household, &holder).await;
    let digest = SMOLLM2_SHA256.to_owned();

    let (mut stream, first) = ask_blob(
        &control,
        peer,
        &BlobRequest::Manifest {
            digest: digest.clone(),
        },
    )
    .await;
    let mut reader = ManifestReader::default();
    let mut frame = first;
    let manifest = loop {
        if let Some(m) = reader.push(frame).unwrap() {
            break m;
        }
        frame = read_frame(&mut stream).await.unwrap().unwrap();
    };
    assert_eq!(manifest.size, size());

    // 32 requests of 4 chunks at once, all over one connection: every chunk comes and verifies.
    let tasks: Vec<_> = (0..32u32)
        .map(|i| {
            let (control, digest, manifest) = (control.clone(), digest.clone(), manifest.clone());
            tokio::spawn(async move {
                let request = BlobRequest::Chunks {
                    digest,
                    first: i * 4,
                    count: 4,
                };
                let (mut stream, first) = ask_blob(&control, peer, &request).await;
                let mut frame = Some(first);
                for index in i * 4..i * 4 + 4 {
                    let next = match frame.take() {
                        Some(f) => f,
                        None => read_frame(&mut stream).await.unwrap().unwrap(),
                    };
                    let BlobFrame::Chunk { index: got, bytes } = next else {
                        panic!("not a chunk: {next:?}");
                    };
                    assert_eq!(got, index);
                    manifest.verify_chunk(index, &bytes).unwrap();
                }
                assert!(read_frame::<_, BlobFrame>(&mut stream)
                    .await
                    .unwrap()
                    .is_none());
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("every request is answered")
            .unwrap();
    }

    // Mistakes get a reason, not a hang.
    let chunks = manifest.chunks();
    for (request, says) in [
        (
            BlobRequest::Chunks {
                digest: digest.clone(),
                first: chunks,
                count: 1,
            },
            "chunks",
        ),
        (
            BlobRequest::Chunks {
                digest: digest.clone(),
                first: 0,
                count: 0,
            },
            "chunks",
        ),
        (
            BlobRequest::Chunks {
                digest: digest.clone(),
                first: u32::MAX,
                count: 1000,
            },
            "chunks",
        ),
        (
            BlobRequest::Manifest {
                digest: "0".repeat(64),
            },
            "does not hold",
        ),
        (
            BlobRequest::Manifest {
                digest: "../../etc/passwd".into(),
            },
            "does not hold",
        ),
    ] {
        let (_, answer) = ask_blob(&control, peer, &request).await;
        match answer {
            BlobFrame::Refused { reason } => assert!(reason.contains(says), "{reason}"),
            other => panic!("{request:?} got {other:?}"),
        }
    }
    // The holder still serves a proper pull.
    let (household, listen) = (household.clone(), holder.listen.clone());
    let last = tokio::task::spawn_blocking(move || {
        let puller = TestNode::start(
            "puller",
            &household,
            NodeOptions {
                peers: vec![listen],
                ..NodeOptions::default()
            },
        );
        meet(&puller, &["holder", "puller"]);
        pull_watching(&puller, "smollm2-135m", |_| {})
    })
    .await
    .unwrap();
    assert_eq!(last["status"], "success", "{last}");
    drop(holder);
}
