//! Models shared between household nodes: a model any node holds is one LAN transfer away.
//! Holders serve `/hearth/blob/1` (`server`); a pull (`pull`) takes the manifest root from the
//! holders' cards, checks the manifest against it, fetches chunks from every holder at once
//! (`plan`, the pure core: who sends which chunk), verifies each as it arrives, and enters the
//! file into the cache once its SHA-256 matches. An interrupted pull resumes from what is on disk.

pub mod estimate;
pub mod plan;
pub mod pull;
mod server;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use hearth_protocol::{is_digest, BLOB_PROTOCOL};
use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::watch;

use crate::cards::Cards;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::models::{CachedModel, ModelCache};
use pull::Partial;
pub use pull::Progress;
pub use server::CHUNK_DELAY_VAR;

/// Sharing's state on this node: the pulls running, and the holders caught sending bad bytes.
pub struct Share {
    mesh: Mesh,
    cards: Cards,
    cache: ModelCache,
    metrics: Arc<Metrics>,
    limits: Limits,
    pulls: Mutex<HashMap<String, watch::Receiver<Progress>>>,
    /// (holder, model digest) pairs that sent chunks that did not verify.
    bad: Mutex<HashSet<(PeerId, String)>>,
    /// Bytes/s measured from each holder by pulls.
    links: Mutex<HashMap<PeerId, f64>>,
    /// Files split stages here fill part by part, by digest (one fetch at a time for each).
    partials: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Partial>>>>>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share")
    }
}

/// What bounds the cache: its size, and the models it must keep.
pub struct Limits {
    /// Most bytes the cache may hold (`--cache-size`); `None`: no limit.
    pub cache_size: Option<u64>,
    /// Digests of the models in use now (loaded or being loaded): never removed to make room.
    pub in_use: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Pull a model here when routing estimates it pays (`--pull-when-faster`).
    pub pull_when_faster: bool,
}

/// A model some household node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Offer {
    pub name: String,
    pub digest: String,
    pub size: u64,
}

/// Why a pull cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    NoRoom(String),
}

/// What asking for a pull gave.
#[derive(Debug)]
pub enum Started {
    /// The model is in this node's cache already.
    Present(Box<CachedModel>),
    /// A pull runs (started now, or joined): its progress.
    Pulling(watch::Receiver<Progress>),
}

/// Serves this node's models to peers; returns the handle that pulls.
pub fn start(
    mesh: &Mesh,
    cards: Cards,
    cache: ModelCache,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> Result<Arc<Share>> {
    let incoming = mesh.accept(BLOB_PROTOCOL)?;
    tokio::spawn(server::serve(incoming, cache.clone(), metrics.clone()));
    // Models imported before manifests existed get theirs, off the runtime: their cards show
    // no root (and peers cannot pull them from here) until then.
    let c = cache.clone();
    tokio::task::spawn_blocking(move || match c.ensure_manifests() {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            models = n,
            "made chunk manifests for models imported earlier"
        ),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot make chunk manifests"),
    });
    Ok(Arc::new(Share {
        mesh: mesh.clone(),
        cards,
        cache,
        metrics,
        limits,
        pulls: Mutex::new(HashMap::new()),
        bad: Mutex::new(HashSet::new()),
        partials: Mutex::new(HashMap::new()),
        links: Mutex::new(HashMap::new()),
    }))
}

/// The first 12 characters of a digest (all of it when a peer's card carries a shorter one).
pub(crate) fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// A holder of one model, as its card says.
#[derive(Debug, Clone)]
pub(crate) struct Holding {
    pub peer: PeerId,
    pub node: String,
    pub root: Option<String>,
}

impl Share {
    /// Connected peers holding the model with `digest`, with the manifest root each advertises.
    pub(crate) fn holders(&self, digest: &str) -> Vec<Holding> {
        self.mesh
            .peers()
            .into_iter()
            .filter_map(|link| {
                let card = self.cards.get(&link.peer)?;
                let m = card.models.iter().find(|m| m.digest == digest)?;
                Some(Holding {
                    peer: link.peer,
                    node: card.name.clone(),
                    root: m.manifest_root.clone(),
                })
            })
            .collect()
    }

    /// Records the rate at which `peer` sent `bytes` in `seconds`.
    pub(crate) fn measured_link(&self, peer: PeerId, bytes: u64, seconds: f64) {
        if bytes >= 1 << 20 && seconds > 0.0 {
            let rate = bytes as f64 / seconds;
            let mut links = self.links.lock().expect("links lock");
            let r = links.entry(peer).or_insert(rate);
            *r = 0.5 * *r + 0.5 * rate;
        }
    }

    /// Whether routing may pull models here.
    pub fn pulls_when_faster(&self) -> bool {
        self.limits.pull_when_faster
    }

