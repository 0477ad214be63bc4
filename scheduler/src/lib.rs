//! capstan's scheduler: a client of the API server only. It watches nodes and pods, keeps
//! its own cache of nodes with the pods assigned (or assumed) on them, takes pending pods
//! whose `schedulerName` is its own from a priority queue, decides with
//! [`framework::schedule`] (a pure function over the cache), assumes the pod on the chosen
//! node at once and binds it through `pods/binding` concurrently (at most `BINDS_IN_FLIGHT`, 256)
//! while the next pod is scheduled. A failed binding forgets the assumption and requeues.
//!
//! **Where to start reading.** `run_loop` (the scheduling thread), then `framework.rs`.
//!
//! **Threads.** One OS thread owns the cache and the queue and runs the cycles; watches and
//! bindings are tokio tasks that talk to it through bounded channels. Nothing in a cycle
//! locks, allocates per node, or waits on the network.

pub mod config;
pub mod framework;
pub mod metrics;
pub mod queue;
pub mod types;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::events::Recorder;
use client::{Client, ClientError};
use serde_json::{Value, json};

use framework::{Outcome, Profile, Timings};
use queue::Queue;
use types::{NodeInfo, PodInfo};
use api::meta::now_rfc3339;

pub const BINDS_IN_FLIGHT: usize = 256;
const UPDATES: usize = 16 * 1024;

enum Update {
    Node(Option<Value>, String),
    Pod(Value),
    PodDeleted(String),
    Bound { uid: String, result: Result<(), String> },
}

/// The scheduler's cache: nodes (in a vector, so a cycle walks memory in order) with their
/// pods, and where every assigned pod is.
#[derive(Default)]
pub struct Cache {
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// uid -> (node name, assumed and not yet confirmed by the watch).
    placed: HashMap<String, (String, bool)>,
}

impl Cache {
    fn upsert_node(&mut self, mut n: NodeInfo) {
        match self.index.get(&n.name) {
            Some(&i) => {
                let old = &mut self.nodes[i];
                n.pods = std::mem::take(&mut old.pods);
                n.requested = old.requested.clone();
                n.used_ports = std::mem::take(&mut old.used_ports);
                n.anti_affinity_pods = old.anti_affinity_pods;
                *old = n;
            }
            None => {
                self.index.insert(n.name.clone(), self.nodes.len());
                self.nodes.push(n);
            }
        }
    }

    fn remove_node(&mut self, name: &str) {
        if let Some(i) = self.index.remove(name) {
            let n = self.nodes.swap_remove(i);
            if i < self.nodes.len() {
                let moved = self.nodes[i].name.clone();
                self.index.insert(moved, i);
            }
            for p in n.pods {
                self.placed.remove(&p.uid);
            }
        }
    }

    /// Places a pod on a node (assumed = by this scheduler, ahead of the API).
    pub fn place(&mut self, p: Arc<PodInfo>, node: &str, assumed: bool) -> bool {
        if let Some((n, a)) = self.placed.get_mut(&p.uid) {
            if n == node {
                *a = *a && assumed;
                return true;
            }
        }
        self.unplace(&p.uid);
        let Some(&i) = self.index.get(node) else { return false };
        self.placed.insert(p.uid.clone(), (node.to_string(), assumed));
        self.nodes[i].add_pod(p);
        true
    }

    pub fn unplace(&mut self, uid: &str) {
        if let Some((node, _)) = self.placed.remove(uid)
            && let Some(&i) = self.index.get(&node)
        {
            self.nodes[i].remove_pod(uid);
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }
}

/// One attempt, as `/debug/scheduler/pods/<ns>/<name>` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attempt {
    pub at: String,
    pub queue_wait_us: u64,
    pub pre_filter_us: u64,
    pub filter_us: Vec<(String, u64)>,
    pub score_us: Vec<(String, u64)>,
    pub total_us: u64,
    pub nodes: usize,
    pub evaluated: usize,
    pub feasible: usize,
    pub result: String,
    pub reasons: Vec<(String, usize)>,
    pub bind_us: Option<u64>,
}

