//! Arbitrary text as a join code: no panic, and a code that parses names a secret whose own join
//! code parses back to it.
#![no_main]

use hearth_protocol::HouseholdSecret;

libfuzzer_sys::fuzz_target!(|code: &str| {
    if let Ok(secret) = HouseholdSecret::from_join_code(code) {
        assert_eq!(
            HouseholdSecret::from_join_code(&secret.join_code()),
            Ok(secret)
        );
    }
});
