//! A latency histogram the datapath records into and a scrape reads, without a lock: one
//! atomic per bucket, plus the sum. Recording is a short linear scan over the bounds and
//! three relaxed additions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the handshake-latency buckets, in microseconds. At the relay a handshake
/// takes a round trip to the responder plus its processing: well under a millisecond on a
/// LAN, tens to hundreds of milliseconds across the internet, up to REKEY_TIMEOUT (5 s) for
/// an initiation parked until its responder showed up.
pub const HANDSHAKE_BOUNDS_MICROS: [u64; 14] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000,
];

/// Counts of observations per bucket (the last one is everything above the highest bound),
/// and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// `bounds.len() + 1` counters; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

/// What a scrape reads of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations in this bucket alone); the last bound is
    /// `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending, in microseconds).
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// The handshake-latency histogram ([`HANDSHAKE_BOUNDS_MICROS`]).
    pub fn handshake() -> Self {
        Self::new(&HANDSHAKE_BOUNDS_MICROS)
    }

    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = self
            .bounds
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(slot) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The counts so far. The count is the sum of the buckets read, so the two always agree
    /// (a concurrent observation may be in the sum and not yet in a bucket, or the reverse).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(self.buckets.len());
        let mut count = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count = count.saturating_add(n);
            let bound = self
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            buckets.push((bound, n));
        }
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[1_000, 10_000]);
        h.observe(Duration::from_micros(1_000)); // on the bound: le is inclusive
        h.observe(Duration::from_micros(1_001));
        h.observe(Duration::from_millis(10));
        h.observe(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(0.001, 1), (0.01, 2), (f64::INFINITY, 1)],
            "{s:?}"
        );
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 3.012001).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn an_empty_histogram_reads_zero_everywhere() {
        let s = Histogram::handshake().snapshot();
        assert_eq!(s.count, 0);
        assert_eq!(s.buckets.len(), HANDSHAKE_BOUNDS_MICROS.len() + 1);
        assert!(s.buckets.iter().all(|(_, n)| *n == 0));
        assert!(s.buckets.windows(2).all(|w| w[0].0 < w[1].0), "ascending");
    }
}
