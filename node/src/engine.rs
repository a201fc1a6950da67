//! Runs generation jobs on this node, for its own API and for peers: loads models on first use
//! (and keeps them), runs up to `max_jobs` at once on worker threads, queues the rest fairly up to
//! a bound, and answers "busy" beyond it. Jobs decoding the same model at the same time share
//! each decoding step (one batched step reads the weights once for all of them). Events stream
//! back through a channel; when its receiver is dropped the job stops at the next token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hearth_protocol::{
    ChatMessage as WireMessage, FailCode, Finish, JobEvent, JobParams, JobRequest, Prompt, Usage,
};
use hearth_shards::{
    BatchStats, ChatMessage, DecodeBatcher, Error as EngineError, FinishReason, GenerateParams,
    Generator, Model, Piece, Resume, SamplingParams,
};
use tokio::sync::mpsc;

use crate::fair_queue::FairQueue;
use crate::metrics::Metrics;
use crate::model_cache::ModelCache;

/// Events buffered per job before generation waits for the reader.
const EVENT_BUFFER: usize = 64;
/// Finished jobs' generators (KV caches) kept for reuse: a follow-up turn of a conversation
/// finds the one holding its history and only computes the new tokens. Each can hold up to a
/// context's worth of keys and values (94 MB for SmolLM2 at 4096 tokens).
const IDLE_GENERATORS: usize = 4;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Name reported in `Started` events.
    pub node: String,
    pub threads: usize,
    /// Context length per job (capped at the model's).
    pub context: usize,
    pub max_jobs: usize,
    pub max_queue: usize,
}

struct Loaded {
    model: Model,
    /// Every job's decoding steps on this model go through it.
    batcher: Arc<DecodeBatcher>,
}

struct Pending {
    request: JobRequest,
    events: mpsc::Sender<JobEvent>,
}

/// The local job runner.
pub struct Engine {
    config: EngineConfig,
    cache: ModelCache,
    metrics: Arc<Metrics>,
    queue: Mutex<(FairQueue<Pending>, usize)>,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    speeds: Mutex<HashMap<String, f32>>,
    /// (model digest, generator), least recently used first.
    idle: Mutex<Vec<(String, Generator)>>,
    draining: AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.config.node)
    }
}

/// The engine's load, for the card and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub queued: u32,
    pub active: u32,
}

