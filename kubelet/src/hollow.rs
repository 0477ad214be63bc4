//! Hollow nodes (like kubemark or kwok): many nodes in one process, no processes for their
//! pods. A pod bound to a hollow node goes Running after `start_delay`, and Succeeded after
//! the run time it declares in the annotation `hollow.capstan.io/run-seconds` (Job-like load);
//! a pod being deleted is removed at once (there is nothing to stop). Usage reported for
//! `kubectl top` is synthetic: half of each container's requests.
//!
//! **Bounds.** Status writes go through a queue of `ACTIONS` entries served by `WRITERS`
//! tasks; when it is full, the pod watch waits (and the API server's watch buffer, then its
//! slow-watcher cut-off, push back further). Delayed transitions wait in one timer heap, at
//! most one entry per pod. Per pod the runtime keeps ~100 bytes (measured in
//! bench/RESULTS.md).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::client::{Client, ClientError};
use crate::{Kubelet, KubeletConfig, NodeSpec, Runtime};
use api::meta::now_rfc3339 as now;

pub const RUN_SECONDS_ANNOTATION: &str = "hollow.capstan.io/run-seconds";
const ACTIONS: usize = 1024;
const WRITERS: usize = 16;

/// How hollow nodes look and behave.
#[derive(Clone, Debug)]
pub struct HollowConfig {
    /// Nodes are named `<prefix><i>`.
    pub name_prefix: String,
    pub count: usize,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    /// Zones the nodes are spread over (topology labels).
    pub zones: usize,
    /// Lease renewal period (Kubernetes' default is 10 s).
    pub lease_renew: Duration,
    /// Delay from a pod's binding to its Running status.
    pub start_delay: Duration,
    /// With credentials that trust the cluster CA and present no certificate: each node
    /// gets a node token (`issue_node_tokens`) and its writes (registration, lease, status,
    /// its pods' status) go as `system:node:NAME` with it, so the Node authorizer and
    /// NodeRestriction judge them; the shared pod and node watches stay the process's.
    pub node_tokens: Option<client::tls::Credentials>,
}

impl Default for HollowConfig {
    fn default() -> Self {
        HollowConfig {
            name_prefix: "hollow-".into(),
            count: 0,
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: "110".into(),
            zones: 3,
            lease_renew: Duration::from_secs(10),
            start_delay: Duration::ZERO,
            node_tokens: None,
        }
    }
}

