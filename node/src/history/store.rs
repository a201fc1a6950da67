//! One file per document, `<id>.automerge`: a standard Automerge file (a saved document followed
//! by appended change chunks, which any Automerge implementation loads as one document). Every
//! append is fsynced before the write counts; a file is rewritten whole (temp file, fsync,
//! rename, fsync the directory) when it was created and when its appends pile up. A crash in the
//! middle of an append leaves a torn last chunk, which loading cuts off; a file that still does
//! not load is moved to `quarantine/`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use automerge::{AutoCommit, ChangeHash};
use hearth_protocol::history::DocId;

use crate::durable::{self, Durability};

/// Appends after which a file is rewritten as one saved document.
const COMPACT_AFTER: usize = 64;
/// The first bytes of every Automerge chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// A document and its file.
pub struct StoredDoc {
    pub doc: AutoCommit,
    path: PathBuf,
    /// Heads already in the file: the next append saves what came after them. (Automerge's own
    /// incremental save starts from nothing after a load, and would write everything again.)
    saved: Vec<ChangeHash>,
    appends: usize,
}

impl std::fmt::Debug for StoredDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredDoc({})", self.path.display())
    }
}

/// The file of document `id` in `dir`.
pub fn path_of(dir: &Path, id: DocId) -> PathBuf {
    dir.join(format!("{id}.automerge"))
}

/// The ends of the whole chunks at the start of `bytes` (a chunk is magic, checksum, type, a
/// LEB128 length, then that many bytes); stops at the first one that is cut short or not a chunk.
fn chunk_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 9) else {
            break;
        };
        if header[..4] != MAGIC {
            break;
        }
        let mut pos = at + 9;
        let mut len: u64 = 0;
        let mut shift = 0;
        let complete = loop {
            let Some(&b) = bytes.get(pos) else {
                break false;
            };
            pos += 1;
            if shift > 56 {
                break false;
            }
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break true;
            }
        };
        let end = usize::try_from(len).ok().and_then(|l| pos.checked_add(l));
        match end {
            Some(end) if complete && end <= bytes.len() => {
                ends.push(end);
                at = end;
            }
            _ => break,
        }
    }
    ends
}

impl StoredDoc {
    /// A new document, written whole (on disk before this returns if `durability` is `Now`).
    pub fn create(
        dir: &Path,
        id: DocId,
        mut doc: AutoCommit,
        durability: Durability,
    ) -> Result<Self> {
        let path = path_of(dir, id);
        durable::write_replace(&path, &doc.save(), durability)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let saved = doc.get_heads();
        Ok(StoredDoc {
            doc,
            path,
            saved,
            appends: 0,
        })
    }

    /// A document that arrived whole as `bytes` (a standard Automerge file, already loaded into
    /// `doc`): the bytes are written as they came.
    pub fn adopt(
        dir: &Path,
        id: DocId,
        mut doc: AutoCommit,
        bytes: &[u8],
        durability: Durability,
    ) -> Result<Self> {
        let path = path_of(dir, id);
        durable::write_replace(&path, bytes, durability)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let saved = doc.get_heads();
        Ok(StoredDoc {
            doc,
            path,
            saved,
            appends: chunk_ends(bytes).len().saturating_sub(1),
        })
    }

