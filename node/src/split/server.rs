//! The serving side of the stage protocol: a peer's session on one of this node's stages, or
//! the stream that closes the ring of a reply this node drives.
//!
//! A stage session loads its layers, opens the next stage (which answers `Ready` once the rest
//! of the ring is up), answers `Ready` upstream, then runs every data frame through its layers
//! and sends the hidden states straight on. Anything wrong with a frame ends the session with an
//! error frame both ways; a neighbour that goes away ends it with an error naming that
//! neighbour, so the driver can re-plan without it.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use hearth_protocol::stage::{decode_rows, encode_rows, max_rows, Expect, Input};
use hearth_protocol::{is_digest, StageFrame, StageOpen, PROTOCOL_VERSION};
use hearth_shards::{DecodeBatcher, KvCache, StageInput};
use libp2p::PeerId;
use libp2p::Stream;
use libp2p_stream::IncomingStreams;

use super::link::{open_next, reader, Incoming, SetupError};
use super::{Host, Session};
use crate::mesh::wire::{read_frame, write_frame};
use crate::metrics::Metrics;

/// Longest wait for a session's opening frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A session with no frame for this long is over.
const IDLE: Duration = Duration::from_secs(600);
/// How often a session checks whether the node is shutting down.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// Serves stage streams from peers.
pub(super) async fn serve(mut incoming: IncomingStreams, host: Arc<Host>) {
    while let Some((peer, stream)) = incoming.next().await {
        let host = host.clone();
        tokio::spawn(async move { accept(host, peer, stream).await });
    }
}

/// An error frame for `session`.
fn error(session: u64, lost: Option<PeerId>, message: impl Into<String>) -> StageFrame {
    StageFrame::Error {
        session,
        lost: lost.map(|p| p.to_string()),
        message: message.into(),
    }
}

async fn accept(host: Arc<Host>, peer: PeerId, mut stream: Stream) {
    let open = match tokio::time::timeout(OPEN_TIMEOUT, read_frame::<_, StageFrame>(&mut stream))
        .await
    {
        Ok(Ok(Some(StageFrame::Open(open)))) => open,
        Ok(Ok(Some(other))) => {
            Metrics::inc(&host.metrics.stage_frames_refused);
            tracing::warn!(%peer, kind = other.kind(), "stage stream did not start with an open frame");
            let _ = write_frame(
                &mut stream,
                &error(0, None, "a stage stream starts with an open frame"),
            )
            .await;
            return;
        }
        other => {
            Metrics::inc(&host.metrics.stage_frames_refused);
            tracing::warn!(%peer, result = ?other.map(|r| r.map(|_| ())), "bad stage stream");
            let _ = write_frame(&mut stream, &error(0, None, "unreadable open frame")).await;
            return;
        }
    };
    let session = open.session;
    if let Err(why) = check_open(&host, peer, &open) {
        Metrics::inc(&host.metrics.stage_frames_refused);
        tracing::warn!(%peer, session, reason = %why, "stage session refused");
        let _ = write_frame(&mut stream, &error(session, None, why)).await;
        return;
    }
    if open.index as usize == open.split.stages.len() - 1 {
        // The stream closing the ring of a reply this node drives.
        let waiting = host.returns.lock().expect("returns lock").remove(&session);
        match waiting {
            Some((from, tx)) if from == peer => {
                if write_frame(&mut stream, &StageFrame::Ready { session })
                    .await
                    .is_ok()
                {
                    let _ = tx.send(stream);
                }
            }
            other => {
                if let Some(w) = other {
                    host.returns
                        .lock()
                        .expect("returns lock")
                        .insert(session, w);
                }
                Metrics::inc(&host.metrics.stage_frames_refused);
                let _ = write_frame(
                    &mut stream,
                    &error(
                        session,
                        None,
                        "no ring of that session waits here for that peer",
                    ),
                )
                .await;
            }
        }
        return;
    }
    run_stage(host, peer, stream, open).await;
}

/// Checks an opening frame against this node and the peer that sent it.
fn check_open(host: &Host, peer: PeerId, open: &StageOpen) -> Result<(), String> {
    if open.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not this node's {PROTOCOL_VERSION}",
            open.version
        ));
    }
    if !is_digest(&open.model) {
        return Err("stages name their model by its full digest".into());
    }
    let stages = &open.split.stages;
    let index = open.index as usize;
    if stages.len() < 2 || index >= stages.len() {
        return Err(format!(
            "stage {index} of a {}-stage split does not exist",
            stages.len()
        ));
    }
    let me = host.mesh.peer_id().to_string();
    if stages[index].peer != me {
        return Err(format!("stage {index} is planned on another node"));
    }
    let before = if index == 0 {
        stages.len() - 1
    } else {
        index - 1
    };
    if stages[before].peer != peer.to_string() {
        return Err(format!(
            "stage {index} takes its input from stage {before}'s node, not this peer"
        ));
    }
    if open.context == 0 || open.context as usize > hearth_protocol::MAX_PROMPT_TOKENS {
        return Err(format!("a context of {} positions", open.context));
    }
    Ok(())
}

