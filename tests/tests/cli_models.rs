//! The `hearth` binary as a person uses it: help, importing and listing models, running a prompt,
//! chatting, benchmarking, and one-line errors for mistakes.

use hearth_tests::{hearth, TestModel};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["chat", "--help"],
        &["bench", "--help"],
        &["models", "--help"],
        &["models", "import", "--help"],
    ] {
        let o = hearth(dir.path(), args, "");
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn import_list_resolve_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = TestModel::SmolLm2.path();
    let p = path.to_str().unwrap();
    let o = hearth(d, &["models", "list"], "");
    assert!(stdout(&o).contains("no models cached"));

    let o = hearth(
        d,
        &[
            "models",
            "import",
            p,
            "--name",
            "smol",
            "--sha256",
            &"0".repeat(64),
        ],
        "",
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("expected 0000"), "{}", stderr(&o));

    let o = hearth(d, &["models", "import", p, "--name", "smol"], "");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = hearth(d, &["models", "import", p], "");
    assert!(
        stdout(&o).contains("already cached as smol"),
        "{}",
        stdout(&o)
    );

    let o = hearth(d, &["models", "list"], "");
    let listing = stdout(&o);
    for col in ["smol", "llama", "Q4_1", "98.4 MB", "30", "b179c9523d0e6a0f"] {
        assert!(listing.contains(col), "missing {col} in\n{listing}");
    }
    let o = hearth(d, &["models", "list", "--json"], "");
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json[0]["summary"]["layers"], 30);

    // Name, digest prefix and path all find the model.
    for m in ["smol", "SMOL", "b179c95", p] {
        let o = hearth(
            d,
            &["run", "-m", m, "-p", "Hi", "-n", "3", "--temperature", "0"],
            "",
        );
        assert!(o.status.success(), "-m {m}: {}", stderr(&o));
    }
    let o = hearth(d, &["run", "-m", "nosuch", "-p", "Hi"], "");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no model nosuch") && stderr(&o).contains("smol"),
        "{}",
        stderr(&o)
    );

    let o = hearth(d, &["models", "remove", "smol"], "");
    assert!(o.status.success());
    assert!(stdout(&hearth(d, &["models", "list"], "")).contains("no models cached"));
}

#[test]
fn import_refuses_files_that_are_not_models() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let o = hearth(
        dir.path(),
        &["models", "import", junk.to_str().unwrap()],
        "",
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("damaged"), "{err}");
}

