//! Model files between household peers (`/hearth/blob/1`). A file is cut into chunks of
//! [`CHUNK_SIZE`] bytes; its manifest lists every chunk's BLAKE3 hash, and the manifest's root
//! (a hash over size, chunk size and the chunk hashes) travels on the holder's card. A requester
//! therefore holds the root before it asks for a byte: it checks the manifest against the root,
//! then every chunk against the manifest as it arrives, and a chunk that does not verify is caught
//! alone. The whole file's SHA-256 (the model's digest) is checked once more at the end.

use serde::{Deserialize, Serialize};

/// Bytes per chunk: one chunk per frame, well inside [`crate::MAX_FRAME`].
pub const CHUNK_SIZE: u32 = 256 << 10;
/// Chunk hashes per manifest frame (512 KiB of hashes).
pub const MANIFEST_PAGE: usize = 16 << 10;
/// Most chunks one request may ask for.
pub const MAX_CHUNKS_PER_REQUEST: u32 = 1024;
/// Largest file a manifest may describe (4 TiB): bounds what a peer can make a requester allocate.
pub const MAX_FILE: u64 = 4 << 40;

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// What a requester asks a holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// The manifest of the model with this SHA-256 digest (hex).
    Manifest { digest: String },
    /// Chunks `first .. first + count` of the model's file, in order.
    Chunks {
        digest: String,
        first: u32,
        count: u32,
    },
}

/// What a holder answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobFrame {
    /// One page of the manifest; `last` ends it.
    Manifest {
        size: u64,
        chunk_size: u32,
        hashes: Vec<Hash>,
        last: bool,
    },
    /// One chunk's bytes.
    Chunk {
        index: u32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The holder will not serve this request (does not hold the model, a bad range).
    Refused { reason: String },
}

/// A file's chunk hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub size: u64,
    pub chunk_size: u32,
    pub hashes: Vec<Hash>,
}

/// Why a manifest or chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("the manifest does not match the root the holder advertised")]
    WrongRoot,
    #[error(
        "a manifest of {hashes} chunk hashes for a file of {size} bytes in chunks of {chunk_size}"
    )]
    Inconsistent {
        size: u64,
        chunk_size: u32,
        hashes: usize,
    },
    #[error("chunk {index} is not in the file ({chunks} chunks)")]
    NoSuchChunk { index: u32, chunks: u32 },
    #[error("chunk {index} has {got} bytes, expected {expected}")]
    WrongLength {
        index: u32,
        got: usize,
        expected: usize,
    },
    #[error("chunk {index} does not match its hash")]
    BadChunk { index: u32 },
}

/// Chunks of a file of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size))
}

impl Manifest {
    /// The root that cards carry: BLAKE3 over a label, size, chunk size and the chunk hashes.
    pub fn root(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"hearth-manifest-1");
        h.update(&self.size.to_le_bytes());
        h.update(&self.chunk_size.to_le_bytes());
        for c in &self.hashes {
            h.update(c);
        }
        h.finalize().to_hex().to_string()
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Byte range of chunk `index` in the file.
    pub fn range(&self, index: u32) -> std::ops::Range<u64> {
        let start = u64::from(index) * u64::from(self.chunk_size);
        start..(start + u64::from(self.chunk_size)).min(self.size)
    }

    /// Chunks that hold any byte of `range`.
    pub fn chunks_of(&self, range: std::ops::Range<u64>) -> std::ops::Range<u32> {
        if range.start >= range.end {
            return 0..0;
        }
        let cs = u64::from(self.chunk_size);
        let first = (range.start / cs) as u32;
        let end = (range.end.min(self.size).div_ceil(cs)) as u32;
        first..end.max(first)
    }

    /// Checks that size, chunk size and hash count agree.
    pub fn check(&self) -> Result<(), BlobError> {
        let ok = self.chunk_size > 0
            && self.size <= MAX_FILE
            && chunk_count(self.size, self.chunk_size) == self.hashes.len() as u64;
        if ok {
            Ok(())
        } else {
            Err(BlobError::Inconsistent {
                size: self.size,
                chunk_size: self.chunk_size,
                hashes: self.hashes.len(),
            })
        }
    }

    /// Checks the manifest against the `root` a card advertised.
    pub fn verify(&self, root: &str) -> Result<(), BlobError> {
        self.check()?;
        if self.root() == root {
            Ok(())
        } else {
            Err(BlobError::WrongRoot)
        }
    }