/// Runs one session of a stage that is not the last.
async fn run_stage(host: Arc<Host>, up_peer: PeerId, mut up: Stream, open: StageOpen) {
    let session = open.session;
    let index = open.index as usize;
    let (part, next_peer, down) = match setup(&host, &open).await {
        Ok(s) => s,
        Err((lost, why)) => {
            tracing::warn!(peer = %up_peer, session, reason = %why, "cannot run the stage");
            let _ = write_frame(&mut up, &error(session, lost, why)).await;
            return;
        }
    };
    if write_frame(&mut up, &StageFrame::Ready { session })
        .await
        .is_err()
    {
        return;
    }
    let stage = part.stage.clone();
    tracing::debug!(session, index, layers = ?stage.stage().layers(), "stage session running");
    let cache = stage.stage().new_cache(part.context as usize);
    let _member = stage.join(open.split.stages.len());
    // Counted for shutdown: a draining node ends its sessions (naming itself, so the reply is
    // re-planned around it) before it closes its connections.
    let _in_flight = host.drain.enter();
    let expect = Expect {
        session,
        input: if index == 0 {
            Input::Tokens
        } else {
            Input::Hidden {
                dim: part.layout.dim,
            }
        },
        dtype: open.split.wire,
        pos: 0,
        context: part.context,
        vocab: part.vocab,
    };
    let ends = Ends {
        host: &host,
        session,
        index,
        up_peer,
        next_peer,
        dtype: open.split.wire,
    };
    ends.run(stage, cache, expect, up, down).await;
}

/// Loads this node's part of the session and opens the next stage, which answers once the rest
/// of the ring is up.
async fn setup(
    host: &Arc<Host>,
    open: &StageOpen,
) -> Result<(Session, PeerId, Stream), SetupError> {
    let part = {
        let (host, open) = (host.clone(), open.clone());
        tokio::task::spawn_blocking(move || {
            host.session(&open.model, &open.split, open.index as usize, open.context)
        })
        .await
        .map_err(|e| (None, format!("stage setup failed: {e}")))?
        .map_err(|e| (None, e.to_string()))?
    };
    let next_peer: PeerId = open.split.stages[open.index as usize + 1]
        .peer
        .parse()
        .map_err(|_| (None, "the next stage's peer id is not one".to_owned()))?;
    let next_open = StageFrame::Open(StageOpen {
        index: open.index + 1,
        ..open.clone()
    });
    let down = open_next(&host.mesh, next_peer, &next_open).await?;
    Ok((part, next_peer, down))
}

/// A running session's neighbours.
struct Ends<'a> {
    host: &'a Host,
    session: u64,
    index: usize,
    up_peer: PeerId,
    next_peer: PeerId,
    dtype: hearth_protocol::WireDtype,
}

/// How a session ended: frames to send up and down, if any.
struct End {
    up: Option<StageFrame>,
    down: Option<StageFrame>,
}

