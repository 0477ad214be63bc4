//! capstan's scheduler: a client of the API server only. It watches nodes and pods, keeps
//! its own cache of nodes with the pods assigned (or assumed) on them, takes pending pods
//! whose `schedulerName` is its own from a priority queue, decides with
//! [`framework::schedule`] (a pure function over the cache), assumes the pod on the chosen
//! node at once and binds it through `pods/binding` concurrently (at most `BINDS_IN_FLIGHT`, 1024)
//! while the next pod is scheduled. A failed binding forgets the assumption and requeues.
//!
//! **Where to start reading.** `run_loop` (the scheduling thread), then `framework.rs`.
//!
//! **Threads.** One OS thread owns the cache and the queue and runs the cycles; watches and
//! bindings are tokio tasks that talk to it through bounded channels. Nothing in a cycle
//! locks, allocates per node, or waits on the network.

pub mod cache;
pub mod config;
pub mod cpuprof;
pub mod framework;
pub mod metrics;
pub mod preemption;
pub mod simulate;
pub mod queue;
pub mod types;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::events::Recorder;
use client::{Client, ClientError};
use serde_json::{Value, json};

use cache::Cache;
use framework::{Outcome, Profile, Scratch, Timings};
use queue::Queue;
use types::{NodeInfo, PodInfo};
use api::meta::now_rfc3339;

/// Bindings sent and not yet answered. With 256 the end-to-end run was bound by in-flight x
/// latency (bench/RESULTS.md, "Scheduler": 2,515 against 2,894 pods/s with 1,024).
pub const BINDS_IN_FLIGHT: usize = 1024;
const UPDATES: usize = 16 * 1024;

enum Update {
    Node(Option<Value>, String),
    /// A claim (`namespace/name`) and the volume it is bound to; None: deleted.
    Claim(String, Option<String>),
    /// A volume and its required node terms; None: deleted.
    Volume(String, Option<Vec<types::NodeTerm>>),
    /// A PodDisruptionBudget (`namespace/name`); None: deleted.
    Budget(String, Option<preemption::Budget>),
    /// A namespace's labels; None: deleted.
    Namespace(String, Option<types::Labels>),
    Pod(Box<types::WirePod>),
    PodDeleted(String),
    Bound { uid: String, result: Result<(), String> },
}

/// One attempt, as `/debug/scheduler/pods/<ns>/<name>` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attempt {
    pub at: String,
    /// When, for the dashboard's window of recent attempts.
    #[serde(skip)]
    pub at_instant: Option<Instant>,
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
    /// Where the candidate nodes came from (all nodes, the class cache, the free index).
    pub candidates: String,
    /// The static filters' results were reused from an earlier pod alike.
    pub static_reused: bool,
    /// Filtered on the worker pool.
    pub parallel: bool,
    /// The full pass that words the reasons when no node was found.
    pub diagnose_us: u64,
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

    /// The attempts of the last `window` among the `RECENT_PODS` pods tried last: the `top`
    /// slowest, and the reasons of the failed ones with how many attempts gave each.
    pub fn recent(&self, window: Duration, top: usize) -> (Vec<(String, Attempt)>, Vec<(String, usize)>) {
        let now = Instant::now();
        let mut slow: Vec<(String, Attempt)> = Vec::new();
        let mut reasons: HashMap<String, usize> = HashMap::new();
        for key in self.order.iter().rev().take(RECENT_PODS) {
            for a in self.attempts.get(key).into_iter().flatten() {
                if a.at_instant.is_none_or(|t| now.duration_since(t) > window) {
                    continue;
                }
                if !a.result.starts_with("Scheduled") {
                    for (r, _) in &a.reasons {
                        *reasons.entry(r.clone()).or_default() += 1;
                    }
                    if a.reasons.is_empty() {
                        *reasons.entry(a.result.clone()).or_default() += 1;
                    }
                }
                if slow.len() < top || slow.last().is_some_and(|(_, s)| s.total_us < a.total_us) {
                    slow.push((key.clone(), a.clone()));
                    slow.sort_by(|x, y| y.1.total_us.cmp(&x.1.total_us));
                    slow.truncate(top);
                }
            }
        }
        let mut reasons: Vec<(String, usize)> = reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        reasons.truncate(top);
        (slow, reasons)
    }
}

