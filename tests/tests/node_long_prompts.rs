//! A long prompt does not hold up the node: it runs in chunks, and another chat's steps take
//! their turn between them, so a short chat finishes while the long prompt is still being
//! read; and a long prompt whose client leaves stops within a chunk.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hearth_tests::mesh::{post, wait_for, Household, NodeOptions, TestNode};
use hearth_tests::TestModel;
use serde_json::json;

fn node() -> TestNode {
    TestNode::start(
        "long",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2).with_args(&["--load", "smollm2-135m"]),
    )
}

/// Sends a streamed completion of a prompt of about 3,800 tokens (the node's context is 4,096)
/// and reads the reply's status line: the prompt is then being read.
fn long_request(node: &TestNode) -> TcpStream {
    let prompt =
        "The boiler in the cellar was serviced in March and the radiators bled in October. "
            .repeat(190);
    let body =
        json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "stream": true}).to_string();
    let addr = node.api.clone();
    let mut client = TcpStream::connect(&addr).unwrap();
    write!(
        client,
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 12];
    client.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    client
}

/// What the server has sent on `client` so far (without waiting).
fn sent_so_far(client: &mut TcpStream) -> String {
    client.set_nonblocking(true).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = client.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// The line of `node`'s log saying a prompt stopped, once there is one.
fn stopped_line(node: &TestNode) -> String {
    wait_for(Duration::from_secs(120), || {
        node.log()
            .lines()
            .find(|l| l.contains("prompt processing stopped"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("the prompt ran on:\n{}", node.log()))
}

/// A `name=N` field of a log line.
fn field(line: &str, name: &str) -> usize {
    let at = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_short_chat_finishes_while_a_long_prompt_is_still_being_read() {
    let node = node();
    let mut long = long_request(&node);
    let (status, reply) = post(
        &node,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0})
            .to_string(),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["usage"]["completion_tokens"], 8, "{reply}");
    // The long reply has not produced its first token yet: the short one did not wait for it.
    let sent = sent_so_far(&mut long);
    assert!(
        !sent.contains("data:"),
        "the long prompt was done first: {sent}"
    );
    drop(long);
    let stopped = stopped_line(&node);
    assert!(
        field(&stopped, "done") < field(&stopped, "total"),
        "{stopped}"
    );
}

#[test]
fn a_long_prompt_whose_client_leaves_stops_within_a_chunk() {
    let node = node();
    drop(long_request(&node));
    let stopped = stopped_line(&node);
    assert!(stopped.contains("the requester went away"), "{stopped}");
    assert!(
        field(&stopped, "done") < field(&stopped, "total"),
        "{stopped}"
    );
    assert_eq!(node.get("/healthz")["status"], "ok");
}
