//! The node's data directory: identity, config, model cache and history live under it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where this node keeps its state.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// `explicit` (from `--data-dir` or `HEARTH_DATA_DIR`), else the platform's data directory.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        let root = match explicit {
            Some(p) => p.to_owned(),
            None => directories::ProjectDirs::from("", "", "hearth")
                .context("cannot find a home directory for hearth's data; pass --data-dir")?
                .data_dir()
                .to_owned(),
        };
        Ok(DataDir { root })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content-addressed model cache.
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }
}
