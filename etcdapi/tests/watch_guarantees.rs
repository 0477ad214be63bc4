//! The guarantees etcd documents for watches, checked over random histories through the gRPC
//! API (a store and the endpoint in this process, plain on loopback): ordered (revisions never
//! go back), unique (no event twice), reliable (no event missing: exactly the history's
//! events), atomic (every event of one revision in one response), resumable (a watch
//! cancelled and reopened after its last revision continues without a gap), bookmarkable (a
//! progress response's revision covers everything received) — and prev_kv right throughout.

use std::collections::BTreeMap;

mod support;

use etcdapi::pb::{self, kv_client::KvClient, watch_client::WatchClient};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// One event as a watcher sees it: (revision, key, value or None for a delete, previous value).
type Ev = (i64, String, Option<String>, Option<String>);

use support::{channel, server, server_with};

/// The history: random puts, deletes and multi-key txns over a few keys, written one after
/// another; returns every event it made, in order.
async fn write_history(kv: &mut KvClient<Channel>, seed: u64, ops: usize) -> Vec<Ev> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    let mut events = Vec::new();
    for i in 0..ops {
        match rng.random_range(0..10) {
            0..=5 => {
                let k = format!("h/{}", rng.random_range(0..8));
                let v = format!("v{i}");
                let r = kv.put(pb::PutRequest { key: k.clone().into(), value: v.clone().into(), ..Default::default() }).await.unwrap().into_inner();
                let prev = model.insert(k.clone(), v.clone());
                events.push((r.header.unwrap().revision, k, Some(v), prev));
            }
            6..=7 => {
                let k = format!("h/{}", rng.random_range(0..8));
                let r = kv.delete_range(pb::DeleteRangeRequest { key: k.clone().into(), ..Default::default() }).await.unwrap().into_inner();
                if let Some(prev) = model.remove(&k) {
                    assert_eq!(r.deleted, 1);
                    events.push((r.header.unwrap().revision, k, None, Some(prev)));
                }
            }
            _ => {
                // Several keys at one revision, in one txn.
                let mut keys: Vec<String> = (0..rng.random_range(2..5)).map(|_| format!("h/{}", rng.random_range(0..8))).collect();
                keys.sort();
                keys.dedup();
                let ops = keys.iter().map(|k| pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(pb::PutRequest { key: k.clone().into(), value: format!("t{i}").into(), ..Default::default() })) }).collect();
                let r = kv.txn(pb::TxnRequest { success: ops, ..Default::default() }).await.unwrap().into_inner();
                let rev = r.header.unwrap().revision;
                for k in keys {
                    let prev = model.insert(k.clone(), format!("t{i}"));
                    events.push((rev, k, Some(format!("t{i}")), prev));
                }
            }
        }
    }
    events
}

fn ev_of(e: &pb::Event) -> Ev {
    let kv = e.kv.clone().unwrap();
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
    let value = (e.r#type == pb::event::EventType::Put as i32).then(|| s(kv.value.clone()));
    (kv.mod_revision, s(kv.key), value, e.prev_kv.clone().map(|p| s(p.value)))
}

/// A watch of `h/` from `start` on its own stream: its responses, as they come.
async fn watch(url: &str, start: i64) -> ((mpsc::Sender<pb::WatchRequest>, WatchClient<Channel>), tonic::Streaming<pb::WatchResponse>) {
    let (tx, rx) = mpsc::channel(16);
    let reqs = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest { key: b"h/".to_vec(), range_end: b"h0".to_vec(), start_revision: start, prev_kv: true, ..Default::default() })),
    })
    .await
    .unwrap();
    // The client is kept with the stream: its connection closes when the last handle goes.
    let mut client = WatchClient::new(channel(url).await);
    let mut s = client.watch(reqs).await.unwrap().into_inner();
    let created = s.message().await.unwrap().unwrap();
    assert!(created.created);
    ((tx, client), s)
}

/// Reads events until one at or past `through` arrived, checking atomicity on the way: each
/// response holds whole revisions.
async fn collect(s: &mut tonic::Streaming<pb::WatchResponse>, through: i64, out: &mut Vec<Ev>, per_response: &mut Vec<Vec<i64>>) {
    while out.last().is_none_or(|e| e.0 < through) {
        let r = tokio::time::timeout(std::time::Duration::from_secs(30), s.message()).await.unwrap_or_else(|_| panic!("events through {through} within 30 s; got {} through {:?}", out.len(), out.last())).unwrap().unwrap();
        assert!(!r.canceled, "{r:?}");
        per_response.push(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect());
        out.extend(r.events.iter().map(ev_of));
    }
}

/// Events of one revision compare as a set (a txn's keys may come in any order).
fn normalized(mut evs: Vec<Ev>) -> Vec<Ev> {
    evs.sort();
    evs
}

