//! A Kubernetes workload over the simulated store, objects as Kubernetes JSON under `rs/`,
//! `pods/` and `nodes/`:
//!
//! - ReplicaSets reconciled with capstan's own decisions (`controllers::replicaset::decide`,
//!   which ranks pods for deletion as Kubernetes does, and `pod_from_template`), by whichever
//!   controller manager holds the Lease (`lease.rs`), through its own replica;
//! - two schedulers binding pending pods to registered nodes with a compare-and-swap on the
//!   pod's revision, as capstan's binding does (two, as an old and a new leader may briefly be);
//! - hollow kubelets: each registers its node, renews its node lease every 10 s and marks the
//!   pods bound to it Running and Ready;
//! - Deployments rolled out by capstan's rolling-update arithmetic
//!   (`controllers::deployment`), through ReplicaSets the ReplicaSet controller then fills;
//! - Jobs run by capstan's Job decisions (`controllers::workloads::job_step`), their pods
//!   ending Succeeded (or, one in seven, Failed) on the kubelet's next visit;
//! - a driver that scales the ReplicaSets and Deployments, rolls Deployments out to new
//!   images, deletes pods (as evictions would) and adds Jobs while faults run.
//!
//! Checked: a pod bound to a node is never bound to another (`pod-rebound`, in `check.rs`), and
//! once faults stop every ReplicaSet has as many active pods as it asks for, each bound and
//! Running, every Deployment has rolled out (its newest ReplicaSet at its replicas, the older
//! ones at 0), and every Job has finished, within `CONVERGE` (`workloads-not-converged`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controllers::replicaset::{decide, pod_from_template};
use controllers::deployment::{HASH_LABEL, Rs, new_rs_replicas, scale_down_old, surge_unavailable, template_hash};
use controllers::workloads::{JobStep, job_step};
use client::obj::Obj;
use serde_json::{Value, json};
use storage::{Command, Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, KeyValue, PutRequest, TxnOp, TxnRequest};

use crate::Bug;
use crate::workload::{Written, list_from, write, write_from};
use crate::world::World;

pub const RS: &str = "rs/";
pub const PODS: &str = "pods/";
pub const NODES: &str = "nodes/";
pub const JOBS: &str = "jobs/";
pub const DEPLOYMENTS: &str = "deployments/";
const DEPLOYMENT_COUNT: u64 = 2;
const REPLICASETS: u64 = 3;
/// Jobs created at the start; the driver adds some while faults run, up to `JOBS_MAX`.
const JOBS_AT_START: u64 = 2;
const JOBS_MAX: usize = 6;
/// How long ReplicaSets have to converge once the store has.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// A write of object `v` under `key` if `compare` holds (its resourceVersion is the key's
/// revision, not stored).
pub(crate) fn put(key: &str, v: &Value, compare: Vec<Compare>) -> Command {
    Command::Txn(TxnRequest { compare, success: vec![put_op(key, v)], failure: vec![] })
}

/// The put of object `v` under `key`, for a txn (its resourceVersion is not stored).
pub(crate) fn put_op(key: &str, v: &Value) -> TxnOp {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let value = Bytes::from(serde_json::to_vec(&v).expect("an object encodes"));
    TxnOp::Put(PutRequest { key: Bytes::from(key.to_string()), value, lease: 0, prev_kv: false })
}

/// A delete of `key` if `compare` holds.
pub(crate) fn delete(key: &str, compare: Vec<Compare>) -> Command {
    Command::Txn(TxnRequest { compare, success: vec![TxnOp::Delete(DeleteRequest { range: KeyRange::Key(Bytes::from(key.to_string())), prev_kv: false })], failure: vec![] })
}

pub(crate) fn absent(key: &str) -> Vec<Compare> {
    vec![Compare { key: Bytes::from(key.to_string()), op: CompareOp::Equal, target: CompareTarget::Version(0), range_end: None }]
}

pub(crate) fn unchanged(key: &str, rev: u64) -> Vec<Compare> {
    vec![Compare { key: Bytes::from(key.to_string()), op: CompareOp::Equal, target: CompareTarget::ModRevision(rev), range_end: None }]
}

/// An object read from the store, with its revision as its resourceVersion.
pub(crate) fn object(kv: &KeyValue) -> Option<(String, u64, Value)> {
    let v: Value = serde_json::from_slice(&kv.value).ok()?;
    Some((String::from_utf8_lossy(&kv.key).to_string(), kv.mod_revision, v))
}

