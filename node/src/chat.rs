//! One chat path for every API: resolve the model, route, dispatch with failover, and stream
//! typed events. The OpenAI handlers (and later Ollama's) translate wire shapes only; the CLI
//! reaches this path through the node's API.

mod dispatch;
pub mod members;
pub mod routing;

use std::sync::Arc;

use hearth_protocol::history::Id;
use hearth_protocol::{
    JobParams, JobRequest, ModelInfo, Prompt, Resume, WireDtype, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;

pub use dispatch::{FailKind, Reply};
pub use members::{Member, Members, MeshModel, RouteAsk, UnknownModel};

use crate::history::{record, ConversationRef, HistoryError};
use crate::jobs;
use crate::models::DEFAULT_MODEL;
use crate::node::Node;
use crate::split::plan;
use routing::{Candidate, SplitRoute};

/// A reply to start, as any API asks for it.
#[derive(Debug, Clone)]
pub struct ReplyRequest {
    /// Model name or digest prefix; the default model when `None`.
    pub model: Option<String>,
    pub prompt: Prompt,
    pub params: JobParams,
    /// Serve on this node only.
    pub pin: Option<String>,
    /// Split the model over several nodes as this says, even when one could serve it whole.
    pub split: Option<plan::Ask>,
    /// How a split's hidden states travel.
    pub wire: WireDtype,
    /// Record the request and its reply in this conversation.
    pub conversation: Option<ConversationRef>,
}

/// A reply that has started on a node.
#[derive(Debug)]
pub struct ReplyStream {
    pub model: ModelInfo,
    /// The node serving it (another may take over; see [`Reply::Started`]).
    pub node: String,
    /// The rest of the reply. Dropping it cancels the reply.
    pub replies: mpsc::Receiver<Reply>,
    /// The conversation it is recorded in.
    pub conversation: Option<Id>,
}

/// Why a reply did not start.
#[derive(Debug, thiserror::Error)]
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
    #[error(transparent)]
    History(#[from] HistoryError),
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
    let members = Members::of(node);
    let model = members.find_model(&query)?;
    let context = node.engine.context() as u32;
    let route = members.route(
        &model.info.digest,
        &RouteAsk {
            pin: request.pin.as_deref(),
            split: request.split.clone(),
            wire: request.wire,
            exclude: &[],
            context,
        },
    );
    if route.ranked.is_empty() {
        if let Some(pin) = request.pin.filter(|p| members.named(p).is_none()) {
            return Err(ReplyError::UnknownNode(pin));
        }
        let mut reasons: Vec<String> = route
            .rejected
            .iter()
            .map(|r| format!("{} {}", r.node, r.reason))
            .collect();
        if let Some(SplitRoute::Impossible(no)) = &route.split {
            reasons.push(format!("and no split fits: {no}"));
        }
        return Err(ReplyError::NoRoute {
            model: model.info.name,
            reasons: reasons.join("; "),
        });
    }
    if node.share.pulls_when_faster() {
        let estimate = node.share.estimate(
            &members,
            &route,
            &model.info.digest,
            context,
            request.params.max_tokens,
        );
        if let Some(e) = estimate.filter(|e| e.pull) {
            let (engine, digest) = (node.engine.clone(), model.info.digest.clone());
            node.share.pull_to_serve(&model.info.digest, &e, move || {
                if let Err(err) = engine.preload(&digest) {
                    tracing::warn!(model = %digest, error = %err, "the pulled model did not load");
                }
            });
        }
    }
    let slot = match (request.conversation, &request.prompt) {
        (None, _) => None,
        (Some(c), Prompt::Chat(messages)) => {
            let (history, messages) = (node.history.clone(), messages.clone());
            let name = model.info.name.clone();
            let slot =
                tokio::task::spawn_blocking(move || history.begin_reply(c, &messages, &name))
                    .await
                    .map_err(|e| HistoryError::Storage(e.into()))??;
            Some(slot)
        }
        (Some(_), Prompt::Text { .. }) => {
            return Err(HistoryError::BadRequest(
                "conversations record chat completions; raw completions are not recorded".into(),
            )
            .into())
        }
    };
    let mut params = request.params;
    params.sampling = params.sampling.over(&node.sampling);
    let job = JobRequest {
        version: PROTOCOL_VERSION,
        model: model.info.digest.clone(),
        prompt: request.prompt,
        params,
        resume: Resume::default(),
        split: None,
    };
    let (tx, replies) = mpsc::channel(64);
    let serving = node.clone();
    let (digest, split, wire) = (model.info.digest.clone(), request.split, request.wire);
    tokio::spawn(async move {
        let _in_flight = serving.drain.enter();
        let open = |c: &Candidate, job: JobRequest| match c.peer_id {
            None => serving.engine.submit("this node's API", job),
            Some(peer) => {
                serving.cards.sent_to(&peer);
                jobs::open(&serving.mesh, peer, job)
            }
        };
        // Without the nodes lost so far, as the household looks now: any split that fits (a
        // pinned pipeline or stage count may no longer exist).
        let replan = |lost: &[libp2p::PeerId]| {
            let ask = RouteAsk {
                pin: None,
                split: split.as_ref().map(|_| plan::Ask::Auto),
                wire,
                exclude: lost,
                context,
            };
            Members::of(&serving).route(&digest, &ask).ranked
        };
        let queue = serving.queue_timeout;
        dispatch::drive(route.ranked, job, open, replan, queue, &serving.metrics, tx).await;
    });
    // Recorded from here on: a client that leaves while the reply waits for a node (this
    // future dropped) leaves it recorded as stopped, not streaming for ever.
    let mut replies = match slot {
        Some(slot) => record::record(node.history.clone(), slot, replies),
        None => replies,
    };
    let first = replies.recv().await;
    if let Some(Reply::Started { node: serving, .. }) = first {
        return Ok(ReplyStream {
            model: model.info,
            node: serving,
            replies,
            conversation: slot.map(|s| s.conversation),
        });
    }
    let (kind, message) = match first {
        Some(Reply::Failed { kind, message }) => (kind, message),
        other => (
            FailKind::Unavailable,
            format!("the reply ended before it started ({other:?})"),
        ),
    };
    Err(ReplyError::Failed { kind, message })
}
