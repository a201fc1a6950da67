//! The household's history on every device: a conversation made through one node appears on the
//! others with its messages in the same order (also through a node in between), the change stream
//! announces it, edits made apart merge when devices meet again, nothing reaches a node of
//! another household or a revoked device, and a peer's bad input is refused at the wire.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use hearth_protocol::history;
use hearth_protocol::sync::{parts as parts_of, PartKind, Reassembler, MAX_SYNC_PART};
use hearth_protocol::{encode, SyncFrame, PROTOCOL_VERSION, SYNC_PROTOCOL};
use hearth_tests::history::{chat_in, conversation, conversations, messages, wait_for_copy};
use hearth_tests::mesh::{
    household_client, http, read_message, wait_for, Household, NodeOptions, TestNode,
};
use hearth_tests::TestModel;
use libp2p::StreamProtocol;
use serde_json::{json, Value};

const SYNC: Duration = Duration::from_secs(30);

/// Reads `/api/conversations/events` on a thread; events arrive on the channel.
fn events(node: &TestNode) -> mpsc::Receiver<Value> {
    let url = node.url("/api/conversations/events");
    let (tx, rx) = mpsc::channel();
    let response = reqwest::blocking::Client::new()
        .get(url)
        .send()
        .expect("event stream");
    assert_eq!(response.status(), 200);
    std::thread::spawn(move || {
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data: ") {
                if tx
                    .send(serde_json::from_str(data).expect("event is JSON"))
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

#[test]
fn a_conversation_made_on_one_node_appears_on_every_node_in_the_same_order() {
    let household = Household::new();
    let a = TestNode::start("a", &household, NodeOptions::holding(TestModel::SmolLm2));
    let b = TestNode::start("b", &household, NodeOptions::dialing(&[&a]));
    let c = TestNode::start("c", &household, NodeOptions::dialing(&[&a]));
    for n in [&b, &c] {
        assert!(n.wait_for_members(&["a", n.name.as_str()], Duration::from_secs(20)));
    }
    let c_events = events(&c);
    // Made through b's API (served by a); c hears of it through a.
    let first = chat_in(&b, "new", "Name a colour.", 8);
    let id = first["hearth"]["conversation"].as_str().unwrap().to_owned();
    chat_in(&b, &id, "And another one?", 8);
    let on_b = conversation(&b, &id).expect("b recorded it");
    let stored = messages(&on_b);
    assert_eq!(stored.len(), 4, "{on_b}");
    assert_eq!(
        stored.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        ["user", "assistant", "user", "assistant"]
    );
    assert_eq!(stored[0].1, "Name a colour.");
    assert_eq!(
        stored[1].1,
        first["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(stored.iter().all(|m| m.2 == "done"), "{stored:?}");
    for n in [&a, &c] {
        assert!(
            wait_for_copy(n, &id, &on_b, SYNC),
            "{} lacks the conversation:\n{}",
            n.name,
            n.log()
        );
        // The same messages, ids and all, in the same order.
        assert_eq!(conversation(n, &id).unwrap()["messages"], on_b["messages"]);
    }
    let announced = (0..200).find_map(|_| {
        let e = c_events.recv_timeout(SYNC).ok()?;
        (e["conversation"] == json!(id)).then_some(())
    });
    assert!(announced.is_some(), "c's event stream never named {id}");
}

#[test]
fn edits_made_apart_merge_when_the_devices_meet_again() {
    let household = Household::new();
    let a = TestNode::start("a", &household, NodeOptions::holding(TestModel::SmolLm2));
    let mut b = TestNode::start("b", &household, NodeOptions::dialing(&[&a]));
    assert!(b.wait_for_members(&["a", "b"], Duration::from_secs(20)));
    let id = chat_in(&a, "new", "Name a colour.", 6)["hearth"]["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    let on_a = conversation(&a, &id).unwrap();
    assert!(wait_for_copy(&b, &id, &on_a, SYNC), "{}", b.log());
    let question = on_a["messages"][0]["id"].as_str().unwrap().to_owned();

    // b goes offline: restarted with no peers.
    b.restart(&NodeOptions::default());
    let edit = |n: &TestNode, text: &str| {
        let r = http()
            .patch(n.url(&format!("/api/conversations/{id}/messages/{question}")))
            .json(&json!({ "text": text }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", n.log());
    };
    let create = |n: &TestNode, title: &str| -> String {
        let r = http()
            .post(n.url("/api/conversations"))
            .json(&json!({ "title": title }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    edit(&a, "Name a bright colour.");
    edit(&b, "Name a colour, please.");
    let r = http()
        .patch(a.url(&format!("/api/conversations/{id}")))
        .json(&json!({"title": "colours"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let only_a = create(&a, "made on a");
    let only_b = create(&b, "made on b");

    // Back online.
    b.restart(&NodeOptions::dialing(&[&a]));
    let ids = |n: &TestNode| -> Vec<String> {
        let mut v: Vec<String> = conversations(n)
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let mut want = vec![id.clone(), only_a, only_b];
    want.sort();
    let merged = wait_for(SYNC, || {
        let (ca, cb) = (conversation(&a, &id)?, conversation(&b, &id)?);
        (ids(&a) == want
            && ids(&b) == want
            && ca["title"] == "colours"
            && cb["title"] == "colours"
            && ca["messages"] == cb["messages"]
            && messages(&ca)[0].1.contains("bright")
            && messages(&ca)[0].1.contains("please"))
        .then_some(ca)
    });
    let merged = merged.unwrap_or_else(|| {
        panic!(
            "a: {:?}\nb: {:?}\n{}",
            conversation(&a, &id),
            conversation(&b, &id),
            b.log()
        )
    });
    assert_eq!(messages(&merged)[0].1, "Name a bright colour, please.");
    assert_eq!(conversations(&a), conversations(&b));
}

#[test]
fn another_household_and_a_revoked_device_receive_nothing() {
    let household = Household::new();
    let a = TestNode::start("a", &household, NodeOptions::default());
    let b = TestNode::start("b", &household, NodeOptions::dialing(&[&a]));
    let c = TestNode::start("c", &household, NodeOptions::dialing(&[&a]));
    let stranger = TestNode::start("stranger", &Household::new(), NodeOptions::dialing(&[&a]));
    for n in [&b, &c] {
        assert!(n.wait_for_members(&["a", n.name.as_str()], Duration::from_secs(20)));
    }
    let create = |title: &str| -> Value {
        let r = http()
            .post(a.url("/api/conversations"))
            .json(&json!({ "title": title }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().unwrap()
    };
    let before = create("before");
    let before_id = before["id"].as_str().unwrap();
    let on_a = conversation(&a, before_id).unwrap();
    assert!(wait_for_copy(&b, before_id, &on_a, SYNC), "{}", b.log());

    let r = http()
        .post(a.url("/api/revoke"))
        .json(&json!({"peers": [b.peer_id]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(a.wait_for_members(&["a", "c"], Duration::from_secs(20)));
    let after = create("after");
    let after_id = after["id"].as_str().unwrap();
    let on_a = conversation(&a, after_id).unwrap();
    // c, still a member, gets it: by then b would have too, had it been sent.
    assert!(wait_for_copy(&c, after_id, &on_a, SYNC), "{}", c.log());
    assert!(
        conversation(&b, after_id).is_none(),
        "the revoked device got it"
    );
    assert_eq!(conversations(&b).len(), 1);
    assert!(conversations(&stranger).is_empty());
}

/// Frames a raw household peer sends on the sync protocol.
async fn send_frame(s: &mut libp2p::Stream, frame: &SyncFrame) {
    use futures::AsyncWriteExt;
    s.write_all(&encode(frame).unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_everything_whole_and_its_bad_input_is_refused() {
    let household = Household::new();
    let node = TestNode::start("home", &household, NodeOptions::default());
    let kept = http()
        .post(node.url("/api/conversations"))
        .json(&json!({"title": "kept"}))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (control, peer) = household_client(&household, &node).await;
    let mut s = control
        .clone()
        .open_stream(peer, StreamProtocol::new(SYNC_PROTOCOL))
        .await
        .expect("sync stream opens");
    send_frame(
        &mut s,
        &SyncFrame::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .await;
    let hello: SyncFrame = read_message(&mut s).await.expect("a hello");
    assert_eq!(
        hello,
        SyncFrame::Hello {
            version: PROTOCOL_VERSION
        }
    );
    // An empty inventory: this peer has nothing, so every document comes whole.
    send_frame(
        &mut s,
        &SyncFrame::Inventory {
            docs: vec![],
            last: true,
        },
    )
    .await;
    let mut whole = std::collections::HashMap::new();
    let mut parts = Reassembler::default();
    for _ in 0..1000 {
        match read_message::<SyncFrame>(&mut s).await.expect("frames") {
            SyncFrame::Part {
                doc,
                kind,
                bytes,
                last,
            } => {
                if let Some(p) = parts.push(doc, kind, bytes, last).unwrap() {
                    assert_eq!(p.kind, PartKind::Document);
                    whole.insert(p.doc, p.bytes);
                }
            }
            SyncFrame::Inventory { docs, .. } => {
                assert!(docs.contains(&"index".to_owned()) && docs.contains(&kept));
            }
            other => panic!("{other:?}"),
        }
        if whole.len() == 2 {
            break;
        }
    }
    let index = automerge::AutoCommit::load(&whole["index"]).expect("the index loads");
    let titles: Vec<String> = history::summaries(&index)
        .into_iter()
        .map(|c| c.title)
        .collect();
    assert_eq!(titles, ["kept"]);
    automerge::AutoCommit::load(&whole[&kept]).expect("the conversation loads");

    // Garbage sync messages, documents off the schema, and ids that are not ids: refused.
    let mut off_schema = automerge::AutoCommit::new();
    automerge::transaction::Transactable::put(&mut off_schema, automerge::ROOT, "hearth", "nope")
        .unwrap();
    let mut evil_index = history::new_index();
    history::add_conversation(&mut evil_index, history::Id::random(), "x", 1).unwrap();
    let entries = match automerge::ReadDoc::get(&evil_index, automerge::ROOT, "conversations") {
        Ok(Some((_, id))) => id,
        other => panic!("{other:?}"),
    };
    automerge::transaction::Transactable::put(&mut evil_index, &entries, "not-an-id", 7).unwrap();
    let bad: [(String, PartKind, Vec<u8>); 4] = [
        ("index".into(), PartKind::Sync, b"junk".to_vec()),
        (kept.clone(), PartKind::Document, off_schema.save()),
        ("index".into(), PartKind::Document, evil_index.save()),
        (
            "../../etc/passwd".into(),
            PartKind::Document,
            b"junk".to_vec(),
        ),
    ];
    for (doc, kind, bytes) in bad {
        for f in parts_of(&doc, kind, &bytes) {
            send_frame(&mut s, &f).await;
        }
    }
    let logged = wait_for(Duration::from_secs(20), || {
        (node.log().matches("refused history input").count() >= 4).then_some(())
    });
    assert!(logged.is_some(), "{}", node.log());
    // Framing broken (a part over the limit): the session ends; the node carries on.
    send_frame(
        &mut s,
        &SyncFrame::Part {
            doc: "index".into(),
            kind: PartKind::Sync,
            bytes: vec![0; MAX_SYNC_PART + 1],
            last: true,
        },
    )
    .await;
    // Answers already on their way may come first; then the stream ends.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..1000 {
            if read_message::<SyncFrame>(&mut s).await.is_none() {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(closed, Ok(true)), "{closed:?}");
    let list = conversations(&node);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["title"], "kept");
    assert_eq!(node.get("/healthz")["status"], "ok");
    assert!(history_dir_is_clean(&node), "{}", node.log());
}

/// No quarantined or stray files: what was refused never reached the disk.
fn history_dir_is_clean(node: &TestNode) -> bool {
    std::fs::read_dir(node.data().join("history"))
        .unwrap()
        .all(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".automerge")
        })
}
