//! The desktop client against real node processes, driven through its window (egui_kittest):
//! a streamed reply, stopping one, regenerating, editing and resending; the sidebar following
//! the household's history; the mesh view; losing the node and finding it again.

use std::time::Duration;

use egui_kittest::kittest::Queryable;
use hearth_gui::Target;
use hearth_tests::gui::Client;
use hearth_tests::history::{self, chat_in, conversations};
use hearth_tests::mesh::{wait_for, Household, NodeOptions, TestNode};
use hearth_tests::{hearth_bin, TestModel};
use serde_json::Value;

/// Generous bounds for a loaded 2-core machine; the tests wait for behaviour, not a clock.
const LIMIT: Duration = Duration::from_secs(120);

fn only_conversation(node: &TestNode) -> (String, Value) {
    let list = conversations(node);
    assert_eq!(list.len(), 1, "{list:#?}");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let c = history::conversation(node, &id).unwrap();
    (id, c)
}

/// The messages of conversation `id` with `role`, oldest first.
fn with_role(node: &TestNode, id: &str, role: &str) -> Vec<Value> {
    let conv = history::conversation(node, id).unwrap();
    conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == role)
        .cloned()
        .collect()
}

fn idle(c: &mut Client) -> bool {
    !c.shows("streaming…") && !c.shows("Waiting for a node")
}

#[test]
fn gui_chat_streams_stops_regenerates_and_edits() {
    let household = Household::new();
    let node = TestNode::start("den", &household, NodeOptions::holding(TestModel::SmolLm2));
    let mut c = Client::for_node(&node, 24);
    c.wait_for_text("Connected to den", LIMIT);

    // A message typed and sent with Enter: the reply streams in, then its record shows.
    c.send("What is the capital of France?");
    let mut streamed = false;
    let finished = c.until(LIMIT, |c| {
        streamed |= c.shows("streaming…");
        idle(c) && c.shows("Regenerate") && c.shows("tokens")
    });
    assert!(
        finished && streamed,
        "streamed {streamed}; shows:\n{}",
        c.texts()
    );
    let (id, conv) = only_conversation(&node);
    let m = history::messages(&conv);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(
        m[0],
        (
            "user".into(),
            "What is the capital of France?".into(),
            "done".into()
        )
    );
    assert_eq!((m[1].0.as_str(), m[1].2.as_str()), ("assistant", "done"));
    let first_words: String = m[1]
        .1
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    c.wait_for_text(&first_words, LIMIT);
    c.wait_for_text("smollm2-135m  ·  den", LIMIT);

    // Regenerate: a second reply to the same message, shown as version 2 of 2.
    c.click("Regenerate");
    assert!(
        c.until(LIMIT, |c| c.shows("2/2") && idle(c)),
        "{}",
        c.texts()
    );
    let replies = with_role(&node, &id, "assistant");
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0]["parent"], replies[1]["parent"], "siblings");

    // Edit the question and resend: a new branch from the root, the old one kept.
    c.click("Edit");
    c.retype(
        "What is the capital of France?",
        "What is the capital of Italy?",
    );
    c.click("Send edit");
    assert!(
        c.until(LIMIT, |c| c.shows("What is the capital of Italy?")
            && c.count("What is the capital of France?") == 1 // the sidebar's title
            && idle(c)
            && c.shows("Regenerate")),
        "{}",
        c.texts()
    );
    let questions = with_role(&node, &id, "user");
    assert_eq!(questions.len(), 2, "{questions:#?}");
    assert!(
        questions.iter().all(|q| q["parent"].is_null()),
        "both are first messages"
    );
    // The old branch is one click away.
    c.click("‹");
    assert!(
        c.until(LIMIT, |c| c.count("What is the capital of France?") == 2),
        "{}",
        c.texts()
    );

    // Stop a reply midway with Esc: it ends at once and is recorded as stopped.
    c.harness.state_mut().sampling_mut().max_tokens = Some(400);
    c.send("Write a long story about a dragon who learns to bake bread.");
    assert!(
        c.until(LIMIT, |c| c.shows("streaming…")
            && !c.shows("Waiting for a node")),
        "{}",
        c.texts()
    );
    c.harness.key_press(egui::Key::Escape);
    assert!(
        c.until(LIMIT, |c| c.shows("stopped") && idle(c)),
        "{}",
        c.texts()
    );
    let stopped = wait_for(LIMIT, || {
        let conv = history::conversation(&node, &id)?;
        let last = conv["messages"].as_array()?.last()?.clone();
        (last["status"] == "stopped").then_some(last)
    })
    .unwrap_or_else(|| {
        let conv = history::conversation(&node, &id);
        panic!("the reply is not recorded as stopped: {conv:#?}")
    });
    let tokens = stopped["tokens"].as_u64().unwrap();
    assert!(tokens > 0 && tokens < 400, "{stopped:#}");
}

