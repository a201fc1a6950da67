//! Arbitrary bytes as a `StageFrame` frame body: no panic, what decodes round-trips, and the
//! checks a stage runs on a data frame (and the decoding of its rows) never panic.
#![no_main]

use hearth_protocol::stage::{decode_rows, Expect, Input};
use hearth_protocol::{decode, StageFrame, WireDtype};

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    hearth_fuzz::round_trip::<StageFrame>(body);
    let Ok(frame) = decode::<StageFrame>(body) else {
        return;
    };
    for (input, dtype) in [
        (Input::Tokens, WireDtype::F32),
        (Input::Hidden { dim: 576 }, WireDtype::F32),
        (Input::Hidden { dim: 640 }, WireDtype::F16),
    ] {
        let expect = Expect {
            session: 7,
            input,
            dtype,
            pos: 0,
            context: 512,
            vocab: 49152,
        };
        if let (Ok(rows), StageFrame::Hidden { data, dim, .. }) = (expect.check(&frame), &frame) {
            let mut out = Vec::new();
            decode_rows(data, dtype, &mut out);
            assert_eq!(out.len(), rows * *dim as usize);
        }
    }
});
