//! The peer table: admitted peers that are connected now, with their latest card and latency.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hearth_protocol::Card;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

/// One connected peer.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Multiaddr,
    pub card: Option<Card>,
    pub rtt: Option<Duration>,
    pub last_poll: Option<Instant>,
    pub polling: bool,
}

/// What `/api/peers` shows of a peer (or of this node).
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub peer_id: String,
    pub addr: Option<String>,
    pub latency_ms: Option<f32>,
    pub this_node: bool,
    pub card: Option<Card>,
}

/// Connected peers by id.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<PeerId, Peer>,
}

impl PeerTable {
    /// Records a new connection (keeps what is known if already connected).
    pub fn connected(&mut self, id: PeerId, addr: Multiaddr) {
        self.peers.entry(id).or_insert(Peer {
            addr,
            card: None,
            rtt: None,
            last_poll: None,
            polling: false,
        });
    }

    /// Forgets a peer whose last connection closed.
    pub fn gone(&mut self, id: &PeerId) -> Option<Peer> {
        self.peers.remove(id)
    }

    /// The peer, if connected.
    pub fn get_mut(&mut self, id: &PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id)
    }

    /// Whether `id` is connected.
    pub fn contains(&self, id: &PeerId) -> bool {
        self.peers.contains_key(id)
    }

    /// Peers whose card should be fetched now: never fetched, or older than `refresh`.
    pub fn due_for_poll(&mut self, refresh: Duration) -> Vec<PeerId> {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.polling && p.last_poll.is_none_or(|t| now - t >= refresh))
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            if let Some(p) = self.peers.get_mut(id) {
                p.polling = true;
            }
        }
        due
    }

    /// Every peer with a card, as the API shows them.
    pub fn views(&self) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self
            .peers
            .iter()
            .map(|(id, p)| PeerView {
                peer_id: id.to_string(),
                addr: Some(p.addr.to_string()),
                latency_ms: p.rtt.map(|d| d.as_secs_f32() * 1000.0),
                this_node: false,
                card: p.card.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        v
    }

    /// Peers connected.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}
