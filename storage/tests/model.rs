//! A model-based test: a real store and a plain reference model (a `BTreeMap` holding the full
//! history of every key) take the same seeded random operations, and every answer is compared.
//!
//! The model is written from etcd v3's semantics, not from the store's code: one new revision
//! per put, per txn that writes and per delete that deletes something; a missing key compares
//! as revision 0 / version 0 and a value compare on it is false; reads below the compact
//! revision are refused; a txn reads its own writes, and a range inside it with a revision
//! reads at that revision; `more` is set only when `kvs` was cut by the limit (never for a
//! count-only read); an op list may not put a key twice nor put a key that one of its deletes
//! covers, while its deletes may overlap (etcd's `checkIntervals`). Where the store's API
//! documents its own shape, the model follows it: a `RangeResponse` carries the revision read
//! at, responses inside a txn carry the txn's revision, and an empty `end` of a
//! `KeyRange::Range` means "to the end of the keyspace".
//!
//! Rerun a failure with `CAPSTAN_MODEL_SEED=<seed>` (printed on failure); soak with
//! `CAPSTAN_MODEL_OPS=<n>`.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use storage::*;

/// Random operations per test (each test also reopens the store and snapshots now and then).
const OPS: usize = 3000;
/// Operations kept for the failure report.
const REPORT_OPS: usize = 40;

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// One revision of one key.
#[derive(Clone, Debug)]
struct ModelEntry {
    revision: Revision,
    create_revision: Revision,
    version: u64,
    /// `None` is a tombstone: the key was deleted at `revision`.
    value: Option<Bytes>,
}

#[derive(Default)]
struct Model {
    /// Every key ever written, with its whole history (compaction drops nothing here: it only
    /// makes reads below `compact_revision` fail).
    keys: BTreeMap<Bytes, Vec<ModelEntry>>,
    revision: Revision,
    compact_revision: Revision,
}

/// Whether `range` covers `key` (the store's documented `KeyRange`: an empty `end` of a
/// `Range` means "to the end of the keyspace").
fn covers(range: &KeyRange, key: &[u8]) -> bool {
    match range {
        KeyRange::Key(k) => k.as_ref() == key,
        KeyRange::Prefix(p) => key.starts_with(p),
        KeyRange::Range { start, end } => key >= start.as_ref() && (end.is_empty() || key < end.as_ref()),
    }
}

fn invalid() -> StoreError {
    StoreError::Invalid(String::new())
}

impl Model {
    /// `key` at `rev` (the newest entry at or below it), if it is live there.
    fn kv_at(key: &Bytes, history: &[ModelEntry], rev: Revision) -> Option<KeyValue> {
        let e = history.iter().rev().find(|e| e.revision <= rev)?;
        Some(KeyValue {
            key: key.clone(),
            value: e.value.clone()?,
            create_revision: e.create_revision,
            mod_revision: e.revision,
            version: e.version,
            lease: 0,
        })
    }

    fn get(&self, key: &Bytes, rev: Revision) -> Option<KeyValue> {
        self.keys.get(key).and_then(|h| Self::kv_at(key, h, rev))
    }

    /// The newest state, including writes of a txn being applied.
    fn latest(&self, key: &Bytes) -> Option<KeyValue> {
        self.get(key, Revision::MAX)
    }

    /// Live keys of `range` at `rev`, in key order.
    fn live(&self, range: &KeyRange, rev: Revision) -> Vec<KeyValue> {
        self.keys.iter().filter(|(k, _)| covers(range, k)).filter_map(|(k, h)| Self::kv_at(k, h, rev)).collect()
    }

