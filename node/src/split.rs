//! Splitting one model over several nodes: the planner (pure), the stage server that runs a
//! layer range for a peer's session, and the ring a driving node runs a reply through. See
//! `hearth_protocol::stage` for the protocol.

mod link;
pub mod plan;
mod ring;
mod server;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hearth_protocol::{ModelLayout, STAGE_PROTOCOL};
use hearth_shards::{DecodeBatcher, Model};

use crate::devices::Compute;
use libp2p::PeerId;
use libp2p::Stream;
use tokio::sync::oneshot;

use crate::drain::Drain;
use crate::jobs::JobError;
use crate::memory::{Budget, Reservation};
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::models::ModelCache;
use crate::share::Share;
pub use ring::Ring;

/// Loaded stages not used for this long are dropped.
const STAGE_IDLE: Duration = Duration::from_secs(600);
/// Longest a load waits for sessions to give back the memory it needs.
const RESERVE_WAIT: Duration = Duration::from_secs(10);

/// A loaded stage's key: model digest and layer range.
type StageKey = (String, u32, u32);

/// A stage's weights in memory, with what they reserve; its sessions' single-row steps go
/// through its batcher, one batched step for every session stepping at the time.
struct LoadedStage {
    batcher: Arc<DecodeBatcher>,
    bytes: u64,
    _memory: Reservation,
    last_used: Instant,
}

/// A model file opened for splits, with its layout read once.
#[derive(Clone)]
struct Opened {
    model: Arc<Model>,
    layout: Arc<ModelLayout>,
}

/// One session's part of a split on this node: its stage, the cache it may fill, and what the
/// frames it takes must look like.
pub(crate) struct Session {
    pub stage: Arc<DecodeBatcher>,
    pub layout: Arc<ModelLayout>,
    pub vocab: u32,
    /// Positions its cache holds (the asked context, capped at the model's).
    pub context: u32,
    /// The cache's bytes, reserved in the node's `--kv-memory` budget.
    pub _memory: Reservation,
}

impl LoadedStage {
    /// Whether a session holds it.
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.batcher) > 1
    }
}

/// Reserves a session's keys and values in the node's `--kv-memory` budget, shared with its
/// local replies (whose finished caches give way first), waiting at most the given time.
pub type KvReserve = Box<dyn Fn(u64, Duration) -> Result<Reservation, JobError> + Send + Sync>;

/// The node's two budgets, as a host reserves from them.
pub struct Budgets {
    /// For stages' weights (`--max-memory`).
    pub weights: Arc<Budget>,
    /// For sessions' keys and values (`--kv-memory`).
    pub kv: KvReserve,
}

/// What this node needs to take part in splits: the mesh, its models, its memory budgets, the
/// stages loaded, and the drivers here waiting for their ring to close.
pub struct Host {
    mesh: Mesh,
    cache: ModelCache,
    /// Fetches the parts of models this node lacks.
    share: Arc<Share>,
    compute: Compute,
    budget: Arc<Budget>,
    kv: KvReserve,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
    runtime: tokio::runtime::Handle,
    models: Mutex<HashMap<String, Opened>>,
    stages: Mutex<HashMap<StageKey, LoadedStage>>,
    /// A gate per stage being loaded: sessions that want the same stage wait for one load.
    loading: Mutex<HashMap<StageKey, Arc<Mutex<()>>>>,
    /// Drivers here waiting for the stream that closes their ring, by session.
    returns: Mutex<HashMap<u64, (PeerId, oneshot::Sender<Stream>)>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "split::Host({})", self.mesh.peer_id())
    }
}

impl Host {
    /// A host on `mesh` serving stages of models in `cache`.
    pub fn new(
        mesh: Mesh,
        cache: ModelCache,
        share: Arc<Share>,
        compute: Compute,
        budgets: Budgets,
        metrics: Arc<Metrics>,
        drain: Arc<Drain>,
    ) -> Arc<Self> {
        Arc::new(Host {
            mesh,
            cache,
            share,
            compute,
            budget: budgets.weights,
            kv: budgets.kv,
            metrics,
            drain,
            runtime: tokio::runtime::Handle::current(),
            models: Mutex::new(HashMap::new()),
            stages: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            returns: Mutex::new(HashMap::new()),
        })
    }

