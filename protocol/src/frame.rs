//! Length-prefixed frames: a 4-byte little-endian length, then a postcard-encoded message. The
//! length is checked against [`MAX_FRAME`] before anything is allocated for the body.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame body accepted or sent (1 MiB): a card with hundreds of models or a prompt of
/// tens of thousands of tokens fits; anything larger is an error, not an allocation.
pub const MAX_FRAME: usize = 1 << 20;

/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The body is not a valid message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes `msg` as one frame (length prefix + body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER];
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - HEADER;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    out[..HEADER].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Reads a length prefix; errors when it exceeds [`MAX_FRAME`].
pub fn body_len(header: [u8; HEADER]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one frame body (without its length prefix). Trailing bytes are an error: a frame
/// holds exactly one message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Collects bytes as they arrive and yields whole frame bodies: the sans-I/O half of a reader.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
}

impl FrameBuffer {
    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame body, `None` until one has fully arrived; an oversized length prefix
    /// is an error as soon as its four bytes are in, before its body is buffered.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(header) = self.buf.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        let len = body_len(*header)?;
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let body = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some(body))
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Finish, JobEvent, Usage};

    #[test]
    fn frames_round_trip_through_a_buffer_fed_byte_by_byte() {
        let events = [
            JobEvent::Token {
                id: 7,
                text: "hé".into(),
            },
            JobEvent::Done {
                finish: Finish::Length,
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 1,
                    cached_tokens: 2,
                },
            },
        ];
        let bytes: Vec<u8> = events.iter().flat_map(|e| encode(e).unwrap()).collect();
        let mut fb = FrameBuffer::default();
        let mut got = Vec::new();
        for b in bytes {
            fb.extend(&[b]);
            while let Some(body) = fb.next_body().unwrap() {
                got.push(decode::<JobEvent>(&body).unwrap());
            }
        }
        assert_eq!(got, events);
        assert_eq!(fb.pending(), 0);
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_body_arrives() {
        let mut fb = FrameBuffer::default();
        fb.extend(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert_eq!(fb.next_body(), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        assert!(body_len(u32::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed_not_panics() {
        assert!(decode::<JobEvent>(&[0xff, 0xff, 0xff]).is_err());
        let mut body = encode(&JobEvent::Busy {
            reason: "full".into(),
        })
        .unwrap();
        body.push(0);
        assert!(matches!(
            decode::<JobEvent>(&body[HEADER..]),
            Err(FrameError::Malformed(_))
        ));
    }
}
