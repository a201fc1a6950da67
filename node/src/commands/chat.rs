//! `hearth chat`: a terminal conversation with one model, recorded in the household's history
//! when a node serves it (`--no-history` opts out, `--resume ID` goes on with one).

use std::io::{BufRead, Write};

use anyhow::{bail, Result};
use hearth_protocol::{ChatMessage, Prompt};

use super::backend::{Backend, Turn};
use super::history::Source;
use crate::cli::ChatArgs;
use crate::client::LocalNode;
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
    // Where replies are recorded: "new" until the node says which conversation it made.
    let mut conversation: Option<String> = None;
    if let Some(id) = &args.resume {
        let (resumed, messages) = resume(data, id)?;
        for m in &messages {
            println!("[{}] {}", m.role, m.content.trim_end());
        }
        history = messages;
        conversation = Some(resumed);
    } else if !args.no_history {
        if backend.records() {
            conversation = Some("new".into());
        } else {
            eprintln!("(no node is running, so this conversation is not recorded in the history)");
        }
    }
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
                if conversation.is_some() {
                    conversation = Some("new".into());
                }
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
        let prompt = Prompt::Chat(history.clone());
        let turn = backend.reply(&prompt, conversation.as_deref(), &params, |piece| {
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
                if conversation.is_some() && reply.conversation.is_some() {
                    conversation = reply.conversation;
                }
            }
            Turn::TooLong(e) => {
                history.pop();
                println!("(the conversation no longer fits: {e})");
            }
        }
    }
}

/// The messages on the newest branch of conversation `id` (or an id prefix), from the node.
fn resume(data: &DataDir, id: &str) -> Result<(String, Vec<ChatMessage>)> {
    let Some(node) = LocalNode::find(data) else {
        bail!("--resume needs the local node running (the history lives there); start it with `hearth node`");
    };
    let source = Source::Node(Box::new(node));
    let c = source.get(source.resolve(id)?)?;
    let messages = c
        .branch
        .iter()
        .filter_map(|b| c.messages.iter().find(|m| m.id == *b))
        .filter(|m| !(m.role == "assistant" && m.text.is_empty()))
        .map(|m| ChatMessage::new(m.role.clone(), m.text.clone()))
        .collect();
    Ok((c.summary.id.to_string(), messages))
}