    /// The opened model file with `digest` (tokenizer, template, spec; no weights loaded).
    /// Blocks: call it off the async runtime.
    pub fn model(&self, digest: &str) -> Result<Arc<Model>, JobError> {
        self.opened(digest).map(|o| o.model)
    }

    fn opened(&self, digest: &str) -> Result<Opened, JobError> {
        if let Some(m) = self.models.lock().expect("models lock").get(digest) {
            return Ok(m.clone());
        }
        // A model this node lacks: its header, fetched from the household.
        let (path, name) = match crate::jobs::cached(&self.cache, digest) {
            Ok(entry) => (self.cache.file_path(&entry.digest), entry.name),
            Err(JobError::NoModel(_)) => (
                self.fetch(digest, None)?,
                crate::share::short(digest).to_owned(),
            ),
            Err(e) => return Err(e),
        };
        let model = self
            .compute
            .open_model(&path)
            .map_err(|e| JobError::Internal(format!("cannot open {name}: {e}")))?;
        let layout = hearth_shards::model::layout(model.gguf())
            .map_err(|e| JobError::BadRequest(e.to_string()))?;
        let opened = Opened {
            model: Arc::new(model),
            layout: Arc::new(layout),
        };
        self.models
            .lock()
            .expect("models lock")
            .insert(digest.to_owned(), opened.clone());
        Ok(opened)
    }

    /// Fetches what a stage of `digest` holding `layers` (or only the header) reads, when this
    /// node's cache lacks the model. Blocks: call it off the async runtime.
    fn fetch(
        &self,
        digest: &str,
        layers: Option<Range<u32>>,
    ) -> Result<std::path::PathBuf, JobError> {
        // No holder to fetch from: this node simply has no such model.
        if !self.share.holders(digest).iter().any(|h| h.root.is_some()) {
            return Err(JobError::NoModel(digest.to_owned()));
        }
        let (share, d) = (self.share.clone(), digest.to_owned());
        self.runtime
            .block_on(async move { share.fetch_stage(&d, layers).await })
            .map_err(|e| {
                JobError::Internal(format!(
                    "this node lacks model {} and cannot fetch its part from the household: {e}",
                    crate::share::short(digest)
                ))
            })
    }

    /// Sets up this node's part of session `index` of `split` for `digest`: checks the split
    /// covers the model, loads the stage (or finds it loaded) and reserves a cache of `context`
    /// positions (capped at the model's) in the node's `--kv-memory` budget, waiting for running
    /// replies at most [`RESERVE_WAIT`]. Blocks: call it off the async runtime.
    pub(crate) fn session(
        &self,
        digest: &str,
        split: &hearth_protocol::Split,
        index: usize,
        context: u32,
    ) -> Result<Session, JobError> {
        let Opened { model, layout } = self.opened(digest)?;
        split.check(layout.layers()).map_err(JobError::BadRequest)?;
        let plan = &split.stages[index];
        let stage = self.stage(digest, plan.start..plan.end)?;
        let context = context.min(layout.context).max(1);
        let bytes =
            layout.kv_bytes_per_token * u64::from(plan.end - plan.start) * u64::from(context);
        let memory = (self.kv)(bytes, RESERVE_WAIT)?;
        Ok(Session {
            stage,
            layout,
            vocab: model.spec().vocab as u32,
            context,
            _memory: memory,
        })
    }

