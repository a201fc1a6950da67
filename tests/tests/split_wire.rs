//! The stage protocol as a household peer speaks it: a real libp2p client with the household key
//! opens sessions on a real node's stages (acting as the other stages of the split itself) and
//! sends frames of the wrong session, kind, shape, dtype, position or size, splits the node does
//! not hold or that do not cover the model, and truncated, oversized and garbage frames. Each
//! is refused with an error frame or a closed stream; good frames get hidden states; the node
//! carries on.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use hearth_node::mesh::wire::write_frame;
use hearth_protocol::stage::encode_rows;
use hearth_protocol::{
    encode, Split, StageFrame, StageOpen, StagePlan, WireDtype, PROTOCOL_VERSION, STAGE_PROTOCOL,
};
use hearth_tests::mesh::{household_client_as, read_message, Household, NodeOptions, TestNode};
use hearth_tests::TestModel;
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::mpsc;

const SMOLLM2: &str = TestModel::SmolLm2.sha256();
const DIM: u32 = 576;

/// The client: its control, its own id, the node's id, and the streams the node opens to it
/// (as the next stage), each already answered `Ready`.
struct Client {
    control: libp2p_stream::Control,
    me: PeerId,
    node: PeerId,
    downstream: mpsc::Receiver<Stream>,
}

async fn client(household: &Household, node: &TestNode) -> Client {
    let identity = libp2p::identity::Keypair::generate_ed25519();
    let me = identity.public().to_peer_id();
    let (control, node_id) = household_client_as(household, node, identity).await;
    let mut incoming = control
        .clone()
        .accept(StreamProtocol::new(STAGE_PROTOCOL))
        .unwrap();
    let (tx, downstream) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            if let Some(StageFrame::Open(open)) = read_message::<StageFrame>(&mut s).await {
                let ready = StageFrame::Ready {
                    session: open.session,
                };
                write_frame(&mut s, &ready).await.unwrap();
                let _ = tx.send(s).await;
            }
        }
    });
    Client {
        control,
        me,
        node: node_id,
        downstream,
    }
}

fn stage(peer: PeerId, start: u32, end: u32) -> StagePlan {
    StagePlan {
        peer: peer.to_string(),
        start,
        end,
    }
}

impl Client {
    async fn stream(&self) -> Stream {
        let mut c = self.control.clone();
        c.open_stream(self.node, StreamProtocol::new(STAGE_PROTOCOL))
            .await
            .expect("stream opens")
    }

    /// Opens session `session` with the node as stage `index` of `stages`; the first answer.
    async fn open(&self, session: u64, stages: Vec<StagePlan>, index: u32) -> (Stream, StageFrame) {
        let mut s = self.stream().await;
        let open = StageOpen {
            version: PROTOCOL_VERSION,
            session,
            model: SMOLLM2.into(),
            split: Split {
                stages,
                wire: WireDtype::F32,
            },
            index,
            context: 64,
        };
        write_frame(&mut s, &StageFrame::Open(open)).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(60), read_message(&mut s))
            .await
            .expect("an answer in time")
            .expect("an answer");
        (s, first)
    }

    /// A running session with the node as the first stage (layers 0..15), the client the last.
    async fn first_stage(&mut self, session: u64) -> (Stream, Stream) {
        let stages = vec![stage(self.node, 0, 15), stage(self.me, 15, 30)];
        let (s, first) = self.open(session, stages, 0).await;
        assert_eq!(first, StageFrame::Ready { session });
        (
            s,
            self.downstream
                .recv()
                .await
                .expect("the node opened the next stage"),
        )
    }

    /// A running session with the node as the middle stage (layers 10..20).
    async fn middle_stage(&mut self, session: u64) -> (Stream, Stream) {
        let stages = vec![
            stage(self.me, 0, 10),
            stage(self.node, 10, 20),
            stage(self.me, 20, 30),
        ];
        let (s, first) = self.open(session, stages, 1).await;
        assert_eq!(first, StageFrame::Ready { session });
        (
            s,
            self.downstream
                .recv()
                .await
                .expect("the node opened the next stage"),
        )
    }
}

/// The error the node answers `frame` with on a running session's stream (and passes on).
async fn refusal(up: &mut Stream, down: &mut Stream, frame: &StageFrame) -> String {
    write_frame(up, frame).await.unwrap();
    let back: StageFrame = read_message(up).await.expect("an error frame upstream");
    let on: StageFrame = read_message(down).await.expect("an error frame downstream");
    assert_eq!(back, on);
    match back {
        StageFrame::Error {
            lost: None,
            message,
            ..
        } => message,
        other => panic!("{other:?}"),
    }
}

fn hidden(session: u64, rows: u32, dim: u32, dtype: WireDtype, bytes: usize) -> StageFrame {
    StageFrame::Hidden {
        session,
        pos: 0,
        rows,
        dim,
        dtype,
        data: vec![0; bytes],
        last: true,
    }
}

