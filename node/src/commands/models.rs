//! `hearth models list|import|pull|remove`, and `import --scan` over other tools' model stores.

use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::ModelsCommand;
use crate::client::LocalNode;
use crate::data_dir::DataDir;
use crate::models::scan::{self, Found, Places};
use crate::models::{Imported, ModelCache, Store};

pub(super) fn models(data: &DataDir, cache: &ModelCache, cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::Pull { model, name } => pull(data, &model, name.as_deref()),
        ModelsCommand::List { json } => list(cache, json),
        ModelsCommand::Import {
            path: Some(path),
            name,
            sha256,
            ..
        } => import(
            cache,
            &path,
            name.as_deref(),
            sha256.as_deref(),
            Store::Copy,
        ),
        ModelsCommand::Import { all, pick, .. } => scan_and_import(cache, all, &pick),
        ModelsCommand::Pin { model } => pin(cache, &model, true),
        ModelsCommand::Unpin { model } => pin(cache, &model, false),
        ModelsCommand::Remove { model } => {
            let m = cache.remove(&model)?;
            println!("removed {} [{}]", m.name, &m.digest[..12]);
            Ok(())
        }
    }
}

/// Pins or unpins a cached model.
fn pin(cache: &ModelCache, model: &str, pin: bool) -> Result<()> {
    let m = cache.set_pinned(model, pin)?;
    if pin {
        println!(
            "pinned {} [{}]: it stays when the cache makes room",
            m.name,
            &m.digest[..12]
        );
    } else {
        println!("unpinned {} [{}]", m.name, &m.digest[..12]);
    }
    Ok(())
}

