//! Broken, truncated, foreign and hand-made GGUF files give one clear error each, never a panic.

use std::path::Path;

use hearth_shards::{Error, Model};
use hearth_tests::{GgufWriter, TestModel};

fn open(path: &Path) -> Error {
    Model::open(path, 1).expect_err("model must not load")
}

#[test]
fn missing_file_names_the_path() {
    let err = open(Path::new("/nonexistent/model.gguf"));
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("/nonexistent/model.gguf"),
        "{err}"
    );
}

#[test]
fn non_gguf_and_truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "just some text, not a model").unwrap();
    assert!(matches!(open(&text), Error::NotGguf { .. }));

    let real = std::fs::read(TestModel::SmolLm2.path()).unwrap();
    for cut in [10, 5_000, 2_000_000, real.len() / 2, real.len() - 1] {
        let p = dir.path().join(format!("cut-{cut}.gguf"));
        std::fs::write(&p, &real[..cut]).unwrap();
        let err = open(&p);
        assert!(matches!(err, Error::Corrupt { .. }), "cut at {cut}: {err}");
        assert!(
            err.to_string()
                .contains("download or import the file again"),
            "{err}"
        );
    }
}

#[test]
fn corrupted_headers_are_refused_without_huge_allocations() {
    let real = std::fs::read(TestModel::Gemma3.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Overwrite counts and lengths in the header and first metadata entry with large values.
    for (at, bytes) in [
        (8usize, u64::MAX.to_le_bytes()),
        (16, (1u64 << 40).to_le_bytes()),
        (24, (1u64 << 50).to_le_bytes()),
    ] {
        let mut bad = real[..4_000_000].to_vec();
        bad[at..at + 8].copy_from_slice(&bytes);
        let p = dir.path().join(format!("bad-{at}.gguf"));
        std::fs::write(&p, &bad).unwrap();
        let err = open(&p);
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
    let mut v1 = real[..64].to_vec();
    v1[4] = 1;
    let p = dir.path().join("v1.gguf");
    std::fs::write(&p, &v1).unwrap();
    assert!(open(&p).to_string().contains("version 1"));
}

#[test]
fn unknown_architecture_names_itself_and_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mamba.gguf");
    std::fs::write(
        &p,
        GgufWriter::default()
            .string("general.architecture", "mamba")
            .f32_tensor("x", &[4], 1.0)
            .bytes(),
    )
    .unwrap();
    let err = open(&p);
    let msg = err.to_string();
    assert!(
        msg.contains("mamba") && msg.contains("llama") && msg.contains("gemma3"),
        "{msg}"
    );
}

#[test]
fn missing_tensors_and_metadata_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hollow.gguf");
    let w = GgufWriter::default().string("general.architecture", "llama");
    std::fs::write(&p, w.bytes()).unwrap();
    assert!(open(&p).to_string().contains("llama.embedding_length"));
}
