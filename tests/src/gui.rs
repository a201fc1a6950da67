//! The desktop client driven as a person would (egui_kittest: clicks, keys, text read back
//! through the accessibility tree), against real node processes.

use std::time::{Duration, Instant};

use egui_kittest::kittest::{AccessKitNode, Queryable};
use egui_kittest::Harness;
use hearth_gui::{App, Sampling, Target};

use crate::mesh::TestNode;

/// A client window (offscreen) and the node it was pointed at.
pub struct Client {
    pub harness: Harness<'static, App>,
}

impl Client {
    /// A client for the local node whose data directory is `node`'s (found through its runtime
    /// file, as on a desktop), replies capped at `max_tokens` greedy tokens.
    pub fn for_node(node: &TestNode, max_tokens: u32) -> Client {
        let target = Target {
            url: None,
            token: None,
            data_dir: Some(node.data().to_owned()),
            hearth: None,
        };
        Client::new(target, max_tokens)
    }

    /// A client for `target`, replies capped at `max_tokens` greedy tokens.
    pub fn new(target: Target, max_tokens: u32) -> Client {
        let mut harness = Harness::builder()
            .with_size(egui::vec2(1100.0, 760.0))
            .build_eframe(move |cc| App::new(target, &cc.egui_ctx));
        *harness.state_mut().sampling_mut() = Sampling {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ..Sampling::default()
        };
        Client { harness }
    }

    /// Runs frames (the client repaints when the background sends something) until `done`
    /// holds, for at most `limit`; whether it held.
    pub fn until(&mut self, limit: Duration, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let start = Instant::now();
        loop {
            self.harness.step();
            if done(self) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether some widget's text contains `text`.
    pub fn shows(&self, text: &str) -> bool {
        self.count(text) > 0
    }

    /// How many widgets' texts contain `text`.
    pub fn count(&self, text: &str) -> usize {
        self.harness.query_all_by_label_contains(text).count()
    }

    /// Waits (bounded) until `text` shows; panics with what the window shows otherwise.
    pub fn wait_for_text(&mut self, text: &str, limit: Duration) {
        if !self.until(limit, |c| c.shows(text)) {
            panic!(
                "the client never showed {text:?}; it shows:\n{}",
                self.texts()
            );
        }
    }

    /// Every label in the window, for failure messages.
    pub fn texts(&self) -> String {
        format!("{:#?}", self.harness.root())
            .lines()
            .filter(|l| l.contains("label:") || l.contains("value:"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Clicks the widget labelled exactly `label`, and draws what the click changed.
    pub fn click(&mut self, label: &str) {
        self.harness.get_by_label(label).click();
        self.harness.step();
        self.harness.step();
    }

    /// Replaces the text of the text box holding `old` with `new`.
    pub fn retype(&mut self, old: &str, new: &str) {
        let text_box = |n: &AccessKitNode<'_>| {
            n.role() == egui::accesskit::Role::MultilineTextInput
                && n.value().as_deref() == Some(old)
        };
        self.harness.get_by(text_box).focus();
        self.harness.step();
        self.harness
            .key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
        self.harness.step();
        self.harness.get_by(text_box).type_text(new);
        self.harness.step();
    }

    /// Types `text` into the message box and presses Enter.
    /// Lines are typed with Shift+Enter between them, as a person writes several lines.
    pub fn send(&mut self, text: &str) {
        let composer = || {
            |n: &AccessKitNode<'_>| {
                n.placeholder()
                    .is_some_and(|p| p.starts_with("Message (Enter sends"))
            }
        };
        self.harness.get_by(composer()).focus();
        self.harness.step();
        // Its hint (how it is found) goes once it holds text; it keeps the focus.
        let focused = |n: &AccessKitNode<'_>| n.is_focused();
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                self.harness
                    .key_press_modifiers(egui::Modifiers::SHIFT, egui::Key::Enter);
                self.harness.step();
            }
            self.harness.get_by(focused).type_text(line);
            self.harness.step();
        }
        self.harness.key_press(egui::Key::Enter);
        self.harness.step();
    }
}
