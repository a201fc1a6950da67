//! The driving side of a split: this node runs the last stage, sends token ids to the first
//! stage, takes the hidden states that come round the ring, and produces the logits the reply
//! samples from. To the decoding loop it is just [`Steps`], like a whole model.

use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use hearth_protocol::stage::{decode_rows, max_rows, Expect, Input};
use hearth_protocol::{Split, StageFrame, StageOpen, WireDtype, PROTOCOL_VERSION};
use hearth_shards::batch::Member;
use hearth_shards::{DecodeBatcher, Error as EngineError, KvCache, StageInput, Steps};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use super::link::{open_next, reader};
use super::{Host, Session};
use crate::jobs::JobError;

/// Longest wait for one step's hidden states to come round the ring.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// What the ring's tasks tell the driving thread.
enum Event {
    /// A frame from the stage before the last.
    Frame(StageFrame),
    /// The ring broke; `lost` names the stage's node that went away, when known.
    Broken {
        lost: Option<PeerId>,
        message: String,
    },
}

/// A reply's pipeline of stages, seen from the node running the last one.
pub struct Ring {
    session: u64,
    /// The last stage, behind the batcher its sessions' decoding steps share.
    stage: Arc<DecodeBatcher>,
    _member: Member,
    cache: KvCache,
    /// This node's part of the session (its cache's memory stays reserved while it lasts).
    _part: Session,
    to_first: mpsc::UnboundedSender<StageFrame>,
    events: std_mpsc::Receiver<Event>,
    /// What the hidden states coming back must look like.
    expect: Expect,
    /// Positions sent to the first stage.
    sent: u32,
    /// Most token ids per frame, so that every stage's hidden states fit one frame.
    chunk: usize,
    wire: WireDtype,
    hidden: Vec<f32>,
    stages: usize,
    host: Arc<Host>,
    /// Why the ring failed, once it has.
    failure: Option<JobError>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ring({:x}, {} stages)", self.session, self.stages)
    }
}

fn peer(text: &str) -> Result<PeerId, JobError> {
    text.parse()
        .map_err(|_| JobError::BadRequest(format!("{text:?} is not a peer id")))
}

impl Ring {
    /// Opens a session on every stage of `split` for `digest` (this node being the last) with
    /// caches of `context` positions, and waits until the ring is closed. Blocks: call it from a
    /// job thread.
    pub fn open(
        host: &Arc<Host>,
        digest: &str,
        split: &Split,
        context: u32,
    ) -> Result<Ring, JobError> {
        let k = split.stages.len();
        let me = host.mesh.peer_id();
        if k < 2 || split.stages[k - 1].peer != me.to_string() {
            return Err(JobError::BadRequest(
                "a split job goes to the node of its last stage".into(),
            ));
        }
        let part = host.session(digest, split, k - 1, context)?;
        let first = peer(&split.stages[0].peer)?;
        let before_last = peer(&split.stages[k - 2].peer)?;
        let session: u64 = rand::random();
        let (tx, rx) = oneshot::channel();
        host.returns
            .lock()
            .expect("returns lock")
            .insert(session, (before_last, tx));
        let open = StageFrame::Open(StageOpen {
            version: PROTOCOL_VERSION,
            session,
            model: digest.to_owned(),
            split: split.clone(),
            index: 0,
            context: part.context,
        });
        let connected = host.runtime.block_on(async {
            let first_stream = open_next(&host.mesh, first, &open)
                .await
                .map_err(|(lost, message)| broken(lost, message))?;
            match tokio::time::timeout(Duration::from_secs(10), rx).await {
                Ok(Ok(back)) => Ok((first_stream, back)),
                _ => Err(broken(Some(before_last), "the ring did not close")),
            }
        });
        host.returns.lock().expect("returns lock").remove(&session);
        let (first_stream, back) = connected?;
        let (events_tx, events) = std_mpsc::channel();
        let (to_first, frames) = mpsc::unbounded_channel();
        let _guard = host.runtime.enter();
        spawn_links(
            host.clone(),
            session,
            k,
            first,
            before_last,
            first_stream,
            back,
            frames,
            events_tx,
        );
        let wire = split.wire;
        let stage = part.stage.clone();
        Ok(Ring {
            session,
            expect: Expect {
                session,
                input: Input::Hidden {
                    dim: part.layout.dim,
                },
                dtype: wire,
                pos: 0,
                context: part.context,
                vocab: part.vocab,
            },
            chunk: max_rows(part.layout.dim as usize, wire),
            cache: stage.stage().new_cache(part.context as usize),
            _member: stage.join(k),
            stage,
            _part: part,
            to_first,
            events,
            sent: 0,
            wire,
            hidden: Vec::new(),
            stages: k,
            host: host.clone(),
            failure: None,
        })
    }

    /// Positions the ring's caches hold.
    pub fn context(&self) -> usize {
        self.expect.context as usize
    }

    /// Why a step failed, once one has (the engine's error says more than the step's).
    pub fn take_failure(&mut self) -> Option<JobError> {
        self.failure.take()
    }

