//! The API server's watch caches: one `watchcache::Cache` per resource type, started for every
//! built-in resource when the server starts (it is ready once they are warm) and on first use
//! for custom resources. Lists, gets and watches are served from them; writes go to the store.

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

fn decoder() -> Decode {
    Arc::new(|kv: &KeyValue| {
        let stored = Stored::parse(&kv.value).ok()?;
        let json = stored.at(kv.mod_revision);
        let v: Value = serde_json::from_slice(&json).ok()?;
        Some(Object { key: kv.key.clone(), revision: kv.mod_revision, json, meta: meta_of(&v) })
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
