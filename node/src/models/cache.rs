//! The model cache: GGUF files stored by SHA-256 digest under `<data-dir>/models`, with an index
//! of names. Imports are verified, copied through a temp file and renamed into place.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hearth_protocol::{Manifest, ManifestBuilder};
use hearth_shards::{Gguf, ModelSummary};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::durable;

/// The model `hearth chat` uses when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// One cached model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedModel {
    pub name: String,
    /// Lowercase hex SHA-256 of the file.
    pub digest: String,
    pub size: u64,
    pub summary: ModelSummary,
    /// Root of the file's chunk manifest (stored beside the file), once computed: at import,
    /// or at the node's start for models imported before manifests existed.
    #[serde(default)]
    pub manifest_root: Option<String>,
    /// Kept when the cache makes room (`hearth models pin`).
    #[serde(default)]
    pub pinned: bool,
    /// When it was last loaded, imported or pulled (seconds since the Unix epoch): the least
    /// recently used go first when the cache makes room.
    #[serde(default)]
    pub last_used: u64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    models: Vec<CachedModel>,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub enum Imported {
    /// Copied into the cache.
    Added(CachedModel),
    /// Added as a hard link to the file where it lies (no second copy).
    Linked(CachedModel),
    AlreadyPresent(CachedModel),
}

/// How an imported file enters the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A copy of its own.
    Copy,
    /// A hard link to the file (a copy only when the cache is on another file system). The
    /// file must not be changed in place afterwards: other tools' model stores never do.
    Link,
}

/// A model named on the command line, found.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub path: PathBuf,
    /// The cache entry, when the model came from the cache rather than a bare path.
    pub entry: Option<CachedModel>,
}

/// The content-addressed model store.
#[derive(Debug, Clone)]
pub struct ModelCache {
    dir: PathBuf,
}

impl ModelCache {
    /// The cache in `dir` (created on first import).
    pub fn new(dir: PathBuf) -> Self {
        ModelCache { dir }
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    /// Where a model with `digest` is stored.
    pub fn file_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.gguf"))
    }

