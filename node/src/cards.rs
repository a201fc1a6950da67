//! Capability cards: each node answers card requests with its card (devices, models, load,
//! speeds, revocations) and polls every connected peer's card, at once after connecting and then
//! every 2 s. The table of peers' cards lives here; the mesh only knows who is connected.

mod build;
mod poll;
mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hearth_protocol::{Card, CARD_PROTOCOL};
use libp2p::PeerId;

use crate::mesh::Mesh;
pub use build::build_card;

/// Builds this node's card on demand. It reads /proc, NVML and the model index, so the server
/// calls it off the async runtime; it never waits on a model load.
pub type CardSource = Arc<dyn Fn() -> Card + Send + Sync>;

/// Serves this node's card from `source` and keeps peers' cards fresh; returns the table of
/// peers' cards.
pub fn start(mesh: &Mesh, source: CardSource) -> Result<Cards> {
    let incoming = mesh.accept(CARD_PROTOCOL)?;
    let cards = Cards::default();
    tokio::spawn(server::serve(incoming, source));
    tokio::spawn(poll::poll(mesh.clone(), cards.clone()));
    Ok(cards)
}

/// Peers' latest cards (shared handle).
#[derive(Debug, Clone, Default)]
pub struct Cards {
    table: Arc<Mutex<CardTable>>,
}

impl Cards {
    /// The latest card of `peer`, if one arrived, counting as running (or, beyond its slots,
    /// queued) the jobs this node has sent it since: a burst of requests then spreads by free
    /// capacity instead of piling onto whichever peer looked idle at the last poll.
    pub fn get(&self, peer: &PeerId) -> Option<Card> {
        self.with(|t| {
            let e = t.entries.get(peer)?;
            let mut card = e.card.clone()?;
            let free = card.max_jobs.saturating_sub(card.active_jobs);
            let running = e.sent.min(free);
            card.active_jobs += running;
            card.queue_depth += e.sent - running;
            Some(card)
        })
    }

    /// Counts a job this node sends to `peer`, until the peer's next card.
    pub fn sent_to(&self, peer: &PeerId) {
        self.with(|t| {
            if let Some(e) = t.entries.get_mut(peer) {
                e.sent += 1;
            }
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut CardTable) -> T) -> T {
        f(&mut self.table.lock().expect("cards lock"))
    }
}

#[derive(Debug, Default)]
struct Entry {
    card: Option<Card>,
    last_poll: Option<Instant>,
    polling: bool,
    /// Jobs sent to the peer since its card arrived.
    sent: u32,
}

/// What is known of each peer's card, and when to ask again.
#[derive(Debug, Default)]
struct CardTable {
    entries: HashMap<PeerId, Entry>,
}

impl CardTable {
    #[cfg(test)]
    fn card(&self, peer: &PeerId) -> Option<&Card> {
        self.entries.get(peer)?.card.as_ref()
    }

    /// Forgets peers no longer `connected`, and returns the connected peers whose card should be
    /// fetched now (never fetched, or older than `refresh`, and no fetch running), marking them.
    fn due(&mut self, connected: &[PeerId], refresh: Duration, now: Instant) -> Vec<PeerId> {
        self.entries.retain(|p, _| connected.contains(p));
        let mut due = Vec::new();
        for p in connected {
            let e = self.entries.entry(*p).or_default();
            if !e.polling && e.last_poll.is_none_or(|t| now - t >= refresh) {
                e.polling = true;
                due.push(*p);
            }
        }
        due
    }

    /// Records the end of a fetch: the card if one came, else the old one stays.
    fn fetched(&mut self, peer: &PeerId, card: Option<Card>, now: Instant) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.polling = false;
            e.last_poll = Some(now);
            if card.is_some() {
                e.card = card;
                e.sent = 0;
            }
        }
    }

    /// Forgets a peer that stopped answering.
    fn drop_peer(&mut self, peer: &PeerId) {
        self.entries.remove(peer);
    }
}

/// A card for tests: an idle node named `name` with 8 GiB free and no models.
#[cfg(test)]
pub(crate) fn sample_card(name: &str) -> Card {
    Card {
        name: name.into(),
        peer_id: PeerId::random().to_string(),
        version: hearth_protocol::PROTOCOL_VERSION,
        os: "linux x86_64".into(),
        devices: vec![hearth_protocol::Device {
            kind: hearth_protocol::DeviceKind::Cpu,
            name: "cpu".into(),
            total_memory: 16 << 30,
            free_memory: 8 << 30,
            cores: Some(4),
            adapter: None,
        }],
        models: Vec::new(),
        loaded: Vec::new(),
        speeds: Vec::new(),
        queue_depth: 0,
        active_jobs: 0,
        split_jobs: 0,
        max_jobs: 4,
        draining: false,
        revoked: Vec::new(),
        max_memory: None,
        memory_used: 0,
        kv_budget: 64 << 20,
        kv_reserved: 0,
        placements: Vec::new(),
        tokens_generated: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(name: &str) -> Card {
        sample_card(name)
    }

    #[test]
    fn cards_are_polled_when_due_and_forgotten_when_the_peer_leaves() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut t = CardTable::default();
        let t0 = Instant::now();
        let refresh = Duration::from_secs(2);
        assert_eq!(t.due(&[a, b], refresh, t0).len(), 2);
        // A fetch is running: not due again until it ends.
        assert!(t.due(&[a, b], refresh, t0 + refresh * 3).is_empty());
        t.fetched(&a, Some(card("a")), t0);
        t.fetched(&b, None, t0);
        assert_eq!(t.card(&a).map(|c| c.name.as_str()), Some("a"));
        assert!(t.card(&b).is_none());
        assert!(t
            .due(&[a, b], refresh, t0 + Duration::from_secs(1))
            .is_empty());
        assert_eq!(t.due(&[a, b], refresh, t0 + refresh), vec![a, b]);
        // A failed fetch keeps the last card.
        t.fetched(&a, None, t0 + refresh);
        assert_eq!(t.card(&a).map(|c| c.name.as_str()), Some("a"));
        // Gone from the mesh: gone from the table.
        t.due(&[b], refresh, t0 + refresh);
        assert!(t.card(&a).is_none());
        t.fetched(&b, Some(card("b")), t0);
        t.drop_peer(&b);
        assert!(t.card(&b).is_none());
    }

    #[test]
    fn jobs_sent_since_the_last_card_count_as_running_then_queued() {
        let peer = PeerId::random();
        let cards = Cards::default();
        let t0 = Instant::now();
        cards.with(|t| {
            t.due(&[peer], Duration::from_secs(2), t0);
            t.fetched(&peer, Some(card("a")), t0);
        });
        for _ in 0..6 {
            cards.sent_to(&peer);
        }
        let seen = cards.get(&peer).unwrap();
        // Four slots, all taken by what was sent; two more wait.
        assert_eq!((seen.active_jobs, seen.queue_depth), (4, 2));
        // The next card says what the peer runs; the count starts over.
        cards.with(|t| t.fetched(&peer, Some(card("a")), t0));
        let seen = cards.get(&peer).unwrap();
        assert_eq!((seen.active_jobs, seen.queue_depth), (0, 0));
    }
}
