//! `hearth node`: starts the engine, the mesh and the HTTP API, records where it listens, and on
//! SIGINT/SIGTERM stops taking work, lets in-flight replies finish, tells peers and exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hearth_protocol::{Card, ModelInfo, ModelSpeed, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

use crate::config::{LogFormat, NodeConfig};
use crate::data_dir::DataDir;
use crate::engine::{Engine, EngineConfig};
use crate::household::Household;
use crate::mesh::peers::PeerView;
use crate::mesh::{Mesh, MeshConfig};
use crate::metrics::{Gauges, Metrics};
use crate::model_cache::ModelCache;
use crate::routing::{self, Candidate, Route};
use crate::{api, devices, durable, identity};

/// Where a running node can be reached; written to `<data-dir>/node.json` while it runs, so that
/// `hearth chat`, `hearth peers` and the tests find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub name: String,
    pub peer_id: String,
    pub api: String,
    pub listen: Vec<String>,
    pub pid: u32,
}

impl RuntimeInfo {
    /// The runtime file in `data`.
    pub fn path(data: &DataDir) -> std::path::PathBuf {
        data.root().join("node.json")
    }
}

/// A running node: what the API and the job dispatcher share.
pub struct Node {
    pub name: String,
    pub engine: Arc<Engine>,
    pub mesh: Mesh,
    pub metrics: Arc<Metrics>,
    pub api_token: Option<String>,
    draining: AtomicBool,
    replies: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({})", self.name)
    }
}

/// A model found somewhere in the household.
#[derive(Debug, Clone, Serialize)]
pub struct MeshModel {
    pub info: ModelInfo,
    /// Nodes holding it.
    pub nodes: Vec<String>,
    /// Nodes with it loaded.
    pub loaded_on: Vec<String>,
}

impl Node {
    /// This node's card, measured now.
    pub fn card(&self) -> Card {
        build_card(&self.name, &self.mesh, &self.engine)
    }

    /// This node and every connected peer with a card, this node first: one snapshot, taken
    /// once per request (building this node's card reads /proc and the model index).
    pub fn members(&self) -> Members {
        let mut all = vec![PeerView {
            peer_id: self.mesh.peer_id().to_string(),
            addr: self.mesh.listen_addrs().first().map(ToString::to_string),
            latency_ms: Some(0.0),
            this_node: true,
            card: Some(self.card()),
        }];
        all.extend(self.mesh.peers().into_iter().filter(|p| p.card.is_some()));
        Members(all)
    }

    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Counts a reply in flight until the guard drops.
    pub fn reply_started(self: &Arc<Self>) -> ReplyGuard {
        self.replies.fetch_add(1, Ordering::SeqCst);
        ReplyGuard(self.clone())
    }

    /// Gauges for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let load = self.engine.load();
        let names = self.engine.cache().list().unwrap_or_default();
        let batches = self.engine.batch_stats();
        Gauges {
            queue_depth: u64::from(load.queued),
            active_jobs: u64::from(load.active),
            peers: self.mesh.peers().len() as u64,
            decode_steps: batches.steps,
            decode_step_sessions: batches.rows,
            speeds: self
                .engine
                .speeds()
                .into_iter()
                .map(|(d, t)| {
                    let name = names
                        .iter()
                        .find(|m| m.digest == d)
                        .map_or(d, |m| m.name.clone());
                    (name, t)
                })
                .collect(),
        }
    }
}

/// A snapshot of the household as this node sees it: itself and its peers with their cards.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Members(pub Vec<PeerView>);

impl Members {
    fn cards(&self) -> impl Iterator<Item = &Card> {
        self.0.iter().filter_map(|m| m.card.as_ref())
    }

    /// The member named `name`.
    pub fn named(&self, name: &str) -> Option<&PeerView> {
        self.0
            .iter()
            .find(|m| m.card.as_ref().is_some_and(|c| c.name == name))
    }

    /// Every model in the household, by digest.
    pub fn models(&self) -> Vec<MeshModel> {
        let mut out: Vec<MeshModel> = Vec::new();
        for card in self.cards() {
            for m in &card.models {
                let entry = match out.iter_mut().position(|e| e.info.digest == m.digest) {
                    Some(i) => &mut out[i],
                    None => {
                        out.push(MeshModel {
                            info: m.clone(),
                            nodes: Vec::new(),
                            loaded_on: Vec::new(),
                        });
                        out.last_mut().expect("just pushed")
                    }
                };
                entry.nodes.push(card.name.clone());
                if card.loaded.contains(&m.digest) {
                    entry.loaded_on.push(card.name.clone());
                }
            }
        }
        out
    }

