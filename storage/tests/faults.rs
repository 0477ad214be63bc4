//! Injected faults (failpoints are process-wide, so these tests live in their own binary and
//! run one at a time).

mod common;

use common::*;
use storage::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_log_fails_writes_keeps_reads_and_recovers() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    store.put("before", "1").await.unwrap();
    storage::failpoint::set("wal::write", "enospc");
    let err = store.put("during", "2").await.unwrap_err();
    storage::failpoint::clear("wal::write");
    assert_eq!(err, StoreError::NoSpace);
    assert!(store.get("during").await.unwrap().is_none(), "nothing half-written");
    assert_eq!(store.get("before").await.unwrap().unwrap().value, b("1"), "reads keep working");
    store.put("after", "3").await.unwrap();
    drop(store);
    let store = open(dir.path(), 2);
    assert!(store.get("before").await.unwrap().is_some());
    assert!(store.get("after").await.unwrap().is_some());
    assert!(store.get("during").await.unwrap().is_none());
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_fails_the_write_and_stops_all_writes_but_not_reads() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    store.put("before", "1").await.unwrap();
    // The reply waits for the sync's own result: if a write were acknowledged before its
    // sync completed, this error could not reach the caller.
    storage::failpoint::set("wal::sync", "eio");
    let err = store.put("during", "2").await.unwrap_err();
    storage::failpoint::clear("wal::sync");
    assert!(matches!(err, StoreError::Failed(_)), "{err:?}");
    let err = store.put("after", "3").await.unwrap_err();
    assert!(matches!(err, StoreError::Failed(_)), "after a failed sync the store takes no writes: {err:?}");
    assert_eq!(store.get("before").await.unwrap().unwrap().value, b("1"), "reads keep working");
    assert!(store.get("during").await.unwrap().is_none());
    drop(store);
    let store = open(dir.path(), 2);
    assert!(store.get("before").await.unwrap().is_some(), "a restart recovers");
    store.put("after", "3").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_writer_fails_or_panics_leaves_the_store_serving_and_the_last_snapshot_in_force() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    store.put("a", "1").await.unwrap();
    let first = store.snapshot().await.unwrap();
    store.put("b", "2").await.unwrap();
    for action in ["eio", "panic"] {
        storage::failpoint::set("snapshot::write_shard", action);
        let r = store.snapshot().await;
        storage::failpoint::clear("snapshot::write_shard");
        assert!(matches!(r, Err(StoreError::Io(_))), "a snapshot whose writer met {action} answered {r:?}");
        store.put(format!("after-{action}"), "3").await.unwrap();
        assert_eq!(store.get("a").await.unwrap().unwrap().value, b("1"), "reads keep working after {action}");
    }
    drop(store);
    let store = open(dir.path(), 2);
    for k in ["a", "b", "after-eio", "after-panic"] {
        assert!(store.get(k).await.unwrap().is_some(), "{k} is gone after a reopen");
    }
    let current = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
    let snaps: Vec<String> = std::fs::read_dir(dir.path().join("snap")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(snaps, vec![current.trim().to_string()], "the failed snapshots' files are gone, the first ({first}) is in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_prepared_fails_writes_until_space_returns() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.segment_bytes = 2 << 20;
    cfg.batch_bytes_max = 256 << 10;
    cfg.request_bytes_max = 256 << 10;
    let store = Store::open(cfg).unwrap();
    storage::failpoint::set("wal::prepare", "enospc");
    // Fill the first segment: the rollover then finds no prepared segment.
    let value = bytes::Bytes::from(vec![1u8; 100 << 10]);
    let mut acked = Vec::new();
    let mut failed = None;
    for i in 0..40 {
        match store.put(format!("k{i}"), value.clone()).await {
            Ok(_) => acked.push(i),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    assert_eq!(failed, Some(StoreError::NoSpace), "writes fail with a clear error when the disk is full");
    assert!(store.get(format!("k{}", acked[0])).await.unwrap().is_some(), "reads keep working");
    storage::failpoint::clear("wal::prepare");
    within("writes to succeed again once space returns", async {
        while store.put("again", value.clone()).await.is_err() {}
    })
    .await;
    drop(store);
    let store = open(dir.path(), 1);
    for i in acked {
        assert!(store.get(format!("k{i}")).await.unwrap().is_some(), "acknowledged k{i} lost");
    }
    assert!(store.get("again").await.unwrap().is_some());
}
