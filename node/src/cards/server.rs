//! The card server: a peer asks with its protocol version, the node answers with its card.

use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use hearth_protocol::{CardReply, CardRequest, PROTOCOL_VERSION};
use libp2p_stream::IncomingStreams;

use super::CardSource;
use crate::mesh::wire::{read_frame, write_frame};

/// Longest wait for a peer's request.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Answers card requests.
pub(super) async fn serve(mut incoming: IncomingStreams, source: CardSource) {
    while let Some((peer, mut stream)) = incoming.next().await {
        let source = source.clone();
        tokio::spawn(async move {
            let request =
                tokio::time::timeout(TIMEOUT, read_frame::<_, CardRequest>(&mut stream)).await;
            let reply = match request {
                Ok(Ok(Some(r))) if r.version == PROTOCOL_VERSION => {
                    match tokio::task::spawn_blocking(move || source()).await {
                        Ok(card) => CardReply::Card(Box::new(card)),
                        Err(e) => {
                            tracing::warn!(error = %e, "building this node's card failed");
                            return;
                        }
                    }
                }
                Ok(Ok(Some(r))) => CardReply::Refused {
                    reason: format!(
                        "protocol version {} is not this node's {PROTOCOL_VERSION}",
                        r.version
                    ),
                },
                other => {
                    tracing::debug!(%peer, result = ?other.map(|r| r.map(|_| ())), "bad card request");
                    return;
                }
            };
            let _ = write_frame(&mut stream, &reply).await;
            let _ = stream.close().await;
        });
    }
}