impl HollowConfig {
    pub fn node(&self, i: usize) -> NodeSpec {
        let name = format!("{}{i}", self.name_prefix);
        let mut labels = Map::new();
        for (k, v) in [
            ("kubernetes.io/hostname", name.clone()),
            ("kubernetes.io/os", "linux".into()),
            ("kubernetes.io/arch", "amd64".into()),
            ("topology.kubernetes.io/zone", format!("zone-{}", i % self.zones.max(1))),
            ("capstan.io/hollow", "true".into()),
        ] {
            labels.insert(k.into(), json!(v));
        }
        let mut capacity = Map::new();
        for (k, v) in [("cpu", &self.cpu), ("memory", &self.memory), ("pods", &self.pods)] {
            capacity.insert(k.into(), json!(v));
        }
        capacity.insert("ephemeral-storage".into(), json!("100Gi"));
        NodeSpec {
            name,
            labels,
            capacity,
            taints: Vec::new(),
            // The kubelet endpoint (logs, stats) is this process, on loopback.
            internal_ip: "127.0.0.1".into(),
            pod_cidr: None,
            annotations: Default::default(),
            node_info: json!({"kubeletVersion": "v1.33.0-capstan-hollow", "operatingSystem": "linux", "architecture": "amd64", "containerRuntimeVersion": "hollow://0", "osImage": "hollow", "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""}),
        }
    }
}

enum Action {
    Status(StatusWrite),
    Delete(DeleteWrite),
}

/// A pod status to write, for the stage the pod entered. A write that fails (the API server
/// unavailable, a webhook or policy refusing it) is tried again after a backoff, as long as
/// the pod is still in that stage: a real kubelet writes a pod's status again on every sync,
/// so one failed write never leaves a pod Pending for good. A deletion that fails is tried
/// again the same way until the pod is gone (404) or is another pod (409: the uid
/// precondition).
struct StatusWrite {
    node: Arc<str>,
    uid: Box<str>,
    path: Box<str>,
    status: Value,
    stage: Stage,
    /// Failed attempts so far.
    attempt: u32,
}

struct DeleteWrite {
    node: Arc<str>,
    path: String,
    uid: String,
    attempt: u32,
}

/// The first retry after 1 s, doubling to at most 8 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(8);

fn retry_after(attempt: u32) -> Duration {
    RETRY_FIRST.saturating_mul(1 << attempt.min(16)).min(RETRY_MAX)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Starting,
    Running,
    Completing,
    Done,
}

struct PodEntry {
    ns: Box<str>,
    name: Box<str>,
    containers: Box<[Box<str>]>,
    node: Arc<str>,
    stage: Stage,
    cpu_milli: u32,
    mem_bytes: u64,
}

struct Timer {
    at: Instant,
    action: Action,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.at.cmp(&o.at)
    }
}

pub struct HollowRuntime {
    start_delay: Duration,
    nodes: Vec<Arc<str>>,
    /// The same names, to find a pod's node without a walk over thousands.
    by_name: std::collections::HashSet<Arc<str>>,
    pods: Mutex<HashMap<Box<str>, PodEntry>>,
    timers: Mutex<BinaryHeap<Reverse<Timer>>>,
    timer_wake: Arc<tokio::sync::Notify>,
    actions: tokio::sync::mpsc::Sender<Action>,
}

fn pod_ip(name: &str) -> String {
    let h = name.bytes().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    format!("10.{}.{}.{}", 64 + (h >> 16) % 64, (h >> 8) & 255, (h & 253) + 2)
}

fn running_status(pod: &Value, t: &str) -> Value {
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ct| {
            json!({"name": ct["name"], "image": ct["image"], "imageID": "", "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": t}}, "lastState": {}, "containerID": format!("hollow://{}", ct["name"].as_str().unwrap_or(""))})
        })
        .collect();
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": t, "lastProbeTime": null});
    let ip = pod_ip(pod["metadata"]["name"].as_str().unwrap_or(""));
    json!({
        "phase": "Running", "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}], "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": t, "containerStatuses": containers,
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
    })
}

fn succeeded_status(pod: &Value, t: &str) -> Value {
    let started = pod["status"]["startTime"].as_str().unwrap_or(t).to_string();
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ct| {
            json!({"name": ct["name"], "image": ct["image"], "imageID": "", "ready": false, "started": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": t}}, "lastState": {},
                "containerID": format!("hollow://{}", ct["name"].as_str().unwrap_or(""))})
        })
        .collect();
    let cond = |ty: &str, ok: bool| {
        let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastTransitionTime": t, "lastProbeTime": null});
        if !ok {
            c["reason"] = json!("PodCompleted");
        }
        c
    };
    json!({
        "phase": "Succeeded", "containerStatuses": containers,
        "conditions": [cond("PodReadyToStartContainers", false), cond("Initialized", true), cond("Ready", false), cond("ContainersReady", false), cond("PodScheduled", true)],
    })
}

