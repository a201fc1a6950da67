//! Checks shared by the fuzz targets in `fuzz_targets/`.

use hearth_protocol::frame::HEADER;
use hearth_protocol::{decode, encode, MAX_FRAME};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `body` as a `T`; whatever decodes must re-encode to bytes that decode to a message
/// encoding to the same bytes. Bytes are compared, not values, because a decoded f32 may be NaN
/// and NaN != NaN.
pub fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) {
    // A FrameBuffer never hands a decoder more than MAX_FRAME bytes.
    if body.len() > MAX_FRAME {
        return;
    }
    let Ok(msg) = decode::<T>(body) else { return };
    let frame = encode(&msg).expect("a decoded message re-encodes");
    // postcard's encoding is minimal, so a message never grows on the way back out; a larger
    // re-encoding would mean the decoder accepted something the encoder cannot express.
    assert!(
        frame.len() - HEADER <= body.len(),
        "re-encoding grew the message"
    );
    let again: T = decode(&frame[HEADER..]).expect("a re-encoded message decodes");
    assert_eq!(encode(&again).unwrap(), frame, "re-encoding is not stable");
}
