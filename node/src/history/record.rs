//! Recording a reply as it streams: its text goes into the conversation in batches (a change
//! every 250 ms, not one per token), and its end (done, stopped or error) with the nodes that
//! served it and its speed. A final event reaches the client only once it is on disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_protocol::history::{Outcome, Status};
use hearth_protocol::Finish;
use tokio::sync::mpsc;

use super::{History, ReplySlot};
use crate::chat::Reply;

/// How often streamed text is written.
const BATCH: Duration = Duration::from_millis(250);

/// Relays `from` to the returned channel while recording the reply into `slot`, from before it
/// starts: the nodes that serve it come with its `Started` events. Dropping the returned
/// receiver stops the reply (recorded as stopped); a reply that fails or ends before it starts
/// is recorded as failed.
pub fn record(
    history: Arc<History>,
    slot: ReplySlot,
    mut from: mpsc::Receiver<Reply>,
) -> mpsc::Receiver<Reply> {
    let (to, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        // Speed counts from the first node starting, not from the wait for one.
        let mut started: Option<Instant> = None;
        let mut nodes = Vec::new();
        // Text events, one per token: the count of a reply stopped before its usage came.
        let mut pieces = 0u32;
        let mut pending = String::new();
        let mut tick = tokio::time::interval(BATCH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                reply = from.recv() => match reply {
                    Some(Reply::Text(t)) => {
                        pending.push_str(&t);
                        pieces += 1;
                        if to.send(Reply::Text(t)).await.is_err() {
                            break (None, Status::Stopped, pieces, String::new());
                        }
                    }
                    Some(Reply::Started { node, resumed }) => {
                        started.get_or_insert_with(Instant::now);
                        nodes.push(node.clone());
                        if to.send(Reply::Started { node, resumed }).await.is_err() {
                            break (None, Status::Stopped, pieces, String::new());
                        }
                    }
                    Some(done @ Reply::Done { finish, usage }) => {
                        let status = if finish == Finish::Cancelled { Status::Stopped } else { Status::Done };
                        break (Some(done), status, usage.completion_tokens, String::new());
                    }
                    Some(Reply::Failed { kind, message }) => {
                        break (Some(Reply::Failed { kind, message: message.clone() }), Status::Error, 0, message);
                    }
                    None => break (None, Status::Error, 0, "the reply ended without finishing".to_owned()),
                },
                _ = tick.tick(), if !pending.is_empty() => {
                    let text = std::mem::take(&mut pending);
                    let h = history.clone();
                    let written = tokio::task::spawn_blocking(move || h.append_reply(slot, &text)).await;
                    if let Ok(Err(e)) = written {
                        tracing::warn!(conversation = %slot.conversation, error = %e, "cannot record the reply");
                    }
                }
                _ = to.closed() => break (None, Status::Stopped, pieces, String::new()),
            }
        };
        let (last, status, tokens, error) = end;
        // Stop the job before writing, so a client that left frees the node at once.
        drop(from);
        nodes.dedup();
        let elapsed = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let outcome = Outcome {
            status,
            nodes,
            tokens: u64::from(tokens),
            tokens_per_s: if elapsed > 0.0 {
                f64::from(tokens) / elapsed
            } else {
                0.0
            },
            error,
        };
        let h = history.clone();
        let written =
            tokio::task::spawn_blocking(move || h.finish_reply(slot, &pending, &outcome)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(conversation = %slot.conversation, error = %e, "cannot record the end of the reply");
        }
        if let Some(last) = last {
            let _ = to.send(last).await;
        }
    });
    rx
}