    /// A range read at `rev`, already checked against compaction.
    fn read(&self, req: &RangeRequest, rev: Revision) -> RangeResponse {
        let live = self.live(&req.range, rev);
        let count = live.len();
        let mut kvs = if req.count_only { Vec::new() } else { live };
        if req.limit != 0 {
            kvs.truncate(req.limit);
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        // etcd: `more` says keys were cut from `kvs`; a count-only read returns none.
        let more = !req.count_only && req.limit != 0 && count > req.limit;
        RangeResponse { revision: rev, kvs, more, count }
    }

    /// Checks a read revision: 0 / none is the current one.
    fn read_revision(&self, requested: Option<Revision>) -> Result<Revision, StoreError> {
        let rev = match requested {
            None | Some(0) => self.revision,
            Some(r) if r > self.revision => {
                return Err(StoreError::FutureRevision { requested: r, current: self.revision });
            }
            Some(r) => r,
        };
        if rev < self.compact_revision {
            return Err(StoreError::Compacted { requested: rev, compact_revision: self.compact_revision });
        }
        Ok(rev)
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let rev = self.read_revision(req.revision)?;
        Ok(self.read(req, rev))
    }

    /// Appends a put (`Some`) or a tombstone (`None`) of `key` at `rev`.
    fn write(&mut self, key: &Bytes, value: Option<Bytes>, rev: Revision) {
        let prev = self.latest(key);
        let entry = match value {
            Some(v) => ModelEntry {
                revision: rev,
                create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                version: prev.as_ref().map_or(1, |p| p.version + 1),
                value: Some(v),
            },
            None => ModelEntry { revision: rev, create_revision: 0, version: 0, value: None },
        };
        self.keys.entry(key.clone()).or_default().push(entry);
    }

    fn compare_holds(&self, c: &Compare) -> bool {
        let kv = self.latest(&c.key);
        let ord = match (&c.target, &kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.cmp(v),
            (CompareTarget::ModRevision(r), kv) => kv.as_ref().map_or(0, |k| k.mod_revision).cmp(r),
            (CompareTarget::CreateRevision(r), kv) => kv.as_ref().map_or(0, |k| k.create_revision).cmp(r),
            (CompareTarget::Version(v), kv) => kv.as_ref().map_or(0, |k| k.version).cmp(v),
            // The model's writes carry no lease.
            (CompareTarget::Lease(l), _) => 0.cmp(l),
        };
        match c.op {
            CompareOp::Equal => ord.is_eq(),
            CompareOp::NotEqual => ord.is_ne(),
            CompareOp::Less => ord.is_lt(),
            CompareOp::Greater => ord.is_gt(),
        }
    }

    /// etcd's `checkIntervals` on one op list: no key put twice, and no key both put and
    /// covered by a delete of the same list ("duplicate key given in txn request"). Deletes
    /// may overlap each other.
    fn validate(ops: &[TxnOp]) -> Result<(), StoreError> {
        let dels: Vec<&KeyRange> = ops
            .iter()
            .filter_map(|op| match op {
                TxnOp::Delete(d) => Some(&d.range),
                _ => None,
            })
            .collect();
        let mut puts: Vec<&Bytes> = Vec::new();
        for op in ops {
            if let TxnOp::Put(p) = op {
                if puts.contains(&&p.key) || dels.iter().any(|r| covers(r, &p.key)) {
                    return Err(invalid());
                }
                puts.push(&p.key);
            }
        }
        Ok(())
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, StoreError> {
        Self::validate(&req.success)?;
        Self::validate(&req.failure)?;
        let succeeded = req.compare.iter().all(|c| self.compare_holds(c));
        let ops = if succeeded { &req.success } else { &req.failure };
        // etcd refuses, before doing anything, a txn whose taken branch reads a compacted or
        // future revision.
        for op in ops {
            if let TxnOp::Range(r) = op {
                self.read_revision(r.revision)?;
            }
        }
        let rev = self.revision + 1;
        let mut wrote = false;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                TxnOp::Range(r) => {
                    // A txn reads its own writes; a range with a revision reads at it.
                    let at = match r.revision {
                        None | Some(0) => Revision::MAX,
                        Some(x) => x,
                    };
                    TxnOpResponse::Range(self.read(r, at))
                }
                TxnOp::Put(p) => {
                    let prev = self.latest(&p.key);
                    self.write(&p.key, Some(p.value.clone()), rev);
                    wrote = true;
                    TxnOpResponse::Put(PutResponse { revision: rev, prev_kv: if p.prev_kv { prev } else { None } })
                }
                TxnOp::Delete(d) => {
                    let prevs = self.live(&d.range, Revision::MAX);
                    for p in &prevs {
                        self.write(&p.key, None, rev);
                    }
                    wrote |= !prevs.is_empty();
                    TxnOpResponse::Delete(DeleteResponse {
                        revision: 0,
                        deleted: prevs.len(),
                        prev_kvs: if d.prev_kv { prevs } else { Vec::new() },
                    })
                }
                TxnOp::Txn(_) => unreachable!("the model generates no nested txns (tests/store.rs covers them)"),
            });
        }
        if wrote {
            self.revision = rev;
        }
        // Reads and deletes inside a txn carry the txn's header revision.
        let header = self.revision;
        for r in &mut responses {
            match r {
                TxnOpResponse::Range(x) => x.revision = header,
                TxnOpResponse::Delete(x) => x.revision = header,
                TxnOpResponse::Put(_) | TxnOpResponse::Txn(_) => {}
            }
        }
        Ok(TxnResponse { revision: header, succeeded, responses })
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, StoreError> {
        let resp = self.txn(&TxnRequest { compare: vec![], success: vec![TxnOp::Put(req.clone())], failure: vec![] })?;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Put(p)) => Ok(p),
            other => unreachable!("{other:?}"),
        }
    }

    fn delete(&mut self, req: &DeleteRequest) -> Result<DeleteResponse, StoreError> {
        let resp =
            self.txn(&TxnRequest { compare: vec![], success: vec![TxnOp::Delete(req.clone())], failure: vec![] })?;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => Ok(d),
            other => unreachable!("{other:?}"),
        }
    }

    fn compact(&mut self, rev: Revision) -> Result<(), StoreError> {
        if rev > self.revision {
            return Err(StoreError::FutureRevision { requested: rev, current: self.revision });
        }
        if rev <= self.compact_revision {
            return Err(StoreError::Compacted { requested: rev, compact_revision: self.compact_revision });
        }
        self.compact_revision = rev;
        Ok(())
    }

    fn live_keys(&self) -> u64 {
        self.keys.values().filter(|h| h.last().is_some_and(|e| e.value.is_some())).count() as u64
    }

    /// What compaction keeps, as etcd does: per key, every revision after the compact
    /// revision, plus the one in force at it unless that is a tombstone. Returns (keys with
    /// anything kept, revisions kept).
    fn retained(&self) -> (u64, u64) {
        let (mut keys, mut revisions) = (0, 0);
        for h in self.keys.values() {
            let newer = h.iter().filter(|e| e.revision > self.compact_revision).count() as u64;
            let in_force = h.iter().rev().find(|e| e.revision <= self.compact_revision);
            let kept = newer + u64::from(in_force.is_some_and(|e| e.value.is_some()));
            keys += u64::from(kept > 0);
            revisions += kept;
        }
        (keys, revisions)
    }
}

