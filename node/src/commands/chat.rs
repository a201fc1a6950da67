//! `hearth chat`: a terminal conversation with one model, history kept for the session.

use std::io::{BufRead, Write};

use anyhow::Result;
use hearth_shards::ChatMessage;

use super::backend::{Backend, Turn};
use crate::cli::ChatArgs;
use crate::data_dir::DataDir;
use crate::models::ModelCache;

const HELP: &str =
    "type a message and press Enter; /reset starts a new conversation, /quit (or Ctrl-D) leaves";

pub(super) fn chat(data: &DataDir, cache: &ModelCache, args: ChatArgs) -> Result<()> {
    let params = args.sampling.params()?;
    let mut backend = Backend::open(data, cache, &args.model)?;
    eprintln!("hearth chat with {}; {HELP}", backend.describe());
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
                backend.reset();
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
        let mut out = std::io::stdout().lock();
        let turn = backend.chat(&history, &params, |piece| {
            out.write_all(piece.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        })?;
        writeln!(out)?;
        match turn {
            Turn::Reply(reply) => {
                if args.stats {
                    eprintln!("{}", reply.stats);
                }
                history.push(ChatMessage::new("assistant", reply.text.trim().to_owned()));
            }
            Turn::TooLong(e) => {
                history.pop();
                println!("(the conversation no longer fits: {e})");
            }
        }
    }
}
