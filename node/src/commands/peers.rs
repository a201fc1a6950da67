//! `hearth peers`: the household's nodes as the local node sees them.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::client::LocalNode;
use crate::data_dir::DataDir;

const MB: f64 = (1u64 << 20) as f64;

pub(super) fn peers(data: &DataDir, json: bool) -> Result<()> {
    let node = LocalNode::find(data)
        .context("no hearth node is running here; start one with `hearth node`")?;
    let peers = node.get("/api/peers")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:>8} {:>6} {:>5}  {:<28} {:<30} DEVICES",
        "NODE", "PEER", "LATENCY", "QUEUE", "JOBS", "MODELS (* loaded)", "TOKENS/S"
    );
    for p in peers.as_array().into_iter().flatten() {
        let card = &p["card"];
        let id = p["peer_id"].as_str().unwrap_or("");
        let short = &id[id.len().saturating_sub(8)..];
        let loaded: Vec<&str> = card["loaded"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let name_of = |digest: &str| {
            card["models"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["digest"] == digest)
                .and_then(|m| m["name"].as_str())
                .unwrap_or(&digest[..digest.len().min(8)])
                .to_owned()
        };
        let models: Vec<String> = card["models"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let d = m["digest"].as_str().unwrap_or("");
                format!(
                    "{}{}",
                    m["name"].as_str().unwrap_or("?"),
                    if loaded.contains(&d) { "*" } else { "" }
                )
            })
            .collect();
        let speeds: Vec<String> = card["speeds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                format!(
                    "{} {:.0}",
                    name_of(s["digest"].as_str().unwrap_or("")),
                    s["tokens_per_s"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let devices: Vec<String> = card["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let cores = d["cores"]
                    .as_u64()
                    .map(|c| format!(" {c} cores"))
                    .unwrap_or_default();
                format!(
                    "{}{cores} {:.0}/{:.0} MB free",
                    d["name"].as_str().unwrap_or("?"),
                    d["free_memory"].as_f64().unwrap_or(0.0) / MB,
                    d["total_memory"].as_f64().unwrap_or(0.0) / MB
                )
            })
            .collect();
        let latency = if p["this_node"].as_bool() == Some(true) {
            "(here)".to_owned()
        } else {
            p["latency_ms"]
                .as_f64()
                .map_or("?".into(), |l| format!("{l:.1} ms"))
        };
        println!(
            "{:<16} {:<10} {:>8} {:>6} {:>5}  {:<28} {:<30} {}",
            card["name"].as_str().unwrap_or("?"),
            short,
            latency,
            card["queue_depth"].as_u64().unwrap_or(0),
            card["active_jobs"].as_u64().unwrap_or(0),
            if models.is_empty() {
                "-".into()
            } else {
                models.join(", ")
            },
            if speeds.is_empty() {
                "-".into()
            } else {
                speeds.join(", ")
            },
            devices.join("; ")
        );
    }
    Ok(())
}
