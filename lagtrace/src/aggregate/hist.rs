//! Percentiles from the kernel's iteration histogram (4 sub-buckets per power
//! of two, so an estimate is within about ±12% of the true value; the maximum
//! is exact, kept separately by the kernel).
use lagtrace_common::{HIST_BUCKETS, hist_bucket_low};

/// The estimated `q`-quantile (0..=1) of the histogram, clamped to `max_ns`.
pub fn quantile(hist: &[u64], q: f64, max_ns: u64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    if rank == total {
        // The top rank is the maximum, which the kernel keeps exactly.
        return Some(max_ns);
    }
    let mut seen = 0;
    for (b, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let low = hist_bucket_low(b);
            let high = if b + 1 < HIST_BUCKETS {
                hist_bucket_low(b + 1)
            } else {
                low
            };
            // The middle of the bucket halves the worst-case error.
            return Some((low + (high - low) / 2).min(max_ns));
        }
    }
    Some(max_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lagtrace_common::hist_bucket;

    fn hist_of(values: &[u64]) -> Vec<u64> {
        let mut h = vec![0; HIST_BUCKETS];
        for &v in values {
            h[hist_bucket(v)] += 1;
        }
        h
    }

    #[test]
    fn quantiles_within_bucket_error() {
        // 1..=1000 µs, uniformly.
        let values: Vec<u64> = (1..=1000).map(|us| us * 1000).collect();
        let h = hist_of(&values);
        for (q, truth) in [(0.5, 500_000.0), (0.9, 900_000.0), (0.99, 990_000.0)] {
            let est = quantile(&h, q, 1_000_000).unwrap() as f64;
            assert!((est - truth).abs() / truth < 0.13, "q{q}: {est} vs {truth}");
        }
        assert_eq!(quantile(&h, 1.0, 1_000_000), Some(1_000_000));
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(quantile(&vec![0; HIST_BUCKETS], 0.5, 0), None);
        let h = hist_of(&[42_000_000]);
        let est = quantile(&h, 0.5, 42_000_000).unwrap();
        assert!(est <= 42_000_000 && est > 36_000_000, "{est}");
    }
}