// ---------------------------------------------------------------------------------------------
// Random operations
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Put(PutRequest),
    Get(Bytes),
    Range(RangeRequest),
    Delete(DeleteRequest),
    Txn(TxnRequest),
    Compact(Revision),
    Snapshot,
    Reopen,
}

const PREFIXES: &[&str] = &["/k/", "/k/0", "/k/1", "/k/2", "/k/1", "/k/2", "/j/", "/j/", "/k/07", "/x/", "/", ""];

fn random_key(rng: &mut StdRng) -> Bytes {
    if rng.random_ratio(1, 6) {
        Bytes::from(format!("/j/{}", rng.random_range(0..5)))
    } else {
        Bytes::from(format!("/k/{:02}", rng.random_range(0..30)))
    }
}

fn random_value(rng: &mut StdRng) -> Bytes {
    if rng.random_ratio(1, 25) { Bytes::new() } else { Bytes::from(format!("v{}", rng.random_range(0..12))) }
}

fn random_prefix(rng: &mut StdRng) -> KeyRange {
    KeyRange::Prefix(b(PREFIXES.choose(rng).unwrap()))
}

/// `[start, end)` over the key space: sometimes open-ended, sometimes empty (start >= end).
fn random_interval(rng: &mut StdRng) -> KeyRange {
    let start = if rng.random_ratio(1, 10) { Bytes::new() } else { random_key(rng) };
    let end = if rng.random_ratio(1, 8) { Bytes::new() } else { random_key(rng) };
    KeyRange::Range { start, end }
}

