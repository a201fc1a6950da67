//! The mesh endpoints: peers and their cards, routing decisions, revocation, health, metrics.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use hearth_protocol::PROTOCOL_VERSION;
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use crate::chat::{Members, RouteAsk};
use crate::node::Node;
use crate::split::plan::Ask;

/// `GET /healthz`.
pub async fn healthz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(json!({
        "status": if node.drain.is_draining() { "draining" } else { "ok" },
        "node": node.name,
        "peer_id": node.mesh.peer_id().to_string(),
        "version": PROTOCOL_VERSION,
    }))
}

/// `GET /api/peers`: this node and every connected peer, with cards.
pub async fn peers(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(Members::of(&node))
}

#[derive(Debug, Deserialize)]
pub struct RouteQuery {
    model: Option<String>,
    node: Option<String>,
    split: Option<u32>,
    /// Node names, comma-separated.
    stages: Option<String>,
}

/// `GET /api/route?model=NAME[&node=PIN][&split=N|&stages=A,B]`: the ranking a request would
/// get, with reasons, and the split it would take (each stage's node, layers and memory, and
/// the estimate) when no node can serve the model whole or one is asked for.
pub async fn route(
    State(node): State<Arc<Node>>,
    Query(q): Query<RouteQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let query = q
        .model
        .ok_or_else(|| ApiError::bad_param("model", "say which model: /api/route?model=NAME"))?;
    let members = Members::of(&node);
    let model = members
        .find_model(&query)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "model_not_found", e.to_string()))?;
    let stages = q
        .stages
        .map(|s| s.split(',').map(|n| n.trim().to_owned()).collect());
    let split = Ask::from_request(q.split, stages).map_err(|e| ApiError::bad_param("split", e))?;
    let route = members.route(
        &model.info.digest,
        &RouteAsk {
            pin: q.node.as_deref(),
            split,
            context: node.engine.context() as u32,
            ..RouteAsk::default()
        },
    );
    let pull = node.share.estimate(
        &members,
        &route,
        &model.info.digest,
        node.engine.context() as u32,
        0,
    );
    Ok(Json(json!({
        "model": model,
        "ranked": route.ranked,
        "rejected": route.rejected,
        "split": route.split,
        "pull": pull,
        "pull_when_faster": node.share.pulls_when_faster(),
    })))
}

/// `GET /api/household`: its fingerprint, the join code a new device needs, and the revoked
/// devices. Served only to those the API trusts (loopback, or the API token).
pub async fn household(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let (fingerprint, join_code) = node.mesh.household();
    let revoked: Vec<String> = node
        .mesh
        .revoked()
        .iter()
        .map(ToString::to_string)
        .collect();
    Json(json!({
        "fingerprint": fingerprint,
        "join_code": join_code,
        "revoked": revoked,
    }))
}

#[derive(Debug, Deserialize)]
struct RevokeBody {
    peers: Vec<String>,
}

/// `POST /api/revoke {"peers": [...]}`: peer ids (or node names) leave the household.
pub async fn revoke(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let body: RevokeBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_param("peers", format!("expected {{\"peers\": [PEER, ...]}}: {e}"))
    })?;
    let members = Members::of(&node);
    let mut ids = Vec::new();
    for p in &body.peers {
        match (members.named(p), p.parse::<libp2p::PeerId>()) {
            (Some(m), _) => ids.push(m.peer_id),
            (None, Ok(id)) => ids.push(id),
            (None, Err(_)) => {
                return Err(ApiError::bad_param(
                    "peers",
                    format!("{p} is neither a connected node's name nor a peer id"),
                ))
            }
        }
    }
    if ids.contains(&node.mesh.peer_id()) {
        return Err(ApiError::bad_param(
            "peers",
            "a node cannot revoke itself; run this on another household device",
        ));
    }
    let added = node.mesh.revoke(&ids).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "revoke_failed",
            format!("{e:#}"),
        )
    })?;
    let text = |v: &[libp2p::PeerId]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    Ok(Json(json!({ "revoked": text(&ids), "new": text(&added) })))
}

/// `GET /metrics` in Prometheus' text format.
pub async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(&node.gauges()),
    )
}
