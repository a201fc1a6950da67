//! The household's conversation history: Automerge documents (schema in
//! `hearth_protocol::history`) kept under `<data-dir>/history/`, written durably, recorded as
//! replies stream, and synced with every household peer.

mod docs;
mod export;
pub mod record;
mod store;
pub mod sync;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use automerge::AutoCommit;
pub use hearth_protocol::history::Conversation;
use hearth_protocol::history::{
    self as schema, DocId, Id, Message, NewMessage, Outcome, SchemaError, Status, Summary,
};
use hearth_protocol::ChatMessage;
use tokio::sync::broadcast;

use crate::durable::{self, Durability};
use docs::Docs;
pub use export::Format;
use store::StoredDoc;

/// Most documents a node keeps (a peer cannot make it create more).
pub(crate) const MAX_DOCS: usize = 200_000;
/// How often what sync wrote is fsynced. Sync writes skip the fsync each (a catching-up device
/// writes a thousand documents, and an fsync each would be most of its time): what they hold is
/// still on the peer that sent it, and would be sent again after a crash.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("no conversation {0}")]
    NoConversation(Id),
    #[error("no message {message} in conversation {conversation}")]
    NoMessage { conversation: Id, message: Id },
    #[error("{0}")]
    BadRequest(String),
    #[error("the document does not follow the history schema: {0}")]
    Schema(SchemaError),
    #[error("{0:#}")]
    Storage(#[from] anyhow::Error),
}

type Result<T, E = HistoryError> = std::result::Result<T, E>;

/// Which conversation a chat request records into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationRef {
    /// A new one, titled after the first user message.
    New,
    /// An existing one, the new turn placed as `place` says.
    Existing { id: Id, place: Place },
}

/// Where in an existing conversation a new turn goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The request's last message after the newest branch's last message.
    Tip,
    /// The request's last message as a new child of this message (`None`: a new first message):
    /// an edit resent, the old branch kept.
    Under(Option<Id>),
    /// Only a new reply, to this message, recorded already: a regeneration.
    ReplyTo(Id),
}

impl std::str::FromStr for ConversationRef {
    type Err = hearth_protocol::history::BadId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "new" {
            Ok(ConversationRef::New)
        } else {
            s.parse().map(|id| ConversationRef::Existing {
                id,
                place: Place::Tip,
            })
        }
    }
}

/// Where a reply being recorded lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplySlot {
    pub conversation: Id,
    pub message: Id,
}

/// A document changed, and the peer whose sync message or document changed it (`None`: this
/// node's own API or recording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub doc: DocId,
    pub from: Option<libp2p::PeerId>,
}

/// The history of this node: every document, and who wants to hear of changes.
pub struct History {
    dir: PathBuf,
    /// This device's id, recorded as the author of what it writes.
    device: String,
    docs: Mutex<Docs>,
    changes: broadcast::Sender<Change>,
    /// Files written from sync and not fsynced yet (see [`FLUSH_EVERY`]).
    unsynced: Mutex<BTreeSet<PathBuf>>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "History({})", self.dir.display())
    }
}

/// The history error for a schema error met while changing document `doc`.
fn schema_error(doc: DocId, e: SchemaError) -> HistoryError {
    match (e, doc) {
        (SchemaError::NoConversation(id), _) => HistoryError::NoConversation(id),
        (SchemaError::NoMessage(message), DocId::Conversation(conversation)) => {
            HistoryError::NoMessage {
                conversation,
                message,
            }
        }
        (other, _) => HistoryError::Schema(other),
    }
}

impl History {
    /// Opens the history in `dir` (creating it): the index now, conversations at first use.
    /// Files that do not load are moved to `quarantine/`; replies this device left unfinished
    /// are marked when their conversation loads.
    pub fn open(dir: &Path, device: &str) -> anyhow::Result<Arc<History>> {
        let docs = Docs::scan(dir, device)?;
        tracing::info!(documents = docs.len(), "history opened");
        let (changes, _) = broadcast::channel(1024);
        let history = Arc::new(History {
            dir: dir.to_owned(),
            device: device.to_owned(),
            docs: Mutex::new(docs),
            changes,
            unsynced: Mutex::new(BTreeSet::new()),
        });
        let weak = Arc::downgrade(&history);
        std::thread::Builder::new()
            .name("hearth-history-flush".into())
            .spawn(move || {
                // Ends with the history.
                while let Some(h) = weak.upgrade() {
                    h.flush();
                    drop(h);
                    std::thread::sleep(FLUSH_EVERY);
                }
            })
            .context("cannot start the history flusher")?;
        Ok(history)
    }

