//! The card poller: keeps every connected peer's card fresh, drops peers that stop answering,
//! and spreads the household's revocations.

use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use hearth_protocol::{CardReply, CardRequest, CARD_PROTOCOL, PROTOCOL_VERSION};
use libp2p::PeerId;

use super::Cards;
use crate::mesh::Mesh;

/// How old a card may get before it is fetched again.
const REFRESH: Duration = Duration::from_secs(2);
/// How often the poller looks for cards to fetch.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait for a peer's answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps every connected peer's card fresh.
pub(super) async fn poll(mesh: Mesh, cards: Cards) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let connected: Vec<PeerId> = mesh.peers().into_iter().map(|l| l.peer).collect();
        let due = cards.with(|t| t.due(&connected, REFRESH, Instant::now()));
        for peer in due {
            tokio::spawn(fetch(mesh.clone(), cards.clone(), peer));
        }
    }
}

async fn fetch(mesh: Mesh, cards: Cards, peer: PeerId) {
    let request = CardRequest {
        version: PROTOCOL_VERSION,
    };
    let asked = tokio::time::timeout(
        TIMEOUT,
        mesh.ask::<_, CardReply>(peer, CARD_PROTOCOL, &request),
    )
    .await;
    let card = match asked {
        Ok(Ok((mut stream, reply))) => {
            let _ = stream.close().await;
            match reply {
                CardReply::Card(card) => Some(*card),
                CardReply::Refused { reason } => {
                    tracing::warn!(%peer, %reason, "peer refused to give its card");
                    None
                }
            }
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
            cards.with(|t| t.drop_peer(&peer));
            mesh.drop_peer(peer).await;
            return;
        }
    };
    let revoked: Vec<PeerId> = card
        .as_ref()
        .map(|c| {
            c.revoked
                .iter()
                .filter_map(|p| match p.parse() {
                    Ok(id) => Some(id),
                    Err(_) => {
                        tracing::warn!(%peer, revoked = %p, "ignoring a revoked peer id that does not parse");
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    cards.with(|t| t.fetched(&peer, card, Instant::now()));
    // Revocations spread: what one household device removed, every device refuses.
    if !revoked.is_empty() {
        if let Err(e) = mesh.revoke(&revoked).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot save revoked peers");
        }
    }
}
