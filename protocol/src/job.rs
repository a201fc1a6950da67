//! Remote jobs: the request a node sends to the peer that will generate, and the events that
//! stream back, one frame each.

use serde::{Deserialize, Serialize};

/// Most tokens a job's prompt may hold, resumed tokens included (bounded by the frame size
/// anyway; this makes the limit explicit, and nodes enforce it).
pub const MAX_PROMPT_TOKENS: usize = 1 << 17;

/// Whether `s` is a model digest as jobs name models: 64 lowercase hex digits (SHA-256).
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A generation request. The first frame on a job stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The requester's [`crate::PROTOCOL_VERSION`].
    pub version: u32,
    /// Digest of the model to run.
    pub model: String,
    pub prompt: Prompt,
    pub params: JobParams,
    /// Tokens another peer already produced for this reply, when failing over.
    pub resume: Resume,
    /// Run the model as this pipeline of stages, of which the receiving node is the last;
    /// `None`: the whole model on the receiving node.
    pub split: Option<crate::stage::Split>,
}

impl JobRequest {
    /// What a node checks before touching a model: the model is named by its full digest (never
    /// a name, prefix or path) and the resumed tokens fit [`MAX_PROMPT_TOKENS`].
    pub fn check(&self) -> Result<(), String> {
        if !is_digest(&self.model) {
            return Err(format!(
                "jobs name their model by its full SHA-256 digest (64 lowercase hex digits), not {:?}",
                self.model
            ));
        }
        if self.resume.tokens.len() > MAX_PROMPT_TOKENS {
            return Err(format!(
                "the reply to resume is {} tokens; a job takes at most {MAX_PROMPT_TOKENS}",
                self.resume.tokens.len()
            ));
        }
        Ok(())
    }
}

/// What to continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    /// Messages rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Raw text, tokenized as is: control tokens written in it (`<|im_start|>`, `<bos>`, ...)
    /// are the tokens they name unless `parse_special` is false, as in llama.cpp.
    Text { text: String, parse_special: bool },
}

impl Prompt {
    /// Raw text with its control tokens parsed.
    pub fn text(text: impl Into<String>) -> Self {
        Prompt::Text {
            text: text.into(),
            parse_special: true,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Sampling and stopping settings. Sampling settings left unset are filled by the node serving
/// the job: from the model's own recommendation, else hearth's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobParams {
    pub sampling: SamplingOverrides,
    pub seed: u64,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    /// The reply must be one JSON object (Ollama's `format: "json"`, OpenAI's
    /// `response_format: {"type": "json_object"}`).
    pub json: bool,
    /// Positions the reply may use, prompt included (Ollama's `num_ctx`), when fewer than the
    /// serving node's context: a longer prompt is refused, the reply stops there.
    pub context: Option<u32>,
    /// How long the serving node keeps the model loaded once idle (Ollama's `keep_alive`), in
    /// seconds: 0 unloads it after this reply, a negative value keeps it; `None`: the node's
    /// choice (kept while memory allows).
    pub keep_alive: Option<i64>,
}

impl JobParams {
    /// Greedy decoding of at most `max_tokens`, no stop strings.
    pub fn greedy(max_tokens: u32) -> Self {
        JobParams {
            sampling: SamplingOverrides {
                temperature: Some(0.0),
                ..SamplingOverrides::default()
            },
            seed: 0,
            max_tokens,
            stop: Vec::new(),
            json: false,
            context: None,
            keep_alive: None,
        }
    }
}

/// Sampling settings given in part (by a request, a node's configuration, a model's metadata);
/// each unset one comes from the next source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<u32>,
}

impl SamplingOverrides {
    /// These settings where set, `base`'s elsewhere.
    pub fn over(&self, base: &SamplingOverrides) -> SamplingOverrides {
        SamplingOverrides {
            temperature: self.temperature.or(base.temperature),
            top_k: self.top_k.or(base.top_k),
            top_p: self.top_p.or(base.top_p),
            min_p: self.min_p.or(base.min_p),
            repeat_penalty: self.repeat_penalty.or(base.repeat_penalty),
            repeat_last_n: self.repeat_last_n.or(base.repeat_last_n),
        }
    }
}

/// The part of a reply already delivered, so that another peer can continue it seamlessly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// Token ids generated so far.
    pub tokens: Vec<u32>,
    /// Bytes of reply text already sent to the client.
    pub emitted_bytes: u64,
}

/// One event of a running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// The job has a slot and its prompt is being processed.
    Started { node: String, prompt_tokens: u32 },
    /// One generated token and the reply text it completes (may be empty while held back).
    Token { id: u32, text: String },
    /// Text released at the end without a new token.
    Tail { text: String },
    /// Generation ended.
    Done { finish: Finish, usage: Usage },
    /// The node's queue is full or it is shutting down: try another peer.
    Busy { reason: String },
    /// The job failed.
    Failed { code: FailCode, message: String },
    /// A split job lost one of its stages (`peer`, a peer id): the requester may re-plan without
    /// it and resume.
    StageLost { peer: String, message: String },
}

/// Token counts of a finished reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    /// Generated tokens, those produced before a failover included.
    pub completion_tokens: u32,
    /// Prompt tokens whose keys and values the serving node already had cached.
    pub cached_tokens: u32,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finish {
    Stop,
    Length,
    Cancelled,
}

/// Why a job failed; decides whether another peer is worth trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailCode {
    /// The request is wrong (bad parameters, prompt too long): no peer will do better.
    BadRequest,
    /// The prompt does not fit the serving node's context: no peer will do better.
    ContextOverflow,
    /// The node lacks the model.
    NoModel,
    /// Another protocol version.
    Version,
    /// Something broke on the node: another peer may succeed.
    Internal,
    /// The reply's keys and values need more than the node keeps for all replies
    /// (`--kv-memory`): a node with a larger budget may serve it.
    TooLarge,
}

impl FailCode {
    /// Whether another peer could succeed where this one failed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            FailCode::NoModel | FailCode::Internal | FailCode::TooLarge
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_models_by_full_digest_and_bound_resumed_tokens() {
        let digest = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
        let mut r = JobRequest {
            version: crate::PROTOCOL_VERSION,
            model: digest.into(),
            prompt: Prompt::text("hi"),
            params: JobParams::greedy(1),
            resume: Resume::default(),
            split: None,
        };
        assert_eq!(r.check(), Ok(()));
        for bad in [
            "b179",
            "/etc/passwd",
            "smollm2-135m",
            &digest.to_uppercase(),
            "",
        ] {
            r.model = bad.into();
            assert!(r.check().unwrap_err().contains("digest"), "{bad}");
        }
        r.model = digest.into();
        r.resume.tokens = vec![0; MAX_PROMPT_TOKENS + 1];
        assert!(r.check().is_err());
        assert!(!FailCode::ContextOverflow.retryable());
        assert!(FailCode::TooLarge.retryable());
    }
}
