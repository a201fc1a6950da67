//! Ollama's API, beside OpenAI's: `/`, `/api/version`, `/api/tags`, `/api/show`, `/api/ps`,
//! `/api/chat` and `/api/generate` (newline-delimited JSON, streamed by default), `/api/delete`,
//! and clear refusals for what hearth does not do yet. Wire shapes only: replies go through the
//! same chat path (routing, failover, history, sampling) as the OpenAI endpoints.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::HearthOptions;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use hearth_protocol::{ChatMessage, Finish, JobParams, Prompt, SamplingOverrides, Usage};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::ApiError;
use crate::chat::{self, Members, MeshModel, Reply, ReplyRequest};
use crate::jobs;
use crate::models::DEFAULT_MODEL;
use crate::node::Node;

/// The Ollama version hearth answers as: clients check it before using newer fields.
const OLLAMA_VERSION: &str = "0.9.0";

/// An error in Ollama's shape: `{"error": "..."}`, with the same status as OpenAI's.
#[derive(Debug)]
pub struct OllamaError(ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        OllamaError(e)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        (self.0.status(), Json(json!({"error": self.0.message()}))).into_response()
    }
}

fn bad(message: impl Into<String>) -> OllamaError {
    OllamaError(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        message,
    ))
}

fn not_found(message: impl Into<String>) -> OllamaError {
    OllamaError(ApiError::new(StatusCode::NOT_FOUND, "not_found", message))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, OllamaError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))
}

/// An Ollama model name as hearth knows it: `name:latest` is `name`.
fn hearth_name(name: &str) -> &str {
    name.strip_suffix(":latest").unwrap_or(name)
}

/// The household model `name` names.
fn find(members: &Members, name: &str) -> Result<MeshModel, OllamaError> {
    members
        .find_model(hearth_name(name))
        .map_err(|e| not_found(format!("model '{name}' not found ({e})")))
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// `secs` since the epoch as an RFC 3339 UTC time.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A parameter count as Ollama writes it: `135M`, `2.7B` (empty when unknown).
fn parameter_size(n: u64) -> String {
    match n {
        0 => String::new(),
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.0}M", n as f64 / 1e6),
        n => format!("{:.0}K", n as f64 / 1e3),
    }
}

/// Ollama's `details` of a model.
fn details(m: &MeshModel) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": m.info.family,
        "families": [m.info.family],
        "parameter_size": parameter_size(m.info.parameters),
        "quantization_level": m.info.quantization,
    })
}

fn model_entry(m: &MeshModel) -> Value {
    json!({
        "name": format!("{}:latest", m.info.name),
        "model": format!("{}:latest", m.info.name),
        "modified_at": rfc3339(0),
        "size": m.info.size,
        "digest": m.info.digest,
        "details": details(m),
        "hearth": {"nodes": m.nodes, "loaded_on": m.loaded_on},
    })
}

/// `GET /` (and `HEAD /`).
pub async fn root() -> &'static str {
    "Ollama is running"
}

/// `GET /api/version`.
pub async fn version() -> Json<Value> {
    Json(json!({ "version": OLLAMA_VERSION }))
}

/// `GET /api/tags`: every model in the household.
pub async fn tags(State(node): State<Arc<Node>>) -> Json<Value> {
    let models: Vec<Value> = Members::of(&node)
        .models()
        .iter()
        .map(model_entry)
        .collect();
    Json(json!({ "models": models }))
}

/// `GET /api/ps`: models loaded somewhere in the household.
pub async fn ps(State(node): State<Arc<Node>>) -> Json<Value> {
    let models: Vec<Value> = Members::of(&node)
        .models()
        .iter()
        .filter(|m| !m.loaded_on.is_empty())
        .map(|m| {
            let mut e = model_entry(m);
            // When this node unloads it (its keep-alive); else kept, as Ollama's "forever".
            e["expires_at"] = json!(match node.engine.unloads_in(&m.info.digest) {
                Some(left) => rfc3339(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| (d + left).as_secs()),
                ),
                None => "2318-01-01T00:00:00Z".to_owned(),
            });
            e["size_vram"] = json!(0);
            e
        })
        .collect();
    Json(json!({ "models": models }))
}

#[derive(Debug, Deserialize)]
struct ModelQuery {
    #[serde(alias = "name")]
    model: String,
}

