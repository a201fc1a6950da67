//! OpenAI-compatible endpoints: `/v1/chat/completions`, `/v1/completions` (each streamed as SSE
//! or not, with `usage`) and `/v1/models` (every model in the household, with where it lives).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use hearth_protocol::{ChatMessage, Finish, JobParams, Prompt, SamplingOverrides, Usage};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{ApiError, HearthOptions};
use crate::chat::{self, Members, Reply, ReplyRequest, RouteAsk};
use crate::jobs;
use crate::node::Node;

/// Sampling fields shared by both endpoints (OpenAI's names, plus `top_k`, `min_p`,
/// `repeat_penalty` and `repeat_last_n`, as llama.cpp's server takes them); fields hearth does
/// not use are ignored, as OpenAI clients send many. Unset ones come from the node's
/// configuration, the model's recommendation or hearth's defaults.
#[derive(Debug, Default, Deserialize)]
struct Sampling {
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<u32>,
    seed: Option<u64>,
    stop: Option<OneOrMany>,
    n: Option<u32>,
    /// `{"type": "json_object"}`: the reply is one JSON object.
    response_format: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Fields both endpoints take besides their input.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    hearth: HearthOptions,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<InMessage>,
    #[serde(default)]
    tools: Vec<Value>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// Message content: a string, or OpenAI's list of parts (text parts are used).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: OneOrMany,
    #[serde(flatten)]
    common: Common,
}

/// Which endpoint a reply is shaped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Completion,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the request body is not a valid request: {e}"),
        )
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&body)?;
    if !req.tools.is_empty() {
        return Err(ApiError::bad_param("tools", super::NO_TOOLS));
    }
    if req.messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let messages = req
        .messages
        .into_iter()
        .map(|m| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text)
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            if !matches!(
                m.role.as_str(),
                "system" | "user" | "assistant" | "developer" | "tool"
            ) {
                return Err(ApiError::bad_param(
                    "messages",
                    format!("unknown role {:?}: use system, user or assistant", m.role),
                ));
            }
            Ok(ChatMessage {
                role: m.role,
                content,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    respond(node, req.common, Prompt::Chat(messages), Shape::Chat).await
}

/// `POST /v1/completions`.
pub async fn completions(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&body)?;
    let prompt = match req.prompt {
        OneOrMany::One(p) => p,
        OneOrMany::Many(mut v) if v.len() == 1 => v.remove(0),
        OneOrMany::Many(_) => {
            return Err(ApiError::bad_param("prompt", "send one prompt per request"))
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_param("prompt", "the prompt is empty"));
    }
    let prompt = Prompt::Text {
        text: prompt,
        parse_special: req.common.hearth.parse_special.unwrap_or(true),
    };
    respond(node, req.common, prompt, Shape::Completion).await
}

fn job_params(s: Sampling) -> Result<JobParams, ApiError> {
    if s.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_param(
            "n",
            "hearth makes one choice per request (n = 1)",
        ));
    }
    let params = JobParams {
        sampling: SamplingOverrides {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            repeat_last_n: s.repeat_last_n,
        },
        seed: s.seed.unwrap_or_else(rand::random),
        max_tokens: s.max_completion_tokens.or(s.max_tokens).unwrap_or(512),
        stop: s.stop.map(OneOrMany::into_vec).unwrap_or_default(),
        json: match s.response_format.as_ref().map(|f| &f["type"]) {
            None => false,
            Some(t) if t == "text" => false,
            Some(t) if t == "json_object" => true,
            Some(_) => {
                return Err(ApiError::bad_param(
                    "response_format",
                    "hearth constrains replies to a JSON object ({\"type\": \"json_object\"}), not to a schema yet",
                ))
            }
        },
        context: None,
        keep_alive: None,
    };
    // The same checks the engine makes, so that mistakes are a 400 here, not a failed job.
    jobs::check_params(&params)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", e.to_string()))?;
    Ok(params)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop | Finish::Cancelled => "stop",
        Finish::Length => "length",
    }
}

