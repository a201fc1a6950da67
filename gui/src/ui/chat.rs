//! The chat view: the branch shown, the reply streaming in, and the composer. Enter sends,
//! Shift+Enter starts a new line, Esc stops a reply.

use hearth_protocol::history::{Id, Message, Status};

use crate::app::{App, Live};
use crate::backend::Command;
use crate::branches;

pub fn show(app: &mut App, ui: &mut egui::Ui) {
    if app.settings_open {
        settings(app, ui);
        ui.separator();
    }
    egui::Panel::bottom("composer").show(ui, |ui| composer(app, ui));
    egui::ScrollArea::vertical()
        .stick_to_bottom(true)
        .auto_shrink([false, false])
        .show(ui, |ui| messages(app, ui));
}

/// What a message's row asks for.
enum Action {
    Regenerate(Id),
    Edit(Id, String),
    Resend(Id, String),
    CancelEdit,
    Branch(Id),
}

fn messages(app: &mut App, ui: &mut egui::Ui) {
    let Some(open) = &app.open else {
        if app.selected.is_some() {
            ui.weak("Loading…");
        } else if app.live.is_none() {
            ui.add_space(40.0);
            ui.vertical_centered(|ui| {
                ui.heading("New chat");
                ui.weak(
                    "Type below and press Enter. Replies come from the best node in the house.",
                );
            });
        }
        // A new chat's first reply, until the node says which conversation it made.
        if let Some(live) = app.live.clone().filter(|l| l.conversation.is_none()) {
            live_reply(app, ui, &live, true);
        }
        return;
    };
    let all = open.messages.clone();
    // While a reply of this client streams here, its recorded copy gives way to the live one.
    let live = app
        .live
        .clone()
        .filter(|l| l.conversation.is_none() || l.conversation == app.selected);
    let fresh: Vec<Id> = live
        .as_ref()
        .map(|l| all.iter().skip(l.base_len).map(|m| m.id).collect())
        .unwrap_or_default();
    let path: Vec<Message> = match &live {
        // Not recorded yet: the branch up to where the new turn goes.
        Some(l) if fresh.is_empty() => match l.after {
            Some(after) => branches::path(&all, Some(after)),
            None => Vec::new(),
        },
        _ => branches::path(&all, app.tip),
    }
    .into_iter()
    .cloned()
    .collect();
    let mut action = None;
    let mut user_recorded = false;
    for m in &path {
        if fresh.contains(&m.id) {
            if m.role == "assistant" {
                continue;
            }
            user_recorded = true;
        }
        if m.role == "system" {
            continue;
        }
        ui.add_space(6.0);
        if let Some(a) = message(app, ui, &all, m) {
            action = Some(a);
        }
    }
    if let Some(live) = live {
        live_reply(app, ui, &live, !user_recorded);
    }
    match action {
        Some(Action::Regenerate(id)) => app.regenerate(id),
        Some(Action::Edit(id, text)) => app.editing = Some((id, text)),
        Some(Action::Resend(id, text)) => {
            app.editing = None;
            app.resend_edited(id, text);
        }
        Some(Action::CancelEdit) => app.editing = None,
        Some(Action::Branch(id)) => app.tip = Some(branches::newest_below(&all, id)),
        None => {}
    }
}

fn who(role: &str) -> &str {
    match role {
        "user" => "You",
        "assistant" => "Assistant",
        other => other,
    }
}

fn message(app: &mut App, ui: &mut egui::Ui, all: &[Message], m: &Message) -> Option<Action> {
    let mut action = None;
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.horizontal(|ui| {
            ui.strong(who(&m.role));
            let siblings = branches::siblings(all, m);
            if siblings.len() > 1 {
                let at = siblings.iter().position(|s| s.id == m.id).unwrap_or(0);
                if ui
                    .add_enabled(at > 0, egui::Button::new("‹"))
                    .on_hover_text("Previous version")
                    .clicked()
                {
                    action = Some(Action::Branch(siblings[at - 1].id));
                }
                ui.label(format!("{}/{}", at + 1, siblings.len()));
                if ui
                    .add_enabled(at + 1 < siblings.len(), egui::Button::new("›"))
                    .on_hover_text("Next version")
                    .clicked()
                {
                    action = Some(Action::Branch(siblings[at + 1].id));
                }
            }
        });
        if let Some((id, text)) = &mut app.editing {
            if *id == m.id {
                ui.add(egui::TextEdit::multiline(text).desired_width(f32::INFINITY));
                ui.horizontal(|ui| {
                    if ui.button("Send edit").clicked() {
                        action = Some(Action::Resend(m.id, text.trim().to_owned()));
                    }
                    if ui.button("Cancel").clicked() {
                        action = Some(Action::CancelEdit);
                    }
                });
                return;
            }
        }
        super::markdown::show(ui, &mut app.markdown, &m.text);
        if m.status == Status::Error {
            ui.colored_label(ui.visuals().error_fg_color, format!("⚠ {}", m.error));
        }
        ui.horizontal(|ui| {
            if m.role == "assistant" {
                ui.weak(footer(m));
            }
            if ui.small_button("Copy").clicked() {
                ui.copy_text(m.text.clone());
            }
            let idle = !app.streaming();
            if m.role == "assistant"
                && ui
                    .add_enabled(idle, egui::Button::new("Regenerate").small())
                    .clicked()
            {
                action = Some(Action::Regenerate(m.id));
            }
            if m.role == "user"
                && ui
                    .add_enabled(idle, egui::Button::new("Edit").small())
                    .clicked()
            {
                action = Some(Action::Edit(m.id, m.text.clone()));
            }
        });
    });
    action
}

