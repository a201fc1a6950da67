//! Arbitrary bytes as a peer's Automerge sync message about the index and a conversation: no
//! panic, and whatever is kept still follows the history schema.
#![no_main]

use hearth_protocol::history::{self, DocId, Id};

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let id = Id::random();
    for doc_id in [DocId::Index, DocId::Conversation(id)] {
        let mut doc = history::new_doc(doc_id);
        let mut state = automerge::sync::State::new();
        if history::apply_sync_message(&mut doc, doc_id, &mut state, bytes).is_ok() {
            history::check(&doc, doc_id).expect("a kept message leaves the document on schema");
            let _ = history::summaries(&doc);
            let _ = history::messages(&doc);
        }
    }
});
