//! Counters of the in-process handler and its fault-latency histogram.
//!
//! The handler thread updates [`SharedStats`] with relaxed atomics; [`UffdStats`] is the cheap
//! snapshot callers get. Fault counters are updated before the faulting thread is woken, so
//! once a thread's access has returned its fault is already counted. Remove counters may lag
//! the return of `madvise` a little: the kernel releases the discarding thread as soon as the
//! event is read, and it is recorded just after (always before any later fault is served).

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (µs) of the finite histogram buckets: 1, 2, 4, ..., 65536.
const FINITE_BUCKETS: usize = 17;
/// Finite buckets plus the `+inf` bucket.
const BUCKETS: usize = FINITE_BUCKETS + 1;

fn bucket_bound_us(index: usize) -> u64 {
    if index < FINITE_BUCKETS {
        1u64 << index
    } else {
        u64::MAX
    }
}

fn bucket_index(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    if us <= 1 {
        0
    } else {
        ((64 - (us - 1).leading_zeros()) as usize).min(FINITE_BUCKETS)
    }
}

/// Log2 histogram of fault-service latencies (from reading the fault event to the page being
/// installed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// `(upper bound in µs, count)`: bounds 1, 2, 4, ..., 65536 µs, then `u64::MAX` for +inf.
    pub buckets_us: Vec<(u64, u64)>,
    /// Number of samples.
    pub count: u64,
    /// Sum of all samples in nanoseconds.
    pub sum_ns: u64,
    /// Largest sample in nanoseconds.
    pub max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets_us: (0..BUCKETS).map(|i| (bucket_bound_us(i), 0)).collect(),
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

impl LatencyHistogram {
    /// Adds one sample.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let index = bucket_index(ns);
        if let Some(bucket) = self.buckets_us.get_mut(index) {
            bucket.1 += 1;
        }
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Mean latency in µs (0 without samples).
    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64 / 1000.0
        }
    }

    /// Latency in µs under which `p` percent (0..=100) of the samples fall, as the upper bound of
    /// the bucket holding that rank, capped at the maximum seen (0 without samples).
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let p = p.clamp(0.0, 100.0);
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).max(1);
        let max_us = self.max_ns.div_ceil(1000);
        let mut seen = 0;
        for &(bound, count) in &self.buckets_us {
            seen += count;
            if seen >= rank {
                return bound.min(max_us);
            }
        }
        max_us
    }
}

/// Snapshot of the in-process handler's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdStats {
    /// Missing-page fault events read.
    pub faults: u64,
    /// Pages installed (zero pages plus copied pages).
    pub pages_served: u64,
    /// Bytes installed.
    pub bytes_served: u64,
    /// Pages installed as zeros (UFFDIO_ZEROPAGE, or a zeroed UFFDIO_COPY on hugetlb).
    pub zero_pages: u64,
    /// Pages installed with bytes from the source image.
    pub copied_pages: u64,
    /// `UFFD_EVENT_REMOVE` events (MADV_DONTNEED / MADV_REMOVE on a registered range).
    pub remove_events: u64,
    /// Bytes covered by those events (clipped to the registered regions).
    pub removed_bytes: u64,
    /// Bytes of pages whose source bytes have not been used yet (neither served nor
    /// discarded): for a swap source, what is still only in the swap file.
    #[serde(default)]
    pub source_bytes_left: u64,
    /// Fault-service latencies.
    pub latency: LatencyHistogram,
}