/// How many of the pods tried last `Observed::recent` looks through.
const RECENT_PODS: usize = 5_000;

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
    /// Starts watching and scheduling against the API server at `base`, with the process's
    /// default credentials.
    pub fn start(base: &str, profiles: Vec<Profile>) -> Scheduler {
        Scheduler::start_with(Client::with_agent(base, "capstan-scheduler/0.1"), profiles)
    }

    /// As `start`, through `c` (the scheduler's own identity, `system:kube-scheduler`).
    pub fn start_with(c: Client, profiles: Vec<Profile>) -> Scheduler {
        let (tx, rx) = crossbeam::channel::bounded(UPDATES);
        let observed = Arc::new(Mutex::new(Observed { metrics: metrics::Metrics::new(), attempts: HashMap::new(), order: Default::default() }));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let events = Recorder::start(c.clone(), "default-scheduler", String::new());
        // Bumped after the scheduling thread restarts: the watches list again to refill its
        // cache.
        let (resync, resync_rx) = tokio::sync::watch::channel(0u64);
        let tasks = watch::start(&c, &tx, &resync_rx);
        let rt = tokio::runtime::Handle::current();
        let (o, s) = (observed.clone(), stop.clone());
        std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                let pool = framework::worker_pool(profiles.first().map_or(1, |p| p.parallelism));
                let poisoned: std::cell::RefCell<HashMap<String, String>> = Default::default();
                let current: std::cell::RefCell<Option<String>> = Default::default();
                let ctx = Loop { profiles: &profiles, rx: &rx, tx: &tx, c: &c, events: &events, observed: &o, stop: &s, rt: &rt, poisoned: &poisoned, current: &current };
                supervise(
                    || run_loop(&ctx, &pool),
                    |msg| {
                        tracing::error!(panic = msg, "the scheduling thread panicked; restarting it with a fresh cache");
                        o.lock().unwrap_or_else(|e| e.into_inner()).metrics.restarts += 1;
                        // The pod being scheduled when it panicked is not tried again.
                        if let Some(uid) = current.borrow_mut().take() {
                            let mut p = poisoned.borrow_mut();
                            if p.len() >= 10_000 {
                                p.clear();
                            }
                            p.insert(uid, msg.to_string());
                        }
                        resync.send_modify(|v| *v += 1);
                    },
                )
            })
            .expect("spawn the scheduling thread");
        Scheduler { observed, tasks, stop }
    }

    /// What the dashboard's scheduler page shows, as JSON: attempts and latency per result,
    /// extension point and plugin (summaries of the unsampled histograms), the queues, the
    /// slowest attempts of the last minute and the commonest reasons pods did not fit.
    pub fn summary(&self) -> Value {
        let o = self.observed.lock().unwrap();
        let mut v = o.metrics.summary();
        let (slow, reasons) = o.recent(Duration::from_secs(60), 10);
        v["slowest"] = json!(slow.iter().map(|(pod, a)| json!({"pod": pod, "at": a.at, "total_us": a.total_us, "result": a.result, "feasible": a.feasible, "evaluated": a.evaluated})).collect::<Vec<_>>());
        v["unschedulable_reasons"] = json!(reasons.iter().map(|(r, n)| json!({"reason": r, "attempts": n})).collect::<Vec<_>>());
        v
    }

    /// The recorded attempts of one pod (`namespace/name`), as `/debug/scheduler/pods` has them.
    pub fn attempts_json(&self, key: &str) -> Option<Value> {
        self.observed.lock().unwrap().attempts(key).map(|a| json!(a))
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

    /// `/debug/scheduler/pods/{namespace}/{name}`: the last attempts of one pod;
    /// `/debug/pprof/profile?seconds=N&format=folded|svg`: a CPU profile of the process.
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
            .merge(cpuprof::router())
    }
}

