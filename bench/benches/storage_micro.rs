//! Micro-benchmarks of the store's in-memory paths, per operation.
//!
//!   cargo bench -p bench --bench storage_micro             # full run
//!   cargo bench -p bench --bench storage_micro -- --quick  # a quick look
//!
//! - `mvcc/*`, `mvcc_range/*`, `txn/*`: `storage::internals` pure functions (no I/O, no
//!   threads): the index a shard thread runs per request.
//! - `store_put_nofsync/*`: a full `Store::put` round trip (tokio task, shard thread, index,
//!   log write without fsync, reply) with 64 concurrent clients, 1 vs 2 shards; the time per
//!   element is wall time / puts, i.e. the inverse of throughput.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use storage::internals::{Mvcc, eval};
use storage::{
    Compare, CompareOp, CompareTarget, Config, KeyRange, PutRequest, RangeRequest, Store, TxnOp,
    TxnRequest,
};

/// Keys in the preloaded index.
const INDEX_KEYS: u64 = 10_000;
const VALUE_BYTES: usize = 256;

fn key(prefix: &str, i: u64) -> Bytes {
    Bytes::from(format!("{prefix}{i:010}"))
}

fn value() -> Bytes {
    Bytes::from(vec![b'v'; VALUE_BYTES])
}

/// An index of `n` keys `/k/{i}` written at revisions 1..=n; returns it, its keys and its
/// revision.
fn loaded(n: u64) -> (Mvcc, Vec<Bytes>, u64) {
    let mut m = Mvcc::default();
    let v = value();
    let keys: Vec<Bytes> = (0..n).map(|i| key("/k/", i)).collect();
    for (i, k) in keys.iter().enumerate() {
        m.put(k.clone(), v.clone(), 0, i as u64 + 1);
    }
    (m, keys, n)
}

/// xorshift64*: scattered indexes without a per-iteration allocation.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn mvcc(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc");
    g.throughput(Throughput::Elements(1));

    // A put of a key the index has never seen (B-tree insert), into a 10k-key index. A fresh
    // index per sample keeps memory bounded; building it is not timed.
    g.bench_function("put_new_key_10k_index", |b| {
        let v = value();
        b.iter_custom(|iters| {
            let (mut m, _, rev) = loaded(INDEX_KEYS);
            let fresh: Vec<Bytes> = (0..iters).map(|i| key("/n/", i)).collect();
            let start = Instant::now();
            for (i, k) in fresh.into_iter().enumerate() {
                black_box(m.put(k, v.clone(), 0, rev + 1 + i as u64));
            }
            start.elapsed()
        })
    });

    // A put over an existing key (history append), scattered over a 10k-key index.
    g.bench_function("put_overwrite_10k_index", |b| {
        let v = value();
        b.iter_custom(|iters| {
            let (mut m, keys, rev) = loaded(INDEX_KEYS);
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let start = Instant::now();
            for i in 0..iters {
                let k = keys[rng.below(keys.len())].clone();
                black_box(m.put(k, v.clone(), 0, rev + 1 + i));
            }
            start.elapsed()
        })
    });

    // A point read at the newest revision, scattered over a 10k-key index.
    let (m, keys, _) = loaded(INDEX_KEYS);
    g.bench_function("get_latest_10k_index", |b| {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        b.iter(|| black_box(m.get_latest(&keys[rng.below(keys.len())])))
    });
    g.finish();

    // A prefix range returning 100 keys out of 10,000 (100 prefixes of 100 keys).
    let mut g = c.benchmark_group("mvcc_range");
    g.throughput(Throughput::Elements(100));
    let mut m = Mvcc::default();
    let v = value();
    let mut rev = 0;
    for p in 0..100u64 {
        for i in 0..100u64 {
            rev += 1;
            m.put(key(&format!("/r/{p:03}/"), i), v.clone(), 0, rev);
        }
    }
    let range = KeyRange::Prefix(Bytes::from_static(b"/r/042/"));
    assert_eq!(m.range_at(&range, rev, 0, false, false).count, 100);
    g.bench_function("range_at_prefix_100_of_10k", |b| {
        b.iter(|| black_box(m.range_at(black_box(&range), rev, 0, false, false)))
    });
    g.bench_function("range_at_prefix_100_of_10k_keys_only", |b| {
        b.iter(|| black_box(m.range_at(black_box(&range), rev, 0, true, false)))
    });
    g.bench_function("range_at_prefix_100_of_10k_count_only", |b| {
        b.iter(|| black_box(m.range_at(black_box(&range), rev, 0, false, true)))
    });
    g.finish();
}

