//! Informers: a list+watch of one resource into a local cache, resumed from the last
//! revision after a disconnect and listed again only when the server answers 410 (or ends
//! the watch with an error). Handlers see every change; controllers turn changes into keys
//! for their work queues. An index by controller owner uid keeps "the pods of this
//! ReplicaSet" a lookup rather than a scan. `Informers` shares one informer per resource
//! among the controllers of a process. Objects are kept as `Obj`s (a third of a
//! `serde_json::Obj`'s memory), decoded once from the wire without managedFields.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;

use crate::Client;
use crate::obj::{self, Obj};

pub enum Change<'a> {
    Added(&'a Arc<Obj>),
    Modified { old: &'a Arc<Obj>, new: &'a Arc<Obj> },
    Deleted(&'a Arc<Obj>),
}

impl Change<'_> {
    /// The object as it is now (or was, when deleted).
    pub fn object(&self) -> &Arc<Obj> {
        match self {
            Change::Added(v) | Change::Deleted(v) => v,
            Change::Modified { new, .. } => new,
        }
    }
}

type Handler = Box<dyn Fn(&Change) + Send + Sync>;

/// `namespace/name` (or `name` for cluster-scoped objects).
pub fn key_of(v: &Obj) -> String {
    let name = v["metadata"]["name"].as_str().unwrap_or("");
    match v["metadata"]["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// The uids of an object's owners (all of them; `controller_of` for the controller).
pub fn owners(v: &Obj) -> impl Iterator<Item = &str> {
    v["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter_map(|o| o["uid"].as_str())
}

pub fn controller_of(v: &Obj) -> Option<&Obj> {
    v["metadata"]["ownerReferences"].as_array()?.iter().find(|o| o["controller"].as_bool() == Some(true))
}

#[derive(Default)]
struct Cache {
    objects: HashMap<String, Arc<Obj>>,
    by_owner: HashMap<String, HashSet<String>>,
    by_uid: HashMap<String, String>,
    /// Objects without a controller, by namespace (what controllers may adopt).
    orphans: HashMap<String, HashSet<String>>,
}

fn namespace_of(v: &Obj) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or("")
}

/// Whether two versions of an object sit in the same places of the indexes (uid, owners,
/// namespace): most updates (status, labels, spec) leave them alone.
fn same_index_keys(a: &Obj, b: &Obj) -> bool {
    let (a, b) = (&a["metadata"], &b["metadata"]);
    a["uid"] == b["uid"] && a["ownerReferences"] == b["ownerReferences"] && a["namespace"] == b["namespace"]
}

impl Cache {
    fn insert(&mut self, key: String, v: Arc<Obj>) -> Option<Arc<Obj>> {
        if let Some(cur) = self.objects.get_mut(&key)
            && same_index_keys(cur, &v)
        {
            return Some(std::mem::replace(cur, v));
        }
        let old = self.remove(&key);
        for o in owners(&v) {
            self.by_owner.entry(o.to_string()).or_default().insert(key.clone());
        }
        if let Some(u) = v["metadata"]["uid"].as_str() {
            self.by_uid.insert(u.to_string(), key.clone());
        }
        if controller_of(&v).is_none() {
            self.orphans.entry(namespace_of(&v).to_string()).or_default().insert(key.clone());
        }
        self.objects.insert(key, v);
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Obj>> {
        let old = self.objects.remove(key)?;
        for o in owners(&old) {
            if let Some(s) = self.by_owner.get_mut(o) {
                s.remove(key);
                if s.is_empty() {
                    self.by_owner.remove(o);
                }
            }
        }
        if let Some(u) = old["metadata"]["uid"].as_str() {
            self.by_uid.remove(u);
        }
        if controller_of(&old).is_none()
            && let Some(s) = self.orphans.get_mut(namespace_of(&old))
        {
            s.remove(key);
            if s.is_empty() {
                self.orphans.remove(namespace_of(&old));
            }
        }
        Some(old)
    }
}

pub struct Informer {
    path: String,
    cache: RwLock<Cache>,
    handlers: Mutex<Vec<Handler>>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Informer {
    fn new(path: &str) -> Arc<Informer> {
        Arc::new(Informer { path: path.to_string(), cache: Default::default(), handlers: Default::default(), synced: tokio::sync::watch::channel(false).0 })
    }

    /// Adds a handler; it sees every change from now on (register before `start`).
    pub fn on_change(&self, f: impl Fn(&Change) + Send + Sync + 'static) {
        self.handlers.lock().unwrap().push(Box::new(f));
    }

    pub fn get(&self, key: &str) -> Option<Arc<Obj>> {
        self.cache.read().unwrap().objects.get(key).cloned()
    }

    pub fn get_by_uid(&self, uid: &str) -> Option<Arc<Obj>> {
        let c = self.cache.read().unwrap();
        c.by_uid.get(uid).and_then(|k| c.objects.get(k)).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Obj>> {
        self.cache.read().unwrap().objects.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.cache.read().unwrap().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects whose ownerReferences name `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<Obj>> {
        let c = self.cache.read().unwrap();
        c.by_owner.get(uid).into_iter().flatten().filter_map(|k| c.objects.get(k).cloned()).collect()
    }

    /// Objects in namespace `ns` that no controller owns.
    pub fn orphans_in(&self, ns: &str) -> Vec<Arc<Obj>> {
        let c = self.cache.read().unwrap();
        c.orphans.get(ns).into_iter().flatten().filter_map(|k| c.objects.get(k).cloned()).collect()
    }

    pub fn has_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn notify(&self, c: &Change) {
        for h in self.handlers.lock().unwrap().iter() {
            h(c);
        }
    }

    fn apply(&self, ty: &str, v: Obj) {
        let key = key_of(&v);
        let v = Arc::new(v);
        match ty {
            "ADDED" | "MODIFIED" => {
                let old = self.cache.write().unwrap().insert(key, v.clone());
                match old {
                    Some(o) => self.notify(&Change::Modified { old: &o, new: &v }),
                    None => self.notify(&Change::Added(&v)),
                }
            }
            "DELETED" => {
                let old = self.cache.write().unwrap().remove(&key);
                self.notify(&Change::Deleted(old.as_ref().unwrap_or(&v)));
            }
            _ => {}
        }
    }

    /// Replaces the cache with a fresh list, reporting the differences as changes.
    fn replace(&self, items: Vec<Obj>) {
        let fresh: HashMap<String, Obj> = items.into_iter().map(|v| (key_of(&v), v)).collect();
        let gone: Vec<String> = self.cache.read().unwrap().objects.keys().filter(|k| !fresh.contains_key(*k)).cloned().collect();
        for k in gone {
            if let Some(old) = self.cache.write().unwrap().remove(&k) {
                self.notify(&Change::Deleted(&old));
            }
        }
        for (_, v) in fresh {
            let unchanged = self.get(&key_of(&v)).is_some_and(|o| o["metadata"]["resourceVersion"] == v["metadata"]["resourceVersion"]);
            if !unchanged {
                self.apply("ADDED", v);
            }
        }
    }

    async fn run(self: Arc<Self>, c: Client) {
        let mut rv: Option<String> = None;
        loop {
            let from = match rv.clone() {
                Some(r) => r,
                None => match c.get_as::<List>(&self.path).await {
                    Ok(list) => {
                        self.replace(list.items);
                        self.synced.send_replace(true);
                        list.metadata.resource_version.unwrap_or_else(|| "0".into())
                    }
                    Err(e) => {
                        tracing::warn!(path = self.path, error = %e, "informer list failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let sep = if self.path.contains('?') { '&' } else { '?' };
            let url = format!("{}{sep}watch=true&allowWatchBookmarks=true&resourceVersion={from}", self.path);
            let mut stream = match c.watch(&url).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(path = self.path, error = %e, "informer watch failed; listing again");
                    rv = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            rv = Some(from);
            while let Some(ev) = stream.next_as::<Event>().await {
                if ev.ty == "ERROR" {
                    rv = None;
                    break;
                }
                if let Some(r) = ev.object["metadata"]["resourceVersion"].as_str() {
                    rv = Some(r.to_string());
                }
                if ev.ty != "BOOKMARK" {
                    self.apply(&ev.ty, ev.object);
                }
            }
        }
    }
}

/// A list as an informer reads it: its revision and its objects.
#[derive(Deserialize)]
struct List {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default, deserialize_with = "obj::lean_items")]
    items: Vec<Obj>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

/// A watch event; an ERROR's object is a `Status`, which an `Obj` holds as well.
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    ty: String,
    #[serde(deserialize_with = "obj::lean")]
    object: Obj,
}

/// One informer per resource path, shared by the controllers of a process.
pub struct Informers {
    client: Client,
    map: Mutex<HashMap<String, Arc<Informer>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Informers {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().iter() {
            t.abort();
        }
    }
}

impl Informers {
    pub fn new(client: Client) -> Informers {
        Informers { client, map: Default::default(), tasks: Default::default() }
    }

    /// The informer for a collection path (`/api/v1/pods`), created on first use.
    pub fn get(&self, path: &str) -> Arc<Informer> {
        self.map.lock().unwrap().entry(path.to_string()).or_insert_with(|| Informer::new(path)).clone()
    }

    /// Starts every informer asked for so far.
    pub fn start(&self) {
        let mut tasks = self.tasks.lock().unwrap();
        for inf in self.map.lock().unwrap().values() {
            tasks.push(tokio::spawn(inf.clone().run(self.client.clone())));
        }
    }

    pub async fn wait_synced(&self) {
        let all: Vec<Arc<Informer>> = self.map.lock().unwrap().values().cloned().collect();
        for i in all {
            i.wait_synced().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The indexes as sorted lists, to compare two caches.
    fn indexes(c: &Cache) -> (Vec<(String, Vec<String>)>, Vec<(String, String)>, Vec<(String, Vec<String>)>) {
        let sets = |m: &HashMap<String, HashSet<String>>| {
            let mut v: Vec<(String, Vec<String>)> = m.iter().map(|(k, s)| (k.clone(), { let mut s: Vec<String> = s.iter().cloned().collect(); s.sort(); s })).collect();
            v.sort();
            v
        };
        let mut uids: Vec<(String, String)> = c.by_uid.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        uids.sort();
        (sets(&c.by_owner), uids, sets(&c.orphans))
    }

    #[test]
    fn indexes_kept_in_place_match_a_rebuild() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut c = Cache::default();
        for step in 0..3_000 {
            let key = format!("k{}", next(6));
            if next(5) == 0 {
                c.remove(&key);
            } else {
                let owners: Vec<serde_json::Value> = (0..next(3)).map(|i| json!({"uid": format!("o{}", next(3)), "controller": i == 0 && next(2) == 0})).collect();
                let mut meta = json!({"name": key, "namespace": format!("ns{}", next(2)), "uid": format!("{key}-u{}", next(2)), "labels": {"step": step.to_string()}});
                if !owners.is_empty() {
                    meta["ownerReferences"] = json!(owners);
                }
                c.insert(key.clone(), Arc::new(Obj::from(json!({"metadata": meta}))));
            }
            let mut fresh = Cache::default();
            for (k, v) in &c.objects {
                fresh.insert(k.clone(), v.clone());
            }
            assert_eq!(indexes(&c), indexes(&fresh), "step {step}");
        }
    }
}
