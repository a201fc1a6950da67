//! `hearth run`: one prompt, reply streamed to stdout.

use std::io::Write;

use anyhow::Result;
use hearth_protocol::{ChatMessage, Prompt};

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
    let prompt = if args.raw {
        Prompt::Text {
            text: prompt,
            parse_special: !args.no_special,
        }
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.clone()));
        }
        messages.push(ChatMessage::new("user", prompt));
        Prompt::Chat(messages)
    };
    let stats = match backend.reply(&prompt, None, &params, &mut write)? {
        Turn::Reply(r) => r.stats,
        Turn::TooLong(e) => anyhow::bail!("{e}"),
    };
    writeln!(std::io::stdout())?;
    if args.stats {
        eprintln!("{stats}");
    }
    Ok(())
}
