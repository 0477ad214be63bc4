//! One shard's multi-version index: plain data and plain functions, no I/O, no threads.
//!
//! Every key keeps the revisions of it that compaction has not dropped, oldest first. A read
//! at revision `R` takes the newest revision `<= R`; a tombstone there means "absent".
//! Revisions are assigned by the caller; within one shard they only grow.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use bytes::Bytes;

use crate::error::StoreError;
use crate::types::{Event, EventKind, KeyRange, KeyValue, LeaseGrant, LeaseId, Revision};

/// One revision of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mod_revision: Revision,
    pub create_revision: Revision,
    pub version: u64,
    pub lease: LeaseId,
    /// `None` is a tombstone (the key was deleted at `mod_revision`).
    pub value: Option<Bytes>,
}

impl Entry {
    fn to_kv(&self, key: &Bytes, keys_only: bool) -> Option<KeyValue> {
        let value = self.value.as_ref()?;
        Some(KeyValue {
            key: key.clone(),
            value: if keys_only { Bytes::new() } else { value.clone() },
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        })
    }
}

/// Size of the per-revision record, for the memory accounting in `Stats`.
pub const ENTRY_BYTES: u64 = std::mem::size_of::<Entry>() as u64;
/// Estimated per-key cost of the B-tree (key handle + history vector + node slack).
pub const KEY_OVERHEAD_BYTES: u64 =
    ((std::mem::size_of::<Bytes>() + std::mem::size_of::<Vec<Entry>>()) as u64) * 3 / 2;

#[derive(Default)]
pub struct Mvcc {
    keys: BTreeMap<Bytes, Vec<Entry>>,
    compact_revision: Revision,
    /// Leases that exist (replicated to every shard), with their TTL.
    pub leases: HashMap<LeaseId, i64>,
    /// Live keys of this shard attached to each lease.
    lease_keys: HashMap<LeaseId, HashSet<Bytes>>,
    live_keys: u64,
    retained_revisions: u64,
    key_bytes: u64,
    value_bytes: u64,
    /// Bytes of the values of every retained revision, live or not (so `all_value_bytes -
    /// value_bytes` is what the history costs, and what compaction by bytes bounds).
    all_value_bytes: u64,
}

/// A shard's index as a snapshot writes it (`Mvcc::snapshot_copy`): every retained revision
/// in key order, oldest first within a key; the leases sorted by id.
pub struct SnapshotCopy {
    pub entries: Vec<(Bytes, Entry)>,
    pub leases: Vec<(LeaseId, i64)>,
    pub compact_revision: Revision,
}

/// Result of a local range read.
pub struct LocalRange {
    pub kvs: Vec<KeyValue>,
    pub count: usize,
}

impl Mvcc {
    pub fn compact_revision(&self) -> Revision {
        self.compact_revision
    }

    /// The live value of `key` at the newest revision this shard has applied.
    pub fn get_latest(&self, key: &[u8]) -> Option<KeyValue> {
        let (k, h) = self.keys.get_key_value(key)?;
        h.last()?.to_kv(k, false)
    }

    /// The key's value at `rev`; the caller has checked `rev` against compaction.
    pub fn get_at(&self, key: &[u8], rev: Revision) -> Option<KeyValue> {
        let (k, h) = self.keys.get_key_value(key)?;
        at_revision(h, rev)?.to_kv(k, false)
    }

    /// Keys in `range` at `rev`, sorted, at most `limit` (0 = all) but counting all.
    pub fn range_at(
        &self,
        range: &KeyRange,
        rev: Revision,
        limit: usize,
        keys_only: bool,
        count_only: bool,
    ) -> LocalRange {
        let mut kvs = Vec::new();
        let mut count = 0;
        self.for_each_in(range, |k, h| {
            if let Some(e) = at_revision(h, rev)
                && e.value.is_some() {
                    count += 1;
                    if !count_only && (limit == 0 || kvs.len() < limit) {
                        kvs.extend(e.to_kv(k, keys_only));
                    }
                }
        });
        LocalRange { kvs, count }
    }

