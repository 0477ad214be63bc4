//! The pods as the dashboard counts them, kept current from the pods' watch cache instead of
//! walked at every render: each pod's digest, pods by phase (counts, and the keys of each
//! phase in order, for lists filtered by phase), and per node the pods bound to it and what
//! they request. A change costs one digest parse and a few map updates; a page that shows
//! counts over 150,000 pods reads them in O(1). Started by the first page opened; rebuilt
//! from a fresh snapshot if its watch ends.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use watchcache::{EventType, Object};

use super::digest::{self, Phase};
use crate::handlers::AppState;

/// What the pods bound to one node use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeUse {
    pub pods: u64,
    pub cpu_milli: i64,
    pub memory: i64,
}

struct Entry {
    digest: Arc<digest::Pod>,
    node: Option<Arc<str>>,
}

#[derive(Default)]
pub struct State {
    /// The cache revision applied through (0: not built).
    pub revision: u64,
    pods: HashMap<Bytes, Entry>,
    pub phases: [u64; 5],
    by_phase: [BTreeSet<Bytes>; 5],
    per_node: HashMap<Arc<str>, NodeUse>,
    /// Over the pods bound and not finished: (milli-CPU, bytes, pods).
    pub requested: (i64, i64, i64),
}

/// Whether a pod's requests count against its node (bound, not finished).
fn holds(d: &digest::Pod, node: &Option<Arc<str>>) -> bool {
    node.is_some() && matches!(d.phase, Phase::Pending | Phase::Running | Phase::Unknown)
}

impl State {
    fn remove(&mut self, key: &[u8]) {
        let Some(e) = self.pods.remove(key) else { return };
        let p = e.digest.phase as usize;
        self.phases[p] -= 1;
        self.by_phase[p].remove(key);
        if holds(&e.digest, &e.node) {
            self.requested.0 -= e.digest.cpu_milli;
            self.requested.1 -= e.digest.memory;
            self.requested.2 -= 1;
        }
        if let Some(n) = &e.node
            && let Some(u) = self.per_node.get_mut(n)
        {
            u.pods -= 1;
            if holds(&e.digest, &e.node) {
                u.cpu_milli -= e.digest.cpu_milli;
                u.memory -= e.digest.memory;
            }
            if u.pods == 0 {
                self.per_node.remove(n);
            }
        }
    }

    fn insert(&mut self, key: Bytes, d: Arc<digest::Pod>, node: Option<Arc<str>>) {
        self.remove(&key);
        let p = d.phase as usize;
        self.phases[p] += 1;
        self.by_phase[p].insert(key.clone());
        if holds(&d, &node) {
            self.requested.0 += d.cpu_milli;
            self.requested.1 += d.memory;
            self.requested.2 += 1;
        }
        if let Some(n) = &node {
            let u = self.per_node.entry(n.clone()).or_default();
            u.pods += 1;
            if holds(&d, &node) {
                u.cpu_milli += d.cpu_milli;
                u.memory += d.memory;
            }
        }
        self.pods.insert(key, Entry { digest: d, node });
    }

    /// Applies one object's change (`deleted`: it is gone).
    pub fn apply(&mut self, o: &Object, deleted: bool) {
        if deleted {
            self.remove(&o.key);
        } else {
            self.insert(o.key.clone(), Arc::new(digest::pod(&o.json())), o.meta.node_name.clone());
        }
    }

    /// The digest the model holds for a pod (as of its last change applied).
    pub fn digest(&self, key: &[u8]) -> Option<Arc<digest::Pod>> {
        self.pods.get(key).map(|e| e.digest.clone())
    }

    pub fn node_use(&self, node: &str) -> NodeUse {
        self.per_node.get(node).copied().unwrap_or_default()
    }

    /// The keys of one phase from `from` on (inclusive), in key order.
    pub fn phase_keys<'a>(&'a self, phase: Phase, from: &'a [u8]) -> impl Iterator<Item = &'a Bytes> + 'a {
        use std::ops::Bound;
        self.by_phase[phase as usize].range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// The model and whether it is current.
#[derive(Default)]
pub struct PodModel {
    state: Mutex<Option<State>>,
    started: std::sync::atomic::AtomicBool,
}

impl PodModel {
    /// Runs `f` over the model when it is built.
    pub fn with<R>(&self, f: impl FnOnce(&State) -> R) -> Option<R> {
        self.state.lock().unwrap().as_ref().map(f)
    }

    /// Starts following the pods' cache (once per server).
    pub fn start(&self, st: Weak<AppState>) {
        if !self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tokio::spawn(follow(st));
        }
    }
}