/// The write was applied and its compares held.
pub(crate) fn ok(w: &Written) -> bool {
    matches!(w, Written::Applied(storage::Applied::Txn(Ok(r))) if r.succeeded)
}

/// Creates the ReplicaSets (with the store healthy, before faults).
pub async fn create_replicasets(world: &World) -> bool {
    for i in 0..REPLICASETS {
        let name = format!("web-{i}");
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "generation": 1},
            "spec": {"replicas": world.range(1, 8), "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "pause"}]}}},
        });
        let key = format!("{RS}{name}");
        if !ok(&write(world, put(&key, &rs, absent(&key))).await) {
            return false;
        }
    }
    true
}

/// Creates the Deployments (with the store healthy, before faults).
pub async fn create_deployments(world: &World) -> bool {
    for i in 0..DEPLOYMENT_COUNT {
        let name = format!("app-{i}");
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"replicas": world.range(1, 6), "selector": {"matchLabels": {"app": name}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "app:1"}]}}},
        });
        let key = format!("{DEPLOYMENTS}{name}");
        if !ok(&write(world, put(&key, &d, absent(&key))).await) {
            return false;
        }
    }
    true
}

/// A ReplicaSet's pods that are Running and Ready.
fn available(pods: &[(String, u64, Value)], rs: &str) -> i64 {
    pods.iter()
        .filter(|(_, _, p)| p["metadata"]["ownerReferences"][0]["name"] == rs && is_active(p) && controllers::podutil::is_ready(&Obj::from(p)))
        .count() as i64
}

/// One pass of the Deployment controller (capstan's rolling-update arithmetic:
/// `new_rs_replicas`, `scale_down_old`, `surge_unavailable`, `template_hash`), run by the
/// controller manager of replica `home`. Availability is counted from the pods (the
/// simulated ReplicaSet controller writes no status).
pub async fn sync_deployments(world: &World, home: u64) {
    let Some(ds) = list_from(world, Some(home), DEPLOYMENTS).await else { return };
    for (_, _, d) in parse_all(&ds) {
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let (Some(rss), Some(pods)) = (list_from(world, Some(home), &format!("{RS}{name}-")).await, list_from(world, Some(home), &format!("{PODS}{name}-")).await) else { return };
        let pods = parse_all(&pods);
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let hash = template_hash(&Obj::from(&d["spec"]["template"]));
        let new_name = format!("{name}-{hash}");
        let mut sets: Vec<(String, u64, Value, Rs)> = rss
            .iter()
            .filter_map(|kv| {
                let (key, rev, rs) = object(kv)?;
                let n = rs["metadata"]["name"].as_str()?.to_string();
                let r = Rs { spec: rs["spec"]["replicas"].as_i64().unwrap_or(0), available: available(&pods, &n), created: kv.create_revision as i64, name: n };
                Some((key, rev, rs, r))
            })
            .collect();
        if !sets.iter().any(|(_, _, _, r)| r.name == new_name) {
            let mut template = d["spec"]["template"].clone();
            template["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": new_name, "namespace": "default", "uid": format!("uid-{new_name}"),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": d["metadata"]["uid"], "controller": true}]},
                "spec": {"replicas": 0, "selector": {"matchLabels": template["metadata"]["labels"]}, "template": template}});
            let key = format!("{RS}{new_name}");
            if ok(&write_from(world, Some(home), put(&key, &rs, absent(&key))).await) {
                world.log("kube", format!("cm-{home}: created ReplicaSet {new_name}"));
            }
            continue;
        }
        let (surge, unavailable) = surge_unavailable(&Obj::from(&d));
        let all: Vec<Rs> = sets.iter().map(|s| s.3.clone()).collect();
        let new = all.iter().find(|r| r.name == new_name).cloned().expect("the new set is there");
        let old: Vec<Rs> = all.iter().filter(|r| r.name != new_name).cloned().collect();
        let mut want: Vec<(String, i64)> = vec![(new_name.clone(), if old.iter().all(|r| r.spec == 0) { replicas } else { new_rs_replicas(replicas, surge, &all, &new) })];
        want.extend(scale_down_old(replicas, unavailable, &new, &old));
        for (n, spec) in want {
            let Some((key, rev, rs, r)) = sets.iter_mut().find(|s| s.3.name == n) else { continue };
            if r.spec == spec {
                continue;
            }
            let mut rs = rs.clone();
            rs["spec"]["replicas"] = json!(spec);
            if ok(&write_from(world, Some(home), put(key, &rs, unchanged(key, *rev))).await) {
                world.log("kube", format!("cm-{home}: scaled ReplicaSet {n} to {spec}"));
            }
        }
    }
}

