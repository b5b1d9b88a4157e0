//! Counters the devices keep for the control API's `GET /metrics`.
//!
//! Everything here is a relaxed atomic: the I/O thread updates it on the request path and the
//! API thread reads it whenever it is scraped, so neither ever waits for the other. Readers get
//! values that are each monotonic, not one consistent snapshot across counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency histogram's buckets, in nanoseconds: 50 µs to 1 s, roughly
/// 1-2.5-5 per decade (a local SSD answers in tens of microseconds, a throttled network disk
/// in hundreds of milliseconds).
pub const LATENCY_BOUNDS_NS: [u64; 14] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// A histogram of durations over [`LATENCY_BOUNDS_NS`]: one atomic per bucket (not cumulative,
/// so an observation is one increment) plus one for the sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// `buckets[i]` counts observations in (bound[i-1], bound[i]]; the last one those above
    /// every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

/// A histogram as Prometheus shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts, one per bound of [`LATENCY_BOUNDS_NS`].
    pub cumulative: Vec<u64>,
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        // The count is the sum of the buckets read here, so that `+Inf` equals the last
        // cumulative bucket plus the overflow whatever the I/O thread does meanwhile.
        let mut cumulative = Vec::with_capacity(LATENCY_BOUNDS_NS.len());
        let mut total = 0u64;
        for b in &self.buckets[..LATENCY_BOUNDS_NS.len()] {
            total += b.load(Ordering::Relaxed);
            cumulative.push(total);
        }
        total += self.buckets[LATENCY_BOUNDS_NS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            count: total,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_adds() {
        let c = Counter::default();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
    }

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds_and_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(10)); // first bucket
        h.observe(Duration::from_micros(50)); // exactly on the first bound: first bucket
        h.observe(Duration::from_micros(51)); // second
        h.observe(Duration::from_millis(3)); // 5 ms bucket
        h.observe(Duration::from_secs(2)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[1], 3);
        let five_ms = LATENCY_BOUNDS_NS
            .iter()
            .position(|&b| b == 5_000_000)
            .unwrap();
        assert_eq!(s.cumulative[five_ms - 1], 3);
        assert_eq!(s.cumulative[five_ms], 4);
        assert_eq!(*s.cumulative.last().unwrap(), 4);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
        let want = 10e-6 + 50e-6 + 51e-6 + 3e-3 + 2.0;
        assert!((s.sum_seconds - want).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn histogram_takes_extremes() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_secs(100));
        h.observe(Duration::ZERO);
        let s = h.snapshot();
        assert_eq!(s.count, 2);
        assert_eq!(s.cumulative[0], 1);
    }
}
