//! Properties of the cache against the store's own history: every watcher receives exactly the
//! events of its keys, in order, with no gap and no duplicate; list at R plus watch from R
//! equals the history; a slow watcher is cut off without blocking the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use storage::{Config as StoreConfig, DeleteRequest, KeyRange, KeyValue, Store};
use watchcache::{Cache, Config, Decode, EventType, Filter, Meta, Object};

const WATCHDOG: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WATCHDOG, f).await.unwrap_or_else(|_| panic!("watchdog: {what}"))
}

/// Keys are /o/<ns>/<name>; the "object" is its value, tagged with namespace and a node.
fn decode() -> Decode {
    Arc::new(|kv: &KeyValue| {
        let k = std::str::from_utf8(&kv.key).ok()?;
        let mut parts = k.trim_start_matches("/o/").split('/');
        let ns = parts.next()?.to_string();
        let name = parts.next()?.to_string();
        let v = std::str::from_utf8(&kv.value).ok()?;
        let node = v.split(';').next().map(String::from);
        // As the API server keeps objects: the revision's digits written in where they go.
        let body = format!("{{\"v\":\"{v}\",\"rv\":}}");
        let at = body.len() - 1;
        let meta = Meta { namespace: Some(watchcache::intern(&ns)), name: name.into(), labels: Default::default(), node_name: node.as_deref().map(watchcache::intern) };
        Some(Object::with_revision_at(kv.key.clone(), kv.mod_revision, Bytes::from(body), at, meta))
    })
}

fn store(dir: &std::path::Path) -> Store {
    store_with(dir, |_| {})
}

