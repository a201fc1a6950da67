//! The node's HTTP API as the client uses it: typed requests, errors a person can read, and
//! the two streams (a chat reply, the history's changes).

use std::time::Duration;

use futures::{Stream, StreamExt};
use hearth_protocol::history::{Conversation, Id, Message, Summary};
use hearth_protocol::Card;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::sse::SseDecoder;

/// How long a plain request may take (streams have no overall limit).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Nothing answers at the address (or it stopped answering).
    Unreachable(String),
    /// The node wants an API token, or another one.
    Unauthorized(String),
    /// The node answered with an error: its message says what to do.
    Refused { status: u16, message: String },
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unreachable(e) => write!(f, "the node does not answer: {e}"),
            ApiError::Unauthorized(m) => write!(f, "the node refused the API token: {m}"),
            ApiError::Refused { message, .. } => f.write_str(message),
        }
    }
}

/// `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Health {
    pub status: String,
    pub node: String,
    pub peer_id: String,
    pub version: u32,
}

/// One household node, as `/api/peers` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Member {
    pub peer_id: String,
    pub addr: Option<String>,
    pub latency_ms: Option<f32>,
    pub this_node: bool,
    pub card: Card,
}

/// A model somewhere in the household, as `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Model {
    pub id: String,
    pub hearth: ModelWhere,
}

/// Where a model lives and how a request would run it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelWhere {
    pub family: String,
    pub quantization: String,
    pub size: u64,
    pub nodes: Vec<String>,
    pub loaded_on: Vec<String>,
    /// "whole", "split" or "no".
    pub servable: String,
}

/// `/api/household`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Household {
    pub fingerprint: String,
    pub join_code: String,
    pub revoked: Vec<String>,
}

/// A change to the household's history (`/api/conversations/events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The list changed (created, renamed, deleted, updated).
    Index,
    /// A conversation's messages changed.
    Conversation(Id),
    /// Changes were missed: fetch everything again.
    Resync,
}

/// A piece of a streamed chat reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// Text, and the node producing it.
    Text { text: String, node: String },
    /// The conversation the reply is recorded in.
    Recorded(Id),
    /// The reply ended (`finish_reason`), with its token count.
    Finished { reason: String, tokens: Option<u64> },
    /// The reply failed after it started.
    Failed(String),
}

/// A reply that started: where it is recorded, and its chunks.
pub struct ChatStream {
    pub conversation: Option<Id>,
    pub node: String,
    pub chunks: std::pin::Pin<Box<dyn Stream<Item = Result<Chunk, ApiError>> + Send>>,
}

