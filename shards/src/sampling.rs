//! Token sampling: repetition penalty, temperature, top-k, top-p, min-p, seeded randomness;
//! greedy at temperature 0. Settings come from the request, else the node's configuration, else
//! the model's own recommendation (GGUF `general.sampling.*`), else hearth's defaults
//! ([`SamplingOverrides::over`], [`SamplingParams::resolve`]).

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token every time.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to at least p.
    pub top_p: f32,
    /// Drop tokens less likely than min-p times the most likely one (0 disables).
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of recently seen tokens; 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed for the random choice; the same seed and prompt give the same reply.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// hearth's defaults: llama.cpp's temperature, top-k, top-p and min-p, and a repeat penalty
    /// over the last 64 tokens, which keeps the small models out of loops (`scripts/bench-loops`).
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 0x4845_4152_5448,
        }
    }
}

pub use hearth_protocol::SamplingOverrides;

/// A model file's own sampling recommendation (GGUF `general.sampling.temp`, `.top_k`, `.top_p`,
/// `.min_p`, `.penalty_repeat`, `.penalty_last_n`, as llama.cpp's converter writes them), where
/// it has one.
pub fn recommended(gguf: &crate::gguf::Gguf) -> SamplingOverrides {
    let whole = |key: &str| gguf.get_usize(key).ok().and_then(|v| u32::try_from(v).ok());
    SamplingOverrides {
        temperature: gguf.get_f32("general.sampling.temp").ok(),
        top_k: whole("general.sampling.top_k"),
        top_p: gguf.get_f32("general.sampling.top_p").ok(),
        min_p: gguf.get_f32("general.sampling.min_p").ok(),
        repeat_penalty: gguf.get_f32("general.sampling.penalty_repeat").ok(),
        repeat_last_n: whole("general.sampling.penalty_last_n"),
    }
}

impl SamplingParams {
    /// Complete settings: `o`'s where set, hearth's defaults elsewhere, with `seed`.
    pub fn resolve(o: &SamplingOverrides, seed: u64) -> Self {
        let d = SamplingParams::default();
        SamplingParams {
            temperature: o.temperature.unwrap_or(d.temperature),
            top_k: o.top_k.map_or(d.top_k, |k| k as usize),
            top_p: o.top_p.unwrap_or(d.top_p),
            min_p: o.min_p.unwrap_or(d.min_p),
            repeat_penalty: o.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: o.repeat_last_n.map_or(d.repeat_last_n, |n| n as usize),
            seed,
        }
    }

    /// Checks settings given in part: those set must be in range (the rest take defaults, which
    /// are).
    pub fn check(o: &SamplingOverrides) -> Result<()> {
        SamplingParams::resolve(o, 0).validate()
    }

