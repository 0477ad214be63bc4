//! WATCH: from the watch cache's ring and live events (each line encoded once for every
//! watcher); from a revision older than the ring, 410 Gone as Kubernetes answers, or, asked
//! for with `history=true`, the store's history; bookmarks, timeouts, and Table rows for
//! kubectl's `get -w`.

use super::*;

/// A watch without `timeoutSeconds` (or with 0) ends after this long times a random factor
/// in [1, 2), as kube-apiserver's `--min-request-timeout` makes it, so that the watches of
/// many clients do not all end (and relist) together.
pub(super) const WATCH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1800);

/// How long a watch lasts, as Kubernetes reads `timeoutSeconds`: absent or 0 is the default,
/// a negative value ends the watch at once, anything that is not an integer is a 400.
pub(super) fn watch_timeout(query: &HashMap<String, String>) -> Result<Duration, ApiError> {
    match q(query, "timeoutSeconds") {
        None => Ok(WATCH_TIMEOUT_DEFAULT.mul_f64(1.0 + rand::random::<f64>())),
        Some(t) => match t.parse::<i64>() {
            Ok(0) => Ok(WATCH_TIMEOUT_DEFAULT.mul_f64(1.0 + rand::random::<f64>())),
            Ok(n) if n < 0 => Ok(Duration::ZERO),
            Ok(n) => Ok(Duration::from_secs(n as u64)),
            Err(_) => Err(ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}: not an integer"))),
        },
    }
}

pub(super) const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// A watch that ends at once with one ERROR event of 410 Gone, as kube-apiserver ends a watch
/// from a revision it no longer holds (the client lists again).
fn gone(message: String) -> ApiResult {
    let status = ApiError::gone(message).to_json();
    let line = Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": status})));
    Ok(stream_response(futures_util::stream::iter(vec![Ok::<_, std::convert::Infallible>(line)])))
}

