//! Conversation history as Automerge documents: the schema every device (and any other program)
//! reads and writes, with its ids, readers, writers and checks. Pure functions over
//! `automerge::AutoCommit`; storage and sync live in the node.
//!
//! - The **index** document: `{"hearth": "history-index/1", "conversations": {ID: {"title": str,
//!   "created": int ms, "updated": int ms, "deleted": bool}}}`.
//! - One **conversation** document per conversation: `{"hearth": "conversation/1", "id": ID,
//!   "messages": {MSG_ID: {"role": str, "text": Text, "author": str, "created": int ms,
//!   "parent": MSG_ID | null, "model": str, "nodes": [str], "tokens": int, "tokens_per_s": f64,
//!   "status": "streaming" | "done" | "stopped" | "error", "error": str}}}`.
//!
//! Every device starts each document from the same first change (a fixed actor and time), so the
//! maps at its root are one object everywhere and changes made apart always merge. Messages are
//! ordered by (created, id), the same on every device.

use std::fmt;
use std::str::FromStr;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{hydrate, ActorId, AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use serde::{Deserialize, Serialize};

/// The index document's schema tag (key `hearth` at its root).
pub const INDEX_SCHEMA: &str = "history-index/1";
/// A conversation document's schema tag.
pub const CONVERSATION_SCHEMA: &str = "conversation/1";
/// Longest title kept, in characters.
pub const MAX_TITLE: usize = 200;

/// A 128-bit random id, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id([u8; 16]);

impl Id {
    /// A fresh random id (the bytes of a random Automerge actor id: a version 4 UUID).
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        b.copy_from_slice(&ActorId::random().to_bytes()[..16]);
        Id(b)
    }

    /// The id's bytes.
    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A string that is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a hearth id (32 lowercase hex digits)")]
pub struct BadId(pub String);

impl FromStr for Id {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        let bad = || BadId(s.chars().take(80).collect());
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Id(out))
    }
}

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which document: the index, or one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocId {
    Index,
    Conversation(Id),
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Index => f.write_str("index"),
            DocId::Conversation(id) => id.fmt(f),
        }
    }
}

impl FromStr for DocId {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        if s == "index" {
            Ok(DocId::Index)
        } else {
            s.parse().map(DocId::Conversation)
        }
    }
}

/// Where a reply stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being written (or the node writing it stopped before it finished).
    Streaming,
    Done,
    /// The user stopped it.
    Stopped,
    Error,
}

impl Status {
    /// The name stored in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Streaming => "streaming",
            Status::Done => "done",
            Status::Stopped => "stopped",
            Status::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "streaming" => Status::Streaming,
            "done" => Status::Done,
            "stopped" => Status::Stopped,
            "error" => Status::Error,
            _ => return None,
        })
    }
}

/// One conversation as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub id: Id,
    pub title: String,
    /// Milliseconds since the Unix epoch.
    pub created: i64,
    pub updated: i64,
    pub deleted: bool,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: Id,
    pub role: String,
    pub text: String,
    /// The device (peer id) that wrote it.
    pub author: String,
    pub created: i64,
    /// The message it answers or follows; edits and regenerations branch from the same parent.
    pub parent: Option<Id>,
    pub model: String,
    /// The nodes that served a reply (more than one after a failover).
    pub nodes: Vec<String>,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub status: Status,
    pub error: String,
}

/// A conversation with its messages, as the history API serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    #[serde(flatten)]
    pub summary: Summary,
    /// Every message, ordered by (created, id).
    pub messages: Vec<Message>,
    /// Ids of the messages on the newest branch, first to last.
    pub branch: Vec<Id>,
}

/// What a new message starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub role: String,
    pub text: String,
    pub author: String,
    pub created: i64,
    pub parent: Option<Id>,
    pub model: String,
    pub status: Status,
}

/// How a reply ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub nodes: Vec<String>,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub error: String,
}

