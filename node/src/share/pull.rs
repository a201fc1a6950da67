//! One pull: the manifest from a holder (checked against the root most holders' cards carry),
//! what is on disk already kept, chunks fetched from every usable holder at once and verified as
//! they arrive, then the whole file's SHA-256 checked and the file entered into the cache.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_protocol::blob::{BlobError, Manifest, MAX_CHUNKS_PER_REQUEST};
use hearth_protocol::{BlobFrame, BlobRequest, ManifestReader, BLOB_PROTOCOL};
use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::watch;

use super::plan::{Plan, Standing};
use super::{Holding, Offer, Share};
use crate::mesh::wire::read_frame;
use crate::metrics::Metrics;

/// Chunks asked for in one request (8 MiB).
const BATCH: u32 = 32;
/// Requests in flight to one holder.
const PER_HOLDER: usize = 2;
/// Longest wait for the next chunk of a request.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pull without a usable holder waits for one to (re)appear, with no chunk arriving,
/// before it gives up.
const NO_HOLDER_WAIT: Duration = Duration::from_secs(60);
/// How long a pull with no usable holder waits before it asks holders that failed again.
const RETRY_FAILED: Duration = Duration::from_secs(5);
/// How often the pull looks at the cards for new holders.
const LOOK: Duration = Duration::from_millis(500);

/// Where a pull stands, as the API streams it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub model: String,
    pub digest: String,
    /// "manifest", "pulling", "verifying", "success" or "failed".
    pub status: &'static str,
    /// Bytes in the file, bytes here (verified), bytes that were here when the pull started.
    pub total: u64,
    pub completed: u64,
    pub resumed: u64,
    /// Bytes per holder.
    pub peers: Vec<PeerProgress>,
    /// The name the model got in this node's cache, once it is there.
    pub name: Option<String>,
    pub error: Option<String>,
    /// Milliseconds spent checking chunks (BLAKE3, summed over threads), and finishing: fsync,
    /// the whole file's SHA-256, entering it into the cache.
    pub chunk_hash_ms: u64,
    pub file_hash_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerProgress {
    pub node: String,
    pub peer: String,
    pub bytes: u64,
    /// "ok", "failed" (its stream broke) or "bad" (it sent bytes that did not verify).
    pub standing: &'static str,
}

impl Progress {
    /// A model that is here already: a pull with nothing to do.
    pub fn present(m: &crate::models::CachedModel) -> Progress {
        Progress {
            model: m.name.clone(),
            digest: m.digest.clone(),
            status: "success",
            total: m.size,
            completed: m.size,
            resumed: m.size,
            peers: Vec::new(),
            name: Some(m.name.clone()),
            error: None,
            chunk_hash_ms: 0,
            file_hash_ms: 0,
        }
    }

    /// Whether the pull still runs.
    pub fn is_running(&self) -> bool {
        !matches!(self.status, "success" | "failed")
    }
}

/// Waits for the end of the pull `rx` follows; its last progress.
pub async fn finished(mut rx: watch::Receiver<Progress>) -> Progress {
    loop {
        let p = rx.borrow_and_update().clone();
        if !p.is_running() || rx.changed().await.is_err() {
            return p;
        }
    }
}

/// The temp file a pull of `digest` fills; it stays when a pull fails, for the next to resume.
pub fn partial_path(share: &Share, digest: &str) -> PathBuf {
    share.cache.dir().join(format!(".pull-{digest}.partial"))
}

/// A model file being filled from the household: its manifest (checked against the root its
/// holders advertise), the partial file, and which of its chunks verify there.
pub(crate) struct Partial {
    pub digest: String,
    pub root: String,
    pub manifest: Manifest,
    pub path: PathBuf,
    file: Arc<File>,
    have: Vec<bool>,
}

impl Partial {
    /// The manifest from a holder and the partial file of `digest`, with what it holds already.
    pub(crate) async fn open(share: &Share, digest: &str) -> Result<Partial, String> {
        let (root, manifest) = manifest(share, digest).await?;
        let path = partial_path(share, digest);
        let (p, m) = (path.clone(), manifest.clone());
        let (file, have) = tokio::task::spawn_blocking(move || open_partial(&p, &m))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(Partial {
            digest: digest.to_owned(),
            root,
            manifest,
            path,
            file: Arc::new(file),
            have,
        })
    }

