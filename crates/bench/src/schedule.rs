//! Arrival schedules for open-loop load: Poisson arrivals at a fixed rate,
//! and non-homogeneous Poisson arrivals following a wave (a day of traffic
//! compressed into a run). Both are pure functions of their seed.

use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// Arrival offsets in seconds from the start, sorted, all below `duration`,
/// for a Poisson process of `rate` arrivals per second.
pub fn poisson_schedule(rate: f64, duration: f64, seed: u64) -> Vec<f64> {
    let mut out = Vec::new();
    if !(rate > 0.0 && rate.is_finite() && duration > 0.0) {
        return out;
    }
    let mut rng = SplitMix64::new(seed);
    let mut t = rng.exponential(rate);
    while t < duration {
        out.push(t);
        t += rng.exponential(rate);
    }
    out
}

/// The shape of a wave profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WaveShape {
    /// Starts at the middle rate and rises first.
    Sine,
    /// Starts at the peak rate.
    Cosine,
}

/// A rate that varies as a sinusoid between `min_rate` and `max_rate` with the
/// given period (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    pub shape: WaveShape,
    pub min_rate: f64,
    pub max_rate: f64,
    pub period_s: f64,
}

impl Wave {
    /// Requests per second at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        let mid = (self.min_rate + self.max_rate) / 2.0;
        let amp = (self.max_rate - self.min_rate) / 2.0;
        let phase = std::f64::consts::TAU * t / self.period_s;
        let s = match self.shape {
            WaveShape::Sine => phase.sin(),
            WaveShape::Cosine => phase.cos(),
        };
        (mid + amp * s).max(0.0)
    }

    /// Arrivals by thinning (Lewis & Shedler): candidates at the peak rate,
    /// each kept with probability `rate_at(t) / max_rate`.
    pub fn schedule(&self, duration: f64, seed: u64) -> Vec<f64> {
        let peak = self.max_rate.max(self.min_rate);
        if !(peak > 0.0 && peak.is_finite() && self.period_s > 0.0) {
            return Vec::new();
        }
        let candidates = poisson_schedule(peak, duration, seed);
        // A second, independent stream decides acceptance so the candidate
        // times stay the same for any wave with the same peak.
        let mut accept = SplitMix64::new(seed ^ 0xA5A5_A5A5_5A5A_5A5A);
        candidates
            .into_iter()
            .filter(|&t| accept.next_f64() * peak < self.rate_at(t))
            .collect()
    }

    /// Expected number of arrivals over `[0, duration)` (the integral of the
    /// rate), for sizing checks.
    pub fn expected_arrivals(&self, duration: f64) -> f64 {
        let mid = (self.min_rate + self.max_rate) / 2.0;
        let amp = (self.max_rate - self.min_rate) / 2.0;
        let w = std::f64::consts::TAU / self.period_s;
        let integral = match self.shape {
            WaveShape::Sine => (1.0 - (w * duration).cos()) / w,
            WaveShape::Cosine => (w * duration).sin() / w,
        };
        (mid * duration + amp * integral).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_is_deterministic_per_seed() {
        let a = poisson_schedule(5.0, 20.0, 42);
        let b = poisson_schedule(5.0, 20.0, 42);
        let c = poisson_schedule(5.0, 20.0, 43);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.iter().all(|&t| (0.0..20.0).contains(&t)));
    }

    #[test]
    fn poisson_count_and_gaps_match_the_rate() {
        let rate = 10.0;
        let dur = 2_000.0;
        let s = poisson_schedule(rate, dur, 1);
        let n = s.len() as f64;
        // Count ~ Poisson(20000): sd ~ 141.
        assert!((n - rate * dur).abs() < 600.0, "n = {n}");
        // Exponential gaps: coefficient of variation ~ 1.
        let gaps: Vec<f64> = s.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        let cv = var.sqrt() / mean;
        assert!((mean - 0.1).abs() < 0.005, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
    }

    #[test]
    fn degenerate_inputs_give_no_arrivals() {
        assert!(poisson_schedule(0.0, 10.0, 1).is_empty());
        assert!(poisson_schedule(1.0, 0.0, 1).is_empty());
        assert!(poisson_schedule(f64::NAN, 10.0, 1).is_empty());
    }

    #[test]
    fn wave_shapes() {
        let sine = Wave {
            shape: WaveShape::Sine,
            min_rate: 1.0,
            max_rate: 5.0,
            period_s: 100.0,
        };
        let cosine = Wave {
            shape: WaveShape::Cosine,
            ..sine
        };
        let eq = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(eq(sine.rate_at(0.0), 3.0));
        assert!(eq(sine.rate_at(25.0), 5.0));
        assert!(eq(sine.rate_at(50.0), 3.0));
        assert!(eq(sine.rate_at(75.0), 1.0));
        assert!(eq(cosine.rate_at(0.0), 5.0));
        assert!(eq(cosine.rate_at(50.0), 1.0));
        assert!(eq(cosine.rate_at(100.0), 5.0));
        // One full period averages the middle rate.
        assert!(eq(sine.expected_arrivals(100.0), 300.0));
        assert!(eq(cosine.expected_arrivals(100.0), 300.0));
        // Half a sine period is above the middle, half a cosine from the
        // peak integrates to exactly the middle.
        assert!(sine.expected_arrivals(50.0) > 150.0);
        assert!(eq(cosine.expected_arrivals(50.0), 150.0));
    }

    #[test]
    fn wave_schedule_follows_the_rate() {
        let w = Wave {
            shape: WaveShape::Cosine,
            min_rate: 0.0,
            max_rate: 20.0,
            period_s: 1_000.0,
        };
        let s = w.schedule(1_000.0, 9);
        assert_eq!(s, w.schedule(1_000.0, 9));
        let expected = w.expected_arrivals(1_000.0);
        assert!(
            (s.len() as f64 - expected).abs() < 4.0 * expected.sqrt(),
            "{} vs {expected}",
            s.len()
        );
        // Peak quarter (around t = 0 and t = 1000) vs trough (around 500).
        let peak = s.iter().filter(|&&t| !(125.0..875.0).contains(&t)).count();
        let trough = s.iter().filter(|&&t| (375.0..625.0).contains(&t)).count();
        assert!(peak > 5 * trough, "peak {peak} trough {trough}");
    }
}
