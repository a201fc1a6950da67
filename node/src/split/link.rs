//! One stage stream's two directions as channels: a task reads frames into a channel (so that
//! waiting on several streams at once never loses half a frame), and writes go straight out.

use std::io;
use std::time::Duration;

use futures::AsyncRead;
use hearth_protocol::{StageFrame, STAGE_PROTOCOL};
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;

use crate::mesh::wire::read_frame;
use crate::mesh::Mesh;

/// Longest wait for the rest of a ring to come up (every stage loading its layers).
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a ring could not be set up: the stage's node lost on the way, if one was, and what
/// happened.
pub(super) type SetupError = (Option<PeerId>, String);

/// Opens the stage on `peer` with `open` (an `Open` frame) and waits until it, and every stage
/// after it, is up (`Ready`). What the stage answered instead, or that it could not be reached,
/// is the error.
pub(super) async fn open_next(
    mesh: &Mesh,
    peer: PeerId,
    open: &StageFrame,
) -> Result<Stream, SetupError> {
    let asked = tokio::time::timeout(
        SETUP_TIMEOUT,
        mesh.ask::<_, StageFrame>(peer, STAGE_PROTOCOL, open),
    )
    .await;
    match asked {
        Ok(Ok((stream, StageFrame::Ready { .. }))) => Ok(stream),
        Ok(Ok((_, StageFrame::Error { lost, message, .. }))) => {
            Err((lost.and_then(|l| l.parse().ok()), message))
        }
        Ok(Ok((_, other))) => Err((
            Some(peer),
            format!("the next stage answered {}", other.kind()),
        )),
        Ok(Err(e)) => Err((Some(peer), format!("cannot reach the next stage: {e}"))),
        Err(_) => Err((Some(peer), "the next stage did not answer in time".into())),
    }
}

/// What a reader task hands on: a frame, or why the stream stopped (`None`: it ended cleanly).
pub(super) type Incoming = Result<StageFrame, io::Error>;

/// Reads frames from `r` until it ends or breaks; the channel closes after a clean end, or
/// after the error that broke it.
pub(super) fn reader<R: AsyncRead + Unpin + Send + 'static>(mut r: R) -> mpsc::Receiver<Incoming> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            match read_frame::<_, StageFrame>(&mut r).await {
                Ok(Some(frame)) => {
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    rx
}