    /// Bytes of the file here and verified.
    pub(crate) fn bytes_here(&self) -> u64 {
        (0..self.manifest.chunks())
            .filter(|&i| self.have[i as usize])
            .map(|i| {
                let r = self.manifest.range(i);
                r.end - r.start
            })
            .sum()
    }

    /// Fetches the chunks `wanted` says that are not here yet, from every usable holder;
    /// returns the bytes fetched. `label` names the model in logs; `progress`, when given,
    /// follows the fetch.
    pub(crate) async fn fetch(
        &mut self,
        share: &Arc<Share>,
        label: &str,
        wanted: &(dyn Fn(u32) -> bool + Sync),
        progress: Option<watch::Sender<Progress>>,
    ) -> Result<u64, String> {
        let have = &self.have;
        let plan = Plan::new(self.manifest.size, self.manifest.chunk_size, wanted, |i| {
            have[i as usize]
        });
        if plan.done() {
            return Ok(0);
        }
        if plan.resumed > 0 {
            tracing::info!(model = %label, bytes = plan.resumed, "these bytes are here already");
        }
        let job = Arc::new(Job {
            share: share.clone(),
            digest: self.digest.clone(),
            label: label.to_owned(),
            root: self.root.clone(),
            manifest: self.manifest.clone(),
            file: self.file.clone(),
            plan: Mutex::new(plan),
            nodes: Mutex::new(Vec::new()),
            progress,
            chunk_hash_ns: Default::default(),
        });
        job.report("pulling");
        let started = Instant::now();
        let result = fetch_all(&job).await;
        let plan = job.plan.lock().expect("plan lock");
        for h in plan.holders() {
            share.measured_link(h.id, h.bytes, started.elapsed().as_secs_f64());
        }
        for (i, h) in self.have.iter_mut().enumerate() {
            *h = *h || plan.has(i as u32);
        }
        let fetched = plan.holders().iter().map(|h| h.bytes).sum();
        drop(plan);
        if let Some(p) = &job.progress {
            let ms = job.chunk_hash_ns.load(Ordering::Relaxed) / 1_000_000;
            p.send_modify(|p| p.chunk_hash_ms = ms);
        }
        result.map(|()| fetched)
    }
}

/// One fetch of chunks, shared by its workers.
struct Job {
    share: Arc<Share>,
    digest: String,
    label: String,
    root: String,
    manifest: Manifest,
    file: Arc<File>,
    plan: Mutex<Plan<PeerId>>,
    nodes: Mutex<Vec<(PeerId, String)>>,
    progress: Option<watch::Sender<Progress>>,
    /// Nanoseconds spent checking chunks.
    chunk_hash_ns: std::sync::atomic::AtomicU64,
}

/// Starts pulling `offer`, to be named `name` here.
pub(super) fn start(share: Arc<Share>, offer: Offer, name: String) -> watch::Receiver<Progress> {
    let (tx, rx) = watch::channel(Progress {
        model: offer.name.clone(),
        digest: offer.digest.clone(),
        status: "manifest",
        total: offer.size,
        completed: 0,
        resumed: 0,
        peers: Vec::new(),
        name: None,
        error: None,
        chunk_hash_ms: 0,
        file_hash_ms: 0,
    });
    tokio::spawn(async move {
        let metrics = share.metrics.clone();
        let started = Instant::now();
        match run(share, offer.clone(), name, tx.clone()).await {
            Ok(entry) => {
                Metrics::inc(&metrics.pulls_completed);
                tracing::info!(model = %entry, digest = %offer.digest, seconds = started.elapsed().as_secs_f32(), "pulled a model from the household");
            }
            Err(e) => {
                Metrics::inc(&metrics.pulls_failed);
                tracing::warn!(model = %offer.name, error = %e, "pull failed");
                tx.send_modify(|p| {
                    p.status = "failed";
                    p.error = Some(e);
                });
            }
        }
    });
    rx
}

