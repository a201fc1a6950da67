//! The sidebar: the household's conversations, newest first, with search, new, rename and
//! delete. Changes made on other devices arrive through the history's change stream.

use crate::app::App;
use crate::backend::Command;

pub fn show(app: &mut App, ui: &mut egui::Ui) {
    ui.add_space(4.0);
    if ui.button("New chat  (Ctrl+N)").clicked() {
        app.new_chat();
    }
    let search = ui.add(
        egui::TextEdit::singleline(&mut app.search)
            .hint_text("Search (Ctrl+K)")
            .desired_width(f32::INFINITY),
    );
    if app.focus_search {
        search.request_focus();
        app.focus_search = false;
    }
    if search.changed() {
        let q = app.search.clone();
        app.command(Command::Search(q));
    }
    ui.separator();
    egui::ScrollArea::vertical().show(ui, |ui| {
        let list = app.conversations.clone();
        if list.is_empty() {
            ui.weak(if app.search.is_empty() {
                "No conversations yet"
            } else {
                "Nothing matches"
            });
        }
        for c in list {
            let title = if c.title.is_empty() {
                "Untitled".to_owned()
            } else {
                c.title.clone()
            };
            if app.renaming.as_ref().is_some_and(|(id, _)| *id == c.id) {
                rename_row(app, ui);
                continue;
            }
            let row = ui.selectable_label(app.selected == Some(c.id), title);
            if row.clicked() {
                app.select(c.id);
            }
            row.context_menu(|ui| {
                if ui.button("Rename").clicked() {
                    app.renaming = Some((c.id, c.title.clone()));
                    ui.close();
                }
                if ui.button("Delete…").clicked() {
                    app.confirm_delete = Some(c.id);
                    ui.close();
                }
            });
        }
    });
    confirm_delete(app, ui);
}

fn rename_row(app: &mut App, ui: &mut egui::Ui) {
    let Some((id, title)) = &mut app.renaming else {
        return;
    };
    let id = *id;
    let edit = ui.add(egui::TextEdit::singleline(title).desired_width(f32::INFINITY));
    edit.request_focus();
    if edit.lost_focus() {
        let title = title.trim().to_owned();
        app.renaming = None;
        if ui.input(|i| i.key_pressed(egui::Key::Enter)) && !title.is_empty() {
            app.command(Command::Rename(id, title));
        }
    }
}

fn confirm_delete(app: &mut App, ui: &mut egui::Ui) {
    let Some(id) = app.confirm_delete else {
        return;
    };
    let title = app
        .conversations
        .iter()
        .find(|c| c.id == id)
        .map_or_else(String::new, |c| c.title.clone());
    let modal = egui::Modal::new(egui::Id::new("confirm-delete")).show(ui.ctx(), |ui| {
        ui.heading("Delete this conversation?");
        ui.label(format!(
            "“{title}” will be deleted on every device of the household."
        ));
        ui.horizontal(|ui| {
            if ui.button("Delete").clicked() {
                app.command(Command::Delete(id));
                app.confirm_delete = None;
            }
            if ui.button("Cancel").clicked() {
                app.confirm_delete = None;
            }
        });
    });
    if modal.should_close() {
        app.confirm_delete = None;
    }
}
