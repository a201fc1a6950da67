//! The requesting side of the job protocol.

use futures::AsyncWriteExt;
use hearth_protocol::{FailCode, JobEvent, JobRequest, JOB_PROTOCOL};
use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::mesh::wire::read_frame;
use crate::mesh::Mesh;

/// Sends `request` to `peer` and relays its events. A job that cannot be started ends with a
/// retryable `Failed` event saying why; the channel closes without a final event only if the peer
/// or the connection fails mid-reply. Dropping the receiver ends the job on the peer.
pub fn open(mesh: &Mesh, peer: PeerId, request: JobRequest) -> mpsc::Receiver<JobEvent> {
    let (tx, rx) = mpsc::channel(64);
    let mesh = mesh.clone();
    tokio::spawn(async move {
        let (mut stream, first) = match mesh.ask::<_, JobEvent>(peer, JOB_PROTOCOL, &request).await
        {
            Ok(started) => started,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot start a job on the peer");
                let _ = tx
                    .send(JobEvent::Failed {
                        code: FailCode::Internal,
                        message: format!("cannot start the job: {e}"),
                    })
                    .await;
                return;
            }
        };
        let last = matches!(first, JobEvent::Busy { .. } | JobEvent::Failed { .. });
        if tx.send(first).await.is_err() || last {
            return;
        }
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                frame = read_frame::<_, JobEvent>(&mut stream) => match frame {
                    Ok(Some(event)) => {
                        let last = matches!(event, JobEvent::Done { .. } | JobEvent::Busy { .. } | JobEvent::Failed { .. });
                        if tx.send(event).await.is_err() || last {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "job stream broke");
                        break;
                    }
                }
            }
        }
        let _ = stream.close().await;
    });
    rx
}