/// The pull; returns the name the model got here.
async fn run(
    share: Arc<Share>,
    offer: Offer,
    name: String,
    progress: watch::Sender<Progress>,
) -> Result<String, String> {
    let mut partial = Partial::open(&share, &offer.digest).await?;
    partial
        .fetch(&share, &offer.name, &|_| true, Some(progress.clone()))
        .await?;
    progress.send_modify(|p| p.status = "verifying");
    let file_hash = Instant::now();
    let (s, path, digest, manifest, file) = (
        share.clone(),
        partial.path.clone(),
        offer.digest.clone(),
        partial.manifest.clone(),
        partial.file.clone(),
    );
    let entry = tokio::task::spawn_blocking(move || {
        file.sync_all().map_err(|e| e.to_string())?;
        s.cache
            .add_pulled(&path, &name, &digest, &manifest, &|_, _| {})
            .map_err(|e| {
                // The chunks matched a manifest that does not describe the model: every holder
                // of that root is wrong, and what was fetched is worthless.
                let _ = std::fs::remove_file(&path);
                format!("{e:#}")
            })
    })
    .await
    .map_err(|e| e.to_string())?;
    let entry = match entry {
        Ok(e) => e,
        Err(e) => {
            for h in share.holders(&offer.digest) {
                if h.root.as_deref() == Some(partial.root.as_str()) {
                    share.mark_bad(h.peer, &offer.digest);
                }
            }
            return Err(e);
        }
    };
    progress.send_modify(|p| {
        p.status = "success";
        p.name = Some(entry.name.clone());
        p.file_hash_ms = file_hash.elapsed().as_millis() as u64;
    });
    Ok(entry.name)
}

/// The root most holders advertise, and the manifest from a holder, checked against it.
async fn manifest(share: &Share, digest: &str) -> Result<(String, Manifest), String> {
    let holders: Vec<Holding> = share
        .holders(digest)
        .into_iter()
        .filter(|h| h.root.is_some() && !share.is_bad(h.peer, digest))
        .collect();
    let mut roots: Vec<(String, usize)> = Vec::new();
    for h in &holders {
        let r = h.root.clone().expect("filtered");
        match roots.iter_mut().find(|(root, _)| *root == r) {
            Some((_, n)) => *n += 1,
            None => roots.push((r, 1)),
        }
    }
    roots.sort_by_key(|r| std::cmp::Reverse(r.1));
    let Some((root, _)) = roots.first().cloned() else {
        return Err(
            "no connected household node holds it (or every holder sent bad bytes before)".into(),
        );
    };
    if roots.len() > 1 {
        tracing::warn!(%digest, roots = roots.len(), "holders disagree about the model's chunk manifest; using the one most of them advertise");
    }
    for h in holders.iter().filter(|h| h.root.as_deref() == Some(&root)) {
        match ask_manifest(share, h.peer, digest).await {
            Ok(m) => match m.verify(&root) {
                Ok(()) => return Ok((root, m)),
                Err(e) => {
                    tracing::warn!(peer = %h.peer, node = %h.node, error = %e, "a holder sent a manifest that does not match its card; not asking it again");
                    share.mark_bad(h.peer, digest);
                }
            },
            Err(e) => {
                tracing::info!(peer = %h.peer, node = %h.node, error = %e, "cannot get the manifest from this holder")
            }
        }
    }
    Err("no holder sent a manifest that verifies".into())
}