/// What users and performance engineers can see.
pub struct Observed {
    pub metrics: metrics::Metrics,
    attempts: HashMap<String, Vec<Attempt>>,
    order: std::collections::VecDeque<String>,
}

const ATTEMPTS_PER_POD: usize = 5;
const PODS_REMEMBERED: usize = 20_000;

impl Observed {
    fn record(&mut self, key: &str, a: Attempt) {
        let list = self.attempts.entry(key.to_string()).or_insert_with(|| {
            self.order.push_back(key.to_string());
            Vec::new()
        });
        if list.len() == ATTEMPTS_PER_POD {
            list.remove(0);
        }
        list.push(a);
        while self.order.len() > PODS_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.attempts.remove(&old);
            }
        }
    }

    pub fn attempts(&self, key: &str) -> Option<&Vec<Attempt>> {
        self.attempts.get(key)
    }
}

pub struct Scheduler {
    pub observed: Arc<Mutex<Observed>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Scheduler {
    /// Starts watching and scheduling against the API server at `base`.
    pub fn start(base: &str, profiles: Vec<Profile>) -> Scheduler {
        let c = Client::with_agent(base, "capstan-scheduler/0.1");
        let (tx, rx) = crossbeam::channel::bounded(UPDATES);
        let observed = Arc::new(Mutex::new(Observed { metrics: metrics::Metrics::new(), attempts: HashMap::new(), order: Default::default() }));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let events = Recorder::start(c.clone(), "default-scheduler", String::new());
        let tasks = vec![tokio::spawn(watch(c.clone(), "/api/v1/nodes", tx.clone())), tokio::spawn(watch(c.clone(), "/api/v1/pods", tx.clone()))];
        let rt = tokio::runtime::Handle::current();
        let (o, s) = (observed.clone(), stop.clone());
        std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || run_loop(profiles, rx, tx, c, events, o, s, rt))
            .expect("spawn the scheduling thread");
        Scheduler { observed, tasks, stop }
    }

    /// The Prometheus text of the scheduler's metrics.
    pub fn metrics_text(&self) -> String {
        self.observed.lock().unwrap().metrics.render()
    }

    /// The HTTP routes: `/metrics` and `/debug/scheduler/pods/{namespace}/{name}`.
    pub fn router(&self) -> axum::Router {
        use axum::response::IntoResponse;
        let o = self.observed.clone();
        self.debug_router().route(
            "/metrics",
            axum::routing::get(move || {
                let o = o.clone();
                async move {
                    let body = o.lock().unwrap().metrics.render();
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
                }
            }),
        )
    }

    /// `/debug/scheduler/pods/{namespace}/{name}`: the last attempts of one pod.
    pub fn debug_router(&self) -> axum::Router {
        use axum::extract::{Path, State};
        use axum::response::IntoResponse;
        axum::Router::new()
            .route(
                "/debug/scheduler/pods/{ns}/{name}",
                axum::routing::get(|State(o): State<Arc<Mutex<Observed>>>, Path((ns, name)): Path<(String, String)>| async move {
                    match o.lock().unwrap().attempts(&format!("{ns}/{name}")) {
                        Some(a) => axum::Json(json!({"pod": format!("{ns}/{name}"), "attempts": a})).into_response(),
                        None => (axum::http::StatusCode::NOT_FOUND, format!("no scheduling attempts recorded for {ns}/{name}\n")).into_response(),
                    }
                }),
            )
            .with_state(self.observed.clone())
    }
}

