//! `hearth models list|import|remove`.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::ModelsCommand;
use crate::models::{Imported, ModelCache};

pub(super) fn models(cache: &ModelCache, cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List { json } => list(cache, json),
        ModelsCommand::Import { path, name, sha256 } => {
            let bar = ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("importing {}", path.display()));
            let result = cache.import(&path, name.as_deref(), sha256.as_deref(), &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            match result? {
                Imported::Added(m) => println!(
                    "imported {} ({}, {}) as {} [{}]",
                    path.display(),
                    m.summary.architecture,
                    m.summary.quantization,
                    m.name,
                    &m.digest[..12]
                ),
                Imported::AlreadyPresent(m) => println!(
                    "{} is already cached as {} [{}]",
                    path.display(),
                    m.name,
                    &m.digest[..12]
                ),
            }
            Ok(())
        }
        ModelsCommand::Remove { model } => {
            let m = cache.remove(&model)?;
            println!("removed {} [{}]", m.name, &m.digest[..12]);
            Ok(())
        }
    }
}

fn list(cache: &ModelCache, json: bool) -> Result<()> {
    let models = cache.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        println!("no models cached; run scripts/fetch-models or `hearth models import FILE.gguf`");
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<8} {:>9} {:>6}  DIGEST",
        "NAME", "FAMILY", "QUANT", "SIZE", "LAYERS"
    );
    for m in models {
        let layers = m
            .summary
            .layers
            .map_or_else(|| "?".to_owned(), |l| l.to_string());
        println!(
            "{:<20} {:<8} {:<8} {:>9} {:>6}  {}",
            m.name,
            m.summary.architecture,
            m.summary.quantization,
            format!("{:.1} MB", m.size as f64 / 1e6),
            layers,
            &m.digest[..16]
        );
    }
    Ok(())
}
