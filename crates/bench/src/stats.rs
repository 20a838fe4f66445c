//! Latency statistics and the breaking point.

use serde::{Deserialize, Serialize};

/// Percentile of already sorted data, by linear interpolation between the
/// closest ranks (Hyndman & Fan type 7: numpy's and Excel's default).
/// `q` is in [0, 1]. `None` for empty data.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !q.is_finite() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    let frac = h - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Sorts a copy of `values` (NaNs dropped) and returns the given percentile.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let sorted = sorted_finite(values);
    percentile_sorted(&sorted, q)
}

fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Summary of one set of latencies, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencySummary {
    /// `None` when there is no finite value.
    pub fn from_values(values: &[f64]) -> Option<Self> {
        let sorted = sorted_finite(values);
        let first = *sorted.first()?;
        let last = *sorted.last()?;
        let p = |q| percentile_sorted(&sorted, q).unwrap_or(f64::NAN);
        Some(Self {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min: first,
            p50: p(0.50),
            p90: p(0.90),
            p95: p(0.95),
            p99: p(0.99),
            max: last,
        })
    }
}

/// One measured load level as the breaking-point search sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelPoint {
    /// Successful images per second.
    pub throughput: f64,
    /// p95 latency of successful requests, seconds; `None` if none succeeded.
    pub p95: Option<f64>,
    /// Failed requests over all requests sent, 0..=1.
    pub error_rate: f64,
}

impl LevelPoint {
    /// A level meets the SLO when its p95 is at or under it and it failed no
    /// more than `max_error_rate` of its requests: a server that sheds load
    /// with fast 429s must not look fast.
    pub fn meets(&self, slo_p95: f64, max_error_rate: f64) -> bool {
        match self.p95 {
            Some(p95) => {
                p95 <= slo_p95 && self.error_rate <= max_error_rate && self.throughput > 0.0
            }
            None => false,
        }
    }
}

/// Index of the level with the highest throughput whose p95 stays within the
/// SLO (and whose error rate is acceptable). Ties go to the lower p95.
pub fn breaking_point(levels: &[LevelPoint], slo_p95: f64, max_error_rate: f64) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, l) in levels.iter().enumerate() {
        if !l.meets(slo_p95, max_error_rate) {
            continue;
        }
        best = match best {
            None => Some(i),
            Some(b) => {
                let cur = &levels[b];
                let better = l.throughput > cur.throughput
                    || (l.throughput == cur.throughput
                        && l.p95.unwrap_or(f64::INFINITY) < cur.p95.unwrap_or(f64::INFINITY));
                if better { Some(i) } else { Some(b) }
            }
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        // numpy.percentile(range(1, 11), [50, 90, 95, 99])
        assert!(close(percentile(&v, 0.50).unwrap(), 5.5));
        assert!(close(percentile(&v, 0.90).unwrap(), 9.1));
        assert!(close(percentile(&v, 0.95).unwrap(), 9.55));
        assert!(close(percentile(&v, 0.99).unwrap(), 9.91));
        assert!(close(percentile(&v, 0.0).unwrap(), 1.0));
        assert!(close(percentile(&v, 1.0).unwrap(), 10.0));
    }

    #[test]
    fn percentiles_ignore_order_and_nan() {
        let v = [3.0, f64::NAN, 1.0, 2.0];
        assert!(close(percentile(&v, 0.5).unwrap(), 2.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[f64::NAN], 0.5), None);
        assert!(close(percentile(&[4.2], 0.99).unwrap(), 4.2));
    }

    #[test]
    fn summary_of_a_hundred() {
        let v: Vec<f64> = (1..=100).map(|i| f64::from(i) / 100.0).collect();
        let s = LatencySummary::from_values(&v).unwrap();
        assert_eq!(s.count, 100);
        assert!(close(s.mean, 0.505));
        assert!(close(s.min, 0.01));
        assert!(close(s.max, 1.0));
        assert!(close(s.p50, 0.505));
        assert!(close(s.p95, 0.9505));
        assert!(close(s.p99, 0.9901));
        assert!(LatencySummary::from_values(&[]).is_none());
    }

    fn lp(throughput: f64, p95: f64, error_rate: f64) -> LevelPoint {
        LevelPoint {
            throughput,
            p95: Some(p95),
            error_rate,
        }
    }

    #[test]
    fn breaking_point_is_the_fastest_level_within_the_slo() {
        let levels = [
            lp(1.0, 0.5, 0.0),
            lp(2.0, 0.7, 0.0),
            lp(3.0, 0.95, 0.0), // over the SLO
            lp(2.5, 0.85, 0.0),
        ];
        assert_eq!(breaking_point(&levels, 0.9, 0.01), Some(3));
        // A tighter SLO moves it down; an impossible one finds nothing.
        assert_eq!(breaking_point(&levels, 0.75, 0.01), Some(1));
        assert_eq!(breaking_point(&levels, 0.1, 0.01), None);
        // The SLO is inclusive.
        assert_eq!(breaking_point(&levels, 0.95, 0.01), Some(2));
    }

    #[test]
    fn errors_disqualify_a_level() {
        let levels = [lp(1.0, 0.5, 0.0), lp(5.0, 0.2, 0.30)];
        assert_eq!(breaking_point(&levels, 0.9, 0.01), Some(0));
        assert_eq!(breaking_point(&levels, 0.9, 0.5), Some(1));
        let none = [LevelPoint {
            throughput: 0.0,
            p95: None,
            error_rate: 1.0,
        }];
        assert_eq!(breaking_point(&none, 10.0, 1.0), None);
    }

    #[test]
    fn ties_prefer_lower_latency() {
        let levels = [lp(2.0, 0.8, 0.0), lp(2.0, 0.6, 0.0)];
        assert_eq!(breaking_point(&levels, 0.9, 0.0), Some(1));
    }
}
