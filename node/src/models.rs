//! Models on this node: the content-addressed cache of GGUF files and the names it knows them by.

pub mod cache;

pub use cache::{CachedModel, Imported, ModelCache, Resolved, DEFAULT_MODEL};
