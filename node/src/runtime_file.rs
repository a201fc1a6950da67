//! The runtime file: where a running node can be reached, written to `<data-dir>/node.json`
//! while it runs, so that `hearth chat`, `hearth peers` and the tests find it.

use serde::{Deserialize, Serialize};

use crate::data_dir::DataDir;

/// What the runtime file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub name: String,
    pub peer_id: String,
    pub api: String,
    pub listen: Vec<String>,
    pub pid: u32,
    /// Where the Ollama API also answers (`--ollama-api`), if it does.
    #[serde(default)]
    pub ollama_api: Option<String>,
}

impl RuntimeInfo {
    /// The runtime file in `data`.
    pub fn path(data: &DataDir) -> std::path::PathBuf {
        data.root().join("node.json")
    }
}