/// `POST /api/show`: a model's details, and its chat template when this node holds the file.
pub async fn show(State(node): State<Arc<Node>>, body: Bytes) -> Result<Json<Value>, OllamaError> {
    let q: ModelQuery = parse(&body)?;
    let m = find(&Members::of(&node), &q.model)?;
    let path = node.engine.cache().file_path(&m.info.digest);
    let template = tokio::task::spawn_blocking(move || {
        hearth_shards::Gguf::open(&path)
            .ok()
            .and_then(|g| g.get_str("tokenizer.chat_template").ok().map(str::to_owned))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": template,
        "details": details(&m),
        "model_info": {
            "general.architecture": m.info.family,
            "general.file_type": m.info.quantization,
            "general.parameter_count": m.info.parameters,
            format!("{}.block_count", m.info.family): m.info.layers,
        },
        "capabilities": ["completion"],
        "modified_at": rfc3339(0),
    })))
}

/// `DELETE /api/delete {"model"}`: removes the model from this node's cache.
pub async fn delete(State(node): State<Arc<Node>>, body: Bytes) -> Result<StatusCode, OllamaError> {
    let q: ModelQuery = parse(&body)?;
    let cache = node.engine.cache().clone();
    let name = hearth_name(&q.model).to_owned();
    if node.engine.loaded().iter().any(|d| {
        cache
            .by_digest(d)
            .ok()
            .flatten()
            .is_some_and(|m| m.name.eq_ignore_ascii_case(&name))
    }) {
        return Err(bad(format!(
            "model '{}' is loaded on this node; restart the node without it first",
            q.model
        )));
    }
    tokio::task::spawn_blocking(move || cache.remove(&name))
        .await
        .map_err(|e| bad(e.to_string()))?
        .map_err(|e| {
            not_found(format!(
                "model '{}' not found on this node ({e:#})",
                q.model
            ))
        })?;
    Ok(StatusCode::OK)
}

/// `POST /api/embed`, `/api/embeddings`: not yet.
pub async fn embed() -> OllamaError {
    not_found("hearth serves no embedding models yet; /api/embed arrives with them")
}

