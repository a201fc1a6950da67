//! Text generation over a whole-model stage: prefill in one pass, reuse of the cached prefix
//! across turns, streaming of text as it completes, stop tokens and stop strings.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use hearth_protocol::{Finish, Resume};

use crate::batch::DecodeBatcher;
use crate::error::{Error, Result};
use crate::json::JsonPrefix;
use crate::kv_cache::KvCache;
use crate::sampling::{Sampler, SamplingParams};
use crate::stage::{Stage, StageInput};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation ends before any of these strings; they are not part of the reply.
    pub stop: Vec<String>,
    /// The reply is one JSON object: only tokens that continue one are sampled, and the reply
    /// ends when it is complete.
    pub json: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            sampling: SamplingParams::default(),
            max_tokens: 512,
            stop: Vec::new(),
            json: false,
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already cached from the previous turn.
    pub reused_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

/// A conversation's engine state: the model, its KV cache and the tokens the cache holds.
pub struct Generator {
    stage: Arc<Stage>,
    tokenizer: Arc<Tokenizer>,
    cache: KvCache,
    cached: Vec<u32>,
    logits: Vec<f32>,
    /// Decoding steps go through this when set, batched with other sessions of the model.
    batcher: Option<Arc<DecodeBatcher>>,
    /// Most prompt tokens run in one forward pass.
    prefill_chunk: usize,
}

/// Prompt tokens run in one forward pass by default: long enough for the kernels' full speed,
/// short enough that other sessions sharing the workers wait at most one chunk for a turn.
pub const PREFILL_CHUNK: usize = 64;

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Generator({} cached tokens)", self.cached.len())
    }
}

impl Generator {
    /// A generator over `stage`, which must hold the whole model (a pipeline stage is an
    /// error: generation needs the embedding, every layer and the output head).
    pub fn new(stage: Arc<Stage>, tokenizer: Arc<Tokenizer>, context: usize) -> Result<Self> {
        if !(stage.is_first() && stage.is_last()) {
            return Err(Error::BadStageInput(format!(
                "generation needs the whole model, not layers {:?}",
                stage.layers()
            )));
        }
        let cache = stage.new_cache(context);
        Ok(Generator {
            stage,
            tokenizer,
            cache,
            cached: Vec::new(),
            logits: Vec::new(),
            batcher: None,
            prefill_chunk: PREFILL_CHUNK,
        })
    }