/// Whether the node closes the stream (or resets it) within 10 s.
async fn closed(s: &mut Stream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            // An error frame may come first.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stage_frames_are_refused_and_the_node_carries_on() {
    let household = Household::new();
    let node = TestNode::start(
        "stage",
        &household,
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let mut c = client(&household, &node).await;

    // The first stage: a good frame gets hidden states for every position, straight on.
    let (mut up, mut down) = c.first_stage(1).await;
    let tokens = |session, pos, ids: Vec<u32>| StageFrame::Tokens {
        session,
        pos,
        ids,
        last: true,
    };
    write_frame(&mut up, &tokens(1, 0, vec![1, 2, 3]))
        .await
        .unwrap();
    match read_message::<StageFrame>(&mut down).await {
        Some(StageFrame::Hidden {
            session: 1,
            pos: 0,
            rows: 3,
            dim: DIM,
            dtype: WireDtype::F32,
            data,
            last: true,
        }) => assert_eq!(data.len(), 3 * DIM as usize * 4),
        other => panic!("{other:?}"),
    }
    // Then a frame at the wrong position ends the session with an error both ways.
    let why = refusal(&mut up, &mut down, &tokens(1, 0, vec![4])).await;
    assert!(why.contains("position 0; the session is at 3"), "{why}");

    let first_stage_cases = [
        (tokens(99, 0, vec![1]), "session"),
        (tokens(2, 0, vec![49_152]), "vocabulary"),
        (tokens(2, 0, vec![1; 65]), "context"),
        (
            hidden(2, 1, DIM, WireDtype::F32, DIM as usize * 4),
            "first stage",
        ),
    ];
    for (frame, want) in first_stage_cases {
        let (mut up, mut down) = c.first_stage(2).await;
        let why = refusal(&mut up, &mut down, &frame).await;
        assert!(why.contains(want), "{want}: {why}");
    }

    // A middle stage: hidden states of the wrong width, dtype or size are refused; good ones run.
    let middle_cases = [
        (hidden(3, 1, 640, WireDtype::F32, 640 * 4), "640 wide"),
        (hidden(3, 1, DIM, WireDtype::F16, DIM as usize * 2), "f16"),
        (
            hidden(3, 2, DIM, WireDtype::F32, DIM as usize * 4),
            "expected",
        ),
        (tokens(3, 0, vec![1]), "takes hidden"),
    ];
    for (frame, want) in middle_cases {
        let (mut up, mut down) = c.middle_stage(3).await;
        let why = refusal(&mut up, &mut down, &frame).await;
        assert!(why.contains(want), "{want}: {why}");
    }
    let (mut up, mut down) = c.middle_stage(4).await;
    let values = vec![0.5f32; 2 * DIM as usize];
    let good = StageFrame::Hidden {
        session: 4,
        pos: 0,
        rows: 2,
        dim: DIM,
        dtype: WireDtype::F32,
        data: encode_rows(&values, WireDtype::F32),
        last: true,
    };
    write_frame(&mut up, &good).await.unwrap();
    assert!(matches!(
        read_message::<StageFrame>(&mut down).await,
        Some(StageFrame::Hidden {
            rows: 2,
            pos: 0,
            ..
        })
    ));

    // Sessions the node must not open: each answered with an error, nothing loaded for it.
    let (me, n) = (c.me, c.node);
    let refused_opens = [
        (vec![stage(n, 0, 15), stage(me, 15, 31)], 0, "31"),
        (vec![stage(n, 0, 15), stage(me, 16, 30)], 0, "continue"),
        (vec![stage(me, 0, 15), stage(n, 15, 30)], 0, "another node"),
        (
            vec![stage(n, 0, 10), stage(n, 10, 20), stage(me, 20, 30)],
            1,
            "takes its input",
        ),
        (vec![stage(n, 0, 30)], 0, "does not exist"),
    ];
    for (stages, index, want) in refused_opens {
        let (_, first) = c.open(5, stages, index).await;
        match first {
            StageFrame::Error { message, .. } => {
                assert!(message.contains(want), "{want}: {message}")
            }
            other => panic!("{want}: {other:?}"),
        }
    }
    let mut s = c.stream().await;
    let mut open = StageOpen {
        version: PROTOCOL_VERSION + 1,
        session: 6,
        model: SMOLLM2.into(),
        split: Split {
            stages: vec![stage(n, 0, 15), stage(me, 15, 30)],
            wire: WireDtype::F32,
        },
        index: 0,
        context: 64,
    };
    write_frame(&mut s, &StageFrame::Open(open.clone()))
        .await
        .unwrap();
    assert!(
        matches!(read_message(&mut s).await, Some(StageFrame::Error { message, .. }) if message.contains("version"))
    );
    open.version = PROTOCOL_VERSION;
    open.model = "ab".repeat(32);
    let mut s = c.stream().await;
    write_frame(&mut s, &StageFrame::Open(open)).await.unwrap();
    assert!(
        matches!(read_message(&mut s).await, Some(StageFrame::Error { message, .. }) if message.contains("no model"))
    );

    // An oversized length, garbage, a truncated frame, data before any open: closed streams.
    let truncated = encode(&tokens(7, 0, vec![1; 100])).unwrap();
    let cases: [Vec<u8>; 4] = [
        u32::MAX.to_le_bytes().to_vec(),
        [&8u32.to_le_bytes()[..], &[0xff; 8]].concat(),
        truncated[..truncated.len() / 2].to_vec(),
        truncated,
    ];
    for bytes in cases {
        let mut s = c.stream().await;
        s.write_all(&bytes).await.unwrap();
        s.close().await.unwrap();
        assert!(closed(&mut s).await, "{bytes:?} left the stream open");
    }
    // The same mid-session: the session ends, the next stage hears of it.
    let (mut up, mut down) = c.first_stage(8).await;
    up.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert!(matches!(
        read_message::<StageFrame>(&mut down).await,
        Some(StageFrame::Error { .. })
    ));

    assert!(
        node.metric("hearth_stage_frames_refused_total") >= 12.0,
        "{}",
        node.log()
    );
    assert!(node.log().contains("stage frame refused"), "{}", node.log());
    assert_eq!(node.get("/healthz")["status"], "ok");
}
