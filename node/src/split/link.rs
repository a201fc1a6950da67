//! One stage stream's two directions as channels: a task reads frames into a channel (so that
//! waiting on several streams at once never loses half a frame), and writes go straight out.

use std::io;

use futures::AsyncRead;
use hearth_protocol::StageFrame;
use tokio::sync::mpsc;

use crate::mesh::wire::read_frame;

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