    /// Fsyncs what sync wrote since the last flush.
    pub fn flush(&self) {
        let files = std::mem::take(&mut *self.unsynced.lock().expect("unsynced lock"));
        if files.is_empty() {
            return;
        }
        for f in &files {
            if let Err(e) = durable::sync_file(f) {
                tracing::warn!(file = %f.display(), error = %e, "cannot fsync a history file");
            }
        }
        if let Err(e) = durable::sync_dir(&self.dir) {
            tracing::warn!(error = %e, "cannot fsync the history folder");
        }
    }

    /// Document ids changed by anyone (this node's API, recording, or a peer through sync).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// This device's id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Reads document `id` (an empty new one if this node has none yet).
    fn read<T>(&self, id: DocId, f: impl FnOnce(&AutoCommit) -> T) -> T {
        let mut docs = self.docs.lock().expect("history lock");
        match docs.get(id) {
            Some(d) => f(&d.doc),
            None => f(&schema::new_doc(id)),
        }
    }

    /// Changes document `id` with `f` as one Automerge change, written durably before this
    /// returns; nothing is kept if `f` fails.
    fn write<T>(
        &self,
        id: DocId,
        f: impl FnOnce(&mut AutoCommit) -> Result<T, SchemaError>,
    ) -> Result<T> {
        let mut docs = self.docs.lock().expect("history lock");
        if docs.get(id).is_none() {
            let created = StoredDoc::create(&self.dir, id, schema::new_doc(id), Durability::Now)?;
            docs.insert(id, created);
        }
        let d = docs.get(id).expect("just made");
        let out = match f(&mut d.doc) {
            Ok(out) => out,
            Err(e) => {
                d.doc.rollback();
                return Err(schema_error(id, e));
            }
        };
        d.doc.commit();
        let changed = d.persist(Durability::Now)?;
        drop(docs);
        if changed {
            let _ = self.changes.send(Change {
                doc: id,
                from: None,
            });
        }
        Ok(out)
    }

    /// Conversations newest first, without deleted ones; with `query`, only those whose title
    /// or messages contain it (case-insensitive).
    pub fn list(&self, query: Option<&str>) -> Vec<Summary> {
        let all: Vec<Summary> = self
            .read(DocId::Index, schema::summaries)
            .into_iter()
            .filter(|s| !s.deleted)
            .collect();
        let Some(q) = query.map(str::to_lowercase).filter(|q| !q.is_empty()) else {
            return all;
        };
        all.into_iter()
            .filter(|s| {
                s.title.to_lowercase().contains(&q)
                    || self
                        .read(DocId::Conversation(s.id), schema::messages)
                        .iter()
                        .any(|m| m.text.to_lowercase().contains(&q))
            })
            .collect()
    }

    /// A new, empty conversation.
    pub fn create(&self, title: &str) -> Result<Summary> {
        self.ensure_room()?;
        let id = Id::random();
        let now = now_ms();
        let summary = self.write(DocId::Index, |d| {
            schema::add_conversation(d, id, title, now)
        })?;
        self.write(DocId::Conversation(id), |_| Ok(()))?;
        Ok(summary)
    }

    fn ensure_room(&self) -> Result<()> {
        if self.docs.lock().expect("history lock").len() >= MAX_DOCS {
            return Err(HistoryError::BadRequest(format!(
                "the history holds {MAX_DOCS} documents, its limit; delete some conversations"
            )));
        }
        Ok(())
    }

    /// Conversation `id`'s index entry, if it is there and not deleted.
    fn summary(&self, id: Id) -> Result<Summary> {
        self.read(DocId::Index, |d| schema::conversation(d, id))
            .ok()
            .filter(|s| !s.deleted)
            .ok_or(HistoryError::NoConversation(id))
    }

    /// Renames conversation `id`.
    pub fn rename(&self, id: Id, title: &str) -> Result<Summary> {
        self.summary(id)?;
        self.write(DocId::Index, |d| schema::rename(d, id, title, now_ms()))?;
        self.summary(id)
    }

    /// Deletes conversation `id` (a tombstone in the index, synced like any change).
    pub fn delete(&self, id: Id) -> Result<()> {
        self.summary(id)?;
        self.write(DocId::Index, |d| schema::delete(d, id, now_ms()))
    }

    /// Conversation `id` with its messages.
    pub fn get(&self, id: Id) -> Result<Conversation> {
        let summary = self.summary(id)?;
        let messages = self.read(DocId::Conversation(id), schema::messages);
        Ok(Conversation {
            summary,
            branch: schema::branch(&messages),
            messages,
        })
    }

    /// Adds a message to conversation `id`.
    pub fn add_message(&self, id: Id, new: &NewMessage) -> Result<Id> {
        self.summary(id)?;
        let m = self.write(DocId::Conversation(id), |d| schema::add_message(d, new))?;
        self.write(DocId::Index, |d| schema::touch(d, id, new.created))?;
        Ok(m)
    }

