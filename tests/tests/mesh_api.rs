//! The HTTP API as clients meet it: OpenAI-shaped errors with the right status for garbage and
//! mistakes, metrics, health, garbage on the peer port, and a clean shutdown that lets the reply
//! in flight finish.

use std::io::Write;
use std::time::Duration;

use hearth_tests::mesh::{
    chunk_text, http, post, wait_for, Household, NodeOptions, SseReader, TestNode,
};
use hearth_tests::TestModel;
use serde_json::{json, Value};

fn assert_openai_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], want_code, "{body}");
    assert!(!e["message"].as_str().unwrap().is_empty());
    assert!(e["type"].is_string());
}

#[test]
fn mistakes_get_openai_errors_with_the_right_status() {
    let node = TestNode::start(
        "api",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let chat = "/v1/chat/completions";
    let (s, b) = post(&node, chat, "{not json");
    assert_openai_error(s, &b, 400, "invalid_json");
    let (s, b) = post(&node, chat, vec![0xff_u8, 0xfe, 0x00, 0x13]);
    assert_openai_error(s, &b, 400, "invalid_json");
    let (s, b) = post(&node, chat, r#"{"messages": "hello"}"#);
    assert_openai_error(s, &b, 400, "invalid_json");
    let (s, b) = post(&node, chat, r#"{"messages": []}"#);
    assert_openai_error(s, &b, 400, "invalid_value");
    assert_eq!(b["error"]["param"], "messages");
    let (s, b) = post(
        &node,
        chat,
        r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#,
    );
    assert_openai_error(s, &b, 400, "invalid_value");
    let (s, b) = post(
        &node,
        chat,
        r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": -3}"#,
    );
    assert_openai_error(s, &b, 400, "invalid_value");
    let (s, b) = post(
        &node,
        chat,
        r#"{"messages": [{"role": "user", "content": "hi"}], "n": 3}"#,
    );
    assert_openai_error(s, &b, 400, "invalid_value");
    let (s, b) = post(
        &node,
        chat,
        r#"{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}"#,
    );
    assert_openai_error(s, &b, 404, "model_not_found");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("smollm2-135m"),
        "names what is available"
    );
    let (s, b) = post(&node, "/v1/completions", r#"{"prompt": ""}"#);
    assert_openai_error(s, &b, 400, "invalid_value");
    // A prompt longer than the context: a 400 with OpenAI's code for it, from the engine, typed
    // all the way (streamed or not: the engine checks before the reply starts).
    let long = "word ".repeat(6000);
    for stream in [false, true] {
        let (s, b) = post(
            &node,
            "/v1/completions",
            json!({"prompt": long, "max_tokens": 2, "stream": stream}).to_string(),
        );
        assert_openai_error(s, &b, 400, "context_length_exceeded");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("context"),
            "{b}"
        );
    }
    // Oversized bodies are refused, not buffered.
    let huge = vec![b'a'; 8 << 20];
    match http().post(node.url(chat)).body(huge).send() {
        Ok(r) => assert_eq!(r.status(), 413),
        // The node may answer 413 and close before the client finishes sending.
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    // Unknown endpoints and methods.
    let r = http().get(node.url("/v2/nothing")).send().unwrap();
    assert_eq!(r.status(), 404);
    let b: Value = r.json().unwrap();
    assert_eq!(b["error"]["code"], "not_found");
    assert_eq!(http().get(node.url(chat)).send().unwrap().status(), 405);
    // Still healthy, and it counted the errors.
    let h = node.get("/healthz");
    assert_eq!(h["status"], "ok");
    let metrics = http()
        .get(node.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "hearth_requests_total",
        "hearth_request_errors_total",
        "hearth_tokens_generated_total",
        "hearth_queue_depth",
        "hearth_peers",
        "hearth_tokens_per_second",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{metrics}"
        );
    }
    assert!(
        node.metric("hearth_request_errors_total") >= 12.0,
        "{metrics}"
    );
}

#[test]
fn garbage_on_the_peer_port_is_dropped_and_the_node_carries_on() {
    let node = TestNode::start("sturdy", &Household::new(), NodeOptions::default());
    let port: u16 = node.listen.split('/').nth(4).unwrap().parse().unwrap();
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0u8; 4096][..],
        &[0xffu8; 70000][..],
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(garbage);
    }
    // A flood of junk connections: counted, but not a log line each.
    for _ in 0..100 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(&[0u8; 64]);
    }
    let counted = wait_for(Duration::from_secs(30), || {
        (node.metric("hearth_refused_connections_total") >= 90.0).then_some(())
    });
    assert!(counted.is_some(), "{}", node.log());
    assert_eq!(node.get("/healthz")["status"], "ok");
    let lines = node.log().matches("refused a connection").count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} lines for 100 refusals:\n{}",
        node.log()
    );
}

#[test]
fn sigterm_lets_the_reply_in_flight_finish_then_exits_cleanly() {
    let mut node = TestNode::start(
        "leaving",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let mut stream = SseReader::open(
        &node.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 120, "temperature": 0, "stream": true}),
    );
    stream.next_event().unwrap();
    let data = node.data().to_owned();
    let pid = node.pid();
    let killer = std::thread::spawn(move || {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    });
    killer.join().unwrap();
    // New requests are turned away while the old reply completes.
    std::thread::sleep(Duration::from_millis(200));
    let (s, b) = post(
        &node,
        "/v1/completions",
        r#"{"prompt": "Hi", "max_tokens": 2}"#,
    );
    assert_openai_error(s, &b, 503, "shutting_down");
    let mut last = None;
    let mut text = String::new();
    while let Some(ev) = stream.next_event() {
        text.push_str(chunk_text(&ev));
        last = Some(ev);
    }
    let last = last.expect("the reply went on");
    assert_eq!(last["usage"]["completion_tokens"], 120, "{last}");
    let status = node.terminate();
    assert!(
        status.is_none_or(|s| s.success()),
        "{status:?}\n{}",
        node.log()
    );
    assert!(
        !data.join("node.json").exists(),
        "the runtime file is removed at exit"
    );
    assert!(node.log().contains("stopped"), "{}", node.log());
}