    /// Checks one chunk's length and hash.
    pub fn verify_chunk(&self, index: u32, bytes: &[u8]) -> Result<(), BlobError> {
        let Some(expected_hash) = self.hashes.get(index as usize) else {
            return Err(BlobError::NoSuchChunk {
                index,
                chunks: self.chunks(),
            });
        };
        let r = self.range(index);
        let expected = (r.end - r.start) as usize;
        if bytes.len() != expected {
            return Err(BlobError::WrongLength {
                index,
                got: bytes.len(),
                expected,
            });
        }
        if blake3::hash(bytes).as_bytes() == expected_hash {
            Ok(())
        } else {
            Err(BlobError::BadChunk { index })
        }
    }

    /// The manifest as frames of at most [`MANIFEST_PAGE`] hashes.
    pub fn frames(&self) -> Vec<BlobFrame> {
        let pages: Vec<&[Hash]> = if self.hashes.is_empty() {
            vec![&[]]
        } else {
            self.hashes.chunks(MANIFEST_PAGE).collect()
        };
        let n = pages.len();
        pages
            .into_iter()
            .enumerate()
            .map(|(i, p)| BlobFrame::Manifest {
                size: self.size,
                chunk_size: self.chunk_size,
                hashes: p.to_vec(),
                last: i + 1 == n,
            })
            .collect()
    }

    /// Stored form: size, chunk size, hashes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 32 * self.hashes.len());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Reads the stored form; `None` when it is damaged.
    pub fn from_bytes(bytes: &[u8]) -> Option<Manifest> {
        if bytes.len() < 12 || !(bytes.len() - 12).is_multiple_of(32) {
            return None;
        }
        let m = Manifest {
            size: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            chunk_size: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
            hashes: bytes[12..]
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect(),
        };
        m.check().ok()?;
        Some(m)
    }
}

/// Builds a manifest from a file's bytes, fed in pieces of any size.
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    chunk_size: u32,
    size: u64,
    current: blake3::Hasher,
    in_current: u32,
    hashes: Vec<Hash>,
}

impl Default for ManifestBuilder {
    fn default() -> Self {
        Self::new(CHUNK_SIZE)
    }
}

impl ManifestBuilder {
    pub fn new(chunk_size: u32) -> Self {
        ManifestBuilder {
            chunk_size,
            size: 0,
            current: blake3::Hasher::new(),
            in_current: 0,
            hashes: Vec::new(),
        }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = (self.chunk_size - self.in_current) as usize;
            let take = room.min(bytes.len());
            self.current.update(&bytes[..take]);
            self.in_current += take as u32;
            bytes = &bytes[take..];
            if self.in_current == self.chunk_size {
                self.hashes.push(*self.current.finalize().as_bytes());
                self.current.reset();
                self.in_current = 0;
            }
        }
    }

    pub fn finish(mut self) -> Manifest {
        if self.in_current > 0 {
            self.hashes.push(*self.current.finalize().as_bytes());
        }
        Manifest {
            size: self.size,
            chunk_size: self.chunk_size,
            hashes: self.hashes,
        }
    }
}

/// Reassembles a manifest from its frames.
#[derive(Debug, Default)]
pub struct ManifestReader {
    head: Option<(u64, u32)>,
    hashes: Vec<Hash>,
}