    /// Where the chunk manifest of the model with `digest` is stored.
    fn manifest_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.chunks"))
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chunk manifest of the cached model with `digest`; `None` when none is stored (or it
    /// is damaged: [`Self::ensure_manifests`] makes it again).
    pub fn manifest(&self, digest: &str) -> Option<Manifest> {
        Manifest::from_bytes(&fs::read(self.manifest_path(digest)).ok()?)
    }

    /// Computes the manifests that models imported before manifests existed lack (reading each
    /// such file once) and records their roots; returns how many it made.
    pub fn ensure_manifests(&self) -> Result<usize> {
        let mut made = 0;
        for m in self.list()? {
            // At every start: only whether the file is there, not its contents.
            if m.manifest_root.is_some() && self.manifest_path(&m.digest).is_file() {
                continue;
            }
            let path = self.file_path(&m.digest);
            let (digest, manifest) = hash_into(&path, None, m.size, &|_, _| {}, true)?;
            if digest != m.digest {
                // A root made from a damaged file would be advertised to peers as the model's.
                tracing::warn!(model = %m.name, file = %path.display(), "a cached model's file no longer matches its SHA-256; it is not offered to peers (import it again)");
                continue;
            }
            let manifest = manifest.expect("asked for");
            self.save_manifest(&m.digest, &manifest)?;
            let mut index = self.load_index()?;
            if let Some(e) = index.models.iter_mut().find(|e| e.digest == m.digest) {
                e.manifest_root = Some(manifest.root());
            }
            self.save_index(&index)?;
            made += 1;
        }
        Ok(made)
    }

    fn save_manifest(&self, digest: &str, manifest: &Manifest) -> Result<()> {
        let path = self.manifest_path(digest);
        durable::write_atomic(&path, &manifest.to_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn load_index(&self) -> Result<Index> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "model index {} is damaged; remove it and import the models again",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save_index(&self, index: &Index) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index)?;
        durable::write_atomic(&self.index_path(), &bytes)
            .with_context(|| format!("cannot write {}", self.index_path().display()))
    }

    /// Every cached model, in import order.
    pub fn list(&self) -> Result<Vec<CachedModel>> {
        Ok(self.load_index()?.models)
    }

    /// Imports a GGUF file: checks it parses, hashes it while copying it into the cache, checks
    /// `expected_sha256` when given, and records it under `name` (default: the file's stem).
    /// `progress` is called with (bytes done, total).
    pub fn import(
        &self,
        src: &Path,
        name: Option<&str>,
        expected_sha256: Option<&str>,
        how: Store,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Imported> {
        let expected = expected_sha256.map(str::to_lowercase);
        if let Some(e) = &expected {
            if e.len() != 64 || !e.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("--sha256 {e} is not a SHA-256 digest (64 hex characters)");
            }
            // The cache already holds a verified copy: no need to read and copy the file again.
            let index = self.load_index()?;
            if let Some(existing) = index.models.iter().find(|m| m.digest == *e) {
                if self.file_path(e).is_file() {
                    return Ok(Imported::AlreadyPresent(existing.clone()));
                }
            }
        }
        let gguf = Gguf::open(src).with_context(|| format!("cannot import {}", src.display()))?;
        let summary =
            ModelSummary::of(&gguf).with_context(|| format!("cannot import {}", src.display()))?;
        drop(gguf);
        let name = match name {
            Some(n) => n.to_owned(),
            None => src
                .file_stem()
                .map(|s| s.to_string_lossy().to_lowercase())
                .unwrap_or_else(|| "model".into()),
        };
        validate_name(&name)?;
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the model cache {}", self.dir.display()))?;

        let total = fs::metadata(src)?.len();
        let tmp = self.dir.join(format!(".import-{}.tmp", std::process::id()));
        // Linked: the file is hashed where it lies and the cache entry is a hard link to it
        // (no second copy); copied when linking is impossible (another file system).
        // A temp file left by a crashed import may be a link to someone's file: never write
        // through it.
        let _ = fs::remove_file(&tmp);
        // Either way the file is read once.
        let linked = how == Store::Link && fs::hard_link(src, &tmp).is_ok();
        let (digest, manifest) = if linked {
            hash_into(&tmp, None, total, progress, true)
        } else {
            hash_into(src, Some(&tmp), total, progress, true)
        }
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        if let Some(e) = &expected {
            if *e != digest {
                let _ = fs::remove_file(&tmp);
                bail!("{} has SHA-256 {digest}, expected {e}: the file is corrupt or not the one you meant; download it again", src.display());
            }
        }
        let index = self.load_index()?;
        if let Some(existing) = index.models.iter().find(|m| m.digest == digest) {
            let _ = fs::remove_file(&tmp);
            return Ok(Imported::AlreadyPresent(existing.clone()));
        }
        if let Some(taken) = index
            .models
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(&name))
        {
            let _ = fs::remove_file(&tmp);
            bail!(
                "the name {name} already belongs to model {}; pick another with --name",
                &taken.digest[..12]
            );
        }
        let manifest = manifest.expect("asked for");
        let entry = self.enter(&tmp, name, digest, summary, &manifest)?;
        Ok(if linked {
            Imported::Linked(entry)
        } else {
            Imported::Added(entry)
        })
    }

    /// Adds the verified file `tmp` (fsynced, its SHA-256 `digest` checked) under `name`:
    /// its manifest first, then the file renamed into place, then the index entry.
    fn enter(
        &self,
        tmp: &Path,
        name: String,
        digest: String,
        summary: ModelSummary,
        manifest: &Manifest,
    ) -> Result<CachedModel> {
        self.save_manifest(&digest, manifest)?;
        durable::rename_durable(tmp, &self.file_path(&digest))?;
        let entry = CachedModel {
            name,
            size: manifest.size,
            manifest_root: Some(manifest.root()),
            digest,
            summary,
            pinned: false,
            last_used: now(),
        };
        let mut index = self.load_index()?;
        index.models.retain(|m| m.digest != entry.digest);
        index.models.push(entry.clone());
        self.save_index(&index)?;
        Ok(entry)
    }