fn check_atomic(per_response: &[Vec<i64>]) {
    let mut seen_end: BTreeMap<i64, usize> = BTreeMap::new();
    for (i, revs) in per_response.iter().enumerate() {
        for r in revs {
            if let Some(j) = seen_end.insert(*r, i) {
                assert_eq!(j, i, "revision {r} split across responses {j} and {i}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_ordered_unique_reliable_atomic_resumable_and_bookmarkable() {
    for seed in 0..4u64 {
        let srv = server().await;
        let mut kv = KvClient::new(channel(&srv.url).await);
        let base = kv.range(pb::RangeRequest { key: b"x".to_vec(), ..Default::default() }).await.unwrap().into_inner().header.unwrap().revision;
        // One watcher from before the history, opened first; the history is written while
        // it runs.
        let (_keep, mut live) = watch(&srv.url, base + 1).await;
        let history = write_history(&mut kv, seed, 300).await;
        let last = history.last().unwrap().0;
        let (mut got, mut parts) = (Vec::new(), Vec::new());
        collect(&mut live, last, &mut got, &mut parts).await;
        // Ordered and unique.
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "seed {seed}: revisions went back");
        // Reliable: exactly the history, prev values included.
        assert_eq!(normalized(got.clone()), normalized(history.clone()), "seed {seed}");
        check_atomic(&parts);
        // Bookmarkable: a progress response covers everything received.
        _keep
            .0
            .send(pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})) })
            .await
            .unwrap();
        let p = tokio::time::timeout(std::time::Duration::from_secs(30), live.message()).await.unwrap().unwrap().unwrap();
        assert!(p.events.is_empty() && p.header.unwrap().revision >= last, "seed {seed}: progress below the last event");
        // Resumable: from the middle of the history, cancelled part way, reopened after the
        // last revision it saw: the two parts are the history's tail, without gap or overlap.
        let mid = history[history.len() / 3].0;
        let (tx, mut first) = watch(&srv.url, mid).await;
        let cut = history[2 * history.len() / 3].0;
        let (mut a, mut pa) = (Vec::new(), Vec::new());
        collect(&mut first, cut, &mut a, &mut pa).await;
        // The client stops there, having processed everything through `cut` (a catch-up may
        // have brought more in the same response: it was not processed).
        a.retain(|e| e.0 <= cut);
        drop(tx);
        drop(first);
        let (_t2, mut second) = watch(&srv.url, cut + 1).await;
        let (mut b, mut pb_) = (Vec::new(), Vec::new());
        collect(&mut second, last, &mut b, &mut pb_).await;
        a.extend(b);
        let tail: Vec<Ev> = history.iter().filter(|e| e.0 >= mid).cloned().collect();
        assert_eq!(normalized(a), normalized(tail), "seed {seed}: resumed watch");
    }
}

/// Watches opened without a start revision while writes go on: each sees exactly the
/// history's events after the revision its "created" answer names (none lost between the
/// answer and the watcher's registration, none from before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_now_misses_nothing_after_its_created_revision() {
    let srv = server().await;
    let mut kv = KvClient::new(channel(&srv.url).await);
    let writer = tokio::spawn(async move { write_history(&mut kv, 7, 400).await });
    let mut opened = Vec::new();
    for _ in 0..12 {
        let (tx, rx) = mpsc::channel(16);
        let reqs = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest { key: b"h/".to_vec(), range_end: b"h0".to_vec(), prev_kv: true, ..Default::default() })),
        })
        .await
        .unwrap();
        let mut client = WatchClient::new(channel(&srv.url).await);
        let mut s = client.watch(reqs).await.unwrap().into_inner();
        let created = s.message().await.unwrap().unwrap();
        assert!(created.created);
        opened.push((created.header.unwrap().revision, s, tx, client));
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let history = writer.await.unwrap();
    let last = history.last().unwrap().0;
    for (from, mut s, _tx, _client) in opened {
        let want: Vec<Ev> = history.iter().filter(|e| e.0 > from).cloned().collect();
        let (mut got, mut parts) = (Vec::new(), Vec::new());
        if !want.is_empty() {
            collect(&mut s, last, &mut got, &mut parts).await;
        }
        assert_eq!(normalized(got), normalized(want), "a watch created at revision {from}");
    }
}

/// A watch asking for fragments gets a batch larger than a request (here 2 KiB) in pieces no
/// larger than that, each but the last marked, the events whole and in order; without the
/// flag, in one response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_fragmented_when_asked() {
    let srv = server_with(etcdapi::Limits { request_bytes: 2048, ..Default::default() }).await;
    let mut kv = KvClient::new(channel(&srv.url).await);
    let mut first = 0;
    for i in 0..6 {
        let r = kv.put(pb::PutRequest { key: format!("h/{i}").into(), value: vec![b'x'; 1000], ..Default::default() }).await.unwrap().into_inner();
        if i == 0 {
            first = r.header.unwrap().revision;
        }
    }
    for fragment in [true, false] {
        let (tx, rx) = mpsc::channel(16);
        let reqs = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let create = pb::WatchCreateRequest { key: b"h/".to_vec(), range_end: b"h0".to_vec(), start_revision: first, fragment, ..Default::default() };
        tx.send(pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) }).await.unwrap();
        let mut client = WatchClient::new(channel(&srv.url).await);
        let mut s = client.watch(reqs).await.unwrap().into_inner();
        assert!(s.message().await.unwrap().unwrap().created);
        let (mut keys, mut marks) = (Vec::new(), Vec::new());
        while keys.len() < 6 {
            let r = tokio::time::timeout(std::time::Duration::from_secs(30), s.message()).await.expect("the events within 30 s").unwrap().unwrap();
            marks.push((r.fragment, r.events.iter().map(prost::Message::encoded_len).sum::<usize>()));
            keys.extend(r.events.iter().map(|e| String::from_utf8(e.kv.as_ref().unwrap().key.clone()).unwrap()));
        }
        assert_eq!(keys, (0..6).map(|i| format!("h/{i}")).collect::<Vec<_>>());
        if fragment {
            assert!(marks.len() > 1 && marks.iter().all(|(_, bytes)| *bytes <= 2048), "in pieces of at most a request: {marks:?}");
            assert!(marks[..marks.len() - 1].iter().all(|(f, _)| *f) && !marks.last().unwrap().0, "all but the last marked: {marks:?}");
        } else {
            assert_eq!(marks.len(), 1, "one response without the flag: {marks:?}");
        }
        drop(tx);
    }
}
