//! Arbitrary bytes in arbitrary chunks through a `FrameBuffer`, each body decoded as a `JobEvent`:
//! no panic, and the buffer never holds more than one maximal frame.
#![no_main]

use hearth_protocol::frame::HEADER;
use hearth_protocol::{decode, FrameBuffer, FrameError, JobEvent, MAX_FRAME};

// `cuts` are the chunk sizes (cycled) in which `bytes` arrive, as reads off a socket would.
libfuzzer_sys::fuzz_target!(|input: (Vec<u8>, &[u8])| {
    let (cuts, mut bytes) = input;
    let mut fb = FrameBuffer::default();
    for &cut in cuts.iter().chain(&[u8::MAX]).cycle() {
        if bytes.is_empty() {
            break;
        }
        let (chunk, rest) = bytes.split_at((cut as usize).min(bytes.len()));
        bytes = rest;
        fb.extend(chunk);
        loop {
            match fb.next_body() {
                Ok(Some(body)) => {
                    assert!(body.len() <= MAX_FRAME);
                    let _ = decode::<JobEvent>(&body);
                }
                Ok(None) => break,
                // A reader drops the connection here; nothing more is read into this buffer.
                Err(FrameError::TooLarge(len)) => return assert!(len > MAX_FRAME),
                Err(e) => panic!("framing only fails on size, got {e}"),
            }
        }
        assert!(
            fb.pending() < HEADER + MAX_FRAME,
            "{} bytes pending",
            fb.pending()
        );
    }
});
