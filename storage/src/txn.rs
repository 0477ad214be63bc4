//! Evaluating a txn: a plain function over a [`KeySpace`], shared by a shard (over its own
//! index) and the coordinator (over all shards, frozen). It returns what the txn did; the
//! caller makes it durable and visible.

use bytes::Bytes;

use crate::error::StoreError;
use crate::mvcc::Mvcc;
use crate::types::*;
use crate::wal::Change;

/// What a txn evaluation reads and writes, at the newest state (durable or staged in the
/// current batch).
pub trait KeySpace {
    fn get(&mut self, key: &Bytes) -> Option<KeyValue>;
    /// Keys in `range` at `rev` (`Revision::MAX`: the newest state).
    fn range(&mut self, range: &KeyRange, rev: Revision, limit: usize, keys_only: bool, count_only: bool) -> (Vec<KeyValue>, usize);
    fn put(&mut self, key: &Bytes, value: &Bytes, lease: LeaseId, rev: Revision) -> (KeyValue, Option<KeyValue>);
    /// Deletes the live keys in `range` at `rev`, returning their previous values in key order.
    fn delete(&mut self, range: &KeyRange, rev: Revision) -> Vec<KeyValue>;
    fn lease_exists(&mut self, id: LeaseId) -> bool;
}

impl KeySpace for Mvcc {
    fn get(&mut self, key: &Bytes) -> Option<KeyValue> {
        self.get_latest(key)
    }
    fn range(&mut self, range: &KeyRange, rev: Revision, limit: usize, keys_only: bool, count_only: bool) -> (Vec<KeyValue>, usize) {
        let r = self.range_at(range, rev, limit, keys_only, count_only);
        (r.kvs, r.count)
    }
    fn put(&mut self, key: &Bytes, value: &Bytes, lease: LeaseId, rev: Revision) -> (KeyValue, Option<KeyValue>) {
        Mvcc::put(self, key.clone(), value.clone(), lease, rev)
    }
    fn delete(&mut self, range: &KeyRange, rev: Revision) -> Vec<KeyValue> {
        let keys = match range {
            KeyRange::Key(k) => vec![k.clone()],
            r => self.live_keys_in(r),
        };
        keys.iter().filter_map(|k| Mvcc::delete(self, k, rev)).collect()
    }
    fn lease_exists(&mut self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }
}

/// What a txn did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub succeeded: bool,
    pub responses: Vec<TxnOpResponse>,
    /// Set when the txn changed something: every change has this revision.
    pub revision: Option<Revision>,
    pub changes: Vec<Change>,
    /// One event per change, in order (the watch sub-order within the revision).
    pub events: Vec<Event>,
}

/// Checks what can be checked without the data: sizes, empty keys, nesting, and etcd's rule
/// that within one list of operations a put's key may not be put again nor fall in a
/// delete's range (deletes may overlap each other), counting what nested txns put and
/// delete, whose two branches may put the same key (only one of them runs). Every branch is
/// checked, whichever is taken.
pub fn validate(req: &TxnRequest, request_bytes_max: usize) -> Result<(), StoreError> {
    let mut bytes = 0usize;
    compares(req, &mut bytes)?;
    for ops in [&req.success, &req.failure] {
        intervals(ops, &mut bytes, 0)?;
    }
    if bytes > request_bytes_max {
        return Err(StoreError::TooLarge { bytes, max: request_bytes_max });
    }
    Ok(())
}

fn compares(req: &TxnRequest, bytes: &mut usize) -> Result<(), StoreError> {
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(StoreError::Invalid("compare on an empty key".into()));
        }
        *bytes += c.key.len() + c.range_end.as_ref().map_or(0, |e| e.len()) + if let CompareTarget::Value(v) = &c.target { v.len() } else { 8 };
    }
    Ok(())
}

