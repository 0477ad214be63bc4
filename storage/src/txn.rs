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

/// Checks what can be checked without the data: sizes, empty keys, and etcd's rule that
/// within one list of operations a put's key may not be put again nor fall in a delete's
/// range (deletes may overlap each other). Both branches are checked, whichever is taken.
pub fn validate(req: &TxnRequest, request_bytes_max: usize) -> Result<(), StoreError> {
    let mut bytes = 0usize;
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(StoreError::Invalid("compare on an empty key".into()));
        }
        bytes += c.key.len() + if let CompareTarget::Value(v) = &c.target { v.len() } else { 8 };
    }
    for ops in [&req.success, &req.failure] {
        let mut puts: Vec<&Bytes> = Vec::new();
        let mut deletes: Vec<&KeyRange> = Vec::new();
        for op in ops.iter() {
            match op {
                TxnOp::Put(p) => {
                    if p.key.is_empty() {
                        return Err(StoreError::Invalid("put of an empty key".into()));
                    }
                    bytes += p.key.len() + p.value.len();
                    puts.push(&p.key);
                }
                TxnOp::Delete(d) => {
                    bytes += d.range.start().len();
                    if d.range.start().is_empty() && matches!(d.range, KeyRange::Key(_)) {
                        return Err(StoreError::Invalid("delete of an empty key".into()));
                    }
                    deletes.push(&d.range);
                }
                TxnOp::Range(r) => bytes += r.range.start().len(),
            }
        }
        puts.sort();
        if puts.windows(2).any(|w| w[0] == w[1]) || puts.iter().any(|k| deletes.iter().any(|d| d.contains(k))) {
            return Err(StoreError::Invalid("duplicate key given in txn request".into()));
        }
    }
    if bytes > request_bytes_max {
        return Err(StoreError::TooLarge { bytes, max: request_bytes_max });
    }
    Ok(())
}

fn compare_holds(kv: Option<&KeyValue>, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord = match (&c.target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => kv.value.as_ref().cmp(v.as_ref()),
        (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |k| k.mod_revision).cmp(r),
        (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |k| k.create_revision).cmp(r),
        (CompareTarget::Version(v), kv) => kv.map_or(0, |k| k.version).cmp(v),
    };
    match c.op {
        CompareOp::Equal => ord == Ordering::Equal,
        CompareOp::NotEqual => ord != Ordering::Equal,
        CompareOp::Less => ord == Ordering::Less,
        CompareOp::Greater => ord == Ordering::Greater,
    }
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
    for op in req.success.iter().chain(&req.failure) {
        if let TxnOp::Range(RangeRequest { revision: Some(r), .. }) = op {
            if *r > current {
                return Err(StoreError::FutureRevision { requested: *r, current });
            }
            if *r != 0 && *r < compacted {
                return Err(StoreError::Compacted { requested: *r, compact_revision: compacted });
            }
        }
    }
    let succeeded = req.compare.iter().all(|c| compare_holds(ks.get(&c.key).as_ref(), c));
    let ops = if succeeded { &req.success } else { &req.failure };
    for op in ops {
        if let TxnOp::Put(p) = op
            && p.lease != 0 && !ks.lease_exists(p.lease) {
                return Err(StoreError::LeaseNotFound(p.lease));
            }
    }
    let mut out = Outcome { succeeded, ..Default::default() };
    let mut rev: Option<Revision> = None;
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
        };
        out.responses.push(resp);
    }
    let header = rev.unwrap_or(current);
    for r in &mut out.responses {
        match r {
            TxnOpResponse::Range(x) => x.revision = header,
            TxnOpResponse::Delete(x) => x.revision = header,
            TxnOpResponse::Put(_) => {}
        }
    }
    out.revision = rev;
    Ok(out)
}