    /// The stage of `digest` holding `layers` (behind its batcher), loading it (within the
    /// memory budget) if needed. Blocks: call it off the async runtime.
    pub fn stage(&self, digest: &str, layers: Range<u32>) -> Result<Arc<DecodeBatcher>, JobError> {
        let key = (digest.to_owned(), layers.start, layers.end);
        if let Some(s) = self.stages.lock().expect("stages lock").get_mut(&key) {
            s.last_used = Instant::now();
            return Ok(s.batcher.clone());
        }
        let gate = self
            .loading
            .lock()
            .expect("loading lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let _one_load = gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = self.stages.lock().expect("stages lock").get_mut(&key) {
            return Ok(s.batcher.clone());
        }
        let Opened { model, layout } = self.opened(digest)?;
        if layers.start >= layers.end || layers.end > layout.layers() {
            return Err(JobError::BadRequest(format!(
                "layers {}..{} are not a range of this model's {}",
                layers.start,
                layers.end,
                layout.layers()
            )));
        }
        // Another range of the same model that no session uses belongs to an older plan.
        self.stages
            .lock()
            .expect("stages lock")
            .retain(|k, s| k.0 != digest || s.in_use());
        if matches!(
            crate::jobs::cached(&self.cache, digest),
            Err(JobError::NoModel(_))
        ) {
            self.fetch(digest, Some(layers.clone()))?;
        }
        let bytes = layout.stage_bytes(layers.start, layers.end, 0);
        let what = format!("layers {}..{}", layers.start, layers.end);
        let memory = self.reserve(&what, bytes)?;
        let stage = self
            .compute
            .stage(&model, layers.start as usize..layers.end as usize, &what)
            .map_err(|e| JobError::Internal(format!("cannot load {what}: {e}")))?;
        tracing::info!(model = digest, layers = %what, mb = bytes >> 20, "stage loaded");
        let batcher = Arc::new(DecodeBatcher::new(Arc::new(stage)));
        self.stages.lock().expect("stages lock").insert(
            key.clone(),
            LoadedStage {
                batcher: batcher.clone(),
                bytes,
                _memory: memory,
                last_used: Instant::now(),
            },
        );
        self.loading.lock().expect("loading lock").remove(&key);
        Ok(batcher)
    }

    /// Reserves `bytes` for `what`, dropping stages no session uses if that makes room. While
    /// sessions still hold stages (those of a ring that just broke end within moments, and a
    /// re-plan may want their memory at once), it waits for them, at most [`RESERVE_WAIT`].
    fn reserve(&self, what: &str, bytes: u64) -> Result<Reservation, JobError> {
        let deadline = Instant::now() + RESERVE_WAIT;
        loop {
            self.release_idle();
            match self.budget.reserve(what, bytes) {
                Ok(r) => return Ok(r),
                Err(e) if Instant::now() >= deadline || !self.stages_in_use() => {
                    return Err(JobError::Internal(e.to_string()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Whether any session holds a loaded stage.
    fn stages_in_use(&self) -> bool {
        self.stages
            .lock()
            .expect("stages lock")
            .values()
            .any(LoadedStage::in_use)
    }

    /// Bytes held by loaded stages' weights. Sessions of the same stage share them, and a load
    /// takes back those no session uses, so planners count them as free.
    pub fn stage_bytes(&self) -> u64 {
        self.stages
            .lock()
            .expect("stages lock")
            .values()
            .map(|s| s.bytes)
            .sum()
    }

    /// Decoding steps run by the loaded stages, and the session-steps they served.
    pub fn batch_stats(&self) -> hearth_shards::BatchStats {
        let stages = self.stages.lock().expect("stages lock");
        stages.values().map(|s| s.batcher.stats()).sum()
    }

    /// Drops every loaded stage no session uses (to make room for something else).
    pub fn release_idle(&self) {
        self.stages
            .lock()
            .expect("stages lock")
            .retain(|_, s| s.in_use());
    }

    /// Drops stages idle for [`STAGE_IDLE`] that no session uses.
    fn forget_idle(&self) {
        self.stages
            .lock()
            .expect("stages lock")
            .retain(|_, s| s.in_use() || s.last_used.elapsed() < STAGE_IDLE);
    }
}

/// Serves peers' stage sessions (and the streams that close this node's own rings).
pub fn serve(host: Arc<Host>) -> Result<()> {
    let incoming = host.mesh.accept(STAGE_PROTOCOL)?;
    tokio::spawn(server::serve(incoming, host.clone()));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let h = host.clone();
            let _ = tokio::task::spawn_blocking(move || h.forget_idle()).await;
        }
    });
    Ok(())
}
