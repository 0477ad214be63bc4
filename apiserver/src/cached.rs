//! The API server's watch caches: one `watchcache::Cache` per resource type, started for every
//! built-in resource when the server starts (it is ready once they are warm) and on first use
//! for custom resources. Lists, gets and watches are served from them; writes go to the store.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use storage::{KeyValue, Store};
use watchcache::{Cache, Decode, Meta, Object};

use crate::object::Stored;
use crate::registry::ResourceInfo;
use crate::status::ApiError;

#[derive(Default)]
pub struct Caches {
    map: tokio::sync::Mutex<HashMap<String, Cache>>,
}

/// The fields the cache indexes, read once per stored version.
fn meta_of(v: &Value) -> Meta {
    let m = &v["metadata"];
    Meta {
        namespace: m.get("namespace").and_then(|x| x.as_str()).map(watchcache::intern),
        name: m.get("name").and_then(|x| x.as_str()).unwrap_or("").into(),
        labels: m
            .get("labels")
            .and_then(|l| l.as_object())
            .map(|l| l.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.as_str().into(), s.into()))).collect())
            .unwrap_or_default(),
        node_name: v["spec"].get("nodeName").and_then(|x| x.as_str()).filter(|s| !s.is_empty()).map(watchcache::intern),
    }
}

/// Only the fields `Meta` needs, borrowed from the JSON where it has no escapes: the rest of
/// the object is scanned, not built (a pod's spec, status and managedFields are most of it).
#[derive(serde::Deserialize)]
struct Partial<'a> {
    #[serde(borrow, default)]
    metadata: PartialMeta<'a>,
    #[serde(borrow, default)]
    spec: Option<PartialSpec<'a>>,
}

#[derive(serde::Deserialize, Default)]
struct PartialMeta<'a> {
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    labels: Option<std::collections::BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

#[derive(serde::Deserialize)]
struct PartialSpec<'a> {
    #[serde(borrow, default, rename = "nodeName")]
    node_name: Option<Cow<'a, str>>,
}

/// `meta_of` without building the object; `None` if the object does not have the expected
/// shape (e.g. a non-string label value), for which `meta_of` is the answer.
fn meta_fast(json: &[u8]) -> Option<Meta> {
    let p: Partial = serde_json::from_slice(json).ok()?;
    Some(Meta {
        namespace: p.metadata.namespace.as_deref().map(watchcache::intern),
        name: p.metadata.name.as_deref().unwrap_or("").into(),
        labels: p.metadata.labels.unwrap_or_default().into_iter().map(|(k, v)| (Box::from(&*k), Box::from(&*v))).collect(),
        node_name: p.spec.and_then(|s| s.node_name).filter(|s| !s.is_empty()).as_deref().map(watchcache::intern),
    })
}

fn decoder() -> Decode {
    Arc::new(|kv: &KeyValue| {
        let stored = match Stored::from_kv(kv) {
            Ok(s) => s,
            Err(e) => {
                // Left out of the cache (a GET of it asks the store and answers the error).
                tracing::error!(key = %String::from_utf8_lossy(&kv.key), error = %e, "a stored object could not be read");
                return None;
            }
        };
        // The stored JSON reads `"resourceVersion":""` where the digits go: it parses as it is.
        let (body, at) = stored.parts();
        let meta = match meta_fast(body) {
            Some(m) => m,
            None => meta_of(&serde_json::from_slice::<Value>(body).ok()?),
        };
        // The store's bytes, shared: the cache keeps no second copy of each revision.
        Some(Object::with_revision_at(kv.key.clone(), kv.mod_revision, body.clone(), at, meta))
    })
}

impl Caches {
    /// The cache of `info`'s resource, started on first use.
    pub async fn get(&self, store: &Store, info: &ResourceInfo) -> Result<Cache, ApiError> {
        let prefix = info.prefix(None);
        let mut map = self.map.lock().await;
        if let Some(c) = map.get(&prefix) {
            return Ok(c.clone());
        }
        let cache = Cache::start(store.clone(), Bytes::from(prefix.clone()), decoder(), watchcache::Config::default()).await?;
        map.insert(prefix, cache.clone());
        Ok(cache)
    }

    /// Drops the cache of a resource whose definition went away (a deleted CRD).
    pub async fn forget(&self, info: &ResourceInfo) {
        self.map.lock().await.remove(&info.prefix(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_meta_reads_what_the_full_parse_reads() {
        let docs = [
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns","labels":{"app":"web","tier":"a\"b"},"managedFields":[{"manager":"m"}]},"spec":{"nodeName":"n1","containers":[]},"status":{}}"#,
            r#"{"kind":"Pod","metadata":{"name":"p","namespace":"ns"},"spec":{"nodeName":""}}"#,
            r#"{"kind":"Namespace","metadata":{"name":"ns"}}"#,
            r#"{"kind":"Widget","metadata":{"name":"w","namespace":"ns"},"spec":{"nodeName":"x"}}"#,
        ];
        for d in docs {
            let full = meta_of(&serde_json::from_str(d).unwrap());
            let fast = meta_fast(d.as_bytes()).unwrap();
            assert_eq!((&fast.namespace, &fast.name, &fast.labels, &fast.node_name), (&full.namespace, &full.name, &full.labels, &full.node_name), "{d}");
        }
        // Shapes the typed read refuses fall back to the full parse.
        for d in [r#"{"metadata":{"name":"p","labels":{"n":1}}}"#, r#"{"metadata":{"name":"p"},"spec":"text"}"#] {
            assert!(meta_fast(d.as_bytes()).is_none(), "{d}");
        }
    }
}

/// Keeps something compiled from the objects of `resources` (group, resource; version v1):
/// calls `rebuild` with each resource's objects (in `resources`' order) once their watch
/// caches are up, then again after every change (changes that arrive together are taken in
/// one rebuild), until the server shuts down. How RBAC and API Priority and Fairness follow
/// their configuration objects.
pub(crate) async fn follow(st: Arc<crate::handlers::AppState>, resources: &[(&str, &str)], rebuild: impl Fn(&[Vec<Value>])) {
    use futures_util::FutureExt;
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let mut caches = Vec::new();
        for (group, resource) in resources {
            let Some(info) = st.reg.find(group, "v1", resource) else { return };
            match st.caches.get(&st.store, &info).await {
                Ok(c) => caches.push(c),
                Err(e) => {
                    tracing::warn!(resource, error = %e.message, "starting a watch cache failed; retrying");
                    break;
                }
            }
        }
        if caches.len() < resources.len() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(2));
            continue;
        }
        let mut objects: Vec<Vec<Value>> = Vec::new();
        let mut watchers = Vec::new();
        for c in &caches {
            let (rev, snap) = c.snapshot();
            objects.push(snap.values().filter_map(|o| serde_json::from_slice(&o.json()).ok()).collect());
            match c.watch(Some(rev), watchcache::Filter::everything()) {
                Ok(w) => watchers.push(w),
                Err(_) => break,
            }
        }
        if watchers.len() < resources.len() {
            continue;
        }
        rebuild(&objects);
        if *st.shutdown.borrow() {
            return;
        }
        // Wait for a change to any of them; then take whatever else is already there.
        let mut shutdown = st.shutdown.clone();
        let changed = {
            let next = futures_util::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.next())));
            tokio::select! {
                (ev, _, _) = next => ev.is_some(),
                _ = shutdown.wait_for(|s| *s) => return,
            }
        };
        if !changed {
            return;
        }
        for w in watchers.iter_mut() {
            while let Some(Some(_)) = w.next().now_or_never() {}
        }
    }
}
