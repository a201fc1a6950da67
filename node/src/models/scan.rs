//! GGUF files other tools already keep on this device: the Hugging Face hub cache, Ollama's store
//! (its manifests name each model's GGUF blob and tag) and LM Studio's models folder. Scanning
//! reads directories, manifests and GGUF headers only; `hearth models import --scan` then links
//! the chosen files into the cache (`Store::Link`) instead of copying them.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use hearth_shards::{Gguf, ModelSummary};

/// Deepest a folder is searched below a store's root (stores are shallow; this bounds a walk
/// into a folder someone pointed at by mistake).
const MAX_DEPTH: usize = 6;

/// The tool whose store a file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    HuggingFace,
    Ollama,
    LmStudio,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::HuggingFace => "Hugging Face",
            Source::Ollama => "Ollama",
            Source::LmStudio => "LM Studio",
        })
    }
}

/// Where each tool keeps its models on this device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Places {
    pub hugging_face: Vec<PathBuf>,
    pub ollama: Vec<PathBuf>,
    pub lm_studio: Vec<PathBuf>,
}

impl Places {
    /// The usual places on this device, under `$HOME`, with the environment's overrides.
    pub fn of_this_device() -> Places {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        Places::usual(&home, |k| std::env::var(k).ok())
    }

    /// The tools' usual places, with their environment overrides (`HF_HUB_CACHE`,
    /// `HUGGINGFACE_HUB_CACHE`, `HF_HOME`, `OLLAMA_MODELS`), under `home`.
    pub fn usual(home: &Path, env: impl Fn(&str) -> Option<String>) -> Places {
        let mut hugging_face: Vec<PathBuf> = ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"]
            .iter()
            .filter_map(|k| env(k).map(PathBuf::from))
            .collect();
        if let Some(hf_home) = env("HF_HOME") {
            hugging_face.push(Path::new(&hf_home).join("hub"));
        }
        hugging_face.push(home.join(".cache/huggingface/hub"));
        let mut ollama: Vec<PathBuf> = env("OLLAMA_MODELS")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        ollama.push(home.join(".ollama/models"));
        ollama.push(PathBuf::from("/usr/share/ollama/.ollama/models"));
        let lm_studio = vec![
            home.join(".lmstudio/models"),
            home.join(".cache/lm-studio/models"),
        ];
        Places {
            hugging_face,
            ollama,
            lm_studio,
        }
    }
}

/// A GGUF file found in another tool's store.
#[derive(Debug, Clone)]
pub struct Found {
    pub source: Source,
    /// Where it lies (links resolved).
    pub path: PathBuf,
    /// The name to import it under: the file's stem, or Ollama's `model-tag`.
    pub name: String,
    pub size: u64,
    /// What the header says, or why hearth cannot run it.
    pub model: Result<ModelSummary, String>,
}

impl Found {
    /// Whether hearth can run it.
    pub fn supported(&self) -> bool {
        self.model.is_ok()
    }
}

/// Every GGUF file in `places`, each once (a file reachable from two stores is listed at the
/// first): (source, path with links resolved, name). Reads directories and manifests only.
pub fn files(places: &Places) -> Vec<(Source, PathBuf, String)> {
    let stores = [
        (
            Source::HuggingFace,
            &places.hugging_face,
            gguf_files as fn(&Path) -> _,
        ),
        (Source::Ollama, &places.ollama, ollama_models),
        (Source::LmStudio, &places.lm_studio, gguf_files),
    ];
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (source, roots, find) in stores {
        for root in roots {
            for (path, name) in find(root) {
                let Ok(path) = path.canonicalize() else {
                    continue;
                };
                if seen.insert(path.clone()) {
                    out.push((source, path, name));
                }
            }
        }
    }
    out
}

/// Every GGUF file in `places`, with what its header says, ordered by source and name.
pub fn scan(places: &Places) -> Vec<Found> {
    let mut found: Vec<Found> = files(places)
        .into_iter()
        .filter_map(|(source, path, name)| {
            let size = std::fs::metadata(&path).ok()?.len();
            Some(Found {
                model: inspect(&path),
                source,
                path,
                name,
                size,
            })
        })
        .collect();
    found.sort_by(|a, b| (a.source, &a.name).cmp(&(b.source, &b.name)));
    found
}

