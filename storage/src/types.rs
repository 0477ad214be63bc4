//! The store's request, response and event types: etcd v3's shapes, in Rust.

use bytes::Bytes;

/// A revision of the whole store. 0 means "none" (as in etcd: a key never written has
/// `mod_revision` 0 in compares).
pub type Revision = u64;

/// A lease identifier (etcd uses int64; 0 means "no lease").
pub type LeaseId = i64;

/// One key at one revision, as `range` returns it and as watch events carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// Number of writes since the key was (re)created; 1 after its first put.
    pub version: u64,
    pub lease: LeaseId,
}

/// Which keys a request covers: one key, a prefix, or `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    Key(Bytes),
    Prefix(Bytes),
    /// `[start, end)`; an empty `end` means "to the end of the keyspace" (etcd's `\0`).
    Range { start: Bytes, end: Bytes },
}

impl KeyRange {
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k.as_ref() == key,
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Range { start, end } => {
                key >= start.as_ref() && (end.is_empty() || key < end.as_ref())
            }
        }
    }

    /// The single key, when the range covers exactly one.
    pub fn single_key(&self) -> Option<&Bytes> {
        match self {
            KeyRange::Key(k) => Some(k),
            _ => None,
        }
    }

    /// Lower bound of the keys this range covers.
    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Key(k) | KeyRange::Prefix(k) => k,
            KeyRange::Range { start, .. } => start,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// Read at this revision; `None` reads at the newest visible revision.
    pub revision: Option<Revision>,
    /// At most this many keys (0 = no limit). `more` in the response says whether keys were cut.
    pub limit: usize,
    pub count_only: bool,
    pub keys_only: bool,
}

impl RangeRequest {
    pub fn key(key: impl Into<Bytes>) -> Self {
        Self::new(KeyRange::Key(key.into()))
    }
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        Self::new(KeyRange::Prefix(prefix.into()))
    }
    pub fn new(range: KeyRange) -> Self {
        RangeRequest { range, revision: None, limit: 0, count_only: false, keys_only: false }
    }
    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Whether a result of `count` keys was cut by the limit (never for count-only reads,
    /// which return no keys: etcd's `more`).
    pub fn more(&self, count: usize) -> bool {
        !self.count_only && self.limit != 0 && count > self.limit
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The revision the read was served at.
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    /// Number of keys in the range at that revision, ignoring `limit`.
    pub count: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Bytes,
    pub value: Bytes,
    pub lease: LeaseId,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResponse {
    pub revision: Revision,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    pub range: KeyRange,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteResponse {
    pub revision: Revision,
    pub deleted: usize,
    pub prev_kvs: Vec<KeyValue>,
}

/// What a compare looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    ModRevision(Revision),
    CreateRevision(Revision),
    Version(u64),
    Value(Bytes),
    /// The key's lease (0: none, or no key), as etcd compares it.
    Lease(LeaseId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// `key`'s target `op` value. A missing key has revisions and version 0 and compares of its
/// value are false (as in etcd). With `range_end`, every key of `[key, range_end)` (an empty
/// end: to the end of the keyspace) must hold; an empty range holds as a missing key does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Bytes,
    pub op: CompareOp,
    pub target: CompareTarget,
    pub range_end: Option<Bytes>,
}

impl Compare {
    /// A compare of one key.
    pub fn key(key: impl Into<Bytes>, op: CompareOp, target: CompareTarget) -> Compare {
        Compare { key: key.into(), op, target, range_end: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
    /// A txn within the txn (etcd's nested txns): its compares are decided with the outer
    /// ones, before any op runs.
    Txn(Box<TxnRequest>),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteResponse),
    Txn(TxnResponse),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// The store's revision after the txn (its own revision if it wrote).
    pub revision: Revision,
    pub succeeded: bool,
    pub responses: Vec<TxnOpResponse>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it. A delete's `kv` has the key and the deletion revision in
/// `mod_revision`, everything else zero, as etcd sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRequest {
    pub range: KeyRange,
    /// First revision to deliver; `None` (or 0) means "changes after now".
    pub start_revision: Option<Revision>,
    pub prev_kv: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: LeaseId,
    pub ttl_seconds: i64,
}

/// Memory accounting of the in-memory index, as `Store::stats` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub revision: Revision,
    pub compact_revision: Revision,
    /// Keys that currently exist.
    pub live_keys: u64,
    /// Keys with any retained history (live or deleted but not compacted away).
    pub indexed_keys: u64,
    /// Retained revisions over all keys.
    pub retained_revisions: u64,
    /// Bytes of key material held by the index.
    pub key_bytes: u64,
    /// Bytes of values held (shared with snapshot mappings where loaded from one).
    pub value_bytes: u64,
    /// Bytes of values kept only as history: overwritten or deleted, not yet compacted.
    pub history_value_bytes: u64,
    /// Estimated bytes of index structure (tree nodes and per-revision records), excluding
    /// keys and values.
    pub index_overhead_bytes: u64,
    pub leases: u64,
    pub watchers: u64,
    pub wal_bytes_since_snapshot: u64,
    pub snapshot_revision: Revision,
}

impl Stats {
    /// Index bytes per indexed key (overhead + key bytes), the figure `DESIGN.md` tracks.
    pub fn index_bytes_per_key(&self) -> f64 {
        if self.indexed_keys == 0 {
            return 0.0;
        }
        (self.index_overhead_bytes + self.key_bytes) as f64 / self.indexed_keys as f64
    }
}