/// Under a recorded reply: model, serving node(s), speed, tokens, and how it ended.
fn footer(m: &Message) -> String {
    let mut parts = Vec::new();
    if !m.model.is_empty() {
        parts.push(m.model.clone());
    }
    if !m.nodes.is_empty() {
        parts.push(m.nodes.join(" → "));
    }
    if m.tokens > 0 {
        parts.push(format!("{:.1} tok/s", m.tokens_per_s));
        parts.push(format!("{} tokens", m.tokens));
    }
    match m.status {
        Status::Stopped => parts.push("stopped".into()),
        Status::Streaming => parts.push("streaming on another device…".into()),
        Status::Done | Status::Error => {}
    }
    parts.join("  ·  ")
}

/// The reply this client is streaming (and the user's message until the node records it).
fn live_reply(app: &mut App, ui: &mut egui::Ui, live: &Live, show_user: bool) {
    if let (true, Some(user)) = (show_user, &live.user) {
        ui.add_space(6.0);
        egui::Frame::group(ui.style()).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.strong("You");
            super::markdown::show(ui, &mut app.markdown, user);
        });
    }
    ui.add_space(6.0);
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.strong("Assistant");
        if live.text.is_empty() && live.streaming() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.weak("Waiting for a node…");
            });
        } else {
            super::markdown::show(ui, &mut app.markdown, &live.text);
        }
        if let Some(e) = &live.error {
            ui.colored_label(ui.visuals().error_fg_color, format!("⚠ {e}"));
        }
        let seconds = live.started.elapsed().as_secs_f64().max(0.001);
        let mut parts = vec![live.model.clone()];
        if !live.node.is_empty() {
            parts.push(live.node.clone());
        }
        if live.pieces > 0 {
            parts.push(format!("{:.1} tok/s", live.pieces as f64 / seconds));
            parts.push(format!("{} tokens", live.pieces));
        }
        match &live.done {
            Some(reason) if reason == "stopped" => parts.push("stopped".into()),
            Some(_) => {}
            None if live.error.is_none() => parts.push("streaming… (Esc stops)".into()),
            None => {}
        }
        ui.weak(parts.join("  ·  "));
    });
}

fn composer(app: &mut App, ui: &mut egui::Ui) {
    ui.add_space(4.0);
    let id = egui::Id::new("composer-input");
    // Enter sends; Shift+Enter falls through to the text box as a new line.
    let focused = ui.memory(|m| m.has_focus(id));
    // (`consume_key` matches shift loosely, so Shift+Enter is ruled out first.)
    let send_now = focused
        && ui.input_mut(|i| {
            !i.modifiers.shift && i.consume_key(egui::Modifiers::NONE, egui::Key::Enter)
        });
    ui.horizontal(|ui| {
        let hint = if app.connected() {
            "Message (Enter sends, Shift+Enter new line)"
        } else {
            "Not connected to a node"
        };
        let width = ui.available_width() - 80.0;
        let input = ui.add(
            egui::TextEdit::multiline(&mut app.draft)
                .id(id)
                .hint_text(hint)
                .desired_rows(2)
                .desired_width(width),
        );
        if app.focus_input {
            input.request_focus();
            app.focus_input = false;
        }
        if app.streaming() {
            if ui.button("Stop").clicked() {
                app.stop();
            }
        } else if ui
            .add_enabled(
                app.connected() && !app.draft.trim().is_empty(),
                egui::Button::new("Send"),
            )
            .clicked()
        {
            app.send_draft();
        }
    });
    if send_now {
        app.send_draft();
    }
    ui.add_space(4.0);
}

/// The conversation's system prompt and the sampling settings.
fn settings(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.label("System prompt");
        ui.add(
            egui::TextEdit::multiline(&mut app.system)
                .desired_rows(2)
                .desired_width(ui.available_width() - 90.0)
                .hint_text("How the assistant should behave in this conversation"),
        );
        let recorded = app
            .path()
            .first()
            .filter(|m| m.role == "system")
            .map(|m| (m.id, m.text.clone()));
        if let (Some(conversation), Some((message, text))) = (app.selected, recorded) {
            if text != app.system && ui.button("Save").clicked() {
                let text = app.system.clone();
                app.command(Command::EditMessage {
                    conversation,
                    message,
                    text,
                });
            }
        }
    });
    ui.horizontal(|ui| {
        let s = &mut app.sampling;
        optional(ui, "Temperature", &mut s.temperature, 0.7, |ui, v| {
            ui.add(egui::Slider::new(v, 0.0..=2.0))
        });
        optional(ui, "Top-p", &mut s.top_p, 0.95, |ui, v| {
            ui.add(egui::Slider::new(v, 0.0..=1.0))
        });
        optional(ui, "Top-k", &mut s.top_k, 40, |ui, v| {
            ui.add(egui::DragValue::new(v).range(1..=1000))
        });
        optional(ui, "Max tokens", &mut s.max_tokens, 512, |ui, v| {
            ui.add(egui::DragValue::new(v).range(1..=32768))
        });
        optional(ui, "Seed", &mut s.seed, 1, |ui, v| {
            ui.add(egui::DragValue::new(v))
        });
    });
    ui.weak("Unticked settings use the serving node's defaults (the model's own recommendations).");
}

/// A setting that is either the node's default or a value of the user's.
fn optional<T: Copy>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut Option<T>,
    start: T,
    edit: impl FnOnce(&mut egui::Ui, &mut T) -> egui::Response,
) {
    let mut on = value.is_some();
    ui.checkbox(&mut on, label);
    match (on, value.as_mut()) {
        (true, Some(v)) => {
            edit(ui, v);
        }
        (true, None) => *value = Some(start),
        (false, _) => *value = None,
    }
}
