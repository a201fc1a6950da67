//! `hearth-gui`: the desktop chat client.

use std::path::PathBuf;

use clap::Parser;

/// Chat with the household's models, browse the synced conversations, watch the mesh.
#[derive(Debug, Parser)]
#[command(name = "hearth-gui", version)]
struct Args {
    /// A node's API URL (default: the local node, found through its runtime file).
    #[arg(long, env = "HEARTH_URL")]
    url: Option<String>,
    /// The node's API token, if it needs one.
    #[arg(long, env = "HEARTH_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The local node's data directory (default: the platform's, as for `hearth`).
    #[arg(long, env = "HEARTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The `hearth` binary that starts a local node (default: the one beside this client).
    #[arg(long, env = "HEARTH_BIN")]
    hearth: Option<PathBuf>,
}

fn main() -> eframe::Result {
    let args = Args::parse();
    let target = hearth_gui::Target {
        url: args.url,
        token: args.token,
        data_dir: args.data_dir,
        hearth: args.hearth,
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("hearth")
            .with_inner_size([1100.0, 720.0])
            .with_min_inner_size([520.0, 360.0]),
        ..Default::default()
    };
    eframe::run_native(
        "hearth",
        options,
        Box::new(|cc| Ok(Box::new(hearth_gui::App::new(target, &cc.egui_ctx)))),
    )
}
