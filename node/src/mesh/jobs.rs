//! The job protocol: the requester sends one `JobRequest` frame, the serving node streams
//! `JobEvent` frames back until `Done`, `Busy` or `Failed`. Either side closing the stream ends
//! the job: the server stops generating at the next token.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use hearth_protocol::{FailCode, JobEvent, JobRequest, JOB_PROTOCOL, PROTOCOL_VERSION};
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::IncomingStreams;
use tokio::sync::mpsc;

use super::wire::{read_frame, write_frame};
use crate::engine::Engine;

/// Longest wait for a stream to open or a request to arrive.
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

/// Attempts at starting a job on a peer.
const ATTEMPTS: u32 = 5;

/// Opens a job stream and sends `request`, until the peer answers with its first event. A stream
/// that closes before any answer never reached the job server (libp2p-stream drops inbound
/// streams that arrive while the server's accept channel is full), so trying again is safe.
async fn start(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &JobRequest,
) -> Option<(libp2p::Stream, JobEvent)> {
    for attempt in 1..=ATTEMPTS {
        let opened = tokio::time::timeout(
            TIMEOUT,
            control.open_stream(peer, StreamProtocol::new(JOB_PROTOCOL)),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(s)) => s,
            other => {
                tracing::warn!(%peer, error = ?other.map(|r| r.map(|_| ()).map_err(|e| e.to_string())), "cannot open a job stream");
                return None;
            }
        };
        if write_frame(&mut stream, request).await.is_ok() {
            if let Ok(Some(first)) = read_frame::<_, JobEvent>(&mut stream).await {
                return Some((stream, first));
            }
        }
        tracing::debug!(%peer, attempt, "job stream closed before an answer; opening another");
        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
    }
    tracing::warn!(%peer, "peer closed {ATTEMPTS} job streams before answering");
    None
}

/// Sends `request` to `peer` and relays its events; the channel closes without a final event if
/// the peer or the connection fails, and dropping the receiver ends the job on the peer.
pub(super) fn open(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    request: JobRequest,
) -> mpsc::Receiver<JobEvent> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let Some((mut stream, first)) = start(&mut control, peer, &request).await else {
            return;
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
