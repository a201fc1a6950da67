//! The peer table: admitted peers that are connected now, with their address and latency.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

/// One connected peer as the transport sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    pub peer: PeerId,
    pub addr: Multiaddr,
    /// Latest ping round trip.
    pub rtt: Option<Duration>,
}

/// Connected peers by id.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<PeerId, PeerLink>,
}

impl PeerTable {
    /// Records a new connection (keeps what is known if already connected).
    pub fn connected(&mut self, peer: PeerId, addr: Multiaddr) {
        self.peers.entry(peer).or_insert(PeerLink {
            peer,
            addr,
            rtt: None,
        });
    }

    /// Forgets a peer whose last connection closed.
    pub fn gone(&mut self, id: &PeerId) -> Option<PeerLink> {
        self.peers.remove(id)
    }

    /// The peer, if connected.
    pub fn get_mut(&mut self, id: &PeerId) -> Option<&mut PeerLink> {
        self.peers.get_mut(id)
    }

    /// Whether `id` is connected.
    pub fn contains(&self, id: &PeerId) -> bool {
        self.peers.contains_key(id)
    }

    /// Every connected peer, ordered by peer id.
    pub fn links(&self) -> Vec<PeerLink> {
        let mut v: Vec<PeerLink> = self.peers.values().cloned().collect();
        v.sort_by_key(|l| l.peer.to_base58());
        v
    }
}

/// Serializes a peer id as its text form (libp2p's serde support is not enabled).
pub fn peer_id_text<S: serde::Serializer>(id: &PeerId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// Serializes an optional peer id as its text form, or null.
pub fn optional_peer_id_text<S: serde::Serializer>(
    id: &Option<PeerId>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}
