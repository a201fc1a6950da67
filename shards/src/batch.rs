//! Batched decoding for sessions that run on separate threads (a node's concurrent jobs, or the
//! sessions of one split stage): each thread hands its session's next row (a token, or a hidden
//! state from the previous stage) to the stage's [`DecodeBatcher`], and whichever thread finds no
//! step running runs one [`Stage::step_batch`] step for every session waiting. N sessions
//! decoding at once then read each weight once per step instead of N times, and each still gets
//! exactly the output it would get alone.
//!
//! Sessions in their decoding loop say so ([`DecodeBatcher::enter`]); a step waits for all of them
//! to hand in their tokens (they sample and send text between steps), at most [`GATHER`], so that
//! they stay in step instead of splitting into groups that take turns.

use std::collections::HashMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest a step waits for sessions in their decoding loop that have not handed in a token.
pub const GATHER: Duration = Duration::from_millis(3);

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::stage::{Stage, StageInput};

/// Joins concurrent decoding steps of one model's sessions into batched steps.
pub struct DecodeBatcher {
    stage: Arc<Stage>,
    state: Mutex<State>,
    stepped: Condvar,
}

impl std::fmt::Debug for DecodeBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecodeBatcher({:?})", self.stage)
    }
}

#[derive(Default)]
struct State {
    /// Sessions waiting for the next step.
    waiting: Vec<Request>,
    /// Sessions stepped, by ticket, until their threads collect them.
    done: HashMap<u64, Stepped>,
    running: bool,
    /// Sessions in their decoding loop.
    active: usize,
    /// Sessions of a pipeline stage (see [`DecodeBatcher::join`]), and into how many groups
    /// they are stepped.
    members: usize,
    groups: usize,
    next_ticket: u64,
    /// Steps run and sessions they served, for [`DecodeBatcher::stats`].
    steps: u64,
    rows: u64,
}

/// A stepped session handed back: its cache, its logits, and whether the step ran.
type Stepped = (KvCache, Vec<f32>, Result<()>);

struct Request {
    ticket: u64,
    cache: KvCache,
    row: Row,
    out: Vec<f32>,
}

/// One session's input to a step.
enum Row {
    Token(u32),
    Hidden(Vec<f32>),
}

/// How much batching happened: steps run and session-steps they served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    pub steps: u64,
    pub rows: u64,
}

impl std::iter::Sum for BatchStats {
    fn sum<I: Iterator<Item = BatchStats>>(iter: I) -> Self {
        iter.fold(BatchStats::default(), |a, b| BatchStats {
            steps: a.steps + b.steps,
            rows: a.rows + b.rows,
        })
    }
}

impl DecodeBatcher {
    /// A batcher for `stage`.
    pub fn new(stage: Arc<Stage>) -> Self {
        DecodeBatcher {
            stage,
            state: Mutex::new(State::default()),
            stepped: Condvar::new(),
        }
    }

    /// The stage it steps.
    pub fn stage(&self) -> &Arc<Stage> {
        &self.stage
    }

    /// Steps run so far and the session-steps they served (`rows / steps` is the mean batch).
    pub fn stats(&self) -> BatchStats {
        let s = self.state.lock().expect("batcher lock");
        BatchStats {
            steps: s.steps,
            rows: s.rows,
        }
    }

    /// Counts a session of a pipeline of `stages` stages until the returned guard is dropped.
    /// Steps then take at most a `stages`-th of the sessions, so that they move through the
    /// pipeline in groups and every stage has a group to work on, instead of all of them
    /// stepping together while the other stages wait.
    pub fn join(self: &Arc<Self>, stages: usize) -> Member {
        let mut s = self.state.lock().expect("batcher lock");
        s.members += 1;
        s.groups = stages.max(1);
        Member(self.clone())
    }

    /// Marks a session as decoding until the returned guard is dropped: steps wait for it.
    pub fn enter(self: &Arc<Self>) -> Decoding {
        self.state.lock().expect("batcher lock").active += 1;
        Decoding(self.clone())
    }

    /// Feeds `token` to the session in `cache` at its next position and puts its logits in
    /// `logits`, in one step with every other session decoding through this batcher meanwhile.
    /// Blocks until that step has run. Needs the first stage.
    pub fn decode(&self, cache: &mut KvCache, token: u32, logits: &mut Vec<f32>) -> Result<()> {
        self.step(cache, Row::Token(token), logits)
    }

    /// Feeds one row of hidden states to the session in `cache` at its next position and puts
    /// the stage's output (logits on the last stage, hidden states otherwise) in `out`, in one
    /// step with every other session stepping through this batcher meanwhile. Blocks until that
    /// step has run. Needs a stage after the first.
    pub fn step_hidden(
        &self,
        cache: &mut KvCache,
        hidden: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.step(cache, Row::Hidden(hidden.to_vec()), out)
    }