impl HollowRuntime {
    pub fn new(clients: crate::NodeClients, nodes: &[NodeSpec], start_delay: Duration) -> Arc<HollowRuntime> {
        let (tx, rx) = tokio::sync::mpsc::channel(ACTIONS);
        let rt = Arc::new(HollowRuntime {
            start_delay,
            nodes: nodes.iter().map(|n| Arc::from(n.name.as_str())).collect(),
            by_name: nodes.iter().map(|n| Arc::from(n.name.as_str())).collect(),
            pods: Default::default(),
            timers: Default::default(),
            timer_wake: Default::default(),
            actions: tx,
        });
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(clients.clone(), rx.clone(), Arc::downgrade(&rt)));
        }
        tokio::spawn(timer_loop(Arc::downgrade(&rt)));
        rt
    }

    fn schedule(&self, at: Instant, action: Action) {
        self.timers.lock().unwrap().push(Reverse(Timer { at, action }));
        self.timer_wake.notify_one();
    }

    /// Whether pod `uid` is still in `stage` (a status for it is still the one to write).
    fn still_in(&self, uid: &str, stage: Stage) -> bool {
        self.pods.lock().unwrap().get(uid).is_some_and(|e| e.stage == stage)
    }

    /// One of this runtime's node names (shared, not copied per pod), or a new one.
    fn node_named(&self, name: &str) -> Arc<str> {
        self.by_name.get(name).cloned().unwrap_or_else(|| Arc::from(name))
    }

    /// Pods this runtime tracks (tests and measurements).
    pub fn pod_count(&self) -> usize {
        self.pods.lock().unwrap().len()
    }

    async fn on_pod(&self, pod: Value) {
        let s = |k: &str| pod["metadata"][k].as_str().unwrap_or("");
        let (ns, name, uid) = (s("namespace"), s("name"), s("uid"));
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
        let node = self.node_named(pod["spec"]["nodeName"].as_str().unwrap_or(""));
        if pod["metadata"].get("deletionTimestamp").is_some() {
            self.pods.lock().unwrap().remove(uid);
            let _ = self.actions.send(Action::Delete(DeleteWrite { node, path, uid: uid.to_string(), attempt: 0 })).await;
            return;
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        let run_for = pod["metadata"]["annotations"][RUN_SECONDS_ANNOTATION].as_str().and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0);
        let (cpu, mem) = crate::pod::pod_requests(&pod);
        let stage = {
            let mut pods = self.pods.lock().unwrap();
            let e = pods.entry(uid.into()).or_insert_with(|| PodEntry {
                ns: ns.into(),
                name: name.into(),
                containers: pod["spec"]["containers"].as_array().into_iter().flatten().map(|c| Box::from(c["name"].as_str().unwrap_or(""))).collect(),
                node: node.clone(),
                stage: Stage::Starting,
                cpu_milli: cpu.clamp(0, u32::MAX as i64) as u32,
                mem_bytes: mem.max(0) as u64,
            });
            let before = e.stage;
            match (phase, before) {
                ("Pending", Stage::Starting) => e.stage = Stage::Running,
                ("Running", Stage::Starting | Stage::Running) if run_for.is_some() => e.stage = Stage::Completing,
                ("Succeeded" | "Failed", _) => e.stage = Stage::Done,
                _ => return,
            }
            (before, e.stage)
        };
        let write = |status, stage| StatusWrite { node, uid: uid.into(), path: path.into(), status, stage, attempt: 0 };
        match stage {
            (Stage::Starting, Stage::Running) => {
                let w = write(running_status(&pod, &now()), Stage::Running);
                if self.start_delay.is_zero() {
                    let _ = self.actions.send(Action::Status(w)).await;
                } else {
                    self.schedule(Instant::now() + self.start_delay, Action::Status(w));
                }
            }
            (_, Stage::Completing) => {
                let w = write(succeeded_status(&pod, &now()), Stage::Completing);
                let secs = run_for.unwrap_or(0.0).min(1e9);
                self.schedule(Instant::now() + Duration::from_secs_f64(secs), Action::Status(w));
            }
            _ => {}
        }
    }
}

async fn writer(c: crate::NodeClients, rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Action>>>, rt: std::sync::Weak<HollowRuntime>) {
    loop {
        let Some(a) = rx.lock().await.recv().await else { return };
        match a {
            Action::Status(mut w) => {
                // Built by hand: `json!` would copy the status through the serializer.
                let mut body = Value::Object(serde_json::Map::from_iter([("status".to_string(), std::mem::take(&mut w.status))]));
                match c.for_node(&w.node).merge_patch_quiet(&format!("{}/status", w.path), &body).await {
                    Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
                    Err(e) => {
                        let after = retry_after(w.attempt);
                        tracing::debug!(pod = &*w.path, error = %e, retry_in = ?after, "writing a hollow pod's status failed");
                        let Some(r) = rt.upgrade() else { return };
                        if r.still_in(&w.uid, w.stage) {
                            w.status = body["status"].take();
                            w.attempt += 1;
                            r.schedule(Instant::now() + after, Action::Status(w));
                        }
                    }
                }
            }
            Action::Delete(mut d) => {
                match c.for_node(&d.node).delete(&d.path, &json!({"gracePeriodSeconds": 0, "preconditions": {"uid": d.uid}})).await {
                    Ok(_) | Err(ClientError::Status { code: 404 | 409, .. }) => {}
                    Err(e) => {
                        let after = retry_after(d.attempt);
                        tracing::debug!(pod = d.path, error = %e, retry_in = ?after, "deleting a hollow pod failed");
                        let Some(r) = rt.upgrade() else { return };
                        d.attempt += 1;
                        r.schedule(Instant::now() + after, Action::Delete(d));
                    }
                }
            }
        }
    }
}