    /// Runs prompts in forward passes of at most `tokens` tokens (see [`PREFILL_CHUNK`]).
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens.max(1);
    }

    /// A generator whose decoding steps join those of the other sessions decoding through
    /// `batcher` at the same time (one batched step for all; same tokens as decoding alone).
    pub fn batched(
        batcher: Arc<DecodeBatcher>,
        tokenizer: Arc<Tokenizer>,
        context: usize,
    ) -> Result<Self> {
        let mut g = Generator::new(batcher.stage().clone(), tokenizer, context)?;
        g.batcher = Some(batcher);
        Ok(g)
    }

    /// Bytes of keys and values the cache holds now (its positions written).
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes_for(self.cache.len()) as usize
    }

    /// Bytes of keys and values `positions` positions take in this generator's cache.
    pub fn cache_bytes_for(&self, positions: usize) -> u64 {
        let spec = self.stage.spec();
        (positions * self.stage.layers().len() * spec.kv_dim() * 2 * 2) as u64
    }

    /// Positions the context holds.
    pub fn context(&self) -> usize {
        self.cache.capacity()
    }

    /// Whether a prompt of `tokens` tokens leaves room in the context for at least one more.
    pub fn check_fits(&self, tokens: usize) -> Result<()> {
        if tokens >= self.cache.capacity() {
            return Err(Error::ContextOverflow {
                prompt: tokens,
                context: self.cache.capacity(),
            });
        }
        Ok(())
    }

    /// How many leading tokens of `tokens` the cache already holds.
    pub fn cached_prefix(&self, tokens: &[u32]) -> usize {
        self.cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Forgets the cached conversation.
    pub fn reset(&mut self) {
        self.cache.truncate(0);
        self.cached.clear();
    }

    /// Generates a continuation of `prompt`, calling `on_text` with each piece of text as soon
    /// as it is final; `on_text` returns `false` to stop early.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Completion> {
        self.resume(prompt, &Resume::default(), params, |piece| {
            let text = piece.text();
            text.is_empty() || on_text(text)
        })
    }

    /// Continues a reply of which `resume.tokens` were already generated (elsewhere, say, by a
    /// peer that went away) and `resume.emitted_bytes` bytes of text delivered: the reply goes on
    /// as if it had never stopped. `on_piece` sees the progress of a long prompt and every new
    /// token with the text it releases; it returns `false` to stop early.
    pub fn resume(
        &mut self,
        prompt: &[u32],
        resume: &Resume,
        params: &GenerateParams,
        mut on_piece: impl FnMut(Piece<'_>) -> bool,
    ) -> Result<Completion> {
        // Settings are checked before any work.
        Sampler::new(params.sampling.clone())?;
        if prompt.is_empty() {
            return Err(Error::BadParameter("the prompt is empty".into()));
        }
        let full: Vec<u32> = prompt.iter().chain(&resume.tokens).copied().collect();
        self.check_fits(full.len())?;
        let mut reused = self.cached_prefix(&full);
        if reused == full.len() {
            // The last prompt token must run again to produce the next token's logits.
            reused -= 1;
        }
        self.cache.truncate(reused);
        self.cached.truncate(reused);

        let start = Instant::now();
        let todo = &full[reused..];
        let mut steps = LocalSteps {
            stage: &self.stage,
            cache: &mut self.cache,
            batcher: None,
        };
        let fed = prefill(
            &mut steps,
            todo,
            self.prefill_chunk,
            &mut self.logits,
            &mut on_piece,
        )?;
        self.cached.extend_from_slice(&todo[..fed]);
        if fed < todo.len() {
            return Ok(Completion {
                text: String::new(),
                tokens: resume.tokens.clone(),
                finish: Finish::Cancelled,
                prompt_tokens: prompt.len(),
                reused_tokens: reused,
                prefill_time: start.elapsed(),
                decode_time: Duration::ZERO,
            });
        }
        let prefill_time = start.elapsed();

        let start = Instant::now();
        // Batched steps wait for this session's tokens while it decodes.
        let _decoding = self.batcher.as_ref().map(|b| b.enter());
        let mut steps = LocalSteps {
            stage: &self.stage,
            cache: &mut self.cache,
            batcher: self.batcher.as_deref(),
        };
        let capacity = steps.cache.capacity();
        let reply = decode_reply(
            &mut steps,
            &self.tokenizer,
            &mut self.cached,
            capacity,
            &mut self.logits,
            resume,
            params,
            &mut on_piece,
        )?;
        Ok(Completion {
            text: reply.text,
            tokens: reply.tokens,
            finish: reply.finish,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            prefill_time,
            decode_time: start.elapsed(),
        })
    }
}