/// List + watch of one resource into the update channel, resumed from the last revision;
/// listed again on a 410 or any error.
/// Runs `body` again after each panic (whose message goes to `restarted`) until it returns:
/// the scheduling thread's supervisor.
pub fn supervise(mut body: impl FnMut(), mut restarted: impl FnMut(&str)) {
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut body)) {
            Ok(()) => return,
            Err(e) => {
                let msg = e.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| e.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic without a message".into());
                restarted(&msg);
            }
        }
    }
}

/// What the scheduling thread keeps across restarts.
struct Loop<'a> {
    profiles: &'a [Profile],
    rx: &'a crossbeam::channel::Receiver<Update>,
    tx: &'a crossbeam::channel::Sender<Update>,
    c: &'a Client,
    events: &'a Recorder,
    observed: &'a Arc<Mutex<Observed>>,
    stop: &'a Arc<std::sync::atomic::AtomicBool>,
    rt: &'a tokio::runtime::Handle,
    /// Pods whose scheduling panicked, with the panic's message.
    poisoned: &'a std::cell::RefCell<HashMap<String, String>>,
    /// The pod being scheduled.
    current: &'a std::cell::RefCell<Option<String>>,
}

fn run_loop(ctx: &Loop, pool: &Option<Arc<rayon::ThreadPool>>) {
    let Loop { profiles, rx, tx, c, events, stop, rt, .. } = *ctx;
    let observed = ctx.observed;
    let mut scratch: Vec<Scratch> = profiles.iter().map(|_| Scratch::new(pool.clone())).collect();
    let mut cache = Cache::default();
    let mut q = Queue::default();
    let mut in_flight = 0usize;
    let mut bind_started: HashMap<String, (Instant, String)> = HashMap::new();
    let mut start = 0usize;
    // Where the next preemption starts its dry runs (kube-scheduler: a random node): each
    // moves it past the window it looked at, so successive preemptors look at other nodes.
    let mut preempt_offset = 0usize;
    let mut depths_at: Option<Instant> = None;
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
                Update::Claim(key, volume) => {
                    cache.set_claim(key, volume);
                    q.move_all_unschedulable(now);
                }
                Update::Volume(name, terms) => {
                    cache.set_volume(name, terms);
                    q.move_all_unschedulable(now);
                }
                Update::Budget(key, b) => cache.set_budget(key, b),
                Update::Namespace(name, labels) => {
                    cache.set_namespace(name, labels);
                    q.move_all_unschedulable(now);
                }
                Update::Pod(v) => {
                    let m = &v.metadata;
                    if let (Some(uid), Some(node)) = (m.uid.as_deref(), v.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()))
                        && !matches!(v.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
                        && cache.confirm_unchanged(uid, node, m.labels.as_ref(), m.deletion_timestamp.is_some())
                    {
                        // A placed pod's status update: nothing to parse.
                        if q.get(uid).is_some_and(|e| e.at != queue::Where::InFlight) {
                            q.remove(uid);
                        }
                        return;
                    }
                    let p = Arc::new(PodInfo::from_wire(*v));
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
                        // Its nomination (set by a preemption, or cleared) holds resources.
                        cache.nominate(&p, Some(&p.nominated_node));
                        if !q.get(&p.uid).is_some_and(|e| e.at == queue::Where::InFlight) {
                            q.add(p, now);
                        }
                    } else {
                        cache.forget_nomination(&p.uid);
                    }
                }
                Update::PodDeleted(uid) => {
                    cache.unplace(&uid);
                    cache.forget_nomination(&uid);
                    if q.get(&uid).is_some_and(|e| e.at != queue::Where::InFlight) {
                        q.remove(&uid);
                    }
                    q.move_all_unschedulable(now);
                }
                Update::Bound { uid, result } => {
                    // A binding started before a restart is not this loop's to count.
                    let Some(started) = bind_started.remove(&uid) else { return };
                    *in_flight -= 1;
                    let started = Some(started);
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
        if in_flight >= BINDS_IN_FLIGHT || !q.maybe_active() {
            let wait = next_due.map_or(Duration::from_millis(200), |t| t.saturating_duration_since(now)).min(Duration::from_millis(200));
            match rx.recv_timeout(wait) {
                Ok(u) => apply(u, &mut cache, &mut q, &mut in_flight),
                Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam::channel::RecvTimeoutError::Disconnected) => return,
            }
            // The pending gauges walk the queue: refreshed at most every 200 ms.
            if depths_at.is_none_or(|t: Instant| t.elapsed() >= Duration::from_millis(200)) {
                depths_at = Some(Instant::now());
                let d = q.depths();
                observed.lock().unwrap().metrics.pending(d);
            }
            continue;
        }
        let Some(entry) = q.pop(now) else { continue };
        let pod = entry.pod.clone();
        let queue_wait = now.duration_since(entry.queued_at);
        let mut t = Timings::default();
        if !cache.nodes().is_empty() {
            start = (start + 1) % cache.nodes().len();
        }
        let Some(pi) = profiles.iter().position(|x| x.scheduler_name == pod.scheduler_name) else {
            q.remove(&pod.uid);
            continue;
        };
        let profile = &profiles[pi];
        if let Some(msg) = ctx.poisoned.borrow().get(&pod.uid) {
            q.unschedulable(&pod.uid, now);
            let msg = format!("the scheduler panicked while scheduling this pod and will not try it again until restarted: {msg}");
            rt.spawn(report_unschedulable(c.clone(), events.clone(), pod, msg));
            continue;
        }
        *ctx.current.borrow_mut() = Some(pod.uid.clone());
        let outcome = framework::schedule(profile, &pod, &cache, start, &mut scratch[pi], &mut t);
        let key = pod.key();
        let mut attempt = Attempt {
            at: api::meta::now_micro(),
            at_instant: Some(Instant::now()),
            queue_wait_us: queue_wait.as_micros() as u64,
            pre_filter_us: t.pre_filter.as_micros() as u64,
            filter_us: t.filter.iter().map(|(p, d)| (p.name().to_string(), d.as_micros() as u64)).collect(),
            score_us: t.score.iter().map(|(p, d)| (p.name().to_string(), d.as_micros() as u64)).collect(),
            total_us: t.total.as_micros() as u64,
            nodes: cache.nodes().len(),
            evaluated: 0,
            feasible: 0,
            result: String::new(),
            reasons: Vec::new(),
            bind_us: None,
            candidates: t.candidates.to_string(),
            static_reused: t.static_reused,
            parallel: t.parallel,
            diagnose_us: t.diagnose.as_micros() as u64,
        };
        match outcome {
            Outcome::Scheduled { node, feasible, evaluated } => {
                let node_name = cache.nodes()[node].name.clone();
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
                    if let Some(preemption::Candidate { node: ni, victims, .. }) = preemption::preempt(profile, &pod, &cache, preempt_offset) {
                        preempt_offset = preempt_offset.wrapping_add(profile.preemption.candidates(cache.nodes().len()));
                        let node_name = cache.nodes()[ni].name.clone();
                        // Held for it from now, before the API hears of the nomination; pods of
                        // lower priority nominated there lose the node.
                        let displaced = cache.nominate_preemptor(&pod, &node_name);
                        if !displaced.is_empty() {
                            q.move_all_unschedulable(now);
                            rt.spawn(clear_nominations(c.clone(), displaced));
                        }
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
        *ctx.current.borrow_mut() = None;
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
    watch::push(&tx, Update::Bound { uid: p.uid.clone(), result }).await;
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

/// Clears the `nominatedNodeName` of pods that lost their node to a preemptor of higher
/// priority.
async fn clear_nominations(c: Client, pods: Vec<Arc<PodInfo>>) {
    for p in pods {
        let path = format!("/api/v1/namespaces/{}/pods/{}/status", p.namespace, p.name);
        if let Err(e) = c.merge_patch_quiet(&path, &json!({"status": {"nominatedNodeName": null}})).await {
            tracing::debug!(pod = p.name, error = %e, "clearing nominatedNodeName failed");
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
    fn the_supervisor_restarts_after_each_panic_until_the_body_returns() {
        let mut runs = 0;
        let mut panics = Vec::new();
        supervise(
            || {
                runs += 1;
                if runs < 3 {
                    panic!("boom {runs}");
                }
            },
            |msg| panics.push(msg.to_string()),
        );
        assert_eq!(runs, 3);
        assert_eq!(panics, ["boom 1", "boom 2"]);
    }
}
