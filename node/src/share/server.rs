//! The holder's side of `/hearth/blob/1`: answers a manifest request with the stored manifest,
//! and a chunk request with the chunks, read from the cached file. A few uploads run at once;
//! more wait their turn, so pulls never crowd out inference.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use hearth_protocol::blob::{Manifest, MAX_CHUNKS_PER_REQUEST};
use hearth_protocol::{BlobFrame, BlobRequest};
use libp2p::Stream;
use libp2p_stream::IncomingStreams;
use tokio::sync::Semaphore;

use crate::mesh::wire::{read_frame, write_frame};
use crate::metrics::Metrics;
use crate::models::ModelCache;

/// Longest wait for a requester's request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunk requests served at once.
const UPLOADS: usize = 4;
/// Test hook: milliseconds this node waits before sending each chunk, so a test can stop a
/// holder in the middle of a transfer.
pub const CHUNK_DELAY_VAR: &str = "HEARTH_TEST_CHUNK_DELAY_MS";

/// Manifests read once per model (a pull asks for chunks in many requests; a large model's
/// manifest is a megabyte), by digest.
type Manifests = Arc<Mutex<HashMap<String, Arc<Manifest>>>>;

pub(super) async fn serve(mut incoming: IncomingStreams, cache: ModelCache, metrics: Arc<Metrics>) {
    let uploads = Arc::new(Semaphore::new(UPLOADS));
    let manifests = Manifests::default();
    let delay = std::env::var(CHUNK_DELAY_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    while let Some((peer, stream)) = incoming.next().await {
        let (cache, metrics, uploads) = (cache.clone(), metrics.clone(), uploads.clone());
        let manifests = manifests.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, cache, &metrics, uploads, manifests, delay).await {
                tracing::debug!(%peer, error = %e, "blob stream ended");
            }
        });
    }
}

async fn answer(
    mut stream: Stream,
    cache: ModelCache,
    metrics: &Metrics,
    uploads: Arc<Semaphore>,
    manifests: Manifests,
    delay: Option<Duration>,
) -> std::io::Result<()> {
    let request = tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<_, BlobRequest>(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("no request"))??;
    let Some(request) = request else {
        return Ok(());
    };
    let digest = match &request {
        BlobRequest::Manifest { digest } | BlobRequest::Chunks { digest, .. } => digest.clone(),
    };
    let manifest = {
        let cache = cache.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            // Still held (the index says so at every request: a removed model is refused)?
            cache.by_digest(&digest).ok().flatten()?;
            let known = manifests
                .lock()
                .expect("manifests lock")
                .get(&digest)
                .cloned();
            known.or_else(|| {
                let m = Arc::new(cache.manifest(&digest)?);
                manifests
                    .lock()
                    .expect("manifests lock")
                    .insert(digest, m.clone());
                Some(m)
            })
        })
        .await
        .map_err(std::io::Error::other)?
    };
    let Some(manifest) = manifest else {
        return refuse(
            &mut stream,
            format!("this node does not hold model {digest}"),
        )
        .await;
    };
    let (first, count) = match request {
        BlobRequest::Manifest { .. } => {
            for frame in manifest.frames() {
                write_frame(&mut stream, &frame).await?;
            }
            return stream.close().await;
        }
        BlobRequest::Chunks { first, count, .. } => (first, count),
    };
    let end = first.saturating_add(count);
    if count == 0 || count > MAX_CHUNKS_PER_REQUEST || end > manifest.chunks() {
        return refuse(
            &mut stream,
            format!(
                "chunks {first}..{end}: the file has {} chunks, and a request asks for 1 to {MAX_CHUNKS_PER_REQUEST}",
                manifest.chunks()
            ),
        )
        .await;
    }
    let _permit = uploads.acquire().await.map_err(std::io::Error::other)?;
    let file = Arc::new(File::open(cache.file_path(&digest))?);
    for index in first..end {
        let range = manifest.range(index);
        let f = file.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            f.read_exact_at(&mut buf, range.start).map(|()| buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let n = bytes.len() as u64;
        write_frame(&mut stream, &BlobFrame::Chunk { index, bytes }).await?;
        metrics
            .blob_bytes_sent
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    stream.close().await
}

async fn refuse(stream: &mut Stream, reason: String) -> std::io::Result<()> {
    write_frame(stream, &BlobFrame::Refused { reason }).await?;
    stream.close().await
}
