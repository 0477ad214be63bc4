//! Closing a store leaves nothing running behind it: the log's background preparation of its
//! next segment is waited for, so no file appears in the data directory after the store is
//! dropped (a test or a benchmark that removes its directory then would otherwise fail to, or
//! leave a 64 MiB segment behind). Its own test binary: it counts the process's preparers.

use storage::{wal, Config, Store};

#[test]
fn a_closed_store_has_finished_preparing_its_next_segment() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.shards = 1;
    cfg.pin_threads = false;
    let store = Store::open(cfg).unwrap();
    assert_eq!(wal::preparers_running(), 1, "the open store's shard has a segment preparer");
    // Past half of the 64 MiB segment: the preparer starts writing the next one (~100 ms of
    // disk), and the store is dropped at once, while it writes.
    rt.block_on(async {
        let value = vec![b'v'; 1 << 20];
        for i in 0..34 {
            store.put(format!("k{i}"), value.clone()).await.unwrap();
        }
    });
    drop(store);
    assert_eq!(wal::preparers_running(), 0, "a segment preparer outlived its store");
    let segments: Vec<_> = std::fs::read_dir(dir.path().join("wal/shard-0")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(segments.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")), "a half-written segment was left: {segments:?}");
    std::fs::remove_dir_all(dir.path()).expect("the closed store's directory removes whole");
}