async fn timer_loop(rt: std::sync::Weak<HollowRuntime>) {
    loop {
        let Some(r) = rt.upgrade() else { return };
        let next = r.timers.lock().unwrap().peek().map(|t| t.0.at);
        let due: Vec<Timer> = {
            let mut h = r.timers.lock().unwrap();
            let now = Instant::now();
            let mut v = Vec::new();
            while h.peek().is_some_and(|t| t.0.at <= now) {
                v.push(h.pop().unwrap().0);
            }
            v
        };
        if due.is_empty() {
            let notify = r.timer_wake.clone();
            drop(r);
            let wake = notify.notified();
            let at = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! { _ = tokio::time::sleep_until(at.into()) => {}, _ = wake => {} }
            continue;
        }
        for t in due {
            if let Action::Status(w) = &t.action
                && !r.still_in(&w.uid, w.stage)
            {
                continue; // deleted, or moved on, meanwhile
            }
            let _ = r.actions.send(t.action).await;
        }
    }
}

impl Runtime for HollowRuntime {
    fn pod_changed(&self, pod: Value) -> crate::BoxFuture<'_> {
        Box::pin(self.on_pod(pod))
    }

    fn pod_removed(&self, _ns: &str, _name: &str, uid: &str) {
        self.pods.lock().unwrap().remove(uid);
    }

    fn resync(&self, pods: &[Value]) {
        let present: std::collections::HashSet<&str> = pods.iter().filter_map(|p| p["metadata"]["uid"].as_str()).collect();
        self.pods.lock().unwrap().retain(|u, _| present.contains(&**u));
    }

    fn stats(&self) -> Value {
        let ts = now();
        let pods = self.pods.lock().unwrap();
        let mut per_node: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        let mut pod_docs = Vec::new();
        for e in pods.values().filter(|e| e.stage == Stage::Running || e.stage == Stage::Completing) {
            // Synthetic: half the requests, or 5m and 8 MiB for a pod without any.
            let cpu = if e.cpu_milli > 0 { e.cpu_milli as u64 * 500_000 } else { 5_000_000 };
            let mem = if e.mem_bytes > 0 { e.mem_bytes / 2 } else { 8 << 20 };
            let n = per_node.entry(e.node.clone()).or_default();
            n.0 += cpu;
            n.1 += mem;
            let k = e.containers.len().max(1) as u64;
            let cs: Vec<Value> = e.containers.iter().map(|c| json!({"name": c, "cpuNanoCores": cpu / k, "memoryBytes": mem / k})).collect();
            pod_docs.push(json!({"namespace": e.ns, "name": e.name, "timestamp": ts, "window": "10s", "containers": cs}));
        }
        drop(pods);
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                let (cpu, mem) = per_node.get(n).copied().unwrap_or((0, 0));
                json!({"name": &**n, "timestamp": ts, "window": "10s", "cpuNanoCores": cpu + 1_000_000, "memoryBytes": mem + (64 << 20)})
            })
            .collect();
        json!({"nodes": nodes, "pods": pod_docs})
    }

    fn shutdown(&self) -> crate::BoxFuture<'_> {
        Box::pin(async {})
    }
}

/// A running set of hollow nodes. Dropping it stops their loops.
pub struct HollowNodes {
    pub kubelet: Kubelet,
    pub runtime: Arc<HollowRuntime>,
}

