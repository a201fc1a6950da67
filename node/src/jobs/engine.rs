//! Runs generation jobs on this node, for its own API and for peers: loads models on first use
//! (and keeps them), runs up to `max_jobs` at once on worker threads, queues the rest fairly up to
//! a bound, and answers "busy" beyond it. Jobs decoding the same model at the same time share
//! each decoding step (one batched step reads the weights once for all of them). Events stream
//! back through a channel; when its receiver is dropped the job stops at the next token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hearth_protocol::{
    FailCode, Finish, JobEvent, JobParams, JobRequest, Usage, MAX_PROMPT_TOKENS,
};
use hearth_shards::{
    decode_reply, prefill, BatchStats, DecodeBatcher, Error as EngineError, GenerateParams,
    Generator, Model, Piece, SamplingParams, PREFILL_CHUNK,
};
use tokio::sync::mpsc;

use super::fair_queue::FairQueue;
use crate::devices::Compute;
use crate::drain::{Drain, InFlight};
use crate::memory::{Budget, Reservation};
use crate::metrics::Metrics;
use crate::models::{CachedModel, ModelCache};
use crate::split;

/// Events buffered per job before generation waits for the reader.
const EVENT_BUFFER: usize = 64;
/// Finished jobs' generators (KV caches) kept for reuse: a follow-up turn of a conversation
/// finds the one holding its history and only computes the new tokens. Each can hold up to a
/// context's worth of keys and values (94 MB for SmolLM2 at 4096 tokens).
const IDLE_GENERATORS: usize = 4;
/// Keys and values those finished replies may hold in all: beyond it the least recently used
/// go first (a cache's memory grows with the positions written, not with the context).
const IDLE_CACHE_BYTES: usize = 128 << 20;
/// How often a reply waiting for memory for its keys and values looks again.
const KV_WAIT_POLL: Duration = Duration::from_millis(20);
const MB: u64 = 1 << 20;
/// How often models whose keep-alive ran out are unloaded.
const UNLOAD_POLL: Duration = Duration::from_millis(250);

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Name reported in `Started` events.
    pub node: String,
    /// Context length per job (capped at the model's).
    pub context: usize,
    pub max_jobs: usize,
    pub max_queue: usize,
    /// Extra time every model load takes: zero but in tests that need a slow load
    /// (`HEARTH_TEST_LOAD_DELAY_MS`).
    pub load_delay: Duration,
    /// Bytes for every reply's keys and values together (`--kv-memory`).
    pub kv_memory: u64,
    /// Where models run (`--device`).
    pub compute: Compute,
}

/// Why a job failed, as the engine knows it; each API maps it to its own status and shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The request is wrong; no node will do better.
    #[error("{0}")]
    BadRequest(String),
    /// The prompt does not fit the context.
    #[error("{0}")]
    ContextOverflow(String),
    /// This node's cache has no model with that digest.
    #[error("this node has no model with digest {0}")]
    NoModel(String),
    /// The reply's keys and values need more than this node's whole `--kv-memory`: a node
    /// with a larger budget may serve it.
    #[error("{0}")]
    TooLarge(String),
    /// Something broke here; another node may succeed.
    #[error("{0}")]
    Internal(String),
    /// A split lost the stage on `peer`: a plan without it may succeed.
    #[error("{message}")]
    StageLost {
        peer: libp2p::PeerId,
        message: String,
    },
}

impl JobError {
    /// The wire code for a peer.
    pub fn code(&self) -> FailCode {
        match self {
            JobError::BadRequest(_) => FailCode::BadRequest,
            JobError::ContextOverflow(_) => FailCode::ContextOverflow,
            JobError::NoModel(_) => FailCode::NoModel,
            JobError::TooLarge(_) => FailCode::TooLarge,
            JobError::Internal(_) | JobError::StageLost { .. } => FailCode::Internal,
        }
    }

    /// The event that tells a requester about it.
    pub fn event(&self) -> JobEvent {
        match self {
            JobError::StageLost { peer, message } => JobEvent::StageLost {
                peer: peer.to_string(),
                message: message.clone(),
            },
            other => JobEvent::Failed {
                code: other.code(),
                message: other.to_string(),
            },
        }
    }
}

impl From<EngineError> for JobError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ContextOverflow { .. } => JobError::ContextOverflow(e.to_string()),
            EngineError::BadParameter(_) | EngineError::Template(_) => {
                JobError::BadRequest(e.to_string())
            }
            other => JobError::Internal(other.to_string()),
        }
    }
}

