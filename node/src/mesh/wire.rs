//! Frames over a libp2p stream: the async half of `hearth_protocol::frame`.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hearth_protocol::frame::{body_len, HEADER};
use hearth_protocol::{decode, encode};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Writes one message as a frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> io::Result<()> {
    w.write_all(&encode(msg).map_err(invalid)?).await?;
    w.flush().await
}

/// Reads one frame; `None` when the stream ends cleanly between frames. Oversized, truncated or
/// malformed frames are errors; nothing larger than the frame limit is allocated.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> io::Result<Option<T>> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let len = body_len(header).map_err(invalid)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(&body).map(Some).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use hearth_protocol::{JobEvent, MAX_FRAME};

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_errors() {
        let mut buf = Cursor::new(Vec::new());
        let ev = JobEvent::Tail { text: "bye".into() };
        write_frame(&mut buf, &ev).await.unwrap();
        let bytes = buf.into_inner();
        let mut r = Cursor::new(bytes.clone());
        assert_eq!(read_frame::<_, JobEvent>(&mut r).await.unwrap(), Some(ev));
        assert_eq!(read_frame::<_, JobEvent>(&mut r).await.unwrap(), None);
        let mut cut = Cursor::new(bytes[..bytes.len() - 1].to_vec());
        assert!(read_frame::<_, JobEvent>(&mut cut).await.is_err());
        let mut huge = Cursor::new((MAX_FRAME as u32 + 1).to_le_bytes().to_vec());
        assert!(read_frame::<_, JobEvent>(&mut huge).await.is_err());
    }
}
