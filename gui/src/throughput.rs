//! Tokens per second per node over the last minutes, from the token counters on the nodes'
//! cards: each poll adds a sample, the rate is the counter's slope between samples.

use std::collections::{BTreeMap, VecDeque};

/// How far back the plot goes.
pub const WINDOW_S: f64 = 300.0;

/// Counter samples per node: (seconds since the client started, tokens generated).
#[derive(Debug, Default)]
pub struct Throughput {
    samples: BTreeMap<String, VecDeque<(f64, u64)>>,
}

impl Throughput {
    /// Records `node`'s counter at time `t`.
    pub fn add(&mut self, node: &str, t: f64, tokens: u64) {
        let s = self.samples.entry(node.to_owned()).or_default();
        if s.back().is_some_and(|&(last, _)| t <= last) {
            return;
        }
        s.push_back((t, tokens));
        while s.front().is_some_and(|&(first, _)| t - first > WINDOW_S) {
            s.pop_front();
        }
    }

    /// Each node's tokens/s between consecutive samples, as (seconds before `now`, rate): a
    /// counter that went down (the node restarted) starts again from its new value.
    pub fn series(&self, now: f64) -> Vec<(String, Vec<[f64; 2]>)> {
        self.samples
            .iter()
            .map(|(node, s)| {
                let points = s
                    .iter()
                    .zip(s.iter().skip(1))
                    .map(|(&(t0, n0), &(t1, n1))| {
                        let rate = n1.saturating_sub(n0) as f64 / (t1 - t0);
                        [t1 - now, rate]
                    })
                    .collect();
                (node.clone(), points)
            })
            .collect()
    }

    /// A node's latest rate, if it has two samples.
    pub fn latest(&self, node: &str) -> Option<f64> {
        let s = self.samples.get(node)?;
        let (&(t1, n1), &(t0, n0)) = (s.back()?, s.iter().rev().nth(1)?);
        Some(n1.saturating_sub(n0) as f64 / (t1 - t0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_slopes_and_a_restart_does_not_go_negative() {
        let mut t = Throughput::default();
        t.add("den", 0.0, 100);
        t.add("den", 2.0, 140);
        t.add("den", 4.0, 10);
        t.add("den", 4.0, 999); // same instant: ignored
        let series = t.series(4.0);
        assert_eq!(series, [("den".to_owned(), vec![[-2.0, 20.0], [0.0, 0.0]])]);
        assert_eq!(t.latest("den"), Some(0.0));
        assert_eq!(t.latest("attic"), None);
    }

    #[test]
    fn old_samples_fall_out_of_the_window() {
        let mut t = Throughput::default();
        for i in 0..1000u32 {
            t.add("den", f64::from(i), u64::from(i) * 3);
        }
        let (_, points) = &t.series(999.0)[0];
        assert_eq!(points.len(), WINDOW_S as usize);
        assert!(points.iter().all(|p| p[1] == 3.0 && p[0] >= -WINDOW_S));
    }
}