struct Loaded {
    model: Model,
    /// The model's weights, reserved in the node's memory budget.
    _memory: Reservation,
    /// Every job's decoding steps on this model go through it.
    batcher: Arc<DecodeBatcher>,
}

struct Pending {
    request: JobRequest,
    events: mpsc::Sender<JobEvent>,
    /// Counts the job for shutdown until it ends.
    _in_flight: InFlight,
    /// Counts a split job until it ends.
    _split: Option<SplitJob>,
}

/// One split job counted in [`Engine::occupancy`], from its arrival to its end.
struct SplitJob(Arc<AtomicU32>);

impl Drop for SplitJob {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Jobs waiting for a slot, and how many run.
struct Slots {
    waiting: FairQueue<Pending>,
    running: usize,
}

/// The local job runner.
pub struct Engine {
    config: EngineConfig,
    cache: ModelCache,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
    slots: Mutex<Slots>,
    /// Models ready to serve, by digest. Locked only to look up or insert, never during a load,
    /// so cards and the API never wait on one.
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    /// A gate per model being loaded: jobs that want the same model wait for one load of it.
    loading: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    speeds: Mutex<HashMap<String, f32>>,
    /// (model digest, generator), least recently used first.
    idle: Mutex<Vec<(String, Generator)>>,
    /// When an idle model is unloaded, by digest (a request's `keep_alive`); models without
    /// an entry stay loaded.
    unload_at: Mutex<HashMap<String, Instant>>,
    /// What this node offers for models.
    budget: Arc<Budget>,
    /// Keys and values: running replies reserve theirs before they start; finished replies'
    /// caches (`idle`) keep only what is left.
    kv: Arc<Budget>,
    /// Runs split jobs' stages; set once the mesh is up.
    split: OnceLock<Arc<split::Host>>,
    /// Split jobs waiting or running here.
    split_jobs: Arc<AtomicU32>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.config.node)
    }
}

/// Jobs waiting for a slot and jobs running, for the card and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub waiting: u32,
    pub running: u32,
    /// Of those waiting and running, replies this node drives through a split.
    pub split: u32,
}

impl Engine {
    /// An engine serving models from `cache`; it stops taking jobs when `drain` starts.
    pub fn new(
        config: EngineConfig,
        cache: ModelCache,
        metrics: Arc<Metrics>,
        drain: Arc<Drain>,
        budget: Arc<Budget>,
    ) -> Arc<Self> {
        let kv = Budget::new(Some(config.kv_memory));
        let engine = Arc::new(Engine {
            slots: Mutex::new(Slots {
                waiting: FairQueue::new(config.max_queue),
                running: 0,
            }),
            config,
            cache,
            metrics,
            drain,
            loaded: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            speeds: Mutex::new(HashMap::new()),
            idle: Mutex::new(Vec::new()),
            unload_at: Mutex::new(HashMap::new()),
            budget,
            kv,
            split: OnceLock::new(),
            split_jobs: Arc::new(AtomicU32::new(0)),
        });
        // Unloads models whose keep-alive ran out; ends with the engine.
        let weak = Arc::downgrade(&engine);
        std::thread::Builder::new()
            .name("hearth-unload".into())
            .spawn(move || loop {
                std::thread::sleep(UNLOAD_POLL);
                match weak.upgrade() {
                    Some(engine) => engine.unload_expired(),
                    None => break,
                }
            })
            .expect("a thread starts");
        engine
    }

    /// Keeps model `digest` loaded for `seconds` once idle (0: unload it once idle; negative:
    /// keep it loaded).
    pub fn keep_alive(&self, digest: &str, seconds: i64) {
        let mut unload_at = self.unload_at.lock().expect("unload lock");
        match u64::try_from(seconds) {
            Ok(s) => unload_at.insert(digest.to_owned(), Instant::now() + Duration::from_secs(s)),
            Err(_) => unload_at.remove(digest),
        };
    }

