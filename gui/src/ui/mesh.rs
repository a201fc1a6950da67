//! The mesh view: every household node with its devices, models, queue and jobs; a live plot of
//! tokens/s per node; the route the last reply took; the join code and revoking a device.

use hearth_protocol::DeviceKind;
use serde_json::Value;

use crate::app::App;
use crate::backend::Command;
use crate::throughput::WINDOW_S;

pub fn show(app: &mut App, ui: &mut egui::Ui) {
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.heading(format!("Household nodes ({})", app.members.len()));
            if app.members.is_empty() {
                ui.weak("No node answers yet.");
            }
            let members = app.members.clone();
            for m in &members {
                node(app, ui, m);
            }
            ui.add_space(8.0);
            ui.heading("Tokens per second");
            plot(app, ui);
            ui.add_space(8.0);
            ui.heading("Last reply's route");
            route(app, ui);
            ui.add_space(8.0);
            household(app, ui);
        });
    confirm_revoke(app, ui);
}

fn node(app: &mut App, ui: &mut egui::Ui, m: &crate::api::Member) {
    let c = &m.card;
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.horizontal(|ui| {
            ui.strong(&c.name);
            if m.this_node {
                ui.weak("(this client's node)");
            }
            if c.draining {
                ui.colored_label(ui.visuals().warn_fg_color, "shutting down");
            }
            if let Some(ms) = m.latency_ms.filter(|_| !m.this_node) {
                ui.weak(format!("{ms:.1} ms away"));
            }
            ui.weak(&c.os);
        });
        for d in &c.devices {
            let kind = match d.kind {
                DeviceKind::Cpu => "CPU",
                DeviceKind::Cuda => "GPU (CUDA)",
                DeviceKind::Metal => "GPU (Metal)",
                DeviceKind::Gpu => "GPU",
            };
            let cores = d.cores.map(|n| format!(", {n} cores")).unwrap_or_default();
            let via = d
                .adapter
                .as_ref()
                .map(|a| format!(" (gpu:{}, {}, {})", a.index, a.vendor, a.backend))
                .unwrap_or_default();
            let memory = if d.total_memory == 0 {
                "memory not reported".to_owned()
            } else {
                format!(
                    "{} memory, {} free",
                    super::bytes(d.total_memory),
                    super::bytes(d.free_memory)
                )
            };
            ui.label(format!("{kind}: {}{via}{cores} · {memory}", d.name));
        }
        let name_of = |digest: &String| {
            c.models
                .iter()
                .find(|m| &m.digest == digest)
                .map_or_else(|| digest.chars().take(12).collect(), |m| m.name.clone())
        };
        let cached: Vec<String> = c.models.iter().map(|m| m.name.clone()).collect();
        let loaded: Vec<String> = c
            .loaded
            .iter()
            .map(|d| {
                let on = c.placements.iter().find(|p| &p.digest == d).map(|p| {
                    if p.gpu_layers == 0 {
                        " on the CPU".to_owned()
                    } else if p.gpu_layers < p.layers {
                        format!(" on {} ({} of {} layers)", p.device, p.gpu_layers, p.layers)
                    } else {
                        format!(" on {}", p.device)
                    }
                });
                format!("{}{}", name_of(d), on.unwrap_or_default())
            })
            .collect();
        ui.label(format!(
            "Models: {} · loaded: {}",
            if cached.is_empty() {
                "none".into()
            } else {
                cached.join(", ")
            },
            if loaded.is_empty() {
                "none".into()
            } else {
                loaded.join(", ")
            },
        ));
        let offered = c
            .max_memory
            .map_or_else(|| "all free memory".to_owned(), super::bytes);
        ui.label(format!(
            "Jobs: {} running, {} queued, {} at most · memory in use {} of {offered} · keys and values {} of {}",
            c.active_jobs,
            c.queue_depth,
            c.max_jobs,
            super::bytes(c.memory_used),
            super::bytes(c.kv_reserved),
            super::bytes(c.kv_budget),
        ));
        ui.horizontal(|ui| {
            if let Some(rate) = app.throughput.latest(&c.name) {
                ui.weak(format!("{rate:.1} tok/s now"));
            }
            if !m.this_node && ui.small_button("Remove from household…").clicked() {
                app.confirm_revoke = Some((m.peer_id.clone(), c.name.clone()));
            }
        });
    });
}