impl Req<'_> {
    /// A watch served by the cache. From a revision older than the cache's ring (events trimmed
    /// from it, or made before this server started), 410 Gone, as Kubernetes answers; with
    /// `history=true` (capstan's own parameter) the store serves it instead, back to the last
    /// compaction, so a client resuming after a restart need not relist.
    pub(super) async fn watch(&self) -> ApiResult {
        let (ls, fs) = self.selectors()?;
        let send_initial = is_true(q(self.query, "sendInitialEvents"));
        let bookmarks = is_true(q(self.query, "allowWatchBookmarks"));
        let timeout = watch_timeout(self.query)?;
        let rv: Option<u64> = match q(self.query, "resourceVersion") {
            Some(r) => Some(r.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {r:?}")))?),
            None => None,
        };
        let cache = self.st.caches.get(&self.st.store, self.info).await?;
        let as_table = table::wants_table(self.accept);
        let kind = self.info.kind;
        let api_version = self.info.api_version();
        let (ls2, fs2) = (ls.clone(), fs.clone());
        let node = fs.exact("spec.nodeName").map(String::from);
        // Selectors on the fields the cache keeps in `Meta` (the kubelet's `spec.nodeName=X`,
        // hollow nodes' `spec.nodeName!=`) are answered without decoding the object.
        let simple = ls.is_empty() && fs.0.iter().all(|(f, _, _)| matches!(f.as_str(), "spec.nodeName" | "metadata.namespace" | "metadata.name"));
        let predicate: Arc<dyn Fn(&watchcache::Object) -> bool + Send + Sync> = Arc::new(move |o: &watchcache::Object| {
            if simple {
                return fs2.0.iter().all(|(f, eq, v)| {
                    let have = match f.as_str() {
                        "metadata.name" => &*o.meta.name,
                        "metadata.namespace" => o.meta.namespace.as_deref().unwrap_or(""),
                        _ => o.meta.node_name.as_deref().unwrap_or(""),
                    };
                    (have == v.as_str()) == *eq
                });
            }
            let labels: serde_json::Map<String, Value> = o.meta.labels.iter().map(|(k, v)| (k.to_string(), json!(&**v))).collect();
            if !ls2.matches(Some(&labels)) {
                return false;
            }
            fs2.is_empty() || serde_json::from_slice::<Value>(&o.json()).is_ok_and(|v| fs2.matches(&v))
        });
        // Watchers with the same selectors share one evaluation per event.
        let key: Arc<str> = Arc::from(format!("{}|{}", q(self.query, "labelSelector").unwrap_or(""), q(self.query, "fieldSelector").unwrap_or("")));
        let filter = watchcache::Filter::new(self.namespace.clone().filter(|_| self.info.namespaced), node, Some(key), predicate);
        let mut initial = Vec::new();
        let after = match rv {
            Some(r) if r != 0 && !send_initial => r,
            _ => {
                let (rev, snap) = if rv.is_none() && send_initial {
                    let r = cache.wait_consistent(CACHE_WAIT).await.map_err(consistency_error)?;
                    let (_, s) = cache.snapshot();
                    (r, s)
                } else {
                    cache.snapshot()
                };
                let prefix = self.info.prefix(self.namespace.as_deref());
                for (k, o) in snap.range(Bytes::from(prefix.clone())..) {
                    if !k.starts_with(prefix.as_bytes()) {
                        break;
                    }
                    if filter.matches(o) {
                        initial.push(if as_table {
                            event_line("ADDED", &serde_json::from_slice(&o.json()).unwrap_or(Value::Null), kind, true)
                        } else {
                            watchcache::encode_object_line("ADDED", o)
                        });
                    }
                }
                if send_initial {
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rev.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                    initial.push(event_line("BOOKMARK", &bm, kind, false));
                }
                rev
            }
        };
        match cache.watch(Some(after), filter.clone()) {
            Ok(w) => {
                let deadline = tokio::time::Instant::now() + timeout;
                let shell = WatchShell::new(self.st, initial, deadline, bookmarks, kind, api_version);
                let state = CacheWatchStream { shell, w, cache, filter, as_table, after };
                let stream = futures_util::stream::unfold(state, |mut s| async move {
                    let next = s.next().await?;
                    Some((Ok::<_, std::convert::Infallible>(next), s))
                });
                Ok(stream_response(stream))
            }
            Err(watchcache::WatchError::TooOld { .. }) if is_true(q(self.query, "history")) => self.watch_store(Some((cache, filter))).await,
            Err(watchcache::WatchError::TooOld { requested, oldest }) => gone(format!("too old resource version: {requested} ({oldest})")),
            Err(e) => Err(ApiError::unavailable(e.to_string())),
        }
    }

    /// A watch served straight from the store's history. With `handover`, it moves to the
    /// cache as soon as the cache's ring reaches back to the last revision it sent, so a watch
    /// resumed from past the ring pays the store's per-watcher decoding only for the gap.
    pub(super) async fn watch_store(&self, handover: Option<(watchcache::Cache, watchcache::Filter)>) -> ApiResult {
        self.st.metrics.watches_from_store.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (ls, fs) = self.selectors()?;
        let prefix = self.info.prefix(self.namespace.as_deref());
        let send_initial = is_true(q(self.query, "sendInitialEvents"));
        let bookmarks = is_true(q(self.query, "allowWatchBookmarks"));
        let timeout = watch_timeout(self.query)?;
        let rv: Option<u64> = match q(self.query, "resourceVersion") {
            Some(r) => Some(r.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {r:?}")))?),
            None => None,
        };
        let as_table = table::wants_table(self.accept);
        let kind = self.info.kind;
        let api_version = self.info.api_version();
        let filter = move |v: &Value| {
            let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
            ls.matches(labels) && fs.matches(v)
        };
        // Initial state: for a watch from "now" (unset or "0"), Kubernetes first sends the
        // current objects as ADDED; so does sendInitialEvents=true.
        let mut initial = Vec::new();
        let start = match rv {
            Some(r) if r != 0 && !send_initial => r + 1,
            _ => {
                let resp = self.st.store.range(RangeRequest::prefix(prefix.clone())).await?;
                for kv in &resp.kvs {
                    let v = Stored::from_kv(kv).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?;
                    if filter(&v) {
                        initial.push(event_line("ADDED", &v, kind, as_table));
                    }
                }
                if send_initial {
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": resp.revision.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                    initial.push(event_line("BOOKMARK", &bm, kind, false));
                }
                resp.revision + 1
            }
        };
        let compacted = self.st.store.compact_revision();
        if start <= compacted {
            return gone(format!("too old resource version: {} ({})", start - 1, compacted));
        }
        let watcher = self.st.store.watch(WatchRequest { range: KeyRange::Prefix(Bytes::from(prefix)), start_revision: Some(start), prev_kv: true });
        let deadline = tokio::time::Instant::now() + timeout;
        let shell = WatchShell::new(self.st, initial, deadline, bookmarks, kind, api_version);
        let state = Resumed::Store(WatchStream { shell, watcher, filter: Box::new(filter), as_table, last_rev: start - 1, handover });
        let handed = self.st.metrics.watches_handed_to_cache.clone();
        let stream = futures_util::stream::unfold((state, handed), |(mut s, handed)| async move {
            let next = s.next(&handed).await?;
            Some((Ok::<_, std::convert::Infallible>(next), (s, handed)))
        });
        Ok(stream_response(stream))
    }
}

/// A store-served watch, until it is handed to the cache.
enum Resumed {
    Store(WatchStream),
    Cache(CacheWatchStream),
    /// Only while switching.
    Switching,
}

impl Resumed {
    async fn next(&mut self, handed: &std::sync::atomic::AtomicU64) -> Option<Bytes> {
        loop {
            match self {
                Resumed::Cache(c) => return c.next().await,
                Resumed::Switching => return None,
                Resumed::Store(s) => match s.step().await {
                    Step::Line(b) => return Some(b),
                    Step::End => return None,
                    Step::Switch(pending, w, cache, filter) => {
                        let Resumed::Store(s) = std::mem::replace(self, Resumed::Switching) else { unreachable!("matched above") };
                        handed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let after = s.last_rev;
                        *self = Resumed::Cache(CacheWatchStream { shell: s.shell, w, cache, filter, as_table: s.as_table, after });
                        if !pending.is_empty() {
                            return Some(pending);
                        }
                    }
                },
            }
        }
    }
}

/// What the store-fed stream produced.
enum Step {
    Line(Bytes),
    End,
    /// The cache serves from the last revision sent: these lines first, then the cache.
    Switch(Bytes, watchcache::CacheWatcher, watchcache::Cache, watchcache::Filter),
}

/// What a watch stream waits for next: its deadline, or (with bookmarks) the next bookmark.
pub(super) fn watch_wait_until(deadline: tokio::time::Instant, bookmarks: bool) -> tokio::time::Instant {
    if bookmarks { (tokio::time::Instant::now() + BOOKMARK_INTERVAL).min(deadline) } else { deadline }
}

pub(super) fn bookmark_line(kind: &str, api_version: &str, rev: u64) -> Bytes {
    event_line("BOOKMARK", &json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rev.to_string()}}), kind, false)
}

