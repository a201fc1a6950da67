//! `hearth run`: one prompt, reply streamed to stdout.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use hearth_shards::{ChatMessage, Completion};

use super::open_model;
use crate::cli::RunArgs;
use crate::model_cache::ModelCache;

pub(super) fn run(cache: &ModelCache, args: RunArgs) -> Result<()> {
    let params = args.sampling.params()?;
    let prompt = if args.prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the prompt from stdin")?;
        s
    } else {
        args.prompt.clone()
    };
    let model = open_model(cache, &args.model)?;
    let mut params = params;
    let tokens = if args.raw || !model.chat_template().is_from_model() {
        model.tokenizer().encode(&prompt, true, true)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.clone()));
        }
        messages.push(ChatMessage::new("user", prompt));
        params
            .stop
            .extend(model.chat_template().stop_strings().iter().cloned());
        model.chat_prompt(&messages)?
    };
    let mut generator = model.generator(args.model.ctx as usize)?;
    let mut out = std::io::stdout().lock();
    let completion = generator.generate(&tokens, &params, |piece| {
        out.write_all(piece.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    })?;
    writeln!(out)?;
    if args.stats {
        eprintln!("{}", stats_line(&completion));
    }
    Ok(())
}

/// One line of token counts and speeds.
pub(super) fn stats_line(c: &Completion) -> String {
    let rate = |n: usize, d: std::time::Duration| {
        if d.as_secs_f64() > 0.0 {
            n as f64 / d.as_secs_f64()
        } else {
            0.0
        }
    };
    let fresh = c.prompt_tokens - c.reused_tokens;
    format!(
        "[{} prompt tokens ({} reused) at {:.1} t/s, {} generated at {:.1} t/s, finish: {:?}]",
        c.prompt_tokens,
        c.reused_tokens,
        rate(fresh, c.prefill_time),
        c.tokens.len(),
        rate(c.tokens.len(), c.decode_time),
        c.finish
    )
}