async fn ask_manifest(share: &Share, peer: PeerId, digest: &str) -> Result<Manifest, String> {
    let request = BlobRequest::Manifest {
        digest: digest.to_owned(),
    };
    let (mut stream, first) = share
        .mesh
        .ask::<_, BlobFrame>(peer, BLOB_PROTOCOL, &request)
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = ManifestReader::default();
    let mut frame = first;
    loop {
        if let Some(m) = reader.push(frame)? {
            return Ok(m);
        }
        frame = tokio::time::timeout(CHUNK_TIMEOUT, read_frame(&mut stream))
            .await
            .map_err(|_| "the holder stopped sending its manifest".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("the manifest ended early")?;
    }
}

/// Opens (or creates) the partial file at its full size, and says which chunks in it verify
/// already: what an interrupted pull (or a stage's fetch) left.
pub fn open_partial(path: &std::path::Path, m: &Manifest) -> std::io::Result<(File, Vec<bool>)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let len = file.metadata()?.len();
    if len != m.size {
        file.set_len(m.size)?;
    }
    let mut have = vec![false; m.chunks() as usize];
    if len > 0 {
        let mut buf = vec![0u8; m.chunk_size as usize];
        for (i, h) in have.iter_mut().enumerate() {
            let r = m.range(i as u32);
            if r.end > len {
                break;
            }
            let b = &mut buf[..(r.end - r.start) as usize];
            file.read_exact_at(b, r.start)?;
            *h = m.verify_chunk(i as u32, b).is_ok();
        }
    }
    Ok((file, have))
}

/// Runs workers for every usable holder until every chunk is here; fails when no holder is usable
/// and no chunk has come for [`NO_HOLDER_WAIT`].
async fn fetch_all(job: &Arc<Job>) -> Result<(), String> {
    let mut workers = tokio::task::JoinSet::new();
    let mut alone_since: Option<Instant> = None;
    // Bytes here, and when that last changed.
    let mut progressed = (u64::MAX, Instant::now());
    loop {
        for h in job.share.holders(&job.digest) {
            if h.root.as_deref() != Some(job.root.as_str()) || job.share.is_bad(h.peer, &job.digest)
            {
                continue;
            }
            let new = {
                let mut nodes = job.nodes.lock().expect("nodes lock");
                let new = !nodes.iter().any(|(p, _)| *p == h.peer);
                if new {
                    nodes.push((h.peer, h.node.clone()));
                }
                new
            };
            // A holder whose stream broke, still connected, is asked again once no other is left.
            let revived = !new
                && alone_since.is_some_and(|t| t.elapsed() > RETRY_FAILED)
                && job.plan.lock().expect("plan lock").revive(&h.peer);
            if revived {
                tracing::info!(peer = %h.peer, model = %job.label, "asking a holder that failed again: no other is left");
            }
            if new {
                job.plan.lock().expect("plan lock").add_holder(h.peer);
            }
            if new || revived {
                for _ in 0..PER_HOLDER {
                    workers.spawn(worker(job.clone(), h.peer));
                }
            }
        }
        let (done, usable, have) = {
            let plan = job.plan.lock().expect("plan lock");
            (plan.done(), plan.usable_holders(), plan.progress().0)
        };
        if done {
            workers.abort_all();
            return Ok(());
        }
        if have != progressed.0 {
            progressed = (have, Instant::now());
        }
        if usable == 0 {
            alone_since.get_or_insert_with(Instant::now);
            // Given up only without a usable holder and without a new chunk for a while (a
            // holder asked again that fails again does not keep the pull alive for ever).
            if progressed.1.elapsed() > NO_HOLDER_WAIT {
                let (have, total) = job.plan.lock().expect("plan lock").progress();
                return Err(format!(
                    "no holder left to pull from ({} of {} MB here; they are kept, and the next pull resumes from there)",
                    have >> 20,
                    total >> 20
                ));
            }
        } else {
            alone_since = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK) => {}
            Some(_) = workers.join_next() => {}
        }
    }
}

/// What went wrong with one request.
enum Fault {
    /// The stream broke, timed out or was refused.
    Broken(String),
    /// A chunk did not verify.
    Bad(BlobError),
}

