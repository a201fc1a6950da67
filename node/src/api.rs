//! The HTTP API (axum): OpenAI-compatible `/v1/*`, Ollama-compatible `/` and `/api/{chat,generate,
//! tags,show,ps,...}`, the mesh's and the history's `/api/*`, `/healthz` and
//! `/metrics`. Loopback-only unless a bearer token guards it; errors use OpenAI's JSON shape.

mod history;
mod mesh;
mod ollama;
mod openai;
pub mod server;
mod share;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde_json::json;

use crate::chat::{FailKind, ReplyError};
use crate::history::{ConversationRef, Place};
use crate::metrics::Metrics;
use crate::node::Node;
use hearth_protocol::history::Id;

/// hearth's own request options, on the OpenAI and Ollama endpoints alike: `"node": NAME` pins
/// the serving node; `"conversation": ID` (or `"new"`) records the request and its reply in the
/// history; `"parse_special": false` makes control tokens written in a raw prompt plain text;
/// `"split": N` or `"stages": [NAME, ...]` splits the model over N nodes (or those, in that
/// order) even when one could serve it whole; `"wire": "f16"` halves a split's traffic. In a
/// recorded conversation, `"parent": ID` (or `"root"`) records the request's last message as a
/// new child of that message rather than after the newest branch (an edit resent, the old branch
/// kept), and `"reply_to": ID` records only a new reply to that message (a regeneration).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HearthOptions {
    pub node: Option<String>,
    pub conversation: Option<String>,
    pub parent: Option<String>,
    pub reply_to: Option<String>,
    pub parse_special: Option<bool>,
    pub split: Option<u32>,
    pub stages: Option<Vec<String>>,
    pub wire: Option<String>,
}

impl HearthOptions {
    /// The conversation to record in, and where the new turn goes.
    pub fn conversation(&self) -> Result<Option<ConversationRef>, String> {
        let message = |field: &str, raw: &str| {
            raw.parse::<Id>()
                .map_err(|e| format!("{field}: {e}; use a message's id"))
        };
        let Some(raw) = self.conversation.as_deref() else {
            return match (&self.parent, &self.reply_to) {
                (None, None) => Ok(None),
                _ => Err("parent and reply_to need a conversation".into()),
            };
        };
        let conversation = raw
            .parse::<ConversationRef>()
            .map_err(|e| format!("conversation: {e}; use a conversation's id, or \"new\""))?;
        let place = match (self.parent.as_deref(), self.reply_to.as_deref()) {
            (None, None) => return Ok(Some(conversation)),
            (Some(_), Some(_)) => return Err("give parent or reply_to, not both".into()),
            (Some("root"), None) => Place::Under(None),
            (Some(p), None) => Place::Under(Some(message("parent", p)?)),
            (None, Some(r)) => Place::ReplyTo(message("reply_to", r)?),
        };
        match conversation {
            ConversationRef::New => {
                Err("parent and reply_to name messages of an existing conversation".into())
            }
            ConversationRef::Existing { id, .. } => {
                Ok(Some(ConversationRef::Existing { id, place }))
            }
        }
    }

    /// The split asked for, and its wire format.
    pub fn split(
        &self,
    ) -> Result<(Option<crate::split::plan::Ask>, hearth_protocol::WireDtype), String> {
        let ask = crate::split::plan::Ask::from_request(self.split, self.stages.clone())?;
        let wire = match self.wire.as_deref() {
            None | Some("f32") => hearth_protocol::WireDtype::F32,
            Some("f16") => hearth_protocol::WireDtype::F16,
            Some(other) => return Err(format!("wire {other:?}: use \"f32\" or \"f16\"")),
        };
        Ok((ask, wire))
    }
}

/// What a request with `tools` gets, on either API, as Ollama answers for such models: none of
/// hearth's models' templates take tools yet.
pub const NO_TOOLS: &str = "model does not support tools";

/// The error code of a prompt longer than the model's context (OpenAI's, which clients know).
pub const CONTEXT_LENGTH_EXCEEDED: &str = "context_length_exceeded";

/// The API's routes over `node`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/api/peers", get(mesh::peers))
        .route("/api/route", get(mesh::route))
        .route("/api/revoke", post(mesh::revoke))
        .route("/api/household", get(mesh::household))
        .route(
            "/api/conversations",
            get(history::list).post(history::create),
        )
        .route("/api/conversations/events", get(history::events))
        .route(
            "/api/conversations/{id}",
            get(history::get)
                .patch(history::rename)
                .delete(history::delete),
        )
        .route(
            "/api/conversations/{id}/messages/{message}",
            patch(history::edit_message),
        )
        .route("/api/conversations/{id}/export", get(history::export))
        .route("/", get(ollama::root))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/delete", delete(ollama::delete))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embed))
        .route("/api/pull", post(ollama::pull))
        .route("/api/models/pull", post(share::pull))
        .route("/healthz", get(mesh::healthz))
        .route("/metrics", get(mesh::metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(server::bounded_body))
        .layer(axum::middleware::from_fn_with_state(node.clone(), guard))
        .with_state(node)
}

/// Counts requests and errors, and checks the bearer token (all routes but `/healthz`).
async fn guard(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    Metrics::inc(&node.metrics.requests);
    let open = request.uri().path() == "/healthz";
    let response = match &node.api_token {
        Some(token) if !open => {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
                next.run(request).await
            } else {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "this node needs an API token: send `Authorization: Bearer TOKEN`",
                )
                .into_response()
            }
        }
        _ => next.run(request).await,
    };
    if response.status().is_client_error() || response.status().is_server_error() {
        Metrics::inc(&node.metrics.request_errors);
    }
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such endpoint: {} {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The error for a reply that failed, by why.
pub(crate) fn failure(kind: FailKind, message: String) -> ApiError {
    match kind {
        FailKind::BadRequest => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message),
        FailKind::ContextOverflow => {
            ApiError::new(StatusCode::BAD_REQUEST, CONTEXT_LENGTH_EXCEEDED, message)
                .with_param("messages")
        }
        FailKind::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message),
        FailKind::Unavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_node_available",
            message,
        ),
    }
}

/// The error for a reply that did not start.
pub(crate) fn not_started(e: ReplyError) -> ApiError {
    let message = e.to_string();
    match e {
        ReplyError::ShuttingDown(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
        }
        ReplyError::UnknownModel(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "model_not_found", message).with_param("model")
        }
        ReplyError::UnknownNode(_) => ApiError::bad_param("hearth.node", message),
        ReplyError::NoRoute { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_node_available",
            message,
        ),
        ReplyError::Failed { kind, message } => failure(kind, message),
        ReplyError::History(e) => history::error(e),
    }
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    /// An error with `status`, a machine-readable `code` and a message that says what to do.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
        }
    }

    /// A 400 about request field `param`.
    pub fn bad_param(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", message)
        }
    }

    /// The same error, about request field `param`.
    pub fn with_param(self, param: &'static str) -> Self {
        ApiError {
            param: Some(param),
            ..self
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong and what to do.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
