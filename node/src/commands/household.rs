//! `hearth household`: create, join, show, and revoke devices.

use anyhow::{bail, Result};
use hearth_protocol::HouseholdSecret;
use serde_json::json;

use crate::cli::HouseholdCommand;
use crate::client::LocalNode;
use crate::data_dir::DataDir;
use crate::household::Household;

pub(super) fn household(data: &DataDir, cmd: HouseholdCommand) -> Result<()> {
    let path = Household::path_in(data.root());
    match cmd {
        HouseholdCommand::Init { force } => {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            let h = Household::create(&path, HouseholdSecret::from_bytes(bytes), force)?;
            println!(
                "Household {} created. On every other device, run:\n",
                h.secret.fingerprint()
            );
            println!("    hearth household join {}\n", h.secret.join_code());
            println!("Keep the code private: it admits a device to the household.");
        }
        HouseholdCommand::Join { code, force } => {
            let secret = HouseholdSecret::from_join_code(&code)?;
            let h = Household::create(&path, secret, force)?;
            println!(
                "Joined household {}. Start (or restart) `hearth node` to connect.",
                h.secret.fingerprint()
            );
        }
        HouseholdCommand::Show => {
            let h = Household::require(&path)?;
            println!("household   {}", h.secret.fingerprint());
            println!("join code   {}", h.secret.join_code());
            if h.revoked.is_empty() {
                println!("revoked     (none)");
            }
            for r in &h.revoked {
                println!("revoked     {r}");
            }
        }
        HouseholdCommand::Remove { peers } => {
            if peers.is_empty() {
                bail!("name the device to remove: hearth household remove PEER_ID_OR_NAME");
            }
            // A running node applies it at once and spreads it to the other devices.
            if let Some(node) = LocalNode::find(data) {
                let answer = node.post("/api/revoke", &json!({ "peers": peers }))?;
                for id in answer["revoked"].as_array().into_iter().flatten() {
                    println!("revoked {}", id.as_str().unwrap_or_default());
                }
                return Ok(());
            }
            let mut h = Household::require(&path)?;
            let ids = peers
                .iter()
                .map(|p| {
                    p.parse::<libp2p::PeerId>().map_err(|_| {
                        anyhow::anyhow!(
                            "{p} is not a peer id; start `hearth node` to remove devices by name"
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            h.revoke(ids.iter().copied())?;
            for p in &ids {
                println!("revoked {p} (other devices learn it when this node next runs)");
            }
        }
    }
    Ok(())
}