/// The keys `ops` put and the ranges they delete, nested txns' included (etcd's
/// `checkIntervals`); a key put twice, or put where something deletes, is refused.
fn intervals<'a>(ops: &'a [TxnOp], bytes: &mut usize, depth: usize) -> Result<(std::collections::BTreeSet<&'a Bytes>, Vec<&'a KeyRange>), StoreError> {
    let dup = || StoreError::Invalid("duplicate key given in txn request".into());
    let mut dels: Vec<&KeyRange> = Vec::new();
    for op in ops {
        match op {
            TxnOp::Delete(d) => {
                *bytes += d.range.start().len();
                if d.range.start().is_empty() && matches!(d.range, KeyRange::Key(_)) {
                    return Err(StoreError::Invalid("delete of an empty key".into()));
                }
                dels.push(&d.range);
            }
            TxnOp::Range(r) => *bytes += r.range.start().len(),
            TxnOp::Put(_) | TxnOp::Txn(_) => {}
        }
    }
    let mut puts = std::collections::BTreeSet::new();
    for op in ops {
        let TxnOp::Txn(t) = op else { continue };
        if depth >= crate::command::NESTING_MAX {
            return Err(StoreError::Invalid(format!("txns nested deeper than {}", crate::command::NESTING_MAX)));
        }
        compares(t, bytes)?;
        let (then_puts, then_dels) = intervals(&t.success, bytes, depth + 1)?;
        let (else_puts, else_dels) = intervals(&t.failure, bytes, depth + 1)?;
        for k in &then_puts {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(dup());
            }
            puts.insert(*k);
        }
        for k in &else_puts {
            if (puts.contains(k) && !then_puts.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(dup());
            }
            puts.insert(*k);
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let TxnOp::Put(p) = op else { continue };
        if p.key.is_empty() {
            return Err(StoreError::Invalid("put of an empty key".into()));
        }
        *bytes += p.key.len() + p.value.len();
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(dup());
        }
        puts.insert(&p.key);
    }
    Ok((puts, dels))
}

fn compare_holds(kv: Option<&KeyValue>, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord = match (&c.target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => kv.value.as_ref().cmp(v.as_ref()),
        (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |k| k.mod_revision).cmp(r),
        (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |k| k.create_revision).cmp(r),
        (CompareTarget::Version(v), kv) => kv.map_or(0, |k| k.version).cmp(v),
        (CompareTarget::Lease(l), kv) => kv.map_or(0, |k| k.lease).cmp(l),
    };
    match c.op {
        CompareOp::Equal => ord == Ordering::Equal,
        CompareOp::NotEqual => ord != Ordering::Equal,
        CompareOp::Less => ord == Ordering::Less,
        CompareOp::Greater => ord == Ordering::Greater,
    }
}

/// Whether `c` holds now: over one key, or over every key of its range (an empty range holds
/// as a missing key does, so a value compare fails; etcd's `applyCompare`).
fn compare_holds_in<K: KeySpace + ?Sized>(ks: &mut K, c: &Compare) -> bool {
    match &c.range_end {
        None => compare_holds(ks.get(&c.key).as_ref(), c),
        Some(end) => {
            let range = KeyRange::Range { start: c.key.clone(), end: end.clone() };
            let (kvs, _) = ks.range(&range, Revision::MAX, 0, false, false);
            if kvs.is_empty() { compare_holds(None, c) } else { kvs.iter().all(|kv| compare_holds(Some(kv), c)) }
        }
    }
}

/// The branch every txn of the tree takes, decided before any op runs (etcd's
/// `compareToPath`): `nested` has one entry per nested txn of the chosen branch, in order.
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

fn decide<K: KeySpace + ?Sized>(ks: &mut K, req: &TxnRequest) -> Path {
    let succeeded = req.compare.iter().all(|c| compare_holds_in(ks, c));
    let ops = if succeeded { &req.success } else { &req.failure };
    let nested = if ops.iter().any(|op| matches!(op, TxnOp::Txn(_))) { decide_nested(ks, ops) } else { Vec::new() };
    Path { succeeded, nested }
}

/// The paths of the nested txns among `ops` (apart, so that a txn without any stays a
/// straight line).
#[cold]
#[inline(never)]
fn decide_nested<K: KeySpace + ?Sized>(ks: &mut K, ops: &[TxnOp]) -> Vec<Path> {
    ops.iter().filter_map(|op| if let TxnOp::Txn(t) = op { Some(decide(ks, t)) } else { None }).collect()
}

