//! Watch guarantees, across shards: every change exactly once, in revision order, no gap;
//! a range at R plus a watch from R+1 sees every change once; slow watchers are cut off
//! without slowing anyone else and resume without a gap.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use common::*;
use storage::*;

fn watch_prefix(store: &Store, prefix: &str, start: Option<u64>) -> Watcher {
    store.watch(WatchRequest { range: KeyRange::Prefix(b(prefix)), start_revision: start, prev_kv: false })
}

/// Reads events until one at `until` or later has been seen, checking order as it goes.
async fn collect_until(w: &mut Watcher, until: u64, out: &mut Vec<Event>) {
    while out.last().is_none_or(|e| e.kv.mod_revision < until) {
        let batch = within(&format!("watch delivering revision {until}"), w.next())
            .await
            .expect("watch ended early")
            .expect("watch error");
        for e in batch {
            if let Some(last) = out.last() {
                assert!(
                    e.kv.mod_revision >= last.kv.mod_revision,
                    "watch went back in time: {} after {}",
                    e.kv.mod_revision,
                    last.kv.mod_revision
                );
            }
            out.push(e);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_writes_from_every_shard_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    let mut from_start = watch_prefix(&store, "/w/", Some(1));
    let mut from_now = watch_prefix(&store, "/w/", None);
    let mut writers = Vec::new();
    for c in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200 {
                let key = format!("/w/{c}/{}", i % 17);
                let r = store.put(key.clone(), format!("{i}")).await.unwrap();
                acked.push((key, r.revision));
                if i % 50 == 0 {
                    // A cross-shard txn too: two keys at one revision.
                    let req = TxnRequest {
                        compare: vec![],
                        success: vec![
                            TxnOp::Put(PutRequest { key: Bytes::from(format!("/w/x{c}/a{i}")), value: b("1"), lease: 0, prev_kv: false }),
                            TxnOp::Put(PutRequest { key: Bytes::from(format!("/w/x{c}/b{i}")), value: b("1"), lease: 0, prev_kv: false }),
                        ],
                        failure: vec![],
                    };
                    let r = store.txn(req).await.unwrap();
                    acked.push((format!("/w/x{c}/a{i}"), r.revision));
                    acked.push((format!("/w/x{c}/b{i}"), r.revision));
                }
            }
            acked
        }));
    }
    let mut expected = BTreeSet::new();
    for w in writers {
        for (k, r) in within("writers finishing", w).await.unwrap() {
            expected.insert((r, k));
        }
    }
    let last = expected.iter().map(|(r, _)| *r).max().unwrap();
    for w in [&mut from_start, &mut from_now] {
        let mut events = Vec::new();
        collect_until(w, last, &mut events).await;
        let got: Vec<(u64, String)> =
            events.iter().map(|e| (e.kv.mod_revision, String::from_utf8(e.kv.key.to_vec()).unwrap())).collect();
        let got_set: BTreeSet<_> = got.iter().cloned().collect();
        assert_eq!(got.len(), got_set.len(), "an event was delivered twice");
        assert_eq!(got_set, expected, "watch events differ from acknowledged writes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_at_r_plus_a_watch_from_r_plus_one_sees_every_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    for i in 0..50 {
        store.put(format!("/s/{i}"), "0").await.unwrap();
    }
    // Writers keep going while we list and then watch.
    let mut writers = Vec::new();
    for c in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..150 {
                let k = format!("/s/{}", (c * 13 + i * 7) % 60);
                if i % 9 == 0 {
                    store.delete(DeleteRequest { range: KeyRange::Key(Bytes::from(k)), prev_kv: false }).await.unwrap();
                } else {
                    store.put(k, format!("{c}-{i}")).await.unwrap();
                }
            }
        }));
    }
    let listed = store.range(RangeRequest::prefix("/s/")).await.unwrap();
    let mut w = watch_prefix(&store, "/s/", Some(listed.revision + 1));
    for t in writers {
        within("writers finishing", t).await.unwrap();
    }
    let fin = store.range(RangeRequest::prefix("/s/")).await.unwrap();
    let mut state: BTreeMap<Bytes, Bytes> = listed.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
    let mut events = Vec::new();
    if fin.revision > listed.revision {
        collect_until(&mut w, fin.revision, &mut events).await;
    }
    for e in &events {
        assert!(e.kv.mod_revision > listed.revision, "watch repeated a change the range already had");
        match e.kind {
            EventKind::Put => state.insert(e.kv.key.clone(), e.kv.value.clone()),
            EventKind::Delete => state.remove(&e.kv.key),
        };
    }
    let expect: BTreeMap<Bytes, Bytes> = fin.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
    assert_eq!(state, expect, "list + watch does not rebuild the final state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_is_cut_off_without_blocking_writes_and_resumes_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.watch_queue_events_max = 64;
    let store = Store::open(cfg).unwrap();
    let mut slow = watch_prefix(&store, "/q/", None); // never read while writing
    let mut fast = watch_prefix(&store, "/q/", None);
    let writes = 1000;
    // The fast watcher reports how far it has read, and the writer stays within half its queue
    // of that: "fast" must not depend on how the two threads happen to be scheduled.
    let (read_tx, mut read_rx) = tokio::sync::watch::channel(0usize);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..writes {
                within("the fast watcher to keep up", read_rx.wait_for(|&n| n + 32 > i)).await.unwrap();
                last = store.put(format!("/q/{}", i % 10), format!("{i}")).await.unwrap().revision;
            }
            last
        })
    };
    // The fast watcher keeps up while the writer runs; the writer is never held up by the
    // watcher that does not read.
    let fast_reader = tokio::spawn(async move {
        let mut events = Vec::new();
        while events.len() < writes {
            let batch = within("fast watcher events", fast.next()).await.unwrap().unwrap();
            events.extend(batch);
            let _ = read_tx.send(events.len());
        }
        events
    });
    let last = within("writer finishing while one watcher does not read", writer).await.unwrap();
    let fast_events = within("fast reader", fast_reader).await.unwrap();
    assert_eq!(fast_events.len(), writes, "the fast watcher saw every write");
    assert_eq!(fast_events.last().unwrap().kv.mod_revision, last);
    // The slow one gets what fitted in its queue, then a clear end with where to resume.
    let mut slow_events = Vec::new();
    let resume = loop {
        match within("slow watcher draining", slow.next()).await {
            Some(Ok(batch)) => slow_events.extend(batch),
            Some(Err(WatchError::SlowWatcher { resume_revision, .. })) => break resume_revision,
            other => panic!("expected SlowWatcher, got {other:?}"),
        }
    };
    assert!(slow_events.len() < writes);
    if let Some(e) = slow_events.last() {
        assert_eq!(e.kv.mod_revision + 1, resume, "resume revision follows the last delivered event");
    }
    let mut resumed = watch_prefix(&store, "/q/", Some(resume));
    collect_until(&mut resumed, last, &mut slow_events).await;
    let revs: Vec<u64> = slow_events.iter().map(|e| e.kv.mod_revision).collect();
    let fast_revs: Vec<u64> = fast_events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, fast_revs, "after resuming, the slow watcher has exactly the fast one's events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_from_a_compacted_revision_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    for i in 0..10 {
        store.put(format!("/z/{i}"), "v").await.unwrap();
    }
    store.compact(5).await.unwrap();
    let mut w = watch_prefix(&store, "/z/", Some(2));
    match within("compacted error", w.next()).await {
        Some(Err(WatchError::Compacted { requested: 2, compact_revision: 5 })) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    let mut ok = watch_prefix(&store, "/z/", Some(5));
    let mut events = Vec::new();
    collect_until(&mut ok, 10, &mut events).await;
    assert_eq!(events.first().unwrap().kv.mod_revision, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_prev_kv_carries_the_previous_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2);
    store.put("/p/a", "1").await.unwrap();
    let mut w = store.watch(WatchRequest { range: KeyRange::Key(b("/p/a")), start_revision: None, prev_kv: true });
    store.put("/p/a", "2").await.unwrap();
    store.delete(DeleteRequest { range: KeyRange::Key(b("/p/a")), prev_kv: false }).await.unwrap();
    let mut events = Vec::new();
    collect_until(&mut w, 3, &mut events).await;
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b("1"));
    assert_eq!(events[1].kind, EventKind::Delete);
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b("2"));
}
