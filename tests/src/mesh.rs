//! Real `hearth node` processes for mesh tests: households, nodes on loopback (or inside a
//! network namespace), their HTTP APIs, and their logs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{hearth, hearth_bin, TestModel};

/// A household: the join code from `hearth household init`.
#[derive(Debug, Clone)]
pub struct Household {
    pub code: String,
}

impl Household {
    /// A new household with a fresh secret.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = hearth(dir.path(), &["household", "init"], "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = stdout
            .split_whitespace()
            .find(|w| w.starts_with("hearth-"))
            .expect("init prints a join code")
            .to_owned();
        Household { code }
    }
}

impl Default for Household {
    fn default() -> Self {
        Self::new()
    }
}

/// How to start a node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Models to import into its cache first.
    pub models: Vec<TestModel>,
    /// Peers' multiaddrs for `--peer`.
    pub peers: Vec<String>,
    /// More `hearth node` arguments.
    pub args: Vec<String>,
    /// Run inside this network namespace (`ip netns exec NS`), with mDNS and default ports.
    pub netns: Option<String>,
    /// More environment variables for the node process.
    pub env: Vec<(String, String)>,
}

impl NodeOptions {
    /// A node holding `model`.
    pub fn holding(model: TestModel) -> Self {
        NodeOptions {
            models: vec![model],
            ..Default::default()
        }
    }

    /// A node that dials `peers`.
    pub fn dialing(peers: &[&TestNode]) -> Self {
        NodeOptions {
            peers: peers.iter().map(|p| p.listen.clone()).collect(),
            ..Default::default()
        }
    }

    /// These options plus an environment variable for the node process.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// These options plus `hearth node` arguments.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// Nodes started in order, each dialing the ones before it (so every pair is connected, as split
/// stages need), each with every other's card before this returns.
pub fn connected(household: &Household, nodes: Vec<(&str, NodeOptions)>) -> Vec<TestNode> {
    let names: Vec<&str> = nodes.iter().map(|(name, _)| *name).collect();
    let mut started: Vec<TestNode> = Vec::new();
    for (name, mut opts) in nodes {
        opts.peers.extend(started.iter().map(|n| n.listen.clone()));
        started.push(TestNode::start(name, household, opts));
    }
    for n in &started {
        assert!(
            n.wait_for_members(&names, Duration::from_secs(30)),
            "{}",
            n.log()
        );
    }
    started
}

/// A node holding SmolLM2 (`holder`) and a node without models that dials it (`entry`), each
/// with the other's card.
pub fn holder_and_entry(holder: &str) -> (TestNode, TestNode) {
    let household = Household::new();
    let h = TestNode::start(holder, &household, NodeOptions::holding(TestModel::SmolLm2));
    let entry = TestNode::start("entry", &household, NodeOptions::dialing(&[&h]));
    let both = [holder, "entry"];
    assert!(
        entry.wait_for_members(&both, Duration::from_secs(20)),
        "{}",
        entry.log()
    );
    assert!(
        h.wait_for_members(&both, Duration::from_secs(20)),
        "{}",
        h.log()
    );
    (h, entry)
}

/// A running `hearth node` process; killed when dropped.
#[derive(Debug)]
pub struct TestNode {
    pub name: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub api: String,
    pub listen: String,
    pub peer_id: String,
    netns: Option<String>,
}

/// Bounded wait: polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking HTTP client for node APIs.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// Posts `body` (as JSON, whatever it holds) to `path` on `node`: the status, and the answer as
/// JSON (null if it is not).
pub fn post(node: &TestNode, path: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, Value) {
    let r = http()
        .post(node.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

impl TestNode {
    /// Joins `household` in a fresh data directory, imports `opts.models`, starts the node
    /// (loopback, mDNS off, unless in a namespace) and waits until its API answers.
    pub fn start(name: &str, household: &Household, opts: NodeOptions) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let join = hearth(dir.path(), &["household", "join", &household.code], "");
        assert!(
            join.status.success(),
            "{}",
            String::from_utf8_lossy(&join.stderr)
        );
        for m in &opts.models {
            let path = m.path();
            let out = hearth(
                dir.path(),
                &[
                    "models",
                    "import",
                    path.to_str().unwrap(),
                    "--name",
                    m.name(),
                ],
                "",
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut node = TestNode {
            name: name.to_owned(),
            dir,
            child: None,
            api: String::new(),
            listen: String::new(),
            peer_id: String::new(),
            netns: opts.netns.clone(),
        };
        node.launch(&opts);
        node
    }

    /// Starts the `hearth node` process on this node's data directory and waits for its API.
    fn launch(&mut self, opts: &NodeOptions) {
        let name = self.name.clone();
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(hearth_bin());
                c
            }
            None => Command::new(hearth_bin()),
        };
        cmd.arg("node").args(["--name", &name]);
        if opts.netns.is_none() {
            cmd.args([
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--api",
                "127.0.0.1:0",
                "--mdns",
                "false",
            ]);
        }
        for p in &opts.peers {
            cmd.args(["--peer", p]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .expect("log file");
        cmd.args(&opts.args)
            .args(["--threads", "1"])
            .env("HEARTH_DATA_DIR", self.dir.path())
            .env("HEARTH_LOG", "info,hearth_node=debug,libp2p=warn")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("hearth node starts"));
        let info: Value = wait_for(Duration::from_secs(30), || {
            let bytes = std::fs::read(self.dir.path().join("node.json")).ok()?;
            serde_json::from_slice(&bytes).ok()
        })
        .unwrap_or_else(|| panic!("node {name} did not start:\n{}", self.log()));
        self.api = info["api"].as_str().unwrap().to_owned();
        self.listen = info["listen"][0].as_str().unwrap_or_default().to_owned();
        self.peer_id = info["peer_id"].as_str().unwrap().to_owned();
    }

    /// Starts the node again on the same data directory (after `kill` or `terminate`, or
    /// killing it first), with `opts` (its models are already imported).
    pub fn restart(&mut self, opts: &NodeOptions) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.path().join("node.json"));
        self.launch(opts);
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    /// `http://API/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// GET `path` as JSON.
    pub fn get(&self, path: &str) -> Value {
        http()
            .get(self.url(path))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.name))
    }

