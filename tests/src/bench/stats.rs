//! Medians over runs and latency percentiles.
//!
//! Latencies go into a [`Histogram`]: lock-free, log-linear buckets (exact below
//! 128 ns, then 64 buckets per power of two, i.e. within 1.6 %), so 100 000 clients
//! can record concurrently without a shared lock or an ever-growing sample vector.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Values below this are stored exactly (one bucket per nanosecond).
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above [`LINEAR`].
const SUB: u64 = 64;
/// log2 of [`LINEAR`].
const LINEAR_BITS: u32 = 7;
/// Largest exponent stored (2^40 ns ≈ 18 minutes); larger values are clamped.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (LINEAR + (MAX_EXP - LINEAR_BITS + 1) as u64 * SUB) as usize;

/// The median of `values` (mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let upper = sorted.get(mid).copied()?;
    if sorted.len() % 2 == 1 {
        Some(upper)
    } else {
        let lower = sorted.get(mid - 1).copied()?;
        Some((lower + upper) / 2.0)
    }
}

/// A concurrent latency histogram in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < LINEAR {
        return ns as usize;
    }
    let exp = (63 - ns.leading_zeros()).min(MAX_EXP);
    if exp == MAX_EXP && ns >= (1u64 << (MAX_EXP + 1)) {
        return BUCKETS - 1;
    }
    let sub = (ns >> (exp - 6)) - SUB;
    (LINEAR + u64::from(exp - LINEAR_BITS) * SUB + sub) as usize
}

/// Lower bound of a bucket, in nanoseconds.
fn bucket_floor(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let rel = index - LINEAR;
    let exp = rel / SUB + u64::from(LINEAR_BITS);
    let sub = rel % SUB;
    (SUB + sub) << (exp - 6)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one sample.
    pub fn record(&self, value: Duration) {
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        if let Some(bucket) = self.buckets.get(bucket_of(ns)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The largest sample (exact).
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max.load(Ordering::Relaxed))
    }

    /// The `q` quantile (0.0–1.0), as the lower bound of its bucket (within 1.6 %);
    /// `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                let floor = bucket_floor(index);
                return Some(Duration::from_nanos(
                    floor.min(self.max.load(Ordering::Relaxed)),
                ));
            }
        }
        Some(self.max())
    }

    /// p50, p99 and max, when there are samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        Some(LatencySummary {
            count: self.count(),
            p50: self.quantile(0.50)?,
            p99: self.quantile(0.99)?,
            max: self.max(),
        })
    }
}

/// The usual three latency figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// Milliseconds with three decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Median of a duration field over runs.
pub fn median_duration(values: impl IntoIterator<Item = Duration>) -> Option<Duration> {
    let secs: Vec<f64> = values.into_iter().map(|d| d.as_secs_f64()).collect();
    median(&secs).map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            127,
            128,
            129,
            200,
            1_000,
            65_535,
            1_000_000,
            123_456_789,
        ] {
            let b = bucket_of(ns);
            assert!(b >= last, "bucket order at {ns}");
            last = b;
            let floor = bucket_floor(b);
            assert!(floor <= ns, "{floor} > {ns}");
            assert!(
                ns - floor <= ns / 64 + 1,
                "bucket too wide at {ns}: floor {floor}"
            );
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i));
        }
        let p50 = h.quantile(0.5).unwrap().as_micros();
        let p99 = h.quantile(0.99).unwrap().as_micros();
        assert!((490..=500).contains(&p50), "p50 {p50}");
        assert!((975..=990).contains(&p99), "p99 {p99}");
        assert_eq!(h.max(), Duration::from_micros(1000));
        assert_eq!(h.count(), 1000);
    }
}
