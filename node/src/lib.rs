//! hearth's node: the `hearth` command line, the data directory and the model cache. The mesh
//! daemon (identity, admission, discovery, routing, HTTP API) grows here.

pub mod cli;
pub mod commands;
pub mod data_dir;
pub mod durable;
pub mod model_cache;
