//! The HTTP API against slow and greedy clients: headers that never finish and bodies that never
//! arrive end their connections, a body declared larger than the limit is refused before it is
//! read, and one address cannot hold more than its share of connections. The node carries on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hearth_tests::mesh::{Household, NodeOptions, TestNode};

/// Everything the server sends until it closes the connection (bounded by `limit`); `None` if
/// it is still open then.
fn until_closed(mut s: TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&all).into_owned()),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&all).into_owned())
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn slow_and_greedy_clients_are_cut_off_and_the_node_carries_on() {
    let node = TestNode::start("limits", &Household::new(), NodeOptions::default());
    let connect = || TcpStream::connect(&node.api).unwrap();

    // Declared far over the limit: refused at once, before the body.
    let mut s = connect();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000000000\r\n\r\n"
    )
    .unwrap();
    let answer = until_closed(s, Duration::from_secs(10)).expect("an answer at once");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    std::thread::scope(|scope| {
        // Headers that never finish: the connection is closed.
        let slow_head = scope.spawn(|| {
            let mut s = connect();
            write!(s, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").unwrap();
            until_closed(s, Duration::from_secs(60))
        });
        // A body that never arrives: 408, and the connection is closed.
        let slow_body = scope.spawn(|| {
            let mut s = connect();
            write!(
                s,
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"messages\""
            )
            .unwrap();
            until_closed(s, Duration::from_secs(90))
        });
        assert!(
            slow_head.join().unwrap().is_some(),
            "slow headers kept the connection"
        );
        let answer = slow_body
            .join()
            .unwrap()
            .expect("slow body kept the connection");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    });

    // One address holds at most 64 connections: the next is closed at once.
    let held: Vec<TcpStream> = (0..64).map(|_| connect()).collect();
    let extra = until_closed(connect(), Duration::from_secs(5));
    assert_eq!(extra.as_deref(), Some(""), "a 65th connection was served");
    drop(held);
    let healthy = hearth_tests::mesh::wait_for(Duration::from_secs(10), || {
        let h = std::panic::catch_unwind(|| node.get("/healthz")).ok()?;
        (h["status"] == "ok").then_some(())
    });
    assert!(healthy.is_some(), "{}", node.log());
    assert!(node.log().contains("holds too many"), "{}", node.log());
}
