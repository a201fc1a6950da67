//! Every document of a node's history: the index, loaded at start, and the conversations, loaded
//! at first use (loading one costs milliseconds, so a node with a thousand conversations would
//! otherwise take seconds to start). A conversation is checked against the schema when loaded;
//! one that does not load is quarantined, and replies this device left unfinished are marked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hearth_protocol::history::{self as schema, DocId};

use super::store::{self, StoredDoc};
use crate::durable::Durability;

/// What a reply left streaming by a node that stopped is marked with when its document loads.
const INTERRUPTED: &str = "the node stopped before the reply finished";

/// The documents, loaded or still on disk.
pub struct Docs {
    dir: PathBuf,
    device: String,
    /// `None`: on disk, not loaded yet.
    slots: HashMap<DocId, Option<StoredDoc>>,
}

impl Docs {
    /// The documents in `dir` (created if missing): the index loaded (or made), the rest listed.
    pub fn scan(dir: &Path, device: &str) -> Result<Docs> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut slots = HashMap::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".automerge"))
                .and_then(|n| n.parse::<DocId>().ok())
            {
                slots.insert(id, None);
            }
        }
        let mut docs = Docs {
            dir: dir.to_owned(),
            device: device.to_owned(),
            slots,
        };
        if docs.get(DocId::Index).is_none() {
            let index = StoredDoc::create(dir, DocId::Index, schema::new_index(), Durability::Now)?;
            docs.slots.insert(DocId::Index, Some(index));
        }
        Ok(docs)
    }

    /// How many documents there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether document `id` exists (loaded or not).
    pub fn contains(&self, id: DocId) -> bool {
        self.slots.contains_key(&id)
    }

    /// Every document's id, in order.
    pub fn ids(&self) -> Vec<DocId> {
        let mut ids: Vec<DocId> = self.slots.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Document `id`, loaded now if it was only on disk; `None` if there is none (or its file
    /// did not load and was quarantined).
    pub fn get(&mut self, id: DocId) -> Option<&mut StoredDoc> {
        if matches!(self.slots.get(&id), Some(None)) {
            match self.load(id) {
                Ok(d) => {
                    self.slots.insert(id, Some(d));
                }
                Err(e) => {
                    self.slots.remove(&id);
                    tracing::warn!(doc = %id, error = %format!("{e:#}"), "a history document could not be loaded");
                }
            }
        }
        self.slots.get_mut(&id).and_then(Option::as_mut)
    }

    /// Adds a new document.
    pub fn insert(&mut self, id: DocId, doc: StoredDoc) {
        self.slots.insert(id, Some(doc));
    }

    fn load(&self, id: DocId) -> Result<StoredDoc> {
        let path = store::path_of(&self.dir, id);
        let loaded = StoredDoc::load(&path).and_then(|d| {
            schema::check(&d.doc, id).map_err(anyhow::Error::from)?;
            Ok(d)
        });
        let mut d = match loaded {
            Ok(d) => d,
            Err(e) => {
                let moved = store::quarantine(&path)?;
                tracing::warn!(
                    file = %path.display(),
                    to = %moved.display(),
                    error = %format!("{e:#}"),
                    "unreadable history file quarantined; the rest of the history loads"
                );
                return Err(e);
            }
        };
        if matches!(id, DocId::Conversation(_)) {
            let n = schema::interrupt(&mut d.doc, &self.device, INTERRUPTED)
                .map_err(anyhow::Error::from)?;
            if n > 0 {
                d.persist(Durability::Now)?;
                tracing::info!(conversation = %id, replies = n, "marked unfinished replies");
            }
        }
        Ok(d)
    }
}
