//! History sync with every household peer, over one long-lived `/hearth/sync/1` stream per pair
//! of peers (opened by the peer with the smaller id). Both sides first list the documents they
//! hold; a document the other lacks goes over whole (its file: a new device catches up without
//! either side replaying changes one by one), and the rest are kept in step with the Automerge
//! sync protocol: each side sends a sync message whenever it has something to say about a
//! document: at the start, after every message it receives, and after every local change. Sync
//! states are kept per peer and document across reconnects, so a reconnect sends only what is
//! missing. Messages are cut into bounded parts; a peer outside the household never gets a
//! connection, and a revoked one loses it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use automerge::sync::{Message, State};
use futures::{AsyncReadExt, StreamExt};
use hearth_protocol::history::DocId;
use hearth_protocol::sync::{inventory, parts, PartKind, Reassembler};
use hearth_protocol::{SyncFrame, PROTOCOL_VERSION, SYNC_PROTOCOL};
use libp2p::{PeerId, Stream};
use libp2p_stream::IncomingStreams;
use tokio::sync::{broadcast, Notify, Semaphore};

use super::{Change, History, MAX_DOCS};
use crate::mesh::wire::{read_frame, write_frame};
use crate::mesh::Mesh;

/// How often the dialler looks for peers without a session.
const DIAL_TICK: Duration = Duration::from_millis(500);
/// Longest wait for the other side's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Sync states per peer and document, kept between sessions (encoded: Automerge keeps only what
/// matters across connections).
#[derive(Debug, Default)]
struct Memory {
    states: Mutex<HashMap<PeerId, HashMap<DocId, Vec<u8>>>>,
    sessions: Mutex<HashSet<PeerId>>,
}

/// Serves sync sessions and opens them to peers.
pub fn start(mesh: &Mesh, history: Arc<History>) -> Result<()> {
    let incoming = mesh.accept(SYNC_PROTOCOL)?;
    let memory = Arc::new(Memory::default());
    tokio::spawn(serve(incoming, history.clone(), memory.clone()));
    tokio::spawn(dial(mesh.clone(), history, memory));
    Ok(())
}

async fn serve(mut incoming: IncomingStreams, history: Arc<History>, memory: Arc<Memory>) {
    while let Some((peer, stream)) = incoming.next().await {
        tokio::spawn(session(peer, stream, history.clone(), memory.clone()));
    }
}

async fn dial(mesh: Mesh, history: Arc<History>, memory: Arc<Memory>) {
    let me = mesh.peer_id();
    let mut tick = tokio::time::interval(DIAL_TICK);
    loop {
        tick.tick().await;
        for link in mesh.peers() {
            let peer = link.peer;
            // `insert` is false while a session with the peer runs.
            if me >= peer || !memory.sessions.lock().expect("sessions lock").insert(peer) {
                continue;
            }
            let (mesh, history, memory) = (mesh.clone(), history.clone(), memory.clone());
            tokio::spawn(async move {
                match mesh.open(peer, SYNC_PROTOCOL).await {
                    Ok(stream) => session(peer, stream, history, memory.clone()).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "cannot open a sync stream"),
                }
                memory.sessions.lock().expect("sessions lock").remove(&peer);
            });
        }
    }
}

/// One side's view of a session: the sync state per document, what it may have something to
/// say about, and the documents to send whole.
#[derive(Default)]
struct Session {
    states: HashMap<DocId, State>,
    dirty: BTreeSet<DocId>,
    /// Documents the peer lacks, sent whole.
    whole: BTreeSet<DocId>,
    /// The peer's inventory so far, and whether it is complete (nothing is sent before it is).
    theirs: HashSet<DocId>,
    inventory_done: bool,
}

impl Session {
    /// The peer listed everything it holds: what it lacks goes whole, the rest is synced.
    fn inventory_complete(&mut self, mine: Vec<DocId>) {
        for id in mine {
            if self.theirs.contains(&id) {
                self.dirty.insert(id);
            } else {
                self.whole.insert(id);
            }
        }
        self.inventory_done = true;
        self.theirs = HashSet::new();
    }
}

async fn session(peer: PeerId, mut stream: Stream, history: Arc<History>, memory: Arc<Memory>) {
    if let Err(e) = hello(&mut stream).await {
        tracing::warn!(%peer, error = %e, "sync session refused");
        return;
    }
    tracing::debug!(%peer, "history sync session open");
    let saved = memory
        .states
        .lock()
        .expect("states lock")
        .remove(&peer)
        .unwrap_or_default();
    let state = Session {
        states: saved
            .into_iter()
            .filter_map(|(d, bytes)| Some((d, State::decode(&bytes).ok()?)))
            .collect(),
        ..Session::default()
    };
    let shared = Arc::new((Mutex::new(state), Notify::new()));
    let (reader, writer) = stream.split();
    let changes = history.subscribe();
    tokio::select! {
        r = receive(peer, reader, history.clone(), shared.clone()) => {
            if let Err(e) = r { tracing::info!(%peer, error = %e, "history sync session ended"); }
        }
        r = send(writer, history.clone(), shared.clone(), peer, changes) => {
            if let Err(e) = r { tracing::info!(%peer, error = %e, "history sync session ended"); }
        }
    }
    let states = std::mem::take(&mut shared.0.lock().expect("session lock").states);
    memory.states.lock().expect("states lock").insert(
        peer,
        states.into_iter().map(|(d, s)| (d, s.encode())).collect(),
    );
}