/// Refuses a read of a future or compacted revision anywhere in the tree, whichever branch
/// runs (without allocating: this is every write's path).
fn check_revisions(req: &TxnRequest, current: Revision, compacted: Revision) -> Result<(), StoreError> {
    for op in req.success.iter().chain(&req.failure) {
        match op {
            TxnOp::Range(RangeRequest { revision: Some(r), .. }) => {
                if *r > current {
                    return Err(StoreError::FutureRevision { requested: *r, current });
                }
                if *r != 0 && *r < compacted {
                    return Err(StoreError::Compacted { requested: *r, compact_revision: compacted });
                }
            }
            TxnOp::Txn(t) => check_revisions(t, current, compacted)?,
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a put with a lease that does not exist among the ops that run along `path`.
fn check_leases<K: KeySpace + ?Sized>(ks: &mut K, req: &TxnRequest, path: &Path) -> Result<(), StoreError> {
    let mut nested = path.nested.iter();
    for op in if path.succeeded { &req.success } else { &req.failure } {
        match op {
            TxnOp::Put(p) if p.lease != 0 && !ks.lease_exists(p.lease) => return Err(StoreError::LeaseNotFound(p.lease)),
            TxnOp::Txn(t) => {
                if let Some(p) = nested.next() {
                    check_leases(ks, t, p)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Evaluates `req` against `ks`. `alloc` hands out the txn's revision, called at most once and
/// only if the txn changes something; `current` is the revision reported by read-only txns
/// and the newest a range inside the txn may ask for; `compacted` the oldest.
pub fn eval<K: KeySpace + ?Sized>(
    ks: &mut K,
    req: &TxnRequest,
    alloc: &mut dyn FnMut() -> Revision,
    current: Revision,
    compacted: Revision,
) -> Result<Outcome, StoreError> {
    check_revisions(req, current, compacted)?;
    let path = decide(ks, req);
    check_leases(ks, req, &path)?;
    let mut out = Outcome { succeeded: path.succeeded, ..Default::default() };
    let mut rev: Option<Revision> = None;
    let ops = if path.succeeded { &req.success } else { &req.failure };
    let mut responses = run(ks, ops, &path, &mut out, &mut rev, alloc, current);
    let header = rev.unwrap_or(current);
    stamp(&mut responses, header);
    out.responses = responses;
    out.revision = rev;
    Ok(out)
}

/// Runs `ops` (and the chosen branches of their nested txns, along `path`), recording changes
/// and events in `out`.
#[inline]
fn run<K: KeySpace + ?Sized>(ks: &mut K, ops: &[TxnOp], path: &Path, out: &mut Outcome, rev: &mut Option<Revision>, alloc: &mut dyn FnMut() -> Revision, current: Revision) -> Vec<TxnOpResponse> {
    let mut nested = path.nested.iter();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let resp = match op {
            TxnOp::Range(r) => {
                let at = match r.revision {
                    None | Some(0) => Revision::MAX,
                    Some(x) => x,
                };
                let (kvs, count) = ks.range(&r.range, at, r.limit, r.keys_only, r.count_only);
                let more = r.more(count);
                TxnOpResponse::Range(RangeResponse { revision: 0, kvs, more, count })
            }
            TxnOp::Put(p) => {
                let r = *rev.get_or_insert_with(&mut *alloc);
                let (kv, prev) = ks.put(&p.key, &p.value, p.lease, r);
                out.changes.push(Change::Put { key: p.key.clone(), value: p.value.clone(), lease: p.lease });
                out.events.push(Event { kind: EventKind::Put, kv, prev_kv: prev.clone() });
                TxnOpResponse::Put(PutResponse { revision: r, prev_kv: if p.prev_kv { prev } else { None } })
            }
            TxnOp::Delete(d) => {
                // A delete that finds nothing takes no revision (as in etcd); peek first.
                let (_, count) = ks.range(&d.range, Revision::MAX, 1, true, false);
                let prevs = if count == 0 {
                    Vec::new()
                } else {
                    let r = *rev.get_or_insert_with(&mut *alloc);
                    ks.delete(&d.range, r)
                };
                for p in &prevs {
                    out.changes.push(Change::Delete { key: p.key.clone() });
                    out.events.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: p.key.clone(),
                            value: Bytes::new(),
                            create_revision: 0,
                            mod_revision: rev.unwrap(),
                            version: 0,
                            lease: 0,
                        },
                        prev_kv: Some(p.clone()),
                    });
                }
                TxnOpResponse::Delete(DeleteResponse {
                    revision: rev.unwrap_or(current),
                    deleted: prevs.len(),
                    prev_kvs: if d.prev_kv { prevs } else { Vec::new() },
                })
            }
            TxnOp::Txn(t) => run_nested(ks, t, nested.next().expect("a path entry for every nested txn of the chosen branch"), out, rev, alloc, current),
        };
        responses.push(resp);
    }
    responses
}

/// Runs a nested txn's chosen branch (apart from `run`: see `decide_nested`).
#[cold]
#[inline(never)]
fn run_nested<K: KeySpace + ?Sized>(ks: &mut K, t: &TxnRequest, p: &Path, out: &mut Outcome, rev: &mut Option<Revision>, alloc: &mut dyn FnMut() -> Revision, current: Revision) -> TxnOpResponse {
    let branch = if p.succeeded { &t.success } else { &t.failure };
    let responses = run(ks, branch, p, out, rev, alloc, current);
    TxnOpResponse::Txn(TxnResponse { revision: 0, succeeded: p.succeeded, responses })
}

/// Sets the header revision of reads, deletes and nested txns (known once the txn is done).
fn stamp(responses: &mut [TxnOpResponse], header: Revision) {
    for r in responses {
        match r {
            TxnOpResponse::Range(x) => x.revision = header,
            TxnOpResponse::Delete(x) => x.revision = header,
            TxnOpResponse::Txn(t) => {
                t.revision = header;
                stamp(&mut t.responses, header);
            }
            TxnOpResponse::Put(_) => {}
        }
    }
}