/// Builds the model from a snapshot, then applies each event of a watch from that snapshot's
/// revision; builds again when the watch ends (the cache restarted, or the watcher fell
/// behind its bounded queue). Stops when the server is gone.
async fn follow(weak: Weak<AppState>) {
    loop {
        let Some(st) = weak.upgrade() else { return };
        let Some(info) = st.reg.find("", "v1", "pods") else { return };
        let cache = match st.caches.get(&st.store, &info).await {
            Ok(c) => c,
            Err(_) => {
                drop(st);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let (rev, snap) = cache.snapshot();
        // Parsing every pod once takes a while at scale: off the async threads.
        let built = tokio::task::spawn_blocking(move || {
            let mut s = State { revision: rev, ..Default::default() };
            for o in snap.values() {
                s.apply(o, false);
            }
            s
        })
        .await;
        let Ok(built) = built else { return };
        let mut watch = match cache.watch(Some(rev), watchcache::Filter::everything()) {
            Ok(w) => w,
            Err(_) => continue,
        };
        *st.ui.model.state.lock().unwrap() = Some(built);
        drop(st);
        while let Some(Ok(ev)) = watch.next().await {
            let Some(st) = weak.upgrade() else { return };
            let mut guard = st.ui.model.state.lock().unwrap();
            if let Some(s) = guard.as_mut() {
                s.apply(&ev.object, ev.kind == EventType::Deleted);
                s.revision = ev.revision;
            }
        }
        if let Some(st) = weak.upgrade() {
            *st.ui.model.state.lock().unwrap() = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(key: &str, node: Option<&str>, phase: &str, cpu: &str) -> Object {
        let json = format!(r#"{{"spec":{{"containers":[{{"resources":{{"requests":{{"cpu":"{cpu}","memory":"1Mi"}}}}}}]}},"status":{{"phase":"{phase}"}}}}"#);
        Object::new(Bytes::from(key.to_string()), 1, Bytes::from(json), watchcache::Meta { node_name: node.map(Arc::from), ..Default::default() })
    }

    /// The counts a full walk over `live` gives.
    fn recount(live: &HashMap<String, Object>) -> ([u64; 5], (i64, i64, i64), HashMap<String, u64>) {
        let mut phases = [0; 5];
        let mut req = (0, 0, 0);
        let mut per_node: HashMap<String, u64> = HashMap::new();
        for o in live.values() {
            let d = digest::pod(&o.json());
            phases[d.phase as usize] += 1;
            if holds(&d, &o.meta.node_name) {
                req.0 += d.cpu_milli;
                req.1 += d.memory;
                req.2 += 1;
            }
            if let Some(n) = &o.meta.node_name {
                *per_node.entry(n.to_string()).or_default() += 1;
            }
        }
        (phases, req, per_node)
    }

    #[test]
    fn changes_applied_one_by_one_give_the_counts_of_a_full_walk() {
        // A deterministic walk through adds, changes of phase and node, and deletes.
        let mut s = State::default();
        let mut live: HashMap<String, Object> = HashMap::new();
        let phases = ["Pending", "Running", "Succeeded", "Failed"];
        let mut x: u64 = 7;
        for step in 0..3000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = format!("/p/{}", (x >> 33) % 200);
            if (x >> 20) % 7 == 0 {
                if let Some(o) = live.remove(&key) {
                    s.apply(&o, true);
                }
            } else {
                let node = ["n1", "n2", "n3"].get(((x >> 40) % 4) as usize).copied();
                let o = pod(&key, node, phases[((x >> 45) % 4) as usize], &format!("{}m", (x >> 50) % 500));
                s.apply(&o, false);
                live.insert(key, o);
            }
            if step % 100 == 0 || step == 2999 {
                let (p, r, n) = recount(&live);
                assert_eq!(s.phases, p, "phases at step {step}");
                assert_eq!(s.requested, r, "requests at step {step}");
                for (node, count) in &n {
                    assert_eq!(s.node_use(node).pods, *count, "{node} at step {step}");
                }
                assert_eq!(s.len(), live.len());
                for ph in Phase::ALL {
                    assert_eq!(s.phase_keys(ph, b"").count() as u64, p[ph as usize]);
                }
            }
        }
        assert!(s.per_node.values().all(|u| u.pods > 0), "nodes without pods are forgotten");
    }

    #[test]
    fn a_phase_lists_its_keys_in_order_from_a_key() {
        let mut s = State::default();
        for k in ["/p/c", "/p/a", "/p/b"] {
            s.apply(&pod(k, None, "Pending", "1"), false);
        }
        s.apply(&pod("/p/d", None, "Running", "1"), false);
        let keys: Vec<&Bytes> = s.phase_keys(Phase::Pending, b"/p/b").collect();
        assert_eq!(keys, vec![&Bytes::from_static(b"/p/b"), &Bytes::from_static(b"/p/c")]);
        assert_eq!(s.phase_keys(Phase::Pending, b"").count(), 3);
    }
}
