//! History sync with every household peer: the Automerge sync protocol, per document, over one
//! long-lived `/hearth/sync/1` stream per pair of peers (opened by the peer with the smaller id).
//! Each side sends a sync message whenever it has something to say about a document: at the
//! start for every document, after every message it receives, and after every local change. Sync
//! states are kept per peer and document across reconnects, so a reconnect sends only what is
//! missing. Messages are cut into bounded parts; a peer outside the household never gets a
//! connection, and a revoked one loses it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use automerge::sync::State;
use futures::{AsyncReadExt, StreamExt};
use hearth_protocol::history::DocId;
use hearth_protocol::sync::{parts, Reassembler};
use hearth_protocol::{SyncFrame, PROTOCOL_VERSION, SYNC_PROTOCOL};
use libp2p::{PeerId, Stream};
use libp2p_stream::IncomingStreams;
use tokio::sync::{broadcast, Notify};

use super::History;
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
            if me >= peer
                || memory
                    .sessions
                    .lock()
                    .expect("sessions lock")
                    .contains(&peer)
            {
                continue;
            }
            memory.sessions.lock().expect("sessions lock").insert(peer);
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

/// One side's view of a session: the sync state per document and the documents it may have
/// something to say about.
#[derive(Default)]
struct Session {
    states: HashMap<DocId, State>,
    dirty: BTreeSet<DocId>,
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
        dirty: history.doc_ids().into_iter().collect(),
    };
    let shared = Arc::new((Mutex::new(state), Notify::new()));
    shared.1.notify_one();
    let (reader, writer) = stream.split();
    let changes = history.subscribe();
    tokio::select! {
        r = receive(peer, reader, history.clone(), shared.clone()) => {
            if let Err(e) = r { tracing::info!(%peer, error = %e, "history sync session ended"); }
        }
        r = send(writer, history.clone(), shared.clone(), changes) => {
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

/// Reads the peer's sync messages and applies them; a malformed or off-schema message is
/// refused and logged, and the session goes on.
async fn receive(
    peer: PeerId,
    mut reader: impl futures::AsyncRead + Unpin,
    history: Arc<History>,
    shared: Shared,
) -> std::io::Result<()> {
    let mut parts = Reassembler::default();
    loop {
        let Some(frame) = read_frame::<_, SyncFrame>(&mut reader).await? else {
            return Ok(());
        };
        let SyncFrame::Part { doc, bytes, last } = frame else {
            continue;
        };
        let Some((doc, bytes)) = parts
            .push(doc, bytes, last)
            .map_err(std::io::Error::other)?
        else {
            continue;
        };
        let Ok(id) = doc.parse::<DocId>() else {
            tracing::warn!(%peer, doc = %doc.chars().take(80).collect::<String>(), "refused a sync message for a document that is not a hearth document");
            continue;
        };
        let (h, s) = (history.clone(), shared.clone());
        let applied = tokio::task::spawn_blocking(move || {
            let mut session = s.0.lock().expect("session lock");
            let state = session.states.entry(id).or_default();
            let result = h.receive_sync(id, state, &bytes);
            session.dirty.insert(id);
            result
        })
        .await
        .map_err(std::io::Error::other)?;
        if let Err(e) = applied {
            tracing::warn!(%peer, doc = %id, error = %e, "refused a sync message");
        }
        shared.1.notify_one();
    }
}

/// Sends a sync message for every document marked dirty: by the session's start, by a message
/// received, or by a change to the history.
async fn send(
    mut writer: impl futures::AsyncWrite + Unpin,
    history: Arc<History>,
    shared: Shared,
    mut changes: broadcast::Receiver<DocId>,
) -> std::io::Result<()> {
    loop {
        loop {
            let next = {
                let mut session = shared.0.lock().expect("session lock");
                session.dirty.pop_first()
            };
            let Some(id) = next else { break };
            let (h, s) = (history.clone(), shared.clone());
            let message = tokio::task::spawn_blocking(move || {
                let mut session = s.0.lock().expect("session lock");
                let state = session.states.entry(id).or_default();
                h.sync_message(id, state)
            })
            .await
            .map_err(std::io::Error::other)?;
            if let Some(m) = message {
                for frame in parts(&id.to_string(), &m.encode()) {
                    write_frame(&mut writer, &frame).await?;
                }
            }
        }
        tokio::select! {
            _ = shared.1.notified() => {}
            change = changes.recv() => {
                let mut session = shared.0.lock().expect("session lock");
                match change {
                    Ok(id) => { session.dirty.insert(id); }
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