impl HollowNodes {
    /// Registers `cfg.count` nodes with the API server at `base` and starts their loops.
    pub async fn start(base: &str, cfg: HollowConfig) -> Result<HollowNodes, ClientError> {
        let nodes: Vec<NodeSpec> = (0..cfg.count).map(|i| cfg.node(i)).collect();
        let shared = Client::new(base);
        let per_node = match &cfg.node_tokens {
            None => None,
            Some(ca_only) => {
                let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
                let tokens = issue_node_tokens(&shared, &cfg.name_prefix, &names).await?;
                let via = Client::with_credentials(base, "capstan-hollow-node/0.1", ca_only).map_err(ClientError::Transport)?;
                let mut map = HashMap::with_capacity(names.len());
                for (name, token) in names.into_iter().zip(tokens) {
                    map.insert(name, via.with_bearer(client::Bearer::new(&token).map_err(ClientError::Transport)?));
                }
                Some(Arc::new(map))
            }
        };
        let clients = crate::NodeClients { shared, per_node: per_node.clone() };
        let runtime = HollowRuntime::new(clients, &nodes, cfg.start_delay);
        let client_ca = cfg.node_tokens.as_ref().map(|c| c.ca_pem.clone());
        let kcfg = KubeletConfig { lease_renew: cfg.lease_renew, per_node, client_ca, ..Default::default() };
        let kubelet = Kubelet::start(base, kcfg, nodes, runtime.clone()).await?;
        Ok(HollowNodes { kubelet, runtime })
    }
}

/// The label on the node-token Secrets of one set of hollow nodes (its value: the names'
/// prefix without a trailing `-`), by which a new start deletes the last one's.
pub const NODE_TOKEN_LABEL: &str = "capstan.io/hollow-nodes";
const NODE_TOKEN_TYPE: &str = "capstan.io/node-token";

/// Creates a node token for each of `names` through `admin` (who may create Secrets in
/// `kube-system`), after deleting those an earlier start of nodes with this prefix made, and
/// returns them in `names`' order. A token is `ID.SECRET` (6 and 32 characters of
/// `[a-z0-9]`), kept as the Secret `kube-system/node-token-ID` that the API server's
/// node-token authenticator reads (`apiserver/src/node_token.rs`).
pub async fn issue_node_tokens(admin: &Client, prefix: &str, names: &[String]) -> Result<Vec<String>, ClientError> {
    use futures_util::StreamExt;
    let set = prefix.trim_end_matches(['-', '.']);
    let set = if set.is_empty() { "nodes" } else { set };
    let secrets = "/api/v1/namespaces/kube-system/secrets";
    match admin.delete(&format!("{secrets}?labelSelector={NODE_TOKEN_LABEL}%3D{set}"), &json!({})).await {
        Ok(_) | Err(ClientError::Status { code: 404, .. }) => {}
        Err(e) => return Err(e),
    }
    let random = |n: usize| {
        use rand::Rng;
        const ABC: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut r = rand::rng();
        (0..n).map(|_| ABC[r.random_range(0..ABC.len())] as char).collect::<String>()
    };
    let made: Vec<(String, String)> = names.iter().map(|n| (n.clone(), format!("{}.{}", random(6), random(32)))).collect();
    let mut creates = futures_util::stream::iter(&made)
        .map(|(node, token)| {
            let (id, secret) = token.split_once('.').expect("made with a dot");
            let body = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("node-token-{id}"), "namespace": "kube-system", "labels": {NODE_TOKEN_LABEL: set}},
                "type": NODE_TOKEN_TYPE,
                "stringData": {"token-id": id, "token-secret": secret, "node-name": node},
            });
            async move { admin.post(secrets, &body).await }
        })
        .buffer_unordered(64);
    while let Some(r) = creates.next().await {
        r?;
    }
    drop(creates);
    Ok(made.into_iter().map(|(_, t)| t).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_retries_back_off_to_a_bound() {
        let secs: Vec<u64> = (0..7).map(|a| retry_after(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8, 8, 8]);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
    }
}