impl Ends<'_> {
    async fn run(
        &self,
        stage: Arc<DecodeBatcher>,
        cache: KvCache,
        mut expect: Expect,
        up: Stream,
        down: Stream,
    ) {
        let (up_read, mut up_write) = up.split();
        let (down_read, mut down_write) = down.split();
        let mut from_up = reader(up_read);
        let mut from_down = reader(down_read);
        let mut cache = Some(cache);
        let mut drain_poll = tokio::time::interval(DRAIN_POLL);
        let end = loop {
            tokio::select! {
                frame = tokio::time::timeout(IDLE, from_up.recv()) => {
                    let Ok(frame) = frame else {
                        let idle = error(self.session, None, "the session idled out");
                        break End { up: Some(idle.clone()), down: Some(idle) };
                    };
                    match self.upstream(frame, &stage, &mut cache, &mut expect, &mut down_write).await {
                        Ok(()) => continue,
                        Err(end) => break end,
                    }
                }
                frame = from_down.recv() => break self.downstream(frame),
                _ = drain_poll.tick() => {
                    if self.host.drain.is_draining() {
                        let me = Some(self.host.mesh.peer_id());
                        let leaving = error(self.session, me, "the stage's node is shutting down");
                        break End { up: Some(leaving.clone()), down: Some(leaving) };
                    }
                }
            }
        };
        if let Some(f) = end.up {
            let _ = write_frame(&mut up_write, &f).await;
        }
        if let Some(f) = end.down {
            let _ = write_frame(&mut down_write, &f).await;
        }
        let _ = up_write.close().await;
        let _ = down_write.close().await;
        tracing::debug!(
            session = self.session,
            index = self.index,
            "stage session ended"
        );
    }

    /// Handles what came from upstream: data runs through the stage and goes on.
    async fn upstream(
        &self,
        frame: Option<Incoming>,
        stage: &Arc<DecodeBatcher>,
        cache: &mut Option<KvCache>,
        expect: &mut Expect,
        down: &mut (impl futures::AsyncWrite + Unpin),
    ) -> Result<(), End> {
        let frame = match frame {
            None | Some(Err(_)) => {
                let lost = error(
                    self.session,
                    Some(self.up_peer),
                    "the previous stage went away",
                );
                return Err(End {
                    up: None,
                    down: Some(lost),
                });
            }
            Some(Ok(f)) => f,
        };
        match frame {
            StageFrame::Close { .. } => {
                return Err(End {
                    up: None,
                    down: Some(StageFrame::Close {
                        session: self.session,
                    }),
                })
            }
            StageFrame::Error { .. } => {
                return Err(End {
                    up: None,
                    down: Some(frame),
                })
            }
            _ => {}
        }
        let rows = match expect.check(&frame) {
            Ok(rows) => rows,
            Err(why) => {
                Metrics::inc(&self.host.metrics.stage_frames_refused);
                tracing::warn!(peer = %self.up_peer, session = self.session, reason = %why, "stage frame refused");
                let e = error(self.session, None, format!("stage {}: {why}", self.index));
                return Err(End {
                    up: Some(e.clone()),
                    down: Some(e),
                });
            }
        };
        let (input, last) = match frame {
            StageFrame::Tokens { ids, last, .. } => (Data::Tokens(ids), last),
            StageFrame::Hidden { data, last, .. } => {
                let mut values = Vec::new();
                decode_rows(&data, self.dtype, &mut values);
                (Data::Hidden(values), last)
            }
            _ => unreachable!("checked as a data frame"),
        };
        let pos = expect.pos;
        let (stage2, mut taken) = (stage.clone(), cache.take().expect("cache between frames"));
        let ran = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let dim = stage2.stage().spec().dim;
            // A decoding step joins the other sessions stepping this stage; a prompt runs alone.
            let r = match &input {
                Data::Tokens(ids) if ids.len() == 1 => stage2.decode(&mut taken, ids[0], &mut out),
                Data::Hidden(h) if h.len() == dim => stage2.step_hidden(&mut taken, h, &mut out),
                Data::Tokens(ids) => stage2
                    .stage()
                    .forward(&mut taken, StageInput::Tokens(ids), &mut out)
                    .map(|_| ()),
                Data::Hidden(h) => stage2
                    .stage()
                    .forward(&mut taken, StageInput::Hidden(h), &mut out)
                    .map(|_| ()),
            };
            (taken, out, r)
        })
        .await;
        let out = match ran {
            Ok((back, out, result)) => {
                *cache = Some(back);
                result.map(|()| out).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let out = match out {
            Ok(out) => out,
            Err(why) => {
                let e = error(
                    self.session,
                    None,
                    format!("stage {} failed: {why}", self.index),
                );
                return Err(End {
                    up: Some(e.clone()),
                    down: Some(e),
                });
            }
        };
        expect.pos += rows as u32;
        let dim = stage.stage().spec().dim;
        let per_frame = max_rows(dim, self.dtype) * dim;
        let chunks = out.chunks(per_frame).count();
        let mut at = pos;
        for (i, chunk) in out.chunks(per_frame).enumerate() {
            let n = (chunk.len() / dim) as u32;
            let frame = StageFrame::Hidden {
                session: self.session,
                pos: at,
                rows: n,
                dim: dim as u32,
                dtype: self.dtype,
                data: encode_rows(chunk, self.dtype),
                last: last && i + 1 == chunks,
            };
            at += n;
            let bytes = chunk.len() * self.dtype.size();
            if write_frame(down, &frame).await.is_err() {
                let lost = error(
                    self.session,
                    Some(self.next_peer),
                    "the next stage went away",
                );
                return Err(End {
                    up: Some(lost),
                    down: None,
                });
            }
            self.host.metrics.hop_bytes(self.index, bytes);
        }
        Ok(())
    }

    /// Handles what came back from downstream: only errors, which go upstream.
    fn downstream(&self, frame: Option<Incoming>) -> End {
        match frame {
            Some(Ok(f @ StageFrame::Error { .. })) => End {
                up: Some(f),
                down: None,
            },
            Some(Ok(StageFrame::Close { .. })) | None | Some(Err(_)) => End {
                up: Some(error(
                    self.session,
                    Some(self.next_peer),
                    "the next stage went away",
                )),
                down: None,
            },
            Some(Ok(other)) => End {
                up: Some(error(
                    self.session,
                    None,
                    format!("the next stage sent {} upstream", other.kind()),
                )),
                down: Some(error(self.session, None, "unexpected frame upstream")),
            },
        }
    }
}

/// A data frame's rows, decoded.
enum Data {
    Tokens(Vec<u32>),
    Hidden(Vec<f32>),
}
