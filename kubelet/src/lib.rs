//! capstan's node agent. Today: hollow nodes (like kubemark or kwok) — many nodes in one
//! process, sharing one HTTP connection pool and one pod watch — that register, keep their
//! leases renewed and move the pods bound to them from Pending to Running. The process
//! runtime (real pods as local processes) is still to come (issue #5).
//!
//! **Invariants.** A kubelet talks only to the API server (never the store). One pod watch
//! serves every hollow node of the process (`fieldSelector=spec.nodeName!=`), dispatched by
//! node name. Lease renewals are spread over the renew interval.
//!
//! **Where to start reading.** [`HollowNodes::start`], then `pod_loop` and `lease_loop`.

pub mod client;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use client::{Client, ClientError};

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
        }
    }
}

/// A running set of hollow nodes. Dropping it stops their loops.
pub struct HollowNodes {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for HollowNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> String {
    let t = jiff::Timestamp::now();
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

fn node_object(cfg: &HollowConfig, i: usize) -> Value {
    let name = format!("{}{i}", cfg.name_prefix);
    let resources = json!({"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods, "ephemeral-storage": "100Gi"});
    let t = now();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": format!("zone-{}", i % cfg.zones.max(1)),
            "capstan.io/hollow": "true",
        }},
        "spec": {},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "hollow kubelet is posting ready status", "lastHeartbeatTime": t, "lastTransitionTime": t},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": t, "lastTransitionTime": t},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": t, "lastTransitionTime": t},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": t, "lastTransitionTime": t},
            ],
            "addresses": [{"type": "InternalIP", "address": format!("10.{}.{}.{}", 64 + (i >> 16) % 64, (i >> 8) & 255, i & 255)}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.33.0-capstan-hollow", "operatingSystem": "linux", "architecture": "amd64", "containerRuntimeVersion": "hollow://0", "osImage": "hollow", "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        },
    })
}

fn lease_object(node: &str, renew: Duration) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": (renew.as_secs() * 4).max(4), "renewTime": now_micro()},
    })
}

fn now_micro() -> String {
    // MicroTime: RFC 3339 with microseconds.
    let t = jiff::Timestamp::now();
    format!("{}", t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
}

/// Creates `obj` at `collection`, or leaves it if it exists (a restart of `capstan up`).
async fn ensure(c: &Client, collection: &str, obj: &Value) -> Result<(), ClientError> {
    match c.post(collection, obj).await {
        Ok(_) => Ok(()),
        Err(ClientError::Status { code: 409, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

impl HollowNodes {
    /// Registers `cfg.count` nodes with the API server at `base` and starts their loops.
    pub async fn start(base: &str, cfg: HollowConfig) -> Result<HollowNodes, ClientError> {
        let c = Client::new(base);
        let names: Vec<String> = (0..cfg.count).map(|i| format!("{}{i}", cfg.name_prefix)).collect();
        for i in 0..cfg.count {
            ensure(&c, "/api/v1/nodes", &node_object(&cfg, i)).await?;
            ensure(&c, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", &lease_object(&names[i], cfg.lease_renew)).await?;
        }
        let names: Arc<HashSet<String>> = Arc::new(names.into_iter().collect());
        let tasks = vec![
            tokio::spawn(lease_loop(c.clone(), names.clone(), cfg.lease_renew)),
            tokio::spawn(pod_loop(c.clone(), names, cfg.start_delay)),
        ];
        Ok(HollowNodes { tasks })
    }
}

/// Renews every node's lease once per period, spread over the period.
async fn lease_loop(c: Client, names: Arc<HashSet<String>>, renew: Duration) {
    let names: Vec<String> = names.iter().cloned().collect();
    let step = renew / (names.len().max(1) as u32);
    loop {
        for n in &names {
            tokio::time::sleep(step).await;
            let path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{n}");
            let patch = json!({"spec": {"renewTime": now_micro(), "holderIdentity": n}});
            if let Err(e) = c.merge_patch(&path, &patch).await {
                tracing::warn!(node = n, error = %e, "renewing a hollow node's lease failed");
            }
        }
    }
}

/// One watch of every bound pod; pods of our nodes that are Pending become Running, pods
/// being deleted are removed.
async fn pod_loop(c: Client, names: Arc<HashSet<String>>, start_delay: Duration) {
    loop {
        let rv = match c.get("/api/v1/pods?fieldSelector=spec.nodeName%21%3D").await {
            Ok(list) => {
                for p in list["items"].as_array().into_iter().flatten() {
                    handle_pod(&c, &names, p, start_delay).await;
                }
                list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string()
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing pods for hollow nodes failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let url = format!("/api/v1/pods?fieldSelector=spec.nodeName%21%3D&watch=true&allowWatchBookmarks=true&resourceVersion={rv}");
        let mut stream = match c.watch(&url).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watching pods for hollow nodes failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // When the watch ends (its timeout, a restart), list again: simple and correct.
        while let Some(ev) = stream.next().await {
            let ty = ev["type"].as_str().unwrap_or("");
            if ty == "ADDED" || ty == "MODIFIED" {
                handle_pod(&c, &names, &ev["object"], start_delay).await;
            }
        }
    }
}

async fn handle_pod(c: &Client, names: &HashSet<String>, pod: &Value, start_delay: Duration) {
    let Some(node) = pod["spec"]["nodeName"].as_str() else { return };
    if !names.contains(node) {
        return;
    }
    let (Some(ns), Some(name)) = (pod["metadata"]["namespace"].as_str(), pod["metadata"]["name"].as_str()) else { return };
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
    if pod["metadata"].get("deletionTimestamp").is_some() {
        // No containers to stop: the pod is gone at once.
        let _ = c.delete(&path, &json!({"gracePeriodSeconds": 0})).await;
        return;
    }
    if pod["status"]["phase"].as_str().unwrap_or("Pending") != "Pending" {
        return;
    }
    if !start_delay.is_zero() {
        tokio::time::sleep(start_delay).await;
    }
    let t = now();
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ct| {
            json!({"name": ct["name"], "image": ct["image"], "imageID": "", "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": t}}, "containerID": format!("hollow://{}", ct["name"].as_str().unwrap_or(""))})
        })
        .collect();
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": t, "lastProbeTime": null});
    let mut status = json!({
        "phase": "Running", "hostIP": "10.64.0.1", "podIP": format!("10.244.{}.{}", name.len() % 250, name.bytes().map(|b| b as usize).sum::<usize>() % 250 + 2),
        "startTime": t, "containerStatuses": containers, "qosClass": pod["status"]["qosClass"],
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
    });
    status["podIPs"] = json!([{"ip": status["podIP"]}]);
    let mut updated = pod.clone();
    updated["status"] = status;
    if let Err(e) = c.put(&format!("{path}/status"), &updated).await {
        tracing::debug!(pod = name, error = %e, "setting a hollow pod Running failed (it changed; the watch brings it back)");
    }
}