    /// The value of a metric without labels from `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = http()
            .get(self.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET /metrics on {}: {e}", self.name));
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    }

    /// Names of the nodes this node has cards for (itself included).
    pub fn member_names(&self) -> Vec<String> {
        let peers = self.get("/api/peers");
        peers
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["card"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until this node has cards for exactly `names` (bounded).
    pub fn wait_for_members(&self, names: &[&str], limit: Duration) -> bool {
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_for(limit, || {
            let mut got = self.member_names();
            got.sort();
            (got == want).then_some(())
        })
        .is_some()
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        wait_for(Duration::from_secs(20), || c.try_wait().ok().flatten())
    }

    /// Runs the `hearth` CLI against this node's data directory (inside its namespace if any).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(hearth_bin());
                c
            }
            None => Command::new(hearth_bin()),
        };
        cmd.args(args)
            .env("HEARTH_DATA_DIR", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("hearth runs")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server-sent-event stream being read line by line.
pub struct SseReader {
    lines: std::io::Lines<BufReader<reqwest::blocking::Response>>,
    pub headers: reqwest::header::HeaderMap,
}

impl SseReader {
    /// Posts `body` to `url` and opens the event stream (the status must be 200).
    pub fn open(url: &str, body: &Value) -> SseReader {
        let r = http().post(url).json(body).send().expect("request");
        assert_eq!(r.status(), 200, "{:?}", r.text());
        SseReader {
            headers: r.headers().clone(),
            lines: BufReader::new(r).lines(),
        }
    }

    /// Reads the rest of the stream, which must hold no error event: its text, and its last
    /// event (`None` if none came).
    pub fn rest(&mut self) -> (String, Option<Value>) {
        let (mut text, mut last) = (String::new(), None);
        while let Some(ev) = self.next_event() {
            assert!(ev.get("error").is_none(), "the client saw an error: {ev}");
            text.push_str(chunk_text(&ev));
            last = Some(ev);
        }
        (text, last)
    }

    /// The next event's data: JSON, or `None` at `[DONE]` or the end of the stream.
    pub fn next_event(&mut self) -> Option<Value> {
        for line in self.lines.by_ref() {
            let line = line.ok()?;
            if let Some(data) = line.strip_prefix("data: ") {
                if data == "[DONE]" {
                    return None;
                }
                return Some(serde_json::from_str(data).expect("event is JSON"));
            }
        }
        None
    }
}

/// The text piece of a chat or completion chunk.
pub fn chunk_text(event: &Value) -> &str {
    let c = &event["choices"][0];
    c["delta"]["content"]
        .as_str()
        .or(c["text"].as_str())
        .unwrap_or("")
}

/// A household peer's libp2p client (the household key, a fresh identity) connected to `node`.
pub async fn household_client(
    household: &Household,
    node: &TestNode,
) -> (libp2p_stream::Control, libp2p::PeerId) {
    let identity = libp2p::identity::Keypair::generate_ed25519();
    household_client_as(household, node, identity).await
}

/// [`household_client`] with the identity `identity`.
pub async fn household_client_as(
    household: &Household,
    node: &TestNode,
    identity: libp2p::identity::Keypair,
) -> (libp2p_stream::Control, libp2p::PeerId) {
    let key = hearth_protocol::HouseholdSecret::from_join_code(&household.code)
        .unwrap()
        .network_key();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity)
        .with_tokio()
        .with_other_transport(|k| {
            hearth_node::mesh::transport(k, key)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let control = swarm.behaviour().new_control();
    let peer: libp2p::PeerId = node.peer_id.parse().unwrap();
    swarm
        .dial(node.listen.parse::<libp2p::Multiaddr>().unwrap())
        .unwrap();
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let libp2p::swarm::SwarmEvent::ConnectionEstablished { .. } =
                futures::StreamExt::select_next_some(&mut swarm).await
            {
                break;
            }
        }
    });
    connected
        .await
        .expect("the household key admits this client");
    tokio::spawn(async move {
        loop {
            futures::StreamExt::select_next_some(&mut swarm).await;
        }
    });
    (control, peer)
}

/// Reads one frame from a raw stream as a `T` (the node's own frame reader); `None` when the
/// stream ends or the frame is bad.
pub async fn read_message<T: serde::de::DeserializeOwned>(s: &mut libp2p::Stream) -> Option<T> {
    hearth_node::mesh::wire::read_frame(s).await.ok().flatten()
}
