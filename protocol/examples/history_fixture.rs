//! Writes a history of CONVERSATIONS conversations of MESSAGES messages each into DIR/history, as
//! a node would have stored it, for `scripts/bench-history`:
//!
//!     cargo run --release -p hearth-protocol --example history_fixture -- DIR 1000 100

use std::path::PathBuf;

use hearth_protocol::history::{self, DocId, Id, NewMessage, Outcome, Status};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, conversations, messages] = args.as_slice() else {
        eprintln!("usage: history_fixture DIR CONVERSATIONS MESSAGES");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir).join("history");
    let conversations: usize = conversations.parse().expect("CONVERSATIONS is a number");
    let messages: usize = messages.parse().expect("MESSAGES is a number");
    std::fs::create_dir_all(&dir).expect("the history folder can be made");
    let mut index = history::new_index();
    let start: i64 = 1_780_000_000_000;
    for c in 0..conversations {
        let id = Id::random();
        let created = start + (c as i64) * 60_000;
        history::add_conversation(&mut index, id, &format!("Conversation {c}"), created)
            .expect("an index entry");
        let mut doc = history::new_conversation(id);
        let mut parent = None;
        for m in 0..messages {
            let user = m % 2 == 0;
            let text = if user {
                format!("Question {m} of conversation {c}: what should we cook tonight, and how long does it take?")
            } else {
                format!("Answer {m}: a vegetable soup takes about forty minutes; chop onions, carrots and celery, simmer them in stock, season, and serve with bread. Conversation {c}.")
            };
            let id = history::add_message(
                &mut doc,
                &NewMessage {
                    role: if user { "user" } else { "assistant" }.into(),
                    text,
                    author: "fixture".into(),
                    created: created + m as i64,
                    parent,
                    model: if user {
                        String::new()
                    } else {
                        "smollm2-135m".into()
                    },
                    status: Status::Done,
                },
            )
            .expect("a message");
            if !user {
                history::finish(
                    &mut doc,
                    id,
                    &Outcome {
                        status: Status::Done,
                        nodes: vec!["kitchen".into()],
                        tokens: 40,
                        tokens_per_s: 95.0,
                        error: String::new(),
                    },
                )
                .expect("a finished reply");
            }
            parent = Some(id);
        }
        std::fs::write(
            dir.join(format!("{}.automerge", DocId::Conversation(id))),
            doc.save(),
        )
        .expect("a conversation file");
    }
    std::fs::write(dir.join("index.automerge"), index.save()).expect("the index file");
}
