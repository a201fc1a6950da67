//! A long prompt does not hold up the node: it runs in chunks, and another chat's steps take
//! their turn between them, so a short chat finishes while the long prompt is still being
//! read; and a long prompt whose client leaves stops within a chunk.

use std::io::Write;
use std::time::{Duration, Instant};

use hearth_tests::mesh::{post, wait_for, Household, NodeOptions, SseReader, TestNode};
use hearth_tests::TestModel;
use serde_json::json;

/// A prompt of about 3,900 tokens (the node's context is 4,096).
fn long_prompt() -> String {
    "The boiler in the cellar was serviced in March and the radiators bled in October. "
        .repeat(230)
}

fn node() -> TestNode {
    TestNode::start(
        "long",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2).with_args(&["--load", "smollm2-135m"]),
    )
}

#[test]
fn a_short_chat_finishes_while_a_long_prompt_is_still_being_read() {
    let node = node();
    let url = node.url("/v1/completions");
    let long = std::thread::spawn(move || {
        let body = json!({"prompt": long_prompt(), "max_tokens": 2, "temperature": 0, "stream": true});
        let mut s = SseReader::open(&url, &body);
        s.next_event().expect("a first token");
        let first = Instant::now();
        s.rest();
        first
    });
    // Once the long prompt is running, a short chat.
    let running = wait_for(Duration::from_secs(30), || {
        (node.metric("hearth_active_jobs") >= 1.0).then_some(())
    });
    assert!(running.is_some(), "{}", node.log());
    let (status, reply) = post(
        &node,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0})
            .to_string(),
    );
    let short_done = Instant::now();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["usage"]["completion_tokens"], 8, "{reply}");
    let long_first = long.join().unwrap();
    assert!(
        short_done < long_first,
        "the short chat waited for the whole long prompt"
    );
}

#[test]
fn a_long_prompt_whose_client_leaves_stops_within_a_chunk() {
    let node = node();
    let body = json!({"prompt": long_prompt(), "max_tokens": 2, "stream": true}).to_string();
    let addr = node.api.clone();
    let mut client = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        client,
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let running = wait_for(Duration::from_secs(30), || {
        (node.metric("hearth_active_jobs") >= 1.0).then_some(())
    });
    assert!(running.is_some(), "{}", node.log());
    drop(client);
    let stopped = wait_for(Duration::from_secs(120), || {
        let log = node.log();
        log.lines()
            .find(|l| l.contains("prompt processing stopped"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("the prompt ran on:\n{}", node.log()));
    assert!(stopped.contains("the requester went away"), "{stopped}");
    // Stopped before its end: `done` is below `total`.
    let field = |name: &str| -> usize {
        let at = stopped.find(&format!("{name}=")).unwrap() + name.len() + 1;
        stopped[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("done") < field("total"), "{stopped}");
    assert_eq!(node.get("/healthz")["status"], "ok");
}