    /// Whether pulling the model to this node would pay, when this node lacks it and `route`
    /// sends the reply to a peer: the estimate and its figures (`share::estimate`).
    pub fn estimate(
        &self,
        members: &crate::chat::Members,
        route: &crate::chat::routing::Route,
        digest: &str,
        context: u32,
        tokens: u32,
    ) -> Option<estimate::Estimate> {
        let here = members.0.iter().find(|m| m.this_node)?;
        let best = route.ranked.first()?;
        let peer = best.candidate.peer_id?;
        if here.card.model(digest).is_some() || best.split.is_some() {
            return None;
        }
        let there = members.0.iter().find(|m| m.peer_id == peer)?;
        let info = there.card.model(digest)?;
        let sizes: HashMap<&str, u64> = here
            .card
            .models
            .iter()
            .map(|m| (m.digest.as_str(), m.size))
            .collect();
        let link = self.links.lock().expect("links lock").get(&peer).copied();
        Some(estimate::estimate(
            info.size,
            tokens,
            &estimate::Serving {
                node: there.card.name.clone(),
                tokens_per_s: there.card.speed(digest),
                active: best.candidate.active_jobs,
                queued: best.candidate.queue_depth,
                max_jobs: there.card.max_jobs,
            },
            &estimate::Here {
                node: here.card.name.clone(),
                idle: here.card.active_jobs == 0 && here.card.queue_depth == 0,
                free_memory: here.card.memory_free(),
                needs: info
                    .layout
                    .as_ref()
                    .map_or(info.size, |l| l.whole_bytes(context.min(l.context))),
                measured: here
                    .card
                    .speeds
                    .iter()
                    .filter_map(|s| Some((*sizes.get(s.digest.as_str())?, s.tokens_per_s)))
                    .collect(),
            },
            link,
        ))
    }

    /// Starts pulling `digest` here because `estimate` says it pays, and runs `then` (loading
    /// it) once the file is here, so routing sees it loaded beside the slower node.
    pub fn pull_to_serve(
        self: &Arc<Self>,
        digest: &str,
        estimate: &estimate::Estimate,
        then: impl FnOnce() + Send + 'static,
    ) {
        match self.pull(digest, None) {
            Ok(Started::Pulling(rx)) => {
                if rx.borrow().status != "manifest" {
                    return; // already running, started by someone else
                }
                tracing::info!(model = %digest, from = %estimate.from, reason = %estimate.reason, "pulling a model here: it pays (--pull-when-faster)");
                tokio::spawn(async move {
                    if pull::finished(rx).await.status == "success" {
                        let _ = tokio::task::spawn_blocking(then).await;
                    }
                });
            }
            Ok(Started::Present(_)) => {}
            Err(e) => {
                tracing::info!(model = %digest, error = %e, "not pulling a model here although it would pay")
            }
        }
    }

    /// Whether `peer` sent bad bytes of `digest` before.
    pub(crate) fn is_bad(&self, peer: PeerId, digest: &str) -> bool {
        self.bad
            .lock()
            .expect("bad lock")
            .contains(&(peer, digest.to_owned()))
    }

    pub(crate) fn mark_bad(&self, peer: PeerId, digest: &str) {
        self.bad
            .lock()
            .expect("bad lock")
            .insert((peer, digest.to_owned()));
    }

    /// Every model the household's connected peers hold, by digest.
    pub fn offers(&self) -> Vec<Offer> {
        let mut out: Vec<Offer> = Vec::new();
        for link in self.mesh.peers() {
            let Some(card) = self.cards.get(&link.peer) else {
                continue;
            };
            for m in card.models {
                if !out.iter().any(|o| o.digest == m.digest) {
                    out.push(Offer {
                        name: m.name,
                        digest: m.digest,
                        size: m.size,
                    });
                }
            }
        }
        out
    }

