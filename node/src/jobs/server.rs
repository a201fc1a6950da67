//! The serving side of the job protocol: peers' jobs run on the local engine.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use hearth_protocol::{FailCode, JobEvent, JobRequest, PROTOCOL_VERSION};
use libp2p_stream::IncomingStreams;

use super::Engine;
use crate::mesh::wire::{read_frame, write_frame};

/// Longest wait for a request to arrive.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Serves peers' jobs on the local engine.
pub(super) async fn serve(mut incoming: IncomingStreams, engine: Arc<Engine>) {
    while let Some((peer, mut stream)) = incoming.next().await {
        let engine = engine.clone();
        tokio::spawn(async move {
            let request = match tokio::time::timeout(
                TIMEOUT,
                read_frame::<_, JobRequest>(&mut stream),
            )
            .await
            {
                Ok(Ok(Some(r))) => r,
                other => {
                    tracing::warn!(%peer, result = ?other.map(|r| r.map(|_| ())), "bad job request");
                    return;
                }
            };
            if request.version != PROTOCOL_VERSION {
                let refusal = JobEvent::Failed {
                    code: FailCode::Version,
                    message: format!(
                        "protocol version {} is not this node's {PROTOCOL_VERSION}",
                        request.version
                    ),
                };
                let _ = write_frame(&mut stream, &refusal).await;
                return;
            }
            tracing::info!(%peer, model = %request.model, "serving a job for a peer");
            let mut events = engine.submit(&peer.to_string(), request);
            // The requester sends nothing after its request: anything it does on the stream now
            // (closing it, resetting it) means it is gone, and dropping `events` stops the job.
            let (mut from_requester, mut to_requester) = stream.split();
            let mut probe = [0u8; 1];
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => {
                            if write_frame(&mut to_requester, &event).await.is_err() {
                                tracing::info!(%peer, "requester went away; stopping its job");
                                return;
                            }
                        }
                        None => break,
                    },
                    _ = from_requester.read(&mut probe) => {
                        tracing::info!(%peer, "requester went away; stopping its job");
                        return;
                    }
                }
            }
            let _ = to_requester.close().await;
        });
    }
}
