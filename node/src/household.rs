//! The household this node belongs to, as stored in the data directory: the secret (kept as its
//! join code) and the peer ids the household has revoked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hearth_protocol::HouseholdSecret;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::durable;

/// What `household.toml` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    code: String,
    #[serde(default)]
    revoked: BTreeSet<String>,
}

/// This node's household.
#[derive(Debug, Clone)]
pub struct Household {
    path: PathBuf,
    pub secret: HouseholdSecret,
    /// Peers refused even though they may still hold the secret.
    pub revoked: BTreeSet<PeerId>,
}

/// What to tell a user whose node is in no household.
pub const NO_HOUSEHOLD: &str = "this node is in no household: run `hearth household init` on \
     the first device, then `hearth household join CODE` with the code it prints on every other";

impl Household {
    /// The household file under the data directory.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("household.toml")
    }

    /// Loads the household, `None` when this node has none.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let stored: Stored =
            toml::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
        let secret = HouseholdSecret::from_join_code(&stored.code)
            .with_context(|| format!("{} holds a bad join code", path.display()))?;
        let revoked = stored
            .revoked
            .iter()
            .map(|p| {
                p.parse().with_context(|| {
                    format!(
                        "{} lists {p:?} as revoked, which is not a peer id",
                        path.display()
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(Household {
            path: path.to_owned(),
            secret,
            revoked,
        }))
    }

    /// Loads the household or explains how to make one.
    pub fn require(path: &Path) -> Result<Self> {
        Self::load(path)?.context(NO_HOUSEHOLD)
    }

    /// Makes this node a member of the household `secret` (replacing another only with `force`).
    pub fn create(path: &Path, secret: HouseholdSecret, force: bool) -> Result<Self> {
        if let Some(old) = Self::load(path)? {
            if old.secret == secret {
                return Ok(old);
            }
            if !force {
                bail!(
                    "this node is already in household {}; `hearth household show` prints its \
                     join code, and --force replaces it",
                    old.secret.fingerprint()
                );
            }
        }
        let household = Household {
            path: path.to_owned(),
            secret,
            revoked: BTreeSet::new(),
        };
        household.save()?;
        Ok(household)
    }

    /// Adds revoked peers; returns those that were new. Saves when anything changed.
    pub fn revoke(&mut self, peers: impl IntoIterator<Item = PeerId>) -> Result<Vec<PeerId>> {
        let added: Vec<PeerId> = peers
            .into_iter()
            .filter(|p| self.revoked.insert(*p))
            .collect();
        if !added.is_empty() {
            self.save()?;
        }
        Ok(added)
    }

    fn save(&self) -> Result<()> {
        let stored = Stored {
            code: self.secret.join_code(),
            revoked: self.revoked.iter().map(PeerId::to_string).collect(),
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = toml::to_string(&stored).context("cannot encode the household")?;
        durable::write_private(&self.path, text.as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_join_revoke_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let p = Household::path_in(dir.path());
        assert!(Household::load(&p).unwrap().is_none());
        assert!(Household::require(&p)
            .unwrap_err()
            .to_string()
            .contains("household init"));
        let a = HouseholdSecret::from_bytes([1; 32]);
        let mut h = Household::create(&p, a.clone(), false).unwrap();
        let (p1, p2) = (PeerId::random(), PeerId::random());
        assert_eq!(h.revoke([p1, p2]).unwrap().len(), 2);
        assert_eq!(h.revoke([p1]).unwrap().len(), 0);
        let again = Household::load(&p).unwrap().unwrap();
        assert_eq!(again.secret, a);
        assert_eq!(again.revoked, [p1, p2].into_iter().collect());
        // Joining another household needs --force.
        let b = HouseholdSecret::from_bytes([2; 32]);
        assert!(Household::create(&p, b.clone(), false).is_err());
        assert_eq!(Household::create(&p, b.clone(), true).unwrap().secret, b);
    }
}