    /// The household model a request names: by name, or by a digest prefix of 6+ characters.
    pub fn find_model(&self, query: &str) -> Result<MeshModel, String> {
        let models = self.models();
        let q = query.to_ascii_lowercase();
        models
            .iter()
            .find(|m| m.info.name.eq_ignore_ascii_case(query))
            .or_else(|| {
                models
                    .iter()
                    .find(|m| q.len() >= 6 && m.info.digest.starts_with(&q))
            })
            .cloned()
            .ok_or_else(|| {
                let mut names: Vec<&str> = models.iter().map(|m| m.info.name.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                if names.is_empty() {
                    format!("model {query} is not on any node of this household, and no node has any model; import one with `hearth models import`")
                } else {
                    format!(
                        "model {query} is not on any node of this household; available: {}",
                        names.join(", ")
                    )
                }
            })
    }

    /// Ranks the household's nodes for the model with `digest`.
    pub fn route(&self, digest: &str, pin: Option<&str>) -> Route {
        let candidates = self
            .0
            .iter()
            .filter_map(|m| {
                let card = m.card.as_ref()?;
                let model = card.model(digest);
                Some(Candidate {
                    node: card.name.clone(),
                    peer_id: (!m.this_node).then(|| m.peer_id.clone()),
                    loaded: card.loaded.iter().any(|d| d == digest),
                    cached: model.is_some(),
                    free_memory: card.free_memory(),
                    model_size: model.map_or(0, |m| m.size),
                    queue_depth: card.queue_depth,
                    active_jobs: card.active_jobs,
                    tokens_per_s: card.speed(digest),
                    latency_ms: m.latency_ms,
                    draining: card.draining,
                })
            })
            .collect();
        routing::rank(candidates, pin)
    }
}

/// Marks the end of a reply (see [`Node::reply_started`]).
pub struct ReplyGuard(Arc<Node>);

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        self.0.replies.fetch_sub(1, Ordering::SeqCst);
    }
}

fn build_card(name: &str, mesh: &Mesh, engine: &Engine) -> Card {
    let load = engine.load();
    let models = engine
        .cache()
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|m| ModelInfo {
            digest: m.digest,
            name: m.name,
            family: m.summary.architecture,
            quantization: m.summary.quantization,
            size: m.size,
            layers: m.summary.layers.unwrap_or(0) as u32,
        })
        .collect();
    Card {
        name: name.to_owned(),
        peer_id: mesh.peer_id().to_string(),
        version: PROTOCOL_VERSION,
        os: devices::os(),
        devices: devices::probe(),
        models,
        loaded: engine.loaded(),
        speeds: engine
            .speeds()
            .into_iter()
            .map(|(digest, tokens_per_s)| ModelSpeed {
                digest,
                tokens_per_s,
            })
            .collect(),
        queue_depth: load.queued,
        active_jobs: load.active,
        max_jobs: engine.max_jobs() as u32,
        draining: engine.is_draining(),
        revoked: mesh.revoked(),
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEARTH_LOG")
        .unwrap_or_else(|_| "info,libp2p=warn,libp2p_swarm=warn,mdns_sd=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the node until SIGINT or SIGTERM.
pub fn run(data: DataDir, config: NodeConfig) -> Result<()> {
    init_logs(config.log_format);
    let household = Household::require(&Household::path_in(data.root()))?;
    let key = identity::load_or_create(&data.root().join("identity.key"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(data, config, household, key))
}

async fn serve(
    data: DataDir,
    config: NodeConfig,
    household: Household,
    key: libp2p::identity::Keypair,
) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let cache = ModelCache::new(data.models());
    let engine = Engine::new(
        EngineConfig {
            node: config.name.clone(),
            threads: config
                .threads
                .unwrap_or_else(hearth_shards::default_threads),
            context: config.ctx,
            max_jobs: config.max_jobs,
            max_queue: config.max_queue,
        },
        cache.clone(),
        metrics.clone(),
    );
    for model in &config.load {
        let digest = cache
            .resolve(model)?
            .entry
            .map(|e| e.digest)
            .with_context(|| {
                format!("--load {model}: only cached models can be preloaded; import it first")
            })?;
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.preload(&digest))
            .await
            .context("preloading failed")??;
    }
    let api_listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("cannot listen for the API on {}", config.api))?;
    let api_addr = api_listener.local_addr()?;

    let fingerprint = household.secret.fingerprint();
    let name = config.name.clone();
    let card_engine = engine.clone();
    let mesh = Mesh::start(
        key,
        household,
        MeshConfig {
            listen: config.listen.clone(),
            peers: config.peers.clone(),
            mdns: config.mdns,
        },
        Arc::new(move |mesh: &Mesh| build_card(&name, mesh, &card_engine)),
        engine.clone(),
        metrics.clone(),
    )
    .await?;
    let node = Arc::new(Node {
        name: config.name.clone(),
        engine: engine.clone(),
        mesh: mesh.clone(),
        metrics,
        api_token: config.api_token.clone(),
        draining: AtomicBool::new(false),
        replies: AtomicU64::new(0),
    });

    // Wait (briefly) for the listen addresses so the runtime file has them.
    for _ in 0..50 {
        if !mesh.listen_addrs().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runtime_path = RuntimeInfo::path(&data);
    let info = RuntimeInfo {
        name: config.name.clone(),
        peer_id: mesh.peer_id().to_string(),
        api: api_addr.to_string(),
        listen: mesh
            .listen_addrs()
            .iter()
            .map(ToString::to_string)
            .collect(),
        pid: std::process::id(),
    };
    durable::write_atomic(&runtime_path, &serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("cannot write {}", runtime_path.display()))?;
    tracing::info!(
        node = %config.name,
        peer = %mesh.peer_id(),
        api = %api_addr,
        household = %fingerprint,
        "node running"
    );

    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let app = api::router(node.clone());
    let server = tokio::spawn(async move {
        axum::serve(api_listener, app)
            .with_graceful_shutdown(async {
                let _ = api_stopped.await;
            })
            .await
    });

    shutdown_signal().await;
    tracing::info!(grace = ?config.grace, "shutting down: finishing in-flight replies");
    node.draining.store(true, Ordering::SeqCst);
    engine.drain();
    let deadline = Instant::now() + config.grace;
    while Instant::now() < deadline
        && (engine.in_flight() > 0 || node.replies.load(Ordering::SeqCst) > 0)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_api.send(());
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    mesh.shutdown().await;
    let _ = std::fs::remove_file(&runtime_path);
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot listen for SIGTERM");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