fn job(name: &str, world: &World) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"completions": world.range(1, 6), "parallelism": world.range(1, 4), "backoffLimit": 6,
            "template": {"metadata": {"labels": {"job-name": name}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}},
    })
}

/// Creates the first Jobs (with the store healthy, before faults).
pub async fn create_jobs(world: &World) -> bool {
    for i in 0..JOBS_AT_START {
        let name = format!("batch-{i}");
        let key = format!("{JOBS}{name}");
        if !ok(&write(world, put(&key, &job(&name, world), absent(&key))).await) {
            return false;
        }
    }
    true
}

/// Whether a Job has finished (a `Complete` or `Failed` condition).
pub fn finished(job: &Value) -> Option<&str> {
    job["status"]["conditions"].as_array()?.iter().find(|c| c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed"))?["type"].as_str()
}

/// One pass of the Job controller (capstan's `job_step` decisions), run by the controller
/// manager of replica `home`.
pub async fn sync_jobs(world: &World, home: u64) {
    let Some(jobs) = list_from(world, Some(home), JOBS).await else { return };
    for (key, rev, mut job) in parse_all(&jobs) {
        if finished(&job).is_some() {
            continue;
        }
        let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
        let Some(pods) = list_from(world, Some(home), &format!("{PODS}{name}-")).await else { return };
        let pods: Vec<(String, u64, Value)> = parse_all(&pods);
        let arcs: Vec<Arc<Obj>> = pods.iter().map(|(_, _, p)| Arc::new(Obj::from(p))).collect();
        match job_step(&Obj::from(&job), &arcs, 0) {
            JobStep::Wait => {}
            JobStep::Create(n) => {
                for _ in 0..n {
                    let pod_name = format!("{name}-{:010x}", world.range(0, 1 << 40));
                    let t = &job["spec"]["template"];
                    let pod = json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod_name, "namespace": "default", "labels": t["metadata"]["labels"],
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"], "controller": true}]},
                        "spec": t["spec"]});
                    let pkey = format!("{PODS}{pod_name}");
                    if ok(&write_from(world, Some(home), put(&pkey, &pod, absent(&pkey))).await) {
                        world.log("kube", format!("cm-{home}: created pod {pod_name}"));
                    }
                }
            }
            JobStep::Finish { complete, reason, message } => {
                let kind = if complete { "Complete" } else { "Failed" };
                job["status"]["conditions"] = json!([{"type": kind, "status": "True", "reason": reason, "message": message}]);
                if !ok(&write_from(world, Some(home), put(&key, &job, unchanged(&key, rev))).await) {
                    continue;
                }
                world.log("kube", format!("cm-{home}: job {name} {kind} ({reason})"));
                for (pkey, prev, p) in &pods {
                    if is_active(p) {
                        let _ = write_from(world, Some(home), delete(pkey, unchanged(pkey, *prev))).await;
                    }
                }
            }
        }
    }
}

/// The controllers' rule for an active pod, over the simulation's `Value`s.
fn is_active(p: &Value) -> bool {
    controllers::podutil::is_active(&Obj::from(p))
}

fn parse_all(kvs: &[KeyValue]) -> Vec<(String, u64, Value)> {
    kvs.iter().filter_map(object).collect()
}

/// One pass of the ReplicaSet controller, run by the controller manager of replica `home`.
pub async fn sync_replicasets(world: &World, home: u64) {
    let Some(rss) = list_from(world, Some(home), RS).await else { return };
    for (_, _, rs) in parse_all(&rss) {
        let name = rs["metadata"]["name"].as_str().unwrap_or("").to_string();
        let Some(pods) = list_from(world, Some(home), &format!("{PODS}{name}-")).await else { return };
        let active: Vec<Arc<Obj>> = parse_all(&pods).into_iter().map(|(_, _, p)| Arc::new(Obj::from(p))).filter(|p| controllers::podutil::is_active(p)).collect();
        let d = decide(rs["spec"]["replicas"].as_i64().unwrap_or(0), &active);
        for _ in 0..d.create {
            let mut pod = pod_from_template(&Obj::from(&rs));
            let pod_name = format!("{name}-{:010x}", world.range(0, 1 << 40));
            pod["metadata"]["name"] = json!(pod_name);
            if let Some(m) = pod["metadata"].as_object_mut() {
                m.remove("generateName");
            }
            let key = format!("{PODS}{pod_name}");
            if ok(&write_from(world, Some(home), put(&key, &pod, absent(&key))).await) {
                world.log("kube", format!("cm-{home}: created pod {pod_name}"));
            }
        }
        for pod_name in d.delete {
            if ok(&write_from(world, Some(home), delete(&format!("{PODS}{pod_name}"), vec![])).await) {
                world.log("kube", format!("cm-{home}: deleted pod {pod_name}"));
            }
        }
    }
}