fn random_key_range(rng: &mut StdRng) -> KeyRange {
    match rng.random_range(0..3) {
        0 => KeyRange::Key(random_key(rng)),
        1 => random_prefix(rng),
        _ => random_interval(rng),
    }
}

/// A revision to read at: mostly retained ones, sometimes compacted or future ones.
fn random_old_revision(rng: &mut StdRng, m: &Model) -> Revision {
    match rng.random_range(0..10) {
        0 => m.compact_revision.saturating_sub(rng.random_range(1..4)),
        1 => m.revision + rng.random_range(1..3),
        _ => rng.random_range(m.compact_revision..=m.revision),
    }
}

fn random_read(rng: &mut StdRng, range: KeyRange) -> RangeRequest {
    RangeRequest {
        range,
        revision: None,
        limit: if rng.random_ratio(1, 3) { rng.random_range(1..6) } else { 0 },
        count_only: rng.random_ratio(1, 8),
        keys_only: rng.random_ratio(1, 6),
    }
}

/// Around `x`, so that equal, less and greater all happen.
fn near(rng: &mut StdRng, x: u64) -> u64 {
    match rng.random_range(0..5) {
        0..=2 => x,
        3 => x + 1,
        _ => x.saturating_sub(1),
    }
}

fn random_compare(rng: &mut StdRng, m: &Model) -> Compare {
    let key = random_key(rng);
    let cur = m.latest(&key);
    let op = *[CompareOp::Equal, CompareOp::NotEqual, CompareOp::Less, CompareOp::Greater].choose(rng).unwrap();
    let target = match rng.random_range(0..4) {
        0 => CompareTarget::ModRevision(near(rng, cur.as_ref().map_or(0, |k| k.mod_revision))),
        1 => CompareTarget::CreateRevision(near(rng, cur.as_ref().map_or(0, |k| k.create_revision))),
        2 => CompareTarget::Version(near(rng, cur.as_ref().map_or(0, |k| k.version))),
        _ => CompareTarget::Value(match &cur {
            Some(kv) if rng.random_bool(0.6) => kv.value.clone(),
            _ => random_value(rng),
        }),
    };
    Compare { key, op, target, range_end: None }
}

/// Whether `op` may not join `kept` in one op list (etcd's rule, see `Model::validate`): no key
/// put twice, no key both put and deleted. Deletes may overlap.
fn conflicts(kept: &[TxnOp], op: &TxnOp) -> bool {
    kept.iter().any(|k| match (k, op) {
        (TxnOp::Put(a), TxnOp::Put(b)) => a.key == b.key,
        (TxnOp::Put(p), TxnOp::Delete(d)) | (TxnOp::Delete(d), TxnOp::Put(p)) => covers(&d.range, &p.key),
        _ => false,
    })
}

fn random_op_list(rng: &mut StdRng, m: &Model) -> Vec<TxnOp> {
    let n = rng.random_range(0..=4);
    // Most lists are valid; some may write a key twice and must then be refused whole.
    let keep_valid = !rng.random_ratio(1, 12);
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let op = match rng.random_range(0..10) {
            0..=3 => TxnOp::Put(PutRequest {
                key: random_key(rng),
                value: random_value(rng),
                lease: 0,
                prev_kv: rng.random_bool(0.5),
            }),
            4..=5 => TxnOp::Delete(DeleteRequest {
                range: if rng.random_ratio(3, 4) { KeyRange::Key(random_key(rng)) } else { random_key_range(rng) },
                prev_kv: rng.random_bool(0.5),
            }),
            _ => {
                let range = random_key_range(rng);
                let mut r = random_read(rng, range);
                if rng.random_ratio(1, 5) {
                    r.revision = Some(rng.random_range(m.compact_revision..=m.revision));
                }
                TxnOp::Range(r)
            }
        };
        if keep_valid && conflicts(&ops, &op) {
            continue;
        }
        ops.push(op);
    }
    ops
}

