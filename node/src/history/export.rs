//! A conversation exported for people and other programs: the Automerge document itself, JSON,
//! or Markdown.

use std::fmt::Write;

use super::Conversation;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The conversation's Automerge document, as any Automerge implementation loads it.
    Automerge,
    Json,
    Markdown,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "automerge" => Ok(Format::Automerge),
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            other => Err(format!(
                "unknown export format {other:?}: use automerge, json or markdown"
            )),
        }
    }
}

impl Format {
    /// The HTTP content type of an export.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Automerge => "application/octet-stream",
            Format::Json => "application/json",
            Format::Markdown => "text/markdown; charset=utf-8",
        }
    }
}

/// The newest branch of `c` as Markdown: a heading, then each message under its role.
pub fn markdown(c: &Conversation) -> String {
    let mut out = format!("# {}\n", c.summary.title);
    for id in &c.branch {
        let Some(m) = c.messages.iter().find(|m| m.id == *id) else {
            continue;
        };
        let _ = write!(out, "\n## {}", m.role);
        if !m.model.is_empty() {
            let _ = write!(out, " ({})", m.model);
        }
        let _ = writeln!(out, "\n\n{}", m.text.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::history::{Id, Message, Status, Summary};

    #[test]
    fn markdown_follows_the_newest_branch() {
        let m = |id: Id, role: &str, text: &str| Message {
            id,
            role: role.into(),
            text: text.into(),
            author: "d".into(),
            created: 0,
            parent: None,
            model: String::new(),
            nodes: Vec::new(),
            tokens: 0,
            tokens_per_s: 0.0,
            status: Status::Done,
            error: String::new(),
        };
        let (a, b, old) = (Id::random(), Id::random(), Id::random());
        let c = Conversation {
            summary: Summary {
                id: Id::random(),
                title: "Fruit".into(),
                created: 0,
                updated: 0,
                deleted: false,
            },
            messages: vec![
                m(a, "user", "Name a fruit."),
                m(old, "assistant", "Kale."),
                m(b, "assistant", "Apple.\n"),
            ],
            branch: vec![a, b],
        };
        assert_eq!(
            markdown(&c),
            "# Fruit\n\n## user\n\nName a fruit.\n\n## assistant\n\nApple.\n"
        );
        assert_eq!("md".parse::<Format>(), Ok(Format::Markdown));
        assert!("pdf".parse::<Format>().is_err());
    }
}
