//! The top bar: the connection (and what to do when there is none), the view, the model.

use crate::app::{App, View};
use crate::backend::{Command, Connection};
use crate::connection::Target;

pub fn show(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        connection(app, ui);
        ui.separator();
        ui.selectable_value(&mut app.view, View::Chat, "Chat");
        ui.selectable_value(&mut app.view, View::Mesh, "Mesh");
        ui.separator();
        model_picker(app, ui);
        ui.toggle_value(&mut app.settings_open, "Settings");
        ui.toggle_value(&mut app.connect_open, "Connect…");
    });
    if let Some(line) = &app.starting {
        ui.label(format!("Local node: {line}"));
    }
    let lost = matches!(
        app.connection,
        Connection::Unreachable { .. } | Connection::Unauthorized { .. }
    );
    if lost || app.connect_open {
        connect_form(app, ui);
    }
}

fn connection(app: &mut App, ui: &mut egui::Ui) {
    let (colour, text) = match &app.connection {
        Connection::Connecting { url } => (
            ui.visuals().weak_text_color(),
            format!("Connecting to {url}…"),
        ),
        Connection::Connected { url, node } => (
            egui::Color32::from_rgb(60, 170, 90),
            format!("Connected to {node} ({url})"),
        ),
        Connection::Unreachable { url, .. } => (
            ui.visuals().error_fg_color,
            format!("Disconnected: no node at {url}"),
        ),
        Connection::Unauthorized { url, .. } => (
            ui.visuals().error_fg_color,
            format!("Token refused by {url}"),
        ),
    };
    let (dot, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
    ui.painter().circle_filled(dot.center(), 4.0, colour);
    ui.label(text);
}

/// What to do when nothing answers: start the local node, or point at another.
fn connect_form(app: &mut App, ui: &mut egui::Ui) {
    match &app.connection {
        Connection::Unreachable { error, local, .. } => {
            ui.label(format!("{error}. Retrying every few seconds."));
            if *local && app.starting.is_none() && ui.button("Start a local node").clicked() {
                app.command(Command::StartNode);
            }
        }
        Connection::Unauthorized { message, .. } => {
            ui.label(format!("{message}."));
        }
        _ => {}
    }
    ui.horizontal(|ui| {
        ui.label("Node URL");
        ui.add(
            egui::TextEdit::singleline(&mut app.connect_url)
                .hint_text("local node")
                .desired_width(220.0),
        );
        ui.label("API token");
        ui.add(
            egui::TextEdit::singleline(&mut app.connect_token)
                .password(true)
                .desired_width(160.0),
        );
        if ui.button("Connect").clicked() {
            let url = app.connect_url.trim();
            let token = app.connect_token.trim();
            let target = Target {
                url: (!url.is_empty()).then(|| url.to_owned()),
                token: (!token.is_empty()).then(|| token.to_owned()),
                data_dir: app.target.data_dir.clone(),
                hearth: app.target.hearth.clone(),
            };
            app.connection = Connection::Connecting { url: target.url() };
            app.connect_open = false;
            app.target = target.clone();
            app.command(Command::Connect(target));
        }
    });
}

/// Every model in the household, where it lives and how it would run.
fn model_picker(app: &mut App, ui: &mut egui::Ui) {
    let chosen = app.model.clone().unwrap_or_else(|| {
        app.default_model()
            .map_or_else(|| "no model".to_owned(), |m| format!("{m} (default)"))
    });
    egui::ComboBox::from_id_salt("model")
        .selected_text(chosen)
        .width(220.0)
        .show_ui(ui, |ui| {
            for m in &app.models {
                let how = match m.hearth.servable.as_str() {
                    "whole" => "runs whole",
                    "split" => "runs split over nodes",
                    _ => "no node can run it now",
                };
                let label = format!(
                    "{}  ·  {} {}  ·  {}  ·  on {}  ·  {how}",
                    m.id,
                    m.hearth.family,
                    m.hearth.quantization,
                    super::bytes(m.hearth.size),
                    m.hearth.nodes.join(", "),
                );
                ui.selectable_value(&mut app.model, Some(m.id.clone()), label);
            }
        });
}
