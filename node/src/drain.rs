//! Shutting down gracefully: one flag says the node takes no new work, one count says how much
//! is still in flight (replies for this node's API, jobs for anyone), so shutdown waits on both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The node's draining flag and in-flight count (shared by the API and the engine).
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicU64,
}

impl Drain {
    /// A node taking work, with nothing in flight.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Stops taking new work; what is in flight finishes.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Counts one piece of work in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Work in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until nothing is in flight, for at most `grace`; whether everything finished.
    pub async fn settle(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

/// One piece of work in flight (see [`Drain::enter`]).
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_work_in_flight_within_the_grace() {
        let drain = Drain::new();
        let a = drain.enter();
        let b = drain.enter();
        drain.start();
        assert!(drain.is_draining());
        assert!(!drain.settle(Duration::from_millis(100)).await);
        drop(a);
        assert_eq!(drain.in_flight(), 1);
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(b);
        });
        assert!(drain.settle(Duration::from_secs(30)).await);
        release.await.unwrap();
    }
}