    fn for_each_in(&self, range: &KeyRange, mut f: impl FnMut(&Bytes, &Vec<Entry>)) {
        match range {
            KeyRange::Key(k) => {
                if let Some((k, h)) = self.keys.get_key_value(k.as_ref()) {
                    f(k, h)
                }
            }
            KeyRange::Prefix(p) => {
                let iter = self
                    .keys
                    .range::<[u8], _>((Bound::Included(p.as_ref()), Bound::Unbounded));
                for (k, h) in iter {
                    if !k.starts_with(p) {
                        break;
                    }
                    f(k, h)
                }
            }
            KeyRange::Range { start, end } => {
                let upper = if end.is_empty() {
                    Bound::Unbounded
                } else {
                    Bound::Excluded(end.as_ref())
                };
                if !end.is_empty() && start.as_ref() >= end.as_ref() {
                    return;
                }
                for (k, h) in self.keys.range::<[u8], _>((Bound::Included(start.as_ref()), upper)) {
                    f(k, h)
                }
            }
        }
    }

    /// Live keys in `range` at the newest revision.
    pub fn live_keys_in(&self, range: &KeyRange) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.for_each_in(range, |k, h| {
            if h.last().is_some_and(|e| e.value.is_some()) {
                out.push(k.clone())
            }
        });
        out
    }

    /// Writes `key = value` at `rev`. Returns the new and the previous live value.
    pub fn put(
        &mut self,
        key: Bytes,
        value: Bytes,
        lease: LeaseId,
        rev: Revision,
    ) -> (KeyValue, Option<KeyValue>) {
        use std::collections::btree_map::Entry as Slot;
        // One tree lookup: the slot serves both the previous value and the append.
        let (history, prev, stored_key) = match self.keys.entry(key) {
            Slot::Occupied(o) => {
                let stored_key = o.key().clone();
                let h = o.into_mut();
                let prev = h.last().and_then(|e| e.to_kv(&stored_key, false));
                (h, prev, stored_key)
            }
            Slot::Vacant(v) => {
                let stored_key = v.key().clone();
                self.key_bytes += stored_key.len() as u64;
                (v.insert(Vec::with_capacity(1)), None, stored_key)
            }
        };
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        debug_assert!(history.last().is_none_or(|l| l.mod_revision <= rev));
        history.push(Entry { mod_revision: rev, create_revision, version, lease, value: Some(value.clone()) });
        self.retained_revisions += 1;
        self.value_bytes += value.len() as u64;
        self.all_value_bytes += value.len() as u64;
        match &prev {
            Some(p) => {
                self.value_bytes -= p.value.len() as u64;
                self.detach_lease(p.lease, &stored_key);
            }
            None => self.live_keys += 1,
        }
        if lease != 0 {
            self.lease_keys.entry(lease).or_default().insert(stored_key.clone());
        }
        let kv = KeyValue { key: stored_key, value, create_revision, mod_revision: rev, version, lease };
        (kv, prev)
    }

    /// Deletes `key` at `rev` if it is live; returns its previous value.
    pub fn delete(&mut self, key: &Bytes, rev: Revision) -> Option<KeyValue> {
        let prev = self.get_latest(key)?;
        self.detach_lease(prev.lease, key);
        self.live_keys -= 1;
        self.value_bytes -= prev.value.len() as u64;
        self.push(
            key.clone(),
            Entry { mod_revision: rev, create_revision: 0, version: 0, lease: 0, value: None },
        );
        Some(prev)
    }

    fn push(&mut self, key: Bytes, entry: Entry) {
        self.retained_revisions += 1;
        match self.keys.get_mut(&key) {
            Some(h) => {
                debug_assert!(h.last().is_none_or(|l| l.mod_revision <= entry.mod_revision));
                h.push(entry)
            }
            None => {
                self.key_bytes += key.len() as u64;
                self.keys.insert(key, vec![entry]);
            }
        }
    }

    fn detach_lease(&mut self, lease: LeaseId, key: &Bytes) {
        if lease == 0 {
            return;
        }
        if let Some(set) = self.lease_keys.get_mut(&lease) {
            set.remove(key);
            if set.is_empty() {
                self.lease_keys.remove(&lease);
            }
        }
    }

    /// Live keys of this shard attached to `lease`, sorted (for a deterministic log record).
    /// A lease grant taken from the log: checked as the log's apply checks it, then held.
    pub fn apply_lease_grant(&mut self, id: LeaseId, ttl_seconds: i64) -> Result<LeaseGrant, StoreError> {
        if ttl_seconds <= 0 {
            Err(StoreError::Invalid(format!("lease TTL must be positive, got {ttl_seconds}")))
        } else if id <= 0 {
            Err(StoreError::Invalid("lease IDs are positive".into()))
        } else if self.leases.contains_key(&id) {
            Err(StoreError::LeaseExists(id))
        } else {
            self.leases.insert(id, ttl_seconds);
            Ok(LeaseGrant { id, ttl_seconds })
        }
    }

    /// A lease revocation taken from the log: its keys deleted, in key order, at one revision
    /// (`alloc`'s, asked only if it has keys; `current` otherwise). Returns that revision and
    /// the delete events.
    pub fn apply_lease_revoke(&mut self, id: LeaseId, current: Revision, alloc: impl FnOnce() -> Revision) -> Result<(Revision, Vec<Event>), StoreError> {
        if !self.leases.contains_key(&id) {
            return Err(StoreError::LeaseNotFound(id));
        }
        let mut keys = self.keys_of_lease(id);
        keys.sort();
        let rev = if keys.is_empty() { current } else { alloc() };
        let mut events = Vec::new();
        for k in &keys {
            if let Some(prev) = self.delete(k, rev) {
                let kv = KeyValue { key: k.clone(), value: Bytes::new(), create_revision: 0, mod_revision: rev, version: 0, lease: 0 };
                events.push(Event { kind: EventKind::Delete, kv, prev_kv: Some(prev) });
            }
        }
        self.leases.remove(&id);
        Ok((rev, events))
    }

    pub fn keys_of_lease(&self, lease: LeaseId) -> Vec<Bytes> {
        let mut keys: Vec<Bytes> =
            self.lease_keys.get(&lease).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        keys.sort();
        keys
    }

    /// Undoes every revision `>= from` of the given keys: a batch whose log write failed.
    pub fn rollback(&mut self, keys: &[Bytes], from: Revision) {
        for key in keys {
            let Some(h) = self.keys.get_mut(key.as_ref()) else { continue };
            let before = h.last().cloned();
            while h.last().is_some_and(|e| e.mod_revision >= from) {
                let e = h.pop().expect("checked");
                self.retained_revisions -= 1;
                self.all_value_bytes -= e.value.as_ref().map_or(0, |v| v.len() as u64);
            }
            let after = h.last().cloned();
            if h.is_empty() {
                self.key_bytes -= key.len() as u64;
                self.keys.remove(key.as_ref());
            }
            // Undo the live-key, value and lease accounting of the dropped head.
            if let Some(b) = before.as_ref().filter(|b| b.value.is_some()) {
                self.live_keys -= 1;
                self.value_bytes -= b.value.as_ref().map_or(0, |v| v.len() as u64);
                self.detach_lease(b.lease, key);
            }
            if let Some(a) = after.as_ref().filter(|a| a.value.is_some()) {
                self.live_keys += 1;
                self.value_bytes += a.value.as_ref().map_or(0, |v| v.len() as u64);
                if a.lease != 0 {
                    self.lease_keys.entry(a.lease).or_default().insert(key.clone());
                }
            }
        }
    }

    /// Drops history older than `rev`: afterwards reads at `rev` and later still work, reads
    /// before it are refused by the caller.
    pub fn compact(&mut self, rev: Revision) {
        if rev <= self.compact_revision {
            return;
        }
        self.compact_revision = rev;
        let mut removed_keys = Vec::new();
        for (k, h) in self.keys.iter_mut() {
            // Index of the newest entry <= rev.
            let idx = h.partition_point(|e| e.mod_revision <= rev);
            if idx == 0 {
                continue;
            }
            let newest_le = idx - 1;
            let drop = if h[newest_le].value.is_none() { newest_le + 1 } else { newest_le };
            if drop > 0 {
                self.all_value_bytes -= h.drain(..drop).map(|e| e.value.map_or(0, |v| v.len() as u64)).sum::<u64>();
                self.retained_revisions -= drop as u64;
            }
            if h.is_empty() {
                removed_keys.push(k.clone());
            }
        }
        for k in removed_keys {
            self.key_bytes -= k.len() as u64;
            self.keys.remove(&k);
        }
    }

    /// Sets the compaction floor without dropping anything (recovery from a snapshot that was
    /// taken after a compaction).
    pub fn set_compact_revision(&mut self, rev: Revision) {
        self.compact_revision = self.compact_revision.max(rev);
    }

    /// The events of keys in `range` with revision `>= from`, in revision order: what a new
    /// watcher from an old revision must first catch up on.
    pub fn events_since(&self, range: &KeyRange, from: Revision, prev_kv: bool) -> Vec<Event> {
        let mut events = Vec::new();
        self.for_each_in(range, |k, h| {
            let start = h.partition_point(|e| e.mod_revision < from);
            for i in start..h.len() {
                let prev = if prev_kv && i > 0 { h[i - 1].to_kv(k, false) } else { None };
                events.push(event_of(k, &h[i], prev));
            }
        });
        events.sort_by_key(|e| e.kv.mod_revision);
        events
    }

    /// What a snapshot of this shard writes, copied so that the shard can go on while it is
    /// written: one record per retained revision in one vector (a reference count per key and
    /// value, no allocation per key).
    pub fn snapshot_copy(&self) -> SnapshotCopy {
        let mut entries = Vec::with_capacity(self.retained_revisions as usize);
        self.for_each_entry(|k, e| entries.push((k.clone(), e.clone())));
        let mut leases: Vec<(LeaseId, i64)> = self.leases.iter().map(|(id, ttl)| (*id, *ttl)).collect();
        leases.sort();
        SnapshotCopy { entries, leases, compact_revision: self.compact_revision }
    }

    /// Visits every retained entry, key by key, oldest first.
    pub fn for_each_entry(&self, mut f: impl FnMut(&Bytes, &Entry)) {
        for (k, h) in &self.keys {
            for e in h {
                f(k, e)
            }
        }
    }

    /// Builds an index from keys in ascending order, each with its history oldest first
    /// (snapshot loading: one bulk build instead of a million inserts).
    pub fn from_sorted(keys: Vec<(Bytes, Vec<Entry>)>) -> Mvcc {
        let mut m = Mvcc::default();
        for (k, h) in &keys {
            m.key_bytes += k.len() as u64;
            m.retained_revisions += h.len() as u64;
            m.all_value_bytes += h.iter().map(|e| e.value.as_ref().map_or(0, |v| v.len() as u64)).sum::<u64>();
            if let Some(Entry { value: Some(v), lease, .. }) = h.last() {
                m.live_keys += 1;
                m.value_bytes += v.len() as u64;
                if *lease != 0 {
                    m.lease_keys.entry(*lease).or_default().insert(k.clone());
                }
            }
        }
        debug_assert!(keys.windows(2).all(|w| w[0].0 < w[1].0));
        m.keys = keys.into_iter().collect();
        m
    }

    /// Bytes of the values kept only as history (overwritten or deleted, not yet compacted).
    pub fn history_value_bytes(&self) -> u64 {
        self.all_value_bytes - self.value_bytes
    }

    pub fn stats(&self) -> MvccStats {
        MvccStats {
            live_keys: self.live_keys,
            indexed_keys: self.keys.len() as u64,
            retained_revisions: self.retained_revisions,
            key_bytes: self.key_bytes,
            value_bytes: self.value_bytes,
            history_value_bytes: self.all_value_bytes - self.value_bytes,
            index_overhead_bytes: self.keys.len() as u64 * KEY_OVERHEAD_BYTES
                + self.retained_revisions * ENTRY_BYTES,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MvccStats {
    pub live_keys: u64,
    pub indexed_keys: u64,
    pub retained_revisions: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
    /// Values of the revisions that are no longer live (overwritten or deleted), kept until
    /// compaction.
    pub history_value_bytes: u64,
    pub index_overhead_bytes: u64,
}

fn at_revision(h: &[Entry], rev: Revision) -> Option<&Entry> {
    let idx = h.partition_point(|e| e.mod_revision <= rev);
    if idx == 0 { None } else { Some(&h[idx - 1]) }
}

/// The watch event for `entry` of `key`.
pub fn event_of(key: &Bytes, entry: &Entry, prev_kv: Option<KeyValue>) -> Event {
    match &entry.value {
        Some(_) => Event {
            kind: EventKind::Put,
            kv: entry.to_kv(key, false).expect("live entry"),
            prev_kv,
        },
        None => Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.clone(),
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: entry.mod_revision,
                version: 0,
                lease: 0,
            },
            prev_kv,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn put_counts_versions_and_keeps_create_revision_until_delete() {
        let mut m = Mvcc::default();
        m.put(b("a"), b("1"), 0, 1);
        let (kv, prev) = m.put(b("a"), b("2"), 0, 2);
        assert_eq!((kv.create_revision, kv.version, kv.mod_revision), (1, 2, 2));
        assert_eq!(prev.unwrap().value, b("1"));
        m.delete(&b("a"), 3);
        let (kv, prev) = m.put(b("a"), b("3"), 0, 4);
        assert!(prev.is_none());
        assert_eq!((kv.create_revision, kv.version), (4, 1));
        assert_eq!(m.get_at(b"a", 2).unwrap().value, b("2"));
        assert!(m.get_at(b"a", 3).is_none());
    }

    #[test]
    fn compaction_keeps_reads_at_the_compact_revision() {
        let mut m = Mvcc::default();
        m.put(b("a"), b("1"), 0, 1);
        m.put(b("a"), b("2"), 0, 2);
        m.put(b("b"), b("1"), 0, 3);
        m.delete(&b("b"), 4);
        m.put(b("a"), b("3"), 0, 5);
        m.compact(4);
        assert_eq!(m.get_at(b"a", 4).unwrap().value, b("2"));
        assert!(m.get_at(b"b", 4).is_none());
        assert_eq!(m.stats().indexed_keys, 1, "b's tombstone at 4 is compacted away");
        assert_eq!(m.stats().retained_revisions, 2);
    }

    #[test]
    fn rollback_restores_the_previous_head_and_its_accounting() {
        let mut m = Mvcc::default();
        m.leases.insert(7, 10);
        m.put(b("a"), b("1"), 7, 1);
        m.put(b("a"), b("22"), 0, 2);
        m.put(b("c"), b("1"), 0, 3);
        m.rollback(&[b("a"), b("c")], 2);
        assert_eq!(m.get_latest(b"a").unwrap().value, b("1"));
        assert!(m.get_latest(b"c").is_none());
        assert_eq!(m.keys_of_lease(7), vec![b("a")]);
        let s = m.stats();
        assert_eq!((s.live_keys, s.value_bytes, s.indexed_keys), (1, 1, 1));
    }

    #[test]
    fn events_since_replays_history_in_revision_order_with_prev_kv() {
        let mut m = Mvcc::default();
        m.put(b("b"), b("1"), 0, 1);
        m.put(b("a"), b("1"), 0, 2);
        m.put(b("b"), b("2"), 0, 3);
        m.delete(&b("a"), 4);
        let ev = m.events_since(&KeyRange::Prefix(Bytes::new()), 2, true);
        let revs: Vec<_> = ev.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, vec![2, 3, 4]);
        assert_eq!(ev[1].prev_kv.as_ref().unwrap().value, b("1"));
        assert_eq!(ev[2].kind, EventKind::Delete);
    }
}
