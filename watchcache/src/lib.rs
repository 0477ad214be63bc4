//! The watch cache: one per resource type, fed by exactly one store watch, serving lists and
//! watches from memory.
//!
//! **What it holds.** The current objects of one key prefix in a persistent ordered map
//! (`imbl::OrdMap`: a snapshot for a list is an O(1) clone, so a paginated list pages over one
//! consistent snapshot without copying it), each as its JSON bytes (`bytes::Bytes`; the
//! store's own, shared, with the resourceVersion's digits written in when served: `Object`)
//! plus the few fields the filters and indexes need; and a ring of
//! recent events bounded by count and by age.
//!
//! **Invariants.**
//! - The cache's revision only grows; every event at or below it has been applied and fanned
//!   out, in order, exactly once.
//! - Each event is encoded once per encoding (the JSON `WatchEvent` line), whatever the number
//!   of watchers: they all get the same `Bytes`.
//! - A watcher's queue is bounded; a watcher that falls behind is closed with the revision to
//!   resume from. Ingestion never waits for a watcher.
//! - Watchers with a node name (every kubelet) or a namespace are found through indexes, so an
//!   event costs O(matching watchers), not O(all watchers).
//!
//! **Where to start reading.** [`Cache::start`] (list, then one store watch), `ingest`
//! (apply, ring, fan-out), [`Cache::watch`] (catch-up from the ring, then live).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use storage::{EventKind, KeyRange, KeyValue, RangeRequest, Store, WatchRequest};
use tokio::sync::mpsc;

/// Fields of an object the filters and indexes use, kept small: namespace and node names
/// are interned (shared by every object that has them), the rest sized exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub namespace: Option<Arc<str>>,
    pub name: Box<str>,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    pub node_name: Option<Arc<str>>,
}

/// One shared copy of a string that many objects carry (namespace and node names). Entries
/// no object holds any more are dropped when the table has doubled since the last sweep.
pub fn intern(s: &str) -> Arc<str> {
    use std::collections::HashSet;
    static T: OnceLock<std::sync::Mutex<(HashSet<Arc<str>>, usize)>> = OnceLock::new();
    let mut t = T.get_or_init(|| std::sync::Mutex::new((HashSet::new(), 1024))).lock().unwrap();
    if let Some(x) = t.0.get(s) {
        return x.clone();
    }
    if t.0.len() >= t.1 {
        t.0.retain(|x| Arc::strong_count(x) > 1);
        t.1 = (t.0.len() * 2).max(1024);
    }
    let a: Arc<str> = Arc::from(s);
    t.0.insert(a.clone());
    a
}

/// One object at one revision.
///
/// Its JSON is kept as the store keeps it where it can be: the stored bytes without the
/// resourceVersion's digits, which belong at a known offset (`with_revision_at`). The cache
/// then shares the store's allocation instead of holding a second copy of every revision it
/// keeps (the current objects and the ring), and the digits are written in when the JSON is.
#[derive(Debug)]
pub struct Object {
    pub key: Bytes,
    pub revision: u64,
    body: Bytes,
    /// Where the revision's digits go in `body`; none: `body` is the whole JSON.
    revision_at: Option<u32>,
    pub meta: Meta,
}

impl Object {
    /// An object whose JSON is `json`, resourceVersion included.
    pub fn new(key: Bytes, revision: u64, json: Bytes, meta: Meta) -> Object {
        Object { key, revision, body: json, revision_at: None, meta }
    }

    /// An object whose JSON is `body` with `revision`'s digits inserted at byte `at` (at most
    /// `body.len()`, else the digits go at the end).
    pub fn with_revision_at(key: Bytes, revision: u64, body: Bytes, at: usize, meta: Meta) -> Object {
        let at = at.min(body.len()).min(u32::MAX as usize) as u32;
        Object { key, revision, body, revision_at: Some(at), meta }
    }

    /// Appends the object's JSON to `out`.
    pub fn write_json(&self, out: &mut impl BufMut) {
        match self.revision_at {
            None => out.put_slice(&self.body),
            Some(at) => {
                let (head, tail) = self.body.split_at(at as usize);
                out.put_slice(head);
                out.put_slice(itoa::Buffer::new().format(self.revision).as_bytes());
                out.put_slice(tail);
            }
        }
    }