    /// Loads the file at `path`, cutting off a torn last chunk. An error means the file is
    /// unreadable (see [`quarantine`]).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let ends = chunk_ends(&bytes);
        // The whole file, or all but a last chunk that a crash left half-written.
        let tries = [
            ends.last(),
            ends.len().checked_sub(2).and_then(|i| ends.get(i)),
        ];
        let mut last_error = None;
        for &end in tries.iter().flatten() {
            match AutoCommit::load(&bytes[..*end]) {
                Ok(mut doc) => {
                    let appends = ends
                        .iter()
                        .take_while(|e| *e <= end)
                        .count()
                        .saturating_sub(1);
                    if *end < bytes.len() {
                        tracing::warn!(
                            file = %path.display(),
                            kept = end,
                            dropped = bytes.len() - end,
                            "history file ended in a torn write; cut it off"
                        );
                        let f = OpenOptions::new().write(true).open(path)?;
                        f.set_len(*end as u64)?;
                        f.sync_all()?;
                    }
                    doc.set_actor(automerge::ActorId::random());
                    let saved = doc.get_heads();
                    return Ok(StoredDoc {
                        doc,
                        path: path.to_owned(),
                        saved,
                        appends,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(e) => anyhow::anyhow!("{} is not a readable Automerge file: {e}", path.display()),
            None => anyhow::anyhow!("{} holds no Automerge data", path.display()),
        })
    }

    /// The document's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what changed since the last write (appended; fsynced before this returns if
    /// `durability` is `Now`); true when anything did.
    pub fn persist(&mut self, durability: Durability) -> Result<bool> {
        let bytes = self.doc.save_after(&self.saved);
        if bytes.is_empty() {
            return Ok(false);
        }
        if self.appends >= COMPACT_AFTER {
            durable::write_replace(&self.path, &self.doc.save(), durability)
                .with_context(|| format!("cannot write {}", self.path.display()))?;
            self.appends = 0;
        } else {
            let mut f = OpenOptions::new()
                .append(true)
                .open(&self.path)
                .with_context(|| format!("cannot open {}", self.path.display()))?;
            f.write_all(&bytes)
                .and_then(|()| match durability {
                    Durability::Now => f.sync_data(),
                    Durability::Soon => Ok(()),
                })
                .with_context(|| format!("cannot write {}", self.path.display()))?;
            self.appends += 1;
        }
        self.saved = self.doc.get_heads();
        Ok(true)
    }
}

/// Moves an unreadable file into `quarantine/` beside it, so the rest of the history loads and
/// the file stays for a person to look at.
pub fn quarantine(path: &Path) -> Result<PathBuf> {
    let dir = path
        .parent()
        .context("a history file has no folder")?
        .join("quarantine");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().context("a history file has no name")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let to = dir.join(format!("{}.{stamp}", name.to_string_lossy()));
    fs::rename(path, &to).with_context(|| format!("cannot move {}", path.display()))?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::history::{self, Id, NewMessage, Status};

    fn note(doc: &mut AutoCommit, text: &str, created: i64) {
        history::add_message(
            doc,
            &NewMessage {
                role: "user".into(),
                text: text.into(),
                author: "dev".into(),
                created,
                parent: None,
                model: "m".into(),
                status: Status::Done,
            },
        )
        .unwrap();
    }

    fn texts(doc: &AutoCommit) -> Vec<String> {
        history::messages(doc).into_iter().map(|m| m.text).collect()
    }

    #[test]
    fn reload_edit_save_incrementally_reload_keeps_every_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocId::Conversation(Id::random());
        let mut s =
            StoredDoc::create(dir.path(), id, history::new_doc(id), Durability::Now).unwrap();
        note(&mut s.doc, "one", 1);
        assert!(s.persist(Durability::Now).unwrap());
        assert!(
            !s.persist(Durability::Now).unwrap(),
            "nothing new, nothing written"
        );
        let path = path_of(dir.path(), id);
        let mut again = StoredDoc::load(&path).unwrap();
        assert_eq!(texts(&again.doc), ["one"]);
        let size = fs::metadata(&path).unwrap().len();
        note(&mut again.doc, "two", 2);
        again.persist(Durability::Now).unwrap();
        // Only the new change was appended, not the loaded ones again.
        let grown = fs::metadata(&path).unwrap().len() - size;
        assert!(grown < size, "appended {grown} bytes to a {size}-byte file");
        let third = StoredDoc::load(&path).unwrap();
        assert_eq!(texts(&third.doc), ["one", "two"]);
        // The file is a standard Automerge file.
        let plain = AutoCommit::load(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(texts(&plain), ["one", "two"]);
    }

    #[test]
    fn a_torn_append_is_cut_off_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocId::Conversation(Id::random());
        let mut s =
            StoredDoc::create(dir.path(), id, history::new_doc(id), Durability::Now).unwrap();
        note(&mut s.doc, "kept", 1);
        s.persist(Durability::Now).unwrap();
        let path = path_of(dir.path(), id);
        let good = fs::read(&path).unwrap();
        note(&mut s.doc, "torn", 2);
        s.persist(Durability::Now).unwrap();
        let full = fs::read(&path).unwrap();
        for cut in [good.len() + 1, good.len() + 12, full.len() - 1] {
            fs::write(&path, &full[..cut]).unwrap();
            let back = StoredDoc::load(&path).unwrap();
            assert_eq!(texts(&back.doc), ["kept"], "cut at {cut}");
            assert_eq!(fs::read(&path).unwrap(), good, "the torn bytes are gone");
        }
    }

    #[test]
    fn many_appends_are_compacted_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocId::Index;
        let mut s =
            StoredDoc::create(dir.path(), id, history::new_doc(id), Durability::Now).unwrap();
        for i in 0..(COMPACT_AFTER as i64 + 5) {
            history::add_conversation(&mut s.doc, Id::random(), "t", i).unwrap();
            s.persist(Durability::Now).unwrap();
        }
        assert!(s.appends < COMPACT_AFTER);
        let back = StoredDoc::load(&path_of(dir.path(), id)).unwrap();
        assert_eq!(history::summaries(&back.doc).len(), COMPACT_AFTER + 5);
        let junk = dir.path().join("junk.automerge");
        fs::write(&junk, b"not automerge at all").unwrap();
        assert!(StoredDoc::load(&junk).is_err());
        let moved = quarantine(&junk).unwrap();
        assert!(moved.starts_with(dir.path().join("quarantine")) && !junk.exists());
    }
}