#[test]
fn gui_sidebar_follows_the_household_history() {
    let household = Household::new();
    let node = TestNode::start("den", &household, NodeOptions::holding(TestModel::SmolLm2));
    let mut c = Client::for_node(&node, 8);
    c.wait_for_text("Connected to den", LIMIT);
    c.wait_for_text("No conversations yet", LIMIT);

    // Conversations made by another client appear without a refresh, newest first.
    let rivers = chat_in(&node, "new", "Name three rivers", 8);
    let rivers_id = rivers["hearth"]["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    c.wait_for_text("Name three rivers", LIMIT);
    chat_in(&node, "new", "Name three mountains", 8);
    c.wait_for_text("Name three mountains", LIMIT);

    // Switching conversations shows each one's messages.
    c.click("Name three rivers");
    assert!(
        c.until(LIMIT, |c| c.count("Name three rivers") == 2),
        "{}",
        c.texts()
    );
    // Changed on another device while open: updated in place.
    chat_in(&node, &rivers_id, "And three lakes?", 8);
    c.wait_for_text("And three lakes?", LIMIT);
    c.click("Name three mountains");
    assert!(
        c.until(LIMIT, |c| c.count("Name three mountains") == 2
            && !c.shows("And three lakes?")),
        "{}",
        c.texts()
    );

    // Delete through the sidebar's menu, confirmed: gone on the node and from the list.
    c.harness
        .get_by_role_and_label(egui::accesskit::Role::Button, "Name three mountains")
        .click_secondary();
    c.harness.step();
    c.click("Delete…");
    c.click("Delete");
    assert!(
        wait_for(LIMIT, || (conversations(&node).len() == 1).then_some(())).is_some(),
        "{:#?}",
        conversations(&node)
    );
    assert!(
        c.until(LIMIT, |c| !c.shows("Name three mountains")),
        "{}",
        c.texts()
    );

    // Shift+Enter starts a new line; Enter sends the lines as one message.
    c.send("Two lines:\nthe second one.");
    let two_lines = wait_for(LIMIT, || {
        conversations(&node).iter().find_map(|s| {
            let c = history::conversation(&node, s["id"].as_str()?)?;
            let first = history::messages(&c).into_iter().next()?;
            (first.1 == "Two lines:\nthe second one.").then_some(())
        })
    });
    assert!(two_lines.is_some(), "{:#?}", {
        let id = conversations(&node)[0]["id"].as_str().unwrap().to_owned();
        history::messages(&history::conversation(&node, &id).unwrap())
    });

    // Search (Ctrl+K) finds conversations by their messages' text too.
    c.harness
        .key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::K);
    c.harness.step();
    c.harness.step();
    c.harness
        .get_by(|n: &egui_kittest::kittest::AccessKitNode<'_>| n.is_focused())
        .type_text("volcano");
    assert!(
        c.until(LIMIT, |c| c.shows("Nothing matches")),
        "{}",
        c.texts()
    );
}

#[test]
fn gui_mesh_view_and_reconnecting() {
    let household = Household::new();
    let mut den = TestNode::start("den", &household, NodeOptions::holding(TestModel::SmolLm2));
    let mut c = Client::for_node(&den, 8);
    c.wait_for_text("Connected to den", LIMIT);
    c.click("Mesh");
    c.wait_for_text("Household nodes (1)", LIMIT);
    c.wait_for_text("Models: smollm2-135m", LIMIT);

    // A second node joins: it appears in the mesh view.
    let attic = TestNode::start("attic", &household, NodeOptions::dialing(&[&den]));
    c.wait_for_text("Household nodes (2)", LIMIT);
    c.wait_for_text("attic", LIMIT);
    drop(attic);

    // The node goes away: the client says so; it comes back (on another port): it recovers.
    den.kill();
    c.wait_for_text("Disconnected: no node at", LIMIT);
    den.restart(&NodeOptions::default());
    c.wait_for_text("Connected to den", LIMIT);
    c.wait_for_text("Household nodes (1)", LIMIT);
}

/// Kills the node a client started, whatever the test's outcome.
struct StartedNode(std::path::PathBuf);

impl Drop for StartedNode {
    fn drop(&mut self) {
        let info: Option<Value> = std::fs::read(self.0.join("node.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(pid) = info.and_then(|i| i["pid"].as_u64()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn gui_starts_a_local_node_when_none_runs() {
    let dir = tempfile::tempdir().unwrap();
    // A device without a household or a node; its node, once started, on loopback only.
    std::fs::write(
        dir.path().join("config.toml"),
        "name = \"porch\"\napi = \"127.0.0.1:0\"\nlisten = \"/ip4/127.0.0.1/tcp/0\"\nmdns = false\n",
    )
    .unwrap();
    let _node = StartedNode(dir.path().to_owned());
    let target = Target {
        url: None,
        token: None,
        data_dir: Some(dir.path().to_owned()),
        hearth: Some(hearth_bin()),
    };
    let mut c = Client::new(target, 8);
    c.wait_for_text("Disconnected: no node at", LIMIT);
    c.click("Start a local node");
    c.wait_for_text("Connected to porch", LIMIT);
    c.wait_for_text("node started (pid", LIMIT);
    assert!(
        dir.path().join("household.toml").exists(),
        "a household was created"
    );

    // The new node has no model: the node's refusal shows in the conversation, readable.
    c.send("Hello?");
    c.wait_for_text("is not on any node of this household", LIMIT);
    c.wait_for_text("Hello?", LIMIT);
}

#[test]
fn gui_says_when_the_token_is_refused_and_takes_one() {
    let household = Household::new();
    let node = TestNode::start(
        "den",
        &household,
        NodeOptions::default().with_args(&["--api-token", "kitchen-table"]),
    );
    let mut c = Client::for_node(&node, 8);
    c.wait_for_text("Token refused by", LIMIT);
    let token_box = |n: &egui_kittest::kittest::AccessKitNode<'_>| {
        n.role() == egui::accesskit::Role::PasswordInput
    };
    c.harness.get_by(token_box).focus();
    c.harness.step();
    c.harness.get_by(token_box).type_text("kitchen-table");
    c.harness.step();
    c.click("Connect");
    c.wait_for_text("Connected to den", LIMIT);
}