fn plot(app: &App, ui: &mut egui::Ui) {
    let now = app.since.elapsed().as_secs_f64();
    egui_plot::Plot::new("throughput")
        .height(180.0)
        .legend(egui_plot::Legend::default())
        .include_x(-WINDOW_S.min(now))
        .include_x(0.0)
        .include_y(0.0)
        .x_axis_label("seconds ago")
        .y_axis_label("tokens/s")
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .show(ui, |plot| {
            for (node, points) in app.throughput.series(now) {
                plot.line(egui_plot::Line::new(node, points));
            }
        });
}

/// The ranking and any split plan for the last reply's model, as `/api/route` gave it.
fn route(app: &App, ui: &mut egui::Ui) {
    let Some(r) = &app.route else {
        ui.weak("Send a message to see which node serves it.");
        return;
    };
    let model = r["model"]["info"]["name"].as_str().unwrap_or("?");
    let ranked: Vec<String> = r["ranked"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["node"].as_str().map(str::to_owned))
        .collect();
    match r["split"]["status"].as_str() {
        Some("planned") => {
            ui.label(format!(
                "{model}: split over {} stages",
                stages(&r["split"]).len()
            ));
            for s in stages(&r["split"]) {
                ui.label(format!("  • {s}"));
            }
        }
        _ if !ranked.is_empty() => {
            let others = if ranked.len() > 1 {
                format!(" (next: {})", ranked[1..].join(", "))
            } else {
                String::new()
            };
            ui.label(format!("{model}: whole on {}{others}", ranked[0]));
        }
        _ => {
            ui.label(format!("{model}: no node can serve it now"));
        }
    }
    for rejected in r["rejected"].as_array().into_iter().flatten() {
        ui.weak(format!(
            "{}: {}",
            rejected["node"].as_str().unwrap_or("?"),
            rejected["reason"].as_str().unwrap_or("")
        ));
    }
}

fn stages(split: &Value) -> Vec<String> {
    split["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}: layers {}–{}",
                s["node"].as_str().unwrap_or("?"),
                s["start"],
                s["end"]
            )
        })
        .collect()
}

fn household(app: &mut App, ui: &mut egui::Ui) {
    ui.heading("Household");
    let Some(h) = app.household.clone() else {
        ui.weak("Not known yet.");
        return;
    };
    ui.label(format!("Fingerprint: {}", h.fingerprint));
    ui.horizontal(|ui| {
        if app.show_join_code {
            ui.monospace(&h.join_code);
            if ui.small_button("Copy").clicked() {
                ui.copy_text(h.join_code.clone());
            }
            if ui.small_button("Hide").clicked() {
                app.show_join_code = false;
            }
        } else if ui.button("Show join code").clicked() {
            app.show_join_code = true;
        }
    });
    ui.weak("On a new device: `hearth household join CODE`, then start `hearth node`.");
    if !h.revoked.is_empty() {
        ui.label(format!("Removed devices: {}", h.revoked.len()));
    }
}

fn confirm_revoke(app: &mut App, ui: &mut egui::Ui) {
    let Some((peer, name)) = app.confirm_revoke.clone() else {
        return;
    };
    let modal = egui::Modal::new(egui::Id::new("confirm-revoke")).show(ui.ctx(), |ui| {
        ui.heading(format!("Remove {name} from the household?"));
        ui.label("It loses access at once: no service, no history. To come back it needs the join code and a new identity.");
        ui.horizontal(|ui| {
            if ui.button("Remove").clicked() {
                app.command(Command::Revoke(peer.clone()));
                app.confirm_revoke = None;
            }
            if ui.button("Cancel").clicked() {
                app.confirm_revoke = None;
            }
        });
    });
    if modal.should_close() {
        app.confirm_revoke = None;
    }
}