/// A scheduler: binds a pending pod to a registered node, comparing the pod's revision.
pub async fn scheduler(world: Arc<World>, me: usize) {
    while !world.done.load(std::sync::atomic::Ordering::SeqCst) && !world.failed() {
        tokio::time::sleep(Duration::from_millis(world.range(20, 200))).await;
        let (Some(pods), Some(nodes)) = (list_from(&world, None, PODS).await, list_from(&world, None, NODES).await) else { continue };
        let pending: Vec<(String, u64, Value)> = parse_all(&pods).into_iter().filter(|(_, _, p)| p["spec"]["nodeName"].is_null() && is_active(p)).collect();
        let nodes: Vec<String> = parse_all(&nodes).into_iter().filter_map(|(_, _, n)| n["metadata"]["name"].as_str().map(String::from)).collect();
        let (Some((key, rev, mut pod)), Some(node)) = (world.pick(&pending), world.pick(&nodes)) else { continue };
        // Two schedulers may have picked the same pod from the same snapshot.
        tokio::time::sleep(Duration::from_millis(world.range(0, 20))).await;
        pod["spec"]["nodeName"] = json!(node);
        let compare = if world.bug(Bug::BindWithoutCas) { vec![] } else { unchanged(&key, rev) };
        if ok(&write(&world, put(&key, &pod, compare)).await) {
            world.log("sched", format!("s{me}: bound {} to {node}", &key[PODS.len()..]));
        }
    }
}

/// A hollow kubelet: registers node `name`, renews its lease every 10 s, runs its pods.
pub async fn kubelet(world: Arc<World>, name: String) {
    let key = format!("{NODES}{name}");
    let bound = format!("\"nodeName\":\"{name}\"");
    let mut renewed = None::<tokio::time::Instant>;
    while !world.done.load(std::sync::atomic::Ordering::SeqCst) && !world.failed() {
        tokio::time::sleep(Duration::from_millis(world.range(1_000, 3_000))).await;
        if renewed.is_none_or(|r| r.elapsed() >= Duration::from_secs(10)) {
            let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {"renewed": world.now_us()}});
            if ok(&write(&world, put(&key, &node, vec![])).await) {
                renewed = Some(tokio::time::Instant::now());
            }
        }
        let Some(pods) = list_from(&world, None, PODS).await else { continue };
        // Only this node's pods are parsed (the rest are skipped on their bytes).
        for kv in pods.iter().filter(|kv| memchr_find(&kv.value, bound.as_bytes())) {
            let Some((pkey, rev, mut pod)) = object(kv) else { continue };
            if !is_active(&pod) {
                continue;
            }
            let what = if pod["status"]["phase"] != "Running" {
                pod["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
                "runs"
            } else if pod["metadata"]["labels"]["job-name"].is_string() {
                // A Job's pod ends on a later visit: most succeed.
                let ok = world.chance(0.85);
                pod["status"] = json!({"phase": if ok { "Succeeded" } else { "Failed" }});
                if ok { "completed" } else { "failed" }
            } else {
                continue;
            };
            if ok(&write(&world, put(&pkey, &pod, unchanged(&pkey, rev))).await) {
                world.log("kube", format!("{name}: {what} {}", &pkey[PODS.len()..]));
            }
        }
    }
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// While faults run: scales ReplicaSets and deletes pods now and then.
pub async fn driver(world: Arc<World>, until: tokio::time::Instant) {
    while tokio::time::Instant::now() < until && !world.failed() {
        tokio::time::sleep(Duration::from_millis(world.range(500, 4_000))).await;
        if world.chance(0.1) {
            let Some(jobs) = list_from(&world, None, JOBS).await else { continue };
            if jobs.len() >= JOBS_MAX {
                continue;
            }
            let name = format!("batch-{}", jobs.len());
            let key = format!("{JOBS}{name}");
            if ok(&write(&world, put(&key, &job(&name, &world), absent(&key))).await) {
                world.log("kube", format!("driver: created job {name}"));
            }
        } else if world.chance(0.4) {
            // A Deployment scaled or rolled out (a new image).
            let Some(ds) = list_from(&world, None, DEPLOYMENTS).await else { continue };
            let Some((key, rev, mut d)) = world.pick(&parse_all(&ds)) else { continue };
            let what = if world.chance(0.5) {
                let n = world.range(0, 8);
                d["spec"]["replicas"] = json!(n);
                format!("scaled to {n}")
            } else {
                let image = format!("app:{}", world.range(2, 1000));
                d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
                format!("rolled out {image}")
            };
            if ok(&write(&world, put(&key, &d, unchanged(&key, rev))).await) {
                world.log("kube", format!("driver: {} {what}", &key[DEPLOYMENTS.len()..]));
            }
        } else if world.chance(0.5) {
            let Some(rss) = list_from(&world, None, &format!("{RS}web-")).await else { continue };
            let Some((key, rev, mut rs)) = world.pick(&parse_all(&rss)) else { continue };
            let n = world.range(0, 10);
            rs["spec"]["replicas"] = json!(n);
            if ok(&write(&world, put(&key, &rs, unchanged(&key, rev))).await) {
                world.log("kube", format!("driver: scaled {} to {n}", &key[RS.len()..]));
            }
        } else {
            // Not the budget's pods: only evictions disrupt them (`disruption.rs`).
            let Some(pods) = list_from(&world, None, PODS).await else { continue };
            let unguarded: Vec<(String, u64, Value)> = parse_all(&pods).into_iter().filter(|(k, _, _)| !k.starts_with(crate::disruption::POD_PREFIX)).collect();
            let Some((key, rev, _)) = world.pick(&unguarded) else { continue };
            if ok(&write(&world, delete(&key, unchanged(&key, rev))).await) {
                world.log("kube", format!("driver: deleted pod {}", &key[PODS.len()..]));
            }
        }
    }
}

