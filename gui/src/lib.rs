//! hearth's desktop chat client: an egui window over a node's HTTP API (never its code). The
//! state lives in [`App`], the views in `ui`, and the network in a background runtime
//! (`backend`) that hands results over a channel.

pub mod api;
mod app;
mod backend;
pub mod branches;
pub mod connection;
pub mod sse;
pub mod throughput;
mod ui;

pub use app::{App, Sampling};
pub use connection::Target;
