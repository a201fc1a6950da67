//! History sync frames: Automerge sync messages for one document each, cut into parts that fit a
//! frame, so a large history never needs one huge frame and never holds up other streams on the
//! same connection for long.

use serde::{Deserialize, Serialize};

/// Bytes of an Automerge sync message per frame.
pub const MAX_SYNC_PART: usize = 256 << 10;
/// Largest sync message reassembled from parts (64 MiB); beyond it the stream is refused.
pub const MAX_SYNC_MESSAGE: usize = 64 << 20;

/// One frame of the sync protocol; both sides send them whenever they have something to say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncFrame {
    /// The first frame each side sends: its [`crate::PROTOCOL_VERSION`].
    Hello { version: u32 },
    /// A part of one Automerge sync message about document `doc` (see
    /// [`crate::history::DocId`]); `last` marks the message's final part.
    Part {
        doc: String,
        bytes: Vec<u8>,
        last: bool,
    },
}

/// Why a stream of parts was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncFrameError {
    #[error("a sync message of more than {MAX_SYNC_MESSAGE} bytes")]
    TooLarge,
    #[error("a part for {got} arrived in the middle of a message for {open}")]
    Interleaved { open: String, got: String },
    #[error("a part of {0} bytes, more than {MAX_SYNC_PART}")]
    PartTooLarge(usize),
}

/// Cuts a sync message about `doc` into frames.
pub fn parts(doc: &str, message: &[u8]) -> Vec<SyncFrame> {
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
            bytes: c.to_vec(),
            last: i + 1 == n,
        })
        .collect()
}

/// Puts parts back together; one message at a time per stream, bounded in size.
#[derive(Debug, Default)]
pub struct Reassembler {
    open: Option<(String, Vec<u8>)>,
}

impl Reassembler {
    /// Takes one part; returns `(doc, message)` when it completes a message.
    pub fn push(
        &mut self,
        doc: String,
        bytes: Vec<u8>,
        last: bool,
    ) -> Result<Option<(String, Vec<u8>)>, SyncFrameError> {
        if bytes.len() > MAX_SYNC_PART {
            return Err(SyncFrameError::PartTooLarge(bytes.len()));
        }
        let (open_doc, mut buf) = match self.open.take() {
            Some((d, _)) if d != doc => {
                return Err(SyncFrameError::Interleaved { open: d, got: doc })
            }
            Some((d, buf)) => (d, buf),
            None => (doc, Vec::new()),
        };
        if buf.len() + bytes.len() > MAX_SYNC_MESSAGE {
            return Err(SyncFrameError::TooLarge);
        }
        buf.extend_from_slice(&bytes);
        if last {
            Ok(Some((open_doc, buf)))
        } else {
            self.open = Some((open_doc, buf));
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut Reassembler, frames: Vec<SyncFrame>) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for f in frames {
            if let SyncFrame::Part { doc, bytes, last } = f {
                out.extend(r.push(doc, bytes, last).unwrap());
            }
        }
        out
    }

    #[test]
    fn messages_are_cut_into_bounded_frames_and_put_back_together() {
        let big: Vec<u8> = (0..MAX_SYNC_PART * 2 + 5).map(|i| i as u8).collect();
        let frames = parts("index", &big);
        assert_eq!(frames.len(), 3);
        for f in &frames {
            assert!(crate::encode(f).unwrap().len() <= crate::MAX_FRAME);
        }
        let mut r = Reassembler::default();
        assert_eq!(feed(&mut r, frames), [("index".to_owned(), big)]);
        assert_eq!(feed(&mut r, parts("d", &[])), [("d".to_owned(), vec![])]);
    }

    #[test]
    fn interleaved_and_oversized_parts_are_refused() {
        let mut r = Reassembler::default();
        assert_eq!(r.push("a".into(), vec![1], false), Ok(None));
        assert!(matches!(
            r.push("b".into(), vec![2], true),
            Err(SyncFrameError::Interleaved { .. })
        ));
        let mut r = Reassembler::default();
        assert!(r
            .push("a".into(), vec![0; MAX_SYNC_PART + 1], true)
            .is_err());
        let mut r = Reassembler::default();
        let part = vec![0; MAX_SYNC_PART];
        let mut refused = false;
        for _ in 0..=(MAX_SYNC_MESSAGE / MAX_SYNC_PART) {
            if r.push("a".into(), part.clone(), false).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
