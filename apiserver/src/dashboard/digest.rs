//! What the pages show of each pod and node, read once per object revision: a few fields
//! parsed from the watch cache's JSON into a small digest, kept while the object is. A page
//! over 150,000 pods then walks the cache's snapshot and looks digests up, parsing only what
//! changed since the last page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Deserialize;
use watchcache::Object;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl Phase {
    pub const ALL: [Phase; 5] = [Phase::Pending, Phase::Running, Phase::Succeeded, Phase::Failed, Phase::Unknown];

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Unknown => "Unknown",
        }
    }
}

/// A pod, as the lists and the cluster page use it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pod {
    pub phase: Phase,
    /// Ready containers, and all of them.
    pub ready: (u16, u16),
    pub restarts: u32,
    pub created: Box<str>,
    pub ip: Box<str>,
    /// Requests summed over its containers (milli-CPU, bytes).
    pub cpu_milli: i64,
    pub memory: i64,
    pub terminating: bool,
    /// Why it is not running, when a container waits or the pod is unschedulable.
    pub reason: Box<str>,
}

/// A node, as the lists and the cluster page use it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub ready: bool,
    pub unschedulable: bool,
    /// Allocatable (milli-CPU, bytes, pods).
    pub cpu_milli: i64,
    pub memory: i64,
    pub pods: i64,
    pub created: Box<str>,
    pub hollow: bool,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodJson {
    metadata: MetaJson,
    spec: PodSpecJson,
    status: PodStatusJson,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct MetaJson {
    creation_timestamp: Option<String>,
    deletion_timestamp: Option<String>,
    labels: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodSpecJson {
    containers: Vec<ContainerJson>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ContainerJson {
    resources: ResourcesJson,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResourcesJson {
    requests: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodStatusJson {
    phase: Option<String>,
    reason: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    conditions: Vec<ConditionJson>,
    container_statuses: Vec<ContainerStatusJson>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConditionJson {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ContainerStatusJson {
    ready: bool,
    restart_count: u32,
    state: serde_json::Value,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct NodeJson {
    metadata: MetaJson,
    spec: NodeSpecJson,
    status: NodeStatusJson,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NodeSpecJson {
    unschedulable: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NodeStatusJson {
    allocatable: HashMap<String, serde_json::Value>,
    conditions: Vec<ConditionJson>,
}

/// A quantity in milli-units (`100m` → 100, `2` → 2000, `1Gi` → 1073741824000).
pub fn milli(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::String(s) => api::Quantity::parse(s).map(|q| q.milli).unwrap_or(0),
        serde_json::Value::Number(n) => n.as_i64().map_or(0, |x| x.saturating_mul(1000)),
        _ => 0,
    }
}

/// A pod's digest from its JSON; an unreadable pod reads as Unknown.
pub fn pod(json: &[u8]) -> Pod {
    let p: PodJson = serde_json::from_slice(json).unwrap_or_default();
    let phase = p.status.phase.as_deref().and_then(Phase::parse).unwrap_or(if p.status.phase.is_none() { Phase::Pending } else { Phase::Unknown });
    let mut reason = p.status.reason.clone().unwrap_or_default();
    for s in &p.status.container_statuses {
        if let Some(r) = s.state["waiting"]["reason"].as_str().or_else(|| s.state["terminated"]["reason"].as_str()) {
            reason = r.to_string();
        }
    }
    if reason.is_empty()
        && let Some(c) = p.status.conditions.iter().find(|c| c.kind == "PodScheduled" && c.status == "False")
    {
        reason = c.reason.clone().unwrap_or_else(|| "Unschedulable".into());
    }
    let (mut cpu, mut mem) = (0i64, 0i64);
    for c in &p.spec.containers {
        cpu = cpu.saturating_add(c.resources.requests.get("cpu").map_or(0, milli));
        mem = mem.saturating_add(c.resources.requests.get("memory").map_or(0, milli) / 1000);
    }
    Pod {
        phase,
        ready: (p.status.container_statuses.iter().filter(|s| s.ready).count() as u16, p.spec.containers.len() as u16),
        restarts: p.status.container_statuses.iter().map(|s| s.restart_count).sum(),
        created: p.metadata.creation_timestamp.unwrap_or_default().into(),
        ip: p.status.pod_ip.unwrap_or_default().into(),
        cpu_milli: cpu,
        memory: mem,
        terminating: p.metadata.deletion_timestamp.is_some(),
        reason: reason.into(),
    }
}

/// The label hollow nodes carry (kubelet's `HOLLOW_LABEL`).
pub const HOLLOW_LABEL: &str = "capstan.io/hollow";

/// A node's digest from its JSON.
pub fn node(json: &[u8]) -> Node {
    let n: NodeJson = serde_json::from_slice(json).unwrap_or_default();
    let get = |k: &str| n.status.allocatable.get(k).map_or(0, milli);
    Node {
        ready: n.status.conditions.iter().any(|c| c.kind == "Ready" && c.status == "True"),
        unschedulable: n.spec.unschedulable,
        cpu_milli: get("cpu"),
        memory: get("memory") / 1000,
        pods: get("pods") / 1000,
        created: n.metadata.creation_timestamp.unwrap_or_default().into(),
        hollow: n.metadata.labels.contains_key(HOLLOW_LABEL),
    }
}

/// Digests by key, each with the revision it was read at. Bounded by what the cache holds:
/// `sweep` drops the keys a full walk no longer saw.
pub struct Digests<T> {
    map: Mutex<HashMap<Bytes, (u64, Arc<T>, u64)>>,
    parse: fn(&[u8]) -> T,
    /// The number of the current full walk.
    walk: std::sync::atomic::AtomicU64,
}

impl<T> Digests<T> {
    pub fn new(parse: fn(&[u8]) -> T) -> Digests<T> {
        Digests { map: Mutex::new(HashMap::new()), parse, walk: Default::default() }
    }

    /// Looks up digests under one lock: `f` gets a function from object to digest.
    pub fn with<R>(&self, full_walk: bool, f: impl FnOnce(&mut dyn FnMut(&Object) -> Arc<T>) -> R) -> R {
        let walk = if full_walk { self.walk.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 } else { 0 };
        let mut map = self.map.lock().unwrap();
        let parse = self.parse;
        let r = {
            let mut get = |o: &Object| -> Arc<T> {
                if let Some(e) = map.get_mut(&o.key)
                    && e.0 == o.revision
                {
                    e.2 = e.2.max(walk);
                    return e.1.clone();
                }
                let d = Arc::new(parse(&o.json()));
                map.insert(o.key.clone(), (o.revision, d.clone(), walk));
                d
            };
            f(&mut get)
        };
        if full_walk {
            map.retain(|_, e| e.2 >= walk);
        }
        r
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, rev: u64, json: &str) -> Object {
        Object::new(Bytes::from(key.to_string()), rev, Bytes::from(json.to_string()), Default::default())
    }

    #[test]
    fn a_pod_digest_reads_phase_readiness_requests_and_why_it_waits() {
        let d = pod(br#"{"metadata":{"creationTimestamp":"2026-01-01T00:00:00Z","deletionTimestamp":"2026-01-01T00:01:00Z"},
            "spec":{"containers":[{"resources":{"requests":{"cpu":"250m","memory":"64Mi"}}},{"resources":{"requests":{"cpu":1}}}]},
            "status":{"phase":"Running","podIP":"10.0.0.7","containerStatuses":[{"ready":true,"restartCount":2,"state":{"running":{}}},{"ready":false,"restartCount":1,"state":{"waiting":{"reason":"CrashLoopBackOff"}}}]}}"#);
        assert_eq!(d.phase, Phase::Running);
        assert_eq!(d.ready, (1, 2));
        assert_eq!(d.restarts, 3);
        assert_eq!((d.cpu_milli, d.memory), (1250, 64 << 20));
        assert!(d.terminating);
        assert_eq!(&*d.reason, "CrashLoopBackOff");
        assert_eq!(&*d.ip, "10.0.0.7");
        let p = pod(br#"{"status":{"conditions":[{"type":"PodScheduled","status":"False","reason":"Unschedulable"}]}}"#);
        assert_eq!((p.phase, &*p.reason), (Phase::Pending, "Unschedulable"));
        assert_eq!(pod(b"not json").phase, Phase::Pending);
        assert_eq!(pod(br#"{"status":{"phase":"Weird"}}"#).phase, Phase::Unknown);
    }

    #[test]
    fn a_node_digest_reads_readiness_cordon_and_allocatable() {
        let n = node(br#"{"metadata":{"labels":{"capstan.io/hollow":"true"}},"spec":{"unschedulable":true},
            "status":{"allocatable":{"cpu":"4","memory":"8Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True"}]}}"#);
        assert!(n.ready && n.unschedulable && n.hollow);
        assert_eq!((n.cpu_milli, n.memory, n.pods), (4000, 8 << 30, 110));
        assert!(!node(b"{}").ready);
    }

    #[test]
    fn digests_are_parsed_once_per_revision_and_swept_when_gone() {
        let d: Digests<Pod> = Digests::new(pod);
        let a1 = obj("/a", 1, r#"{"status":{"phase":"Running"}}"#);
        let b1 = obj("/b", 1, r#"{"status":{"phase":"Pending"}}"#);
        let first = d.with(true, |get| {
            let x = get(&a1);
            get(&b1);
            x
        });
        let again = d.with(false, |get| get(&a1));
        assert!(Arc::ptr_eq(&first, &again), "the same revision is not parsed again");
        let a2 = obj("/a", 2, r#"{"status":{"phase":"Failed"}}"#);
        assert_eq!(d.with(false, |get| get(&a2)).phase, Phase::Failed);
        assert_eq!(d.len(), 2);
        // A full walk that sees only /a forgets /b.
        d.with(true, |get| {
            get(&a2);
        });
        assert_eq!(d.len(), 1);
    }
}