    /// How long until model `digest` is unloaded, if its keep-alive is running.
    pub fn unloads_in(&self, digest: &str) -> Option<Duration> {
        let unload_at = self.unload_at.lock().expect("unload lock");
        unload_at
            .get(digest)
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Unloads the models whose keep-alive ran out and that no job uses now (those are tried
    /// again at the next poll), with their idle caches.
    pub fn unload_expired(&self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .unload_at
            .lock()
            .expect("unload lock")
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(d, _)| d.clone())
            .collect();
        for digest in due {
            self.idle
                .lock()
                .expect("idle lock")
                .retain(|(d, _)| *d != digest);
            let mut loaded = self.loaded.lock().expect("loaded lock");
            let unused = loaded
                .get(&digest)
                .is_none_or(|m| Arc::strong_count(m) == 1);
            if unused {
                if loaded.remove(&digest).is_some() {
                    tracing::info!(digest, "model unloaded: its keep-alive ran out");
                }
                self.unload_at.lock().expect("unload lock").remove(&digest);
            }
        }
    }

    /// Lets split jobs run their stages through `host`.
    pub fn serve_splits(&self, host: Arc<split::Host>) {
        let _ = self.split.set(host);
    }

    /// Context length per job (the model's own is the cap).
    pub fn context(&self) -> usize {
        self.config.context
    }

    /// What this node offers for models, and what is reserved.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Tokens generated since the node started.
    pub fn tokens_generated(&self) -> u64 {
        self.metrics
            .tokens_generated
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes taken by whole models and split sessions' caches. Split stages' weights do not
    /// count: sessions of the same stage share them, and a load takes back idle ones, so a card
    /// polled while a reply ran does not keep the node's memory looking full.
    pub fn memory_used(&self) -> u64 {
        let stages = self.split.get().map_or(0, |h| h.stage_bytes());
        self.budget.used().saturating_sub(stages)
    }

    /// The model cache this engine serves from.
    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    /// Most jobs run at once.
    pub fn max_jobs(&self) -> usize {
        self.config.max_jobs
    }

    /// Jobs waiting and running.
    pub fn occupancy(&self) -> Occupancy {
        let s = self.slots.lock().expect("slots lock");
        Occupancy {
            waiting: s.waiting.len() as u32,
            running: s.running as u32,
            split: self.split_jobs.load(Ordering::SeqCst),
        }
    }

    /// Decoding steps run and the session-steps they served, over every loaded model and split
    /// stage.
    pub fn batch_stats(&self) -> BatchStats {
        let stages = self
            .split
            .get()
            .map(|h| h.batch_stats())
            .unwrap_or_default();
        let loaded = self.loaded.lock().expect("loaded lock");
        std::iter::once(stages)
            .chain(loaded.values().map(|m| m.batcher.stats()))
            .sum()
    }

    /// Digests of the models loaded and ready (not those still loading).
    pub fn loaded(&self) -> Vec<String> {
        self.loaded
            .lock()
            .expect("loaded lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Where each loaded model runs.
    pub fn placements(&self) -> Vec<hearth_protocol::ModelPlacement> {
        self.loaded
            .lock()
            .expect("loaded lock")
            .iter()
            .map(|(digest, m)| crate::devices::placement(digest, m.batcher.stage()))
            .collect()
    }

    /// Digests of the models loaded or being loaded: what the model cache must keep.
    pub fn in_use(&self) -> Vec<String> {
        let mut digests = self.loaded();
        digests.extend(self.loading.lock().expect("loading lock").keys().cloned());
        digests
    }

    /// Measured decode tokens/s per digest.
    pub fn speeds(&self) -> Vec<(String, f32)> {
        self.speeds
            .lock()
            .expect("speeds lock")
            .iter()
            .map(|(d, t)| (d.clone(), *t))
            .collect()
    }

    /// Whether the engine has stopped taking jobs.
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Loads the model with `digest` now (and measures its speed), instead of at its first job.
    /// Blocks: call it off the async runtime.
    pub fn preload(&self, digest: &str) -> Result<(), JobError> {
        self.model(digest).map(|_| ())
    }

    /// Queues a job for `requester`; its events arrive on the returned channel.
    pub fn submit(
        self: &Arc<Self>,
        requester: &str,
        request: JobRequest,
    ) -> mpsc::Receiver<JobEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        if self.is_draining() {
            let _ = tx.try_send(JobEvent::Busy {
                reason: format!("{} is shutting down", self.config.node),
            });
            return rx;
        }
        let split = request.split.is_some().then(|| {
            self.split_jobs.fetch_add(1, Ordering::SeqCst);
            SplitJob(self.split_jobs.clone())
        });
        let pending = Pending {
            request,
            events: tx,
            _in_flight: self.drain.enter(),
            _split: split,
        };
        let refused = {
            let mut s = self.slots.lock().expect("slots lock");
            s.waiting.push(requester, pending).err()
        };
        if let Some(p) = refused {
            let _ = p.events.try_send(JobEvent::Busy {
                reason: format!(
                    "{} has {} jobs waiting, its limit",
                    self.config.node, self.config.max_queue
                ),
            });
            return rx;
        }
        self.pump();
        rx
    }

    /// Starts waiting jobs while slots are free.
    fn pump(self: &Arc<Self>) {
        loop {
            let next = {
                let mut s = self.slots.lock().expect("slots lock");
                if s.running >= self.config.max_jobs {
                    return;
                }
                let Some((_, job)) = s.waiting.pop() else {
                    return;
                };
                s.running += 1;
                job
            };
            let engine = self.clone();
            let spawned = std::thread::Builder::new()
                .name("hearth-job".into())
                .spawn(move || {
                    engine.run(next);
                    engine.slots.lock().expect("slots lock").running -= 1;
                    engine.pump();
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a job thread");
                self.slots.lock().expect("slots lock").running -= 1;
                return;
            }
        }
    }

    /// The loaded model with `digest`, loading it first if needed. Only full digests of models in
    /// this node's cache are accepted: never names, prefixes or paths, whoever asks.
    fn model(&self, digest: &str) -> Result<Arc<Loaded>, JobError> {
        if let Some(m) = self.loaded.lock().expect("loaded lock").get(digest) {
            return Ok(m.clone());
        }
        let entry = cached(&self.cache, digest)?;
        let gate = self
            .loading
            .lock()
            .expect("loading lock")
            .entry(entry.digest.clone())
            .or_default()
            .clone();
        let _one_load = gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(m) = self.loaded.lock().expect("loaded lock").get(digest) {
            return Ok(m.clone());
        }
        std::thread::sleep(self.config.load_delay);
        let path = self.cache.file_path(&entry.digest);
        let need = entry
            .summary
            .layout
            .as_ref()
            .map_or(entry.size, |l| l.whole_bytes(0));
        let memory = self.budget.reserve(&entry.name, need).or_else(|_| {
            // Split stages no session uses give their memory back to a whole model.
            if let Some(host) = self.split.get() {
                host.release_idle();
            }
            self.budget
                .reserve(&entry.name, need)
                .map_err(|e| JobError::Internal(e.to_string()))
        });
        let opened = memory.and_then(|memory| {
            let compute = &self.config.compute;
            compute
                .open_model(&path)
                .and_then(|model| {
                    let stage = compute.stage(&model, 0..model.spec().n_layers(), &entry.name)?;
                    let placed = crate::devices::placement(digest, &stage);
                    tracing::info!(model = %entry.name, device = %placed.device, gpu_layers = placed.gpu_layers, "model placed");
                    Ok(Loaded {
                        batcher: Arc::new(DecodeBatcher::new(Arc::new(stage))),
                        model,
                        _memory: memory,
                    })
                })
                .map_err(|e| JobError::Internal(format!("cannot load {}: {e}", entry.name)))
        });
        let m = match opened {
            Ok(m) => Arc::new(m),
            Err(e) => {
                self.loading.lock().expect("loading lock").remove(digest);
                return Err(e);
            }
        };
        tracing::info!(model = %entry.name, digest, "model loaded");
        if let Err(e) = self.cache.touch(digest) {
            tracing::warn!(error = %format!("{e:#}"), "cannot record the model's use in the cache index");
        }
        self.self_benchmark(digest, &m);
        self.loaded
            .lock()
            .expect("loaded lock")
            .insert(entry.digest, m.clone());
        self.loading.lock().expect("loading lock").remove(digest);
        Ok(m)
    }

    /// A short greedy run right after loading, so routing has a speed before real traffic.
    fn self_benchmark(&self, digest: &str, m: &Loaded) {
        let tok = m.model.tokenizer();
        let prompt = tok.encode("The house", true, false);
        let Ok(mut g) = Generator::new(m.batcher.stage().clone(), tok.clone(), 64) else {
            return;
        };
        let params = GenerateParams {
            sampling: SamplingParams::greedy(),
            max_tokens: 16,
            stop: Vec::new(),
            json: false,
        };
        if let Ok(c) = g.generate(&prompt, &params, |_| true) {
            self.record_speed(digest, c.tokens.len(), c.decode_time);
        }
    }

    fn record_speed(&self, digest: &str, tokens: usize, time: Duration) {
        if tokens < 4 || time.is_zero() {
            return;
        }
        let now = (tokens as f64 / time.as_secs_f64()) as f32;
        let mut speeds = self.speeds.lock().expect("speeds lock");
        let s = speeds.entry(digest.to_owned()).or_insert(now);
        *s = 0.7 * *s + 0.3 * now;
    }

    fn run(&self, job: Pending) {
        let Pending {
            request, events, ..
        } = job;
        if events.is_closed() {
            return;
        }
        Metrics::inc(&self.metrics.jobs_served);
        let event = match self.generate(&request, &events) {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(model = %request.model, error = %e, "job failed");
                e.event()
            }
        };
        let _ = events.blocking_send(event);
    }

    fn generate(
        &self,
        request: &JobRequest,
        events: &mpsc::Sender<JobEvent>,
    ) -> Result<JobEvent, JobError> {
        request.check().map_err(JobError::BadRequest)?;
        check_params(&request.params)?;
        if let Some(split) = &request.split {
            return self.generate_split(request, split, events);
        }
        let loaded = self.model(&request.model)?;
        let model = &loaded.model;
        let (prompt, full, params) = prepare(model, request)?;
        let mut generator = self.take_generator(&request.model, &loaded, &full)?;
        // Before `Started`, so that a prompt too long is an error the API can still answer
        // with a status rather than in the middle of a stream.
        if let Err(e) = generator.check_fits(full.len()) {
            self.put_generator(&request.model, generator, None);
            return Err(e.into());
        }
        let positions = (full.len() + params.max_tokens).min(generator.context());
        let waiting = || !events.is_closed();
        let kv = match self.reserve_kv(generator.cache_bytes_for(positions), waiting) {
            Ok(kv) => kv,
            Err(refusal) => {
                self.put_generator(&request.model, generator, None);
                return match refusal {
                    KvRefusal::Busy(reason) => Ok(JobEvent::Busy { reason }),
                    KvRefusal::TooLarge(message) => Err(JobError::TooLarge(message)),
                };
            }
        };
        if let Some(cancelled) = self.start(events, prompt.len()) {
            return Ok(cancelled);
        }
        let completion = generator.resume(&prompt, &request.resume, &params, self.relay(events))?;
        if completion.finish == Finish::Cancelled {
            if let Some(e) = self.moving_on(events) {
                self.put_generator(&request.model, generator, Some(kv));
                return Err(e);
            }
        }
        let fresh = completion.tokens.len() - request.resume.tokens.len();
        self.record_speed(&request.model, fresh, completion.decode_time);
        self.put_generator(&request.model, generator, Some(kv));
        // The last request decides, as in Ollama; without a keep-alive, the model stays.
        self.keep_alive(&request.model, request.params.keep_alive.unwrap_or(-1));
        Ok(JobEvent::Done {
            finish: completion.finish,
            usage: Usage {
                prompt_tokens: completion.prompt_tokens as u32,
                completion_tokens: completion.tokens.len() as u32,
                cached_tokens: completion.reused_tokens as u32,
            },
        })
    }

    /// For a reply stopped mid-prompt while its requester is still there (the node is shutting
    /// down): the error that lets another node take it.
    fn moving_on(&self, events: &mpsc::Sender<JobEvent>) -> Option<JobError> {
        (self.is_draining() && !events.is_closed())
            .then(|| JobError::Internal(format!("{} is shutting down", self.config.node)))
    }

    /// Sends `Started`; the final event to send instead when the requester has gone.
    fn start(&self, events: &mpsc::Sender<JobEvent>, prompt_tokens: usize) -> Option<JobEvent> {
        let started = JobEvent::Started {
            node: self.config.node.clone(),
            prompt_tokens: prompt_tokens as u32,
        };
        events
            .blocking_send(started)
            .is_err()
            .then(|| JobEvent::Done {
                finish: Finish::Cancelled,
                usage: Usage {
                    prompt_tokens: prompt_tokens as u32,
                    ..Usage::default()
                },
            })
    }

    /// Hands each piece of the reply to the requester; `false` once it has gone (or, during a
    /// long prompt, once the node is shutting down).
    fn relay<'a>(
        &'a self,
        events: &'a mpsc::Sender<JobEvent>,
    ) -> impl FnMut(Piece<'_>) -> bool + 'a {
        move |piece| {
            let event = match piece {
                Piece::Prefill { done, total } => {
                    let gone = events.is_closed();
                    if gone || self.is_draining() {
                        tracing::info!(
                            done,
                            total,
                            reason = if gone {
                                "the requester went away"
                            } else {
                                "shutting down"
                            },
                            "prompt processing stopped"
                        );
                        return false;
                    }
                    return true;
                }
                Piece::Token { id, text } => {
                    Metrics::inc(&self.metrics.tokens_generated);
                    JobEvent::Token {
                        id,
                        text: text.to_owned(),
                    }
                }
                Piece::Tail(text) => JobEvent::Tail {
                    text: text.to_owned(),
                },
            };
            events.blocking_send(event).is_ok()
        }
    }

    /// Runs a split job: this node holds the last stage and drives the ring of stages.
    fn generate_split(
        &self,
        request: &JobRequest,
        split: &hearth_protocol::Split,
        events: &mpsc::Sender<JobEvent>,
    ) -> Result<JobEvent, JobError> {
        let host = self
            .split
            .get()
            .ok_or_else(|| JobError::Internal("this node does not run split stages".into()))?;
        let model = host.model(&request.model)?;
        let (prompt, full, params) = prepare(&model, request)?;
        let context = self.config.context.min(model.spec().context);
        if full.len() >= context {
            return Err(JobError::ContextOverflow(
                EngineError::ContextOverflow {
                    prompt: full.len(),
                    context,
                }
                .to_string(),
            ));
        }
        // Every stage's cache holds this reply's positions, reserved in its node's budget.
        let positions = (full.len() + params.max_tokens).min(context);
        let mut ring = split::Ring::open(host, &request.model, split, positions as u32)?;
        if let Some(cancelled) = self.start(events, prompt.len()) {
            return Ok(cancelled);
        }
        let mut logits = Vec::new();
        let mut fed = full.clone();
        let capacity = ring.context();
        let mut relay = self.relay(events);
        let decoded =
            prefill(&mut ring, &full, PREFILL_CHUNK, &mut logits, &mut relay).and_then(|n| {
                if n < full.len() {
                    // Stopped mid-prompt: the requester left, or the node is shutting down.
                    return Ok(None);
                }
                decode_reply(
                    &mut ring,
                    model.tokenizer(),
                    &mut fed,
                    capacity,
                    &mut logits,
                    &request.resume,
                    &params,
                    &mut relay,
                )
                .map(Some)
            });
        let decoded = match decoded {
            Ok(Some(d)) => d,
            Ok(None) => {
                if let Some(e) = self.moving_on(events) {
                    return Err(e);
                }
                return Ok(JobEvent::Done {
                    finish: Finish::Cancelled,
                    usage: Usage {
                        prompt_tokens: prompt.len() as u32,
                        ..Usage::default()
                    },
                });
            }
            Err(e) => return Err(ring.take_failure().unwrap_or_else(|| e.into())),
        };
        Ok(JobEvent::Done {
            finish: decoded.finish,
            usage: Usage {
                prompt_tokens: prompt.len() as u32,
                completion_tokens: decoded.tokens.len() as u32,
                cached_tokens: 0,
            },
        })
    }

    /// The idle generator whose cache shares the longest prefix with `tokens`, or a new one.
    fn take_generator(
        &self,
        digest: &str,
        loaded: &Loaded,
        tokens: &[u32],
    ) -> Result<Generator, JobError> {
        let mut idle = self.idle.lock().expect("idle lock");
        let best = idle
            .iter()
            .enumerate()
            .filter(|(_, (d, _))| d == digest)
            .max_by_key(|(i, (_, g))| (g.cached_prefix(tokens), *i))
            .map(|(i, _)| i);
        match best {
            Some(i) => Ok(idle.remove(i).1),
            None => Ok(Generator::batched(
                loaded.batcher.clone(),
                loaded.model.tokenizer().clone(),
                self.config.context.min(loaded.model.spec().context),
            )?),
        }
    }

    /// Reserves `need` bytes of keys and values for a split session's stage on this node (see
    /// [`Self::reserve_kv`]), waiting at most `wait` for running replies to give some back.
    pub fn reserve_stage_kv(&self, need: u64, wait: Duration) -> Result<Reservation, JobError> {
        let deadline = Instant::now() + wait;
        self.reserve_kv(need, || Instant::now() < deadline)
            .map_err(|refusal| match refusal {
                KvRefusal::Busy(reason) => JobError::Internal(reason),
                KvRefusal::TooLarge(message) => JobError::TooLarge(message),
            })
    }

    /// Reserves `need` bytes of keys and values for a reply about to start: finished replies'
    /// caches give way first (least recently used first), then it waits for running replies to
    /// finish — while `waiting` holds (a local reply: until its requester leaves, which the
    /// requester's queue deadline bounds) and the node is not draining. A reply that needs more
    /// than the whole budget is refused at once.
    fn reserve_kv(&self, need: u64, waiting: impl Fn() -> bool) -> Result<Reservation, KvRefusal> {
        let cap = self.config.kv_memory;
        if need > cap {
            return Err(KvRefusal::TooLarge(format!(
                "this reply's keys and values (its prompt plus max_tokens) need {} MB, and {} keeps {} MB for all replies' (--kv-memory): ask for fewer tokens",
                need.div_ceil(MB),
                self.config.node,
                cap / MB
            )));
        }
        let mut logged = false;
        loop {
            {
                // Under the idle lock, so that reservations and kept caches are counted together.
                let mut idle = self.idle.lock().expect("idle lock");
                self.trim(&mut idle, need);
                if let Ok(r) = self.kv.reserve("keys and values", need) {
                    return Ok(r);
                }
            }
            if !waiting() || self.is_draining() {
                return Err(KvRefusal::Busy(format!(
                    "{} has no memory free for keys and values",
                    self.config.node
                )));
            }
            if !logged {
                tracing::info!(
                    need_mb = need.div_ceil(MB),
                    reserved_mb = self.kv.used() / MB,
                    "a reply waits for memory for its keys and values (--kv-memory)"
                );
                logged = true;
            }
            std::thread::sleep(KV_WAIT_POLL);
        }
    }

    /// Drops finished replies' caches, least recently used first, until they fit beside the
    /// running replies' reservations and `extra` more bytes.
    fn trim(&self, idle: &mut Vec<(String, Generator)>, extra: u64) {
        let cap = self.config.kv_memory;
        while !idle.is_empty() && held(idle) + self.kv.used() + extra > cap {
            idle.remove(0);
        }
    }

    /// Keys and values: (reserved by running replies, held by finished replies' caches, the
    /// budget for both), counted together.
    pub fn kv_memory(&self) -> (u64, u64, u64) {
        let idle = self.idle.lock().expect("idle lock");
        (self.kv.used(), held(&idle), self.config.kv_memory)
    }

    /// Keeps a finished job's generator for reuse (its reservation, if any, ends here), dropping
    /// the least recently used beyond the caps.
    fn put_generator(&self, digest: &str, generator: Generator, kv: Option<Reservation>) {
        let mut idle = self.idle.lock().expect("idle lock");
        idle.push((digest.to_owned(), generator));
        drop(kv);
        while idle.len() > IDLE_GENERATORS
            || (idle.len() > 1 && held(&idle) > IDLE_CACHE_BYTES as u64)
        {
            idle.remove(0);
        }
        self.trim(&mut idle, 0);
    }
}

/// Why a reply gets no keys and values.
enum KvRefusal {
    /// Running replies keep the budget taken (and the reply stopped waiting, or the node drains).
    Busy(String),
    /// The reply needs more than the whole budget.
    TooLarge(String),
}

/// Bytes of keys and values finished replies' generators hold.
fn held(idle: &[(String, Generator)]) -> u64 {
    idle.iter().map(|(_, g)| g.cache_bytes() as u64).sum()
}

/// The entry of this node's cache with exactly `digest`.
pub fn cached(cache: &ModelCache, digest: &str) -> Result<CachedModel, JobError> {
    cache
        .by_digest(digest)
        .map_err(|e| JobError::Internal(format!("{e:#}")))?
        .ok_or_else(|| JobError::NoModel(digest.to_owned()))
}

/// A job's prompt tokens, the tokens to feed (prompt and resumed reply), and its settings
/// resolved against the model's.
fn prepare(
    model: &Model,
    request: &JobRequest,
) -> Result<(Vec<u32>, Vec<u32>, GenerateParams), JobError> {
    let (prompt, stops) = model
        .prompt_tokens(&request.prompt)
        .map_err(|e| JobError::BadRequest(e.to_string()))?;
    let sampling = model.sampling(&request.params.sampling, request.params.seed)?;
    let params = GenerateParams {
        sampling,
        max_tokens: request.params.max_tokens as usize,
        stop: request.params.stop.iter().chain(&stops).cloned().collect(),
        json: request.params.json,
    };
    let full: Vec<u32> = prompt
        .iter()
        .chain(&request.resume.tokens)
        .copied()
        .collect();
    if full.len() > MAX_PROMPT_TOKENS {
        return Err(JobError::BadRequest(format!(
            "the prompt is {} tokens; a job takes at most {MAX_PROMPT_TOKENS}",
            full.len()
        )));
    }
    // The request's own context (Ollama's `num_ctx`): the prompt must fit, the reply stops
    // at its end.
    let mut params = params;
    if let Some(limit) = request.params.context.map(|c| c as usize) {
        if full.len() >= limit {
            return Err(JobError::ContextOverflow(format!(
                "the prompt is {} tokens; the request's context (num_ctx) holds {limit}",
                full.len()
            )));
        }
        params.max_tokens = params.max_tokens.min(limit - full.len());
    }
    Ok((prompt, full, params))
}

/// Checks a job's settings before any model is at hand: those it sets must be in range (the
/// serving node fills the rest from the model's recommendation or hearth's defaults, in range).
pub fn check_params(p: &JobParams) -> Result<(), JobError> {
    SamplingParams::check(&p.sampling).map_err(|e| JobError::BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{Prompt, Resume, PROTOCOL_VERSION};

    fn engine(cache: ModelCache) -> Arc<Engine> {
        engine_draining_with(cache, Drain::new())
    }

    fn engine_draining_with(cache: ModelCache, drain: Arc<Drain>) -> Arc<Engine> {
        Engine::new(
            EngineConfig {
                node: "test".into(),
                context: 256,
                max_jobs: 1,
                max_queue: 2,
                load_delay: Duration::ZERO,
                kv_memory: 256 << 20,
                compute: Compute::cpu(1),
            },
            cache,
            Arc::new(Metrics::default()),
            drain,
            Budget::new(None),
        )
    }

    fn request(model: &str) -> JobRequest {
        JobRequest {
            version: PROTOCOL_VERSION,
            model: model.into(),
            prompt: Prompt::text("hello"),
            params: JobParams::greedy(4),
            resume: Resume::default(),
            split: None,
        }
    }

    fn last_event(engine: &Arc<Engine>, request: JobRequest) -> JobEvent {
        let mut events = engine.submit("test", request);
        let mut last = None;
        while let Some(e) = events.blocking_recv() {
            last = Some(e);
        }
        last.expect("the job ends with an event")
    }

    #[test]
    fn jobs_name_models_by_full_digest_never_by_path_or_prefix() {
        let dir = tempfile::tempdir().unwrap();
        // A file that exists, as a path a peer could name: not opened, not even looked at.
        let file = dir.path().join("secret.gguf");
        std::fs::write(&file, b"GGUF").unwrap();
        let engine = engine(ModelCache::new(dir.path().join("models")));
        for model in [file.to_str().unwrap(), "b179", "smollm2-135m", ""] {
            match last_event(&engine, request(model)) {
                JobEvent::Failed {
                    code: FailCode::BadRequest,
                    message,
                } => assert!(message.contains("digest"), "{model}: {message}"),
                other => panic!("{model}: {other:?}"),
            }
        }
        let absent = "ab".repeat(32);
        match last_event(&engine, request(&absent)) {
            JobEvent::Failed {
                code: FailCode::NoModel,
                message,
            } => assert!(message.contains(&absent), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(engine.loaded().is_empty());
    }

    #[test]
    fn resumed_replies_longer_than_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(ModelCache::new(dir.path().to_owned()));
        let mut r = request(&"ab".repeat(32));
        r.resume.tokens = vec![1; MAX_PROMPT_TOKENS + 1];
        match last_event(&engine, r) {
            JobEvent::Failed {
                code: FailCode::BadRequest,
                message,
            } => assert!(
                message.contains(&MAX_PROMPT_TOKENS.to_string()),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_draining_engine_answers_busy_and_counts_nothing_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let drain = Drain::new();
        let engine = engine_draining_with(ModelCache::new(dir.path().to_owned()), drain.clone());
        drain.start();
        assert!(matches!(
            last_event(&engine, request(&"ab".repeat(32))),
            JobEvent::Busy { .. }
        ));
        assert_eq!(drain.in_flight(), 0);
    }
}