    fn step(&self, cache: &mut KvCache, row: Row, out: &mut Vec<f32>) -> Result<()> {
        let mut state = self.state.lock().expect("batcher lock");
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push(Request {
            ticket,
            cache: std::mem::replace(cache, KvCache::new(0, 0, 0)),
            row,
            out: std::mem::take(out),
        });
        self.stepped.notify_all();
        let mut deadline = None;
        loop {
            if let Some((c, o, result)) = state.done.remove(&ticket) {
                *cache = c;
                *out = o;
                return result;
            }
            if state.running {
                state = self.stepped.wait(state).expect("batcher lock");
                continue;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + GATHER);
            let now = Instant::now();
            // Whole-model sessions: wait for every one in its decoding loop. A pipeline stage's
            // sessions: wait for a group's worth, so that groups form and stay together.
            let want = if state.groups > 1 {
                state.members.div_ceil(state.groups)
            } else {
                state.active
            };
            if state.waiting.len() < want && now < deadline {
                state = self
                    .stepped
                    .wait_timeout(state, deadline - now)
                    .expect("batcher lock")
                    .0;
                continue;
            }
            // No step is running: this thread runs one for everyone waiting (up to a group of a
            // pipeline's sessions), itself included, or not if a group before it fills the step.
            let cap = if state.groups > 1 {
                state
                    .members
                    .max(state.waiting.len())
                    .div_ceil(state.groups)
            } else {
                usize::MAX
            };
            let take = cap.min(state.waiting.len());
            let rest = state.waiting.split_off(take);
            let batch = std::mem::replace(&mut state.waiting, rest);
            state.running = true;
            drop(state);
            let rows = batch.len() as u64;
            let tickets: Vec<u64> = batch.iter().map(|r| r.ticket).collect();
            let results = match catch_unwind(AssertUnwindSafe(|| self.run(batch))) {
                Ok(results) => results,
                Err(panic) => {
                    // The sessions' caches went down with the step: their threads get an error
                    // instead of waiting forever, and the next step can run.
                    let mut state = self.state.lock().expect("batcher lock");
                    state.running = false;
                    for t in tickets {
                        let lost = Error::BadStageInput("the decoding step failed".into());
                        state
                            .done
                            .insert(t, (KvCache::new(0, 0, 0), Vec::new(), Err(lost)));
                    }
                    self.stepped.notify_all();
                    drop(state);
                    resume_unwind(panic);
                }
            };
            state = self.state.lock().expect("batcher lock");
            state.running = false;
            state.steps += 1;
            state.rows += rows;
            state.done.extend(results);
            self.stepped.notify_all();
        }
    }

    /// One step for `batch`; a session whose step cannot run (its cache is full) gets its own
    /// error without failing the others.
    fn run(&self, mut batch: Vec<Request>) -> Vec<(u64, Stepped)> {
        let width = if self.stage.is_last() {
            self.stage.spec().vocab
        } else {
            self.stage.spec().dim
        };
        let tokens: Vec<u32> = batch
            .iter()
            .filter_map(|r| match r.row {
                Row::Token(t) => Some(t),
                Row::Hidden(_) => None,
            })
            .collect();
        let hidden: Vec<f32> = batch
            .iter()
            .flat_map(|r| match &r.row {
                Row::Hidden(h) => h.as_slice(),
                Row::Token(_) => &[],
            })
            .copied()
            .collect();
        let input = if tokens.len() == batch.len() {
            StageInput::Tokens(&tokens)
        } else {
            StageInput::Hidden(&hidden)
        };
        // The first session's buffer takes every row, then keeps its own.
        let mut all = std::mem::take(&mut batch[0].out);
        let together = {
            let mut caches: Vec<&mut KvCache> = batch.iter_mut().map(|r| &mut r.cache).collect();
            self.stage.step_batch(&mut caches, input, &mut all)
        };
        let results: Vec<Result<()>> = match together {
            Ok(()) => {
                for (r, row) in batch.iter_mut().zip(all.chunks_exact(width)).skip(1) {
                    r.out.clear();
                    r.out.extend_from_slice(row);
                }
                all.truncate(width);
                batch[0].out = all;
                batch.iter().map(|_| Ok(())).collect()
            }
            Err(_) => {
                batch[0].out = all;
                batch
                    .iter_mut()
                    .map(|r| {
                        let input = match &r.row {
                            Row::Token(t) => StageInput::Tokens(std::slice::from_ref(t)),
                            Row::Hidden(h) => StageInput::Hidden(h),
                        };
                        self.stage
                            .forward(&mut r.cache, input, &mut r.out)
                            .map(|_| ())
                    })
                    .collect()
            }
        };
        batch
            .into_iter()
            .zip(results)
            .map(|(r, result)| (r.ticket, (r.cache, r.out, result)))
            .collect()
    }
}

/// A session of a pipeline stage (see [`DecodeBatcher::join`]).
pub struct Member(Arc<DecodeBatcher>);

impl Drop for Member {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("batcher lock");
        state.members = state.members.saturating_sub(1);
        if state.members == 0 {
            state.groups = 1;
        }
    }
}

/// A session in its decoding loop (see [`DecodeBatcher::enter`]).
pub struct Decoding(Arc<DecodeBatcher>);

impl Drop for Decoding {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("batcher lock");
        state.active = state.active.saturating_sub(1);
        self.0.stepped.notify_all();
    }
}
