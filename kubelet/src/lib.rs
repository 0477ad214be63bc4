//! capstan's node agent. One [`Kubelet`] hosts one or many nodes over one API connection
//! pool and one pod watch, and hands their pods to a [`Runtime`]:
//! - [`process::ProcessRuntime`] runs a real node's pods as local processes (logs, restarts,
//!   probes, graceful termination);
//! - [`hollow::HollowRuntime`] runs thousands of hollow nodes (like kubemark or kwok): no
//!   processes, pods go Running (and Succeeded, if they declare a run time) after delays.
//!
//! **Invariants.** A kubelet talks only to the API server (never the store). One pod watch
//! serves every node of the process, dispatched by node name; it resumes from the last
//! revision it saw and lists again only when the server says that revision is gone (410).
//! Leases are renewed every `lease_renew`, spread over the period; node status is written
//! at registration and then every `status_every` (Kubernetes' nodeStatusReportFrequency).
//!
//! **Where to start reading.** [`Kubelet::start`], then `pod_loop`, then a runtime.

pub mod cgroup;
pub mod dns;
pub mod hollow;
pub mod logs;
pub mod netpol;
pub mod network;
mod orphans;
pub mod pod;
pub mod privileges;
pub mod probe;
pub mod proxy;
pub mod process;
pub mod secure;
pub mod server;
pub mod sandbox;
pub mod stats;
pub mod stream;
pub mod volume;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

pub use ::client;
pub use ::client::events;
use client::{Client, ClientError};
use api::meta::{now_micro, now_rfc3339 as now};

pub use hollow::{HollowConfig, HollowNodes};

pub type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// What runs the pods of a kubelet's nodes.
pub trait Runtime: Send + Sync + 'static {
    /// A pod bound to one of the nodes was added or changed (the latest object). The watch
    /// waits for the returned future: a runtime pushes back by not finishing it.
    fn pod_changed(&self, pod: Value) -> BoxFuture<'_>;
    /// A pod bound to one of the nodes is gone from the API.
    fn pod_removed(&self, ns: &str, name: &str, uid: &str);
    /// After a (re)list: every pod bound to the nodes now; others are gone.
    fn resync(&self, _pods: &[Value]) {}
    /// Usage of the nodes and pods, for `/stats/capstan`.
    fn stats(&self) -> Value;
    /// Where container logs live, if the runtime has any.
    fn log_root(&self) -> Option<PathBuf> {
        None
    }
    /// The log file being written now at `path`, for `follow`.
    fn live_log(&self, _path: &Path) -> Option<Arc<logs::LogSink>> {
        None
    }
    /// Stops every pod (node shutdown).
    fn shutdown(&self) -> BoxFuture<'_>;
    /// A running container to exec in (`kubectl exec`), or why there is none.
    fn exec_target(&self, _ns: &str, _pod: &str, _container: &str) -> Result<stream::ExecTarget, String> {
        Err("this node runs no processes: exec is not supported".into())
    }
    /// Where the pod's ports are (`kubectl port-forward`): an address, and the pod's network
    /// namespace when it has one (then the address is its loopback, as in Kubernetes).
    fn port_forward_target(&self, _ns: &str, _pod: &str) -> Result<(String, Option<PathBuf>), String> {
        Err("this node runs no processes: port-forward is not supported".into())
    }
    /// A running container to attach to (`kubectl attach`), or why there is none.
    fn attach_target(&self, _ns: &str, _pod: &str, _container: &str) -> Result<stream::AttachTarget, String> {
        Err("this node runs no processes: attach is not supported".into())
    }
}

/// One node as registered.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub labels: Map<String, Value>,
    /// `capacity` (and `allocatable`): cpu, memory, pods, ephemeral-storage.
    pub capacity: Map<String, Value>,
    pub taints: Vec<Value>,
    pub internal_ip: String,
    pub node_info: Value,
    /// `spec.podCIDR` (the real node's, when its pods have their own network).
    pub pod_cidr: Option<String>,
    /// Annotations the node registers with (the real node's local-path directory).
    pub annotations: Map<String, Value>,
}

