//! The views: a top bar (connection, view switch, model), the sidebar of conversations, and the
//! chat or the mesh in the middle. Each view reads and changes [`App`]; none waits.

mod chat;
mod markdown;
mod mesh;
mod sidebar;
mod top;

use crate::app::{App, View};

/// Draws the whole window.
pub fn show(app: &mut App, ui: &mut egui::Ui) {
    egui::Panel::top("top").show(ui, |ui| top::show(app, ui));
    if !app.notices.is_empty() {
        egui::Panel::top("notices").show(ui, |ui| notices(app, ui));
    }
    egui::Panel::left("sidebar")
        .resizable(true)
        .default_size(240.0)
        .show(ui, |ui| sidebar::show(app, ui));
    egui::CentralPanel::default().show(ui, |ui| match app.view {
        View::Chat => chat::show(app, ui),
        View::Mesh => mesh::show(app, ui),
    });
}

/// Problems that are not part of a conversation (a rename that failed, the mesh unreadable).
fn notices(app: &mut App, ui: &mut egui::Ui) {
    let mut dismiss = None;
    for (i, n) in app.notices.iter().enumerate() {
        ui.horizontal(|ui| {
            ui.colored_label(ui.visuals().warn_fg_color, n);
            if ui.small_button("Dismiss").clicked() {
                dismiss = Some(i);
            }
        });
    }
    if let Some(i) = dismiss {
        app.notices.remove(i);
    }
}

/// A byte count for people: "1.2 GB".
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(super::bytes(999), "999 B");
        assert_eq!(super::bytes(98_000_000), "98.0 MB");
        assert_eq!(super::bytes(24 * 1_000_000_000), "24.0 GB");
    }
}
