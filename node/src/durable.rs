//! Durable file writes: what a user was told is saved survives a crash or power cut.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// How soon a write must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before the write returns: what a user is told is saved.
    Now,
    /// Soon after, by the caller ([`sync_file`], [`sync_dir`]): data another device still holds
    /// and would send again, written in bulk where an fsync each would be the bottleneck.
    Soon,
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o644, Durability::Now)
}

/// As [`write_atomic`], but leaves the fsyncs to the caller when `durability` is `Soon` (the
/// rename is still atomic: a reader sees the old file or the new one).
pub fn write_replace(path: &Path, bytes: &[u8], durability: Durability) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o644, durability)
}

/// As [`write_atomic`], readable by the owner only (keys and secrets).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o600, Durability::Now)
}

/// Fsyncs the file at `path`.
pub fn sync_file(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Fsyncs directory `dir`, so renames and new files in it persist.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_with_mode(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = open_new(&tmp, mode)?;
    f.write_all(bytes)?;
    if durability == Durability::Soon {
        drop(f);
        return fs::rename(&tmp, path);
    }
    f.sync_all()?;
    drop(f);
    rename_durable(&tmp, path)
}

#[cfg(unix)]
fn open_new(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
}

#[cfg(not(unix))]
fn open_new(path: &Path, _mode: u32) -> std::io::Result<File> {
    File::create(path)
}

/// Renames `from` to `to` and fsyncs the destination directory so the rename itself persists.
pub fn rename_durable(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::rename(from, to)?;
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