    /// The object's JSON (a copy when the digits are to be written in).
    pub fn json(&self) -> Bytes {
        match self.revision_at {
            None => self.body.clone(),
            Some(_) => {
                let mut b = BytesMut::with_capacity(self.json_len());
                self.write_json(&mut b);
                b.freeze()
            }
        }
    }

    /// The length of `json()`.
    pub fn json_len(&self) -> usize {
        self.body.len() + self.revision_at.map_or(0, |_| itoa::Buffer::new().format(self.revision).len())
    }
}

/// Turns a stored key-value into an object (the API server's decoding); `None` skips it.
pub type Decode = Arc<dyn Fn(&KeyValue) -> Option<Object> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, shared by every watcher that receives it.
#[derive(Debug)]
pub struct Event {
    pub revision: u64,
    pub kind: EventType,
    /// The object after the change (for a delete: the last state, at the delete's revision).
    pub object: Arc<Object>,
    /// The object before the change, if it existed.
    pub prev: Option<Arc<Object>>,
    at: Instant,
    line: std::sync::Mutex<Line>,
    table_line: OnceLock<Bytes>,
    metrics: Arc<Metrics>,
}

/// An event's shared watch line: made by the first watcher that asks, kept while the event is
/// among the ring's newest `Config::ring_lines_max`, then dropped (the object stays).
#[derive(Debug)]
enum Line {
    Unmade,
    Made(Bytes),
    Dropped,
}

impl Drop for Event {
    fn drop(&mut self) {
        self.drop_line();
    }
}

