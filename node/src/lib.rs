//! hearth's node: the `hearth` command line, the data directory, the model cache, and the mesh
//! daemon. Grouped by capability: `mesh` (transport, discovery, peers, streams per protocol),
//! `cards` and `jobs` (protocols over the mesh), `chat` (the one path from a request to a reply:
//! members, routing, dispatch), `history` (conversations as Automerge documents: store, recording,
//! sync), `models` (the cache and other tools' stores), `share` (models pulled from peers), `api` (HTTP shapes), `daemon` (the
//! composition root), `commands` (the CLI).

pub mod api;
pub mod cards;
pub mod chat;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod data_dir;
pub mod devices;
pub mod drain;
pub mod durable;
pub mod history;
pub mod household;
pub mod identity;
pub mod jobs;
pub mod logs;
pub mod memory;
pub mod mesh;
pub mod metrics;
pub mod models;
pub mod node;
pub mod runtime_file;
pub mod share;
pub mod split;