/// A CAS txn: compare the key's mod revision, put on success, read it back on failure.
fn cas_request(key: &Bytes, expect: u64) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(expect), range_end: None }],
        success: vec![TxnOp::Put(PutRequest { key: key.clone(), value: value(), lease: 0, prev_kv: false })],
        failure: vec![TxnOp::Range(RangeRequest::key(key.clone()))],
    }
}

fn txn(c: &mut Criterion) {
    let mut g = c.benchmark_group("txn");
    g.throughput(Throughput::Elements(1));

    // A CAS that succeeds every time (compare holds, one put), in a 10k-key index. Only the
    // compare's revision changes between iterations; the request is built once.
    g.bench_function("eval_cas_success", |b| {
        b.iter_custom(|iters| {
            let (mut m, keys, mut rev) = loaded(INDEX_KEYS);
            let k = keys[keys.len() / 2].clone();
            let mut expect = m.get_latest(&k).expect("loaded").mod_revision;
            let mut req = cas_request(&k, expect);
            let start = Instant::now();
            for _ in 0..iters {
                req.compare[0].target = CompareTarget::ModRevision(expect);
                let next = rev + 1;
                let mut alloc = || next;
                let out = eval(&mut m, &req, &mut alloc, rev, 0).expect("valid txn");
                debug_assert!(out.succeeded);
                rev = next;
                expect = next;
                black_box(out);
            }
            start.elapsed()
        })
    });

    // A CAS that fails (stale revision): the compare, then the failure branch's read.
    let (mut m, keys, rev) = loaded(INDEX_KEYS);
    let req = cas_request(&keys[keys.len() / 2], 1_000_000_000);
    g.bench_function("eval_cas_failure", |b| {
        b.iter(|| {
            let mut alloc = || -> u64 { unreachable!("a failed CAS writes nothing") };
            let out = eval(&mut m, black_box(&req), &mut alloc, rev, 0).expect("valid txn");
            debug_assert!(!out.succeeded);
            black_box(out)
        })
    });
    g.finish();
}

/// Concurrent clients for the store round-trip group.
const STORE_CLIENTS: u64 = 64;

fn store_put(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_put_nofsync");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    for shards in [1usize, 2] {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
        let dir = tempfile::Builder::new().prefix("storage-micro-").tempdir().expect("temp dir");
        let mut cfg = Config::new(dir.path());
        cfg.shards = shards;
        cfg.fsync = false;
        let store = Store::open(cfg).expect("open store");
        let keys: Arc<Vec<Bytes>> = Arc::new((0..INDEX_KEYS).map(|i| key("/b/", i)).collect());
        let v = value();
        g.bench_with_input(BenchmarkId::new("64_clients", format!("{shards}_shards")), &shards, |b, _| {
            b.iter_custom(|iters| {
                let elapsed = rt.block_on(async {
                    let clients = STORE_CLIENTS.min(iters).max(1);
                    let start = Instant::now();
                    let mut tasks = Vec::with_capacity(clients as usize);
                    for c in 0..clients {
                        let n = iters / clients + u64::from(c < iters % clients);
                        let store = store.clone();
                        let keys = keys.clone();
                        let v = v.clone();
                        tasks.push(tokio::spawn(async move {
                            let mut i = (c * 7919) as usize;
                            for _ in 0..n {
                                i = (i + 1) % keys.len();
                                store.put(keys[i].clone(), v.clone()).await.expect("put");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("client task");
                    }
                    start.elapsed()
                });
                // Untimed: drop the history the sample wrote, so memory stays flat.
                let r = store.revision();
                if r > store.compact_revision() {
                    rt.block_on(store.compact(r)).expect("compact");
                }
                elapsed
            })
        });
        drop(store);
        drop(rt);
        drop(dir);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = mvcc, txn, store_put
}
criterion_main!(benches);
