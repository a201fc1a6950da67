//! `hearth history`: the household's conversations, through the local node when it runs (so what
//! other devices synced is there), else straight from this device's history files.

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hearth_protocol::history::{Id, Summary};
use reqwest::Method;

use crate::cli::HistoryCommand;
use crate::client::LocalNode;
use crate::data_dir::DataDir;
use crate::history::{Conversation, Format, History};

/// Where the history is read from.
pub(super) enum Source {
    Node(Box<LocalNode>),
    Files(Arc<History>),
}

impl Source {
    fn open(data: &DataDir) -> Result<Source> {
        if let Some(node) = LocalNode::find(data) {
            return Ok(Source::Node(Box::new(node)));
        }
        // Without a node, nothing else writes these files; this device is the author.
        let history = History::open(&data.root().join("history"), "this device")?;
        Ok(Source::Files(history))
    }

    fn list(&self, query: Option<&str>) -> Result<Vec<Summary>> {
        match self {
            Source::Node(n) => {
                let mut path = "/api/conversations".to_owned();
                if let Some(q) = query {
                    path = format!("{path}?{}", query_pair("q", q));
                }
                let v = n.get(&path)?;
                Ok(serde_json::from_value(v["conversations"].clone())
                    .context("the node sent a list that is not a list of conversations")?)
            }
            Source::Files(h) => Ok(h.list(query)),
        }
    }

    /// The conversation whose id is `prefix` or starts with it (one only).
    pub(super) fn resolve(&self, prefix: &str) -> Result<Id> {
        if let Ok(id) = prefix.parse() {
            return Ok(id);
        }
        let hits: Vec<Id> = self
            .list(None)?
            .into_iter()
            .map(|s| s.id)
            .filter(|id| id.to_string().starts_with(prefix))
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => bail!("no conversation {prefix}; `hearth history list` shows them"),
            many => bail!(
                "{prefix} starts {} conversations' ids; give more of it",
                many.len()
            ),
        }
    }

    pub(super) fn get(&self, id: Id) -> Result<Conversation> {
        match self {
            Source::Node(n) => Ok(serde_json::from_value(
                n.get(&format!("/api/conversations/{id}"))?,
            )
            .context("the node sent a conversation hearth cannot read")?),
            Source::Files(h) => Ok(h.get(id)?),
        }
    }

    fn export(&self, id: Id, format: &str) -> Result<Vec<u8>> {
        match self {
            Source::Node(n) => Ok(n
                .send(
                    Method::GET,
                    &format!("/api/conversations/{id}/export?format={format}"),
                    None,
                )?
                .bytes()?
                .to_vec()),
            Source::Files(h) => {
                Ok(h.export(id, format.parse::<Format>().map_err(anyhow::Error::msg)?)?)
            }
        }
    }

    fn delete(&self, id: Id) -> Result<()> {
        match self {
            Source::Node(n) => {
                n.send(Method::DELETE, &format!("/api/conversations/{id}"), None)?;
            }
            Source::Files(h) => h.delete(id)?,
        }
        Ok(())
    }
}

/// `key=value`, percent-encoded for a query string.
fn query_pair(key: &str, value: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!("{}={}", enc(key), enc(value))
}

fn when(ms: i64) -> String {
    let age = (crate::history::now_ms() - ms).max(0) / 1000;
    match age {
        0..60 => format!("{age} s ago"),
        60..3600 => format!("{} min ago", age / 60),
        3600..86400 => format!("{} h ago", age / 3600),
        _ => format!("{} days ago", age / 86400),
    }
}

pub(super) fn history(data: &DataDir, cmd: HistoryCommand) -> Result<()> {
    let source = Source::open(data)?;
    match cmd {
        HistoryCommand::List { query, json } => {
            let list = source.list(query.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no conversations yet: `hearth chat` records them");
            } else {
                for s in list {
                    println!("{}  {:>14}  {}", s.id, when(s.updated), s.title);
                }
            }
        }
        HistoryCommand::Show { id } => {
            let c = source.get(source.resolve(&id)?)?;
            println!("# {}", c.summary.title);
            for id in &c.branch {
                let Some(m) = c.messages.iter().find(|m| m.id == *id) else {
                    continue;
                };
                let mut about = Vec::new();
                if !m.model.is_empty() {
                    about.push(m.model.clone());
                }
                if !m.nodes.is_empty() {
                    about.push(format!("served by {}", m.nodes.join(" then ")));
                }
                if m.tokens > 0 {
                    about.push(format!("{} tokens at {:.1} t/s", m.tokens, m.tokens_per_s));
                }
                if m.status != hearth_protocol::history::Status::Done {
                    about.push(m.status.as_str().to_owned());
                }
                if about.is_empty() {
                    println!("\n[{}]", m.role);
                } else {
                    println!("\n[{}] ({})", m.role, about.join(", "));
                }
                println!("{}", m.text.trim_end());
            }
        }
        HistoryCommand::Export { id, format, output } => {
            let bytes = source.export(source.resolve(&id)?, &format)?;
            match output {
                Some(path) => crate::durable::write_atomic(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::stdout().lock().write_all(&bytes)?,
            }
        }
        HistoryCommand::Delete { id } => {
            let id = source.resolve(&id)?;
            source.delete(id)?;
            println!("deleted {id}");
        }
    }
    Ok(())
}
