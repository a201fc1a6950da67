//! `POST /api/models/pull`: pull a model from the household into this node, with its progress
//! as server-sent events (or one answer at the end with `"stream": false`). Everything that can
//! be refused is refused before the first byte: an unknown or ambiguous model, no holder ready.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use super::ApiError;
use crate::node::Node;
use crate::share::{Progress, PullError, Started};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    /// A model name, digest or digest prefix as peers' cards list it.
    model: String,
    /// The name it gets here (default: the holder's).
    name: Option<String>,
    #[serde(default = "yes")]
    stream: bool,
}

fn yes() -> bool {
    true
}

/// Starts (or joins) a pull and reports it.
pub async fn pull(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, ApiError> {
    let r: PullRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("a pull request is {{\"model\": NAME or DIGEST, \"name\": optional, \"stream\": optional}}: {e}"),
        )
    })?;
    let started = start(&node, &r.model, r.name.as_deref())?;
    let rx = match started {
        Started::Present(m) => watch::channel(Progress::present(&m)).1,
        Started::Pulling(rx) => rx,
    };
    if r.stream {
        Ok(Sse::new(events(rx))
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        let last = crate::share::pull::finished(rx).await;
        let status = if last.status == "success" {
            StatusCode::OK
        } else {
            StatusCode::BAD_GATEWAY
        };
        Ok((status, Json(last)).into_response())
    }
}

/// Starts a pull, mapping refusals to their status codes.
pub(crate) fn start(node: &Node, model: &str, name: Option<&str>) -> Result<Started, ApiError> {
    node.share.pull(model, name).map_err(|e| {
        let (status, code) = match &e {
            PullError::NotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
            PullError::Ambiguous(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            PullError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            PullError::NoRoom(_) => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
        };
        ApiError::new(status, code, e.to_string()).with_param("model")
    })
}

/// Each change of the pull's progress (changes that come faster than they are read fold into
/// the latest), until it ends.
pub(crate) fn progress_stream(rx: watch::Receiver<Progress>) -> impl Stream<Item = Progress> {
    futures::stream::unfold((Some(rx), true), |(rx, first)| async move {
        let mut rx = rx?;
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let p = rx.borrow_and_update().clone();
        let next = p.is_running().then_some(rx);
        Some((p, (next, false)))
    })
}

fn events(rx: watch::Receiver<Progress>) -> impl Stream<Item = Result<Event, Infallible>> {
    use futures::StreamExt;
    progress_stream(rx).map(|p| {
        let v: Value = serde_json::to_value(&p).unwrap_or_default();
        Ok(Event::default().data(v.to_string()))
    })
}