/// Lock-free counters shared between the handler thread and [`crate::UffdHandler::stats`].
#[derive(Debug, Default)]
pub(crate) struct SharedStats {
    faults: AtomicU64,
    zero_pages: AtomicU64,
    copied_pages: AtomicU64,
    bytes_served: AtomicU64,
    remove_events: AtomicU64,
    removed_bytes: AtomicU64,
    source_bytes_left: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl SharedStats {
    pub(crate) fn add_fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_served(&self, pages: u64, bytes: u64, zero: bool) {
        let counter = if zero {
            &self.zero_pages
        } else {
            &self.copied_pages
        };
        counter.fetch_add(pages, Ordering::Relaxed);
        self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_remove(&self, bytes: u64) {
        self.remove_events.fetch_add(1, Ordering::Relaxed);
        self.removed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn set_source_bytes_left(&self, bytes: u64) {
        self.source_bytes_left.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn sub_source_bytes_left(&self, bytes: u64) {
        if bytes > 0 {
            self.source_bytes_left.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_latency(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_index(ns)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> UffdStats {
        let zero_pages = self.zero_pages.load(Ordering::Relaxed);
        let copied_pages = self.copied_pages.load(Ordering::Relaxed);
        UffdStats {
            faults: self.faults.load(Ordering::Relaxed),
            pages_served: zero_pages + copied_pages,
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            zero_pages,
            copied_pages,
            remove_events: self.remove_events.load(Ordering::Relaxed),
            removed_bytes: self.removed_bytes.load(Ordering::Relaxed),
            source_bytes_left: self.source_bytes_left.load(Ordering::Relaxed),
            latency: LatencyHistogram {
                buckets_us: self
                    .buckets
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (bucket_bound_us(i), b.load(Ordering::Relaxed)))
                    .collect(),
                count: self.count.load(Ordering::Relaxed),
                sum_ns: self.sum_ns.load(Ordering::Relaxed),
                max_ns: self.max_ns.load(Ordering::Relaxed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_boundaries() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1000), 0);
        assert_eq!(bucket_index(1001), 1);
        assert_eq!(bucket_index(2000), 1);
        assert_eq!(bucket_index(2001), 2);
        assert_eq!(bucket_index(4000), 2);
        assert_eq!(bucket_index(65_536_000), 16);
        assert_eq!(bucket_index(65_536_001), 17);
        assert_eq!(bucket_index(u64::MAX), 17);
    }

    #[test]
    fn histogram_mean_percentiles_and_snapshot() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.buckets_us.len(), BUCKETS);
        assert_eq!(h.buckets_us[0].0, 1);
        assert_eq!(h.buckets_us[16].0, 65536);
        assert_eq!(h.buckets_us[17].0, u64::MAX);
        assert_eq!(h.percentile_us(50.0), 0);
        assert_eq!(h.mean_us(), 0.0);

        // 90 samples of 3 µs, 9 of 100 µs, 1 of 200 ms (beyond the last finite bucket).
        let shared = SharedStats::default();
        for _ in 0..90 {
            h.record(Duration::from_micros(3));
            shared.add_latency(Duration::from_micros(3));
        }
        for _ in 0..9 {
            h.record(Duration::from_micros(100));
            shared.add_latency(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(200));
        shared.add_latency(Duration::from_millis(200));

        assert_eq!(h.count, 100);
        assert_eq!(h.buckets_us[2], (4, 90));
        assert_eq!(h.buckets_us[7], (128, 9));
        assert_eq!(h.buckets_us[17], (u64::MAX, 1));
        assert_eq!(h.max_ns, 200_000_000);
        let mean = (90.0 * 3.0 + 9.0 * 100.0 + 200_000.0) / 100.0;
        assert!((h.mean_us() - mean).abs() < 1e-9, "{}", h.mean_us());
        assert_eq!(h.percentile_us(0.0), 4);
        assert_eq!(h.percentile_us(50.0), 4);
        assert_eq!(h.percentile_us(90.0), 4);
        assert_eq!(h.percentile_us(91.0), 128);
        assert_eq!(h.percentile_us(99.0), 128);
        assert_eq!(h.percentile_us(100.0), 200_000);

        assert_eq!(shared.snapshot().latency, h);
        let json = serde_json::to_string(&shared.snapshot()).unwrap();
        let back: UffdStats = serde_json::from_str(&json).unwrap();
        assert_eq!(back.latency, h);
    }

    #[test]
    fn counters_sum_up() {
        let s = SharedStats::default();
        s.add_fault();
        s.add_served(16, 65536, true);
        s.add_served(1, 4096, false);
        s.add_remove(8192);
        let snap = s.snapshot();
        assert_eq!(snap.faults, 1);
        assert_eq!(snap.pages_served, 17);
        assert_eq!(snap.zero_pages, 16);
        assert_eq!(snap.copied_pages, 1);
        assert_eq!(snap.bytes_served, 69632);
        assert_eq!(snap.remove_events, 1);
        assert_eq!(snap.removed_bytes, 8192);
    }
}
