//! The history endpoints: `/api/conversations` (list with `?q=`, create, fetch, rename, delete,
//! edit a message, export) and `/api/conversations/events`, a server-sent event for every change
//! to any conversation, whichever device made it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use hearth_protocol::history::{DocId, Id};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::ApiError;
use crate::history::{Change, Format, History, HistoryError};
use crate::node::Node;

/// The API error for a history error.
pub fn error(e: HistoryError) -> ApiError {
    let message = e.to_string();
    match e {
        HistoryError::NoConversation(_) | HistoryError::NoMessage { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
        }
        HistoryError::BadRequest(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
        }
        HistoryError::Schema(_) | HistoryError::Storage(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "history_failed", message)
        }
    }
}

fn id(raw: &str) -> Result<Id, ApiError> {
    raw.parse().map_err(|e: hearth_protocol::history::BadId| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
    })
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("expected {shape}: {e}"),
        )
    })
}

/// Runs a history operation off the async runtime (it writes and fsyncs).
async fn blocking<T: Send + 'static>(
    node: &Node,
    f: impl FnOnce(&History) -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, ApiError> {
    let history = node.history.clone();
    tokio::task::spawn_blocking(move || f(&history))
        .await
        .map_err(|e| error(HistoryError::Storage(e.into())))?
        .map_err(error)
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    q: Option<String>,
}

/// `GET /api/conversations[?q=TEXT]`: newest first.
pub async fn list(
    State(node): State<Arc<Node>>,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let list = blocking(&node, move |h| Ok(h.list(query.q.as_deref()))).await?;
    Ok(Json(json!({ "conversations": list })))
}

#[derive(Debug, Deserialize)]
struct Title {
    title: String,
}

/// `POST /api/conversations {"title"}`.
pub async fn create(
    State(node): State<Arc<Node>>,
    bytes: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let t: Title = if bytes.is_empty() {
        Title {
            title: String::new(),
        }
    } else {
        body(&bytes, r#"{"title": TEXT}"#)?
    };
    let created = blocking(&node, move |h| h.create(&t.title)).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/conversations/{id}`: with every message and the newest branch.
pub async fn get(
    State(node): State<Arc<Node>>,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = id(&raw)?;
    Ok(Json(blocking(&node, move |h| h.get(id)).await?))
}

/// `PATCH /api/conversations/{id} {"title"}`: rename.
pub async fn rename(
    State(node): State<Arc<Node>>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let id = id(&raw)?;
    let t: Title = body(&bytes, r#"{"title": TEXT}"#)?;
    Ok(Json(
        blocking(&node, move |h| h.rename(id, &t.title)).await?,
    ))
}

/// `DELETE /api/conversations/{id}`.
pub async fn delete(
    State(node): State<Arc<Node>>,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = id(&raw)?;
    blocking(&node, move |h| h.delete(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct Text {
    text: String,
}

/// `PATCH /api/conversations/{id}/messages/{message} {"text"}`: edit a message's text.
pub async fn edit_message(
    State(node): State<Arc<Node>>,
    Path((raw, raw_message)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let (id, message) = (id(&raw)?, id(&raw_message)?);
    let t: Text = body(&bytes, r#"{"text": TEXT}"#)?;
    Ok(Json(
        blocking(&node, move |h| h.edit_message(id, message, &t.text)).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    format: Option<String>,
}

/// `GET /api/conversations/{id}/export?format=automerge|json|markdown`.
pub async fn export(
    State(node): State<Arc<Node>>,
    Path(raw): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let id = id(&raw)?;
    let format: Format = q
        .format
        .as_deref()
        .unwrap_or("json")
        .parse()
        .map_err(|e: String| ApiError::bad_param("format", e))?;
    let bytes = blocking(&node, move |h| h.export(id, format)).await?;
    let extension = match format {
        Format::Automerge => "automerge",
        Format::Json => "json",
        Format::Markdown => "md",
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.{extension}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `GET /api/conversations/events`: `{"conversation": ID}` when a conversation's messages
/// changed, `{"index": true}` when the list changed (created, renamed, deleted, updated), and
/// `{"resync": true}` when events were missed and a client should fetch everything again.
pub async fn events(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let changes = node.history.subscribe();
    Sse::new(change_events(changes)).keep_alive(KeepAlive::default())
}

fn change_events(
    changes: broadcast::Receiver<Change>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(changes, |mut changes| async move {
        let data = match changes.recv().await {
            Ok(Change {
                doc: DocId::Index, ..
            }) => json!({"index": true}),
            Ok(Change {
                doc: DocId::Conversation(id),
                ..
            }) => json!({"conversation": id}),
            Err(broadcast::error::RecvError::Lagged(_)) => json!({"resync": true}),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(Event::default().data(data.to_string())), changes))
    })
}