impl ManifestReader {
    /// Takes the next frame; `Ok(Some)` once the manifest is whole. A frame that disagrees with
    /// the first about size or chunk size, more hashes than the size allows, or anything but a
    /// manifest page is an error.
    pub fn push(&mut self, frame: BlobFrame) -> Result<Option<Manifest>, String> {
        let BlobFrame::Manifest {
            size,
            chunk_size,
            hashes,
            last,
        } = frame
        else {
            return Err(match frame {
                BlobFrame::Refused { reason } => reason,
                _ => "a chunk instead of the manifest".into(),
            });
        };
        if chunk_size == 0 || size > MAX_FILE {
            return Err(format!(
                "a manifest for {size} bytes in chunks of {chunk_size}"
            ));
        }
        if *self.head.get_or_insert((size, chunk_size)) != (size, chunk_size) {
            return Err("manifest pages disagree about the file".into());
        }
        if (self.hashes.len() + hashes.len()) as u64 > chunk_count(size, chunk_size) {
            return Err("more chunk hashes than the file has chunks".into());
        }
        self.hashes.extend(hashes);
        if !last {
            return Ok(None);
        }
        let m = Manifest {
            size,
            chunk_size,
            hashes: std::mem::take(&mut self.hashes),
        };
        m.check().map_err(|e| e.to_string())?;
        Ok(Some(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_manifest_is_the_same_however_the_file_is_fed() {
        let bytes = file(10 * 1000 + 17);
        let mut whole = ManifestBuilder::new(1000);
        whole.update(&bytes);
        let whole = whole.finish();
        for piece in [1, 7, 999, 1000, 1001, 4096] {
            let mut b = ManifestBuilder::new(1000);
            for p in bytes.chunks(piece) {
                b.update(p);
            }
            assert_eq!(b.finish(), whole, "fed in pieces of {piece}");
        }
        assert_eq!(whole.chunks(), 11);
        assert_eq!(whole.range(10), 10_000..10_017);
        whole.check().unwrap();
    }

    #[test]
    fn chunks_verify_and_a_flipped_byte_is_caught_in_its_chunk() {
        let mut bytes = file(5000);
        let mut b = ManifestBuilder::new(1024);
        b.update(&bytes);
        let m = b.finish();
        for i in 0..m.chunks() {
            let r = m.range(i);
            m.verify_chunk(i, &bytes[r.start as usize..r.end as usize])
                .unwrap();
        }
        bytes[2500] ^= 1;
        assert_eq!(
            m.verify_chunk(2, &bytes[2048..3072]),
            Err(BlobError::BadChunk { index: 2 })
        );
        assert!(matches!(m.verify_chunk(4, &bytes[4096..5000]), Ok(())));
        assert!(matches!(
            m.verify_chunk(4, &bytes[4096..4999]),
            Err(BlobError::WrongLength { .. })
        ));
        assert!(matches!(
            m.verify_chunk(5, &[]),
            Err(BlobError::NoSuchChunk { .. })
        ));
    }

    #[test]
    fn the_root_binds_size_chunk_size_and_hashes() {
        let mut b = ManifestBuilder::new(1024);
        b.update(&file(3000));
        let m = b.finish();
        let root = m.root();
        m.verify(&root).unwrap();
        let mut other = m.clone();
        other.hashes[1][0] ^= 1;
        assert_eq!(other.verify(&root), Err(BlobError::WrongRoot));
        let mut longer = m.clone();
        longer.size += 1;
        assert_ne!(longer.root(), root);
        let mut missing = m.clone();
        missing.hashes.pop();
        assert!(matches!(
            missing.verify(&missing.root()),
            Err(BlobError::Inconsistent { .. })
        ));
    }

    #[test]
    fn manifests_round_trip_through_frames_and_storage() {
        let mut b = ManifestBuilder::new(64);
        b.update(&file(64 * (MANIFEST_PAGE + 5) + 3));
        let m = b.finish();
        let frames = m.frames();
        assert_eq!(frames.len(), 2);
        let mut r = ManifestReader::default();
        assert_eq!(r.push(frames[0].clone()), Ok(None));
        assert_eq!(r.push(frames[1].clone()), Ok(Some(m.clone())));
        assert_eq!(Manifest::from_bytes(&m.to_bytes()), Some(m.clone()));
        assert_eq!(Manifest::from_bytes(&m.to_bytes()[..40]), None);
        // A page claiming more hashes than the file has chunks is refused before it grows.
        let mut r = ManifestReader::default();
        let lying = BlobFrame::Manifest {
            size: 10,
            chunk_size: 64,
            hashes: vec![[0; 32]; 2],
            last: false,
        };
        assert!(r.push(lying).is_err());
        let empty = ManifestBuilder::new(64).finish();
        let mut r = ManifestReader::default();
        assert_eq!(r.push(empty.frames()[0].clone()), Ok(Some(empty)));
    }

    #[test]
    fn chunk_bytes_are_encoded_as_a_length_and_the_bytes() {
        // serde_bytes decodes in one copy, and the wire is what a sequence of u8 gives.
        let frame = BlobFrame::Chunk {
            index: 3,
            bytes: vec![1, 2, 255],
        };
        #[derive(Serialize)]
        enum Plain {
            _Manifest,
            Chunk { index: u32, bytes: Vec<u8> },
        }
        let plain = Plain::Chunk {
            index: 3,
            bytes: vec![1, 2, 255],
        };
        let bytes = postcard::to_allocvec(&frame).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&plain).unwrap());
        assert_eq!(postcard::from_bytes::<BlobFrame>(&bytes).unwrap(), frame);
    }

    #[test]
    fn byte_ranges_map_to_the_chunks_that_hold_them() {
        let m = Manifest {
            size: 1000,
            chunk_size: 100,
            hashes: vec![[0; 32]; 10],
        };
        assert_eq!(m.chunks_of(0..1), 0..1);
        assert_eq!(m.chunks_of(99..101), 0..2);
        assert_eq!(m.chunks_of(100..200), 1..2);
        assert_eq!(m.chunks_of(950..5000), 9..10);
        assert_eq!(m.chunks_of(5..5), 0..0);
    }
}