/// Once faults stopped: every ReplicaSet's pods, active, bound and Running, as many as it
/// asks; every Job Complete or Failed.
pub async fn converged(world: &World) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline && !world.failed() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (Some(rss), Some(pods), Some(jobs)) = (list_from(world, None, RS).await, list_from(world, None, PODS).await, list_from(world, None, JOBS).await) else { continue };
        let pods = parse_all(&pods);
        let mut off = Vec::new();
        let Some(ds) = list_from(world, None, DEPLOYMENTS).await else { continue };
        let rs_all = parse_all(&rss);
        for (_, _, d) in parse_all(&ds) {
            let name = d["metadata"]["name"].as_str().unwrap_or("");
            let new_name = format!("{name}-{}", template_hash(&Obj::from(&d["spec"]["template"])));
            let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
            let specs: Vec<(String, i64)> = rs_all
                .iter()
                .filter(|(_, _, r)| r["metadata"]["ownerReferences"][0]["name"] == name)
                .map(|(_, _, r)| (r["metadata"]["name"].as_str().unwrap_or("").to_string(), r["spec"]["replicas"].as_i64().unwrap_or(0)))
                .collect();
            let rolled = specs.iter().all(|(n, s)| if *n == new_name { *s == want } else { *s == 0 }) && specs.iter().any(|(n, _)| *n == new_name);
            if !rolled {
                off.push(format!("deployment {name} wants {want} in {new_name}, its ReplicaSets are {specs:?}"));
            }
        }
        for (_, _, job) in parse_all(&jobs) {
            if finished(&job).is_none() {
                let name = job["metadata"]["name"].as_str().unwrap_or("");
                let mine = pods.iter().filter(|(_, _, p)| p["metadata"]["ownerReferences"][0]["name"] == name).count();
                off.push(format!("job {name} has not finished ({mine} pods)"));
            }
        }
        for (_, _, rs) in parse_all(&rss) {
            let name = rs["metadata"]["name"].as_str().unwrap_or("");
            let want = rs["spec"]["replicas"].as_i64().unwrap_or(0) as usize;
            let mine: Vec<&Value> = pods.iter().map(|(_, _, p)| p).filter(|p| p["metadata"]["ownerReferences"][0]["name"] == name && is_active(p)).collect();
            let running = mine.iter().filter(|p| p["status"]["phase"] == "Running" && p["spec"]["nodeName"].is_string()).count();
            if mine.len() != want || running != want {
                off.push(format!("{name} wants {want}, has {} active ({running} bound and Running)", mine.len()));
            }
        }
        if off.is_empty() {
            world.log("kube", "every ReplicaSet converged".into());
            return Ok(());
        }
        last = off.join("; ");
    }
    Err(last)
}
