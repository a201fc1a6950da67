//! Shared helpers for hearth's integration tests: where the models at hand are, the reference
//! fixtures, the `hearth` binary, and a writer for small hand-made GGUF files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;

pub mod fidelity;
pub mod gui;
pub mod history;
pub mod mesh;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repo")
        .to_owned()
}

/// Directory holding the verified model files (`scripts/fetch-models` fills it).
pub fn models_dir() -> PathBuf {
    std::env::var_os("HEARTH_MODELS_DIR")
        .map_or_else(|| repo_root().join(".cache/models"), PathBuf::from)
}

/// The two models at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestModel {
    SmolLm2,
    Gemma3,
}

impl TestModel {
    /// Both models.
    pub const ALL: [TestModel; 2] = [TestModel::SmolLm2, TestModel::Gemma3];

    /// The cache name `scripts/fetch-models` registers.
    pub fn name(self) -> &'static str {
        match self {
            TestModel::SmolLm2 => "smollm2-135m",
            TestModel::Gemma3 => "gemma3-270m",
        }
    }

    /// The file's SHA-256 (its digest in every cache), as DESIGN.md gives it.
    pub const fn sha256(self) -> &'static str {
        match self {
            TestModel::SmolLm2 => {
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
            }
            TestModel::Gemma3 => "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        }
    }

    /// Path of the verified file; panics with instructions when it is missing.
    pub fn path(self) -> PathBuf {
        let file = match self {
            TestModel::SmolLm2 => "SmolLM2-135M-Instruct.Q4_1.gguf",
            TestModel::Gemma3 => "gemma-3-270m-q4_k_m.gguf",
        };
        let p = models_dir().join(file);
        assert!(
            p.is_file(),
            "{} is missing: run scripts/fetch-models (or make test)",
            p.display()
        );
        p
    }

    /// The llama.cpp reference fixture for this model.
    pub fn reference(self) -> Reference {
        let p = repo_root().join(format!("tests/fixtures/reference-{}.json", self.name()));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Opens the model with `threads` workers.
    pub fn open(self, threads: usize) -> hearth_shards::Model {
        hearth_shards::Model::open(&self.path(), threads).expect("model loads")
    }
}

/// `tests/fixtures/reference-*.json`, written by `scripts/make-reference-fixtures`.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub reference: String,
    pub tokenizer: Vec<TokenizerCase>,
    pub prompts: Vec<PromptCase>,
}

/// A text and the ids llama.cpp gives it (no BOS, special tokens parsed).
#[derive(Debug, Deserialize)]
pub struct TokenizerCase {
    pub text: String,
    pub ids: Vec<u32>,
}

/// A prompt, its ids (with BOS where the model wants it) and llama.cpp's greedy continuation.
#[derive(Debug, Deserialize)]
pub struct PromptCase {
    pub text: String,
    #[serde(default)]
    pub messages: Vec<hearth_shards::ChatMessage>,
    pub ids: Vec<u32>,
    pub greedy: Vec<u32>,
    /// llama.cpp's margin between its best and second-best logit at each greedy step.
    pub gaps: Vec<f32>,
}

/// The `hearth` binary built next to this test (cargo builds workspace binaries for tests).
pub fn hearth_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join(format!("hearth{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --release -p hearth-node`",
        bin.display()
    );
    bin
}

/// Runs `hearth ARGS` with its data directory at `data_dir` and `stdin` as input.
pub fn hearth(data_dir: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(hearth_bin())
        .args(args)
        .env("HEARTH_DATA_DIR", data_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hearth starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("hearth runs")
}

/// Runs a helper program (a client library driven from a script) that prints one JSON value,
/// failing with its stderr if it fails.
pub fn json_from(cmd: &mut Command) -> serde_json::Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} does not run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{cmd:?} printed no JSON: {e}"))
}

/// Builds small GGUF files by hand, for tests of bad and unusual input.
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
    n_tensors: u64,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

impl GgufWriter {
    /// Adds a string metadata entry.
    pub fn string(mut self, key: &str, value: &str) -> Self {
        put_str(&mut self.kv, key);
        self.kv.extend(8u32.to_le_bytes());
        put_str(&mut self.kv, value);
        self.n_kv += 1;
        self
    }

    /// Adds a u32 metadata entry.
    pub fn u32(mut self, key: &str, value: u32) -> Self {
        put_str(&mut self.kv, key);
        self.kv.extend(4u32.to_le_bytes());
        self.kv.extend(value.to_le_bytes());
        self.n_kv += 1;
        self
    }

    /// Adds an f32 metadata entry.
    pub fn f32(mut self, key: &str, value: f32) -> Self {
        put_str(&mut self.kv, key);
        self.kv.extend(6u32.to_le_bytes());
        self.kv.extend(value.to_le_bytes());
        self.n_kv += 1;
        self
    }

    /// Adds an F32 tensor of the given dimensions (innermost first), filled with `value`.
    pub fn f32_tensor(mut self, name: &str, dims: &[u64], value: f32) -> Self {
        put_str(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(0u32.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        let n: u64 = dims.iter().product();
        for _ in 0..n {
            self.data.extend(value.to_le_bytes());
        }
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self.n_tensors += 1;
        self
    }

    /// The file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

/// The adapter `--device gpu` picks: lavapipe (Mesa's software Vulkan) in CI, which `.ci/run`
/// installs. Panics with what to install when wgpu sees none.
pub fn gpu() -> std::sync::Arc<hearth_shards::gpu::Gpu> {
    use hearth_shards::gpu::{DeviceChoice, Gpu};
    Gpu::open(DeviceChoice::Gpu(None))
        .unwrap_or_else(|e| panic!("{e} (for tests: apt-get install mesa-vulkan-drivers)"))
        .expect("`gpu` names an adapter")
}