impl Event {
    /// `{"type":"...","object":...}\n`, encoded once for every watcher while the event is
    /// recent; for a watcher that far behind, encoded for it alone (and counted again).
    pub fn json_line(&self) -> Bytes {
        let mut l = self.line.lock().unwrap();
        if let Line::Made(b) = &*l {
            return b.clone();
        }
        crate::metrics().encodings.fetch_add(1, Ordering::Relaxed);
        self.metrics.encodings.fetch_add(1, Ordering::Relaxed);
        let b = encode_object_line(self.kind.as_str(), &self.object);
        if matches!(*l, Line::Unmade) {
            for m in [crate::metrics(), &*self.metrics] {
                m.line_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            *l = Line::Made(b.clone());
        }
        b
    }

    /// Frees the shared line (a copy of the object): the event has left the recent window.
    fn drop_line(&self) {
        let mut l = self.line.lock().unwrap_or_else(|e| e.into_inner());
        if let Line::Made(b) = std::mem::replace(&mut *l, Line::Dropped) {
            for m in [crate::metrics(), &*self.metrics] {
                m.line_bytes.fetch_sub(b.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

impl Event {
    /// The event in a second encoding (kubectl's Table rows), made by `encode` once for every
    /// watcher that asks for it.
    pub fn table_line(&self, encode: impl FnOnce() -> Bytes) -> Bytes {
        self.table_line
            .get_or_init(|| {
                self.metrics.encodings.fetch_add(1, Ordering::Relaxed);
                encode()
            })
            .clone()
    }
}

/// A WatchEvent line around an object's JSON, written straight into the line.
pub fn encode_object_line(ty: &str, object: &Object) -> Bytes {
    let mut b = BytesMut::with_capacity(object.json_len() + 32);
    b.put_slice(b"{\"type\":\"");
    b.put_slice(ty.as_bytes());
    b.put_slice(b"\",\"object\":");
    object.write_json(&mut b);
    b.put_slice(b"}\n");
    b.freeze()
}

/// A WatchEvent line around already-encoded object JSON.
pub fn encode_line(ty: &str, object_json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(object_json.len() + 32);
    b.put_slice(b"{\"type\":\"");
    b.put_slice(ty.as_bytes());
    b.put_slice(b"\",\"object\":");
    b.put_slice(object_json);
    b.put_slice(b"}\n");
    b.freeze()
}

/// Named limits of one cache.
#[derive(Clone, Debug)]
pub struct Config {
    /// Events kept for watchers that resume from a past revision.
    pub ring_events_max: usize,
    /// ... holding at most this many bytes of objects.
    pub ring_bytes_max: u64,
    /// ... and no older than this.
    pub ring_age_max: Duration,
    /// The newest events that keep their encoded watch line (made once for all watchers, a
    /// copy of the object plus a few bytes); older ones drop it, and a watcher that far behind
    /// encodes its own. As many as a watcher may have queued before it is closed as slow, so
    /// a watcher that keeps up always gets the shared line.
    pub ring_lines_max: usize,
    /// Events queued per watcher before it is closed as too slow.
    pub watcher_queue_events_max: usize,
}

impl Default for Config {
    fn default() -> Config {
        // A watcher disconnected for up to 5.5 minutes resumes without a relist, within the
        // newest 512 MiB of objects (about 150,000 pod events: a minute of the density run's
        // writes, far longer at a steady cluster's) and lines for the newest 10,000 events. A
        // watch from an older revision is refused here (`TooOld`); the API server answers it
        // 410 Gone, or, asked with `history=true`, serves it from the store's history (410 once
        // compacted) and moves it to the cache once the ring reaches back to it. Kubernetes
        // keeps less (at most 100 Ki events, about 75 s). The objects are the store's own bytes
        // (`Object`), so what the ring costs is the revisions the store no longer keeps: with
        // 4 GiB the density run's ring kept every event of the run, 230 MB more at its peak
        // than with 512 MiB, at the same throughput (bench/RESULTS.md).
        Config {
            ring_events_max: 1_500_000,
            ring_bytes_max: 512 << 20,
            ring_lines_max: 10_000,
            ring_age_max: Duration::from_secs(5 * 60 + 30),
            watcher_queue_events_max: 10_000,
        }
    }
}

/// Counters of one cache, or of all caches together (`metrics()`).
#[derive(Default, Debug)]
pub struct Metrics {
    pub events_in: AtomicU64,
    pub events_out: AtomicU64,
    pub encodings: AtomicU64,
    pub evictions: AtomicU64,
    pub watchers: AtomicU64,
    pub ring_events: AtomicU64,
    pub ring_bytes: AtomicU64,
    /// Bytes of shared watch lines kept (at most `ring_lines_max` events' worth).
    pub line_bytes: AtomicU64,
    /// Event-to-delivery latency (ingested by the cache -> handed to a watcher), by bucket.
    pub delivery_buckets: [AtomicU64; DELIVERY_BUCKETS_S.len()],
    pub delivery_count: AtomicU64,
    pub delivery_sum_us: AtomicU64,
}

/// Upper bounds, in seconds, of the delivery latency histogram (100 µs to 10 s).
pub const DELIVERY_BUCKETS_S: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0];

impl Metrics {
    fn observe_delivery(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in DELIVERY_BUCKETS_S.iter().enumerate() {
            if s <= *b {
                self.delivery_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.delivery_count.fetch_add(1, Ordering::Relaxed);
        self.delivery_sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The totals over all caches.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

/// Each live cache's metrics, by resource name.
fn registry() -> &'static std::sync::Mutex<Vec<(String, std::sync::Weak<Metrics>)>> {
    static R: OnceLock<std::sync::Mutex<Vec<(String, std::sync::Weak<Metrics>)>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Prometheus text for every cache, labelled by resource.
pub fn render_metrics() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut reg = registry().lock().unwrap();
    reg.retain(|(_, w)| w.strong_count() > 0);
    let families: [(&str, &str, fn(&Metrics) -> u64); 8] = [
        ("watchcache_events_in_total", "counter", |m| m.events_in.load(Ordering::Relaxed)),
        ("watchcache_events_out_total", "counter", |m| m.events_out.load(Ordering::Relaxed)),
        ("watchcache_event_encodings_total", "counter", |m| m.encodings.load(Ordering::Relaxed)),
        ("watchcache_slow_watcher_evictions_total", "counter", |m| m.evictions.load(Ordering::Relaxed)),
        ("watchcache_watchers", "gauge", |m| m.watchers.load(Ordering::Relaxed)),
        ("watchcache_ring_events", "gauge", |m| m.ring_events.load(Ordering::Relaxed)),
        ("watchcache_ring_object_bytes", "gauge", |m| m.ring_bytes.load(Ordering::Relaxed)),
        ("watchcache_ring_line_bytes", "gauge", |m| m.line_bytes.load(Ordering::Relaxed)),
    ];
    for (name, ty, get) in families {
        let _ = writeln!(out, "# TYPE {name} {ty}");
        for (res, w) in reg.iter() {
            if let Some(m) = w.upgrade() {
                let _ = writeln!(out, "{name}{{resource=\"{res}\"}} {}", get(&m));
            }
        }
    }
    let _ = writeln!(out, "# TYPE watchcache_event_delivery_seconds histogram");
    for (res, w) in reg.iter() {
        if let Some(m) = w.upgrade() {
            for (i, b) in DELIVERY_BUCKETS_S.iter().enumerate() {
                let _ = writeln!(out, "watchcache_event_delivery_seconds_bucket{{resource=\"{res}\",le=\"{b}\"}} {}", m.delivery_buckets[i].load(Ordering::Relaxed));
            }
            let n = m.delivery_count.load(Ordering::Relaxed);
            let _ = writeln!(out, "watchcache_event_delivery_seconds_bucket{{resource=\"{res}\",le=\"+Inf\"}} {n}");
            let _ = writeln!(out, "watchcache_event_delivery_seconds_sum{{resource=\"{res}\"}} {}", m.delivery_sum_us.load(Ordering::Relaxed) as f64 / 1e6);
            let _ = writeln!(out, "watchcache_event_delivery_seconds_count{{resource=\"{res}\"}} {n}");
        }
    }
    out
}

/// Which events a watcher wants: the indexed parts (namespace, node name) and a predicate
/// over the object (label and other field selectors), evaluated on the object before and
/// after each change.
#[derive(Clone)]
pub struct Filter {
    pub namespace: Option<String>,
    pub node_name: Option<String>,
    pub predicate: Arc<dyn Fn(&Object) -> bool + Send + Sync>,
    /// Identifies the predicate (e.g. the selector's text): watchers with the same key share
    /// one evaluation per event. `None`: evaluated per watcher.
    pub key: Option<Arc<str>>,
}

impl Filter {
    pub fn everything() -> Filter {
        Filter { namespace: None, node_name: None, predicate: Arc::new(|_| true), key: Some(Arc::from("")) }
    }

    /// A filter on indexed fields and a predicate identified by `key`.
    pub fn new(namespace: Option<String>, node_name: Option<String>, key: Option<Arc<str>>, predicate: Arc<dyn Fn(&Object) -> bool + Send + Sync>) -> Filter {
        Filter { namespace, node_name, predicate, key }
    }

    fn indexed_match(&self, o: &Object) -> bool {
        self.namespace.as_deref().is_none_or(|ns| o.meta.namespace.as_deref() == Some(ns))
            && self.node_name.as_deref().is_none_or(|n| o.meta.node_name.as_deref() == Some(n))
    }

    /// `wants`, with predicate results shared between watchers of the same key for one event.
    fn wants_memo(&self, e: &Event, memo: &mut HashMap<Arc<str>, (bool, bool)>) -> bool {
        let idx_new = self.indexed_match(&e.object);
        let idx_old = e.prev.as_ref().is_some_and(|p| self.indexed_match(p));
        if !idx_new && !idx_old {
            return false;
        }
        let (pn, po) = match &self.key {
            Some(k) => *memo.entry(k.clone()).or_insert_with(|| {
                ((self.predicate)(&e.object), e.prev.as_ref().is_some_and(|p| (self.predicate)(p)))
            }),
            None => ((self.predicate)(&e.object), e.prev.as_ref().is_some_and(|p| (self.predicate)(p))),
        };
        (idx_new && pn) || (idx_old && po)
    }

    pub fn matches(&self, o: &Object) -> bool {
        self.indexed_match(o) && (self.predicate)(o)
    }

    fn wants(&self, e: &Event) -> bool {
        self.matches(&e.object) || e.prev.as_ref().is_some_and(|p| self.matches(p))
    }
}

/// Why a cache watch ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("revision {requested} is older than the cache's history (oldest {oldest})")]
    TooOld { requested: u64, oldest: u64 },
    #[error("the watcher fell {queue_max} events behind and was closed; resume from revision {resume}")]
    Slow { resume: u64, queue_max: usize },
    #[error("the cache stopped: {0}")]
    Stopped(String),
    /// A consistent read could not get a read index (a replica without a quorum).
    #[error("{0}")]
    Unavailable(String),
}

struct Slot {
    filter: Filter,
    tx: mpsc::Sender<Arc<Event>>,
    /// Set (to the first revision not delivered) when the watcher is closed as too slow.
    evicted: Arc<AtomicU64>,
}

struct State {
    objects: imbl::OrdMap<Bytes, Arc<Object>>,
    ring: VecDeque<Arc<Event>>,
    /// Every event at or below this is applied.
    revision: u64,
    /// The oldest revision a watch may start after (events after it are all in the ring).
    horizon: u64,
    next_id: u64,
    watchers: HashMap<u64, Slot>,
    by_node: HashMap<String, Vec<u64>>,
    by_namespace: HashMap<String, Vec<u64>>,
    unindexed: Vec<u64>,
    stopped: Option<String>,
    /// Bytes of the objects the ring's events hold (shared with current objects when live).
    ring_bytes: u64,
}

impl State {
    fn index(&mut self, id: u64, f: &Filter) {
        match (&f.node_name, &f.namespace) {
            (Some(n), _) => self.by_node.entry(n.clone()).or_default().push(id),
            (None, Some(ns)) => self.by_namespace.entry(ns.clone()).or_default().push(id),
            (None, None) => self.unindexed.push(id),
        }
    }

    fn unindex(&mut self, id: u64, m: &Metrics) {
        let Some(slot) = self.watchers.remove(&id) else { return };
        metrics().watchers.fetch_sub(1, Ordering::Relaxed);
        m.watchers.fetch_sub(1, Ordering::Relaxed);
        let drop_id = |v: &mut Vec<u64>| v.retain(|x| *x != id);
        match (&slot.filter.node_name, &slot.filter.namespace) {
            (Some(n), _) => {
                if let Some(v) = self.by_node.get_mut(n) {
                    drop_id(v);
                    if v.is_empty() {
                        self.by_node.remove(n);
                    }
                }
            }
            (None, Some(ns)) => {
                if let Some(v) = self.by_namespace.get_mut(ns) {
                    drop_id(v);
                    if v.is_empty() {
                        self.by_namespace.remove(ns);
                    }
                }
            }
            (None, None) => drop_id(&mut self.unindexed),
        }
    }

    /// Watchers that may want an event: by the node and namespace of its objects, plus the
    /// unindexed ones.
    fn candidates(&self, e: &Event, out: &mut Vec<u64>) {
        out.clear();
        out.extend_from_slice(&self.unindexed);
        for o in std::iter::once(&e.object).chain(e.prev.iter()) {
            if let Some(n) = o.meta.node_name.as_deref() {
                out.extend(self.by_node.get(n).into_iter().flatten());
            }
            if let Some(ns) = o.meta.namespace.as_deref() {
                out.extend(self.by_namespace.get(ns).into_iter().flatten());
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// Snapshots kept for paginated lists: at most this many, none older than `SNAPSHOT_AGE_MAX`.
pub const SNAPSHOTS_KEPT_MAX: usize = 8;
pub const SNAPSHOT_AGE_MAX: Duration = Duration::from_secs(60);

struct Shared {
    cfg: Config,
    metrics: Arc<Metrics>,
    /// Snapshots that paginated lists are paging over, newest last.
    kept: std::sync::Mutex<VecDeque<(u64, Instant, imbl::OrdMap<Bytes, Arc<Object>>)>>,
    state: RwLock<State>,
    revision_tx: tokio::sync::watch::Sender<u64>,
    store: Store,
}

/// One resource type's cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    shared: Arc<Shared>,
}

impl Cache {
    /// Lists `prefix` from the store, then follows it with one store watch.
    pub async fn start(store: Store, prefix: Bytes, decode: Decode, cfg: Config) -> Result<Cache, storage::StoreError> {
        let listed = store.range(RangeRequest::new(KeyRange::Prefix(prefix.clone()))).await?;
        let mut objects = imbl::OrdMap::new();
        for kv in &listed.kvs {
            if let Some(o) = decode(kv) {
                objects.insert(kv.key.clone(), Arc::new(o));
            }
        }
        let state = State {
            objects,
            ring: VecDeque::new(),
            revision: listed.revision,
            horizon: listed.revision,
            next_id: 1,
            watchers: HashMap::new(),
            by_node: HashMap::new(),
            by_namespace: HashMap::new(),
            unindexed: Vec::new(),
            stopped: None,
            ring_bytes: 0,
        };
        let (revision_tx, _) = tokio::sync::watch::channel(listed.revision);
        let metrics = Arc::new(Metrics::default());
        let name = String::from_utf8_lossy(&prefix).trim_matches('/').to_string();
        registry().lock().unwrap().push((name, Arc::downgrade(&metrics)));
        let shared = Arc::new(Shared { cfg, metrics, kept: Default::default(), state: RwLock::new(state), revision_tx, store: store.clone() });
        let watcher = store.watch(WatchRequest { range: KeyRange::Prefix(prefix.clone()), start_revision: Some(listed.revision + 1), prev_kv: true });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(ingest(weak, watcher, decode, prefix));
        Ok(Cache { shared })
    }

    /// The cache's revision: everything at or below it is in the cache.
    pub fn revision(&self) -> u64 {
        self.shared.state.read().unwrap().revision
    }

    /// Waits until the cache has caught up with the store's current revision (a consistent
    /// read without reading the store, as KEP-2340 does). Returns the revision reached.
    pub async fn wait_consistent(&self, timeout: Duration) -> Result<u64, WatchError> {
        // On a replica this is a read index: the revision every write acknowledged anywhere
        // before this call has reached here.
        let target = match tokio::time::timeout(timeout, self.shared.store.consistent_revision()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(WatchError::Unavailable(e.to_string())),
            Err(_) => return Err(WatchError::Unavailable(format!("no read index within {timeout:?}"))),
        };
        let mut rx = self.shared.revision_tx.subscribe();
        let wait = async {
            loop {
                if let Some(why) = &self.shared.state.read().unwrap().stopped {
                    return Err(WatchError::Stopped(why.clone()));
                }
                let r = *rx.borrow_and_update();
                if r >= target {
                    return Ok(r);
                }
                if rx.changed().await.is_err() {
                    return Err(WatchError::Stopped("cache ingestion ended".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| Err(WatchError::Stopped(format!("cache did not reach revision {target} within {timeout:?}"))))
    }

    /// The current objects and their revision: an O(1) snapshot.
    pub fn snapshot(&self) -> (u64, imbl::OrdMap<Bytes, Arc<Object>>) {
        let s = self.shared.state.read().unwrap();
        (s.revision, s.objects.clone())
    }

    /// Watches from `after` (events with a greater revision), or from now if `None`.
    /// Registration and catch-up from the ring happen under the lock ingestion takes, so no
    /// event is missed or repeated.
    pub fn watch(&self, after: Option<u64>, filter: Filter) -> Result<CacheWatcher, WatchError> {
        let mut s = self.shared.state.write().unwrap();
        if let Some(why) = &s.stopped {
            return Err(WatchError::Stopped(why.clone()));
        }
        let after = after.unwrap_or(s.revision);
        if after < s.horizon {
            return Err(WatchError::TooOld { requested: after, oldest: s.horizon });
        }
        let start = s.ring.partition_point(|e| e.revision <= after);
        let backlog: VecDeque<Arc<Event>> = s.ring.iter().skip(start).filter(|e| filter.wants(e)).cloned().collect();
        let id = s.next_id;
        s.next_id += 1;
        let (tx, rx) = mpsc::channel(self.shared.cfg.watcher_queue_events_max);
        let evicted = Arc::new(AtomicU64::new(0));
        s.index(id, &filter);
        s.watchers.insert(id, Slot { filter: filter.clone(), tx, evicted: evicted.clone() });
        metrics().watchers.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.watchers.fetch_add(1, Ordering::Relaxed);
        Ok(CacheWatcher {
            metrics: self.shared.metrics.clone(),
            cache: Arc::downgrade(&self.shared),
            id,
            backlog,
            rx,
            evicted,
            last: after,
            queue_max: self.shared.cfg.watcher_queue_events_max,
        })
    }

    /// Keeps a snapshot (of revision `rev`) for the later pages of a list. Bounded by count
    /// and age; a snapshot shares the map's unchanged nodes, so it costs what changed since.
    pub fn keep_snapshot(&self, rev: u64, snap: imbl::OrdMap<Bytes, Arc<Object>>) {
        let mut k = self.shared.kept.lock().unwrap();
        let now = Instant::now();
        k.retain(|(r, at, _)| *r != rev && now.duration_since(*at) < SNAPSHOT_AGE_MAX);
        k.push_back((rev, now, snap));
        while k.len() > SNAPSHOTS_KEPT_MAX {
            k.pop_front();
        }
    }

    /// This cache's own counters (`metrics()` sums every cache's).
    pub fn cache_metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The kept snapshot of revision `rev`, if still kept.
    pub fn kept_snapshot(&self, rev: u64) -> Option<imbl::OrdMap<Bytes, Arc<Object>>> {
        let k = self.shared.kept.lock().unwrap();
        k.iter().find(|(r, at, _)| *r == rev && at.elapsed() < SNAPSHOT_AGE_MAX).map(|(_, _, s)| s.clone())
    }
}

/// A watch on the cache. Dropping it unregisters it.
pub struct CacheWatcher {
    metrics: Arc<Metrics>,
    cache: std::sync::Weak<Shared>,
    id: u64,
    backlog: VecDeque<Arc<Event>>,
    rx: mpsc::Receiver<Arc<Event>>,
    evicted: Arc<AtomicU64>,
    last: u64,
    queue_max: usize,
}

impl CacheWatcher {
    /// The next event, or why the watch ended (`None`: the cache stopped).
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, WatchError>> {
        if let Some(e) = self.backlog.pop_front() {
            self.last = e.revision;
            return Some(Ok(e));
        }
        match self.rx.recv().await {
            Some(e) => {
                self.last = e.revision;
                metrics().events_out.fetch_add(1, Ordering::Relaxed);
                self.metrics.events_out.fetch_add(1, Ordering::Relaxed);
                self.metrics.observe_delivery(e.at.elapsed());
                Some(Ok(e))
            }
            None => {
                let resume = self.evicted.load(Ordering::SeqCst);
                if resume != 0 {
                    Some(Err(WatchError::Slow { resume, queue_max: self.queue_max }))
                } else {
                    None
                }
            }
        }
    }

    /// The revision of the last event delivered (or where the watch started).
    pub fn last_revision(&self) -> u64 {
        self.last
    }
}

impl Drop for CacheWatcher {
    fn drop(&mut self) {
        if let Some(shared) = self.cache.upgrade()
            && let Ok(mut s) = shared.state.write() {
                s.unindex(self.id, &shared.metrics);
            }
    }
}

/// The one store watch of a cache: apply each event, keep it in the ring, fan it out.
async fn ingest(weak: std::sync::Weak<Shared>, mut watcher: storage::Watcher, decode: Decode, prefix: Bytes) {
    let mut candidates = Vec::new();
    let mut memo: HashMap<Arc<str>, (bool, bool)> = HashMap::new();
    loop {
        let batch = watcher.next_or_progress().await;
        let Some(shared) = weak.upgrade() else { return };
        let events = match batch {
            Some(Ok(events)) => events,
            Some(Err(storage::WatchError::SlowWatcher { resume_revision, .. })) => {
                // The cache fell behind the store (a CPU-starved ingestion): watch again from
                // where it stopped; the store's history has the rest, nothing is lost.
                tracing::warn!(resume_revision, "watch cache fell behind its store watch; resuming");
                watcher = shared.store.watch(WatchRequest { range: KeyRange::Prefix(prefix.clone()), start_revision: Some(resume_revision), prev_kv: true });
                continue;
            }
            Some(Err(e)) => {
                shared.state.write().unwrap().stopped = Some(e.to_string());
                tracing::warn!(error = %e, "watch cache's store watch ended");
                return;
            }
            None => {
                shared.state.write().unwrap().stopped = Some("store shut down".into());
                return;
            }
        };
        let now = Instant::now();
        let mut s = shared.state.write().unwrap();
        for e in events {
            metrics().events_in.fetch_add(1, Ordering::Relaxed);
            shared.metrics.events_in.fetch_add(1, Ordering::Relaxed);
            let key = e.kv.key.clone();
            let prev = s.objects.get(&key).cloned();
            let (kind, object) = match e.kind {
                EventKind::Put => {
                    let Some(o) = decode(&e.kv) else { continue };
                    let o = Arc::new(o);
                    s.objects.insert(key, o.clone());
                    (if prev.is_some() { EventType::Modified } else { EventType::Added }, o)
                }
                EventKind::Delete => {
                    let Some(p) = s.objects.remove(&key) else { continue };
                    // The last state, at the delete's revision.
                    let mut kv = e.prev_kv.clone().unwrap_or_else(|| e.kv.clone());
                    kv.mod_revision = e.kv.mod_revision;
                    let o = decode(&kv).map(Arc::new).unwrap_or(p);
                    (EventType::Deleted, o)
                }
            };
            let ev = Arc::new(Event { revision: e.kv.mod_revision, kind, object, prev, at: now, line: std::sync::Mutex::new(Line::Unmade), table_line: OnceLock::new(), metrics: shared.metrics.clone() });
            s.ring_bytes += ev.object.json_len() as u64;
            s.ring.push_back(ev.clone());
            // The event that just left the newest `ring_lines_max` gives up its line.
            if let Some(old) = s.ring.len().checked_sub(shared.cfg.ring_lines_max + 1).and_then(|i| s.ring.get(i)) {
                old.drop_line();
            }
            s.candidates(&ev, &mut candidates);
            let mut evict = Vec::new();
            memo.clear();
            for id in &candidates {
                let Some(slot) = s.watchers.get(id) else { continue };
                if !slot.filter.wants_memo(&ev, &mut memo) {
                    continue;
                }
                match slot.tx.try_send(ev.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!(prefix = ?prefix, namespace = ?slot.filter.namespace, node = ?slot.filter.node_name, selector = ?slot.filter.key, revision = ev.revision, "a watcher fell its queue's length behind; closing it (it resumes from its last revision)");
                        slot.evicted.store(ev.revision, Ordering::SeqCst);
                        metrics().evictions.fetch_add(1, Ordering::Relaxed);
                        shared.metrics.evictions.fetch_add(1, Ordering::Relaxed);
                        evict.push(*id);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => evict.push(*id),
                }
            }
            for id in evict {
                s.unindex(id, &shared.metrics);
            }
        }
        // Trim the ring by count, bytes of objects and age; the horizon follows what was
        // dropped.
        while s.ring.len() > shared.cfg.ring_events_max
            || s.ring_bytes > shared.cfg.ring_bytes_max
            || s.ring.front().is_some_and(|e| now.duration_since(e.at) > shared.cfg.ring_age_max)
        {
            let e = s.ring.pop_front().unwrap();
            s.ring_bytes -= e.object.json_len() as u64;
            s.horizon = e.revision;
        }
        shared.metrics.ring_events.store(s.ring.len() as u64, Ordering::Relaxed);
        shared.metrics.ring_bytes.store(s.ring_bytes, Ordering::Relaxed);
        let rev = watcher.delivered_through().max(s.revision);
        // The horizon moves only when events leave the ring: an empty ring because nothing
        // happened in this prefix still serves watches from any revision since the horizon.
        s.revision = rev;
        drop(s);
        shared.revision_tx.send_if_modified(|r| {
            if rev > *r {
                *r = rev;
                true
            } else {
                false
            }
        });
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_objects_json_has_its_revision_written_in_where_it_belongs() {
        let body = Bytes::from_static(br#"{"metadata":{"resourceVersion":"","name":"a"}}"#);
        let at = body.len() - r#"","name":"a"}}"#.len();
        let o = Object::with_revision_at(Bytes::from_static(b"k"), 12345, body.clone(), at, Meta::default());
        let want = br#"{"metadata":{"resourceVersion":"12345","name":"a"}}"#;
        assert_eq!(&o.json()[..], want);
        assert_eq!(o.json_len(), want.len());
        let mut out = BytesMut::new();
        o.write_json(&mut out);
        assert_eq!(&out[..], want);
        assert_eq!(&encode_object_line("ADDED", &o)[..], &encode_line("ADDED", want)[..]);
        // The cache keeps the store's bytes, not a copy of them.
        assert_eq!(o.body.as_ptr(), body.as_ptr());
        // A whole JSON is served as it is.
        let whole = Object::new(Bytes::from_static(b"k"), 7, Bytes::from_static(b"{}"), Meta::default());
        assert_eq!((&whole.json()[..], whole.json_len()), (&b"{}"[..], 2));
        // An offset past the end puts the digits at the end rather than panicking.
        let past = Object::with_revision_at(Bytes::from_static(b"k"), 7, Bytes::from_static(b"[1,"), 99, Meta::default());
        assert_eq!(&past.json()[..], b"[1,7");
    }
}