#[test]
fn run_streams_a_greedy_reply() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestModel::Gemma3.path();
    let o = hearth(
        dir.path(),
        &[
            "run",
            "-m",
            p.to_str().unwrap(),
            "-p",
            "The capital of France is",
            "-n",
            "8",
            "--temperature",
            "0",
            "--stats",
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Paris") || stdout(&o).to_lowercase().contains("capital"),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("generated at"), "{}", stderr(&o));
}

#[test]
fn absurd_parameters_get_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestModel::SmolLm2.path();
    let p = p.to_str().unwrap();
    let o = hearth(
        dir.path(),
        &["run", "-m", p, "-p", "Hi", "--top-p", "7"],
        "",
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("top-p 7"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1);
    let o = hearth(
        dir.path(),
        &["run", "-m", p, "-p", "Hi", "--max-tokens", "-5"],
        "",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--max-tokens"), "{}", stderr(&o));
    let o = hearth(
        dir.path(),
        &["run", "-m", p, "-p", "Hi", "--temperature", "-1"],
        "",
    );
    assert!(!o.status.success());
    let o = hearth(dir.path(), &["bench", "-m", p, "-t", "0"], "");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn chat_keeps_history_resets_and_quits() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestModel::SmolLm2.path();
    let input = "Hello!\n/bogus\nWhat did I just say?\n/reset\nHi again\n/quit\nnever read\n";
    let o = hearth(
        dir.path(),
        &[
            "chat",
            "-m",
            p.to_str().unwrap(),
            "--temperature",
            "0",
            "-n",
            "12",
            "--stats",
        ],
        input,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("unknown command /bogus"), "{out}");
    assert!(out.contains("(new conversation)"), "{out}");
    let err = stderr(&o);
    let stats: Vec<&str> = err.lines().filter(|l| l.contains("reused")).collect();
    assert_eq!(stats.len(), 3, "{}", stderr(&o));
    // The second turn reuses the first turn's cached prompt; after /reset nothing is reused.
    assert!(!stats[1].contains("(0 reused)"), "{}", stats[1]);
    assert!(stats[2].contains("(0 reused)"), "{}", stats[2]);
}

#[test]
fn bench_reports_speed_and_peak_memory() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestModel::SmolLm2.path();
    let o = hearth(
        dir.path(),
        &[
            "bench",
            "-m",
            p.to_str().unwrap(),
            "-t",
            "2",
            "-p",
            "32",
            "-n",
            "8",
            "-r",
            "2",
            "--json",
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["test"], "pp32");
    assert_eq!(lines[1]["test"], "tg8");
    for l in &lines[..2] {
        assert!(l["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(l["samples"].as_array().unwrap().len(), 2);
    }
    assert!(lines[2]["peak_rss_bytes"].as_u64().unwrap() > 0);
}

/// Puts `src` at `dst` without copying it when the file system allows.
fn place(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).unwrap();
    }
}

#[test]
fn models_scan_finds_other_tools_models_and_links_them_in() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (home, data, ollama) = (
        dir.path().join("home"),
        dir.path().join("data"),
        dir.path().join("ollama"),
    );
    // Hugging Face's hub cache: a snapshot's file is a link to its blob.
    let repo =
        home.join(".cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF");
    let blob = repo.join("blobs/b179c952");
    place(&TestModel::SmolLm2.path(), &blob);
    let snapshot = repo.join("snapshots/0a1b2c/SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("../../blobs/b179c952", &snapshot).unwrap();
    // Ollama's store: a manifest naming the model's blob by digest.
    let digest = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
    place(
        &TestModel::Gemma3.path(),
        &ollama.join(format!("blobs/sha256-{digest}")),
    );
    let manifest = ollama.join("manifests/registry.ollama.ai/library/gemma3/270m");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(
        &manifest,
        format!(r#"{{"layers": [{{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:{digest}"}}]}}"#),
    )
    .unwrap();
    // LM Studio's folder: a model of a family hearth does not run, and a broken file.
    let lm = home.join(".lmstudio/models/someone/tiny");
    std::fs::create_dir_all(&lm).unwrap();
    let bert = hearth_tests::GgufWriter::default()
        .string("general.architecture", "bert")
        .bytes();
    std::fs::write(lm.join("bert-tiny.gguf"), bert).unwrap();
    std::fs::write(lm.join("broken.gguf"), b"GGUF\x03\x00\x00\x00garbage").unwrap();

    let scan = |args: &[&str]| {
        let o = std::process::Command::new(hearth_tests::hearth_bin())
            .args(["models", "import", "--scan"])
            .args(args)
            .env("HOME", &home)
            .env("HEARTH_DATA_DIR", &data)
            .env("OLLAMA_MODELS", &ollama)
            .env_remove("HF_HOME")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .output()
            .unwrap();
        (o.status.code(), stdout(&o), stderr(&o))
    };
    let (code, out, err) = scan(&[]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    assert!(
        rows[0].contains("Hugging Face")
            && rows[0].contains("smollm2-135m-instruct.q4_1")
            && rows[0].contains("llama")
            && rows[0].contains("Q4_1")
            && rows[0].ends_with("runs"),
        "{out}"
    );
    assert!(
        rows[1].contains("Ollama")
            && rows[1].contains("gemma3-270m")
            && rows[1].contains("gemma3")
            && rows[1].ends_with("runs"),
        "{out}"
    );
    assert!(
        rows[2].contains("LM Studio")
            && rows[2].contains("bert-tiny")
            && rows[2].contains("cannot run")
            && rows[2].contains("bert"),
        "{out}"
    );
    assert!(
        rows[3].contains("broken") && rows[3].contains("cannot run"),
        "{out}"
    );
    assert!(out.contains("--all"), "a hint says how to import: {out}");

    // Picking one that cannot run is refused with the reason; --all links the two that can.
    let (code, _, err) = scan(&["--pick", "3"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot run here") && err.contains("bert"),
        "{err}"
    );
    let (code, out, err) = scan(&["--all"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.matches("linked (no copy)").count(), 2, "{out}");
    let cached =
        data.join("models/b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53.gguf");
    assert_eq!(
        std::fs::metadata(&cached).unwrap().ino(),
        std::fs::metadata(&blob).unwrap().ino(),
        "the cache entry is the same file, not a copy"
    );
    let list = hearth(&data, &["models", "list"], "");
    let listed = stdout(&list);
    assert!(
        listed.contains("smollm2-135m-instruct.q4_1") && listed.contains("gemma3-270m"),
        "{listed}"
    );
    // Scanning again finds them cached already; a linked model runs.
    let (_, out, _) = scan(&["--all"]);
    assert_eq!(out.matches("already cached").count(), 2, "{out}");
    let run = hearth(
        &data,
        &[
            "run",
            "-m",
            "gemma3-270m",
            "-p",
            "Hello",
            "-n",
            "3",
            "--temperature",
            "0",
        ],
        "",
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(!stdout(&run).trim().is_empty());
}
