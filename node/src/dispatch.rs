//! Runs one reply over the ranked candidates: on this node's engine or a peer's, and when the
//! serving node dies, drops or fails mid-reply, on the next candidate, resuming from the tokens
//! already delivered, so the client sees one unbroken reply.

use std::sync::Arc;

use hearth_protocol::{Finish, JobEvent, JobRequest, Usage};
use tokio::sync::mpsc;

use crate::daemon::Node;
use crate::metrics::Metrics;
use crate::routing::Ranked;

/// What the API hears about a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A node took the job (after a failover: the node that took over).
    Started { node: String, resumed: bool },
    /// Reply text.
    Text(String),
    /// The reply is complete.
    Done { finish: Finish, usage: Usage },
    /// The reply could not be (fully) produced.
    Failed { kind: FailKind, message: String },
}

/// Why a reply failed, for the status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The request was wrong.
    BadRequest,
    /// Every candidate was busy.
    Busy,
    /// No candidate could finish it.
    Unavailable,
}

/// Starts the reply; events arrive on the returned channel. Dropping it cancels the reply.
pub fn start(node: Arc<Node>, ranked: Vec<Ranked>, request: JobRequest) -> mpsc::Receiver<Reply> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _guard = node.reply_started();
        drive(&node, ranked, request, tx).await;
    });
    rx
}

async fn drive(node: &Node, ranked: Vec<Ranked>, mut request: JobRequest, tx: mpsc::Sender<Reply>) {
    let mut started = false;
    let mut problems: Vec<String> = Vec::new();
    let mut all_busy = true;
    enum Stop {
        Busy(String),
        Failed(String),
        Dropped,
    }
    for candidate in &ranked {
        let c = &candidate.candidate;
        let mut events = match &c.peer_id {
            None => node.engine.submit("this node's API", request.clone()),
            Some(id) => match id.parse() {
                Ok(peer) => node.mesh.open_job(peer, request.clone()),
                Err(_) => continue,
            },
        };
        let stop = loop {
            let Some(event) = events.recv().await else {
                break Stop::Dropped;
            };
            let out = match event {
                JobEvent::Started { node: name, .. } => {
                    let resumed = started;
                    if resumed {
                        Metrics::inc(&node.metrics.failovers);
                        tracing::warn!(
                            node = %name,
                            tokens = request.resume.tokens.len(),
                            "reply resumed on another node"
                        );
                    }
                    started = true;
                    Reply::Started {
                        node: name,
                        resumed,
                    }
                }
                JobEvent::Token { id, text } => {
                    request.resume.tokens.push(id);
                    request.resume.emitted_bytes += text.len() as u64;
                    if text.is_empty() {
                        continue;
                    }
                    Reply::Text(text)
                }
                JobEvent::Tail { text } => Reply::Text(text),
                JobEvent::Done { finish, usage } => {
                    let _ = tx.send(Reply::Done { finish, usage }).await;
                    return;
                }
                JobEvent::Busy { reason } => break Stop::Busy(reason),
                JobEvent::Failed { code, message } if code.retryable() => {
                    break Stop::Failed(format!("{}: {message}", c.node))
                }
                JobEvent::Failed { message, .. } => {
                    let _ = tx
                        .send(Reply::Failed {
                            kind: FailKind::BadRequest,
                            message,
                        })
                        .await;
                    return;
                }
            };
            if tx.send(out).await.is_err() {
                // The client went away: dropping `events` stops the job.
                return;
            }
        };
        problems.push(match stop {
            Stop::Busy(reason) => reason,
            Stop::Failed(message) => {
                all_busy = false;
                message
            }
            Stop::Dropped => {
                all_busy = false;
                tracing::warn!(
                    node = %c.node,
                    tokens = request.resume.tokens.len(),
                    "serving node dropped the reply; trying the next candidate"
                );
                format!("{} went away", c.node)
            }
        });
    }
    let message = if problems.is_empty() {
        "no node can serve this request".to_owned()
    } else {
        format!("no node could serve this request ({})", problems.join("; "))
    };
    let kind = if all_busy && !problems.is_empty() {
        FailKind::Busy
    } else {
        FailKind::Unavailable
    };
    let _ = tx.send(Reply::Failed { kind, message }).await;
}