/// A small, fast test store (2 shards, fsync off), adjusted by `tune`.
fn store_with(dir: &std::path::Path, tune: impl FnOnce(&mut StoreConfig)) -> Store {
    let mut cfg = StoreConfig::new(dir);
    cfg.shards = 2;
    cfg.fsync = false;
    cfg.pin_threads = false;
    cfg.segment_bytes = 8 << 20;
    cfg.batch_bytes_max = 1 << 20;
    cfg.request_bytes_max = 1 << 20;
    tune(&mut cfg);
    Store::open(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watcher_sees_exactly_its_events_in_order_and_list_plus_watch_is_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let seed: u64 = std::env::var("CAPSTAN_CACHE_SEED").ok().and_then(|x| x.parse().ok()).unwrap_or(7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..20 {
        s.put(format!("/o/ns{}/pre{i}", i % 3), format!("n{};0", i % 4)).await.unwrap();
    }
    let cache = within("cache start", Cache::start(s.clone(), Bytes::from_static(b"/o/"), decode(), Config::default())).await.unwrap();
    let (list_rev, snapshot) = cache.snapshot();
    // Watchers: all, by namespace, by node, from now and from the list revision.
    let mut watchers = vec![
        ("all", Filter::everything(), cache.watch(Some(list_rev), Filter::everything()).unwrap()),
    ];
    let ns1 = Filter::new(Some("ns1".into()), None, None, Arc::new(|_| true));
    watchers.push(("ns1", ns1.clone(), cache.watch(Some(list_rev), ns1).unwrap()));
    let n2 = Filter::new(None, Some("n2".into()), None, Arc::new(|_| true));
    watchers.push(("n2", n2.clone(), cache.watch(Some(list_rev), n2).unwrap()));
    // Random writes.
    let mut last = 0;
    for i in 0..400 {
        let key = format!("/o/ns{}/k{}", rng.random_range(0..3), rng.random_range(0..25));
        if rng.random_bool(0.2) {
            if let Ok(r) = s.delete(DeleteRequest { range: KeyRange::Key(Bytes::from(key)), prev_kv: false }).await {
                last = last.max(r.revision);
            }
        } else {
            last = s.put(key, format!("n{};{i}", rng.random_range(0..4))).await.unwrap().revision;
        }
    }
    let last = last.max(s.revision());
    within("cache catching up", cache.wait_consistent(WATCHDOG)).await.unwrap();
    // The store's history since the list, per key, is the reference.
    let history = s.watch(storage::WatchRequest { range: KeyRange::Prefix(Bytes::from_static(b"/o/")), start_revision: Some(list_rev + 1), prev_kv: true });
    let mut reference = Vec::new();
    let mut h = history;
    while reference.last().is_none_or(|e: &storage::Event| e.kv.mod_revision < last) {
        let batch = within("store history", h.next()).await.unwrap().unwrap();
        reference.extend(batch);
    }
    for (name, filter, mut w) in watchers {
        let want: Vec<(u64, String)> = reference
            .iter()
            .filter(|e| {
                let o = decode()(&if e.kind == storage::EventKind::Delete { let mut p = e.prev_kv.clone().unwrap(); p.mod_revision = e.kv.mod_revision; p } else { e.kv.clone() });
                let p = e.prev_kv.as_ref().and_then(|p| decode()(p));
                o.is_some_and(|o| filter.matches(&o)) || p.is_some_and(|p| filter.matches(&p))
            })
            .map(|e| (e.kv.mod_revision, String::from_utf8(e.kv.key.to_vec()).unwrap()))
            .collect();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let e = within(&format!("watcher {name} receiving event {}", got.len()), w.next()).await.unwrap().unwrap();
            got.push((e.revision, String::from_utf8(e.object.key.to_vec()).unwrap()));
        }
        assert_eq!(got, want, "watcher {name} (seed {seed})");
    }
    // List at R + the history after R rebuilds the final state.
    let mut state: BTreeMap<Bytes, u64> = snapshot.iter().map(|(k, o)| (k.clone(), o.revision)).collect();
    for e in &reference {
        match e.kind {
            storage::EventKind::Put => state.insert(e.kv.key.clone(), e.kv.mod_revision),
            storage::EventKind::Delete => state.remove(&e.kv.key),
        };
    }
    let (_, fin) = cache.snapshot();
    let fin: BTreeMap<Bytes, u64> = fin.iter().map(|(k, o)| (k.clone(), o.revision)).collect();
    assert_eq!(state, fin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_encoded_once_whatever_the_number_of_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let cache = Cache::start(s.clone(), Bytes::from_static(b"/o/"), decode(), Config::default()).await.unwrap();
    let mut ws: Vec<_> = (0..50).map(|_| cache.watch(None, Filter::everything()).unwrap()).collect();
    // This cache's own counter: other tests' caches in this process encode too.
    let before = cache.cache_metrics().encodings.load(std::sync::atomic::Ordering::SeqCst);
    s.put("/o/ns/a", "n1;1").await.unwrap();
    let mut lines = Vec::new();
    for w in ws.iter_mut() {
        let e = within("event", w.next()).await.unwrap().unwrap();
        assert_eq!(e.kind, EventType::Added);
        lines.push(e.json_line());
    }
    let after = cache.cache_metrics().encodings.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after - before, 1, "one encoding for 50 watchers");
    assert!(lines.windows(2).all(|w| w[0].as_ptr() == w[1].as_ptr()), "every watcher got the same buffer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_closed_with_where_to_resume_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let cfg = Config { watcher_queue_events_max: 16, ..Config::default() };
    let cache = Cache::start(s.clone(), Bytes::from_static(b"/o/"), decode(), cfg).await.unwrap();
    let mut slow = cache.watch(None, Filter::everything()).unwrap();
    let mut fast = cache.watch(None, Filter::everything()).unwrap();
    // The writer waits for the fast watcher after each write (so it never has more than one
    // event queued); the slow one never reads while the writes go on.
    for i in 0..200 {
        let rev = s.put(format!("/o/ns/k{}", i % 7), format!("n1;{i}")).await.unwrap().revision;
        let e = within("fast watcher keeping up", fast.next()).await.unwrap().unwrap();
        assert_eq!(e.revision, rev);
    }
    let mut got = 0;
    let resume = loop {
        match within("slow watcher", slow.next()).await {
            Some(Ok(_)) => got += 1,
            Some(Err(watchcache::WatchError::Slow { resume, .. })) => break resume,
            other => panic!("expected Slow, got {other:?}"),
        }
    };
    assert_eq!(got, 16, "the slow watcher got what fitted in its queue");
    // Resuming from the ring: the rest, without a gap.
    let mut again = cache.watch(Some(resume - 1), Filter::everything()).unwrap();
    let first = within("resumed watcher", again.next()).await.unwrap().unwrap();
    assert_eq!(first.revision, resume);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_shared_by_many_watchers_is_evaluated_once_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let cache = Cache::start(s.clone(), Bytes::from_static(b"/o/"), decode(), Config::default()).await.unwrap();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let key: Arc<str> = Arc::from("app=web");
    let mut ws = Vec::new();
    for _ in 0..40 {
        let c = calls.clone();
        let f = Filter::new(None, None, Some(key.clone()), Arc::new(move |_| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            true
        }));
        ws.push(cache.watch(None, f).unwrap());
    }
    s.put("/o/ns/a", "n1;1").await.unwrap();
    for w in ws.iter_mut() {
        within("event", w.next()).await.unwrap().unwrap();
    }
    // A create has no previous object: one evaluation for 40 watchers.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_with_random_predicates_that_disconnect_and_resume_see_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let seed: u64 = std::env::var("CAPSTAN_CACHE_SEED").ok().and_then(|x| x.parse().ok()).unwrap_or(11);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cache = Cache::start(s.clone(), Bytes::from_static(b"/o/"), decode(), Config::default()).await.unwrap();
    let start = cache.revision();
    // Predicates on the written value's last digit (a stand-in for label selectors).
    let pred = |d: u32| -> Arc<dyn Fn(&Object) -> bool + Send + Sync> {
        Arc::new(move |o: &Object| std::str::from_utf8(&o.json()).ok().and_then(|j| j.split(';').nth(1)).and_then(|v| v.chars().next()).and_then(|c| c.to_digit(10)).is_some_and(|x| x % 3 == d))
    };
    let mut expected_writes = Vec::new();
    for i in 0..300 {
        let key = format!("/o/ns{}/k{}", rng.random_range(0..2), rng.random_range(0..15));
        let rev = s.put(key.clone(), format!("n{};{}", rng.random_range(0..3), rng.random_range(0..1000))).await.unwrap().revision;
        expected_writes.push((rev, key, i));
    }
    within("cache catching up", cache.wait_consistent(WATCHDOG)).await.unwrap();
    let history = {
        let mut h = s.watch(storage::WatchRequest { range: KeyRange::Prefix(Bytes::from_static(b"/o/")), start_revision: Some(start + 1), prev_kv: true });
        let mut all = Vec::new();
        let last = expected_writes.last().unwrap().0;
        while all.last().is_none_or(|e: &storage::Event| e.kv.mod_revision < last) {
            all.extend(within("store history", h.next()).await.unwrap().unwrap());
        }
        all
    };
    for d in 0..3u32 {
        let filter = Filter::new(None, None, Some(Arc::from(format!("d{d}"))), pred(d));
        let want: Vec<u64> = history
            .iter()
            .filter(|e| decode()(&e.kv).is_some_and(|o| filter.matches(&o)) || e.prev_kv.as_ref().and_then(|p| decode()(p)).is_some_and(|p| filter.matches(&p)))
            .map(|e| e.kv.mod_revision)
            .collect();
        // Read in pieces, dropping the watcher and resuming from the last revision seen.
        let mut got = Vec::new();
        let mut from = start;
        while got.len() < want.len() {
            let mut w = cache.watch(Some(from), filter.clone()).unwrap();
            let take = rng.random_range(1..20).min(want.len() - got.len());
            for _ in 0..take {
                let e = within("resumed watcher", w.next()).await.unwrap().unwrap();
                got.push(e.revision);
            }
            from = w.last_revision();
        }
        assert_eq!(got, want, "predicate {d} (seed {seed})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_that_falls_behind_its_store_watch_resumes_without_losing_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with(dir.path(), |cfg| {
        cfg.shards = 1;
        cfg.watch_queue_events_max = 4; // the cache's own store watch overflows at once
    });
    let cache = Cache::start(s.clone(), Bytes::from_static(b"/o/"), decode(), Config::default()).await.unwrap();
    let mut w = cache.watch(None, Filter::everything()).unwrap();
    // One txn of 50 puts: 50 events at one revision, far more than the store watch's queue.
    let req = storage::TxnRequest {
        compare: vec![],
        success: (0..50)
            .map(|i| storage::TxnOp::Put(storage::PutRequest { key: Bytes::from(format!("/o/ns/k{i:02}")), value: Bytes::from(format!("n1;{i}")), lease: 0, prev_kv: false }))
            .collect(),
        failure: vec![],
    };
    s.txn(req).await.unwrap();
    within("cache catching up after resuming", cache.wait_consistent(WATCHDOG)).await.unwrap();
    let (_, snap) = cache.snapshot();
    assert_eq!(snap.len(), 50, "every object of the overflowing txn is in the cache");
    let mut n = 0;
    while n < 50 {
        within("the cache's watcher", w.next()).await.unwrap().unwrap();
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_prefix_serves_watches_from_before_writes_elsewhere() {
    // A client lists at R, other resources are written meanwhile (the store's revision moves,
    // this prefix gets nothing), then it watches from R: the cache serves that watch — nothing
    // of its prefix happened after R — instead of refusing it as too old.
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let listed = s.put("/o/ns/a", "n1;0").await.unwrap().revision;
    let cache = Cache::start(s.clone(), Bytes::from_static(b"/o/"), decode(), Config::default()).await.unwrap();
    for i in 0..5 {
        s.put(format!("/other/{i}"), "x").await.unwrap();
    }
    within("cache catching up", cache.wait_consistent(WATCHDOG)).await.unwrap();
    assert!(cache.revision() > listed, "the cache saw the store move on");
    let mut w = cache.watch(Some(listed), Filter::everything()).expect("a watch from before writes to other prefixes");
    let rev = s.put("/o/ns/b", "n1;1").await.unwrap().revision;
    let e = within("the next event of the prefix", w.next()).await.unwrap().unwrap();
    assert_eq!((e.kind, e.object.revision), (EventType::Added, rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_is_bounded_by_bytes_and_older_watches_are_too_old() {
    // Each object is ~1 KiB; a ring of 8 KiB of objects keeps about 8 of them: a watch from
    // the start is refused (410 for the client), one from the last few revisions is served.
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let first = s.put("/o/ns/a", "n1;0").await.unwrap().revision;
    let cfg = Config { ring_bytes_max: 8 << 10, ..Config::default() };
    let cache = Cache::start(s.clone(), Bytes::from_static(b"/o/"), decode(), cfg).await.unwrap();
    let pad = "x".repeat(1000);
    let mut last = first;
    for i in 0..64 {
        last = s.put(format!("/o/ns/k{i}"), format!("n1;{pad}")).await.unwrap().revision;
    }
    within("cache catching up", cache.wait_consistent(WATCHDOG)).await.unwrap();
    match cache.watch(Some(first), Filter::everything()) {
        Err(watchcache::WatchError::TooOld { oldest, .. }) => assert!(oldest > first + 48, "the ring kept too much: oldest {oldest}"),
        Ok(_) => panic!("a watch from revision {first} was served from a ring bounded to 8 KiB"),
        Err(e) => panic!("{e}"),
    }
    let mut w = cache.watch(Some(last - 3), Filter::everything()).expect("a watch from the last revisions");
    let e = within("a recent event", w.next()).await.unwrap().unwrap();
    assert_eq!(e.object.revision, last - 2);
}

/// Only the newest `ring_lines_max` events keep their shared line (a copy of the object); a
/// watcher replaying older events still gets each one's exact line, encoded for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_events_keep_their_watch_lines() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let first = s.put("/o/ns/a", "n1;0").await.unwrap().revision;
    let cfg = Config { ring_lines_max: 4, ..Config::default() };
    let cache = Cache::start(s.clone(), Bytes::from_static(b"/o/"), decode(), cfg).await.unwrap();
    let mut live = cache.watch(None, Filter::everything()).unwrap();
    let pad = "x".repeat(1000);
    let mut last = first;
    for i in 0..40 {
        last = s.put(format!("/o/ns/k{i}"), format!("n1;{pad}")).await.unwrap().revision;
        // A watcher that keeps up makes each line as its event arrives.
        let e = within("a live event", live.next()).await.unwrap().unwrap();
        assert_eq!(e.json_line(), watchcache::encode_line("ADDED", &e.object.json()));
    }
    within("cache catching up", cache.wait_consistent(WATCHDOG)).await.unwrap();
    let kept = cache.cache_metrics().line_bytes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(kept > 0 && kept < 5 * 1100, "{kept} bytes of lines kept for a window of 4 events of ~1 KiB");
    // A watcher from the start gets every event, old ones encoded for it alone.
    let mut w = cache.watch(Some(first), Filter::everything()).unwrap();
    for rev in first + 1..=last {
        let e = within("a replayed event", w.next()).await.unwrap().unwrap();
        assert_eq!(e.object.revision, rev);
        let line = e.json_line();
        assert_eq!(line, watchcache::encode_line("ADDED", &e.object.json()));
    }
    let after = cache.cache_metrics().line_bytes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after < 5 * 1100, "replaying old events kept their lines: {after} bytes");
}