    /// Plain greedy decoding: the most likely token, no repeat penalty.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        }
    }

    /// Checks every parameter is in range, naming the first that is not.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadParameter(m));
        if !self.temperature.is_finite() || !(0.0..=100.0).contains(&self.temperature) {
            return bad(format!(
                "temperature {} must be between 0 and 100 (0 is greedy)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!(
                "top-p {} must be greater than 0 and at most 1",
                self.top_p
            ));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return bad(format!(
                "min-p {} must be at least 0 (0 disables it) and less than 1",
                self.min_p
            ));
        }
        if !self.repeat_penalty.is_finite()
            || !(0.0..=10.0).contains(&self.repeat_penalty)
            || self.repeat_penalty == 0.0
        {
            return bad(format!(
                "repeat penalty {} must be greater than 0 and at most 10 (1 disables it)",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// SplitMix64: small, fast and good enough to draw tokens reproducibly.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Picks tokens from logits under [`SamplingParams`].
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler; fails on out-of-range parameters.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = Rng(params.seed);
        Ok(Sampler {
            params,
            rng,
            candidates: Vec::new(),
        })
    }

    /// Chooses the next token. `history` holds the tokens so far (for the repetition penalty).
    /// `logits` is modified in place.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if self.params.temperature == 0.0 {
            self.penalize(logits, history);
            return argmax(logits);
        }
        self.distribution(logits, history);
        let c = &self.candidates;
        let mut r = self.rng.next_f32();
        for &(id, w) in c.iter() {
            if r < w {
                return id;
            }
            r -= w;
        }
        c[c.len() - 1].0
    }

    /// Applies the repetition penalty to the tokens of the last `repeat_last_n` of `history`.
    fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repeat_penalty == 1.0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
        let mut seen = recent.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / p.repeat_penalty
                } else {
                    *l * p.repeat_penalty
                };
            }
        }
    }

    /// The tokens sampling chooses from and their probabilities (summing to 1), most likely
    /// first: repetition penalty, top-k, temperature, top-p, then min-p. Needs a temperature
    /// above 0.
    pub fn distribution(&mut self, logits: &mut [f32], history: &[u32]) -> &[(u32, f32)] {
        self.penalize(logits, history);
        let p = &self.params;
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);
        let max = c[0].1;
        let mut sum = 0.0f32;
        for (_, l) in c.iter_mut() {
            *l = ((*l - max) / p.temperature).exp();
            sum += *l;
        }
        let mut cum = 0.0f32;
        let mut keep = c.len();
        for (i, (_, w)) in c.iter_mut().enumerate() {
            *w /= sum;
            cum += *w;
            if cum >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep);
        // Most likely first: keep those at least min-p times as likely as the first.
        let floor = c[0].1 * p.min_p;
        let keep = c.iter().take_while(|(_, w)| *w >= floor).count().max(1);
        c.truncate(keep);
        let total: f32 = c.iter().map(|(_, w)| w).sum();
        for (_, w) in c.iter_mut() {
            *w /= total;
        }
        c
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[(u32, f32)], want: &[(u32, f32)]) {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((gi, gp), (wi, wp)) in got.iter().zip(want) {
            assert_eq!(gi, wi, "{got:?}");
            assert!((gp - wp).abs() < 1e-4, "{got:?} against {want:?}");
        }
    }

    /// Plain sampling at temperature 1 with every filter off but the one under test.
    fn plain() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn the_repeat_penalty_divides_and_multiplies_recent_tokens_logits() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            repeat_last_n: 2,
            ..plain()
        })
        .unwrap();
        // Token 0 (2.0 → 1.0) and token 2 (-1.0 → -2.0) are in the last two; token 3 is older.
        let mut logits = [2.0, 1.0, -1.0, 0.5];
        let d = s.distribution(&mut logits, &[3, 0, 2]).to_vec();
        // exp(1), exp(1), exp(0.5), exp(-2) over their sum 7.22062.
        assert_close(
            &d,
            &[(0, 0.37646), (1, 0.37646), (3, 0.22834), (2, 0.01874)],
        );
    }

    #[test]
    fn min_p_drops_tokens_below_a_share_of_the_most_likely() {
        let probs = [0.5f32, 0.3, 0.15, 0.05];
        let mut logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(SamplingParams {
            min_p: 0.2,
            ..plain()
        })
        .unwrap();
        // The floor is 0.2 × 0.5 = 0.1: 0.05 goes, the rest is renormalised over 0.95.
        let d = s.distribution(&mut logits, &[]).to_vec();
        assert_close(&d, &[(0, 0.52632), (1, 0.31579), (2, 0.15789)]);
        // Off, everything stays.
        let mut s = Sampler::new(plain()).unwrap();
        let d = s.distribution(&mut logits, &[]).to_vec();
        assert_close(&d, &[(0, 0.5), (1, 0.3), (2, 0.15), (3, 0.05)]);
    }

    #[test]
    fn overrides_take_the_first_source_that_sets_each_setting() {
        let request = SamplingOverrides {
            temperature: Some(0.0),
            ..Default::default()
        };
        let model = SamplingOverrides {
            temperature: Some(0.6),
            top_k: Some(20),
            ..Default::default()
        };
        let p = SamplingParams::resolve(&request.over(&model), 9);
        assert_eq!((p.temperature, p.top_k, p.seed), (0.0, 20, 9));
        assert_eq!(p.min_p, SamplingParams::default().min_p);
        assert_eq!(p.repeat_penalty, 1.1);
    }

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_can_change_the_greedy_choice() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        })
        .unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[1]), 2);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_top_p_limits_choices() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            ..Default::default()
        };
        let logits = [2.0, 1.9, 1.8, -20.0, -20.0];
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params.clone()
            })
            .unwrap();
            (0..200)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|&t| t < 3), "top-p kept an unlikely token");
        assert!(
            (0..3).all(|t| a.contains(&t)),
            "sampling never picked some likely token"
        );
    }

    #[test]
    fn absurd_parameters_are_refused() {
        for p in [
            SamplingParams {
                top_p: 7.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                repeat_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(matches!(Sampler::new(p), Err(Error::BadParameter(_))));
        }
    }
}