/// A document that does not follow the schema, or an operation on something it lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("the document is not a hearth {expected} document ({found})")]
    WrongSchema {
        expected: &'static str,
        found: String,
    },
    #[error("{0}")]
    Malformed(String),
    #[error("no conversation {0}")]
    NoConversation(Id),
    #[error("no message {0} in this conversation")]
    NoMessage(Id),
    #[error("automerge: {0}")]
    Automerge(String),
}

impl From<automerge::AutomergeError> for SchemaError {
    fn from(e: automerge::AutomergeError) -> Self {
        SchemaError::Automerge(e.to_string())
    }
}

type Result<T, E = SchemaError> = std::result::Result<T, E>;

/// The first change of every document of `schema`: the same bytes on every device.
fn base(actor: &[u8], schema: &str, id: Option<Id>, map: &str) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(actor));
    doc.put(ROOT, "hearth", schema).expect("root put");
    if let Some(id) = id {
        doc.put(ROOT, "id", id.to_string()).expect("root put");
    }
    doc.put_object(ROOT, map, ObjType::Map).expect("root map");
    doc.commit_with(CommitOptions::default().with_time(0));
    doc.set_actor(ActorId::random());
    doc
}

/// A new, empty index document.
pub fn new_index() -> AutoCommit {
    base(b"hearth-index-v1!", INDEX_SCHEMA, None, "conversations")
}

/// A new, empty document for conversation `id`.
pub fn new_conversation(id: Id) -> AutoCommit {
    base(&id.bytes(), CONVERSATION_SCHEMA, Some(id), "messages")
}

/// A new document for `doc`.
pub fn new_doc(doc: DocId) -> AutoCommit {
    match doc {
        DocId::Index => new_index(),
        DocId::Conversation(id) => new_conversation(id),
    }
}

fn str_at(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => s.as_str().map(str::to_owned),
        (Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
        _ => None,
    }
}

fn int_at(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<i64> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Some(*i),
            ScalarValue::Uint(u) => i64::try_from(*u).ok(),
            _ => None,
        },
        _ => None,
    }
}

fn map_at(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key).ok()?? {
        (Value::Object(ObjType::Map), id) => Some(id),
        _ => None,
    }
}

fn root_map(doc: &AutoCommit, schema: &'static str, map: &str) -> Result<ObjId> {
    let found = str_at(doc, &ROOT, "hearth").unwrap_or_else(|| "no schema tag".into());
    if found != schema {
        return Err(SchemaError::WrongSchema {
            expected: schema,
            found,
        });
    }
    map_at(doc, &ROOT, map).ok_or_else(|| SchemaError::Malformed(format!("no `{map}` map")))
}

/// A map read whole, with typed field access.
struct Fields<'a>(&'a hydrate::Map);

impl Fields<'_> {
    fn str(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            hydrate::Value::Scalar(s) => s.as_str().map(str::to_owned),
            hydrate::Value::Text(t) => Some(t.to_string()),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.0.get(key)? {
            hydrate::Value::Scalar(ScalarValue::Int(i) | ScalarValue::Timestamp(i)) => Some(*i),
            hydrate::Value::Scalar(ScalarValue::Uint(u)) => i64::try_from(*u).ok(),
            _ => None,
        }
    }

    fn float(&self, key: &str) -> Option<f64> {
        match self.0.get(key)? {
            hydrate::Value::Scalar(ScalarValue::F64(f)) => Some(*f),
            hydrate::Value::Scalar(ScalarValue::Int(i)) => Some(*i as f64),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.0.get(key)? {
            hydrate::Value::Scalar(ScalarValue::Boolean(b)) => Some(*b),
            _ => None,
        }
    }
}

/// The entries of the map at `map` under the root, read whole (one pass over the document,
/// much faster than a lookup per field).
fn read_map(
    doc: &AutoCommit,
    schema: &'static str,
    map: &str,
) -> Result<Vec<(String, hydrate::Value)>> {
    let obj = root_map(doc, schema, map)?;
    match doc.hydrate(&obj, None)? {
        hydrate::Value::Map(m) => Ok(m
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()),
        _ => Err(SchemaError::Malformed(format!("`{map}` is not a map"))),
    }
}

