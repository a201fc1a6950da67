//! History sync frames. After their hellos, both sides list the documents they hold; a document
//! the other side lacks goes over whole (its Automerge file), and every other document is kept in
//! step with Automerge sync messages. Files and messages are cut into parts that fit a frame, so
//! a large history never needs one huge frame and never holds up other streams on the same
//! connection for long.

use serde::{Deserialize, Serialize};

/// Bytes of an Automerge sync message per frame.
pub const MAX_SYNC_PART: usize = 256 << 10;
/// Largest sync message reassembled from parts (64 MiB); beyond it the stream is refused.
pub const MAX_SYNC_MESSAGE: usize = 64 << 20;

/// Document ids per inventory frame.
pub const INVENTORY_CHUNK: usize = 4096;

/// One frame of the sync protocol; both sides send them whenever they have something to say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncFrame {
    /// The first frame each side sends: its [`crate::PROTOCOL_VERSION`].
    Hello { version: u32 },
    /// The documents the sender holds (see [`crate::history::DocId`]), in frames of at most
    /// [`INVENTORY_CHUNK`]; `last` ends the list.
    Inventory { docs: Vec<String>, last: bool },
    /// A part of one payload about document `doc`; `last` marks the payload's final part.
    Part {
        doc: String,
        kind: PartKind,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        last: bool,
    },
}

/// What a payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartKind {
    /// An Automerge sync message.
    Sync,
    /// A whole Automerge document, for a peer that lacks it.
    Document,
}

/// Why a stream of parts was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncFrameError {
    #[error("a sync message of more than {MAX_SYNC_MESSAGE} bytes")]
    TooLarge,
    #[error("a part for {got} arrived in the middle of a payload for {open}")]
    Interleaved { open: String, got: String },
    #[error("a part of {0} bytes, more than {MAX_SYNC_PART}")]
    PartTooLarge(usize),
}

/// Cuts a payload about `doc` into frames.
pub fn parts(doc: &str, kind: PartKind, message: &[u8]) -> Vec<SyncFrame> {
    let chunks: Vec<&[u8]> = if message.is_empty() {
        vec![&[]]
    } else {
        message.chunks(MAX_SYNC_PART).collect()
    };
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| SyncFrame::Part {
            doc: doc.to_owned(),
            kind,
            bytes: c.to_vec(),
            last: i + 1 == n,
        })
        .collect()
}

/// A payload put back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub doc: String,
    pub kind: PartKind,
    pub bytes: Vec<u8>,
}

/// Puts parts back together; one payload at a time per stream, bounded in size.
#[derive(Debug, Default)]
pub struct Reassembler {
    open: Option<Payload>,
}

impl Reassembler {
    /// Takes one part; returns the payload it completes, if it does.
    pub fn push(
        &mut self,
        doc: String,
        kind: PartKind,
        bytes: Vec<u8>,
        last: bool,
    ) -> Result<Option<Payload>, SyncFrameError> {
        if bytes.len() > MAX_SYNC_PART {
            return Err(SyncFrameError::PartTooLarge(bytes.len()));
        }
        let mut open = match self.open.take() {
            Some(p) if p.doc != doc || p.kind != kind => {
                return Err(SyncFrameError::Interleaved {
                    open: p.doc,
                    got: doc,
                })
            }
            Some(p) => p,
            None => Payload {
                doc,
                kind,
                bytes: Vec::new(),
            },
        };
        if open.bytes.len() + bytes.len() > MAX_SYNC_MESSAGE {
            return Err(SyncFrameError::TooLarge);
        }
        open.bytes.extend_from_slice(&bytes);
        if last {
            Ok(Some(open))
        } else {
            self.open = Some(open);
            Ok(None)
        }
    }
}

/// Cuts a list of documents into inventory frames (one, empty, for no documents).
pub fn inventory(docs: &[String]) -> Vec<SyncFrame> {
    if docs.is_empty() {
        return vec![SyncFrame::Inventory {
            docs: Vec::new(),
            last: true,
        }];
    }
    let n = docs.len().div_ceil(INVENTORY_CHUNK);
    docs.chunks(INVENTORY_CHUNK)
        .enumerate()
        .map(|(i, c)| SyncFrame::Inventory {
            docs: c.to_vec(),
            last: i + 1 == n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut Reassembler, frames: Vec<SyncFrame>) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for f in frames {
            if let SyncFrame::Part {
                doc,
                kind,
                bytes,
                last,
            } = f
            {
                out.extend(
                    r.push(doc, kind, bytes, last)
                        .unwrap()
                        .map(|p| (p.doc, p.bytes)),
                );
            }
        }
        out
    }

    #[test]
    fn messages_are_cut_into_bounded_frames_and_put_back_together() {
        let big: Vec<u8> = (0..MAX_SYNC_PART * 2 + 5).map(|i| i as u8).collect();
        let frames = parts("index", PartKind::Sync, &big);
        assert_eq!(frames.len(), 3);
        for f in &frames {
            assert!(crate::encode(f).unwrap().len() <= crate::MAX_FRAME);
        }
        let mut r = Reassembler::default();
        assert_eq!(feed(&mut r, frames), [("index".to_owned(), big)]);
        assert_eq!(
            feed(&mut r, parts("d", PartKind::Document, &[])),
            [("d".to_owned(), vec![])]
        );
        let docs: Vec<String> = (0..INVENTORY_CHUNK + 1).map(|i| i.to_string()).collect();
        let frames = inventory(&docs);
        assert_eq!(frames.len(), 2);
        for f in &frames {
            assert!(crate::encode(f).unwrap().len() <= crate::MAX_FRAME);
        }
        assert_eq!(inventory(&[]).len(), 1);
    }

    #[test]
    fn interleaved_and_oversized_parts_are_refused() {
        let sync = PartKind::Sync;
        let mut r = Reassembler::default();
        assert_eq!(r.push("a".into(), sync, vec![1], false), Ok(None));
        assert!(matches!(
            r.push("b".into(), sync, vec![2], true),
            Err(SyncFrameError::Interleaved { .. })
        ));
        let mut r = Reassembler::default();
        assert_eq!(r.push("a".into(), sync, vec![1], false), Ok(None));
        assert!(r
            .push("a".into(), PartKind::Document, vec![2], true)
            .is_err());
        let mut r = Reassembler::default();
        assert!(r
            .push("a".into(), sync, vec![0; MAX_SYNC_PART + 1], true)
            .is_err());
        let mut r = Reassembler::default();
        let part = vec![0; MAX_SYNC_PART];
        let mut refused = false;
        for _ in 0..=(MAX_SYNC_MESSAGE / MAX_SYNC_PART) {
            if r.push("a".into(), sync, part.clone(), false).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
