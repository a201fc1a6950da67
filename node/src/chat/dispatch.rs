//! Runs one reply over the ranked candidates: on this node's engine or a peer's, and when the
//! serving node dies, drops or fails mid-reply, on the next candidate, resuming from the tokens
//! already delivered, so the client sees one unbroken reply.

use std::collections::VecDeque;
use std::time::Duration;

use hearth_protocol::{FailCode, Finish, JobEvent, JobRequest, Usage};
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::routing::{Candidate, Ranked};
use crate::metrics::Metrics;

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

/// Why a reply failed; each API maps it to its own status and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The request was wrong.
    BadRequest,
    /// The prompt does not fit the model's context.
    ContextOverflow,
    /// Every candidate was busy.
    Busy,
    /// No candidate could finish it.
    Unavailable,
}

/// How one candidate's attempt ended, when it did not finish the reply.
#[derive(Debug, Clone, PartialEq)]
enum Stop {
    /// Busy or shutting down: the next candidate may take it.
    Busy(String),
    /// Failed in a way another node may not: the next candidate may take it.
    Failed(String),
    /// The event stream ended without a final event: the node died or the link broke.
    Dropped,
    /// A split lost the stage on this node (when known): re-plan without it.
    Lost(Option<PeerId>, String),
    /// Failed in a way no node will do better (a bad request, a prompt too long): stop here.
    Final(FailKind, String),
}

/// Whether a node's failure leaves the next candidate a chance.
fn failed(node: &str, code: FailCode, message: String) -> Stop {
    if code.retryable() {
        return Stop::Failed(format!("{node}: {message}"));
    }
    let kind = match code {
        FailCode::ContextOverflow => FailKind::ContextOverflow,
        FailCode::Version => FailKind::Unavailable,
        _ => FailKind::BadRequest,
    };
    Stop::Final(kind, message)
}

/// Re-plans after a stage was lost at most this many times per reply.
const MAX_REPLANS: usize = 3;