    /// Replaces the text of a message (an edit; concurrent edits elsewhere merge).
    pub fn edit_message(&self, id: Id, message: Id, text: &str) -> Result<Message> {
        self.summary(id)?;
        self.write(DocId::Conversation(id), |d| {
            schema::edit_text(d, message, text)
        })?;
        self.write(DocId::Index, |d| schema::touch(d, id, now_ms()))?;
        self.read(DocId::Conversation(id), schema::messages)
            .into_iter()
            .find(|m| m.id == message)
            .ok_or(HistoryError::NoMessage {
                conversation: id,
                message,
            })
    }

    /// Records a chat request in `conversation` and opens its reply as `streaming`; durable
    /// before it returns. A new conversation takes every message of the request; an existing
    /// one takes the request's last message where `place` says (or only the reply, for a
    /// regeneration).
    pub fn begin_reply(
        &self,
        conversation: ConversationRef,
        prompt: &[ChatMessage],
        model: &str,
    ) -> Result<ReplySlot> {
        let last = prompt
            .last()
            .ok_or_else(|| HistoryError::BadRequest("a chat needs a message".into()))?;
        let now = now_ms();
        let (id, (added, mut parent)) = match conversation {
            ConversationRef::New => {
                let title = prompt
                    .iter()
                    .find(|m| m.role == "user")
                    .map_or("New conversation", |m| m.content.as_str());
                let first_line: String = title
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(60)
                    .collect();
                (self.create(&first_line)?.id, (prompt, None))
            }
            ConversationRef::Existing { id, place } => {
                let conversation = self.get(id)?;
                let known = |message: Id| {
                    if conversation.messages.iter().any(|m| m.id == message) {
                        Ok(Some(message))
                    } else {
                        Err(HistoryError::NoMessage {
                            conversation: id,
                            message,
                        })
                    }
                };
                let only_last = std::slice::from_ref(last);
                match place {
                    Place::Tip => (id, (only_last, conversation.branch.last().copied())),
                    Place::Under(None) => (id, (only_last, None)),
                    Place::Under(Some(parent)) => (id, (only_last, known(parent)?)),
                    Place::ReplyTo(message) => (id, (&prompt[..0], known(message)?)),
                }
            }
        };
        let author = self.device.clone();
        let message = self.write(DocId::Conversation(id), |d| {
            // Created times step by one so that the request's order is the stored order.
            for (i, m) in added.iter().enumerate() {
                parent = Some(schema::add_message(
                    d,
                    &NewMessage {
                        role: m.role.clone(),
                        text: m.content.clone(),
                        author: author.clone(),
                        created: now + i as i64,
                        parent,
                        model: String::new(),
                        status: Status::Done,
                    },
                )?);
            }
            schema::add_message(
                d,
                &NewMessage {
                    role: "assistant".into(),
                    text: String::new(),
                    author: author.clone(),
                    created: now + added.len() as i64,
                    parent,
                    model: model.to_owned(),
                    status: Status::Streaming,
                },
            )
        })?;
        self.write(DocId::Index, |d| schema::touch(d, id, now))?;
        Ok(ReplySlot {
            conversation: id,
            message,
        })
    }

    /// Appends streamed text to a reply.
    pub fn append_reply(&self, slot: ReplySlot, text: &str) -> Result<()> {
        self.write(DocId::Conversation(slot.conversation), |d| {
            schema::append_text(d, slot.message, text)
        })
    }

    /// Records how a reply ended, appending its last text first.
    pub fn finish_reply(&self, slot: ReplySlot, text: &str, outcome: &Outcome) -> Result<()> {
        self.write(DocId::Conversation(slot.conversation), |d| {
            if !text.is_empty() {
                schema::append_text(d, slot.message, text)?;
            }
            schema::finish(d, slot.message, outcome)
        })?;
        self.write(DocId::Index, |d| {
            schema::touch(d, slot.conversation, now_ms())
        })
    }

    /// Conversation `id` in `format`.
    pub fn export(&self, id: Id, format: Format) -> Result<Vec<u8>> {
        let conversation = self.get(id)?;
        Ok(match format {
            Format::Automerge => {
                let mut docs = self.docs.lock().expect("history lock");
                match docs.get(DocId::Conversation(id)) {
                    Some(d) => d.doc.save(),
                    None => schema::new_conversation(id).save(),
                }
            }
            Format::Json => serde_json::to_vec_pretty(&conversation)
                .map_err(|e| HistoryError::Storage(e.into()))?,
            Format::Markdown => export::markdown(&conversation).into_bytes(),
        })
    }