fn random_op(rng: &mut StdRng, m: &Model) -> Op {
    match rng.random_range(0..1000) {
        0..250 => Op::Put(PutRequest {
            key: random_key(rng),
            value: random_value(rng),
            lease: 0,
            prev_kv: rng.random_bool(0.5),
        }),
        250..350 => Op::Get(random_key(rng)),
        350..470 => {
            let range = if rng.random_bool(0.5) { random_prefix(rng) } else { random_key_range(rng) };
            Op::Range(random_read(rng, range))
        }
        470..550 => {
            let range = random_key_range(rng);
            let mut r = random_read(rng, range);
            r.revision = Some(random_old_revision(rng, m));
            Op::Range(r)
        }
        550..630 => Op::Delete(DeleteRequest { range: KeyRange::Key(random_key(rng)), prev_kv: rng.random_bool(0.5) }),
        630..670 => Op::Delete(DeleteRequest {
            range: if rng.random_bool(0.5) { random_prefix(rng) } else { random_interval(rng) },
            prev_kv: rng.random_bool(0.5),
        }),
        670..955 => {
            let compare = (0..rng.random_range(1..=3)).map(|_| random_compare(rng, m)).collect();
            Op::Txn(TxnRequest { compare, success: random_op_list(rng, m), failure: random_op_list(rng, m) })
        }
        955..990 => Op::Compact(match rng.random_range(0..8) {
            0 => m.compact_revision.saturating_sub(rng.random_range(0..3)),
            1 => m.revision + 1,
            // Mostly keep a few dozen revisions of history readable.
            _ => m.revision.saturating_sub(rng.random_range(0..60)),
        }),
        990..995 => Op::Snapshot,
        _ => Op::Reopen,
    }
}

// ---------------------------------------------------------------------------------------------
// Running both side by side
// ---------------------------------------------------------------------------------------------

/// Prints the seed and the last operations if the test panics.
struct Report {
    seed: u64,
    shards: usize,
    log: Vec<String>,
}

impl Report {
    fn note(&mut self, line: String) {
        if self.log.len() == 4 * REPORT_OPS {
            self.log.drain(..3 * REPORT_OPS);
        }
        self.log.push(line);
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "model test FAILED with {} shard(s), seed {} (rerun with CAPSTAN_MODEL_SEED={})",
                self.shards, self.seed, self.seed
            );
            eprintln!("last operations, oldest first:");
            let from = self.log.len().saturating_sub(REPORT_OPS);
            for line in &self.log[from..] {
                eprintln!("  {line}");
            }
        }
    }
}

/// The store's `Invalid` messages are free text; the model only says "invalid".
fn norm<T>(r: Result<T, StoreError>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        StoreError::Invalid(_) => invalid(),
        e => e,
    })
}

/// Compares everything readable: the newest state, several retained revisions, each key.
async fn check_everything(store: &Store, m: &Model, rng: &mut StdRng, when: &str) {
    assert_eq!(store.revision(), m.revision, "{when}: revision");
    assert_eq!(store.compact_revision(), m.compact_revision, "{when}: compact revision");
    let mut revs = vec![None, Some(m.revision), Some(m.compact_revision)];
    for _ in 0..6 {
        revs.push(Some(rng.random_range(m.compact_revision..=m.revision)));
    }
    for rev in revs {
        let req = RangeRequest { revision: rev, ..RangeRequest::prefix("") };
        let got = within("a full range read", store.range(req.clone())).await;
        assert_eq!(got, m.range(&req), "{when}: everything at revision {rev:?}");
    }
    for key in m.keys.keys() {
        let got = within("a get", store.get(key.clone())).await;
        assert_eq!(got, Ok(m.latest(key)), "{when}: get {key:?}");
    }
    let stats = within("stats", store.stats()).await;
    assert_eq!(stats.live_keys, m.live_keys(), "{when}: live keys in stats");
    assert_eq!((stats.indexed_keys, stats.retained_revisions), m.retained(), "{when}: history kept by compaction");
}