/// Runs `request` over `ranked`, starting each attempt with `open`; the reply's events go to
/// `tx`. When a split loses a stage (or a split's driving node drops the reply), `replan` is
/// asked for new candidates without the nodes lost so far, and the reply resumes on them.
/// Returns when the reply is done, failed, or the client went away (`tx` closed).
pub(super) async fn drive(
    ranked: Vec<Ranked>,
    mut request: JobRequest,
    open: impl Fn(&Candidate, JobRequest) -> mpsc::Receiver<JobEvent>,
    mut replan: impl FnMut(&[PeerId]) -> Vec<Ranked>,
    queue_timeout: Duration,
    metrics: &Metrics,
    tx: mpsc::Sender<Reply>,
) {
    // No node has started the reply by then (their job slots busy): the client hears "busy".
    let deadline = tokio::time::Instant::now() + queue_timeout;
    let mut started = false;
    let mut problems: Vec<String> = Vec::new();
    let mut all_busy = true;
    // Candidates asked, and of those, how many said the reply is larger than their budget.
    let (mut asked, mut too_large) = (0, 0);
    let mut queue: VecDeque<Ranked> = ranked.into();
    let mut lost: Vec<PeerId> = Vec::new();
    let mut replans = 0;
    while let Some(candidate) = queue.pop_front() {
        let c = &candidate.candidate;
        asked += 1;
        request.split.clone_from(&candidate.split);
        let mut events = open(c, request.clone());
        let stop = loop {
            let event = tokio::select! {
                event = events.recv() => event,
                // The client went away (even while nothing is sent, as during a long prompt):
                // dropping `events` stops the job.
                () = tx.closed() => return,
                () = tokio::time::sleep_until(deadline), if !started => {
                    let message = format!(
                        "no node started the reply within {} s (every job slot is busy); try again soon",
                        queue_timeout.as_secs()
                    );
                    let _ = tx.send(Reply::Failed { kind: FailKind::Busy, message }).await;
                    return;
                }
            };
            let Some(event) = event else {
                break Stop::Dropped;
            };
            let out = match event {
                JobEvent::Busy { reason } => break Stop::Busy(reason),
                JobEvent::Failed { code, message } => {
                    too_large += usize::from(code == FailCode::TooLarge);
                    break failed(&c.node, code, message);
                }
                JobEvent::StageLost { peer, message } => {
                    break Stop::Lost(peer.parse().ok(), message)
                }
                JobEvent::Started { node: name, .. } => {
                    let resumed = started;
                    if resumed {
                        Metrics::inc(&metrics.failovers);
                        tracing::warn!(
                            node = %name,
                            tokens = request.resume.tokens.len(),
                            "reply resumed on another node"
                        );
                    }
                    if candidate.split.is_some() {
                        Metrics::inc(&metrics.split_replies);
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
            };
            if tx.send(out).await.is_err() {
                // The client went away: dropping `events` stops the job.
                return;
            }
        };
        let gone = match stop {
            Stop::Busy(reason) => {
                problems.push(reason);
                None
            }
            Stop::Failed(message) => {
                all_busy = false;
                problems.push(message);
                None
            }
            Stop::Dropped => {
                all_busy = false;
                tracing::warn!(
                    node = %c.node,
                    tokens = request.resume.tokens.len(),
                    "serving node dropped the reply; trying the next candidate"
                );
                problems.push(format!("{} went away", c.node));
                c.peer_id.filter(|_| candidate.split.is_some())
            }
            Stop::Lost(peer, message) => {
                all_busy = false;
                tracing::warn!(
                    node = %c.node,
                    tokens = request.resume.tokens.len(),
                    reason = %message,
                    "a split lost a stage; re-planning without it"
                );
                problems.push(format!("{}: {message}", c.node));
                peer
            }
            Stop::Final(kind, message) => {
                let _ = tx.send(Reply::Failed { kind, message }).await;
                return;
            }
        };
        if let Some(peer) = gone {
            if replans < MAX_REPLANS {
                replans += 1;
                lost.push(peer);
                Metrics::inc(&metrics.split_replans);
                queue = replan(&lost).into();
            }
        }
    }
    let message = if problems.is_empty() {
        "no node can serve this request".to_owned()
    } else {
        format!("no node could serve this request ({})", problems.join("; "))
    };
    let kind = if problems.is_empty() {
        FailKind::Unavailable
    } else if all_busy {
        FailKind::Busy
    } else if too_large == asked {
        // Every node's budget is too small: the request asks too much (fewer tokens would do).
        FailKind::BadRequest
    } else {
        FailKind::Unavailable
    };
    let _ = tx.send(Reply::Failed { kind, message }).await;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use hearth_protocol::{JobParams, Prompt, Resume, PROTOCOL_VERSION};

    fn ranked(names: &[&str]) -> Vec<Ranked> {
        names
            .iter()
            .map(|n| Ranked {
                candidate: Candidate {
                    node: (*n).into(),
                    peer_id: Some(libp2p::PeerId::random()),
                    loaded: true,
                    cached: true,
                    free_memory: 1 << 30,
                    model_size: 1 << 20,
                    queue_depth: 0,
                    active_jobs: 0,
                    tokens_per_s: None,
                    latency_ms: None,
                    draining: false,
                },
                reasons: Vec::new(),
                split: None,
            })
            .collect()
    }

    fn request() -> JobRequest {
        JobRequest {
            version: PROTOCOL_VERSION,
            model: "ab".repeat(32),
            prompt: Prompt::text("hi"),
            params: JobParams::greedy(8),
            resume: Resume::default(),
            split: None,
        }
    }

    fn started(node: &str) -> JobEvent {
        JobEvent::Started {
            node: node.into(),
            prompt_tokens: 1,
        }
    }

    fn token(id: u32, text: &str) -> JobEvent {
        JobEvent::Token {
            id,
            text: text.into(),
        }
    }

    fn done() -> JobEvent {
        JobEvent::Done {
            finish: Finish::Stop,
            usage: Usage::default(),
        }
    }

    /// Runs a reply where each node answers with its scripted events (then the channel closes),
    /// and returns what the client heard and the resume state each node was asked with.
    async fn run(
        nodes: &[&str],
        script: &[(&str, Vec<JobEvent>)],
    ) -> (Vec<Reply>, Vec<(String, Resume)>) {
        let script: HashMap<String, Vec<JobEvent>> = script
            .iter()
            .map(|(n, e)| ((*n).to_owned(), e.clone()))
            .collect();
        let asked = Mutex::new(Vec::new());
        let metrics = Metrics::default();
        let (tx, mut rx) = mpsc::channel(64);
        let open = |c: &Candidate, r: JobRequest| {
            asked.lock().unwrap().push((c.node.clone(), r.resume));
            let events = script.get(&c.node).cloned().unwrap_or_default();
            let (etx, erx) = mpsc::channel(64);
            for e in events {
                etx.try_send(e).unwrap();
            }
            erx
        };
        let queue = Duration::from_secs(60);
        drive(
            ranked(nodes),
            request(),
            open,
            |_| Vec::new(),
            queue,
            &metrics,
            tx,
        )
        .await;
        let mut heard = Vec::new();
        while let Some(r) = rx.recv().await {
            heard.push(r);
        }
        (heard, asked.into_inner().unwrap())
    }

    #[tokio::test]
    async fn a_node_that_dies_mid_reply_is_replaced_and_the_reply_resumes() {
        let (heard, asked) = run(
            &["a", "b"],
            &[
                ("a", vec![started("a"), token(7, "Hel"), token(8, "")]),
                ("b", vec![started("b"), token(9, "lo"), done()]),
            ],
        )
        .await;
        assert_eq!(
            heard,
            [
                Reply::Started {
                    node: "a".into(),
                    resumed: false
                },
                Reply::Text("Hel".into()),
                Reply::Started {
                    node: "b".into(),
                    resumed: true
                },
                Reply::Text("lo".into()),
                Reply::Done {
                    finish: Finish::Stop,
                    usage: Usage::default()
                },
            ]
        );
        assert_eq!(asked[1].0, "b");
        assert_eq!(
            asked[1].1,
            Resume {
                tokens: vec![7, 8],
                emitted_bytes: 3
            }
        );
    }

    #[tokio::test]
    async fn busy_everywhere_is_busy_and_a_vanished_node_is_unavailable() {
        let busy = |r: &str| JobEvent::Busy { reason: r.into() };
        let (heard, _) = run(
            &["a", "b"],
            &[("a", vec![busy("a full")]), ("b", vec![busy("b full")])],
        )
        .await;
        match heard.as_slice() {
            [Reply::Failed {
                kind: FailKind::Busy,
                message,
            }] => assert!(message.contains("a full; b full"), "{message}"),
            other => panic!("{other:?}"),
        }
        let (heard, _) = run(&["a", "b"], &[("a", vec![busy("a full")])]).await;
        match heard.as_slice() {
            [Reply::Failed {
                kind: FailKind::Unavailable,
                message,
            }] => assert!(message.contains("b went away"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_job_that_cannot_start_says_why_and_the_next_node_serves() {
        let cannot = JobEvent::Failed {
            code: FailCode::Internal,
            message: "cannot start the job: connection refused".into(),
        };
        let (heard, _) = run(
            &["a", "b"],
            &[
                ("a", vec![cannot.clone()]),
                ("b", vec![started("b"), done()]),
            ],
        )
        .await;
        assert!(
            matches!(heard.last(), Some(Reply::Done { .. })),
            "{heard:?}"
        );
        let (heard, _) = run(&["a"], &[("a", vec![cannot])]).await;
        match heard.as_slice() {
            [Reply::Failed {
                kind: FailKind::Unavailable,
                message,
            }] => assert!(
                message.contains("a: cannot start the job: connection refused"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reply_too_large_for_one_node_goes_to_the_next_and_for_all_is_a_bad_request() {
        let too_large = |node: &str| JobEvent::Failed {
            code: FailCode::TooLarge,
            message: format!("{node} keeps 64 MB (--kv-memory)"),
        };
        let (heard, asked) = run(
            &["small", "large"],
            &[
                ("small", vec![too_large("small")]),
                ("large", vec![started("large"), token(1, "hi"), done()]),
            ],
        )
        .await;
        assert_eq!(asked.len(), 2);
        assert!(
            matches!(heard.last(), Some(Reply::Done { .. })),
            "{heard:?}"
        );
        let (heard, asked) = run(
            &["a", "b"],
            &[("a", vec![too_large("a")]), ("b", vec![too_large("b")])],
        )
        .await;
        assert_eq!(asked.len(), 2);
        match heard.as_slice() {
            [Reply::Failed {
                kind: FailKind::BadRequest,
                message,
            }] => assert!(
                message.contains("a keeps 64 MB") && message.contains("b keeps 64 MB"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_requests_and_overflows_stop_at_the_first_node_with_their_kind() {
        for (code, kind) in [
            (FailCode::BadRequest, FailKind::BadRequest),
            (FailCode::ContextOverflow, FailKind::ContextOverflow),
        ] {
            let failed = JobEvent::Failed {
                code,
                message: "no".into(),
            };
            let (heard, asked) = run(&["a", "b"], &[("a", vec![failed])]).await;
            assert_eq!(
                heard,
                [Reply::Failed {
                    kind,
                    message: "no".into()
                }]
            );
            assert_eq!(asked.len(), 1);
        }
    }
}