/// `POST /api/pull`: pulls the model from a household node that holds it (never from the
/// internet), reporting progress as Ollama does: NDJSON lines of status, digest, total and
/// completed, then `{"status":"success"}`.
pub async fn pull(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, OllamaError> {
    #[derive(Deserialize)]
    struct PullBody {
        model: Option<String>,
        name: Option<String>,
        stream: Option<bool>,
    }
    let b: PullBody = parse(&body)?;
    let Some(model) = b.model.or(b.name) else {
        return Err(bad("model is required"));
    };
    let started = super::share::start(&node, hearth_name(&model), None).map_err(|e| {
        if e.status() == StatusCode::NOT_FOUND {
            not_found(format!(
                "pull model manifest: {} (hearth pulls only from household nodes; import a GGUF file with `hearth models import FILE` on one of them)",
                e.message()
            ))
        } else {
            OllamaError(e)
        }
    })?;
    let rx = match started {
        crate::share::Started::Present(_) => {
            return Ok(Json(json!({"status": "success"})).into_response())
        }
        crate::share::Started::Pulling(rx) => rx,
    };
    if !b.stream.unwrap_or(true) {
        let last = crate::share::pull::finished(rx).await;
        return Ok(match last.error {
            None => Json(json!({"status": "success"})).into_response(),
            Some(e) => (StatusCode::BAD_GATEWAY, Json(json!({"error": e}))).into_response(),
        });
    }
    use futures::StreamExt;
    let lines = super::share::progress_stream(rx).flat_map(|p| {
        let pulling = json!({
            "status": format!("pulling {}", crate::share::short(&p.digest)),
            "digest": format!("sha256:{}", p.digest),
            "total": p.total,
            "completed": p.completed,
        });
        let lines: Vec<Value> = match p.status {
            "manifest" => vec![json!({"status": "pulling manifest"})],
            "pulling" => vec![pulling],
            // Progress lines fold while they wait to be read: the last one says all is here.
            "verifying" => vec![pulling, json!({"status": "verifying sha256 digest"})],
            "success" => vec![
                json!({"status": "writing manifest"}),
                json!({"status": "success"}),
            ],
            _ => vec![json!({"error": p.error.unwrap_or_else(|| "the pull failed".into())})],
        };
        futures::stream::iter(
            lines
                .into_iter()
                .map(|l| Ok::<_, std::convert::Infallible>(format!("{l}\n"))),
        )
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .expect("static response"))
}

/// Ollama's `options` (the ones hearth uses; others are ignored, as Ollama ignores unknown ones).
#[derive(Debug, Default, Deserialize)]
struct Options {
    temperature: Option<f32>,
    top_k: Option<u32>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<u32>,
    seed: Option<u64>,
    num_predict: Option<i64>,
    num_ctx: Option<i64>,
    stop: Option<Vec<String>>,
}

/// Fields `/api/chat` and `/api/generate` share.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    #[serde(default)]
    options: Options,
    stream: Option<bool>,
    format: Option<Value>,
    #[serde(default)]
    tools: Vec<Value>,
    /// How long the model stays loaded once idle: seconds, or a duration like "5m" or "-1s".
    keep_alive: Option<Value>,
    #[serde(default)]
    hearth: HearthOptions,
}

impl Common {
    /// `keep_alive` in seconds (negative: for ever).
    fn keep_alive(&self) -> Result<Option<i64>, OllamaError> {
        self.keep_alive
            .as_ref()
            .map(|v| keep_alive_seconds(v).map_err(bad))
            .transpose()
    }
}

/// Ollama's `keep_alive`: a number of seconds, or a duration (`"5m"`, `"1h30m"`, `"-1s"`,
/// `"0"`); a negative one keeps the model loaded. Parts of a second round up.
fn keep_alive_seconds(v: &Value) -> Result<i64, String> {
    let wrong =
        || format!("keep_alive {v} is not a duration: use seconds, or e.g. \"5m\", \"1h\", \"-1\"");
    if let Some(n) = v.as_f64() {
        return Ok(n.ceil() as i64);
    }
    let text = v.as_str().ok_or_else(wrong)?.trim();
    if text.is_empty() {
        return Err(wrong());
    }
    if let Ok(n) = text.parse::<f64>() {
        return Ok(n.ceil() as i64);
    }
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(wrong)?;
        let number: f64 = rest[..digits].parse().map_err(|_| wrong())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(wrong()),
        };
        seconds += number * scale;
        rest = &rest[unit..];
    }
    let seconds = seconds.ceil() as i64;
    Ok(if negative { -seconds.max(1) } else { seconds })
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    messages: Vec<InMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct GenerateRequest {
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    images: Vec<Value>,
    #[serde(flatten)]
    common: Common,
}

fn no_images(images: &[Value]) -> Result<(), OllamaError> {
    if images.is_empty() {
        Ok(())
    } else {
        Err(bad(
            "images are not supported: hearth's models read text only",
        ))
    }
}

/// Which endpoint a reply is shaped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Generate,
}

/// `POST /api/chat`.
pub async fn chat(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, OllamaError> {
    let req: ChatRequest = parse(&body)?;
    if req.messages.is_empty() {
        return load_only(&node, req.common, Shape::Chat).await;
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        no_images(&m.images)?;
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(bad(format!(
                "invalid role {:?}: use system, user or assistant",
                m.role
            )));
        }
        messages.push(ChatMessage::new(m.role, m.content));
    }
    respond(node, req.common, Prompt::Chat(messages), Shape::Chat).await
}

