//! A Prometheus histogram on atomics: one `fetch_add` per bucket hit and
//! one for the sum, no lock.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use super::text::Text;

/// Lane decisions: a few µs unless the proxy waits (at most 20 ms) for an
/// inbound context from the ring buffer, or reads a body for a rule.
pub const DECISION_BOUNDS_NS: &[u64] = &[
    5_000,
    10_000,
    25_000,
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
];

/// Upstream answers (to the response head): from the app's own latency.
pub const UPSTREAM_BOUNDS_NS: &[u64] = &[
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
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

pub struct Histogram {
    bounds_ns: &'static [u64],
    /// Per bucket, not cumulative; the last one is +Inf.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds_ns: &'static [u64]) -> Self {
        Self {
            bounds_ns,
            buckets: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds_ns
            .iter()
            .position(|bound| ns <= *bound)
            .unwrap_or(self.bounds_ns.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// `NAME_bucket` (cumulative), `NAME_sum` (seconds) and `NAME_count`
    /// lines. The count is the buckets' total, so the lines agree with each
    /// other even while requests are observed during the scrape.
    pub fn encode(&self, out: &mut Text, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0u64;
        let bucket_name = format!("{name}_bucket");
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match self.bounds_ns.get(i) {
                Some(bound) => seconds(*bound),
                None => "+Inf".to_string(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            out.sample(&bucket_name, &with_le, cumulative);
        }
        out.sample(
            &format!("{name}_sum"),
            labels,
            seconds(self.sum_ns.load(Ordering::Relaxed)),
        );
        out.sample(&format!("{name}_count"), labels, cumulative);
    }
}

/// Nanoseconds as decimal seconds (`2500000` -> `0.0025`).
pub fn seconds(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}
