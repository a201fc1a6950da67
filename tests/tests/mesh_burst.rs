//! A burst of chats sent to one node spreads over two idle holders by their free capacity: the
//! node counts what it sent each holder until the holder's next card, instead of sending all of a
//! burst to whichever looked idlest at the last poll.

use std::time::Duration;

use hearth_tests::mesh::{post, Household, NodeOptions, TestNode};
use hearth_tests::TestModel;
use serde_json::json;

#[test]
fn a_burst_of_32_chats_splits_evenly_over_two_idle_holders() {
    let household = Household::new();
    let holding =
        || NodeOptions::holding(TestModel::SmolLm2).with_args(&["--load", "smollm2-135m"]);
    let a = TestNode::start("holder-a", &household, holding());
    let b = TestNode::start(
        "holder-b",
        &household,
        NodeOptions {
            peers: vec![a.listen.clone()],
            ..holding()
        },
    );
    let entry = TestNode::start("entry", &household, NodeOptions::dialing(&[&a, &b]));
    assert!(
        entry.wait_for_members(&["entry", "holder-a", "holder-b"], Duration::from_secs(30)),
        "{}",
        entry.log()
    );
    let served: Vec<String> = std::thread::scope(|s| {
        let chats: Vec<_> = (0..32)
            .map(|i| {
                let entry = &entry;
                s.spawn(move || {
                    let body = json!({
                        "messages": [{"role": "user", "content": format!("Say the number {i}.")}],
                        "max_tokens": 4, "temperature": 0,
                    });
                    let (status, reply) = post(entry, "/v1/chat/completions", body.to_string());
                    assert_eq!(status, 200, "{reply}");
                    reply["hearth"]["nodes"][0].as_str().unwrap().to_owned()
                })
            })
            .collect();
        chats.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let on_a = served.iter().filter(|n| *n == "holder-a").count();
    let on_b = served.iter().filter(|n| *n == "holder-b").count();
    assert_eq!(on_a + on_b, 32, "{served:?}");
    assert!(
        (14..=18).contains(&on_a),
        "{on_a} on holder-a, {on_b} on holder-b"
    );
}