fn summary(key: &str, value: &hydrate::Value) -> Result<Summary> {
    let bad = |what: &str| SchemaError::Malformed(format!("conversation {key}: {what}"));
    let id: Id = key.parse().map_err(|_| bad("the key is not an id"))?;
    let hydrate::Value::Map(m) = value else {
        return Err(bad("not a map"));
    };
    let f = Fields(m);
    Ok(Summary {
        id,
        title: f.str("title").ok_or_else(|| bad("no title"))?,
        created: f.int("created").ok_or_else(|| bad("no created time"))?,
        updated: f.int("updated").ok_or_else(|| bad("no updated time"))?,
        deleted: f.bool("deleted").ok_or_else(|| bad("no deleted flag"))?,
    })
}

/// Every conversation in the index (deleted ones included), newest first (by `updated`, then
/// id). Entries that do not follow the schema are skipped.
pub fn summaries(doc: &AutoCommit) -> Vec<Summary> {
    let mut out: Vec<Summary> = read_map(doc, INDEX_SCHEMA, "conversations")
        .unwrap_or_default()
        .iter()
        .filter_map(|(k, v)| summary(k, v).ok())
        .collect();
    out.sort_by(|a, b| b.updated.cmp(&a.updated).then(a.id.cmp(&b.id)));
    out
}

/// Checks the index document: schema tag and every entry.
pub fn check_index(doc: &AutoCommit) -> Result<()> {
    for (k, v) in read_map(doc, INDEX_SCHEMA, "conversations")? {
        let s = summary(&k, &v)?;
        if s.title.chars().count() > MAX_TITLE {
            return Err(SchemaError::Malformed(format!(
                "conversation {k}: title longer than {MAX_TITLE} characters"
            )));
        }
    }
    Ok(())
}

fn clip_title(title: &str) -> String {
    let t = title.trim();
    let t = if t.is_empty() { "New conversation" } else { t };
    t.chars().take(MAX_TITLE).collect()
}

/// Adds conversation `id` to the index with `title`, created now (`now`, ms).
pub fn add_conversation(doc: &mut AutoCommit, id: Id, title: &str, now: i64) -> Result<Summary> {
    let entries = root_map(doc, INDEX_SCHEMA, "conversations")?;
    let entry = doc.put_object(&entries, id.to_string(), ObjType::Map)?;
    let title = clip_title(title);
    doc.put(&entry, "title", title.as_str())?;
    doc.put(&entry, "created", now)?;
    doc.put(&entry, "updated", now)?;
    doc.put(&entry, "deleted", false)?;
    Ok(Summary {
        id,
        title,
        created: now,
        updated: now,
        deleted: false,
    })
}

fn entry(doc: &AutoCommit, id: Id) -> Result<ObjId> {
    let entries = root_map(doc, INDEX_SCHEMA, "conversations")?;
    map_at(doc, &entries, &id.to_string()).ok_or(SchemaError::NoConversation(id))
}

/// The index entry of conversation `id`.
pub fn conversation(doc: &AutoCommit, id: Id) -> Result<Summary> {
    let e = entry(doc, id)?;
    let key = id.to_string();
    match doc.hydrate(&e, None)? {
        value @ hydrate::Value::Map(_) => summary(&key, &value),
        _ => Err(SchemaError::NoConversation(id)),
    }
}

/// Renames conversation `id`.
pub fn rename(doc: &mut AutoCommit, id: Id, title: &str, now: i64) -> Result<()> {
    let e = entry(doc, id)?;
    doc.put(&e, "title", clip_title(title))?;
    doc.put(&e, "updated", now)?;
    Ok(())
}

/// Marks conversation `id` deleted (a tombstone: the entry stays, so a device that still has the
/// conversation learns it is gone).
pub fn delete(doc: &mut AutoCommit, id: Id, now: i64) -> Result<()> {
    let e = entry(doc, id)?;
    doc.put(&e, "deleted", true)?;
    doc.put(&e, "updated", now)?;
    Ok(())
}

