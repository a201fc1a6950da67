//! Generation jobs: the engine that runs them on this node (for its own API and for peers), and
//! the job protocol that carries them between nodes. The requester sends one `JobRequest`
//! frame; the serving node streams `JobEvent` frames back until `Done`, `Busy` or `Failed`.
//! Either side closing the stream ends the job: the server stops generating at the next token.

mod client;
mod engine;
mod fair_queue;
mod server;

use std::sync::Arc;

use anyhow::Result;
use hearth_protocol::JOB_PROTOCOL;

use crate::mesh::Mesh;
pub use client::open;
pub use engine::{cached, check_params, Engine, EngineConfig, JobError, Occupancy};

/// Serves peers' jobs on `engine`.
pub fn serve(mesh: &Mesh, engine: Arc<Engine>) -> Result<()> {
    let incoming = mesh.accept(JOB_PROTOCOL)?;
    tokio::spawn(server::serve(incoming, engine));
    Ok(())
}