/// Runs tokens through a model to the next token's logits: a whole model in this process, or a
/// split's pipeline of stages on several nodes.
pub trait Steps {
    /// Runs `tokens` at the next positions; `logits` gets the last position's logits.
    fn feed(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()>;

    /// Runs one decoded token (where the steps batch decoding, with other sessions').
    fn step(&mut self, token: u32, logits: &mut Vec<f32>) -> Result<()> {
        self.feed(&[token], logits)
    }
}

/// Feeds a prompt's `tokens` through `steps` in chunks of `chunk`: other sessions sharing the
/// workers get a turn between chunks, and `on_piece` (told the progress) can stop a long prompt
/// there. Returns the tokens fed: all of them, unless stopped.
pub fn prefill(
    steps: &mut dyn Steps,
    tokens: &[u32],
    chunk: usize,
    logits: &mut Vec<f32>,
    on_piece: &mut dyn FnMut(Piece<'_>) -> bool,
) -> Result<usize> {
    let mut done = 0;
    for part in tokens.chunks(chunk.max(1)) {
        if done > 0
            && !on_piece(Piece::Prefill {
                done,
                total: tokens.len(),
            })
        {
            break;
        }
        steps.feed(part, logits)?;
        done += part.len();
    }
    Ok(done)
}

/// A whole model's stage and one session's cache, decoding through a batcher when there is one.
struct LocalSteps<'a> {
    stage: &'a Stage,
    cache: &'a mut KvCache,
    batcher: Option<&'a DecodeBatcher>,
}

impl Steps for LocalSteps<'_> {
    fn feed(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        self.stage
            .forward(self.cache, StageInput::Tokens(tokens), logits)
            .map(|_| ())
    }

    fn step(&mut self, token: u32, logits: &mut Vec<f32>) -> Result<()> {
        match self.batcher {
            Some(b) => b.decode(self.cache, token, logits),
            None => self.feed(&[token], logits),
        }
    }
}

/// A reply decoded by [`decode_reply`].
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The reply's text (stop strings cut).
    pub text: String,
    /// Its tokens, the resumed ones first.
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

/// Decodes a reply once the prompt and any resumed tokens have been fed through `steps` (`fed`
/// holds them, `logits` the last one's logits; the context holds `capacity` positions): samples,
/// stops at stop tokens, stop strings, `max_tokens` or a full context, streams text as it
/// completes, and continues a resumed reply as if it had never stopped. The one decoding loop
/// for whole models and splits.
#[allow(clippy::too_many_arguments)]
pub fn decode_reply(
    steps: &mut dyn Steps,
    tokenizer: &Tokenizer,
    fed: &mut Vec<u32>,
    capacity: usize,
    logits: &mut Vec<f32>,
    resume: &Resume,
    params: &GenerateParams,
    on_piece: &mut dyn FnMut(Piece<'_>) -> bool,
) -> Result<Decoded> {
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let mut decoder = StreamDecoder::default();
    let mut stops = StopScanner::new(&params.stop);
    // Replay what was produced before so held-back text and split characters carry over;
    // text the client has not seen yet goes out with the first new piece.
    let mut stopped = false;
    for &token in &resume.tokens {
        stopped = stops.push(&decoder.push(tokenizer, token)).1;
    }
    let mut backlog = stops
        .emitted
        .get(resume.emitted_bytes as usize..)
        .unwrap_or_default()
        .to_owned();
    let mut tokens = resume.tokens.clone();
    let mut finish = if stopped {
        Finish::Stop
    } else {
        Finish::Length
    };
    let mut json = params.json.then(JsonPrefix::default);
    if let Some(j) = &mut json {
        // A resumed reply's JSON so far.
        j.push_str(&stops.emitted);
    }
    let mut more = !stopped && tokens.len() < params.max_tokens;
    while more {
        if let Some(j) = &json {
            if !keep_json(logits, tokenizer, j) {
                finish = Finish::Stop;
                break;
            }
        }
        let token = sampler.sample(logits, fed);
        if tokenizer.stop_tokens().contains(&token) {
            finish = Finish::Stop;
            break;
        }
        let complete = json.as_mut().is_some_and(|j| {
            j.push_str(tokenizer.texts()[token as usize].as_deref().unwrap_or(""));
            j.is_complete()
        });
        tokens.push(token);
        let (ready, stopped) = stops.push(&decoder.push(tokenizer, token));
        backlog.push_str(&ready);
        if !on_piece(Piece::Token {
            id: token,
            text: &backlog,
        }) {
            finish = Finish::Cancelled;
            break;
        }
        backlog.clear();
        if stopped || complete {
            finish = Finish::Stop;
            break;
        }
        more = tokens.len() < params.max_tokens && fed.len() + 1 < capacity;
        if more {
            steps.step(token, logits)?;
            fed.push(token);
        }
    }
    if finish != Finish::Cancelled {
        let (rest, _) = stops.push(&decoder.finish());
        backlog.push_str(&stops.flush(rest));
        if !backlog.is_empty() {
            on_piece(Piece::Tail(&backlog));
        }
    }
    Ok(Decoded {
        text: stops.emitted,
        tokens,
        finish,
    })
}

/// Leaves in `logits` only the tokens whose text continues the JSON object `json` (the others
/// get -inf); `false` if none does.
fn keep_json(logits: &mut [f32], tokenizer: &Tokenizer, json: &JsonPrefix) -> bool {
    let mut any = false;
    for (logit, text) in logits.iter_mut().zip(tokenizer.texts()) {
        let fits = text.as_deref().is_some_and(|t| {
            let mut next = *json;
            !t.is_empty() && next.push_str(t)
        });
        if fits {
            any = true;
        } else {
            *logit = f32::NEG_INFINITY;
        }
    }
    any
}

/// What generation hands its caller as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A new token and the text it released (empty while text is held back).
    Token { id: u32, text: &'a str },
    /// Text released at the end, with no new token.
    Tail(&'a str),
    /// `done` of the prompt's `total` tokens to run have run (between chunks of a long prompt):
    /// returning `false` stops the prompt there.
    Prefill { done: usize, total: usize },
}

impl<'a> Piece<'a> {
    /// The text this piece releases.
    pub fn text(&self) -> &'a str {
        match *self {
            Piece::Token { text, .. } | Piece::Tail(text) => text,
            Piece::Prefill { .. } => "",
        }
    }
}

/// Holds back text that might be the start of a stop string.
struct StopScanner<'a> {
    stops: &'a [String],
    /// Text received but not yet released.
    held: String,
    /// Text released so far.
    emitted: String,
    stopped: bool,
}