async fn hello(stream: &mut Stream) -> std::io::Result<()> {
    write_frame(
        stream,
        &SyncFrame::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .await?;
    match tokio::time::timeout(HELLO_TIMEOUT, read_frame::<_, SyncFrame>(stream)).await {
        Ok(Ok(Some(SyncFrame::Hello { version }))) if version == PROTOCOL_VERSION => Ok(()),
        Ok(Ok(Some(SyncFrame::Hello { version }))) => Err(std::io::Error::other(format!(
            "the peer speaks protocol version {version}, this node {PROTOCOL_VERSION}"
        ))),
        other => Err(std::io::Error::other(format!(
            "no hello from the peer ({:?})",
            other.map(|r| r.map(|f| f.is_some()))
        ))),
    }
}

type Shared = Arc<(Mutex<Session>, Notify)>;

/// Reads the peer's inventory, documents and sync messages and applies them; a malformed or
/// off-schema one is refused and logged, and the session goes on. Breaking the framing (an
/// oversized or interleaved payload, too long an inventory) ends the session.
async fn receive(
    peer: PeerId,
    mut reader: impl futures::AsyncRead + Unpin,
    history: Arc<History>,
    shared: Shared,
) -> std::io::Result<()> {
    let mut parts = Reassembler::default();
    let checking = Arc::new(Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ));
    loop {
        let Some(frame) = read_frame::<_, SyncFrame>(&mut reader).await? else {
            return Ok(());
        };
        let payload = match frame {
            SyncFrame::Hello { .. } => continue,
            SyncFrame::Inventory { docs, last } => {
                let mine = if last { history.doc_ids() } else { Vec::new() };
                let mut session = shared.0.lock().expect("session lock");
                if session.inventory_done {
                    continue;
                }
                session
                    .theirs
                    .extend(docs.iter().filter_map(|d| d.parse::<DocId>().ok()));
                if session.theirs.len() > MAX_DOCS {
                    return Err(std::io::Error::other(format!(
                        "the peer lists more than {MAX_DOCS} documents"
                    )));
                }
                if last {
                    session.inventory_complete(mine);
                    drop(session);
                    shared.1.notify_one();
                }
                continue;
            }
            SyncFrame::Part {
                doc,
                kind,
                bytes,
                last,
            } => match parts
                .push(doc, kind, bytes, last)
                .map_err(std::io::Error::other)?
            {
                Some(p) => p,
                None => continue,
            },
        };
        let Ok(id) = payload.doc.parse::<DocId>() else {
            tracing::warn!(%peer, doc = %payload.doc.chars().take(80).collect::<String>(), "refused history input from a peer: not a hearth document id");
            continue;
        };
        let h = history.clone();
        if payload.kind == PartKind::Document {
            // Loading and checking a whole document takes milliseconds: use every core.
            let permit = checking
                .clone()
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(async move {
                let taken = tokio::task::spawn_blocking(move || {
                    h.receive_document(peer, id, &payload.bytes)
                })
                .await;
                if let Ok(Err(e)) = taken {
                    tracing::warn!(%peer, doc = %id, error = %e, "refused history input from a peer: a document");
                }
                drop(permit);
            });
            continue;
        }
        let s = shared.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let mut session = s.0.lock().expect("session lock");
            let state = session.states.entry(id).or_default();
            let result = h.receive_sync(peer, id, state, &payload.bytes);
            session.dirty.insert(id);
            result
        })
        .await
        .map_err(std::io::Error::other)?;
        if let Err(e) = applied {
            tracing::warn!(%peer, doc = %id, error = %e, "refused history input from a peer: a sync message");
        }
        shared.1.notify_one();
    }
}

/// Sends this side's inventory, then documents the peer lacks, whole, and a sync message for
/// every document marked dirty: by the inventories, by a message received, or by a change.
async fn send(
    mut writer: impl futures::AsyncWrite + Unpin,
    history: Arc<History>,
    shared: Shared,
    peer: PeerId,
    mut changes: broadcast::Receiver<Change>,
) -> std::io::Result<()> {
    let mine: Vec<String> = history.doc_ids().iter().map(ToString::to_string).collect();
    for frame in inventory(&mine) {
        write_frame(&mut writer, &frame).await?;
    }
    loop {
        loop {
            let next = {
                let mut session = shared.0.lock().expect("session lock");
                if !session.inventory_done {
                    None
                } else if let Some(id) = session.whole.pop_first() {
                    Some((id, PartKind::Document))
                } else {
                    session.dirty.pop_first().map(|id| (id, PartKind::Sync))
                }
            };
            let Some((id, kind)) = next else { break };
            let (h, s) = (history.clone(), shared.clone());
            let payload = tokio::task::spawn_blocking(move || match kind {
                PartKind::Document => h.document_bytes(id),
                PartKind::Sync => {
                    let mut session = s.0.lock().expect("session lock");
                    let state = session.states.entry(id).or_default();
                    h.sync_message(id, state).map(Message::encode)
                }
            })
            .await
            .map_err(std::io::Error::other)?;
            if let Some(bytes) = payload {
                for frame in parts(&id.to_string(), kind, &bytes) {
                    write_frame(&mut writer, &frame).await?;
                }
            }
        }
        tokio::select! {
            _ = shared.1.notified() => {}
            change = changes.recv() => {
                let mut session = shared.0.lock().expect("session lock");
                match change {
                    // What this peer sent is answered where it is received, not echoed back.
                    Ok(c) if c.from == Some(peer) => {}
                    Ok(c) => { session.dirty.insert(c.doc); }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        session.dirty.extend(history.doc_ids());
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({} documents)", self.states.len())
    }
}