/// List + watch of one resource into the update channel, resumed from the last revision;
/// listed again on a 410 or any error.
async fn watch(c: Client, path: &'static str, tx: crossbeam::channel::Sender<Update>) {
    let is_node = path.ends_with("nodes");
    let send = |v: Value, deleted: bool| {
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
        if is_node {
            Update::Node(if deleted { None } else { Some(v) }, name)
        } else if deleted {
            Update::PodDeleted(v["metadata"]["uid"].as_str().unwrap_or("").to_string())
        } else {
            Update::Pod(v)
        }
    };
    let mut rv: Option<String> = None;
    loop {
        let from = match rv.clone() {
            Some(r) => r,
            None => match c.get(path).await {
                Ok(list) => {
                    for item in list["items"].as_array().into_iter().flatten() {
                        if !push(&tx, send(item.clone(), false)).await {
                            return;
                        }
                    }
                    list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string()
                }
                Err(e) => {
                    tracing::warn!(path, error = %e, "scheduler list failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let mut stream = match c.watch(&format!("{path}?watch=true&allowWatchBookmarks=true&resourceVersion={from}")).await {
            Ok(s) => s,
            Err(_) => {
                rv = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        rv = Some(from);
        while let Some(ev) = stream.next().await {
            let ty = ev["type"].as_str().unwrap_or("");
            if ty == "ERROR" {
                rv = None;
                break;
            }
            if let Some(r) = ev["object"]["metadata"]["resourceVersion"].as_str() {
                rv = Some(r.to_string());
            }
            if ty == "ADDED" || ty == "MODIFIED" || ty == "DELETED" {
                if !push(&tx, send(ev["object"].clone(), ty == "DELETED")).await {
                    return;
                }
            }
        }
    }
}

/// Sends to the scheduling thread; when its channel is full the sending task waits (the
/// watch stream, then the API server's watch buffer, push back). False once it is gone.
async fn push(tx: &crossbeam::channel::Sender<Update>, mut u: Update) -> bool {
    loop {
        match tx.try_send(u) {
            Ok(()) => return true,
            Err(crossbeam::channel::TrySendError::Disconnected(_)) => return false,
            Err(crossbeam::channel::TrySendError::Full(back)) => {
                u = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_loop(
    profiles: Vec<Profile>,
    rx: crossbeam::channel::Receiver<Update>,
    tx: crossbeam::channel::Sender<Update>,
    c: Client,
    events: Recorder,
    observed: Arc<Mutex<Observed>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    rt: tokio::runtime::Handle,
) {
    let mut cache = Cache::default();
    let mut q = Queue::default();
    let mut in_flight = 0usize;
    let mut bind_started: HashMap<String, (Instant, String)> = HashMap::new();
    let mut start = 0usize;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        // Apply what arrived; wait only when there is nothing to schedule.
        let mut apply = |u: Update, cache: &mut Cache, q: &mut Queue, in_flight: &mut usize| {
            let now = Instant::now();
            match u {
                Update::Node(Some(v), _) => {
                    if let Ok(n) = NodeInfo::from_json(&v) {
                        cache.upsert_node(n);
                        q.move_all_unschedulable(now);
                    }
                }
                Update::Node(None, name) => cache.remove_node(&name),
                Update::Pod(v) => {
                    let Ok(p) = PodInfo::from_json(&v) else { return };
                    let p = Arc::new(p);
                    if !p.node_name.is_empty() {
                        if q.get(&p.uid).is_some_and(|e| e.at != queue::Where::InFlight) {
                            q.remove(&p.uid);
                        }
                        if p.terminal {
                            cache.unplace(&p.uid);
                            q.move_all_unschedulable(now);
                        } else {
                            let node = p.node_name.clone();
                            cache.place(p, &node, false);
                        }
                    } else if profiles.iter().any(|x| x.scheduler_name == p.scheduler_name) && !p.deleting && !p.terminal {
                        if !q.get(&p.uid).is_some_and(|e| e.at == queue::Where::InFlight) {
                            q.add(p, now);
                        }
                    }
                }
                Update::PodDeleted(uid) => {
                    cache.unplace(&uid);
                    if q.get(&uid).is_some_and(|e| e.at != queue::Where::InFlight) {
                        q.remove(&uid);
                    }
                    q.move_all_unschedulable(now);
                }
                Update::Bound { uid, result } => {
                    *in_flight -= 1;
                    let started = bind_started.remove(&uid);
                    match result {
                        Ok(()) => {
                            if let Some(e) = q.remove(&uid) {
                                let mut o = observed.lock().unwrap();
                                if let Some((t, _)) = started {
                                    o.metrics.bind(t.elapsed());
                                    let key = e.pod.key();
                                    if let Some(a) = o.attempts.get_mut(&key).and_then(|l| l.last_mut()) {
                                        a.bind_us = Some(t.elapsed().as_micros() as u64);
                                    }
                                }
                                o.metrics.e2e(e.first_seen.elapsed());
                            }
                        }
                        Err(msg) => {
                            cache.unplace(&uid);
                            tracing::debug!(pod = uid, error = msg, "binding failed; requeued");
                            observed.lock().unwrap().metrics.attempt("error", Duration::ZERO);
                            if msg.contains("not found") || msg.contains("already") {
                                q.remove(&uid);
                            } else {
                                q.backoff(&uid, now);
                            }
                        }
                    }
                }
            }
        };
        while let Ok(u) = rx.try_recv() {
            apply(u, &mut cache, &mut q, &mut in_flight);
        }
        let now = Instant::now();
        let next_due = q.flush(now);
        if in_flight >= BINDS_IN_FLIGHT || q.depths()[0] == 0 {
            let wait = next_due.map_or(Duration::from_millis(200), |t| t.saturating_duration_since(now)).min(Duration::from_millis(200));
            match rx.recv_timeout(wait) {
                Ok(u) => apply(u, &mut cache, &mut q, &mut in_flight),
                Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam::channel::RecvTimeoutError::Disconnected) => return,
            }
            let d = q.depths();
            observed.lock().unwrap().metrics.pending(d);
            continue;
        }
        let Some(entry) = q.pop(now) else { continue };
        let pod = entry.pod.clone();
        let queue_wait = now.duration_since(entry.queued_at);
        let mut t = Timings::default();
        if !cache.nodes.is_empty() {
            start = (start + 1) % cache.nodes.len();
        }
        let Some(profile) = profiles.iter().find(|x| x.scheduler_name == pod.scheduler_name) else {
            q.remove(&pod.uid);
            continue;
        };
        let outcome = framework::schedule(profile, &pod, &cache.nodes, start, &mut t);
        let key = pod.key();
        let mut attempt = Attempt {
            at: now_rfc3339(),
            queue_wait_us: queue_wait.as_micros() as u64,
            pre_filter_us: t.pre_filter.as_micros() as u64,
            filter_us: t.filter.iter().map(|(p, d)| (p.name().to_string(), d.as_micros() as u64)).collect(),
            score_us: t.score.iter().map(|(p, d)| (p.name().to_string(), d.as_micros() as u64)).collect(),
            total_us: t.total.as_micros() as u64,
            nodes: cache.nodes.len(),
            evaluated: 0,
            feasible: 0,
            result: String::new(),
            reasons: Vec::new(),
            bind_us: None,
        };
        match outcome {
            Outcome::Scheduled { node, feasible, evaluated } => {
                let node_name = cache.nodes[node].name.clone();
                attempt.evaluated = evaluated;
                attempt.feasible = feasible;
                attempt.result = format!("Scheduled to {node_name}");
                cache.place(pod.clone(), &node_name, true);
                in_flight += 1;
                bind_started.insert(pod.uid.clone(), (Instant::now(), node_name.clone()));
                {
                    let mut o = observed.lock().unwrap();
                    o.metrics.cycle(&t, "scheduled", queue_wait);
                    o.record(&key, attempt);
                }
                let (c, tx, ev) = (c.clone(), tx.clone(), events.clone());
                rt.spawn(bind(c, tx, ev, pod, node_name));
            }
            Outcome::Unschedulable { reasons, total } => {
                let msg = framework::unschedulable_message(&reasons, total);
                attempt.evaluated = total;
                attempt.result = "Unschedulable".into();
                attempt.reasons = reasons.iter().map(|(r, n)| (r.clone(), *n)).collect();
                {
                    let mut o = observed.lock().unwrap();
                    o.metrics.cycle(&t, "unschedulable", queue_wait);
                    o.record(&key, attempt);
                }
                q.unschedulable(&pod.uid, now);
                // PostFilter: preemption, unless victims of an earlier preemption by this pod
                // are still terminating on its nominated node.
                let waiting_for_victims = cache.node(&pod.nominated_node).is_some_and(|n| n.pods.iter().any(|v| v.deleting && v.priority < pod.priority));
                if pod.priority > 0 && !waiting_for_victims {
                    let tp = Instant::now();
                    if let Some((ni, victims)) = framework::preempt(profile, &pod, &cache.nodes) {
                        let node_name = cache.nodes[ni].name.clone();
                        let mut o = observed.lock().unwrap();
                        if let Some(a) = o.attempts.get_mut(&key).and_then(|l| l.last_mut()) {
                            a.result = format!("Unschedulable; preempting {} pod(s) on {node_name} ({} us)", victims.len(), tp.elapsed().as_micros());
                        }
                        drop(o);
                        rt.spawn(preempt_victims(c.clone(), events.clone(), pod.clone(), node_name, victims));
                    }
                }
                let (c, ev) = (c.clone(), events.clone());
                rt.spawn(report_unschedulable(c, ev, pod, msg));
            }
        }
    }
}

fn pod_ref(p: &PodInfo) -> Value {
    json!({"metadata": {"namespace": p.namespace, "name": p.name, "uid": p.uid}})
}

async fn bind(c: Client, tx: crossbeam::channel::Sender<Update>, events: Recorder, p: Arc<PodInfo>, node: String) {
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let path = format!("/api/v1/namespaces/{}/pods/{}/binding", p.namespace, p.name);
    let result = match c.post(&path, &binding).await {
        Ok(_) => {
            events.pod(&pod_ref(&p), None, false, "Scheduled", format!("Successfully assigned {}/{} to {node}", p.namespace, p.name));
            Ok(())
        }
        Err(ClientError::Status { message, .. }) => Err(message),
        Err(e) => Err(e.to_string()),
    };
    push(&tx, Update::Bound { uid: p.uid.clone(), result }).await;
}

async fn preempt_victims(c: Client, events: Recorder, p: Arc<PodInfo>, node: String, victims: Vec<Arc<PodInfo>>) {
    let path = format!("/api/v1/namespaces/{}/pods/{}/status", p.namespace, p.name);
    if let Err(e) = c.merge_patch_quiet(&path, &json!({"status": {"nominatedNodeName": node}})).await {
        tracing::debug!(pod = p.name, error = %e, "setting nominatedNodeName failed");
    }
    for v in victims {
        events.pod(&pod_ref(&v), None, false, "Preempted", format!("Preempted by pod {} on node {node}", p.uid));
        let vpath = format!("/api/v1/namespaces/{}/pods/{}", v.namespace, v.name);
        if let Err(e) = c.delete(&vpath, &json!({"preconditions": {"uid": v.uid}})).await {
            tracing::debug!(pod = v.name, error = %e, "deleting a preemption victim failed");
        }
    }
}

async fn report_unschedulable(c: Client, events: Recorder, p: Arc<PodInfo>, msg: String) {
    events.pod(&pod_ref(&p), None, true, "FailedScheduling", msg.clone());
    let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}]}});
    let path = format!("/api/v1/namespaces/{}/pods/{}/status", p.namespace, p.name);
    if let Err(e) = c.merge_patch_quiet(&path, &patch).await {
        tracing::debug!(pod = p.name, error = %e, "writing PodScheduled=False failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_update_keeps_its_pods_and_their_counts() {
        let mut c = Cache::default();
        let n = |taint: bool| {
            let mut v = json!({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"}}});
            if taint {
                v["spec"] = json!({"taints": [{"key": "k", "effect": "NoSchedule"}]});
            }
            NodeInfo::from_json(&v).unwrap()
        };
        c.upsert_node(n(false));
        let p = PodInfo::from_json(&json!({"metadata": {"name": "p", "namespace": "d", "uid": "u"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"a": "b"}}, "topologyKey": "x"}]}}}}))
        .unwrap();
        assert!(c.place(Arc::new(p), "n", true));
        c.upsert_node(n(true));
        let node = c.node("n").unwrap();
        assert_eq!((node.pods.len(), node.requested.cpu, node.anti_affinity_pods, node.taints.len()), (1, 1000, 1, 1));
        c.unplace("u");
        let node = c.node("n").unwrap();
        assert_eq!((node.pods.len(), node.requested.cpu, node.anti_affinity_pods), (0, 0, 0));
    }
}
