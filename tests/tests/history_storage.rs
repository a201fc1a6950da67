//! The history on one device's disk: nothing acknowledged to a client is lost when the node is
//! killed at any moment, a corrupt file is quarantined while the rest loads, and exports are what
//! they claim (the Automerge one loads in the `automerge` crate).

use hearth_tests::history::{chat_in, conversation, conversations, messages};
use hearth_tests::mesh::{chunk_text, Household, NodeOptions, SseReader, TestNode};
use hearth_tests::TestModel;
use serde_json::json;

/// A small deterministic generator (the kill points are the same on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

#[test]
fn kill_9_during_replies_loses_nothing_acknowledged() {
    let opts = NodeOptions::holding(TestModel::SmolLm2);
    let mut node = TestNode::start("kitchen", &Household::new(), opts.clone());
    let mut rng = Lcg(7);
    // (conversation, the reply the client got in full)
    let mut finished: Vec<(String, String)> = Vec::new();
    // (conversation, every piece of text the server sent before it died)
    let mut cut: Vec<(String, String)> = Vec::new();
    for round in 0..4 {
        let done = chat_in(&node, "new", &format!("Count to {}.", round + 3), 8);
        finished.push((
            done["hearth"]["conversation"].as_str().unwrap().to_owned(),
            done["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
        let mut stream = SseReader::open(
            &node.url("/v1/chat/completions"),
            &json!({
                "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
                "max_tokens": 200,
                "temperature": 0,
                "stream": true,
                "hearth": {"conversation": "new"},
            }),
        );
        // The headers came: the request is recorded.
        let id = stream.headers["x-hearth-conversation"]
            .to_str()
            .unwrap()
            .to_owned();
        let wait = 1 + rng.next(40);
        let mut text = String::new();
        for _ in 0..wait {
            match stream.next_event() {
                Some(e) => text.push_str(chunk_text(&e)),
                None => break,
            }
        }
        node.kill();
        // Whatever was already on its way.
        while let Some(e) = stream.next_event() {
            text.push_str(chunk_text(&e));
        }
        cut.push((id, text));
        node.restart(&opts);
        for (id, reply) in &finished {
            let c = conversation(&node, id)
                .unwrap_or_else(|| panic!("round {round}: {id} lost\n{}", node.log()));
            let m = messages(&c);
            assert_eq!(m.len(), 2, "{c}");
            assert_eq!(m[1], ("assistant".into(), reply.clone(), "done".into()));
        }
        for (id, sent) in &cut {
            let c = conversation(&node, id)
                .unwrap_or_else(|| panic!("round {round}: {id} lost\n{}", node.log()));
            let m = messages(&c);
            assert_eq!(m[0].1, "Tell me a long story about a lighthouse.");
            assert!(
                sent.starts_with(&m[1].1),
                "saved {:?}, sent {sent:?}",
                m[1].1
            );
            assert_eq!(m[1].2, "error", "marked as not finished: {c}");
        }
    }
}

#[test]
fn a_corrupt_file_is_quarantined_and_exports_round_trip() {
    let opts = NodeOptions::holding(TestModel::SmolLm2);
    let mut node = TestNode::start("study", &Household::new(), opts.clone());
    let ids: Vec<String> = (0..2)
        .map(|i| {
            chat_in(&node, "new", &format!("Say {i}."), 4)["hearth"]["conversation"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let keep = conversation(&node, &ids[1]).unwrap();

    // The Automerge export loads in the automerge crate and holds the same messages.
    let bytes = hearth_tests::mesh::http()
        .get(node.url(&format!(
            "/api/conversations/{}/export?format=automerge",
            ids[1]
        )))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let doc = automerge::AutoCommit::load(&bytes).expect("a standard Automerge document");
    let texts: Vec<String> = hearth_protocol::history::messages(&doc)
        .into_iter()
        .map(|m| m.text)
        .collect();
    let want: Vec<String> = messages(&keep).into_iter().map(|m| m.1).collect();
    assert_eq!(texts, want);
    let out = node.cli(&["history", "export", &ids[1][..8], "--format", "markdown"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.starts_with("# Say 1."), "{md}");
    assert!(md.contains(&want[1]), "{md}");
    let out = node.cli(&["history", "export", &ids[1], "--format", "pdf"]);
    assert!(!out.status.success());

    // One file damaged while the node is down.
    assert!(node.terminate().is_some_and(|s| s.success()));
    let history = node.data().join("history");
    std::fs::write(
        history.join(format!("{}.automerge", ids[0])),
        b"\x85\x6f\x4a\x83 not really automerge",
    )
    .unwrap();
    node.restart(&opts);
    assert_eq!(
        conversation(&node, &ids[1]).unwrap()["messages"],
        keep["messages"]
    );
    assert_eq!(conversations(&node).len(), 2, "the index still lists both");
    // The damaged conversation (loaded at its first use) reads as empty, its file is set aside,
    // and it can be written again.
    assert!(messages(&conversation(&node, &ids[0]).unwrap()).is_empty());
    assert!(node.log().contains("quarantined"), "{}", node.log());
    let quarantined = std::fs::read_dir(history.join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 1);
    chat_in(&node, &ids[0], "Again.", 2);
    assert_eq!(messages(&conversation(&node, &ids[0]).unwrap()).len(), 2);
}
