//! The card protocol: a peer asks with its protocol version, the node answers with its card.
//! Each node polls every connected peer's card, at once after connecting and then every 2 s.

use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use hearth_protocol::{CardReply, CardRequest, CARD_PROTOCOL, PROTOCOL_VERSION};
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::IncomingStreams;

use super::wire::{read_frame, write_frame};
use super::{CardSource, Mesh};

/// How old a card may get before it is fetched again.
const REFRESH: Duration = Duration::from_secs(2);
/// How often the poller looks for cards to fetch.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait for a peer's answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Answers card requests.
pub(super) async fn serve(mut incoming: IncomingStreams, card: CardSource, mesh: Mesh) {
    while let Some((peer, mut stream)) = incoming.next().await {
        let card = card.clone();
        let mesh = mesh.clone();
        tokio::spawn(async move {
            let request =
                tokio::time::timeout(TIMEOUT, read_frame::<_, CardRequest>(&mut stream)).await;
            let reply = match request {
                Ok(Ok(Some(r))) if r.version == PROTOCOL_VERSION => CardReply::Card(card(&mesh)),
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

/// Keeps every connected peer's card fresh.
pub(super) async fn poll(mesh: Mesh) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let due = mesh
            .shared
            .peers
            .lock()
            .expect("peers lock")
            .due_for_poll(REFRESH);
        for peer in due {
            tokio::spawn(fetch(mesh.clone(), peer));
        }
    }
}

async fn fetch(mesh: Mesh, peer: PeerId) {
    let result = tokio::time::timeout(TIMEOUT, ask(mesh.control.clone(), peer)).await;
    let card = match result {
        Ok(Ok(CardReply::Card(card))) => Some(card),
        Ok(Ok(CardReply::Refused { reason })) => {
            tracing::warn!(%peer, %reason, "peer refused to give its card");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "cannot fetch the card");
            None
        }
        Err(_) => {
            // A peer that cannot answer within TIMEOUT has vanished (host off, cable out) even if
            // its connection has not noticed yet: drop it now, so a vanished node leaves the
            // table within REFRESH + TIMEOUT = 7 s.
            tracing::warn!(%peer, "peer did not answer for 5 s; dropping it");
            mesh.shared.peers.lock().expect("peers lock").gone(&peer);
            let _ = mesh
                .shared
                .commands
                .send(super::Command::Disconnect(peer))
                .await;
            return;
        }
    };
    let revoked = card.as_ref().map(|c| c.revoked.clone()).unwrap_or_default();
    {
        let mut peers = mesh.shared.peers.lock().expect("peers lock");
        if let Some(p) = peers.get_mut(&peer) {
            p.polling = false;
            p.last_poll = Some(Instant::now());
            if let Some(card) = card {
                p.card = Some(card);
            }
        }
    }
    // Revocations spread: what one household device removed, every device refuses.
    if !revoked.is_empty() {
        if let Err(e) = mesh.revoke(&revoked).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot save revoked peers");
        }
    }
}

async fn ask(mut control: libp2p_stream::Control, peer: PeerId) -> std::io::Result<CardReply> {
    let mut stream = control
        .open_stream(peer, StreamProtocol::new(CARD_PROTOCOL))
        .await
        .map_err(std::io::Error::other)?;
    write_frame(
        &mut stream,
        &CardRequest {
            version: PROTOCOL_VERSION,
        },
    )
    .await?;
    read_frame(&mut stream)
        .await?
        .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
}