/// `POST /api/generate`: the prompt through the model's template (with `system`), or as is with
/// `raw`.
pub async fn generate(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, OllamaError> {
    let req: GenerateRequest = parse(&body)?;
    no_images(&req.images)?;
    if req.prompt.is_empty() {
        return load_only(&node, req.common, Shape::Generate).await;
    }
    let prompt = if req.raw {
        Prompt::text(req.prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = req.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", req.prompt));
        Prompt::Chat(messages)
    };
    respond(node, req.common, prompt, Shape::Generate).await
}

/// A request with no messages or prompt: Ollama's way of loading a model, or with `keep_alive`
/// 0 of unloading it. Answers done once the model is known (nodes load it at its first reply);
/// a keep-alive applies to the model as loaded on this node.
async fn load_only(node: &Node, common: Common, shape: Shape) -> Result<Response, OllamaError> {
    let keep_alive = common.keep_alive()?;
    let name = common.model.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let m = find(&Members::of(node), &name)?;
    if let Some(seconds) = keep_alive {
        node.engine.keep_alive(&m.info.digest, seconds);
        node.engine.unload_expired();
    }
    let mut done = json!({
        "model": format!("{}:latest", m.info.name),
        "created_at": rfc3339_now(),
        "done": true,
        "done_reason": if keep_alive == Some(0) { "unload" } else { "load" },
    });
    match shape {
        Shape::Chat => done["message"] = json!({"role": "assistant", "content": ""}),
        Shape::Generate => done["response"] = json!(""),
    }
    Ok(Json(done).into_response())
}

fn job_params(o: Options) -> Result<JobParams, OllamaError> {
    let max_tokens = match o.num_predict {
        None | Some(-1) | Some(-2) => 512,
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => return Err(bad(format!("num_predict {n} must be positive, or -1"))),
    };
    let params = JobParams {
        sampling: SamplingOverrides {
            temperature: o.temperature,
            top_k: o.top_k,
            top_p: o.top_p,
            min_p: o.min_p,
            repeat_penalty: o.repeat_penalty,
            repeat_last_n: o.repeat_last_n,
        },
        seed: o.seed.unwrap_or_else(rand::random),
        max_tokens,
        stop: o.stop.unwrap_or_default(),
        json: false,
        context: match o.num_ctx {
            None => None,
            Some(n) if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            Some(n) => return Err(bad(format!("num_ctx {n} must be positive"))),
        },
        keep_alive: None,
    };
    jobs::check_params(&params).map_err(|e| bad(e.to_string()))?;
    Ok(params)
}

async fn respond(
    node: Arc<Node>,
    common: Common,
    prompt: Prompt,
    shape: Shape,
) -> Result<Response, OllamaError> {
    if !common.tools.is_empty() {
        return Err(bad(super::NO_TOOLS));
    }
    // `"json"`: the reply is one JSON object. A JSON schema (structured outputs) is not
    // followed yet.
    let json = match &common.format {
        None => false,
        Some(Value::String(f)) if f == "json" => true,
        Some(Value::String(f)) if f.is_empty() => false,
        Some(f) => {
            return Err(bad(format!(
                "format {f} is not supported: hearth constrains replies to JSON (\"json\"), not to a schema yet"
            )))
        }
    };
    let (split, wire) = common
        .hearth
        .split()
        .map_err(|e| bad(format!("hearth: {e}")))?;
    let conversation = common
        .hearth
        .conversation()
        .map_err(|e| bad(format!("hearth: {e}")))?;
    let keep_alive = common.keep_alive()?;
    let model = common.model.map(|m| hearth_name(&m).to_owned());
    let request = ReplyRequest {
        model,
        prompt,
        params: JobParams {
            json,
            keep_alive,
            ..job_params(common.options)?
        },
        pin: common.hearth.node,
        split,
        wire,
        conversation,
    };
    let start = Instant::now();
    let started = chat::start_reply(&node, request)
        .await
        .map_err(|e| OllamaError(super::not_started(e)))?;
    let meta = Meta {
        model: format!("{}:latest", started.model.name),
        shape,
        start,
    };
    if common.stream.unwrap_or(true) {
        let body = Body::from_stream(ndjson(started.replies, meta));
        Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
    } else {
        whole(started.replies, &meta).await
    }
}

struct Meta {
    model: String,
    shape: Shape,
    start: Instant,
}

impl Meta {
    /// One object of the reply: a piece of text, or (with `end`) the last, with its figures.
    fn object(&self, text: &str, end: Option<(Finish, Usage, Option<Instant>)>) -> Value {
        let mut v =
            json!({"model": self.model, "created_at": rfc3339_now(), "done": end.is_some()});
        match self.shape {
            Shape::Chat => v["message"] = json!({"role": "assistant", "content": text}),
            Shape::Generate => v["response"] = json!(text),
        }
        if let Some((finish, usage, first)) = end {
            let now = Instant::now();
            let first = first.unwrap_or(now);
            let ns = |d: std::time::Duration| d.as_nanos() as u64;
            v["done_reason"] = json!(match finish {
                Finish::Length => "length",
                Finish::Stop | Finish::Cancelled => "stop",
            });
            v["total_duration"] = json!(ns(now - self.start));
            v["load_duration"] = json!(0);
            v["prompt_eval_count"] = json!(usage.prompt_tokens);
            v["prompt_eval_duration"] = json!(ns(first - self.start));
            v["eval_count"] = json!(usage.completion_tokens);
            v["eval_duration"] = json!(ns(now - first));
        }
        v
    }
}

async fn whole(mut replies: mpsc::Receiver<Reply>, meta: &Meta) -> Result<Response, OllamaError> {
    let mut text = String::new();
    let mut first = None;
    while let Some(reply) = replies.recv().await {
        match reply {
            Reply::Started { .. } => {}
            Reply::Text(t) => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&t);
            }
            Reply::Failed { kind, message } => {
                return Err(OllamaError(super::failure(kind, message)))
            }
            Reply::Done { finish, usage } => {
                return Ok(Json(meta.object(&text, Some((finish, usage, first)))).into_response())
            }
        }
    }
    Err(bad("the reply ended without finishing"))
}

