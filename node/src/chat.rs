//! One chat path for every API: resolve the model, route, dispatch with failover, and stream
//! typed events. The OpenAI handlers (and later Ollama's) translate wire shapes only; the CLI
//! reaches this path through the node's API.

mod dispatch;
pub mod members;
pub mod routing;

use std::sync::Arc;

use hearth_protocol::{JobParams, JobRequest, ModelInfo, Prompt, Resume, PROTOCOL_VERSION};
use tokio::sync::mpsc;

pub use dispatch::{FailKind, Reply};
pub use members::{Member, Members, MeshModel, UnknownModel};

use crate::jobs;
use crate::models::DEFAULT_MODEL;
use crate::node::Node;
use routing::Candidate;

/// A reply to start, as any API asks for it.
#[derive(Debug, Clone)]
pub struct ReplyRequest {
    /// Model name or digest prefix; the default model when `None`.
    pub model: Option<String>,
    pub prompt: Prompt,
    pub params: JobParams,
    /// Serve on this node only.
    pub pin: Option<String>,
}

/// A reply that has started on a node.
#[derive(Debug)]
pub struct ReplyStream {
    pub model: ModelInfo,
    /// The node serving it (another may take over; see [`Reply::Started`]).
    pub node: String,
    /// The rest of the reply. Dropping it cancels the reply.
    pub replies: mpsc::Receiver<Reply>,
}

/// Why a reply did not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    #[error("{0} is shutting down; send the request to another node")]
    ShuttingDown(String),
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),
    #[error("no node named {0} is in the mesh")]
    UnknownNode(String),
    #[error("no node can serve {model}: {reasons}")]
    NoRoute { model: String, reasons: String },
    #[error("{message}")]
    Failed { kind: FailKind, message: String },
}

/// Resolves the model, routes, and starts the reply on the best node; returns once a node has
/// taken it (or every candidate refused).
pub async fn start_reply(
    node: &Arc<Node>,
    request: ReplyRequest,
) -> Result<ReplyStream, ReplyError> {
    if node.drain.is_draining() {
        return Err(ReplyError::ShuttingDown(node.name.clone()));
    }
    let query = request.model.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let members = Members::of(&node);
    let model = members.find_model(&query)?;
    let route = members.route(&model.info.digest, request.pin.as_deref());
    if route.ranked.is_empty() {
        if let Some(pin) = request.pin.filter(|p| members.named(p).is_none()) {
            return Err(ReplyError::UnknownNode(pin));
        }
        let reasons: Vec<String> = route
            .rejected
            .iter()
            .map(|r| format!("{} {}", r.node, r.reason))
            .collect();
        return Err(ReplyError::NoRoute {
            model: model.info.name,
            reasons: reasons.join("; "),
        });
    }
    let job = JobRequest {
        version: PROTOCOL_VERSION,
        model: model.info.digest.clone(),
        prompt: request.prompt,
        params: request.params,
        resume: Resume::default(),
    };
    let (tx, mut replies) = mpsc::channel(64);
    let serving = node.clone();
    tokio::spawn(async move {
        let _in_flight = serving.drain.enter();
        let open = |c: &Candidate, job: JobRequest| match c.peer_id {
            None => serving.engine.submit("this node's API", job),
            Some(peer) => jobs::open(&serving.mesh, peer, job),
        };
        dispatch::drive(&route.ranked, job, open, &serving.metrics, tx).await;
    });
    match replies.recv().await {
        Some(Reply::Started { node, .. }) => Ok(ReplyStream {
            model: model.info,
            node,
            replies,
        }),
        Some(Reply::Failed { kind, message }) => Err(ReplyError::Failed { kind, message }),
        other => Err(ReplyError::Failed {
            kind: FailKind::Unavailable,
            message: format!("the reply ended before it started ({other:?})"),
        }),
    }
}