/// Records that conversation `id` changed at `now`.
pub fn touch(doc: &mut AutoCommit, id: Id, now: i64) -> Result<()> {
    let e = entry(doc, id)?;
    if int_at(doc, &e, "updated").is_none_or(|t| t < now) {
        doc.put(&e, "updated", now)?;
    }
    Ok(())
}

fn message(key: &str, value: &hydrate::Value) -> Result<Message> {
    let bad = |what: &str| SchemaError::Malformed(format!("message {key}: {what}"));
    let id: Id = key.parse().map_err(|_| bad("the key is not an id"))?;
    let hydrate::Value::Map(m) = value else {
        return Err(bad("not a map"));
    };
    let f = Fields(m);
    let text = match m.get("text") {
        Some(hydrate::Value::Text(t)) => t.to_string(),
        _ => return Err(bad("no text")),
    };
    let parent = match m.get("parent") {
        Some(hydrate::Value::Scalar(ScalarValue::Null)) => None,
        Some(hydrate::Value::Scalar(ScalarValue::Str(p))) => {
            Some(p.parse().map_err(|_| bad("parent is not an id"))?)
        }
        _ => return Err(bad("no parent")),
    };
    let nodes = match m.get("nodes") {
        Some(hydrate::Value::List(list)) => list
            .iter()
            .map(|v| match &v.value {
                hydrate::Value::Scalar(ScalarValue::Str(s)) => Some(s.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("a node is not a string"))?,
        _ => return Err(bad("no nodes")),
    };
    Ok(Message {
        id,
        role: f.str("role").ok_or_else(|| bad("no role"))?,
        text,
        author: f.str("author").ok_or_else(|| bad("no author"))?,
        created: f.int("created").ok_or_else(|| bad("no created time"))?,
        parent,
        model: f.str("model").ok_or_else(|| bad("no model"))?,
        nodes,
        tokens: f
            .int("tokens")
            .and_then(|t| u64::try_from(t).ok())
            .ok_or_else(|| bad("no token count"))?,
        tokens_per_s: f.float("tokens_per_s").ok_or_else(|| bad("no speed"))?,
        status: f
            .str("status")
            .and_then(|s| Status::parse(&s))
            .ok_or_else(|| bad("no valid status"))?,
        error: f.str("error").unwrap_or_default(),
    })
}

/// Every message of a conversation, ordered by (created, id). Messages that do not follow the
/// schema are skipped.
pub fn messages(doc: &AutoCommit) -> Vec<Message> {
    let mut out: Vec<Message> = read_map(doc, CONVERSATION_SCHEMA, "messages")
        .unwrap_or_default()
        .iter()
        .filter_map(|(k, v)| message(k, v).ok())
        .collect();
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    out
}

/// Checks a conversation document: schema tag, its id, and every message.
pub fn check_conversation(doc: &AutoCommit, id: Id) -> Result<()> {
    let entries = read_map(doc, CONVERSATION_SCHEMA, "messages")?;
    if str_at(doc, &ROOT, "id") != Some(id.to_string()) {
        return Err(SchemaError::Malformed(format!(
            "the document is not conversation {id}"
        )));
    }
    for (k, v) in &entries {
        message(k, v)?;
    }
    Ok(())
}

/// Checks `doc` as the document `id` names.
pub fn check(doc: &AutoCommit, id: DocId) -> Result<()> {
    match id {
        DocId::Index => check_index(doc),
        DocId::Conversation(c) => check_conversation(doc, c),
    }
}

/// Applies a peer's Automerge sync message (`bytes`) about document `id` to `doc`. The result
/// must still follow the schema, or `doc` and `state` stay as they were. Returns whether the
/// document changed.
pub fn apply_sync_message(
    doc: &mut AutoCommit,
    id: DocId,
    state: &mut automerge::sync::State,
    bytes: &[u8],
) -> Result<bool> {
    use automerge::sync::SyncDoc;
    let message = automerge::sync::Message::decode(bytes)
        .map_err(|e| SchemaError::Malformed(format!("a malformed sync message: {e}")))?;
    let before = doc.get_heads();
    let mut trial = doc.fork();
    let mut trial_state = state.clone();
    trial
        .sync()
        .receive_sync_message(&mut trial_state, message)?;
    check(&trial, id)?;
    let changed = trial.get_heads() != before;
    *doc = trial;
    *state = trial_state;
    Ok(changed)
}

/// The messages on the branch that ends with the newest message: from the first message down
/// to it, following parents.
pub fn branch(messages: &[Message]) -> Vec<Id> {
    let mut path = Vec::new();
    let mut next = messages.last().map(|m| m.id);
    while let Some(id) = next {
        if path.contains(&id) || path.len() > messages.len() {
            break;
        }
        path.push(id);
        next = messages.iter().find(|m| m.id == id).and_then(|m| m.parent);
    }
    path.reverse();
    path
}

fn messages_map(doc: &AutoCommit) -> Result<ObjId> {
    root_map(doc, CONVERSATION_SCHEMA, "messages")
}

fn message_obj(doc: &AutoCommit, id: Id) -> Result<ObjId> {
    map_at(doc, &messages_map(doc)?, &id.to_string()).ok_or(SchemaError::NoMessage(id))
}

/// Adds a message; returns its id.
pub fn add_message(doc: &mut AutoCommit, new: &NewMessage) -> Result<Id> {
    let map = messages_map(doc)?;
    let id = Id::random();
    let m = doc.put_object(&map, id.to_string(), ObjType::Map)?;
    doc.put(&m, "role", new.role.as_str())?;
    let text = doc.put_object(&m, "text", ObjType::Text)?;
    doc.splice_text(&text, 0, 0, &new.text)?;
    doc.put(&m, "author", new.author.as_str())?;
    doc.put(&m, "created", new.created)?;
    match new.parent {
        Some(p) => doc.put(&m, "parent", p.to_string())?,
        None => doc.put(&m, "parent", ScalarValue::Null)?,
    }
    doc.put(&m, "model", new.model.as_str())?;
    doc.put_object(&m, "nodes", ObjType::List)?;
    doc.put(&m, "tokens", 0_i64)?;
    doc.put(&m, "tokens_per_s", 0.0_f64)?;
    doc.put(&m, "status", new.status.as_str())?;
    doc.put(&m, "error", "")?;
    Ok(id)
}

fn text_obj(doc: &AutoCommit, m: &ObjId) -> Result<ObjId> {
    match doc.get(m, "text")? {
        Some((Value::Object(ObjType::Text), t)) => Ok(t),
        _ => Err(SchemaError::Malformed("a message without text".into())),
    }
}

/// Appends `text` to message `id` (a reply as it streams).
pub fn append_text(doc: &mut AutoCommit, id: Id, text: &str) -> Result<()> {
    let t = text_obj(doc, &message_obj(doc, id)?)?;
    let end = doc.length(&t);
    doc.splice_text(&t, end, 0, text)?;
    Ok(())
}

/// Replaces message `id`'s text with `text`, as a diff (so a concurrent edit elsewhere merges).
pub fn edit_text(doc: &mut AutoCommit, id: Id, text: &str) -> Result<()> {
    let t = text_obj(doc, &message_obj(doc, id)?)?;
    doc.update_text(&t, text)?;
    Ok(())
}

/// Records how reply `id` ended.
pub fn finish(doc: &mut AutoCommit, id: Id, outcome: &Outcome) -> Result<()> {
    let m = message_obj(doc, id)?;
    let nodes = doc.put_object(&m, "nodes", ObjType::List)?;
    for (i, n) in outcome.nodes.iter().enumerate() {
        doc.insert(&nodes, i, n.as_str())?;
    }
    doc.put(&m, "tokens", outcome.tokens as i64)?;
    doc.put(&m, "tokens_per_s", outcome.tokens_per_s)?;
    doc.put(&m, "status", outcome.status.as_str())?;
    doc.put(&m, "error", outcome.error.as_str())?;
    Ok(())
}

/// Marks replies still `streaming` whose author is `author` as failed with `why` (the node that
/// wrote them stopped before they finished); returns how many.
pub fn interrupt(doc: &mut AutoCommit, author: &str, why: &str) -> Result<usize> {
    let stale: Vec<Message> = messages(doc)
        .into_iter()
        .filter(|m| m.status == Status::Streaming && m.author == author)
        .collect();
    for m in &stale {
        finish(
            doc,
            m.id,
            &Outcome {
                status: Status::Error,
                nodes: m.nodes.clone(),
                tokens: m.tokens,
                tokens_per_s: m.tokens_per_s,
                error: why.to_owned(),
            },
        )?;
    }
    Ok(stale.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, text: &str, created: i64, parent: Option<Id>) -> NewMessage {
        NewMessage {
            role: role.into(),
            text: text.into(),
            author: "dev".into(),
            created,
            parent,
            model: "smollm2-135m".into(),
            status: Status::Done,
        }
    }

    #[test]
    fn ids_round_trip_and_junk_is_refused() {
        let id = Id::random();
        assert_eq!(id.to_string().parse::<Id>().unwrap(), id);
        for junk in ["", "index", "../../etc", &"A".repeat(32), &"0".repeat(31)] {
            assert!(junk.parse::<Id>().is_err(), "{junk}");
        }
        assert_eq!("index".parse::<DocId>().unwrap(), DocId::Index);
        assert_eq!(
            DocId::Conversation(id)
                .to_string()
                .parse::<DocId>()
                .unwrap(),
            DocId::Conversation(id)
        );
        assert_ne!(Id::random(), Id::random());
    }

    #[test]
    fn documents_made_apart_merge_into_one() {
        let id = Id::random();
        let mut a = new_index();
        let mut b = new_index();
        add_conversation(&mut a, id, "on a", 10).unwrap();
        add_conversation(&mut b, Id::random(), "on b", 20).unwrap();
        a.merge(&mut b).unwrap();
        let list = summaries(&a);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].title, "on b");
        check_index(&a).unwrap();

        // Two devices write into the same conversation before they ever met.
        let mut x = new_conversation(id);
        let mut y = new_conversation(id);
        let q = add_message(&mut x, &msg("user", "hello", 1, None)).unwrap();
        add_message(&mut y, &msg("user", "hi from y", 2, None)).unwrap();
        x.merge(&mut y).unwrap();
        y.merge(&mut x).unwrap();
        let (mx, my) = (messages(&x), messages(&y));
        assert_eq!(mx.len(), 2);
        assert_eq!(mx, my);
        assert_eq!(mx[0].id, q);
        check_conversation(&x, id).unwrap();
    }

    #[test]
    fn concurrent_edits_of_one_message_both_survive() {
        let id = Id::random();
        let mut a = new_conversation(id);
        let m = add_message(&mut a, &msg("user", "the cat sat", 1, None)).unwrap();
        let mut b = a.fork();
        b.set_actor(ActorId::random());
        edit_text(&mut a, m, "the black cat sat").unwrap();
        append_text(&mut b, m, " down").unwrap();
        a.merge(&mut b).unwrap();
        assert_eq!(messages(&a)[0].text, "the black cat sat down");
    }

    #[test]
    fn replies_stream_finish_and_branch() {
        let id = Id::random();
        let mut d = new_conversation(id);
        let q = add_message(&mut d, &msg("user", "2+2?", 1, None)).unwrap();
        let mut streaming = msg("assistant", "", 2, Some(q));
        streaming.status = Status::Streaming;
        let r = add_message(&mut d, &streaming).unwrap();
        append_text(&mut d, r, "It is ").unwrap();
        append_text(&mut d, r, "4.").unwrap();
        finish(
            &mut d,
            r,
            &Outcome {
                status: Status::Done,
                nodes: vec!["kitchen".into()],
                tokens: 3,
                tokens_per_s: 50.0,
                error: String::new(),
            },
        )
        .unwrap();
        let all = messages(&d);
        assert_eq!(all[1].text, "It is 4.");
        assert_eq!(all[1].status, Status::Done);
        assert_eq!(all[1].nodes, ["kitchen"]);
        // A regeneration branches from the same question.
        let again = add_message(&mut d, &msg("assistant", "Four.", 3, Some(q))).unwrap();
        assert_eq!(branch(&messages(&d)), [q, again]);
        // A node that restarts marks its own unfinished replies.
        let s = add_message(&mut d, &streaming).unwrap();
        assert_eq!(interrupt(&mut d, "dev", "stopped").unwrap(), 1);
        let stale = messages(&d).into_iter().find(|m| m.id == s).unwrap();
        assert_eq!(stale.status, Status::Error);
    }

    #[test]
    fn sync_messages_bring_documents_together_and_bad_ones_change_nothing() {
        use automerge::sync::{State, SyncDoc};
        let id = Id::random();
        let mut a = new_conversation(id);
        add_message(&mut a, &msg("user", "hi", 1, None)).unwrap();
        let mut b = new_conversation(id);
        let (mut sa, mut sb) = (State::new(), State::new());
        for _ in 0..10 {
            if let Some(m) = a.sync().generate_sync_message(&mut sa) {
                apply_sync_message(&mut b, DocId::Conversation(id), &mut sb, &m.encode()).unwrap();
            }
            if let Some(m) = b.sync().generate_sync_message(&mut sb) {
                apply_sync_message(&mut a, DocId::Conversation(id), &mut sa, &m.encode()).unwrap();
            }
        }
        assert_eq!(messages(&b)[0].text, "hi");
        // Garbage, and a valid message carrying an off-schema document, change nothing.
        let heads = b.get_heads();
        assert!(apply_sync_message(&mut b, DocId::Conversation(id), &mut sb, b"junk").is_err());
        let mut evil = new_conversation(id);
        let map = messages_map(&evil).unwrap();
        evil.put(&map, Id::random().to_string(), "not a message")
            .unwrap();
        let mut se = State::new();
        let mut sb2 = State::new();
        let mut refused = false;
        for _ in 0..10 {
            if let Some(m) = evil.sync().generate_sync_message(&mut se) {
                refused |=
                    apply_sync_message(&mut b, DocId::Conversation(id), &mut sb2, &m.encode())
                        .is_err();
            }
            if let Some(m) = b.sync().generate_sync_message(&mut sb2) {
                evil.sync().receive_sync_message(&mut se, m).unwrap();
            }
        }
        assert!(refused);
        assert_eq!(b.get_heads(), heads);
    }

    #[test]
    fn documents_off_schema_are_refused_by_the_checks() {
        let id = Id::random();
        let mut d = AutoCommit::new();
        d.put(ROOT, "hearth", "something-else").unwrap();
        assert!(matches!(
            check_conversation(&d, id),
            Err(SchemaError::WrongSchema { .. })
        ));
        let mut d = new_conversation(id);
        let map = messages_map(&d).unwrap();
        let bad = d
            .put_object(&map, Id::random().to_string(), ObjType::Map)
            .unwrap();
        d.put(&bad, "role", 7).unwrap();
        assert!(check_conversation(&d, id).is_err());
        // Readers skip what they cannot read.
        assert!(messages(&d).is_empty());
        assert!(check_conversation(&new_conversation(id), Id::random()).is_err());
        let mut i = new_index();
        let entries = root_map(&i, INDEX_SCHEMA, "conversations").unwrap();
        i.put(&entries, "not-an-id", "x").unwrap();
        assert!(check_index(&i).is_err());
        assert!(summaries(&i).is_empty());
    }
}