/// Pulls a model through the running node, with a progress bar (rate and ETA).
fn pull(data: &DataDir, model: &str, name: Option<&str>) -> Result<()> {
    let node = LocalNode::find(data).context(
        "no hearth node is running here: pulls go through it (it knows the household); start one with `hearth node`",
    )?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("pulling {model}"));
    let mut last = serde_json::Value::Null;
    node.events(
        "/api/models/pull",
        &serde_json::json!({"model": model, "name": name}),
        |p| {
            if let (Some(total), Some(done)) = (p["total"].as_u64(), p["completed"].as_u64()) {
                if bar.length() == Some(0) {
                    // What an earlier, interrupted pull left is not counted in the rate.
                    bar.set_length(total);
                    bar.set_position(done);
                    bar.reset_eta();
                }
                bar.set_position(done);
            }
            if p["status"] == "verifying" {
                bar.set_message("checking its SHA-256");
            }
            last = p.clone();
            p["status"] != "success" && p["status"] != "failed"
        },
    )?;
    bar.finish_and_clear();
    if last["status"] == "failed" || last.is_null() {
        bail!(
            "pulling {model} failed: {}",
            last["error"]
                .as_str()
                .unwrap_or("the node's stream ended early")
        );
    }
    let from: Vec<String> = last["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["bytes"].as_u64() > Some(0))
        .map(|p| {
            format!(
                "{} {} MB",
                p["node"].as_str().unwrap_or("?"),
                p["bytes"].as_u64().unwrap_or(0) >> 20
            )
        })
        .collect();
    let resumed = last["resumed"].as_u64().unwrap_or(0);
    if from.is_empty() && Some(resumed) == last["total"].as_u64() {
        println!(
            "{model} is in this node's cache already, as {}",
            last["name"].as_str().unwrap_or(model)
        );
        return Ok(());
    }
    println!(
        "pulled {model} as {} [{}]{}{}",
        last["name"].as_str().unwrap_or(model),
        last["digest"]
            .as_str()
            .map_or("", |d| d.get(..12).unwrap_or(d)),
        if from.is_empty() {
            String::new()
        } else {
            format!(" from {}", from.join(", "))
        },
        if resumed > 0 {
            format!(" ({} MB were here from an earlier pull)", resumed >> 20)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Imports one file, with a progress bar (rate and bytes) while it is read.
fn import(
    cache: &ModelCache,
    path: &Path,
    name: Option<&str>,
    sha256: Option<&str>,
    how: Store,
) -> Result<()> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("importing {}", path.display()));
    let result = cache.import(path, name, sha256, how, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let (m, how) = match result? {
        Imported::AlreadyPresent(m) => {
            println!(
                "{} is already cached as {} [{}]",
                path.display(),
                m.name,
                &m.digest[..12]
            );
            return Ok(());
        }
        Imported::Added(m) => (m, "imported"),
        Imported::Linked(m) => (m, "linked (no copy)"),
    };
    println!(
        "{how} {} ({}, {}) as {} [{}]",
        path.display(),
        m.summary.architecture,
        m.summary.quantization,
        m.name,
        &m.digest[..12]
    );
    Ok(())
}

/// Lists what other tools keep here; imports every supported file (`all`) or those picked.
fn scan_and_import(cache: &ModelCache, all: bool, pick: &[usize]) -> Result<()> {
    let found = scan::scan(&Places::of_this_device());
    if found.is_empty() {
        println!("no GGUF files in the Hugging Face hub cache, Ollama's store or LM Studio's models folder");
        return Ok(());
    }
    print_found(&found);
    let chosen: Vec<&Found> = if all {
        found.iter().filter(|f| f.supported()).collect()
    } else {
        let mut chosen = Vec::new();
        for &n in pick {
            let Some(f) = n.checked_sub(1).and_then(|i| found.get(i)) else {
                bail!(
                    "--pick {n}: the list has {} files, numbered from 1",
                    found.len()
                );
            };
            if let Err(why) = &f.model {
                bail!("--pick {n}: {} cannot run here: {why}", f.path.display());
            }
            chosen.push(f);
        }
        chosen
    };
    if chosen.is_empty() {
        println!(
            "\nimport them with --all (every supported one) or --pick N,N (hard links: no copies)"
        );
        return Ok(());
    }
    println!();
    let taken: Vec<String> = cache.list()?.into_iter().map(|m| m.name).collect();
    for f in chosen {
        // A name already in the cache (another file of the same name) gets the source's suffix.
        let name = if taken.iter().any(|t| t.eq_ignore_ascii_case(&f.name)) {
            format!(
                "{}-{}",
                f.name,
                f.source.to_string().to_lowercase().replace(' ', "-")
            )
        } else {
            f.name.clone()
        };
        if let Err(e) = import(cache, &f.path, Some(&name), None, Store::Link) {
            eprintln!("{}: {e:#}", f.path.display());
        }
    }
    Ok(())
}

fn print_found(found: &[Found]) {
    println!(
        "{:>3}  {:<12} {:<36} {:<8} {:<8} {:>9}  HEARTH",
        "#", "FROM", "NAME", "FAMILY", "QUANT", "SIZE"
    );
    for (i, f) in found.iter().enumerate() {
        let (family, quant, verdict) = match &f.model {
            Ok(m) => (
                m.architecture.clone(),
                m.quantization.clone(),
                "runs".to_owned(),
            ),
            Err(why) => ("?".into(), "?".into(), format!("cannot run: {why}")),
        };
        println!(
            "{:>3}  {:<12} {:<36} {:<8} {:<8} {:>9}  {verdict}",
            i + 1,
            f.source.to_string(),
            f.name,
            family,
            quant,
            format!("{:.1} MB", f.size as f64 / 1e6),
        );
        println!("     {}", f.path.display());
    }
}

fn list(cache: &ModelCache, json: bool) -> Result<()> {
    let models = cache.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        println!("no models cached; run scripts/fetch-models, `hearth models import FILE.gguf`, or `hearth models import --scan` for the models other tools keep here");
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<8} {:>9} {:>6}  {:<16}  PINNED",
        "NAME", "FAMILY", "QUANT", "SIZE", "LAYERS", "DIGEST"
    );
    for m in models {
        let layers = m
            .summary
            .layers
            .map_or_else(|| "?".to_owned(), |l| l.to_string());
        println!(
            "{:<20} {:<8} {:<8} {:>9} {:>6}  {:<16}  {}",
            m.name,
            m.summary.architecture,
            m.summary.quantization,
            format!("{:.1} MB", m.size as f64 / 1e6),
            layers,
            &m.digest[..16],
            if m.pinned { "yes" } else { "" }
        );
    }
    Ok(())
}