    /// The household model that `query` names: a name (case-insensitive), a full digest, or a
    /// digest prefix of at least 4 characters.
    pub fn find(&self, query: &str) -> Result<Offer, PullError> {
        let offers = self.offers();
        let q = query.to_lowercase();
        let by_name: Vec<&Offer> = offers
            .iter()
            .filter(|o| o.name.eq_ignore_ascii_case(query))
            .collect();
        let hits: Vec<&Offer> = if !by_name.is_empty() {
            by_name
        } else if q.len() >= 4 && q.chars().all(|c| c.is_ascii_hexdigit()) {
            offers.iter().filter(|o| o.digest.starts_with(&q)).collect()
        } else {
            Vec::new()
        };
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] if offers.is_empty() => Err(PullError::NotFound(format!(
                "no household node holds {query}: no connected peer has any model"
            ))),
            [] => Err(PullError::NotFound(format!(
                "no household node holds {query} (they hold: {})",
                offers
                    .iter()
                    .map(|o| format!("{} [{}]", o.name, short(&o.digest)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            many => Err(PullError::Ambiguous(format!(
                "{query} names {} different models ({}); give the digest",
                many.len(),
                many.iter()
                    .map(|o| format!("{} [{}]", o.name, short(&o.digest)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Makes sure this node has the header of the model file with `digest` and, when `layers`
    /// are given, the tensors a split stage holding them reads, fetching what is missing from
    /// the household chunk by chunk (each verified); returns the partial file's path. So a node
    /// without the model takes part in a split moving only its share of the file; the chunks stay
    /// for a later stage or a full pull. Call it off the async runtime's workers' hot path: it
    /// reads and parses the file's header.
    pub async fn fetch_stage(
        self: &Arc<Self>,
        digest: &str,
        layers: Option<std::ops::Range<u32>>,
    ) -> Result<std::path::PathBuf, String> {
        let slot = self
            .partials
            .lock()
            .expect("partials lock")
            .entry(digest.to_owned())
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(Partial::open(self, digest).await?);
        }
        let partial = guard.as_mut().expect("opened above");
        let label = format!("{} (a split stage's part)", short(digest));
        let chunks = partial.manifest.chunks();
        let chunk = u64::from(partial.manifest.chunk_size);
        // The header's length shows only once it parses: fetch a growing prefix until it does,
        // and until every tensor starts past it (so it was read from verified bytes only).
        let mut prefix = 4u32;
        let gguf = loop {
            let n = prefix.min(chunks);
            partial.fetch(self, &label, &|i| i < n, None).await?;
            let path = partial.path.clone();
            let parsed = tokio::task::spawn_blocking(move || hearth_shards::Gguf::open(&path))
                .await
                .map_err(|e| e.to_string())?;
            match parsed {
                Ok(g)
                    if g.tensors
                        .values()
                        .map(|t| t.offset as u64)
                        .min()
                        .unwrap_or(0)
                        <= u64::from(n) * chunk =>
                {
                    break g
                }
                Err(e) if n == chunks => {
                    return Err(format!("the fetched file is not a model hearth reads: {e}"))
                }
                _ if n == chunks => return Err("the fetched file's header never ends".into()),
                _ => prefix = prefix.saturating_mul(2),
            }
        };
        if let Some(layers) = layers {
            let n_layers = hearth_shards::model::layout(&gguf)
                .map_err(|e| e.to_string())?
                .layers() as usize;
            let ranges = hearth_shards::stage::tensor_ranges(
                &gguf,
                layers.start as usize..layers.end as usize,
                n_layers,
            );
            let mut wanted = vec![false; chunks as usize];
            for r in ranges {
                for c in partial.manifest.chunks_of(r) {
                    wanted[c as usize] = true;
                }
            }
            let fetched = partial
                .fetch(self, &label, &|i| wanted[i as usize], None)
                .await?;
            if fetched > 0 {
                tracing::info!(
                    digest,
                    layers = %format!("{}..{}", layers.start, layers.end),
                    fetched_mb = fetched >> 20,
                    here_mb = partial.bytes_here() >> 20,
                    file_mb = partial.manifest.size >> 20,
                    "fetched a split stage's part of a model from the household"
                );
            }
        }
        Ok(partial.path.clone())
    }

    /// Under `--cache-size`, removes least-recently-used models until `offer` fits beside the
    /// pulls that run; refuses when the models in use or pinned leave no room.
    fn make_room(
        &self,
        offer: &Offer,
        pulls: &HashMap<String, watch::Receiver<Progress>>,
    ) -> Result<(), PullError> {
        let Some(cap) = self.limits.cache_size else {
            return Ok(());
        };
        let running: u64 = pulls
            .values()
            .map(|p| p.borrow().clone())
            .filter(|p| p.is_running())
            .map(|p| p.total)
            .sum();
        let in_use = (self.limits.in_use)();
        self.cache
            .make_room(offer.size + running, cap, &|m| in_use.contains(&m.digest))
            .map(|_| ())
            .map_err(|e| PullError::NoRoom(format!("cannot pull {}: {e:#}", offer.name)))
    }

    /// Pulls the model `query` names into this node's cache, or joins the pull of it that runs;
    /// `name` overrides the name it gets here. Fails at once when no connected peer holds it.
    pub fn pull(self: &Arc<Self>, query: &str, name: Option<&str>) -> Result<Started, PullError> {
        // The index is read once: the model may be here by the name asked, or by the digest the
        // household's name for it resolves to.
        let local = self.cache.list().unwrap_or_default();
        let here = |m: &&CachedModel| {
            m.name.eq_ignore_ascii_case(query) || (is_digest(query) && m.digest == query)
        };
        if let Some(m) = local.iter().find(here) {
            return Ok(Started::Present(Box::new(m.clone())));
        }
        let offer = self.find(query)?;
        if let Some(m) = local.iter().find(|m| m.digest == offer.digest) {
            return Ok(Started::Present(Box::new(m.clone())));
        }
        let mut pulls = self.pulls.lock().expect("pulls lock");
        if let Some(running) = pulls.get(&offer.digest) {
            if running.borrow().is_running() {
                return Ok(Started::Pulling(running.clone()));
            }
        }
        let holders = self.holders(&offer.digest);
        if !holders.iter().any(|h| h.root.is_some()) {
            return Err(PullError::NotReady(format!(
                "the nodes holding {} have not indexed its chunks yet (they do so when they start); try again in a moment",
                offer.name
            )));
        }
        self.make_room(&offer, &pulls)?;
        let rx = pull::start(
            self.clone(),
            offer.clone(),
            name.unwrap_or(&offer.name).to_owned(),
        );
        pulls.insert(offer.digest, rx.clone());
        Ok(Started::Pulling(rx))
    }
}