async fn respond(
    node: Arc<Node>,
    common: Common,
    prompt: Prompt,
    shape: Shape,
) -> Result<Response, ApiError> {
    let (split, wire) = common
        .hearth
        .split()
        .map_err(|e| ApiError::bad_param("hearth", e))?;
    let conversation = common
        .hearth
        .conversation()
        .map_err(|e| ApiError::bad_param("hearth", e))?;
    let Common {
        model,
        stream,
        sampling,
        hearth: HearthOptions { node: pin, .. },
    } = common;
    let request = ReplyRequest {
        model,
        prompt,
        params: job_params(sampling)?,
        pin,
        split,
        wire,
        conversation,
    };
    let starting = {
        let node = node.clone();
        Box::pin(async move { chat::start_reply(&node, request).await })
    };
    let started = if stream {
        // A reply that has not started within a moment is waiting for a job slot: the client
        // gets its headers now, and keep-alive comments until the reply starts (a failure is
        // then an error event). Refusals that come at once keep their status codes.
        let mut starting = starting;
        match tokio::time::timeout(HEADERS_WAIT, &mut starting).await {
            Ok(started) => started.map_err(super::not_started)?,
            Err(_) => {
                return Ok(Sse::new(late_stream(starting, shape))
                    .keep_alive(KeepAlive::new().interval(WAITING_KEEPALIVE))
                    .into_response())
            }
        }
    } else {
        starting.await.map_err(super::not_started)?
    };
    let conversation = started.conversation.map(|c| c.to_string());
    let meta = meta_of(&started, shape);
    let serving = started.node;
    let mut response = if stream {
        Sse::new(sse_stream(started.replies, meta, serving.clone()))
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        whole(started.replies, &meta, &serving)
            .await?
            .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&serving) {
        response.headers_mut().insert("x-hearth-node", v);
    }
    if let Some(v) = conversation.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert("x-hearth-conversation", v);
    }
    Ok(response)
}

/// How long a streamed request waits for its reply to start before its headers go out: more
/// than a model load or a split's setup takes, so their refusals keep their status codes.
const HEADERS_WAIT: Duration = Duration::from_secs(5);
/// Keep-alive comments while a streamed request waits for a job slot.
const WAITING_KEEPALIVE: Duration = Duration::from_secs(5);

/// A reply still starting, as the stream of a response whose headers went out first.
type Starting = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<chat::ReplyStream, chat::ReplyError>> + Send>,
>;

/// The events of a reply that had not started when its headers went out: nothing (keep-alive
/// comments) until it starts, then its chunks; or an error event if it never starts.
fn late_stream(starting: Starting, shape: Shape) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::once(starting).flat_map(move |started| match started {
        Ok(started) => {
            let meta = meta_of(&started, shape);
            sse_stream(started.replies, meta, started.node).left_stream()
        }
        Err(e) => {
            let error = super::not_started(e).body().to_string();
            futures::stream::once(async move { Ok(Event::default().data(error)) }).right_stream()
        }
    })
}

/// The fields every chunk of `started` repeats.
fn meta_of(started: &chat::ReplyStream, shape: Shape) -> Meta {
    Meta {
        id: format!(
            "{}-{:016x}",
            if shape == Shape::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            rand::random::<u64>()
        ),
        created: now(),
        model: started.model.name.clone(),
        shape,
        conversation: started.conversation.map(|c| c.to_string()),
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    /// The conversation the reply is recorded in.
    conversation: Option<String>,
    shape: Shape,
}

fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

async fn whole(
    mut replies: mpsc::Receiver<Reply>,
    meta: &Meta,
    serving: &str,
) -> Result<Json<Value>, ApiError> {
    let mut text = String::new();
    let mut nodes = vec![serving.to_owned()];
    while let Some(reply) = replies.recv().await {
        match reply {
            Reply::Started { node, .. } => nodes.push(node),
            Reply::Text(t) => text.push_str(&t),
            Reply::Failed { kind, message } => return Err(super::failure(kind, message)),
            Reply::Done { finish, usage: u } => {
                let choice = match meta.shape {
                    Shape::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish_reason(finish),
                    }),
                    Shape::Completion => json!({
                        "index": 0,
                        "text": text,
                        "finish_reason": finish_reason(finish),
                    }),
                };
                return Ok(Json(json!({
                    "id": meta.id,
                    "object": if meta.shape == Shape::Chat { "chat.completion" } else { "text_completion" },
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [choice],
                    "usage": usage(&u),
                    "hearth": {"nodes": nodes, "conversation": meta.conversation},
                })));
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the reply ended without finishing",
    ))
}

