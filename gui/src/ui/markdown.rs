//! Message text as Markdown: headings, lists, tables, and code blocks with syntax colouring and
//! a copy button (egui_commonmark).

use egui_commonmark::{CommonMarkCache, CommonMarkViewer};

/// Renders `text`.
pub fn show(ui: &mut egui::Ui, cache: &mut CommonMarkCache, text: &str) {
    CommonMarkViewer::new().show(ui, cache, text);
}
