//! The commands behind the CLI; each takes parsed arguments and does the work.

mod backend;
mod bench;
mod chat;
mod history;
mod household;
mod models;
mod node;
mod peers;
mod run;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use hearth_shards::{default_threads, Model};

use crate::cli::{Cli, Command, ModelArgs};
use crate::data_dir::DataDir;
use crate::models::ModelCache;

/// Parses the command line, runs it, and reports an error the way a user reads it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let data = DataDir::resolve(cli.data_dir.as_deref())?;
    let cache = ModelCache::new(data.models());
    match cli.command {
        Command::Run(args) => run::run(&data, &cache, args),
        Command::Chat(args) => chat::chat(&data, &cache, args),
        Command::Bench(args) => bench::bench(&cache, args),
        Command::Models(cmd) => models::models(&data, &cache, cmd),
        Command::Node(args) => node::node(data, *args),
        Command::Household(cmd) => household::household(&data, cmd),
        Command::History(cmd) => history::history(&data, cmd),
        Command::Peers { json } => peers::peers(&data, json),
        Command::Devices { json } => devices(json),
        Command::Route {
            model,
            split,
            stages,
            json,
        } => peers::route(&data, &model, split, stages.as_deref(), json),
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

/// `hearth devices`: the CPU and the GPU adapters, as a node would report them.
fn devices(json: bool) -> Result<()> {
    let devices = crate::devices::probe();
    if json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
        return Ok(());
    }
    println!(
        "{:<8} {:<44} {:<10} {:<8} {:>10}",
        "DEVICE", "NAME", "VENDOR", "BACKEND", "MEMORY"
    );
    for d in &devices {
        let memory = if d.total_memory == 0 {
            "-".to_owned()
        } else {
            format!("{} MB", d.total_memory >> 20)
        };
        let (device, vendor, backend) = match &d.adapter {
            Some(a) => (
                format!("gpu:{}", a.index),
                a.vendor.clone(),
                format!("{} {}", a.backend, a.kind),
            ),
            None => (
                format!("{:?}", d.kind).to_lowercase(),
                String::new(),
                String::new(),
            ),
        };
        println!(
            "{device:<8} {:<44} {vendor:<10} {backend:<8} {memory:>10}",
            d.name
        );
    }
    if devices.iter().all(|d| d.adapter.is_none()) {
        println!(
            "\nno GPU adapter: install the GPU's Vulkan driver (Debian: mesa-vulkan-drivers; \
             NVIDIA's driver) for --device gpu"
        );
    }
    Ok(())
}