    fn fail(&mut self, e: JobError) -> EngineError {
        let message = e.to_string();
        self.failure = Some(e);
        EngineError::BadStageInput(message)
    }
}

fn broken(lost: Option<PeerId>, message: impl Into<String>) -> JobError {
    let message = message.into();
    match lost {
        Some(peer) => JobError::StageLost { peer, message },
        None => JobError::Internal(message),
    }
}

/// Starts the tasks that write to the first stage and read both ends of the ring.
#[allow(clippy::too_many_arguments)]
fn spawn_links(
    host: Arc<Host>,
    session: u64,
    stages: usize,
    first: PeerId,
    before_last: PeerId,
    first_stream: libp2p::Stream,
    back: libp2p::Stream,
    mut frames: mpsc::UnboundedReceiver<StageFrame>,
    events: std_mpsc::Sender<Event>,
) {
    let (first_read, mut first_write) = first_stream.split();
    let (back_read, back_write) = back.split();
    let to_driver = events.clone();
    tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            let bytes = match &frame {
                StageFrame::Tokens { ids, .. } => ids.len() * 4,
                _ => 0,
            };
            if crate::mesh::wire::write_frame(&mut first_write, &frame)
                .await
                .is_err()
            {
                let _ = to_driver.send(Event::Broken {
                    lost: Some(first),
                    message: "the first stage went away".into(),
                });
                return;
            }
            host.metrics.hop_bytes(stages - 1, bytes);
        }
        // The reply is over: the close goes round the ring.
        let _ =
            crate::mesh::wire::write_frame(&mut first_write, &StageFrame::Close { session }).await;
        let _ = first_write.close().await;
    });
    let mut from_first = reader(first_read);
    let to_driver = events.clone();
    tokio::spawn(async move {
        // The first stage sends nothing back but errors.
        let event = match from_first.recv().await {
            Some(Ok(StageFrame::Error { lost, message, .. })) => Event::Broken {
                lost: lost.and_then(|l| l.parse().ok()),
                message,
            },
            _ => Event::Broken {
                lost: Some(first),
                message: "the first stage went away".into(),
            },
        };
        let _ = to_driver.send(event);
    });
    let mut from_back = reader(back_read);
    tokio::spawn(async move {
        // Kept open while the session lasts: closing it would tell the stage before the last
        // that this node went away.
        let _back_write = back_write;
        loop {
            let event = match from_back.recv().await {
                Some(Ok(StageFrame::Error { lost, message, .. })) => Event::Broken {
                    lost: lost.and_then(|l| l.parse().ok()),
                    message,
                },
                Some(Ok(StageFrame::Close { .. })) => return,
                Some(Ok(frame)) => Event::Frame(frame),
                None | Some(Err(_)) => Event::Broken {
                    lost: Some(before_last),
                    message: "the stage before the last went away".into(),
                },
            };
            let last = matches!(event, Event::Broken { .. });
            if events.send(event).is_err() || last {
                return;
            }
        }
    });
}

impl Steps for Ring {
    fn feed(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> hearth_shards::Result<()> {
        if let Some(e) = &self.failure {
            return Err(EngineError::BadStageInput(e.to_string()));
        }
        let chunks = tokens.chunks(self.chunk).count();
        for (i, ids) in tokens.chunks(self.chunk).enumerate() {
            let frame = StageFrame::Tokens {
                session: self.session,
                pos: self.sent,
                ids: ids.to_vec(),
                last: i + 1 == chunks,
            };
            self.sent += ids.len() as u32;
            if self.to_first.send(frame).is_err() {
                return Err(self.fail(JobError::Internal("the ring's writer stopped".into())));
            }
        }
        loop {
            let event = match self.events.recv_timeout(STEP_TIMEOUT) {
                Ok(e) => e,
                Err(_) => {
                    return Err(self.fail(JobError::Internal(format!(
                        "no hidden states came round the ring within {STEP_TIMEOUT:?}"
                    ))))
                }
            };
            let frame = match event {
                Event::Frame(f) => f,
                Event::Broken { lost, message } => return Err(self.fail(broken(lost, message))),
            };
            let rows = match self.expect.check(&frame) {
                Ok(rows) => rows,
                Err(why) => {
                    crate::metrics::Metrics::inc(&self.host.metrics.stage_frames_refused);
                    return Err(self.fail(JobError::Internal(format!(
                        "the stage before the last sent a bad frame: {why}"
                    ))));
                }
            };
            let StageFrame::Hidden { data, last, .. } = frame else {
                unreachable!("checked as hidden states")
            };
            decode_rows(&data, self.wire, &mut self.hidden);
            if rows == 1 {
                self.stage
                    .step_hidden(&mut self.cache, &self.hidden, logits)?;
            } else {
                self.stage.stage().forward(
                    &mut self.cache,
                    StageInput::Hidden(&self.hidden),
                    logits,
                )?;
            }
            self.expect.pos += rows as u32;
            if last {
                return Ok(());
            }
        }
    }
}