pub(super) fn stream_response<S>(stream: S) -> Response
where
    S: futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
{
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    r
}

pub(super) fn event_line(ty: &str, obj: &Value, kind: &str, as_table: bool) -> Bytes {
    let object = if as_table && ty != "BOOKMARK" {
        table::table(kind, vec![table::row(kind, obj)], meta_str(obj, "resourceVersion").unwrap_or(""), None)
    } else {
        obj.clone()
    };
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// What the two watch streams (store-fed and cache-fed) have in common: the initial events,
/// the deadline, periodic bookmarks and the server's shutdown.
pub(super) struct WatchShell {
    initial: std::collections::VecDeque<Bytes>,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    kind: &'static str,
    api_version: String,
    done: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
    shutdown_open: bool,
}

/// What a watch stream's wait ended with.
pub(super) enum Wait<T> {
    /// The source produced this.
    Got(T),
    /// Time for a bookmark (periodic, or the last one at shutdown).
    Bookmark,
    /// The deadline passed: the stream ends.
    End,
    /// Nothing to do yet (the shutdown channel changed without a shutdown): wait again.
    Again,
}

impl WatchShell {
    fn new(st: &AppState, initial: Vec<Bytes>, deadline: tokio::time::Instant, bookmarks: bool, kind: &'static str, api_version: String) -> WatchShell {
        WatchShell { initial: initial.into(), deadline, bookmarks, kind, api_version, done: false, shutdown: st.shutdown.clone(), shutdown_open: true }
    }

    /// Waits for `source`, the deadline, the next bookmark or the server's shutdown (after
    /// which the stream sends a last bookmark and ends).
    async fn wait<F: std::future::Future>(&mut self, source: F) -> Wait<F::Output> {
        if *self.shutdown.borrow() {
            self.done = true;
            return Wait::Bookmark;
        }
        tokio::select! {
            r = tokio::time::timeout_at(watch_wait_until(self.deadline, self.bookmarks), source) => match r {
                Ok(x) => Wait::Got(x),
                Err(_) if tokio::time::Instant::now() >= self.deadline => Wait::End,
                Err(_) => Wait::Bookmark,
            },
            r = self.shutdown.changed(), if self.shutdown_open => {
                // A closed channel (the sender gone without a shutdown) means none will come.
                self.shutdown_open = r.is_ok();
                Wait::Again
            }
        }
    }

    fn bookmark(&self, rev: u64) -> Bytes {
        bookmark_line(self.kind, &self.api_version, rev)
    }
}

pub(super) struct WatchStream {
    shell: WatchShell,
    watcher: storage::Watcher,
    filter: Box<dyn Fn(&Value) -> bool + Send + Sync>,
    as_table: bool,
    last_rev: u64,
    /// The cache to move to once its ring reaches back to `last_rev`.
    handover: Option<(watchcache::Cache, watchcache::Filter)>,
}

impl WatchStream {
    async fn step(&mut self) -> Step {
        if let Some(b) = self.shell.initial.pop_front() {
            return Step::Line(b);
        }
        loop {
            if self.shell.done {
                return Step::End;
            }
            let batch = match self.shell.wait(self.watcher.next()).await {
                Wait::Again => continue,
                Wait::End | Wait::Got(None) => return Step::End,
                Wait::Bookmark => return Step::Line(self.shell.bookmark(self.last_rev)),
                Wait::Got(Some(Err(e))) => {
                    self.shell.done = true;
                    let status = match e {
                        storage::WatchError::Compacted { .. } => ApiError::gone(format!("too old resource version: {e}")),
                        other => ApiError::internal(other.to_string()),
                    };
                    let mut v = serde_json::to_vec(&json!({"type": "ERROR", "object": status.to_json()})).unwrap_or_default();
                    v.push(b'\n');
                    return Step::Line(Bytes::from(v));
                }
                Wait::Got(Some(Ok(events))) => events,
            };
            let mut out = BytesMut::new();
            for e in batch {
                self.last_rev = e.kv.mod_revision;
                let new = match e.kind {
                    EventKind::Put => decode_at(&e.kv),
                    EventKind::Delete => None,
                };
                let old = e.prev_kv.as_ref().and_then(|p| decode_at(p));
                let old_match = old.as_ref().is_some_and(|o| (self.filter)(o));
                let (ty, obj) = match (e.kind, new) {
                    (EventKind::Put, Some(n)) => {
                        let new_match = (self.filter)(&n);
                        match (old_match, new_match) {
                            (_, true) if e.kv.version == 1 || old.is_none() => ("ADDED", n),
                            (true, true) => ("MODIFIED", n),
                            (false, true) => ("ADDED", n),
                            (true, false) => ("DELETED", n),
                            (false, false) => continue,
                        }
                    }
                    (EventKind::Delete, _) if old_match => {
                        let mut o = old.unwrap();
                        meta_mut(&mut o).insert("resourceVersion".into(), json!(e.kv.mod_revision.to_string()));
                        ("DELETED", o)
                    }
                    _ => continue,
                };
                out.put_slice(&event_line(ty, &obj, self.shell.kind, self.as_table));
            }
            if let Some((cache, filter)) = &self.handover
                && let Ok(w) = cache.watch(Some(self.last_rev), filter.clone())
            {
                let (cache, filter) = self.handover.take().expect("checked above");
                return Step::Switch(out.freeze(), w, cache, filter);
            }
            if !out.is_empty() {
                return Step::Line(out.freeze());
            }
        }
    }
}

pub(super) struct CacheWatchStream {
    shell: WatchShell,
    w: watchcache::CacheWatcher,
    cache: watchcache::Cache,
    filter: watchcache::Filter,
    as_table: bool,
    /// Events at or below this were covered by the initial state or the client's version.
    after: u64,
}

impl CacheWatchStream {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(b) = self.shell.initial.pop_front() {
            return Some(b);
        }
        loop {
            if self.shell.done {
                return None;
            }
            let ev = match self.shell.wait(self.w.next()).await {
                Wait::Again => continue,
                Wait::Bookmark => return Some(self.shell.bookmark(self.cache.revision().max(self.w.last_revision()))),
                // A slow watcher's stream ends; the client watches again from its last
                // resourceVersion, which the ring still holds.
                Wait::End | Wait::Got(None) | Wait::Got(Some(Err(_))) => return None,
                Wait::Got(Some(Ok(e))) => e,
            };
            if ev.revision <= self.after {
                continue;
            }
            let new_match = self.filter.matches(&ev.object);
            let old_match = ev.prev.as_ref().is_some_and(|p| self.filter.matches(p));
            let ty = match (ev.kind, old_match, new_match) {
                (watchcache::EventType::Deleted, _, _) => "DELETED",
                (_, true, true) => ev.kind.as_str(),
                (_, false, true) => "ADDED",
                (_, true, false) => "DELETED",
                (_, false, false) => continue,
            };
            if self.as_table {
                let table = || event_line(ty, &serde_json::from_slice(&ev.object.json()).unwrap_or(Value::Null), self.shell.kind, true);
                // The Table form is shared too when the watcher sees the event as it happened.
                return Some(if ty == ev.kind.as_str() { ev.table_line(table) } else { table() });
            }
            // The shared encoding when this watcher sees the event as it happened.
            return Some(if ty == ev.kind.as_str() { ev.json_line() } else { watchcache::encode_object_line(ty, &ev.object) });
        }
    }
}
