//! `hearth node`: the composition root. Starts the engine, the mesh and each protocol over it
//! (cards, jobs, split stages, model sharing, history sync), then the HTTP API; records where it listens; and on SIGINT/SIGTERM stops taking
//! work, lets in-flight replies finish, tells peers and exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cards::{self, CardSource};
use crate::config::NodeConfig;
use crate::data_dir::DataDir;
use crate::drain::Drain;
use crate::history::{self, History};
use crate::household::Household;
use crate::jobs::{self, Engine, EngineConfig, JobError};
use crate::memory::Budget;
use crate::mesh::{Mesh, MeshConfig};
use crate::metrics::Metrics;
use crate::models::ModelCache;
use crate::node::Node;
use crate::runtime_file::RuntimeInfo;
use crate::{api, durable, identity, logs};
use crate::{share, split};

/// Test hook: milliseconds added to every model load, so tests can watch a node while it loads.
const LOAD_DELAY_VAR: &str = "HEARTH_TEST_LOAD_DELAY_MS";

/// Runs the node until SIGINT or SIGTERM.
pub fn run(data: DataDir, config: NodeConfig) -> Result<()> {
    logs::init(config.log_format);
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
    let drain = Drain::new();
    let cache = ModelCache::new(data.models());
    first_run_hint(&cache);
    let load_delay = std::env::var(LOAD_DELAY_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let threads = config
        .threads
        .unwrap_or_else(hearth_shards::default_threads);
    let compute = crate::devices::Compute::open(config.device, config.gpu_memory, threads)?;
    match compute.gpu() {
        Some(gpu) => tracing::info!(gpu = %gpu.info(), "models run on the GPU"),
        None => tracing::info!(device = %config.device, "models run on the CPU"),
    }
    let engine = Engine::new(
        EngineConfig {
            node: config.name.clone(),
            context: config.ctx,
            max_jobs: config.max_jobs,
            max_queue: config.max_queue,
            load_delay,
            kv_memory: config.kv_memory.unwrap_or_else(|| {
                crate::memory::default_kv_memory(config.max_memory, crate::devices::free_memory())
            }),
            compute: compute.clone(),
        },
        cache.clone(),
        metrics.clone(),
        drain.clone(),
        Budget::new(config.max_memory),
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
            .context("preloading failed")?
            .with_context(|| format!("--load {model}"))?;
    }
    let api_listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("cannot listen for the API on {}", config.api))?;
    let api_addr = api_listener.local_addr()?;
    let ollama_listener = match config.ollama_api {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen for the Ollama API on {addr} (is Ollama itself running there? \
                 stop it, or give --ollama-api another address)"
            )
        })?),
        None => None,
    };
    let ollama_addr = ollama_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()?;

    let fingerprint = household.secret.fingerprint();
    let mesh = Mesh::start(
        key,
        household,
        MeshConfig {
            listen: config.listen.clone(),
            peers: config.peers.clone(),
            mdns: config.mdns,
        },
        metrics.clone(),
    )
    .await?;
    let card: CardSource = {
        let (name, mesh, engine) = (config.name.clone(), mesh.clone(), engine.clone());
        Arc::new(move || cards::build_card(&name, &mesh, &engine))
    };
    let cards = cards::start(&mesh, card.clone())?;
    let share = {
        let engine = engine.clone();
        let limits = share::Limits {
            cache_size: config.cache_size,
            pull_when_faster: config.pull_when_faster,
            in_use: Box::new(move || engine.in_use()),
        };
        share::start(&mesh, cards.clone(), cache.clone(), metrics.clone(), limits)?
    };
    jobs::serve(&mesh, engine.clone())?;
    let stages = split::Host::new(
        mesh.clone(),
        cache.clone(),
        share.clone(),
        compute,
        split::Budgets {
            weights: engine.budget().clone(),
            kv: {
                // Weak: the engine holds the host.
                let engine = Arc::downgrade(&engine);
                Box::new(move |need, wait| match engine.upgrade() {
                    Some(engine) => engine.reserve_stage_kv(need, wait),
                    None => Err(JobError::Internal("the node is shutting down".into())),
                })
            },
        },
        metrics.clone(),
        drain.clone(),
    );
    split::serve(stages.clone())?;
    engine.serve_splits(stages);
    let history_dir = data.root().join("history");
    let device = mesh.peer_id().to_string();
    let history = tokio::task::spawn_blocking(move || History::open(&history_dir, &device))
        .await
        .context("loading the history failed")??;
    history::sync::start(&mesh, history.clone())?;
    let node = Arc::new(Node {
        name: config.name.clone(),
        engine: engine.clone(),
        mesh: mesh.clone(),
        cards,
        card,
        metrics,
        api_token: config.api_token.clone(),
        drain: drain.clone(),
        history,
        share,
        sampling: config.sampling,
        queue_timeout: config.queue_timeout,
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
        ollama_api: ollama_addr.map(|a| a.to_string()),
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

    // Every listener serves the same routes (Ollama's port too: its clients find both APIs).
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let servers: Vec<_> = std::iter::once(api_listener)
        .chain(ollama_listener)
        .map(|listener| {
            let app = api::router(node.clone());
            tokio::spawn(api::server::serve(listener, app, api_stopped.clone()))
        })
        .collect();

    shutdown_signal().await;
    tracing::info!(grace = ?config.grace, "shutting down: finishing in-flight replies");
    drain.start();
    if !drain.settle(config.grace).await {
        tracing::warn!(
            in_flight = drain.in_flight(),
            "grace over; stopping with work in flight"
        );
    }
    let _ = stop_api.send(true);
    for server in servers {
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    }
    mesh.shutdown().await;
    let history = node.history.clone();
    let _ = tokio::task::spawn_blocking(move || history.flush()).await;
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

/// With an empty cache, says how many GGUF files other tools keep on this device, and how to
/// use them. Directories and manifests only: headers are read when a person asks (`--scan`),
/// not at every start.
fn first_run_hint(cache: &ModelCache) {
    if !cache.list().is_ok_and(|m| m.is_empty()) {
        return;
    }
    use crate::models::scan::{files, Places};
    let found = files(&Places::of_this_device()).len();
    if found > 0 {
        tracing::info!(
            found,
            "this node has no models, but other tools keep {found} GGUF files on this device: `hearth models import --scan` lists them and says which hearth runs"
        );
    }
}
