//! A conversation's branches: edits and regenerations add siblings under the same parent, and
//! the client shows one path from the first message to a chosen last one. Pure functions over
//! the messages (ordered oldest first, as the history API gives them).

use hearth_protocol::history::{Id, Message};

/// The messages from the first to `tip`, in order; the newest branch when `tip` is `None` or
/// not among them.
pub fn path(messages: &[Message], tip: Option<Id>) -> Vec<&Message> {
    let tip = tip
        .filter(|t| messages.iter().any(|m| m.id == *t))
        .or_else(|| messages.last().map(|m| m.id));
    let mut path = Vec::new();
    let mut next = tip;
    while let Some(id) = next {
        let Some(m) = messages.iter().find(|m| m.id == id) else {
            break;
        };
        if path.len() > messages.len() {
            break; // a cycle: a broken document, shown as far as it goes
        }
        path.push(m);
        next = m.parent;
    }
    path.reverse();
    path
}

/// The messages that share `message`'s parent (itself included), oldest first.
pub fn siblings<'a>(messages: &'a [Message], message: &Message) -> Vec<&'a Message> {
    messages
        .iter()
        .filter(|m| m.parent == message.parent)
        .collect()
}

/// The newest message at or below `id`: where the path goes when a user picks `id`'s branch.
pub fn newest_below(messages: &[Message], id: Id) -> Id {
    messages
        .iter()
        .rev()
        .find(|m| {
            let mut at = Some(m.id);
            let mut steps = 0;
            while let Some(a) = at {
                if a == id {
                    return true;
                }
                steps += 1;
                if steps > messages.len() {
                    return false;
                }
                at = messages.iter().find(|x| x.id == a).and_then(|x| x.parent);
            }
            false
        })
        .map_or(id, |m| m.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::history::Status;

    fn message(n: u8, parent: Option<u8>, role: &str) -> Message {
        let id = |n: u8| format!("{n:032x}").parse::<Id>().unwrap();
        Message {
            id: id(n),
            role: role.into(),
            text: format!("m{n}"),
            author: String::new(),
            created: i64::from(n),
            parent: parent.map(id),
            model: String::new(),
            nodes: Vec::new(),
            tokens: 0,
            tokens_per_s: 0.0,
            status: Status::Done,
            error: String::new(),
        }
    }

    fn texts(path: &[&Message]) -> Vec<String> {
        path.iter().map(|m| m.text.clone()).collect()
    }

    /// 1 user → 2 reply; 3 regenerated reply to 1; 4 user edit of 1 (a new root) → 5 reply.
    fn tree() -> Vec<Message> {
        vec![
            message(1, None, "user"),
            message(2, Some(1), "assistant"),
            message(3, Some(1), "assistant"),
            message(4, None, "user"),
            message(5, Some(4), "assistant"),
        ]
    }

    #[test]
    fn the_newest_branch_is_shown_unless_another_is_chosen() {
        let all = tree();
        assert_eq!(texts(&path(&all, None)), ["m4", "m5"]);
        assert_eq!(texts(&path(&all, Some(all[1].id))), ["m1", "m2"]);
        assert_eq!(texts(&path(&all, Some(all[2].id))), ["m1", "m3"]);
    }

    #[test]
    fn siblings_are_the_edits_and_regenerations_of_one_turn() {
        let all = tree();
        assert_eq!(texts(&siblings(&all, &all[1])), ["m2", "m3"]);
        assert_eq!(texts(&siblings(&all, &all[0])), ["m1", "m4"]);
    }

    #[test]
    fn picking_a_branch_goes_to_its_newest_message() {
        let all = tree();
        assert_eq!(newest_below(&all, all[0].id), all[2].id);
        assert_eq!(newest_below(&all, all[3].id), all[4].id);
        assert_eq!(newest_below(&all, all[4].id), all[4].id);
    }
}
