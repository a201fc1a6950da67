//! Models on this node: the content-addressed cache of GGUF files and the names it knows them by,
//! which of them make room for another under `--cache-size` (`evict`), and the GGUF files other
//! tools keep on this device (`scan`).

pub mod cache;

pub mod evict;

pub mod scan;

pub use cache::{CachedModel, Imported, ModelCache, Resolved, Store, DEFAULT_MODEL};