/// The streamed reply: one JSON object a line, the last with `done: true`; on failure an object
/// with `error`, then the stream ends.
fn ndjson(
    replies: mpsc::Receiver<Reply>,
    meta: Meta,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let line = |v: Value| Ok(Bytes::from(format!("{v}\n")));
    futures::stream::unfold(
        (replies, meta, None::<Instant>, false),
        move |(mut replies, meta, mut first, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let out = match replies.recv().await? {
                    Reply::Started { .. } => continue,
                    Reply::Text(t) => {
                        first.get_or_insert_with(Instant::now);
                        (meta.object(&t, None), false)
                    }
                    Reply::Done { finish, usage } => {
                        (meta.object("", Some((finish, usage, first))), true)
                    }
                    Reply::Failed { kind, message } => (
                        json!({"error": super::failure(kind, message).message()}),
                        true,
                    ),
                };
                return Some((line(out.0), (replies, meta, first, out.1)));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn keep_alive_reads_as_ollama_writes_it() {
        use serde_json::json;
        for (v, want) in [
            (json!(300), 300),
            (json!(0), 0),
            (json!(-1), -1),
            (json!("0"), 0),
            (json!("5m"), 300),
            (json!("1h30m"), 5400),
            (json!("-1s"), -1),
            (json!("-1m"), -60),
            (json!("1.5s"), 2),
            (json!("250ms"), 1),
        ] {
            assert_eq!(super::keep_alive_seconds(&v), Ok(want), "{v}");
        }
        for v in [
            json!("soon"),
            json!("5x"),
            json!("m"),
            json!(true),
            json!(""),
        ] {
            let e = super::keep_alive_seconds(&v).unwrap_err();
            assert!(e.contains("not a duration"), "{v}: {e}");
        }
    }

    use super::*;

    #[test]
    fn times_are_rfc3339_and_names_drop_latest() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_112_669), "2026-12-01T08:11:09Z");
        assert_eq!(hearth_name("smollm2-135m:latest"), "smollm2-135m");
        assert_eq!(hearth_name("smollm2-135m"), "smollm2-135m");
        assert_eq!(hearth_name("llama3:8b"), "llama3:8b");
        assert_eq!(parameter_size(134_515_008), "135M");
        assert_eq!(parameter_size(2_700_000_000), "2.7B");
        assert_eq!(parameter_size(0), "");
    }

    #[test]
    fn options_map_to_job_settings_and_bad_ones_are_refused() {
        let p = job_params(Options {
            temperature: Some(0.0),
            num_predict: Some(7),
            seed: Some(3),
            ..Options::default()
        })
        .unwrap();
        assert_eq!(p.sampling.temperature, Some(0.0));
        assert_eq!((p.max_tokens, p.seed), (7, 3));
        assert_eq!(
            p.sampling.min_p, None,
            "unset: the model's or hearth's default"
        );
        assert_eq!(job_params(Options::default()).unwrap().max_tokens, 512);
        assert!(job_params(Options {
            num_predict: Some(0),
            ..Options::default()
        })
        .is_err());
        assert!(job_params(Options {
            top_p: Some(3.0),
            ..Options::default()
        })
        .is_err());
    }
}
