//! The node's logs: `tracing` to stderr, as text or JSON, filtered by `HEARTH_LOG`; and a throttle
//! for events that a flood would otherwise turn into a line each.

use std::time::{Duration, Instant};

use crate::config::LogFormat;

/// Installs the log subscriber (once; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEARTH_LOG")
        .unwrap_or_else(|_| "info,libp2p=warn,libp2p_swarm=warn,mdns_sd=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Lets one event of a kind be logged per interval and counts the rest, for a summary line.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    window: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// One logged event per `interval`.
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            window: None,
            suppressed: 0,
        }
    }

    /// Whether to log an event happening at `now`: `Some(n)` with the `n` events suppressed
    /// since the last one logged, or `None` to count it silently.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.window {
            Some(start) if now.duration_since(start) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.window = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Events suppressed in an interval that has ended by `now`, to log as a summary (once).
    pub fn summary(&mut self, now: Instant) -> Option<u64> {
        let ended = self
            .window
            .is_some_and(|start| now.duration_since(start) >= self.interval);
        if ended && self.suppressed > 0 {
            self.window = None;
            return Some(std::mem::take(&mut self.suppressed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_one_line_per_interval_and_a_count_of_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(t.allow(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(
            t.summary(t0 + Duration::from_secs(5)),
            None,
            "the interval runs on"
        );
        assert_eq!(t.summary(t0 + Duration::from_secs(10)), Some(99));
        assert_eq!(t.summary(t0 + Duration::from_secs(11)), None, "said once");
        assert_eq!(t.allow(t0 + Duration::from_secs(12)), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(13)), None);
        // A new interval's first event carries the count the summary did not get to say.
        assert_eq!(t.allow(t0 + Duration::from_secs(30)), Some(1));
    }
}
