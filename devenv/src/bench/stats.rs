//! Percentiles of latency samples.

use std::time::Duration;

use serde::Serialize;

/// Nearest-rank percentiles of a sample, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Self {
        let mut seconds: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        seconds.sort_by(f64::total_cmp);
        Summary {
            count: seconds.len(),
            p50: percentile(&seconds, 50.0),
            p95: percentile(&seconds, 95.0),
            p99: percentile(&seconds, 99.0),
            max: seconds.last().copied().unwrap_or(0.0),
        }
    }
}

/// The nearest-rank `p`th percentile of ascending `sorted` (0 when empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_secs).collect();
        let s = Summary::of(&samples);
        assert_eq!((s.count, s.p50, s.p95, s.p99, s.max), (100, 50.0, 95.0, 99.0, 100.0));
        let one = Summary::of(&[Duration::from_millis(250)]);
        assert_eq!((one.p50, one.p99, one.max), (0.25, 0.25, 0.25));
        assert_eq!(Summary::of(&[]).max, 0.0);
    }
}