fn chunk(meta: &Meta, node: &str, delta: Value, finish: Option<&str>) -> Value {
    let choice = match meta.shape {
        Shape::Chat => json!({"index": 0, "delta": delta, "finish_reason": finish}),
        Shape::Completion => json!({
            "index": 0,
            "text": delta.get("content").cloned().unwrap_or(json!("")),
            "finish_reason": finish,
        }),
    };
    json!({
        "id": meta.id,
        "object": if meta.shape == Shape::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "hearth": {"node": node, "conversation": meta.conversation},
    })
}

/// The SSE stream: a first chunk (the assistant role), text chunks, a last chunk with the finish
/// reason and usage, then `[DONE]`; on failure an error event, then the stream closes.
fn sse_stream(
    replies: mpsc::Receiver<Reply>,
    meta: Meta,
    serving: String,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct St {
        replies: mpsc::Receiver<Reply>,
        meta: Meta,
        node: String,
        opened: bool,
        ended: bool,
    }
    let st = St {
        replies,
        meta,
        node: serving,
        opened: false,
        ended: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.ended {
            return None;
        }
        if !st.opened {
            st.opened = true;
            if st.meta.shape == Shape::Chat {
                let first = chunk(
                    &st.meta,
                    &st.node,
                    json!({"role": "assistant", "content": ""}),
                    None,
                );
                return Some((Ok(Event::default().data(first.to_string())), st));
            }
        }
        loop {
            let event = match st.replies.recv().await {
                Some(Reply::Started { node, .. }) => {
                    st.node = node;
                    continue;
                }
                Some(Reply::Text(t)) => chunk(&st.meta, &st.node, json!({"content": t}), None),
                Some(Reply::Done { finish, usage: u }) => {
                    let mut last =
                        chunk(&st.meta, &st.node, json!({}), Some(finish_reason(finish)));
                    last["usage"] = usage(&u);
                    st.replies.close();
                    // `[DONE]` follows on the next poll.
                    return Some((Ok(Event::default().data(last.to_string())), st));
                }
                Some(Reply::Failed { kind, message }) => {
                    st.ended = true;
                    return Some((
                        Ok(Event::default().data(super::failure(kind, message).body().to_string())),
                        st,
                    ));
                }
                None => {
                    st.ended = true;
                    return Some((Ok(Event::default().data("[DONE]")), st));
                }
            };
            return Some((Ok(Event::default().data(event.to_string())), st));
        }
    })
}

/// `GET /v1/models`: every model on any node of the household, with where it lives.
pub async fn models(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let members = Members::of(&node);
    let ask = RouteAsk {
        context: node.engine.context() as u32,
        ..RouteAsk::default()
    };
    let data: Vec<Value> = members
        .models()
        .into_iter()
        .map(|m| {
            // How a request would run it now: whole on a node, split over several, or not.
            let route = members.route(&m.info.digest, &ask);
            let servable = match (&route.ranked.first(), &route.split) {
                (Some(r), _) if r.split.is_none() => "whole",
                (Some(_), _) => "split",
                (None, _) => "no",
            };
            json!({
                "id": m.info.name,
                "object": "model",
                "created": 0,
                "owned_by": "hearth",
                "hearth": {
                    "digest": m.info.digest,
                    "family": m.info.family,
                    "quantization": m.info.quantization,
                    "size": m.info.size,
                    "layers": m.info.layers,
                    "nodes": m.nodes,
                    "loaded_on": m.loaded_on,
                    "servable": servable,
                },
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
