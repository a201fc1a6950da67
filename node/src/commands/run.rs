//! `hearth run`: one prompt, reply streamed to stdout.

use std::io::Write;

use anyhow::Result;
use hearth_shards::ChatMessage;

use super::backend::{text_or_stdin, Backend, Turn};
use crate::cli::RunArgs;
use crate::data_dir::DataDir;
use crate::models::ModelCache;

pub(super) fn run(data: &DataDir, cache: &ModelCache, args: RunArgs) -> Result<()> {
    let params = args.sampling.params()?;
    let prompt = text_or_stdin(&args.prompt)?;
    let mut backend = Backend::open(data, cache, &args.model)?;
    let mut out = std::io::stdout().lock();
    let mut write = |piece: &str| {
        out.write_all(piece.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    };
    let stats = if args.raw || !backend.chats() {
        backend.complete(&prompt, &params, &mut write)?.stats
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.clone()));
        }
        messages.push(ChatMessage::new("user", prompt));
        match backend.chat(&messages, None, &params, &mut write)? {
            Turn::Reply(r) => r.stats,
            Turn::TooLong(e) => anyhow::bail!("{e}"),
        }
    };
    writeln!(std::io::stdout())?;
    if args.stats {
        eprintln!("{stats}");
    }
    Ok(())
}
