//! hearth's node: the `hearth` command line, the data directory, the model cache, and the mesh
//! daemon (identity, household admission, discovery, capability cards, routing, jobs, HTTP API).

pub mod api;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod data_dir;
pub mod devices;
pub mod dispatch;
pub mod durable;
pub mod engine;
pub mod fair_queue;
pub mod household;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod model_cache;
pub mod routing;