/// A node's API at `base` (`http://host:port`).
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// The API at `base`, with the bearer `token` if the node needs one.
    pub fn new(base: &str, token: Option<String>) -> Api {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("an HTTP client with default TLS-less settings builds");
        Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// Where it is.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let response = r
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(cause(&e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"]
            .as_str()
            .or(body["error"].as_str())
            .map_or_else(|| format!("HTTP {status}"), str::to_owned);
        Err(if status == 401 {
            ApiError::Unauthorized(message)
        } else {
            ApiError::Refused { status, message }
        })
    }

    async fn json<T: DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T, ApiError> {
        let response = self.send(r.timeout(REQUEST_TIMEOUT)).await?;
        response.json().await.map_err(|e| ApiError::Refused {
            status: 200,
            message: format!("the node's answer did not parse: {e}"),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.json(self.request(reqwest::Method::GET, path)).await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ApiError> {
        self.get("/healthz").await
    }

    /// Every household node with its card, this node first.
    pub async fn members(&self) -> Result<Vec<Member>, ApiError> {
        self.get("/api/peers").await
    }

    /// Every model in the household.
    pub async fn models(&self) -> Result<Vec<Model>, ApiError> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<Model>,
        }
        Ok(self.get::<List>("/v1/models").await?.data)
    }

    /// The household's fingerprint, join code and revoked devices.
    pub async fn household(&self) -> Result<Household, ApiError> {
        self.get("/api/household").await
    }

    /// Removes a device from the household.
    pub async fn revoke(&self, peer: &str) -> Result<(), ApiError> {
        let r = self
            .request(reqwest::Method::POST, "/api/revoke")
            .json(&json!({ "peers": [peer] }));
        self.json::<Value>(r).await.map(drop)
    }

    /// How a request for `model` would be served now: the ranking and any split plan.
    pub async fn route(&self, model: &str) -> Result<Value, ApiError> {
        let r = self
            .request(reqwest::Method::GET, "/api/route")
            .query(&[("model", model)]);
        self.json(r).await
    }

    /// Conversations, newest first; those matching `query` when it is not empty.
    pub async fn conversations(&self, query: &str) -> Result<Vec<Summary>, ApiError> {
        #[derive(Deserialize)]
        struct List {
            conversations: Vec<Summary>,
        }
        let mut r = self.request(reqwest::Method::GET, "/api/conversations");
        if !query.is_empty() {
            r = r.query(&[("q", query)]);
        }
        Ok(self.json::<List>(r).await?.conversations)
    }

    /// One conversation with every message.
    pub async fn conversation(&self, id: Id) -> Result<Conversation, ApiError> {
        self.get(&format!("/api/conversations/{id}")).await
    }

    /// Renames a conversation.
    pub async fn rename(&self, id: Id, title: &str) -> Result<Summary, ApiError> {
        let r = self
            .request(reqwest::Method::PATCH, &format!("/api/conversations/{id}"))
            .json(&json!({ "title": title }));
        self.json(r).await
    }

    /// Deletes a conversation on every device.
    pub async fn delete(&self, id: Id) -> Result<(), ApiError> {
        let r = self.request(reqwest::Method::DELETE, &format!("/api/conversations/{id}"));
        self.send(r.timeout(REQUEST_TIMEOUT)).await.map(drop)
    }

    /// Replaces a message's text.
    pub async fn edit_message(&self, id: Id, message: Id, text: &str) -> Result<Message, ApiError> {
        let r = self
            .request(
                reqwest::Method::PATCH,
                &format!("/api/conversations/{id}/messages/{message}"),
            )
            .json(&json!({ "text": text }));
        self.json(r).await
    }

    /// Starts a streamed chat completion with `body` (OpenAI's request, `stream` set here).
    pub async fn chat(&self, mut body: Value) -> Result<ChatStream, ApiError> {
        body["stream"] = json!(true);
        let r = self
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&body);
        let response = self.send(r).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let conversation = header("x-hearth-conversation").and_then(|c| c.parse().ok());
        let node = header("x-hearth-node").unwrap_or_default();
        let chunks = events(response).flat_map(|data| {
            futures::stream::iter(match data {
                Ok(data) => chunk(&data),
                Err(e) => vec![Err(e)],
            })
        });
        Ok(ChatStream {
            conversation,
            node,
            chunks: Box::pin(chunks),
        })
    }

    /// The history's changes, as they happen, until the connection ends.
    pub async fn changes(
        &self,
    ) -> Result<impl Stream<Item = Result<Change, ApiError>> + Send, ApiError> {
        let r = self.request(reqwest::Method::GET, "/api/conversations/events");
        let response = self.send(r).await?;
        Ok(events(response).filter_map(|data| async move {
            let data = match data {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            let v: Value = serde_json::from_str(&data).ok()?;
            if v["index"] == json!(true) {
                Some(Ok(Change::Index))
            } else if v["resync"] == json!(true) {
                Some(Ok(Change::Resync))
            } else {
                let id = v["conversation"].as_str()?.parse().ok()?;
                Some(Ok(Change::Conversation(id)))
            }
        }))
    }
}

/// The data of each server-sent event of `response`.
fn events(response: reqwest::Response) -> impl Stream<Item = Result<String, ApiError>> + Send {
    let bytes = response.bytes_stream();
    futures::stream::unfold(
        (
            bytes,
            SseDecoder::default(),
            std::collections::VecDeque::new(),
        ),
        |(mut bytes, mut decoder, mut ready)| async move {
            loop {
                if let Some(data) = ready.pop_front() {
                    return Some((Ok(data), (bytes, decoder, ready)));
                }
                match bytes.next().await? {
                    Ok(b) => match decoder.push(&b) {
                        Ok(events) => ready.extend(events),
                        Err(_) => {
                            let e = ApiError::Unreachable("the node sent a broken stream".into());
                            return Some((Err(e), (bytes, decoder, ready)));
                        }
                    },
                    Err(e) => {
                        return Some((
                            Err(ApiError::Unreachable(cause(&e))),
                            (bytes, decoder, ready),
                        ))
                    }
                }
            }
        },
    )
}

/// What one event of a streamed chat completion says.
fn chunk(data: &str) -> Vec<Result<Chunk, ApiError>> {
    if data == "[DONE]" {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return vec![Err(ApiError::Refused {
            status: 200,
            message: format!("the node sent an event that did not parse: {data}"),
        })];
    };
    if let Some(message) = v["error"]["message"].as_str() {
        return vec![Ok(Chunk::Failed(message.to_owned()))];
    }
    let choice = &v["choices"][0];
    let mut out = Vec::new();
    if let Some(id) = v["hearth"]["conversation"]
        .as_str()
        .and_then(|c| c.parse().ok())
    {
        out.push(Ok(Chunk::Recorded(id)));
    }
    if let Some(text) = choice["delta"]["content"]
        .as_str()
        .filter(|t| !t.is_empty())
    {
        out.push(Ok(Chunk::Text {
            text: text.to_owned(),
            node: v["hearth"]["node"].as_str().unwrap_or_default().to_owned(),
        }));
    }
    if let Some(reason) = choice["finish_reason"].as_str() {
        out.push(Ok(Chunk::Finished {
            reason: reason.to_owned(),
            tokens: v["usage"]["completion_tokens"].as_u64(),
        }));
    }
    out
}

/// The innermost cause of a transport error, which says what happened ("Connection refused").
fn cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    if e.is_timeout() {
        "timed out".to_owned()
    } else {
        source.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_carry_text_node_finish_and_errors() {
        let text = r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"hearth":{"node":"den"}}"#;
        assert_eq!(
            chunk(text),
            [Ok(Chunk::Text {
                text: "Hi".into(),
                node: "den".into()
            })]
        );
        let end = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"completion_tokens":7},"hearth":{"conversation":"000000000000000000000000000000ab"}}"#;
        assert_eq!(
            chunk(end),
            [
                Ok(Chunk::Recorded(
                    "000000000000000000000000000000ab".parse().unwrap()
                )),
                Ok(Chunk::Finished {
                    reason: "stop".into(),
                    tokens: Some(7)
                })
            ]
        );
        let failed = r#"{"error":{"message":"no node can serve","type":"server_error"}}"#;
        assert_eq!(
            chunk(failed),
            [Ok(Chunk::Failed("no node can serve".into()))]
        );
        assert!(chunk("[DONE]").is_empty());
        assert!(chunk("{oops").first().unwrap().is_err());
    }
}