impl Engine {
    /// An engine serving models from `cache`.
    pub fn new(config: EngineConfig, cache: ModelCache, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Engine {
            queue: Mutex::new((FairQueue::new(config.max_queue), 0)),
            config,
            cache,
            metrics,
            loaded: Mutex::new(HashMap::new()),
            speeds: Mutex::new(HashMap::new()),
            idle: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
        })
    }

    /// The model cache this engine serves from.
    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    /// Most jobs run at once.
    pub fn max_jobs(&self) -> usize {
        self.config.max_jobs
    }

    /// Jobs queued and running.
    pub fn load(&self) -> Load {
        let q = self.queue.lock().expect("queue lock");
        Load {
            queued: q.0.len() as u32,
            active: q.1 as u32,
        }
    }

    /// Decoding steps run and the session-steps they served, over every loaded model.
    pub fn batch_stats(&self) -> BatchStats {
        let loaded = self.loaded.lock().expect("loaded lock");
        loaded.values().fold(BatchStats::default(), |acc, m| {
            let s = m.batcher.stats();
            BatchStats {
                steps: acc.steps + s.steps,
                rows: acc.rows + s.rows,
            }
        })
    }

    /// Digests of loaded models.
    pub fn loaded(&self) -> Vec<String> {
        self.loaded
            .lock()
            .expect("loaded lock")
            .keys()
            .cloned()
            .collect()
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

    /// Stops taking jobs (they get "busy"); running and queued ones finish.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the engine is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Jobs queued or running; zero once a drain has finished.
    pub fn in_flight(&self) -> u64 {
        let load = self.load();
        u64::from(load.queued + load.active)
    }

    /// Loads the model with `digest` now (and measures its speed), instead of at its first job.
    pub fn preload(&self, digest: &str) -> Result<()> {
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
        let refused = {
            let mut q = self.queue.lock().expect("queue lock");
            q.0.push(
                requester,
                Pending {
                    request,
                    events: tx,
                },
            )
            .err()
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

    /// Starts queued jobs while slots are free.
    fn pump(self: &Arc<Self>) {
        loop {
            let next = {
                let mut q = self.queue.lock().expect("queue lock");
                if q.1 >= self.config.max_jobs {
                    return;
                }
                let Some((_, job)) = q.0.pop() else { return };
                q.1 += 1;
                job
            };
            let engine = self.clone();
            let spawned = std::thread::Builder::new()
                .name("hearth-job".into())
                .spawn(move || {
                    engine.run(next);
                    engine.queue.lock().expect("queue lock").1 -= 1;
                    engine.pump();
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a job thread");
                self.queue.lock().expect("queue lock").1 -= 1;
                return;
            }
        }
    }

    fn model(&self, digest: &str) -> Result<Arc<Loaded>> {
        let mut loaded = self.loaded.lock().expect("loaded lock");
        if let Some(m) = loaded.get(digest) {
            return Ok(m.clone());
        }
        let resolved = self.cache.resolve(digest)?;
        let model = Model::open(&resolved.path, self.config.threads)
            .with_context(|| format!("cannot load {}", resolved.path.display()))?;
        let batcher = Arc::new(DecodeBatcher::new(Arc::new(model.full_stage()?)));
        let m = Arc::new(Loaded { model, batcher });
        tracing::info!(model = digest, "model loaded");
        loaded.insert(digest.to_owned(), m.clone());
        drop(loaded);
        self.self_benchmark(digest, &m);
        Ok(m)
    }

    /// A short greedy run right after loading, so routing has a speed before real traffic.
    fn self_benchmark(&self, digest: &str, m: &Loaded) {
        let tok = m.model.tokenizer();
        let prompt = tok.encode("The house", true, false);
        let mut g = Generator::new(m.batcher.stage().clone(), tok.clone(), 64);
        let params = GenerateParams {
            sampling: SamplingParams::greedy(),
            max_tokens: 16,
            stop: Vec::new(),
        };
        if let Ok(c) = g.generate(&prompt, &params, |_| true) {
            self.record_speed(digest, c.tokens.len(), c.decode_time);
        }
    }

    fn record_speed(&self, digest: &str, tokens: usize, time: std::time::Duration) {
        if tokens < 4 || time.is_zero() {
            return;
        }
        let now = (tokens as f64 / time.as_secs_f64()) as f32;
        let mut speeds = self.speeds.lock().expect("speeds lock");
        let s = speeds.entry(digest.to_owned()).or_insert(now);
        *s = 0.7 * *s + 0.3 * now;
    }

    fn run(&self, job: Pending) {
        let Pending { request, events } = job;
        if events.is_closed() {
            return;
        }
        Metrics::inc(&self.metrics.jobs_served);
        let event = match self.generate(&request, &events) {
            Ok(done) => done,
            Err((code, message)) => {
                tracing::warn!(model = %request.model, %message, "job failed");
                JobEvent::Failed { code, message }
            }
        };
        let _ = events.blocking_send(event);
    }

    fn generate(
        &self,
        request: &JobRequest,
        events: &mpsc::Sender<JobEvent>,
    ) -> Result<JobEvent, (FailCode, String)> {
        let loaded = self.model(&request.model).map_err(|e| {
            let code = if self.cache.resolve(&request.model).is_err() {
                FailCode::NoModel
            } else {
                FailCode::Internal
            };
            (code, format!("{e:#}"))
        })?;
        let model = &loaded.model;
        let mut params = generate_params(&request.params).map_err(bad_request)?;
        let prompt = match &request.prompt {
            Prompt::Chat(messages) => {
                let messages: Vec<ChatMessage> = messages
                    .iter()
                    .map(|m: &WireMessage| ChatMessage::new(&m.role, m.content.clone()))
                    .collect();
                params
                    .stop
                    .extend(model.chat_template().stop_strings().iter().cloned());
                model.chat_prompt(&messages).map_err(bad_request)?
            }
            Prompt::Text(text) => model.tokenizer().encode(text, true, false),
        };
        let full: Vec<u32> = prompt
            .iter()
            .chain(&request.resume.tokens)
            .copied()
            .collect();
        let mut generator = self.take_generator(&request.model, &loaded, &full);
        let started = JobEvent::Started {
            node: self.config.node.clone(),
            prompt_tokens: prompt.len() as u32,
        };
        if events.blocking_send(started).is_err() {
            return Ok(JobEvent::Done {
                finish: Finish::Cancelled,
                usage: Usage {
                    prompt_tokens: prompt.len() as u32,
                    ..Usage::default()
                },
            });
        }
        let resume = Resume {
            tokens: request.resume.tokens.clone(),
            emitted_bytes: request.resume.emitted_bytes,
        };
        let completion = generator
            .resume(&prompt, &resume, &params, |piece| {
                let event = match piece {
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
            })
            .map_err(|e| match e {
                EngineError::BadParameter(_) | EngineError::ContextOverflow { .. } => {
                    bad_request(e)
                }
                other => (FailCode::Internal, other.to_string()),
            })?;
        let fresh = completion.tokens.len() - resume.tokens.len();
        self.record_speed(&request.model, fresh, completion.decode_time);
        self.put_generator(&request.model, generator);
        Ok(JobEvent::Done {
            finish: match completion.finish {
                FinishReason::Stop => Finish::Stop,
                FinishReason::Length => Finish::Length,
                FinishReason::Cancelled => Finish::Cancelled,
            },
            usage: Usage {
                prompt_tokens: completion.prompt_tokens as u32,
                completion_tokens: completion.tokens.len() as u32,
                cached_tokens: completion.reused_tokens as u32,
            },
        })
    }

    /// The idle generator whose cache shares the longest prefix with `tokens`, or a new one.
    fn take_generator(&self, digest: &str, loaded: &Loaded, tokens: &[u32]) -> Generator {
        let mut idle = self.idle.lock().expect("idle lock");
        let best = idle
            .iter()
            .enumerate()
            .filter(|(_, (d, _))| d == digest)
            .max_by_key(|(i, (_, g))| (g.cached_prefix(tokens), *i))
            .map(|(i, _)| i);
        match best {
            Some(i) => idle.remove(i).1,
            None => Generator::batched(
                loaded.batcher.clone(),
                loaded.model.tokenizer().clone(),
                self.config.context.min(loaded.model.spec().context),
            ),
        }
    }

    /// Keeps a finished job's generator for reuse, dropping the least recently used beyond the cap.
    fn put_generator(&self, digest: &str, generator: Generator) {
        let mut idle = self.idle.lock().expect("idle lock");
        idle.push((digest.to_owned(), generator));
        if idle.len() > IDLE_GENERATORS {
            idle.remove(0);
        }
    }
}

fn bad_request(e: impl std::fmt::Display) -> (FailCode, String) {
    (FailCode::BadRequest, e.to_string())
}

/// The engine's generation settings for a job's parameters, validated.
pub fn generate_params(p: &JobParams) -> hearth_shards::Result<GenerateParams> {
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: SamplingParams::default().repeat_last_n,
        seed: p.seed,
    };
    sampling.validate()?;
    Ok(GenerateParams {
        sampling,
        max_tokens: p.max_tokens as usize,
        stop: p.stop.clone(),
    })
}
