//! `hearth peers` and `hearth route`: the household's nodes as the local node sees them, and
//! where a request for a model would run.

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
        "{:<16} {:<10} {:>8} {:>6} {:>5} {:>11}  {:<28} {:<30} DEVICES",
        "NODE", "PEER", "LATENCY", "QUEUE", "JOBS", "KV MB", "MODELS (* loaded)", "TOKENS/S"
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
                // Loaded models are starred; on a GPU, with the adapter (and the layers there
                // when the rest run on the CPU).
                let on = card["placements"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["digest"] == d && p["gpu_layers"].as_u64().unwrap_or(0) > 0)
                    .map(|p| {
                        let device = p["device"].as_str().unwrap_or("gpu");
                        let gpu = device.split(' ').next().unwrap_or(device);
                        match (p["gpu_layers"].as_u64(), p["layers"].as_u64()) {
                            (Some(g), Some(l)) if g < l => format!("@{gpu}({g}/{l})"),
                            _ => format!("@{gpu}"),
                        }
                    })
                    .unwrap_or_default();
                format!(
                    "{}{}{on}",
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
                let name = match d["adapter"]["index"].as_u64() {
                    Some(i) => format!("gpu:{i} {}", d["name"].as_str().unwrap_or("?")),
                    None => d["name"].as_str().unwrap_or("?").to_owned(),
                };
                match d["total_memory"].as_f64().unwrap_or(0.0) {
                    0.0 => name,
                    total => format!(
                        "{name}{cores} {:.0}/{:.0} MB free",
                        d["free_memory"].as_f64().unwrap_or(0.0) / MB,
                        total / MB
                    ),
                }
            })
            .collect();
        let latency = if p["this_node"].as_bool() == Some(true) {
            "(here)".to_owned()
        } else {
            p["latency_ms"]
                .as_f64()
                .map_or("?".into(), |l| format!("{l:.1} ms"))
        };
        // Keys and values reserved by running replies, of the node's budget for them.
        let kv = format!(
            "{:.0}/{:.0}",
            card["kv_reserved"].as_f64().unwrap_or(0.0) / MB,
            card["kv_budget"].as_f64().unwrap_or(0.0) / MB
        );
        println!(
            "{:<16} {:<10} {:>8} {:>6} {:>5} {:>11}  {:<28} {:<30} {}",
            card["name"].as_str().unwrap_or("?"),
            short,
            latency,
            card["queue_depth"].as_u64().unwrap_or(0),
            card["active_jobs"].as_u64().unwrap_or(0),
            kv,
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

/// Percent-encodes a query value (names are plain, but a user may type anything).
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) fn route(
    data: &DataDir,
    model: &str,
    split: Option<u32>,
    stages: Option<&str>,
    json: bool,
) -> Result<()> {
    let node = LocalNode::find(data)
        .context("no hearth node is running here; start one with `hearth node`")?;
    let mut path = format!("/api/route?model={}", query_value(model));
    if let Some(n) = split {
        path.push_str(&format!("&split={n}"));
    }
    if let Some(s) = stages {
        path.push_str(&format!("&stages={}", query_value(s)));
    }
    let route = node.get(&path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&route)?);
        return Ok(());
    }
    let name = route["model"]["info"]["name"].as_str().unwrap_or(model);
    let ranked = route["ranked"].as_array().cloned().unwrap_or_default();
    let split_plan = &route["split"];
    if split_plan["status"] == "planned" {
        let stages = split_plan["stages"].as_array().cloned().unwrap_or_default();
        println!(
            "{name}: split over {} nodes, about {:.1} tokens/s",
            stages.len(),
            split_plan["tokens_per_s"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  {:<16} {:>10} {:<16} {:>10} {:>10} {:>9}",
            "NODE", "LAYERS", "HOLDS", "MEMORY", "FREE", "MS/TOKEN"
        );
        for s in &stages {
            let holds: Vec<&str> = [("embedding", "embedding"), ("head", "head")]
                .iter()
                .filter(|(k, _)| s[*k] == true)
                .map(|(_, v)| *v)
                .collect();
            println!(
                "  {:<16} {:>10} {:<16} {:>7.0} MB {:>7.0} MB {:>9.1}",
                s["node"].as_str().unwrap_or("?"),
                format!("{}..{}", s["start"], s["end"]),
                holds.join("+"),
                s["memory"].as_f64().unwrap_or(0.0) / MB,
                s["memory_free"].as_f64().unwrap_or(0.0) / MB,
                s["ms_per_token"].as_f64().unwrap_or(0.0),
            );
        }
        for r in split_plan["reasons"].as_array().into_iter().flatten() {
            println!("  - {}", r.as_str().unwrap_or(""));
        }
    } else if let Some(best) = ranked.first() {
        println!("{name}: whole on {}", best["node"].as_str().unwrap_or("?"));
        for r in &ranked {
            let reasons: Vec<&str> = r["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "  {:<16} {}",
                r["node"].as_str().unwrap_or("?"),
                reasons.join(", ")
            );
        }
    } else {
        println!("{name}: no node can serve it now");
        if split_plan["status"] == "impossible" {
            for r in split_plan["reasons"].as_array().into_iter().flatten() {
                println!("  - {}", r.as_str().unwrap_or(""));
            }
        }
    }
    for r in route["rejected"].as_array().into_iter().flatten() {
        println!(
            "  not {}: {}",
            r["node"].as_str().unwrap_or("?"),
            r["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
