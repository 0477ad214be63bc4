#![allow(dead_code)]
//! Shared test helpers: stores in temporary directories and a watchdog for every wait.

use std::future::Future;
use std::time::Duration;

use storage::{Config, Store};

/// Every test that runs the store's threads waits under this watchdog (see platform notes:
/// an executor hang must fail a test, not stall CI).
pub const WATCHDOG: Duration = Duration::from_secs(60);

pub fn config(dir: &std::path::Path, shards: usize) -> Config {
    let mut cfg = Config::new(dir);
    cfg.shards = shards;
    cfg.segment_bytes = 8 << 20;
    cfg.batch_bytes_max = 1 << 20;
    cfg.request_bytes_max = 1 << 20;
    cfg.pin_threads = false;
    cfg
}

pub fn open(dir: &std::path::Path, shards: usize) -> Store {
    Store::open(config(dir, shards)).expect("open store")
}

/// Awaits `fut`, failing the test with `what` if it takes longer than the watchdog.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WATCHDOG, fut).await {
        Ok(v) => v,
        Err(_) => panic!("watchdog: {what} did not happen within {WATCHDOG:?}"),
    }
}

pub fn b(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}
