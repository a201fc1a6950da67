//! Where `hearth run` and `hearth chat` get replies: the local node when one is running (so the
//! household's best node serves them), else a model loaded in this process.

use anyhow::{Context, Result};
use hearth_protocol::{JobParams, Prompt};
use hearth_shards::{Completion, Error as EngineError, GenerateParams, Generator, Model};
use serde_json::{json, Value};

use super::open_model;
use crate::api::CONTEXT_LENGTH_EXCEEDED;
use crate::cli::ModelArgs;
use crate::client::{LocalNode, NodeError};
use crate::data_dir::DataDir;
use crate::models::{ModelCache, DEFAULT_MODEL};

/// A reply, wherever it was made.
pub(super) struct Reply {
    pub text: String,
    /// A line of statistics for `--stats`.
    pub stats: String,
    /// The conversation it was recorded in (through a node only).
    pub conversation: Option<String>,
}

/// Why a chat turn produced no reply but the conversation can go on.
pub(super) enum Turn {
    Reply(Reply),
    /// The conversation no longer fits the context.
    TooLong(String),
}

/// A model in this process, or the local node.
pub(super) enum Backend {
    Local {
        model: Box<Model>,
        generator: Box<Generator>,
    },
    Node {
        node: Box<LocalNode>,
        model: String,
        pin: Option<String>,
    },
}

impl Backend {
    /// The local node unless `--local` (required with `--node`), else the model in-process.
    pub fn open(data: &DataDir, cache: &ModelCache, args: &ModelArgs) -> Result<Backend> {
        if !args.local {
            if let Some(node) = LocalNode::find(data) {
                return Ok(Backend::Node {
                    node: Box::new(node),
                    model: args
                        .model
                        .clone()
                        .unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
                    pin: args.node.clone(),
                });
            }
            if let Some(pin) = &args.node {
                anyhow::bail!(
                    "--node {pin} needs the local node running; start it with `hearth node`"
                );
            }
        }
        let model = open_model(cache, args)?;
        let generator = model.generator(args.ctx as usize)?;
        Ok(Backend::Local {
            model: Box::new(model),
            generator: Box::new(generator),
        })
    }

    /// One line saying what answers.
    pub fn describe(&self) -> String {
        match self {
            Backend::Local { model, generator } => format!(
                "{} ({} context tokens)",
                model.gguf().get_str("general.name").unwrap_or("model"),
                generator.context()
            ),
            Backend::Node { node, model, pin } => format!(
                "{model} through node {}{}",
                node.info.name,
                pin.as_ref()
                    .map(|p| format!(", served by {p}"))
                    .unwrap_or_default()
            ),
        }
    }

    /// Forgets the conversation cached in-process.
    pub fn reset(&mut self) {
        if let Backend::Local { generator, .. } = self {
            generator.reset();
        }
    }

    /// Whether replies can be recorded in the household's history (through a node only).
    pub fn records(&self) -> bool {
        matches!(self, Backend::Node { .. })
    }

    /// The reply to `prompt` (a chat, or raw text), streamed to `on_text`; recorded in
    /// `conversation` (an id, or "new") when given and the backend records. Wherever it is made,
    /// the prompt becomes tokens and the settings become sampling the same way (the model's
    /// `prompt_tokens` and `sampling`), so the same command gives the same reply.
    pub fn reply(
        &mut self,
        prompt: &Prompt,
        conversation: Option<&str>,
        params: &JobParams,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Turn> {
        match self {
            Backend::Local { model, generator } => {
                let (tokens, stops) = model.prompt_tokens(prompt)?;
                let params = GenerateParams {
                    sampling: model.sampling(&params.sampling, params.seed)?,
                    max_tokens: params.max_tokens as usize,
                    stop: params.stop.iter().chain(&stops).cloned().collect(),
                    json: params.json,
                };
                match generator.generate(&tokens, &params, on_text) {
                    Ok(c) => Ok(Turn::Reply(local_reply(c))),
                    Err(e @ EngineError::ContextOverflow { .. }) => {
                        Ok(Turn::TooLong(e.to_string()))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Backend::Node { node, model, pin } => {
                let mut body = request_body(model, params);
                let path = match prompt {
                    Prompt::Chat(messages) => {
                        body["messages"] = json!(messages);
                        "/v1/chat/completions"
                    }
                    Prompt::Text {
                        text,
                        parse_special,
                    } => {
                        body["prompt"] = json!(text);
                        body["hearth"]["parse_special"] = json!(parse_special);
                        "/v1/completions"
                    }
                };
                if let Some(pin) = pin {
                    body["hearth"]["node"] = json!(pin);
                }
                if let Some(c) = conversation {
                    body["hearth"]["conversation"] = json!(c);
                }
                match node.stream(path, body, on_text) {
                    Ok(s) => Ok(Turn::Reply(node_reply(s))),
                    Err(e) => match e.downcast_ref::<NodeError>() {
                        Some(ne) if ne.code == CONTEXT_LENGTH_EXCEEDED => {
                            Ok(Turn::TooLong(ne.message.clone()))
                        }
                        _ => Err(e),
                    },
                }
            }
        }
    }
}

/// The OpenAI request body for `params`: only the sampling settings given, so the serving node
/// fills the rest as a local run would.
fn request_body(model: &str, p: &JobParams) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": p.max_tokens,
        "seed": p.seed,
        "stop": p.stop,
    });
    let s = &p.sampling;
    let set = [
        ("temperature", s.temperature.map(|v| json!(v))),
        ("top_k", s.top_k.map(|v| json!(v))),
        ("top_p", s.top_p.map(|v| json!(v))),
        ("min_p", s.min_p.map(|v| json!(v))),
        ("repeat_penalty", s.repeat_penalty.map(|v| json!(v))),
        ("repeat_last_n", s.repeat_last_n.map(|v| json!(v))),
    ];
    for (key, value) in set {
        if let Some(v) = value {
            body[key] = v;
        }
    }
    body
}

fn local_reply(c: Completion) -> Reply {
    Reply {
        stats: stats_line(&c),
        text: c.text,
        conversation: None,
    }
}

fn node_reply(s: crate::client::Streamed) -> Reply {
    Reply {
        stats: format!(
            "[{} prompt tokens, {} generated, served by {}, finish: {}]",
            s.prompt_tokens,
            s.completion_tokens,
            s.nodes.join(" then "),
            s.finish.as_deref().unwrap_or("?")
        ),
        text: s.text,
        conversation: s.conversation,
    }
}

/// One line of token counts and speeds.
fn stats_line(c: &Completion) -> String {
    let rate = |n: usize, d: std::time::Duration| {
        if d.as_secs_f64() > 0.0 {
            n as f64 / d.as_secs_f64()
        } else {
            0.0
        }
    };
    let fresh = c.prompt_tokens - c.reused_tokens;
    format!(
        "[{} prompt tokens ({} reused) at {:.1} t/s, {} generated at {:.1} t/s, finish: {:?}]",
        c.prompt_tokens,
        c.reused_tokens,
        rate(fresh, c.prefill_time),
        c.tokens.len(),
        rate(c.tokens.len(), c.decode_time),
        c.finish
    )
}

/// Reads the whole of stdin when `text` is "-".
pub(super) fn text_or_stdin(text: &str) -> Result<String> {
    if text != "-" {
        return Ok(text.to_owned());
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .context("cannot read the prompt from stdin")?;
    Ok(s)
}