    /// Adds a pulled file: `tmp` holds every byte of the model with `digest` (fsynced), each
    /// chunk verified against `manifest`. Checks the whole file's SHA-256, then enters it under
    /// `name` (the name it has on the household, or the digest's first 12 characters' model
    /// name when that name is taken here by another model).
    pub fn add_pulled(
        &self,
        tmp: &Path,
        name: &str,
        digest: &str,
        manifest: &Manifest,
        progress: &dyn Fn(u64, u64),
    ) -> Result<CachedModel> {
        // The chunks were checked against `manifest` as they came: only the SHA-256 is left.
        let (got, _) = hash_into(tmp, None, manifest.size, progress, false)?;
        if got != digest {
            bail!("the pulled file has SHA-256 {got}, not {digest}: the holders' manifest does not describe the model");
        }
        let gguf = Gguf::open(tmp).context("the pulled file is not a GGUF model")?;
        let summary = ModelSummary::of(&gguf)?;
        drop(gguf);
        let index = self.load_index()?;
        if let Some(existing) = index.models.iter().find(|m| m.digest == digest) {
            let _ = fs::remove_file(tmp);
            return Ok(existing.clone());
        }
        let taken = |n: &str| index.models.iter().any(|m| m.name.eq_ignore_ascii_case(n));
        let name = if validate_name(name).is_err() || taken(name) {
            format!(
                "{}-{}",
                name.chars().take(40).collect::<String>(),
                &digest[..8]
            )
        } else {
            name.to_owned()
        };
        let name = if validate_name(&name).is_ok() && !taken(&name) {
            name
        } else {
            format!("model-{}", &digest[..12])
        };
        self.enter(tmp, name, digest.to_owned(), summary, manifest)
    }

    /// Pins (or unpins) a model by name or digest prefix: a pinned model is never removed to
    /// make room.
    pub fn set_pinned(&self, query: &str, pinned: bool) -> Result<CachedModel> {
        let mut index = self.load_index()?;
        let digest = find(&index.models, query)?.digest.clone();
        let entry = index
            .models
            .iter_mut()
            .find(|m| m.digest == digest)
            .expect("found above");
        entry.pinned = pinned;
        let entry = entry.clone();
        self.save_index(&index)?;
        Ok(entry)
    }

    /// Records that the model with `digest` was used now.
    pub fn touch(&self, digest: &str) -> Result<()> {
        let mut index = self.load_index()?;
        if let Some(m) = index.models.iter_mut().find(|m| m.digest == digest) {
            m.last_used = now();
            self.save_index(&index)?;
        }
        Ok(())
    }

    /// Removes least-recently-used models until `need` more bytes fit in `cap`, never one that
    /// is pinned or `protected`; returns what it removed, or why it cannot make room (then it
    /// removes nothing).
    pub fn make_room(
        &self,
        need: u64,
        cap: u64,
        protected: &dyn Fn(&CachedModel) -> bool,
    ) -> Result<Vec<CachedModel>> {
        let models = self.list()?;
        let chosen: Vec<CachedModel> = super::evict::evictions(&models, need, cap, protected)
            .map_err(|why| anyhow::anyhow!("no room in the model cache: {why}"))?
            .into_iter()
            .cloned()
            .collect();
        for m in &chosen {
            self.remove(&m.digest)?;
            tracing::info!(model = %m.name, digest = %m.digest, size = m.size, "removed from the model cache to make room (least recently used)");
        }
        Ok(chosen)
    }

    /// Removes a cached model by name or digest prefix.
    pub fn remove(&self, query: &str) -> Result<CachedModel> {
        let mut index = self.load_index()?;
        let entry = find(&index.models, query)?.clone();
        index.models.retain(|m| m.digest != entry.digest);
        self.save_index(&index)?;
        let _ = fs::remove_file(self.manifest_path(&entry.digest));
        fs::remove_file(self.file_path(&entry.digest)).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        Ok(entry)
    }