/// Asks `peer` for batches until nothing is left for it.
async fn worker(job: Arc<Job>, peer: PeerId) {
    loop {
        let batch = {
            let mut plan = job.plan.lock().expect("plan lock");
            if plan.done() || !plan.usable(&peer) {
                return;
            }
            plan.next_batch(&peer, BATCH.min(MAX_CHUNKS_PER_REQUEST))
        };
        let Some(batch) = batch else {
            // Everything left is being fetched by others; one of them may fail.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let result = fetch(&job, peer, batch.clone()).await;
        let mut plan = job.plan.lock().expect("plan lock");
        match result {
            Ok(()) => plan.release(&peer, batch),
            Err(Fault::Broken(e)) => {
                tracing::info!(%peer, model = %job.label, error = %e, "a holder stopped sending; the others go on");
                plan.failed(&peer);
            }
            Err(Fault::Bad(e)) => {
                Metrics::inc(&job.share.metrics.blob_bad_chunks);
                tracing::warn!(%peer, model = %job.label, error = %e, "a holder sent bytes that do not verify: discarded, and it is not asked for this model again");
                job.share.mark_bad(peer, &job.digest);
                plan.bad(&peer);
            }
        }
        drop(plan);
        job.report("pulling");
    }
}

/// Fetches `batch` from `peer`, writing each verified chunk in place.
async fn fetch(job: &Arc<Job>, peer: PeerId, batch: std::ops::Range<u32>) -> Result<(), Fault> {
    let request = BlobRequest::Chunks {
        digest: job.digest.clone(),
        first: batch.start,
        count: batch.end - batch.start,
    };
    let (mut stream, first) = job
        .share
        .mesh
        .ask::<_, BlobFrame>(peer, BLOB_PROTOCOL, &request)
        .await
        .map_err(|e| Fault::Broken(e.to_string()))?;
    let mut frame = Some(first);
    for expected in batch {
        let f = match frame.take() {
            Some(f) => f,
            None => tokio::time::timeout(CHUNK_TIMEOUT, read_frame(&mut stream))
                .await
                .map_err(|_| Fault::Broken(format!("no chunk for {CHUNK_TIMEOUT:?}")))?
                .map_err(|e| Fault::Broken(e.to_string()))?
                .ok_or_else(|| Fault::Broken("the answer ended early".into()))?,
        };
        let (index, bytes) = match f {
            BlobFrame::Chunk { index, bytes } if index == expected => (index, bytes),
            BlobFrame::Refused { reason } => return Err(Fault::Broken(reason)),
            _ => return Err(Fault::Broken(format!("not chunk {expected}"))),
        };
        let j = job.clone();
        let n = bytes.len() as u64;
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let checked = j.manifest.verify_chunk(index, &bytes);
            j.chunk_hash_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            checked.map_err(Fault::Bad)?;
            j.file
                .write_all_at(&bytes, j.manifest.range(index).start)
                .map_err(|e| Fault::Broken(format!("cannot write the chunk here: {e}")))
        })
        .await
        .map_err(|e| Fault::Broken(e.to_string()))??;
        // Counted once: a chunk that arrives after its holder was given up on is fetched again.
        if job.plan.lock().expect("plan lock").got(&peer, index) {
            job.share
                .metrics
                .blob_bytes_received
                .fetch_add(n, Ordering::Relaxed);
        }
        job.report("pulling");
    }
    Ok(())
}

impl Job {
    fn report(&self, status: &'static str) {
        // Stage fetches have no one watching: nothing to build, chunk after chunk.
        let Some(progress) = &self.progress else {
            return;
        };
        let plan = self.plan.lock().expect("plan lock");
        let (completed, total) = plan.progress();
        let nodes = self.nodes.lock().expect("nodes lock");
        let peers = plan
            .holders()
            .iter()
            .map(|h| PeerProgress {
                node: nodes
                    .iter()
                    .find(|(p, _)| *p == h.id)
                    .map_or_else(String::new, |(_, n)| n.clone()),
                peer: h.id.to_string(),
                bytes: h.bytes,
                standing: match h.standing {
                    Standing::Usable => "ok",
                    Standing::Failed => "failed",
                    Standing::Bad => "bad",
                },
            })
            .collect();
        let resumed = plan.resumed;
        drop(plan);
        drop(nodes);
        progress.send_modify(|p| {
            p.status = status;
            p.total = total;
            p.completed = completed;
            p.resumed = resumed;
            p.peers = peers;
        });
    }
}
