//! Discovery over real multicast: nodes in separate network namespaces, joined by a bridge that
//! this test builds (and removes), find each other with mDNS and no `--peer`; a node of another
//! household on the same LAN is ignored; a node that leaves is dropped. Needs root (CI runs as
//! root); elsewhere the test says so and passes without running.

use std::process::Command;
use std::time::{Duration, Instant};

use hearth_tests::mesh::{wait_for, Household, NodeOptions, TestNode};
use serde_json::Value;

/// Namespaces and a bridge, deleted on drop (after the nodes inside them are gone).
struct Lan {
    names: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    /// `hosts` namespaces on 10.77.0.0/24, each with a veth into a bridge in its own namespace.
    fn new(hosts: usize) -> Lan {
        let tag = std::process::id();
        let bridge = format!("hb{tag}");
        let mut lan = Lan {
            names: vec![bridge.clone()],
        };
        ip(&["netns", "add", &bridge]);
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for i in 1..=hosts {
            let ns = format!("h{tag}-{i}");
            ip(&["netns", "add", &ns]);
            lan.names.push(ns.clone());
            let port = format!("p{i}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &bridge,
            ]);
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &bridge, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        lan
    }

    fn host(&self, i: usize) -> String {
        self.names[i].clone()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn can_make_namespaces() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    root && has_ip
}

fn peer_names(node: &TestNode) -> Vec<String> {
    let out = node.cli(&["peers", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut names: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["card"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[test]
fn nodes_on_one_lan_find_each_other_over_multicast() {
    if !can_make_namespaces() {
        eprintln!("skipped: needs root and iproute2 to build network namespaces (CI has both)");
        return;
    }
    let lan = Lan::new(4);
    let home = Household::new();
    let in_ns = |i: usize| NodeOptions {
        netns: Some(lan.host(i)),
        ..Default::default()
    };
    let start = Instant::now();
    let n1 = TestNode::start("den", &home, in_ns(1));
    let n2 = TestNode::start("kitchen", &home, in_ns(2));
    let mut n3 = TestNode::start("attic", &home, in_ns(3));
    let n4 = TestNode::start("neighbour", &Household::new(), in_ns(4));

    let all = ["attic", "den", "kitchen"].map(String::from).to_vec();
    let found = wait_for(Duration::from_secs(20), || {
        [&n1, &n2, &n3]
            .iter()
            .all(|n| peer_names(n) == all)
            .then_some(())
    });
    assert!(
        found.is_some(),
        "den sees {:?}\n{}\nkitchen:\n{}",
        peer_names(&n1),
        n1.log(),
        n2.log()
    );
    eprintln!(
        "three nodes found each other {:.2} s after the first started",
        start.elapsed().as_secs_f64()
    );
    // The neighbour's household differs: ignored by every side.
    assert_eq!(peer_names(&n4), ["neighbour"]);

    // attic shuts down cleanly (exit 0): den drops it at once.
    let left = Instant::now();
    let status = n3.terminate().expect("attic exits");
    assert!(status.success(), "{status:?}\n{}", n3.log());
    let gone = wait_for(Duration::from_secs(10), || {
        (peer_names(&n1) == ["den", "kitchen"]).then_some(())
    });
    assert!(gone.is_some(), "den still sees {:?}", peer_names(&n1));
    eprintln!(
        "den dropped attic {:.2} s after it was told to stop",
        left.elapsed().as_secs_f64()
    );

    // kitchen's cable is cut: no goodbye, no closed connection; den notices within 10 s.
    let cut = Instant::now();
    ip(&["-n", &lan.host(2), "link", "set", "eth0", "down"]);
    let gone = wait_for(Duration::from_secs(12), || {
        (peer_names(&n1) == ["den"]).then_some(())
    });
    assert!(
        gone.is_some(),
        "den still sees {:?}\n{}",
        peer_names(&n1),
        n1.log()
    );
    let after = cut.elapsed();
    eprintln!(
        "den dropped kitchen {:.2} s after its cable was cut",
        after.as_secs_f64()
    );
    assert!(after < Duration::from_secs(12));
    drop((n1, n2, n3, n4));
    drop(lan);
}