    /// The cached model with exactly `digest` (as jobs name models: never a name, prefix or
    /// path); `None` when the cache has none.
    pub fn by_digest(&self, digest: &str) -> Result<Option<CachedModel>> {
        Ok(self.list()?.into_iter().find(|m| m.digest == digest))
    }

    /// Finds a model by name (case-insensitive), digest prefix, or path to a GGUF file. For the
    /// command line and local settings only: requests from the network use [`Self::by_digest`].
    pub fn resolve(&self, query: &str) -> Result<Resolved> {
        let models = self.list()?;
        match find(&models, query) {
            Ok(entry) => Ok(Resolved {
                path: self.file_path(&entry.digest),
                entry: Some(entry.clone()),
            }),
            Err(not_found) => {
                let p = Path::new(query);
                if p.is_file() {
                    Ok(Resolved {
                        path: p.to_owned(),
                        entry: None,
                    })
                } else {
                    Err(not_found)
                }
            }
        }
    }

    /// The model to use when none is named: the default model, or the only one cached.
    pub fn default_model(&self) -> Result<Resolved> {
        let models = self.list()?;
        if models.iter().any(|m| m.name == DEFAULT_MODEL) {
            return self.resolve(DEFAULT_MODEL);
        }
        match models.as_slice() {
            [only] => self.resolve(&only.name.clone()),
            [] => bail!(
                "no models in {}: run scripts/fetch-models, or `hearth models import FILE.gguf`",
                self.dir.display()
            ),
            _ => bail!(
                "no model named {DEFAULT_MODEL}; choose one with -m (see `hearth models list`)"
            ),
        }
    }
}

fn find<'a>(models: &'a [CachedModel], query: &str) -> Result<&'a CachedModel> {
    if let Some(m) = models.iter().find(|m| m.name.eq_ignore_ascii_case(query)) {
        return Ok(m);
    }
    let q = query.to_lowercase();
    if q.len() >= 4 && q.chars().all(|c| c.is_ascii_hexdigit()) {
        let hits: Vec<_> = models.iter().filter(|m| m.digest.starts_with(&q)).collect();
        match hits.as_slice() {
            [one] => return Ok(one),
            [] => {}
            many => bail!(
                "digest prefix {query} matches {} models ({}); give more characters",
                many.len(),
                many.iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
    if names.is_empty() {
        bail!("no model {query}: the cache is empty and no such file exists; run scripts/fetch-models or `hearth models import FILE.gguf`")
    }
    bail!(
        "no model {query}: not a cached name ({}), digest prefix or file",
        names.join(", ")
    )
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.chars().all(|c| c.is_ascii_hexdigit());
    if !ok {
        bail!("model name {name:?} must be 1-64 letters, digits, '-', '_' or '.', and not look like a digest");
    }
    Ok(())
}

/// Reads `src` once, copying it to `dst` (fsynced) when given; returns its SHA-256 and, when
/// `with_manifest`, its chunk manifest.
fn hash_into(
    src: &Path,
    dst: Option<&Path>,
    total: u64,
    progress: &dyn Fn(u64, u64),
    with_manifest: bool,
) -> Result<(String, Option<Manifest>)> {
    let mut input = File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
    let mut output = dst
        .map(|d| File::create(d).with_context(|| format!("cannot write {}", d.display())))
        .transpose()?;
    let mut hasher = Sha256::new();
    let mut chunks = with_manifest.then(ManifestBuilder::default);
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(chunks) = &mut chunks {
            chunks.update(&buf[..n]);
        }
        if let Some(output) = &mut output {
            output.write_all(&buf[..n])?;
        }
        done += n as u64;
        progress(done, total);
    }
    if let Some(output) = &output {
        output.sync_all()?;
    }
    let digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((digest, chunks.map(ManifestBuilder::finish)))
}