impl<'a> StopScanner<'a> {
    fn new(stops: &'a [String]) -> Self {
        StopScanner {
            stops,
            held: String::new(),
            emitted: String::new(),
            stopped: false,
        }
    }

    /// Adds text; returns what can be released and whether a stop string was found.
    fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(text);
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = found {
            self.held.truncate(at);
            self.stopped = true;
            let out = std::mem::take(&mut self.held);
            self.emitted.push_str(&out);
            return (out, true);
        }
        // Keep the longest tail that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let out: String = self.held.drain(..self.held.len() - keep).collect();
        self.emitted.push_str(&out);
        (out, false)
    }

    /// Releases held text at the end of generation, unless a stop string was hit.
    fn flush(&mut self, mut pending: String) -> String {
        if !self.stopped {
            let rest = std::mem::take(&mut self.held);
            self.emitted.push_str(&rest);
            pending.push_str(&rest);
        }
        pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_split_across_pieces_are_caught_and_held_back() {
        let stops = vec!["\nUser:".to_owned()];
        let mut s = StopScanner::new(&stops);
        assert_eq!(s.push("Hello"), ("Hello".to_owned(), false));
        assert_eq!(s.push(" there\nUs"), (" there".to_owned(), false));
        assert_eq!(s.push("er: hi"), (String::new(), true));
        assert_eq!(s.emitted, "Hello there");
    }

    #[test]
    fn held_text_that_was_not_a_stop_is_released() {
        let stops = vec!["STOP".to_owned()];
        let mut s = StopScanner::new(&stops);
        assert_eq!(s.push("a ST"), ("a ".to_owned(), false));
        assert_eq!(s.push("ONE"), ("STONE".to_owned(), false));
        assert_eq!(s.push("ST"), (String::new(), false));
        assert_eq!(s.flush(String::new()), "ST");
        assert_eq!(s.emitted, "a STONEST");
    }
}
