//! Finding the node to talk to: a URL given on the command line, else the runtime file a local
//! node writes into its data directory (`node.json`), else the default address; and starting a
//! local node (the `hearth` binary beside this one) when none runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The default API address of `hearth node`.
pub const DEFAULT_API: &str = "127.0.0.1:4317";

/// Where the client looks for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// An explicit API URL; `None`: the local node, found through its runtime file.
    pub url: Option<String>,
    pub token: Option<String>,
    /// The data directory of the local node.
    pub data_dir: Option<PathBuf>,
    /// The `hearth` binary that starts a local node; `None`: the one beside this client, else
    /// the one on the `PATH`.
    pub hearth: Option<PathBuf>,
}

impl Target {
    /// The data directory: the one given, else the platform's (as `hearth` resolves it).
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir.clone().or_else(|| {
            directories::ProjectDirs::from("", "", "hearth").map(|d| d.data_dir().to_owned())
        })
    }

    /// The API URL to try now: read again each time, since a local node may start (on another
    /// port) while the client runs.
    pub fn url(&self) -> String {
        if let Some(url) = &self.url {
            return with_scheme(url);
        }
        let api = self
            .data_dir()
            .and_then(|d| std::fs::read(d.join("node.json")).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["api"].as_str().map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_API.to_owned());
        with_scheme(&api)
    }

    /// The `hearth` binary to start a local node with.
    pub fn hearth(&self) -> PathBuf {
        self.hearth.clone().unwrap_or_else(hearth_binary)
    }

    /// Whether this target is the local node (so starting one makes sense).
    pub fn is_local(&self) -> bool {
        self.url.is_none()
    }
}

fn with_scheme(url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", url.trim_end_matches('/'))
    }
}

/// The `hearth` binary: beside this one, else on the `PATH`.
fn hearth_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(binary_name())))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(binary_name()))
}

fn binary_name() -> &'static str {
    if cfg!(windows) {
        "hearth.exe"
    } else {
        "hearth"
    }
}

/// A local node this client started.
#[derive(Debug)]
pub struct Started {
    pub pid: u32,
    /// Where its log goes.
    pub log: PathBuf,
}

/// Starts `hearth node` on `data_dir` in the background (creating a household first when this
/// device has none), its output going to `<data-dir>/node.log`. The node keeps serving the
/// household after the client closes.
pub fn start_node(hearth: &Path, data_dir: &Path) -> Result<Started, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    if !data_dir.join("household.toml").exists() {
        let out = Command::new(hearth)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["household", "init"])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", hearth.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`hearth household init` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let log = data_dir.join("node.log");
    let file =
        std::fs::File::create(&log).map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    let child = Command::new(hearth)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("node")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", hearth.display()))?;
    Ok(Started {
        pid: child.id(),
        log,
    })
}

/// The last line of a log file, for progress.
pub fn last_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_file_names_the_local_node_and_a_url_wins() {
        let dir = tempfile::tempdir().unwrap();
        let local = Target {
            url: None,
            token: None,
            data_dir: Some(dir.path().to_owned()),
            hearth: None,
        };
        assert_eq!(local.url(), format!("http://{DEFAULT_API}"));
        std::fs::write(dir.path().join("node.json"), r#"{"api": "127.0.0.1:5555"}"#).unwrap();
        assert_eq!(local.url(), "http://127.0.0.1:5555");
        let remote = Target {
            url: Some("http://den.local:4317/".into()),
            ..local
        };
        assert_eq!(remote.url(), "http://den.local:4317");
        assert!(!remote.is_local());
    }
}