impl NodeSpec {
    /// The status this kubelet reports; `since` is when its conditions last changed (the
    /// kubelet's start: they do not change afterwards).
    fn status(&self, port: u16, since: &str) -> Value {
        let t = now();
        let cond = |ty: &str, st: &str, reason: &str, msg: &str| {
            json!({"type": ty, "status": st, "reason": reason, "message": msg, "lastHeartbeatTime": t, "lastTransitionTime": since})
        };
        json!({
            "capacity": self.capacity, "allocatable": self.capacity,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.internal_ip}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": self.node_info,
        })
    }

    /// The Node object this spec registers (kubelet port 0, conditions since now): what the
    /// scheduler simulator generates for a workload's `createNodes`.
    pub fn api_object(&self) -> Value {
        self.object(0, &now())
    }

    fn object(&self, port: u16, since: &str) -> Value {
        let mut spec = json!({});
        if !self.taints.is_empty() {
            spec["taints"] = json!(self.taints);
        }
        if let Some(c) = &self.pod_cidr {
            spec["podCIDR"] = json!(c);
            spec["podCIDRs"] = json!([c]);
        }
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels, "annotations": self.annotations},
            "spec": spec,
            "status": self.status(port, since),
        })
    }

    /// The node this machine is: its cores, memory and disk.
    pub fn local(name: &str, data_dir: &Path) -> NodeSpec {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (mem, _) = stats::meminfo();
        let disk = stats::fs_bytes(data_dir);
        let mut labels = Map::new();
        for (k, v) in [("kubernetes.io/hostname", name), ("kubernetes.io/os", "linux"), ("kubernetes.io/arch", std::env::consts::ARCH)] {
            labels.insert(k.into(), json!(v));
        }
        let mut capacity = Map::new();
        capacity.insert("cpu".into(), json!(cpus.to_string()));
        capacity.insert("memory".into(), json!(format!("{}Ki", mem / 1024)));
        capacity.insert("pods".into(), json!("110"));
        capacity.insert("ephemeral-storage".into(), json!(format!("{}Ki", disk / 1024)));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        NodeSpec {
            name: name.to_string(),
            labels,
            capacity,
            taints: Vec::new(),
            internal_ip: "127.0.0.1".into(),
            node_info: json!({
                "kubeletVersion": "v1.33.0-capstan", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
                "containerRuntimeVersion": "capstan-process://0.1", "osImage": "capstan process runtime (no images)",
                "kernelVersion": kernel, "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
            }),
            pod_cidr: None,
            annotations: {
                // Where the local-path provisioner's volumes for this node live.
                let mut a = Map::new();
                a.insert(volume::local_path::DIR_ANNOTATION.into(), json!(volume::local_path::dir(data_dir).display().to_string()));
                a
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub lease_renew: Duration,
    pub status_every: Duration,
    /// Where the kubelet endpoint listens (port 0: any free port).
    pub listen: std::net::SocketAddr,
    /// The kubelet's own client TLS (`system:node:NAME`, possibly rotating); the process's
    /// default credentials when none.
    pub tls: Option<client::tls::ClientTls>,
    /// A client per node for that node's writes (hollow nodes with node tokens); the shared
    /// client, for everything, when none.
    pub per_node: Option<Arc<std::collections::HashMap<String, Client>>>,
    /// The cluster CA: with it the endpoint serves TLS, requires client certificates of it
    /// and authorizes each request with the API server (`secure.rs`); plain HTTP without.
    pub client_ca: Option<String>,
}

/// The client each node's requests go through: one for all (a kubelet of one node, or nodes
/// without identities of their own), or one per node, each presenting its node's token over
/// a common connection pool (hollow nodes). Watches that serve every node use the shared one.
#[derive(Clone)]
pub struct NodeClients {
    pub shared: Client,
    pub per_node: Option<Arc<std::collections::HashMap<String, Client>>>,
}

impl NodeClients {
    pub fn for_node(&self, name: &str) -> &Client {
        self.per_node.as_ref().and_then(|m| m.get(name)).unwrap_or(&self.shared)
    }
}

impl Default for KubeletConfig {
    fn default() -> Self {
        KubeletConfig { lease_renew: Duration::from_secs(10), status_every: Duration::from_secs(300), listen: ([127, 0, 0, 1], 0).into(), tls: None, per_node: None, client_ca: None }
    }
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

/// A running kubelet. `shutdown` stops its pods; dropping it stops its loops.
pub struct Kubelet {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    runtime: Arc<dyn Runtime>,
    pub port: u16,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Kubelet {
    /// Registers `nodes` with the API server at `base` (updating them if they exist, as after
    /// a restart), starts the endpoint, the lease and status loops and the pod watch.
    pub async fn start(base: &str, cfg: KubeletConfig, nodes: Vec<NodeSpec>, runtime: Arc<dyn Runtime>) -> Result<Kubelet, ClientError> {
        let c = match &cfg.tls {
            Some(tls) => Client::with_tls(base, "capstan-kubelet/0.1", tls),
            None => Client::new(base),
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen).await.map_err(|e| ClientError::Transport(format!("kubelet endpoint: {e}")))?;
        let port = listener.local_addr().map_err(|e| ClientError::Transport(e.to_string()))?.port();
        let app = server::router(runtime.clone());
        let guard = match &cfg.client_ca {
            Some(ca) => Some(Arc::new(secure::Guard::new(ca, c.clone(), if nodes.len() == 1 { nodes[0].name.clone() } else { String::new() }).map_err(ClientError::Transport)?)),
            None => None,
        };
        let mut tasks = vec![tokio::spawn(secure::serve(listener, app, guard))];
        let since = now();
        let cs = NodeClients { shared: c.clone(), per_node: cfg.per_node.clone() };
        {
            use futures_util::StreamExt;
            let mut regs = futures_util::stream::iter(&nodes).map(|n| register(cs.for_node(&n.name), n, port, cfg.lease_renew, &since)).buffer_unordered(BATCH_CONCURRENCY);
            while let Some(r) = regs.next().await {
                r?;
            }
        }
        let names: Arc<HashSet<String>> = Arc::new(nodes.iter().map(|n| n.name.clone()).collect());
        let selector = if nodes.len() == 1 { format!("spec.nodeName%3D{}", nodes[0].name) } else { "spec.nodeName%21%3D".to_string() };
        let nodes = Arc::new(nodes);
        tasks.push(tokio::spawn(lease_loop(cs.clone(), names.clone(), cfg.lease_renew)));
        tasks.push(tokio::spawn(status_loop(cs.clone(), nodes.clone(), port, cfg.status_every, since.clone())));
        tasks.push(tokio::spawn(node_watch(cs, nodes, port, since)));
        tasks.push(tokio::spawn(pod_loop(c.clone(), names, selector, runtime.clone())));
        Ok(Kubelet { tasks, runtime, port })
    }

    /// Stops every pod, then the loops.
    pub async fn shutdown(self) {
        self.runtime.shutdown().await;
    }
}

async fn register(c: &Client, n: &NodeSpec, port: u16, renew: Duration, since: &str) -> Result<(), ClientError> {
    match c.post("/api/v1/nodes", &n.object(port, since)).await {
        Ok(_) => {}
        Err(ClientError::Status { code: 409, .. }) => {
            // Known already (a restart): refresh what this start knows.
            let path = format!("/api/v1/nodes/{}", n.name);
            let mut patch = json!({"metadata": {"labels": n.labels, "annotations": n.annotations}});
            if let Some(c) = &n.pod_cidr {
                patch["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
            }
            c.merge_patch(&path, &patch).await?;
            c.merge_patch(&format!("{path}/status"), &json!({"status": n.status(port, since)})).await?;
        }
        Err(e) => return Err(e),
    }
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": n.name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": n.name, "leaseDurationSeconds": (renew.as_secs() * 4).max(4), "renewTime": now_micro()},
    });
    match c.post(LEASES, &lease).await {
        Ok(_) | Err(ClientError::Status { code: 409, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `f` once per `period` for every item, in small concurrent batches every `tick`
/// (at most `BATCH_CONCURRENCY` requests in flight). Batches rather than one request every
/// period/N: concurrent writes share the store's group commit (one fdatasync for a batch
/// instead of one each) and the process wakes 1/tick times a second, not N/period.
async fn spread<T, F, Fut>(items: &[T], period: Duration, tick: Duration, f: F)
where
    F: Fn(&T) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::StreamExt;
    let ticks = (period.as_micros() / tick.as_micros().max(1)).max(1) as usize;
    let per_tick = items.len().div_ceil(ticks).max(1);
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for batch in items.chunks(per_tick) {
            timer.tick().await;
            futures_util::stream::iter(batch).for_each_concurrent(BATCH_CONCURRENCY, &f).await;
        }
        // A period shorter than ticks * tick (few items) waits out the rest of the period.
        let used = tick * items.len().div_ceil(per_tick) as u32;
        if used < period {
            tokio::time::sleep(period - used).await;
        }
    }
}

const BATCH_CONCURRENCY: usize = 64;
const HEARTBEAT_TICK: Duration = Duration::from_millis(100);

/// Renews every node's lease once per period.
async fn lease_loop(cs: NodeClients, names: Arc<HashSet<String>>, renew: Duration) {
    let names: Vec<String> = names.iter().cloned().collect();
    spread(&names, renew, HEARTBEAT_TICK, |n| {
        let c = cs.for_node(n).clone();
        let path = format!("{LEASES}/{n}");
        let patch = json!({"spec": {"renewTime": now_micro(), "holderIdentity": n}});
        async move {
            if let Err(e) = c.merge_patch_quiet(&path, &patch).await {
                tracing::warn!(lease = path, error = %e, "renewing a node lease failed");
            }
        }
    })
    .await
}

/// Refreshes node status (the conditions' heartbeat) every `every`.
async fn status_loop(cs: NodeClients, nodes: Arc<Vec<NodeSpec>>, port: u16, every: Duration, since: String) {
    spread(&nodes, every, Duration::from_secs(1), |n| {
        let c = cs.for_node(&n.name).clone();
        let path = format!("/api/v1/nodes/{}/status", n.name);
        let patch = json!({"status": n.status(port, &since)});
        async move {
            if let Err(e) = c.merge_patch_quiet(&path, &patch).await {
                tracing::warn!(node = path, error = %e, "updating node status failed");
            }
        }
    })
    .await
}

/// Watches the nodes; one of ours that someone else marked not Ready (the node lifecycle
/// controller, after a lapse of the lease) gets its status posted again at once, as the
/// kubelet's status sync does, instead of at the next 5-minute refresh.
async fn node_watch(cs: NodeClients, nodes: Arc<Vec<NodeSpec>>, port: u16, since: String) {
    let c = &cs.shared;
    let by_name: std::collections::HashMap<&str, &NodeSpec> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    loop {
        let Ok(list) = c.get("/api/v1/nodes").await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
        let mut stream = match c.watch(&format!("/api/v1/nodes?watch=true&resourceVersion={rv}")).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            let n = &ev["object"];
            let Some(spec) = n["metadata"]["name"].as_str().and_then(|x| by_name.get(x)) else { continue };
            let ready = n["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == "Ready")).map(|c| c["status"] == "True");
            if ev["type"] == "MODIFIED" && ready != Some(true) {
                let path = format!("/api/v1/nodes/{}/status", spec.name);
                let _ = cs.for_node(&spec.name).merge_patch_quiet(&path, &json!({"status": spec.status(port, &since)})).await;
            }
        }
    }
}

/// One watch of the pods bound to the nodes, resumed from the last revision seen; a new
/// list only when the server no longer has that revision.
async fn pod_loop(c: Client, names: Arc<HashSet<String>>, selector: String, rt: Arc<dyn Runtime>) {
    let mine = |p: &Value| p["spec"]["nodeName"].as_str().is_some_and(|n| names.contains(n));
    let mut rv: Option<String> = None;
    loop {
        let from = match rv.clone() {
            Some(r) => r,
            None => match c.get(&format!("/api/v1/pods?fieldSelector={selector}")).await {
                Ok(list) => {
                    let items: Vec<Value> = list["items"].as_array().into_iter().flatten().filter(|p| mine(p)).cloned().collect();
                    rt.resync(&items);
                    for p in items {
                        rt.pod_changed(p).await;
                    }
                    list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing pods for the kubelet failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let url = format!("/api/v1/pods?fieldSelector={selector}&watch=true&allowWatchBookmarks=true&resourceVersion={from}");
        let mut stream = match c.watch(&url).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watching pods for the kubelet failed; listing again");
                rv = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        rv = Some(from);
        while let Some(mut ev) = stream.next().await {
            let obj = ev["object"].take();
            match ev["type"].as_str().unwrap_or("") {
                "ERROR" => {
                    // 410 Gone (or anything else the server ends a watch with): list again.
                    rv = None;
                    break;
                }
                ty => {
                    if let Some(r) = obj["metadata"]["resourceVersion"].as_str() {
                        rv = Some(r.to_string());
                    }
                    if !mine(&obj) {
                        continue;
                    }
                    let s = |k: &str| obj["metadata"][k].as_str().unwrap_or("");
                    match ty {
                        "ADDED" | "MODIFIED" => rt.pod_changed(obj).await,
                        "DELETED" => rt.pod_removed(s("namespace"), s("name"), s("uid")),
                        _ => {}
                    }
                }
            }
        }
    }
}
