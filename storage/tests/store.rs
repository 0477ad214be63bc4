//! Behaviour of the store through its public API, on real files.

mod common;

use bytes::Bytes;
use common::*;
use storage::*;

fn put_op(k: &str, v: &str) -> TxnOp {
    TxnOp::Put(PutRequest { key: b(k), value: b(v), lease: 0, prev_kv: false })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_and_range_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    within("writes", async {
        for i in 0..100 {
            store.put(format!("/p/{i:03}"), format!("v{i}")).await.unwrap();
        }
    })
    .await;
    let r = store.range(RangeRequest::prefix("/p/")).await.unwrap();
    assert_eq!(r.count, 100);
    assert_eq!(r.kvs.len(), 100);
    assert!(r.kvs.windows(2).all(|w| w[0].key < w[1].key), "range results are sorted");
    let r = store.range(RangeRequest::prefix("/p/").limit(10)).await.unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (10, 100, true));
    assert_eq!(r.kvs[0].key, b("/p/000"));
    let kv = store.get("/p/042").await.unwrap().unwrap();
    assert_eq!(kv.value, b("v42"));
    assert_eq!(kv.version, 1);
    assert_eq!(store.revision(), 100, "one revision per put, across both shards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_on_mod_revision_succeeds_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    let rev = store.put("k", "0").await.unwrap().revision;
    let cas = |expect: u64, v: &str| TxnRequest {
        compare: vec![Compare { key: b("k"), op: CompareOp::Equal, target: CompareTarget::ModRevision(expect), range_end: None }],
        success: vec![put_op("k", v)],
        failure: vec![TxnOp::Range(RangeRequest::key("k"))],
    };
    let a = store.txn(cas(rev, "a")).await.unwrap();
    let b2 = store.txn(cas(rev, "b")).await.unwrap();
    assert!(a.succeeded);
    assert!(!b2.succeeded, "second CAS with the same expected revision must fail");
    match &b2.responses[0] {
        TxnOpResponse::Range(r) => assert_eq!(r.kvs[0].value, b("a")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_over_keys_of_both_shards_is_atomic_at_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    let keys: Vec<String> = (0..20).map(|i| format!("/t/{i}")).collect();
    let req = TxnRequest {
        compare: vec![],
        success: keys.iter().map(|k| put_op(k, "x")).collect(),
        failure: vec![],
    };
    let resp = store.txn(req).await.unwrap();
    let r = store.range(RangeRequest::prefix("/t/")).await.unwrap();
    assert_eq!(r.count, 20);
    assert!(r.kvs.iter().all(|kv| kv.mod_revision == resp.revision));
    let d = store
        .delete(DeleteRequest { range: KeyRange::Prefix(b("/t/")), prev_kv: true })
        .await
        .unwrap();
    assert_eq!(d.deleted, 20);
    assert_eq!(d.prev_kvs.len(), 20);
    assert_eq!(store.range(RangeRequest::prefix("/t/")).await.unwrap().count, 0);
    let none = store.delete(DeleteRequest { range: KeyRange::Prefix(b("/t/")), prev_kv: false }).await.unwrap();
    assert_eq!(none.deleted, 0);
    assert_eq!(store.revision(), d.revision, "a delete that finds nothing takes no revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_txns_and_range_compares_as_etcd_decides_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    for k in ["/r/a", "/r/b", "/r/c"] {
        store.put(k, "x").await.unwrap();
    }
    let ranged = |end: &str, target: CompareTarget| Compare { key: b("/r/"), op: CompareOp::Equal, target, range_end: Some(b(end)) };
    let nested = |compare: Vec<Compare>, then: &str, other: &str| TxnOp::Txn(Box::new(TxnRequest { compare, success: vec![put_op(then, "1")], failure: vec![put_op(other, "1")] }));
    // Every key of /r/ is "x": the outer txn succeeds; the nested one's compare (a key of the
    // range with version 2) fails, even though the outer branch writes /r/a first: compares
    // are decided before any op runs.
    let t = TxnRequest {
        compare: vec![ranged("/r0", CompareTarget::Value(b("x")))],
        success: vec![put_op("/r/a", "y"), nested(vec![Compare::key(b("/r/a"), CompareOp::Equal, CompareTarget::Version(2))], "/then", "/else"), TxnOp::Range(RangeRequest::key("/r/a"))],
        failure: vec![],
    };
    let r = store.txn(t).await.unwrap();
    assert!(r.succeeded);
    match &r.responses[1] {
        TxnOpResponse::Txn(n) => {
            assert!(!n.succeeded, "decided on /r/a's version before the outer put");
            assert_eq!((n.revision, n.responses.len()), (r.revision, 1));
        }
        other => panic!("a nested txn's answer, not {other:?}"),
    }
    assert!(store.get("/else").await.unwrap().is_some() && store.get("/then").await.unwrap().is_none());
    assert_eq!(store.revision(), 4, "the txn's writes share one revision");
    // Now /r/a is "y": a value compare over the range fails; over an empty range it fails
    // too (a missing key has no value), while a version compare over it holds (version 0).
    let check = |c: Compare| TxnRequest { compare: vec![c], success: vec![], failure: vec![] };
    assert!(!store.txn(check(ranged("/r0", CompareTarget::Value(b("x"))))).await.unwrap().succeeded);
    let b_and_c = Compare { key: b("/r/b"), op: CompareOp::Equal, target: CompareTarget::Value(b("x")), range_end: Some(b("/r0")) };
    assert!(store.txn(check(b_and_c)).await.unwrap().succeeded, "[/r/b, /r0): b and c are still x");
    let empty = Compare { key: b("/s/"), op: CompareOp::Equal, target: CompareTarget::Value(b("x")), range_end: Some(b("/s0")) };
    assert!(!store.txn(check(empty)).await.unwrap().succeeded);
    let empty_version = Compare { key: b("/s/"), op: CompareOp::Equal, target: CompareTarget::Version(0), range_end: Some(b("/s0")) };
    assert!(store.txn(check(empty_version)).await.unwrap().succeeded);
    let to_end = Compare { key: b("/r/b"), op: CompareOp::Greater, target: CompareTarget::CreateRevision(0), range_end: Some(Bytes::new()) };
    assert!(store.txn(check(to_end)).await.unwrap().succeeded, "every key from /r/b on exists");
    // etcd's duplicate rule: a nested txn's two branches may put the same key, the outer
    // branch and a nested branch may not.
    let both = TxnRequest { compare: vec![], success: vec![nested(vec![], "/d", "/d")], failure: vec![] };
    assert!(store.txn(both).await.is_ok());
    let clash = TxnRequest { compare: vec![], success: vec![put_op("/d", "2"), nested(vec![], "/d", "/e")], failure: vec![] };
    assert!(matches!(store.txn(clash).await, Err(StoreError::Invalid(m)) if m.contains("duplicate key")));
    // The log carries them: everything is there after a reopen.
    drop(store);
    let store = open(dir.path(), 2);
    assert_eq!(store.get("/r/a").await.unwrap().unwrap().value, b("y"));
    assert_eq!(store.get("/d").await.unwrap().unwrap().value, b("1"));
}

/// etcd's lease compare: a key's lease (0 for none, and for a key that is not there), over one
/// key or a range, at any depth of a txn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_compares_as_etcd_decides_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    store.lease_grant(77, 60).await.unwrap();
    for k in ["/l/a", "/l/b"] {
        store.txn(TxnRequest { compare: vec![], success: vec![TxnOp::Put(PutRequest { key: b(k), value: b("v"), lease: 77, prev_kv: false })], failure: vec![] }).await.unwrap();
    }
    store.put("/l/c", "v").await.unwrap();
    let check = |c: Compare| TxnRequest { compare: vec![c], success: vec![], failure: vec![] };
    let lease = |key: &str, op: CompareOp, l: i64, end: Option<&str>| Compare { key: b(key), op, target: CompareTarget::Lease(l), range_end: end.map(b) };
    assert!(store.txn(check(lease("/l/a", CompareOp::Equal, 77, None))).await.unwrap().succeeded);
    assert!(!store.txn(check(lease("/l/a", CompareOp::Equal, 78, None))).await.unwrap().succeeded);
    assert!(store.txn(check(lease("/l/c", CompareOp::Equal, 0, None))).await.unwrap().succeeded, "no lease: 0");
    assert!(store.txn(check(lease("/l/none", CompareOp::Equal, 0, None))).await.unwrap().succeeded, "no key: 0");
    assert!(store.txn(check(lease("/l/a", CompareOp::Equal, 77, Some("/l/c")))).await.unwrap().succeeded, "a and b hold lease 77");
    assert!(!store.txn(check(lease("/l/a", CompareOp::Equal, 77, Some("/l0")))).await.unwrap().succeeded, "c holds none");
    assert!(store.txn(check(lease("/l/", CompareOp::Less, 78, Some("/l0")))).await.unwrap().succeeded);
    // Nested, and through the log: the same after a reopen.
    let nested = TxnRequest {
        compare: vec![],
        success: vec![TxnOp::Txn(Box::new(TxnRequest { compare: vec![lease("/l/b", CompareOp::Greater, 0, None)], success: vec![put_op("/then", "1")], failure: vec![put_op("/else", "1")] }))],
        failure: vec![],
    };
    store.txn(nested).await.unwrap();
    drop(store);
    let store = open(dir.path(), 2);
    assert!(store.get("/then").await.unwrap().is_some() && store.get("/else").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_size_limit_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    let big = Bytes::from(vec![7u8; (1 << 20) + 1]);
    let err = store.put("big", big).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
    assert!(store.get("big").await.unwrap().is_none());
    assert_eq!(store.revision(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_old_revisions_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    let r1 = store.put("a", "1").await.unwrap().revision;
    let r2 = store.put("a", "2").await.unwrap().revision;
    store.put("a", "3").await.unwrap();
    let old = store.range(RangeRequest::key("a").at(r1)).await.unwrap();
    assert_eq!(old.kvs[0].value, b("1"));
    store.compact(r2).await.unwrap();
    let err = store.range(RangeRequest::key("a").at(r1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    assert_eq!(store.range(RangeRequest::key("a").at(r2)).await.unwrap().kvs[0].value, b("2"));
    let future = store.range(RangeRequest::key("a").at(1000)).await.unwrap_err();
    assert!(matches!(future, StoreError::FutureRevision { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopen_with_and_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let last;
    {
        let store = open(dir.path(), 2);
        for i in 0..50 {
            store.put(format!("k{i}"), format!("a{i}")).await.unwrap();
        }
        store.snapshot().await.unwrap();
        for i in 25..75 {
            store.put(format!("k{i}"), format!("b{i}")).await.unwrap();
        }
        store.delete(DeleteRequest { range: KeyRange::Key(b("k0")), prev_kv: false }).await.unwrap();
        last = store.revision();
    }
    let store = open(dir.path(), 2);
    assert_eq!(store.revision(), last, "revision does not go backwards across a restart");
    let r = store.range(RangeRequest::prefix("k")).await.unwrap();
    assert_eq!(r.count, 74);
    assert_eq!(store.get("k30").await.unwrap().unwrap().value, b("b30"));
    assert_eq!(store.get("k30").await.unwrap().unwrap().version, 2);
    assert_eq!(store.get("k10").await.unwrap().unwrap().value, b("a10"));
    assert!(store.get("k0").await.unwrap().is_none());
    let next = store.put("k1", "c").await.unwrap().revision;
    assert_eq!(next, last + 1);
}

/// Shards go on taking writes while a snapshot is written (they stop only to copy their
/// index): every write acknowledged meanwhile, before or after the snapshot's revision, is
/// there after a reopen, from the snapshot or from the log after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acknowledged_while_a_snapshot_is_written_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = config(dir.path(), 2);
        c.snapshot_chunk_bytes = 16 << 10;
        c
    };
    let mut acked = std::collections::BTreeMap::new();
    let snapshots;
    {
        let store = std::sync::Arc::new(Store::open(cfg()).unwrap());
        for i in 0..400 {
            store.put(format!("pre{i}"), format!("{i:0>300}")).await.unwrap();
        }
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..300 {
                        let key = format!("w{w}/{i}");
                        let rev = store.put(key.clone(), format!("{w}-{i}")).await.unwrap().revision;
                        mine.push((key, rev));
                    }
                    mine
                })
            })
            .collect();
        let mut taken = Vec::new();
        for _ in 0..5 {
            taken.push(store.snapshot().await.unwrap());
        }
        for w in writers {
            acked.extend(w.await.unwrap());
        }
        snapshots = taken;
    }
    let last = *acked.values().max().unwrap();
    assert!(snapshots.windows(2).all(|w| w[0] <= w[1]), "snapshot revisions {snapshots:?} go forward");
    let store = Store::open(cfg()).unwrap();
    assert!(store.revision() >= last);
    for (key, rev) in &acked {
        let kv = store.get(key.clone()).await.unwrap().unwrap_or_else(|| panic!("{key}, acknowledged at {rev}, is gone"));
        assert_eq!(kv.mod_revision, *rev, "{key}");
    }
    assert_eq!(store.range(RangeRequest::prefix("pre")).await.unwrap().count, 400);
}

/// A snapshot larger than a chunk is written as several chunk files per shard (each bounding
/// the builder's memory) and read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_many_chunks_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = config(dir.path(), 2);
        c.snapshot_chunk_bytes = 16 << 10;
        c
    };
    let value = |i: usize| format!("{i:0>200}");
    let last;
    {
        let store = Store::open(cfg()).unwrap();
        for i in 0..600 {
            store.put(format!("k{i}"), value(i)).await.unwrap();
        }
        store.snapshot().await.unwrap();
        last = store.revision();
    }
    let mut chunk_files = 0;
    for snap in std::fs::read_dir(dir.path().join("snap")).unwrap() {
        let snap = snap.unwrap().path();
        if snap.is_dir() {
            chunk_files += std::fs::read_dir(&snap).unwrap().filter(|f| f.as_ref().unwrap().file_name().to_string_lossy().ends_with(".fb")).count();
        }
    }
    assert!(chunk_files >= 6, "{chunk_files} chunk files for ~130 KB in chunks of 16 KiB over 2 shards");
    let store = Store::open(cfg()).unwrap();
    assert_eq!(store.revision(), last);
    let r = store.range(RangeRequest::prefix("k")).await.unwrap();
    assert_eq!(r.count, 600);
    for i in [0, 1, 299, 599] {
        assert_eq!(store.get(format!("k{i}")).await.unwrap().unwrap().value, value(i).into_bytes());
    }
}

/// The store's maintenance runs every half second; with every revision compacted at each run
/// (`compact_retention_revisions = 0`), a compaction that reaches a revision written now
/// shows that one run began after it. Two such show that a whole run (its compaction, then
/// its snapshot decision) came after the write.
async fn two_maintenance_runs(store: &Store, what: &str) {
    for round in 0..2 {
        let rev = store.put("/tick", format!("{round}")).await.unwrap().revision;
        within(what, async {
            while store.stats().await.compact_revision < rev {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await; // polling interval
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_snapshots_wait_for_twice_the_last_snapshots_size_of_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.fsync = false;
    cfg.snapshot_wal_bytes = 64 << 10;
    cfg.snapshot_log_ratio = 2;
    cfg.compact_retention_revisions = Some(0);
    let store = Store::open(cfg).unwrap();
    let value = |i: usize, round: usize| format!("{round}:{i:0>1000}");
    for i in 0..512 {
        store.put(format!("/k/{i}"), value(i, 0)).await.unwrap();
    }
    let first = store.snapshot().await.unwrap();
    let name = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
    let snap_bytes: u64 = std::fs::read_dir(dir.path().join("snap").join(name.trim())).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum();
    assert!(snap_bytes > 512 << 10, "the snapshot holds the 512 KiB of values: {snap_bytes} bytes");
    // Over the floor, under twice the snapshot: no snapshot.
    let mut round = 1;
    while store.stats().await.wal_bytes_since_snapshot < snap_bytes {
        for i in 0..64 {
            store.put(format!("/k/{i}"), value(i, round)).await.unwrap();
        }
        round += 1;
    }
    two_maintenance_runs(&store, "maintenance after a log of one snapshot's size").await;
    let st = store.stats().await;
    assert!(st.wal_bytes_since_snapshot >= 64 << 10, "the log is over the floor");
    assert_eq!(st.snapshot_revision, first, "a log of {} bytes, under twice the snapshot's {snap_bytes}, took a snapshot", st.wal_bytes_since_snapshot);
    // Past twice the snapshot: one is taken.
    while store.stats().await.wal_bytes_since_snapshot < 2 * snap_bytes + (64 << 10) {
        for i in 0..64 {
            store.put(format!("/k/{i}"), value(i, round)).await.unwrap();
        }
        round += 1;
    }
    two_maintenance_runs(&store, "maintenance after a log of twice the snapshot's size").await;
    let st = store.stats().await;
    assert!(st.snapshot_revision > first, "no snapshot after {} bytes of log against a snapshot of {snap_bytes}", st.wal_bytes_since_snapshot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_with_another_shard_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 2);
        store.put("a", "1").await.unwrap();
    }
    let err = Store::open(config(dir.path(), 1)).err().expect("must refuse");
    assert!(matches!(err, OpenError::ShardCountMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_revoke_deletes_attached_keys_on_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    let lease = store.lease_grant(0, 60).await.unwrap();
    for i in 0..10 {
        store
            .put_with(PutRequest { key: b(&format!("/l/{i}")), value: b("v"), lease: lease.id, prev_kv: false })
            .await
            .unwrap();
    }
    let err = store.put_with(PutRequest { key: b("x"), value: b("v"), lease: 12345, prev_kv: false }).await.unwrap_err();
    assert_eq!(err, StoreError::LeaseNotFound(12345));
    let mut w = store.watch(WatchRequest { range: KeyRange::Prefix(b("/l/")), start_revision: None, prev_kv: false });
    store.lease_revoke(lease.id).await.unwrap();
    assert_eq!(store.range(RangeRequest::prefix("/l/")).await.unwrap().count, 0);
    let mut seen = 0;
    while seen < 10 {
        let batch = within("delete events of the revoked lease", w.next()).await.unwrap().unwrap();
        assert!(batch.iter().all(|e| e.kind == EventKind::Delete));
        seen += batch.len();
    }
    assert!(store.lease_keep_alive(lease.id).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    let lease = store.lease_grant(0, 1).await.unwrap();
    store.put_with(PutRequest { key: b("eph"), value: b("v"), lease: lease.id, prev_kv: false }).await.unwrap();
    let mut w = store.watch(WatchRequest { range: KeyRange::Key(b("eph")), start_revision: None, prev_kv: true });
    let batch = within("expiry of a 1 s lease", w.next()).await.unwrap().unwrap();
    assert_eq!(batch[0].kind, EventKind::Delete);
    assert_eq!(batch[0].prev_kv.as_ref().unwrap().lease, lease.id);
    assert!(store.get("eph").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let store = open(dir.path(), 2);
        id = store.lease_grant(0, 600).await.unwrap().id;
        store.put_with(PutRequest { key: b("e"), value: b("v"), lease: id, prev_kv: false }).await.unwrap();
    }
    let store = open(dir.path(), 2);
    assert_eq!(store.lease_time_to_live(id).await.unwrap().0, 600);
    store.lease_revoke(id).await.unwrap();
    assert!(store.get("e").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    let err = Store::open(config(dir.path(), 2)).err().expect("second open must fail");
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    drop(store);
    open(dir.path(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_keeps_the_configured_number_of_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.compact_retention_revisions = Some(10);
    let store = Store::open(cfg).unwrap();
    for i in 0..100 {
        store.put(format!("k{}", i % 5), format!("{i}")).await.unwrap();
    }
    // The coordinator compacts on its maintenance tick; wait for it to have happened.
    within("automatic compaction to revision 90", async {
        while store.compact_revision() < 90 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let err = store.range(RangeRequest::key("k0").at(50)).await.unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    assert_eq!(store.range(RangeRequest::key("k0").at(90)).await.unwrap().count, 1);
    let s = store.stats().await;
    assert!(s.retained_revisions <= 15, "history is bounded: {} revisions retained", s.retained_revisions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_by_age_drops_old_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.compact_retention_age = Some(std::time::Duration::from_millis(600));
    let store = Store::open(cfg).unwrap();
    let first = store.put("k", "1").await.unwrap().revision;
    store.put("k", "2").await.unwrap();
    within("automatic compaction by age past the first revision", async {
        while store.compact_revision() <= first {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(matches!(store.range(RangeRequest::key("k").at(first)).await, Err(StoreError::Compacted { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_by_bytes_bounds_the_history() {
    // 200 overwrites of 1 KiB on two shards: 200 KiB of history against a bound of 64 KiB.
    // No bound on age or revisions: only the bytes make it compact.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.compact_history_bytes_max = Some(64 << 10);
    let store = Store::open(cfg).unwrap();
    let value = "v".repeat(1024);
    let first = store.put("a", value.clone()).await.unwrap().revision;
    for i in 0..200 {
        store.put(if i % 2 == 0 { "a" } else { "b" }, value.clone()).await.unwrap();
    }
    within("automatic compaction by bytes", async {
        while store.stats().await.history_value_bytes > 64 << 10 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(store.compact_revision() > first);
    assert!(matches!(store.range(RangeRequest::key("a").at(first)).await, Err(StoreError::Compacted { .. })));
    // The live values are whole.
    assert_eq!(store.get("a").await.unwrap().unwrap().value.len(), 1024);
}
