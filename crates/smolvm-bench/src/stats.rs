//! Order statistics of samples: median and p95 (nearest rank), plus min, max and mean for context.
//!
//! Medians and high percentiles rather than means: on a shared, noisy machine one stalled iteration
//! would drag a mean, while the median says what a typical call costs and p95 what a bad one costs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Summary of a set of samples (all in the row's unit, e.g. milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median (the mean of the two middle samples when `n` is even).
    pub median: f64,
    /// 95th percentile, nearest-rank: the smallest sample with at least 95 % of samples at or below it.
    pub p95: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none or one is not a number.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            n,
            median,
            p95: percentile_sorted(&v, 95.0),
            min: v[0],
            max: v[n - 1],
            mean: v.iter().sum::<f64>() / n as f64,
        })
    }

    /// Summarises durations in milliseconds.
    pub fn of_durations_ms(samples: &[Duration]) -> Option<Summary> {
        let ms: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
        Summary::of(&ms)
    }
}

/// Nearest-rank percentile `p` (0 < p <= 100) of sorted, non-empty samples.
fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// A duration in (fractional) milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_medians() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            (s.n, s.median, s.min, s.max, s.mean),
            (3, 3.0, 1.0, 5.0, 3.0)
        );
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
    }

    #[test]
    fn p95_is_nearest_rank() {
        // 1..=100: the 95th smallest is 95.
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(Summary::of(&v).unwrap().p95, 95.0);
        // 1..=20: ceil(0.95 * 20) = 19th.
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(Summary::of(&v).unwrap().p95, 19.0);
        // Few samples: p95 is the maximum.
        assert_eq!(Summary::of(&[1.0, 9.0, 2.0]).unwrap().p95, 9.0);
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!(
            (one.median, one.p95, one.min, one.max),
            (7.0, 7.0, 7.0, 7.0)
        );
    }

    #[test]
    fn empty_or_nan_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn durations_in_ms() {
        let s = Summary::of_durations_ms(&[Duration::from_micros(1500), Duration::from_millis(3)])
            .unwrap();
        assert_eq!(s.median, 2.25);
        assert_eq!(ms(Duration::from_micros(250)), 0.25);
    }
}
