//! The wire as a household peer speaks it: a real libp2p client with the household key talks to a
//! real node. Wrong-version requests get a clear refusal; oversized, truncated and garbage frames
//! get a closed stream; the node carries on and still serves a proper request.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use hearth_protocol::{
    encode, CardReply, CardRequest, FailCode, JobEvent, JobParams, JobRequest, Prompt, Resume,
    Usage, CARD_PROTOCOL, JOB_PROTOCOL, MAX_PROMPT_TOKENS, PROTOCOL_VERSION,
};
use hearth_tests::mesh::{
    household_client, read_message, wait_for, Household, NodeOptions, TestNode,
};
use hearth_tests::TestModel;
use libp2p::{PeerId, StreamProtocol};

/// Whether the node closes the stream (or resets it) within 10 s.
async fn closed(s: &mut libp2p::Stream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn request(version: u32) -> JobRequest {
    JobRequest {
        version,
        model: TestModel::SmolLm2.sha256().into(),
        prompt: Prompt::text("The sky is"),
        params: JobParams {
            seed: 1,
            ..JobParams::greedy(3)
        },
        resume: Resume::default(),
        split: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_from_a_household_peer_get_refusals_or_closed_streams() {
    let household = Household::new();
    let node = TestNode::start("wire", &household, NodeOptions::holding(TestModel::SmolLm2));
    let (control, peer) = household_client(&household, &node).await;
    let job = StreamProtocol::new(JOB_PROTOCOL);
    let open = |p: StreamProtocol| {
        let mut c = control.clone();
        async move { c.open_stream(peer, p).await.expect("stream opens") }
    };

    // Another protocol version: a clear refusal.
    let mut s = open(job.clone()).await;
    s.write_all(&encode(&request(PROTOCOL_VERSION + 1)).unwrap())
        .await
        .unwrap();
    let refusal: JobEvent = read_message(&mut s).await.expect("an answer");
    assert!(
        matches!(
            refusal,
            JobEvent::Failed {
                code: FailCode::Version,
                ..
            }
        ),
        "{refusal:?}"
    );
    let mut s = open(StreamProtocol::new(CARD_PROTOCOL)).await;
    s.write_all(&encode(&CardRequest { version: 0 }).unwrap())
        .await
        .unwrap();
    let reply: CardReply = read_message(&mut s).await.expect("an answer");
    assert!(matches!(reply, CardReply::Refused { .. }), "{reply:?}");

    // An oversized length, garbage, a truncated frame: the stream is closed, nothing allocated.
    let truncated = encode(&request(PROTOCOL_VERSION)).unwrap();
    let cases: [Vec<u8>; 3] = [
        u32::MAX.to_le_bytes().to_vec(),
        [&8u32.to_le_bytes()[..], &[0xff; 8]].concat(),
        truncated[..truncated.len() / 2].to_vec(),
    ];
    for bytes in cases {
        let mut s = open(job.clone()).await;
        s.write_all(&bytes).await.unwrap();
        s.close().await.unwrap();
        assert!(closed(&mut s).await, "{bytes:?} left the stream open");
    }

    // The node is fine and serves a proper request on the same connection.
    let mut s = open(job.clone()).await;
    s.write_all(&encode(&request(PROTOCOL_VERSION)).unwrap())
        .await
        .unwrap();
    let events = job_events(&mut s).await;
    assert!(
        matches!(events.first(), Some(JobEvent::Started { .. })),
        "{events:?}"
    );
    assert!(
        matches!(
            events.last(),
            Some(JobEvent::Done {
                usage: Usage {
                    completion_tokens: 3,
                    ..
                },
                ..
            })
        ),
        "{events:?}"
    );
    let logged = wait_for(Duration::from_secs(5), || {
        node.log().contains("bad job request").then_some(())
    });
    assert!(logged.is_some(), "{}", node.log());
    assert_eq!(node.get("/healthz")["status"], "ok");
}

/// Reads a job's events until its last one (bounded by the node closing the stream).
async fn job_events(s: &mut libp2p::Stream) -> Vec<JobEvent> {
    let mut events = Vec::new();
    while let Some(e) = read_message::<JobEvent>(s).await {
        let last = matches!(
            e,
            JobEvent::Done { .. } | JobEvent::Failed { .. } | JobEvent::Busy { .. }
        );
        events.push(e);
        if last {
            break;
        }
    }
    events
}

/// Sends `request` on a new job stream and reads the events it gets.
async fn send_job(
    control: &libp2p_stream::Control,
    peer: PeerId,
    request: &JobRequest,
) -> Vec<JobEvent> {
    let mut s = control
        .clone()
        .open_stream(peer, StreamProtocol::new(JOB_PROTOCOL))
        .await
        .expect("stream opens");
    s.write_all(&encode(request).unwrap()).await.unwrap();
    job_events(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_names_models_by_full_digest_only_never_by_path_or_prefix() {
    let household = Household::new();
    let node = TestNode::start("wire", &household, NodeOptions::holding(TestModel::SmolLm2));
    let (control, peer) = household_client(&household, &node).await;
    let digest = request(PROTOCOL_VERSION).model;
    let cached_file = node.data().join("models").join(format!("{digest}.gguf"));
    assert!(cached_file.is_file());
    let gemma = TestModel::Gemma3.path();
    for model in [
        cached_file.to_str().unwrap(),
        gemma.to_str().unwrap(),
        "/no/such/file.gguf",
        &digest[..4],
        &digest[..12],
        "smollm2-135m",
    ] {
        let mut r = request(PROTOCOL_VERSION);
        r.model = model.to_owned();
        match send_job(&control, peer, &r).await.as_slice() {
            [JobEvent::Failed {
                code: FailCode::BadRequest,
                message,
            }] => assert!(
                message.contains("full SHA-256 digest"),
                "{model}: {message}"
            ),
            other => panic!("{model}: {other:?}"),
        }
    }
    // Nothing was opened: an existing file and a missing one get the same answer, and no model
    // was loaded.
    assert!(!node.log().contains("model loaded"), "{}", node.log());
    // Resumed tokens beyond the protocol's limit are refused before any work.
    let mut r = request(PROTOCOL_VERSION);
    r.resume.tokens = vec![1; MAX_PROMPT_TOKENS + 1];
    match send_job(&control, peer, &r).await.as_slice() {
        [JobEvent::Failed {
            code: FailCode::BadRequest,
            message,
        }] => assert!(
            message.contains(&MAX_PROMPT_TOKENS.to_string()),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!node.log().contains("model loaded"), "{}", node.log());
}
