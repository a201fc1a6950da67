//! The commands behind the CLI; each takes parsed arguments and does the work.

mod bench;
mod chat;
mod models;
mod run;

use anyhow::{Context, Result};
use hearth_shards::{default_threads, Model};

use crate::cli::{Cli, Command, ModelArgs};
use crate::data_dir::DataDir;
use crate::model_cache::ModelCache;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let data = DataDir::resolve(cli.data_dir.as_deref())?;
    let cache = ModelCache::new(data.models());
    match cli.command {
        Command::Run(args) => run::run(&cache, args),
        Command::Chat(args) => chat::chat(&cache, args),
        Command::Bench(args) => bench::bench(&cache, args),
        Command::Models(cmd) => models::models(&cache, cmd),
    }
}

/// Opens the model named in `args` (or the default one).
fn open_model(cache: &ModelCache, args: &ModelArgs) -> Result<Model> {
    let resolved = match &args.model {
        Some(q) => cache.resolve(q)?,
        None => cache.default_model()?,
    };
    let threads = args.threads.map_or_else(default_threads, |t| t as usize);
    Model::open(&resolved.path, threads)
        .with_context(|| format!("cannot load {}", resolved.path.display()))
}
