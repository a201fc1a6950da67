//! `hearth node`: merges flags, environment and config file, then runs the daemon.

use anyhow::Result;

use crate::cli::NodeArgs;
use crate::config::{config_path, Settings};
use crate::daemon;
use crate::data_dir::DataDir;

pub(super) fn node(data: DataDir, args: NodeArgs) -> Result<()> {
    let (path, required) = config_path(args.config.as_deref(), data.root());
    let file = Settings::from_file(&path, required)?;
    let config = args.settings.or(file).resolve()?;
    daemon::run(data, config)
}