/// The header's summary if hearth can run the model: a supported architecture whose every
/// tensor type the engine computes with.
fn inspect(path: &Path) -> Result<ModelSummary, String> {
    let gguf = Gguf::open(path).map_err(|e| format!("not a readable GGUF file: {e}"))?;
    hearth_shards::family::spec_for(&gguf).map_err(|e| e.to_string())?;
    if let Some(t) = gguf.tensors.values().find(|t| !t.ty.is_computable()) {
        return Err(format!(
            "tensor {} has type {}, which hearth does not compute with",
            t.name, t.ty
        ));
    }
    ModelSummary::of(&gguf).map_err(|e| e.to_string())
}

/// `.gguf` files below `root` (Hugging Face's snapshots, LM Studio's publisher/model folders),
/// named after their file's stem.
fn gguf_files(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    walk(root, 0, &mut |path| {
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf {
            if let Some(stem) = path.file_stem() {
                out.push((path.to_owned(), import_name(&stem.to_string_lossy())));
            }
        }
    });
    out
}

/// Ollama's models: each manifest (`manifests/<registry>/<namespace>/<model>/<tag>`) names its
/// GGUF layer by digest, stored as `blobs/sha256-<hex>`.
fn ollama_models(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    walk(&root.join("manifests"), 0, &mut |manifest| {
        let Some(layer_digest) = std::fs::read(manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| {
                m["layers"].as_array()?.iter().find_map(|l| {
                    (l["mediaType"] == "application/vnd.ollama.image.model")
                        .then(|| l["digest"].as_str().map(str::to_owned))
                        .flatten()
                })
            })
        else {
            return;
        };
        let blob = root.join("blobs").join(layer_digest.replace(':', "-"));
        let tag = manifest
            .file_name()
            .map(|t| t.to_string_lossy().into_owned());
        let model = manifest
            .parent()
            .and_then(Path::file_name)
            .map(|m| m.to_string_lossy().into_owned());
        if let (Some(model), Some(tag), true) = (model, tag, blob.is_file()) {
            out.push((blob, import_name(&format!("{model}-{tag}"))));
        }
    });
    out
}

/// Calls `visit` with every file below `dir`, following links, at most [`MAX_DEPTH`] deep.
fn walk(dir: &Path, depth: usize, visit: &mut dyn FnMut(&Path)) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, depth + 1, visit);
        } else if path.is_file() {
            visit(&path);
        }
    }
}

/// A cache name from another tool's: lowercase; characters the cache does not take become '-'.
fn import_name(raw: &str) -> String {
    let name: String = raw
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_places_follow_the_tools_variables() {
        let env = |k: &str| match k {
            "HF_HOME" => Some("/data/hf".to_owned()),
            "OLLAMA_MODELS" => Some("/data/ollama".to_owned()),
            _ => None,
        };
        let p = Places::usual(Path::new("/home/ann"), env);
        assert_eq!(
            p.hugging_face,
            [
                PathBuf::from("/data/hf/hub"),
                PathBuf::from("/home/ann/.cache/huggingface/hub")
            ]
        );
        assert_eq!(p.ollama[0], PathBuf::from("/data/ollama"));
        assert_eq!(p.lm_studio[0], PathBuf::from("/home/ann/.lmstudio/models"));
    }

    #[test]
    fn names_become_cache_names() {
        assert_eq!(
            import_name("Llama-3.2-1B-Instruct-Q4_K_M"),
            "llama-3.2-1b-instruct-q4_k_m"
        );
        assert_eq!(import_name("llama3.2-1b"), "llama3.2-1b");
        assert_eq!(import_name("qwen:7b chat"), "qwen-7b-chat");
    }

    #[test]
    fn an_ollama_manifest_names_its_model_blob() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let manifest = root.join("manifests/registry.ollama.ai/library/tiny/q4");
        std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::write(root.join("blobs/sha256-abcd"), b"GGUF").unwrap();
        std::fs::write(
            &manifest,
            r#"{"layers": [
                {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:0000"},
                {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:abcd"}
            ]}"#,
        )
        .unwrap();
        // A manifest whose blob is missing is skipped.
        let broken = root.join("manifests/registry.ollama.ai/library/gone/latest");
        std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
        std::fs::write(&broken, r#"{"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:ffff"}]}"#).unwrap();
        assert_eq!(
            ollama_models(root),
            [(root.join("blobs/sha256-abcd"), "tiny-q4".to_owned())]
        );
    }
}
