//! Arbitrary bytes as `BlobRequest` and `BlobFrame` frame bodies: no panic, what decodes
//! round-trips; decoded frames fed to a manifest reader (as a requester takes a holder's pages)
//! and chunks checked against a manifest never panic, and a stored manifest read from the bytes
//! round-trips.
#![no_main]

use hearth_protocol::blob::{Manifest, ManifestBuilder};
use hearth_protocol::{decode, BlobFrame, BlobRequest, ManifestReader};

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    hearth_fuzz::round_trip::<BlobRequest>(body);
    hearth_fuzz::round_trip::<BlobFrame>(body);
    if let Some(m) = Manifest::from_bytes(body) {
        assert_eq!(Manifest::from_bytes(&m.to_bytes()), Some(m));
    }
    let mut known = ManifestBuilder::new(64);
    known.update(&body[..body.len().min(300)]);
    let known = known.finish();
    // The input cut in two: each half a frame a holder might send.
    let (a, b) = body.split_at(body.len() / 2);
    let mut reader = ManifestReader::default();
    for part in [a, b] {
        match decode::<BlobFrame>(part) {
            Ok(BlobFrame::Chunk { index, bytes }) => {
                let _ = known.verify_chunk(index, &bytes);
            }
            Ok(frame) => {
                if let Ok(Some(m)) = reader.push(frame) {
                    m.check().expect("a manifest the reader finished is consistent");
                    let _ = m.chunks_of(0..u64::MAX);
                }
            }
            Err(_) => {}
        }
    }
});
