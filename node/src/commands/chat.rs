//! `hearth chat`: a terminal conversation with one model, history kept for the session.

use std::io::{BufRead, Write};

use anyhow::Result;
use hearth_shards::{ChatMessage, Error as EngineError};

use super::open_model;
use super::run::stats_line;
use crate::cli::ChatArgs;
use crate::model_cache::ModelCache;

const HELP: &str =
    "type a message and press Enter; /reset starts a new conversation, /quit (or Ctrl-D) leaves";

pub(super) fn chat(cache: &ModelCache, args: ChatArgs) -> Result<()> {
    let mut params = args.sampling.params()?;
    let model = open_model(cache, &args.model)?;
    params
        .stop
        .extend(model.chat_template().stop_strings().iter().cloned());
    let mut generator = model.generator(args.model.ctx as usize)?;
    let name = model
        .gguf()
        .get_str("general.name")
        .unwrap_or("model")
        .to_owned();
    eprintln!(
        "hearth chat with {name} ({} context tokens); {HELP}",
        generator.context()
    );
    let opening: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.clone()))
        .collect();
    let mut history = opening.clone();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next() else {
            println!();
            return Ok(());
        };
        let line = line?;
        let input = line.trim();
        match input {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history = opening.clone();
                generator.reset();
                println!("(new conversation)");
                continue;
            }
            "/help" => {
                println!("{HELP}");
                continue;
            }
            cmd if cmd.starts_with('/') => {
                println!("unknown command {cmd}; {HELP}");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", input));
        let tokens = model.chat_prompt(&history)?;
        let mut out = std::io::stdout().lock();
        let result = generator.generate(&tokens, &params, |piece| {
            out.write_all(piece.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        });
        writeln!(out)?;
        match result {
            Ok(completion) => {
                if args.stats {
                    eprintln!("{}", stats_line(&completion));
                }
                history.push(ChatMessage::new(
                    "assistant",
                    completion.text.trim().to_owned(),
                ));
            }
            Err(e @ EngineError::ContextOverflow { .. }) => {
                history.pop();
                println!("(the conversation no longer fits: {e})");
            }
            Err(e) => return Err(e.into()),
        }
    }
}
