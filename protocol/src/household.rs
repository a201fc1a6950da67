//! The household secret and what is derived from it: the join code people type or paste, the
//! pre-shared key that admits a connection, and a public fingerprint for discovery. Every
//! derivation is a one-way hash with its own label, so neither the fingerprint nor the key tells
//! anything about the secret or about each other.

use data_encoding::BASE32_NOPAD;
use sha2::{Digest, Sha256};

/// Prefix of every join code.
const CODE_PREFIX: &str = "hearth-";
/// Checksum bytes appended to the secret in a join code (catches typos).
const CHECK: usize = 2;

/// A household's shared secret: 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct HouseholdSecret([u8; 32]);

impl std::fmt::Debug for HouseholdSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HouseholdSecret(fingerprint {})", self.fingerprint())
    }
}

/// Why a join code was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinCodeError {
    #[error("a join code starts with \"{CODE_PREFIX}\"; copy it whole from `hearth household init` or `hearth household show`")]
    Prefix,
    #[error("the join code has characters that are not in a join code (letters a-z, digits 2-7)")]
    Alphabet,
    #[error("the join code is {0} characters too short or too long; copy it again")]
    Length(usize),
    #[error("the join code has a typo (its checksum does not match); copy it again")]
    Checksum,
}

fn labelled(label: &str, secret: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update(secret);
    h.finalize().into()
}

impl HouseholdSecret {
    /// A secret from 32 bytes the caller drew from a cryptographic random source.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        HouseholdSecret(bytes)
    }

    /// The secret's bytes (for storing it).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The join code: the secret and a checksum in lowercase base32, in groups of five.
    pub fn join_code(&self) -> String {
        let mut raw = self.0.to_vec();
        raw.extend_from_slice(&labelled("hearth join code check v1", &self.0)[..CHECK]);
        let b32 = BASE32_NOPAD.encode(&raw).to_ascii_lowercase();
        let groups: Vec<&str> = b32
            .as_bytes()
            .chunks(5)
            .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
            .collect();
        format!("{CODE_PREFIX}{}", groups.join("-"))
    }

    /// Parses a join code; spaces, dashes and case do not matter.
    pub fn from_join_code(code: &str) -> Result<Self, JoinCodeError> {
        let code = code.trim();
        let rest = code
            .get(..CODE_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(CODE_PREFIX))
            .map(|_| &code[CODE_PREFIX.len()..])
            .ok_or(JoinCodeError::Prefix)?;
        let cleaned: String = rest
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if !cleaned
            .chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        {
            return Err(JoinCodeError::Alphabet);
        }
        let want = BASE32_NOPAD.encode_len(32 + CHECK);
        if cleaned.len() != want {
            return Err(JoinCodeError::Length(cleaned.len().abs_diff(want)));
        }
        let raw = BASE32_NOPAD
            .decode(cleaned.as_bytes())
            .map_err(|_| JoinCodeError::Alphabet)?;
        let secret: [u8; 32] = raw[..32].try_into().expect("length checked");
        if raw[32..] != labelled("hearth join code check v1", &secret)[..CHECK] {
            return Err(JoinCodeError::Checksum);
        }
        Ok(HouseholdSecret(secret))
    }

    /// The public fingerprint announced over mDNS: 16 hex digits of a labelled hash.
    pub fn fingerprint(&self) -> String {
        labelled("hearth household fingerprint v1", &self.0)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The pre-shared key of the private network (libp2p pnet) that admits connections.
    pub fn network_key(&self) -> [u8; 32] {
        labelled("hearth household network key v1", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(n: u8) -> HouseholdSecret {
        HouseholdSecret::from_bytes([n; 32])
    }

    #[test]
    fn join_codes_round_trip_whatever_the_case_and_spacing() {
        let s = HouseholdSecret::from_bytes(std::array::from_fn(|i| i as u8 * 7));
        let code = s.join_code();
        assert!(code.starts_with("hearth-"));
        assert_eq!(HouseholdSecret::from_join_code(&code), Ok(s.clone()));
        let shouted = format!("  {} ", code.to_uppercase().replace('-', " - "));
        let shouted = shouted.replacen("HEARTH -", "HEARTH-", 1);
        assert_eq!(HouseholdSecret::from_join_code(&shouted), Ok(s));
    }

    #[test]
    fn typos_are_caught() {
        let code = secret(1).join_code();
        let mut typo = code.clone().into_bytes();
        let i = code.len() - 3;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(
            HouseholdSecret::from_join_code(&typo),
            Err(JoinCodeError::Checksum)
        );
        assert_eq!(
            HouseholdSecret::from_join_code(&code[..code.len() - 2]),
            Err(JoinCodeError::Length(2))
        );
        assert_eq!(
            HouseholdSecret::from_join_code("hello"),
            Err(JoinCodeError::Prefix)
        );
        assert_eq!(
            HouseholdSecret::from_join_code("hearth-abc1!"),
            Err(JoinCodeError::Alphabet)
        );
    }

    #[test]
    fn derived_values_differ_per_household_and_from_each_other() {
        let (a, b) = (secret(1), secret(2));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.network_key(), b.network_key());
        assert_eq!(a.fingerprint().len(), 16);
        assert!(!a.join_code().contains(&a.fingerprint()));
        assert_ne!(&a.network_key(), a.as_bytes());
    }
}