    /// Every document this node holds.
    pub fn doc_ids(&self) -> Vec<DocId> {
        self.docs.lock().expect("history lock").ids()
    }

    /// The next sync message for document `id` to a peer in `state`, if there is anything to say.
    pub fn sync_message(
        &self,
        id: DocId,
        state: &mut automerge::sync::State,
    ) -> Option<automerge::sync::Message> {
        use automerge::sync::SyncDoc;
        let mut docs = self.docs.lock().expect("history lock");
        match docs.get(id) {
            Some(d) => d.doc.sync().generate_sync_message(state),
            None => schema::new_doc(id).sync().generate_sync_message(state),
        }
    }

    /// Document `id` whole, as a standard Automerge file, for a peer that lacks it (read from its
    /// file: no need to load it).
    pub fn document_bytes(&self, id: DocId) -> Option<Vec<u8>> {
        let docs = self.docs.lock().expect("history lock");
        if !docs.contains(id) {
            return None;
        }
        let path = store::path_of(&self.dir, id);
        drop(docs);
        std::fs::read(&path)
            .inspect_err(|e| tracing::warn!(file = %path.display(), error = %e, "cannot read a history file"))
            .ok()
    }

    /// Takes document `id` sent whole by a peer: it must load and follow the schema, or nothing
    /// is kept. Merged into this node's copy if it has one. Returns whether anything changed.
    pub fn receive_document(&self, from: libp2p::PeerId, id: DocId, bytes: &[u8]) -> Result<bool> {
        let mut incoming = AutoCommit::load(bytes)
            .map_err(|e| HistoryError::BadRequest(format!("a document that does not load: {e}")))?;
        schema::check(&incoming, id).map_err(HistoryError::Schema)?;
        let mut docs = self.docs.lock().expect("history lock");
        let changed = match docs.get(id) {
            Some(d) => {
                let before = d.doc.get_heads();
                d.doc
                    .merge(&mut incoming)
                    .map_err(|e| HistoryError::BadRequest(format!("cannot merge: {e}")))?;
                self.keep_synced(d)?;
                d.doc.get_heads() != before
            }
            None => {
                incoming.set_actor(automerge::ActorId::random());
                self.keep_new(&mut docs, id, || {
                    StoredDoc::adopt(&self.dir, id, incoming, bytes, Durability::Soon)
                })?;
                true
            }
        };
        drop(docs);
        self.announce(id, from, changed);
        Ok(changed)
    }

    /// Applies a peer's sync message (`bytes`) about document `id`; a message that is malformed
    /// or would leave the document off the schema changes nothing. Returns whether the document
    /// changed.
    pub fn receive_sync(
        &self,
        from: libp2p::PeerId,
        id: DocId,
        state: &mut automerge::sync::State,
        bytes: &[u8],
    ) -> Result<bool> {
        let mut docs = self.docs.lock().expect("history lock");
        let changed = match docs.get(id) {
            Some(d) => {
                let changed = schema::apply_sync_message(&mut d.doc, id, state, bytes)
                    .map_err(HistoryError::Schema)?;
                self.keep_synced(d)?;
                changed
            }
            None => {
                let mut doc = schema::new_doc(id);
                let changed = schema::apply_sync_message(&mut doc, id, state, bytes)
                    .map_err(HistoryError::Schema)?;
                if changed {
                    self.keep_new(&mut docs, id, || {
                        StoredDoc::create(&self.dir, id, doc, Durability::Soon)
                    })?;
                }
                changed
            }
        };
        drop(docs);
        self.announce(id, from, changed);
        Ok(changed)
    }

    /// Writes what a peer changed in `d` (fsynced with the next batch).
    fn keep_synced(&self, d: &mut StoredDoc) -> Result<()> {
        if d.persist(Durability::Soon)? {
            self.unsynced
                .lock()
                .expect("unsynced lock")
                .insert(d.path().to_owned());
        }
        Ok(())
    }

    /// Adds a document a peer brought, written by `make` (fsynced with the next batch), within
    /// the limit on documents.
    fn keep_new(
        &self,
        docs: &mut Docs,
        id: DocId,
        make: impl FnOnce() -> anyhow::Result<StoredDoc>,
    ) -> Result<()> {
        if docs.len() >= MAX_DOCS {
            return Err(HistoryError::BadRequest(format!(
                "a peer offered document {id} beyond this node's limit of {MAX_DOCS}"
            )));
        }
        let d = make()?;
        self.unsynced
            .lock()
            .expect("unsynced lock")
            .insert(d.path().to_owned());
        docs.insert(id, d);
        Ok(())
    }

    fn announce(&self, doc: DocId, from: libp2p::PeerId, changed: bool) {
        if changed {
            let _ = self.changes.send(Change {
                doc,
                from: Some(from),
            });
        }
    }
}
