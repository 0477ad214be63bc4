//! What each shard's log writes cost, counted where it commits: group commits, bytes, and
//! the time of each durable append (one linked write + fdatasync) in power-of-two
//! microsecond buckets. Relaxed atomics, written by the shard's own thread only; read by
//! whoever wants a view (the dashboard's store page).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket `i` counts appends that took less than 2^i µs (the last bucket: the rest).
pub const SYNC_BUCKETS: usize = 24;

#[derive(Default)]
pub struct ShardIo {
    commits: AtomicU64,
    bytes: AtomicU64,
    sync: [AtomicU64; SYNC_BUCKETS],
}

/// A copy of one shard's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardIoStats {
    /// Group commits written (each one write + one fdatasync).
    pub commits: u64,
    pub bytes: u64,
    /// Appends by duration: bucket `i` holds those under 2^i µs.
    pub sync_us_buckets: Vec<u64>,
}

/// The bucket of `d`: the smallest i with d < 2^i µs.
pub fn bucket(d: Duration) -> usize {
    let us = d.as_micros() as u64;
    ((u64::BITS - us.leading_zeros()) as usize).min(SYNC_BUCKETS - 1)
}

impl ShardIo {
    pub fn record(&self, bytes: usize, took: Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
        self.sync[bucket(took)].fetch_add(1, Relaxed);
    }

    pub fn stats(&self) -> ShardIoStats {
        ShardIoStats { commits: self.commits.load(Relaxed), bytes: self.bytes.load(Relaxed), sync_us_buckets: self.sync.iter().map(|b| b.load(Relaxed)).collect() }
    }
}

impl ShardIoStats {
    /// The upper bound (µs) of the bucket holding quantile `q` of the appends; none without
    /// any.
    pub fn sync_quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.sync_us_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.sync_us_buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(1u64 << i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_fall_in_power_of_two_buckets_and_quantiles_read_their_bounds() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_micros(1)), 1);
        assert_eq!(bucket(Duration::from_micros(3)), 2);
        assert_eq!(bucket(Duration::from_micros(1000)), 10);
        assert_eq!(bucket(Duration::from_secs(3600)), SYNC_BUCKETS - 1);
        let io = ShardIo::default();
        for _ in 0..98 {
            io.record(100, Duration::from_micros(300));
        }
        io.record(100, Duration::from_micros(5_000));
        io.record(100, Duration::from_micros(20_000));
        let s = io.stats();
        assert_eq!((s.commits, s.bytes), (100, 10_000));
        assert_eq!(s.sync_quantile_us(0.5), Some(512));
        assert_eq!(s.sync_quantile_us(0.99), Some(8192));
        assert_eq!(s.sync_quantile_us(1.0), Some(32768));
        assert_eq!(ShardIoStats::default().sync_quantile_us(0.5), None);
        // The median of three is the second.
        let three = ShardIo::default();
        for us in [1, 100, 1000] {
            three.record(1, Duration::from_micros(us));
        }
        assert_eq!(three.stats().sync_quantile_us(0.5), Some(128));
    }
}
