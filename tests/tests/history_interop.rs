//! hearth's history documents are standard Automerge documents: JavaScript's Automerge
//! (`@automerge/automerge`, installed in `tests/js` by `make test`) loads both a node's stored
//! files (a saved document with change chunks appended) and its exports, and reads from them,
//! knowing only the schema in README.md, what the node's API says.

use std::path::Path;
use std::process::Command;

use hearth_tests::history::{chat_in, conversation, messages};
use hearth_tests::mesh::{http, Household, NodeOptions, TestNode};
use hearth_tests::{json_from, repo_root, TestModel};
use serde_json::Value;

/// What `tests/js/load.mjs` reads from the Automerge file at `path`.
fn read_in_javascript(path: &Path) -> Value {
    let js = repo_root().join("tests/js");
    assert!(
        js.join("node_modules/@automerge/automerge").is_dir(),
        "JavaScript's Automerge is not installed: run `npm ci --prefix tests/js` (make test does)"
    );
    json_from(Command::new("node").arg(js.join("load.mjs")).arg(path))
}

#[test]
fn javascript_automerge_reads_stored_files_and_exports() {
    let node = TestNode::start(
        "den",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let id = chat_in(&node, "new", "Name a fruit.", 6)["hearth"]["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    chat_in(&node, &id, "And a vegetable?", 6);
    let api = conversation(&node, &id).unwrap();
    let want: Vec<(String, String, String)> = messages(&api);
    assert_eq!(want.len(), 4);

    // The node's own file: appended changes included.
    let stored = node.data().join("history").join(format!("{id}.automerge"));
    let js = read_in_javascript(&stored);
    assert_eq!(js["hearth"], "conversation/1");
    assert_eq!(js["id"], id.as_str());
    assert_eq!(messages(&js), want);

    // The export.
    let bytes = http()
        .get(node.url(&format!("/api/conversations/{id}/export?format=automerge")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let exported = node.data().join("export.automerge");
    std::fs::write(&exported, &bytes).unwrap();
    assert_eq!(messages(&read_in_javascript(&exported)), want);

    // The index.
    let index = read_in_javascript(&node.data().join("history/index.automerge"));
    assert_eq!(index["hearth"], "history-index/1");
    assert_eq!(index["conversations"][0]["id"], id.as_str());
    assert_eq!(index["conversations"][0]["title"], "Name a fruit.");
}
