//! Arbitrary bytes as a `SyncFrame` frame body: no panic, and what decodes round-trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    hearth_fuzz::round_trip::<hearth_protocol::SyncFrame>(body);
});