async fn run(shards: usize, default_seed: u64) {
    let seed = std::env::var("CAPSTAN_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default_seed);
    let ops = std::env::var("CAPSTAN_MODEL_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(OPS);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report { seed, shards, log: Vec::new() };
    let dir = tempfile::tempdir().unwrap();
    // Small log segments, so that a run rolls over segments and snapshots remove some.
    let mut cfg = config(dir.path(), shards);
    cfg.segment_bytes = 96 << 10;
    cfg.batch_bytes_max = 8 << 10;
    cfg.request_bytes_max = 8 << 10;
    let reopen = || Store::open(cfg.clone()).expect("open store");
    let mut store = reopen();
    let mut m = Model::default();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for step in 0..ops {
        let op = random_op(&mut rng, &m);
        report.note(format!("#{step} {op:?}"));
        let what = format!("step {step}: {op:?}");
        match &op {
            Op::Put(req) => {
                let got = within("put", store.put_with(req.clone())).await;
                assert_eq!(norm(got), m.put(req), "{what}");
            }
            Op::Get(key) => {
                let got = within("get", store.get(key.clone())).await;
                assert_eq!(got, Ok(m.latest(key)), "{what}");
            }
            Op::Range(req) => {
                let got = within("range", store.range(req.clone())).await;
                assert_eq!(got, m.range(req), "{what}");
            }
            Op::Delete(req) => {
                let got = within("delete", store.delete(req.clone())).await;
                assert_eq!(norm(got), m.delete(req), "{what}");
            }
            Op::Txn(req) => {
                let got = within("txn", store.txn(req.clone())).await;
                assert_eq!(norm(got), m.txn(req), "{what}");
            }
            Op::Compact(rev) => {
                let got = within("compact", store.compact(*rev)).await;
                assert_eq!(got, m.compact(*rev), "{what}");
            }
            Op::Snapshot => {
                let got = within("snapshot", store.snapshot()).await;
                assert_eq!(got, Ok(m.revision), "{what}: a snapshot covers everything acknowledged");
            }
            Op::Reopen => {
                drop(store);
                store = reopen();
                check_everything(&store, &m, &mut rng, &what).await;
            }
        }
        *counts.entry(op_name(&op)).or_default() += 1;
        assert_eq!(store.revision(), m.revision, "{what}: revision after the step");
        assert_eq!(store.compact_revision(), m.compact_revision, "{what}: compact revision after the step");
        if step % 250 == 249 {
            check_everything(&store, &m, &mut rng, &what).await;
        }
    }
    drop(store);
    let store = reopen();
    check_everything(&store, &m, &mut rng, "after the final reopen").await;
    println!("seed {seed}, {shards} shard(s): {ops} operations {counts:?}, final revision {}", m.revision);
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Put(_) => "put",
        Op::Get(_) => "get",
        Op::Range(r) if r.revision.is_some() => "range_at",
        Op::Range(_) => "range",
        Op::Delete(d) if matches!(d.range, KeyRange::Key(_)) => "delete",
        Op::Delete(_) => "delete_range",
        Op::Txn(_) => "txn",
        Op::Compact(_) => "compact",
        Op::Snapshot => "snapshot",
        Op::Reopen => "reopen",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_matches_a_btreemap_model_with_one_shard() {
    run(1, 0x5eed_0001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_matches_a_btreemap_model_with_two_shards() {
    run(2, 0x5eed_0002).await;
}

