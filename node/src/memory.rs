//! The memory a node offers for models (`--max-memory`): whole models and split stages reserve
//! their bytes here before they load, and the card reports what is offered and used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const MB: u64 = 1 << 20;

/// What the node offers for models, and what is reserved now.
#[derive(Debug, Default)]
pub struct Budget {
    cap: Option<u64>,
    used: AtomicU64,
}

/// Bytes reserved until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

/// A load that does not fit what the node offers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} needs {} MB, and this node offers {} MB for models of which {} MB are taken (--max-memory)", .need.div_ceil(MB), .cap / MB, .used.div_ceil(MB))]
pub struct OverBudget {
    pub what: String,
    pub need: u64,
    pub cap: u64,
    pub used: u64,
}

impl Budget {
    /// A budget of `cap` bytes; `None`: no cap.
    pub fn new(cap: Option<u64>) -> Arc<Self> {
        Arc::new(Budget {
            cap,
            used: AtomicU64::new(0),
        })
    }

    /// The cap, if any.
    pub fn cap(&self) -> Option<u64> {
        self.cap
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Reserves `bytes` for `what`, if they fit under the cap.
    pub fn reserve(self: &Arc<Self>, what: &str, bytes: u64) -> Result<Reservation, OverBudget> {
        let mut used = self.used();
        loop {
            if let Some(cap) = self.cap {
                if used + bytes > cap {
                    return Err(OverBudget {
                        what: what.to_owned(),
                        need: bytes,
                        cap,
                        used,
                    });
                }
            }
            match self
                .used
                .compare_exchange(used, used + bytes, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Ok(Reservation {
                        budget: self.clone(),
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// The memory for every reply's keys and values when `--kv-memory` is not given: a quarter of
/// what the node offers for models, else an eighth of the memory free at start; at least 256 MB.
pub fn default_kv_memory(max_memory: Option<u64>, free: u64) -> u64 {
    max_memory.map_or(free / 8, |m| m / 4).max(256 * MB)
}

/// Parses a size such as `300MB`, `2GiB`, `1.5G` or `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 300MB or 2GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{other:?} in {text:?} is not a unit: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ))
        }
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("{text:?} is not a size of at least one byte"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("300MB"), Ok(300_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5g"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 64 MiB "), Ok(64 << 20));
        for bad in ["", "MB", "12 parsecs", "-5MB", "0", "1.2.3GB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kv_memory_default_follows_max_memory_or_free_memory() {
        assert_eq!(default_kv_memory(Some(4 << 30), 64 << 30), 1 << 30);
        assert_eq!(default_kv_memory(None, 16 << 30), 2 << 30);
        assert_eq!(default_kv_memory(Some(300 * MB), 64 << 30), 256 * MB);
        assert_eq!(default_kv_memory(None, 0), 256 * MB);
    }

    #[test]
    fn reservations_stay_under_the_cap_and_return_when_dropped() {
        let b = Budget::new(Some(100));
        let r = b.reserve("a", 60).unwrap();
        let err = b.reserve("b", 50).unwrap_err();
        assert_eq!((err.need, err.used), (50, 60));
        assert!(err.to_string().contains("--max-memory"));
        drop(r);
        assert_eq!(b.used(), 0);
        let _ok = b.reserve("b", 50).unwrap();
        assert!(Budget::new(None).reserve("any", u64::MAX / 2).is_ok());
    }
}
