//! The process runtime: each container of a pod is a child process (its own process group)
//! running the container's `command` + `args` with its environment, its output in per-start
//! log files. One worker task per pod owns the pod's containers and is the only writer of
//! its status: it starts init containers in order, then the others; restarts them by the
//! pod's `restartPolicy` with CrashLoopBackOff's backoff; runs their probes; terminates them
//! gracefully on deletion (SIGTERM to the group, SIGKILL after the grace period); and then
//! removes the pod object.
//!
//! **Invariants.** A worker reacts to three inputs only: the latest pod object (a watch
//! channel, so a burst of updates is one wake-up), its own containers' events (exits, probe
//! results: a bounded channel, tagged with a start generation so a late message about an
//! earlier start is ignored), and the runtime's stop signal. Status is written only when it
//! changed. A container with neither `command` nor `args` runs the stand-in (a shell that
//! prints one line and stays up until signalled), since there are no images to run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::cgroup::Cgroups;
use crate::client::{Client, ClientError};
use crate::events::Recorder;
use crate::logs::{self, LogSink};
use crate::pod::{self, Allocatable, Backoff, CState, ContainerView, PodView, RestartPolicy};
use crate::probe::{self, Kind, Probe, ProbeCounter};
use crate::sandbox;
use crate::stats;
use crate::volume::Volumes;
use api::meta::now_rfc3339 as now;

/// The stand-in for containers without a command: prints what it stands for, then waits for
/// a signal (SIGTERM ends it with status 0, as nginx's graceful stop does).
pub const STAND_IN: &str = "echo \"capstan stand-in for image $CAPSTAN_IMAGE: the image is recorded, not pulled; staying up until stopped\"; trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";
/// How long an exited container's output may take to reach its log before its status says so.
const LOG_DRAIN: Duration = Duration::from_secs(2);
/// Terminal output chunks an attached client may fall behind by before it misses some.
const TTY_CHUNKS: usize = 256;

#[derive(Clone, Debug)]
pub struct ProcessConfig {
    pub node_name: String,
    /// Where pod directories and container logs live.
    pub root: PathBuf,
    pub backoff: Backoff,
    /// How often usage is sampled (for `kubectl top` and memory limits).
    pub sample_every: Duration,
    /// The longest a node shutdown waits for a pod's containers to stop.
    pub shutdown_grace_max: Duration,
    pub allocatable: Allocatable,
    /// The pods' IP (the node's: pods share its network).
    pub host_ip: String,
    /// Base environment for every container (`KUBERNETES_SERVICE_HOST`...).
    pub base_env: Vec<(String, String)>,
    /// The node's pod range: pods get network namespaces of their own on it (`network`).
    /// None: they share the node's network.
    pub pod_cidr: Option<crate::network::Cidr>,
    /// The data directory (host objects carry its identity; address leases live in it).
    pub data_dir: PathBuf,
    /// The Service range: with a pod network, cluster IPs route to ready endpoints
    /// (`proxy.rs`) and the rest of the range to nothing.
    pub service_cidr: Option<crate::network::Cidr>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Where the node's cluster DNS forwards names outside the domain (the host's
    /// resolvers). The DNS itself runs with the Service proxy, at the range's tenth address.
    pub dns_upstream: Vec<std::net::SocketAddr>,
    /// The NetworkPolicy agent's own client (`netpol`): with it, pods with their own network
    /// get their policies enforced.
    pub policy_client: Option<Client>,
}

/// What the sampler needs of one running container.
struct Running {
    ns: String,
    pod: String,
    pgid: i32,
    cgroup: Option<PathBuf>,
    memory_limit: Option<u64>,
    oom: Arc<AtomicBool>,
    started: Instant,
    /// For exec: the container's environment and working directory (in the container).
    env: Vec<(String, String)>,
    cwd: PathBuf,
    privileges: Option<crate::privileges::Privileges>,
    /// For attach: the container's output and (`stdin: true`) its input.
    log: Arc<LogSink>,
    stdin: Option<crate::stream::ContainerStdin>,
    stdin_once: bool,
    /// `tty: true`: the container's terminal.
    tty: Option<crate::stream::Tty>,
}

#[derive(Default)]
struct Usage {
    /// Per (uid, container): (cumulative cpu ns, at).
    prev: HashMap<(String, String), (u64, Instant)>,
    node_prev: Option<(u64, Instant)>,
    doc: Value,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Run,
    Shutdown,
    Removed,
}

struct Handle {
    pod_tx: watch::Sender<Arc<Value>>,
    stop_tx: watch::Sender<Stop>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Shared {
    cfg: ProcessConfig,
    client: Client,
    events: Recorder,
    cgroups: Option<Cgroups>,
    running: Mutex<HashMap<(String, String), Running>>,
    live_logs: Mutex<HashMap<PathBuf, Arc<LogSink>>>,
    admitted: Mutex<HashMap<String, (i64, i64)>>,
    usage: Mutex<Usage>,
    /// The host's top-level entries when containers get their own mount namespaces (see
    /// `sandbox`), or why they cannot (then they run in the host's, without volumes).
    sandbox: Result<Vec<sandbox::Top>, String>,
    /// The pod network, when pods get namespaces of their own.
    network: Option<crate::network::NodeNetwork>,
    /// The base environment of pods with their own network (the API at their gateway).
    pod_env: Vec<(String, String)>,
    relay: Mutex<Option<tokio::task::JoinHandle<()>>>,
    proxy: Mutex<Option<crate::proxy::ServiceProxy>>,
    policy: Mutex<Option<crate::netpol::PolicyAgent>>,
    /// The cluster DNS pods are given (`ClusterFirst`), when this node serves it.
    dns: Option<crate::dns::resolv::ClusterDnsConfig>,
    /// The host's resolver settings (pods with `dnsPolicy: Default`, and the search
    /// domains `ClusterFirst` appends).
    host_resolv: crate::dns::resolv::Resolv,
}

pub struct ProcessRuntime {
    shared: Arc<Shared>,
    workers: Mutex<HashMap<String, Handle>>,
    /// Workers of removed pods still stopping their containers: their directories and
    /// networks are still in use.
    stopping: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    sampler: tokio::task::JoinHandle<()>,
    /// Removes the directories of deleted local-path volumes (`volume::local_path`).
    collector: tokio::task::JoinHandle<()>,
    /// Set when the node stops: pods that arrive afterwards get no worker (one would make
    /// a network namespace after the node has torn its network down).
    closing: AtomicBool,
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        self.sampler.abort();
        self.collector.abort();
    }
}

impl ProcessRuntime {
    pub fn new(mut cfg: ProcessConfig, client: Client) -> ProcessRuntime {
        // Absolute paths: mount tables and mount namespaces speak nothing else.
        let _ = std::fs::create_dir_all(&cfg.root);
        cfg.root = std::fs::canonicalize(&cfg.root).unwrap_or(cfg.root);
        cfg.data_dir = std::fs::canonicalize(&cfg.data_dir).unwrap_or(cfg.data_dir);
        let cgroups = match Cgroups::detect() {
            Ok(c) => {
                tracing::info!("container limits: enforced through cgroup v2");
                Some(c)
            }
            Err(why) => {
                tracing::info!(reason = %why, "container limits: cgroup v2 unavailable; memory limits are enforced by sampling (OOMKilled), CPU limits are not enforced");
                None
            }
        };
        let events = Recorder::start(client.clone(), "kubelet", cfg.node_name.clone());
        let reaped = crate::orphans::reap(&cfg.root);
        if reaped > 0 {
            tracing::warn!(containers = reaped, "killed containers left running by the node's previous run");
        }
        let sandbox = sandbox::available().and_then(|()| sandbox::host_top().map_err(|e| format!("reading the host's /: {e}")));
        match &sandbox {
            Ok(_) => tracing::info!("containers: each in its own mount namespace, with volumes"),
            Err(why) => tracing::warn!(reason = %why, "containers: no mount namespaces here; containers share the host's filesystem and pods with volumes cannot start"),
        }
        let network = match (cfg.pod_cidr, &sandbox) {
            (None, _) => None,
            (Some(_), Err(why)) => {
                tracing::warn!(reason = %why, "pods share the node's network: no namespaces here");
                None
            }
            (Some(cidr), Ok(_)) => match crate::network::NodeNetwork::setup(&cfg.node_name, &cfg.data_dir, cidr, cfg.service_cidr) {
                Ok(n) => {
                    tracing::info!(range = %cidr, "pods: each in its own network namespace, on the node's bridge");
                    Some(n)
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "pods share the node's network: their own could not be set up");
                    None
                }
            },
        };
        // Pods with their own network cannot reach the node's loopback: the API server is
        // relayed to their gateway, and their environment says so.
        let mut pod_env = cfg.base_env.clone();
        let mut relay_to = None;
        if let Some(n) = &network {
            let get = |k: &str| cfg.base_env.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
            if let (Some(host), Some(port)) = (get("KUBERNETES_SERVICE_HOST"), get("KUBERNETES_SERVICE_PORT").and_then(|p| p.parse::<u16>().ok()))
                && let Ok(ip) = host.parse::<std::net::IpAddr>()
                && ip.is_loopback()
            {
                relay_to = Some(((n.gateway, port).into(), (ip, port).into()));
                for (k, v) in pod_env.iter_mut() {
                    if k == "KUBERNETES_SERVICE_HOST" {
                        *v = n.gateway.to_string();
                    }
                }
            }
        }
        let cfg_domain = cfg.cluster_domain.clone();
        let shared = Arc::new(Shared {
            cfg,
            client,
            events,
            cgroups,
            running: Default::default(),
            live_logs: Default::default(),
            admitted: Default::default(),
            usage: Default::default(),
            sandbox,
            pod_env,
            relay: Mutex::new(None),
            proxy: Mutex::new(None),
            policy: Mutex::new(None),
            dns: network.as_ref().and_then(|n| n.service_cidr).map(|s| crate::dns::resolv::ClusterDnsConfig { server: s.nth(10), domain: cfg_domain.clone() }),
            host_resolv: crate::dns::resolv::Resolv::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
            network,
        });
        // The NetworkPolicy agent's view, which the Service proxy judges connections by.
        let policy_view = crate::netpol::View::default();
        if let Some(n) = &shared.network
            && let Some(s) = n.service_cidr
        {
            let node_ip = shared.cfg.host_ip.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST);
            let dns = shared.dns.as_ref().map(|d| crate::dns::Settings { listen: (d.server, 53).into(), domain: d.domain.clone(), upstream: shared.cfg.dns_upstream.clone() });
            *shared.proxy.lock().unwrap() = Some(crate::proxy::ServiceProxy::start(shared.client.clone(), n.service_link(), s, node_ip, dns, policy_view.clone()));
        }
        if let (Some(n), Some(c)) = (&shared.network, &shared.cfg.policy_client) {
            let settings = crate::netpol::Settings { node_name: shared.cfg.node_name.clone(), netns_prefix: n.netns_prefix(), node_ip: n.gateway, service_range: n.service_cidr.map(|s| s.to_string()) };
            *shared.policy.lock().unwrap() = Some(crate::netpol::PolicyAgent::start(c.clone(), settings, policy_view));
        }
        if let Some((listen, to)) = relay_to {
            let sh = shared.clone();
            tokio::spawn(async move {
                match crate::network::relay(listen, to).await {
                    Ok(h) => *sh.relay.lock().unwrap() = Some(h),
                    Err(e) => tracing::warn!(error = %e, %listen, "pods cannot reach the API: relaying it to their gateway failed"),
                }
            });
        }
        let sampler = tokio::spawn(sample_loop(shared.clone()));
        let collector = tokio::spawn(crate::volume::local_path::collect_loop(shared.client.clone(), crate::volume::local_path::dir(&shared.cfg.data_dir)));
        ProcessRuntime { shared, workers: Default::default(), stopping: Default::default(), sampler, collector, closing: AtomicBool::new(false) }
    }

    /// Whether any container of any pod is still running (tests, shutdown).
    pub fn running_containers(&self) -> usize {
        self.shared.running.lock().unwrap().len()
    }
}

impl ProcessRuntime {
    fn on_pod(&self, pod: Value) {
        let Some(uid) = pod["metadata"]["uid"].as_str().map(String::from) else { return };
        let mut w = self.workers.lock().unwrap();
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        if let Some(h) = w.get(&uid)
            && !h.task.is_finished()
        {
            h.pod_tx.send_replace(Arc::new(pod));
            return;
        }
        let pod = Arc::new(pod);
        let (pod_tx, pod_rx) = watch::channel(pod.clone());
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let task = tokio::spawn(Worker::new(self.shared.clone(), pod).run(pod_rx, stop_rx));
        w.insert(uid, Handle { pod_tx, stop_tx, task });
    }
}

impl crate::Runtime for ProcessRuntime {
    fn pod_changed(&self, pod: Value) -> crate::BoxFuture<'_> {
        self.on_pod(pod);
        Box::pin(std::future::ready(()))
    }

    fn pod_removed(&self, _ns: &str, _name: &str, uid: &str) {
        if let Some(h) = self.workers.lock().unwrap().remove(uid) {
            let _ = h.stop_tx.send(Stop::Removed);
            let mut s = self.stopping.lock().unwrap();
            s.retain(|_, t| !t.is_finished());
            s.insert(uid.to_string(), h.task.abort_handle());
        }
    }


    fn resync(&self, pods: &[Value]) {
        let present: std::collections::HashSet<&str> = pods.iter().filter_map(|p| p["metadata"]["uid"].as_str()).collect();
        let gone: Vec<String> = self.workers.lock().unwrap().keys().filter(|u| !present.contains(u.as_str())).cloned().collect();
        for uid in gone {
            self.pod_removed("", "", &uid);
        }
        // Directories of pods that went while the node was down (`<ns>_<name>_<uid>`), with
        // what was mounted for them, unless a worker still owns them; their networks too.
        let mut workers: HashMap<String, ()> = self.workers.lock().unwrap().keys().map(|k| (k.clone(), ())).collect();
        {
            let mut s = self.stopping.lock().unwrap();
            s.retain(|_, t| !t.is_finished());
            workers.extend(s.keys().map(|k| (k.clone(), ())));
        }
        if let Some(n) = &self.shared.network {
            let live: std::collections::HashSet<String> = present.iter().map(|s| s.to_string()).chain(workers.keys().cloned()).collect();
            let removed = n.reconcile(&live);
            if removed > 0 {
                tracing::info!(pods = removed, "removed the networks of pods that are gone");
            }
        }
        for e in std::fs::read_dir(&self.shared.cfg.root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(uid) = name.rsplit('_').next() else { continue };
            if name.matches('_').count() >= 2 && !present.contains(uid) && !workers.contains_key(uid) && e.path().is_dir() {
                Volumes::remove_all(&e.path());
            }
        }
    }

    fn stats(&self) -> Value {
        self.shared.usage.lock().unwrap().doc.clone()
    }

    fn log_root(&self) -> Option<PathBuf> {
        Some(self.shared.cfg.root.clone())
    }

    fn live_log(&self, path: &Path) -> Option<Arc<LogSink>> {
        self.shared.live_logs.lock().unwrap().get(path).cloned()
    }

    fn exec_target(&self, ns: &str, pod: &str, container: &str) -> Result<crate::stream::ExecTarget, String> {
        let running = self.shared.running.lock().unwrap();
        let mut pod_seen = false;
        for ((_, name), r) in running.iter() {
            if r.ns == ns && r.pod == pod {
                pod_seen = true;
                if name == container {
                    return Ok(crate::stream::ExecTarget { pid: r.pgid, env: r.env.clone(), cwd: r.cwd.clone(), privileges: r.privileges.clone() });
                }
            }
        }
        let known = self.workers.lock().unwrap().values().any(|h| h.pod_tx.borrow()["metadata"]["name"] == pod && h.pod_tx.borrow()["metadata"]["namespace"] == ns);
        Err(if pod_seen || known { format!("container not found ({container:?})") } else { format!("pod {ns}/{pod} not found on this node") })
    }

    fn port_forward_target(&self, ns: &str, pod: &str) -> Result<(String, Option<PathBuf>), String> {
        let uid = self.workers.lock().unwrap().iter().find_map(|(uid, h)| {
            let p = h.pod_tx.borrow();
            (p["metadata"]["name"] == pod && p["metadata"]["namespace"] == ns).then(|| (uid.clone(), p["spec"]["hostNetwork"] == true))
        });
        let Some((uid, host_network)) = uid else { return Err(format!("pod {ns}/{pod} not found on this node")) };
        // A pod with its own network: its loopback, inside its namespace (as Kubernetes
        // forwards); otherwise the node's ports are the pod's.
        let netns = crate::network::netns_path(self.shared.network.as_ref(), &uid).filter(|p| p.exists() && !host_network);
        match netns {
            Some(p) => Ok(("127.0.0.1".into(), Some(p))),
            None => Ok((self.shared.cfg.host_ip.clone(), None)),
        }
    }

    fn attach_target(&self, ns: &str, pod: &str, container: &str) -> Result<crate::stream::AttachTarget, String> {
        let running = self.shared.running.lock().unwrap();
        running
            .iter()
            .find(|((_, name), r)| r.ns == ns && r.pod == pod && name == container)
            .map(|(_, r)| crate::stream::AttachTarget { log: r.log.clone(), stdin: r.stdin.clone(), stdin_once: r.stdin_once, tty: r.tty.clone() })
            .ok_or_else(|| format!("container not found ({container:?})"))
    }

    fn shutdown(&self) -> crate::BoxFuture<'_> {
        Box::pin(async move {
            // Under the workers' lock: no worker starts after this drain.
            let handles: Vec<Handle> = {
                let mut w = self.workers.lock().unwrap();
                self.closing.store(true, Ordering::SeqCst);
                w.drain().map(|(_, h)| h).collect()
            };
            for h in &handles {
                let _ = h.stop_tx.send(Stop::Shutdown);
            }
            for h in handles {
                let _ = h.task.await;
            }
            // The pods' networks and the bridge go with the node; a restart makes them again
            // (with the same addresses: the leases stay).
            if let Some(n) = &self.shared.network {
                n.teardown();
            }
            if let Some(r) = self.shared.relay.lock().unwrap().take() {
                r.abort();
            }
            self.shared.proxy.lock().unwrap().take();
        })
    }
}

enum Ev {
    Exited { idx: usize, start_gen: u64, code: i32, signal: Option<i32> },
    Probe { idx: usize, start_gen: u64, kind: Kind, result: Result<(), String> },
    /// The container's postStart hook finished.
    PostStart { idx: usize, start_gen: u64, result: Result<(), String> },
}

/// The longest a postStart hook may take before it counts as failed.
const POST_START_MAX: Duration = Duration::from_secs(120);

/// A running container's preStop hook, ready to run, if it has one.
fn pre_stop(sh: &Shared, pod: &Arc<Value>, host: &str, c: &Ctr) -> Option<PreStop> {
    let action = hook(&c.spec, "preStop")?;
    let target = if c.sandboxed { c.pgid.map(|p| (p, c.privileges.clone())) } else { None };
    Some(PreStop { action, host: host.to_string(), env: c.env.clone(), cwd: c.cwd.clone(), target, events: sh.events.clone(), pod: pod.clone(), name: c.name.clone() })
}

/// A lifecycle hook of a container spec (`postStart`, `preStop`), if it has one.
fn hook(spec: &Value, which: &str) -> Option<probe::Action> {
    spec["lifecycle"].get(which).filter(|h| h.is_object()).map(|h| probe::Action::of_handler(h, spec))
}

struct Ctr {
    spec: Value,
    name: String,
    init: bool,
    /// An ephemeral container (`kubectl debug`): added to a running pod, run once, never
    /// restarted, outside the pod's phase and readiness.
    ephemeral: bool,
    restart_count: u32,
    ever_started: bool,
    start_gen: u64,
    state: CState,
    last: Option<CState>,
    done: bool,
    ready: bool,
    started: bool,
    pgid: Option<i32>,
    exited: Option<watch::Receiver<bool>>,
    probes: Vec<tokio::task::JoinHandle<()>>,
    counters: HashMap<Kind, ProbeCounter>,
    next_start: Option<Instant>,
    backoff: Option<Duration>,
    started_instant: Option<Instant>,
    started_at: String,
    env: Vec<(String, String)>,
    cgroup: Option<PathBuf>,
    oom: Arc<AtomicBool>,
    killed_by_probe: bool,
    /// Its postStart hook has not finished: no probe runs and it is not ready.
    post_start: bool,
    container_id: String,
    /// The working directory (a path in the container when it is sandboxed).
    cwd: PathBuf,
    /// Whether the container has its own namespaces (exec probes join them).
    sandboxed: bool,
    privileges: Option<crate::privileges::Privileges>,
}

impl Ctr {
    /// A container of the pod's spec; `prev` is its status as last reported (a restart of the
    /// kubelet resumes the restart count, and the new start is a restart).
    fn new(spec: &Value, init: bool, ephemeral: bool, prev: Option<&Value>) -> Ctr {
        let restart_count = prev.and_then(|p| p["restartCount"].as_u64()).unwrap_or(0) as u32;
        let ever = prev.is_some_and(|p| p["state"].get("running").is_some() || p["state"].get("terminated").is_some() || p["lastState"].as_object().is_some_and(|m| !m.is_empty()));
        Ctr {
            spec: spec.clone(),
            name: spec["name"].as_str().unwrap_or("").to_string(),
            init,
            ephemeral,
            restart_count,
            ever_started: ever,
            start_gen: 0,
            state: CState::Waiting { reason: if init { "PodInitializing" } else { "ContainerCreating" }.into(), message: String::new() },
            last: None,
            // An ephemeral container that already ran (before a kubelet restart) is not run again.
            done: ephemeral && ever,
            ready: false,
            started: false,
            pgid: None,
            exited: None,
            probes: Vec::new(),
            counters: HashMap::new(),
            next_start: None,
            backoff: None,
            started_instant: None,
            started_at: String::new(),
            env: Vec::new(),
            cgroup: None,
            oom: Default::default(),
            killed_by_probe: false,
            post_start: false,
            container_id: String::new(),
            cwd: PathBuf::new(),
            sandboxed: false,
            privileges: None,
        }
    }

    fn view(&self) -> ContainerView {
        ContainerView {
            name: self.name.clone(),
            image: self.spec["image"].as_str().unwrap_or("").to_string(),
            state: self.state.clone(),
            last_state: self.last.clone(),
            ready: self.ready,
            started: self.started,
            restart_count: self.restart_count,
            container_id: self.container_id.clone(),
            done: self.done,
        }
    }
}

struct Worker {
    sh: Arc<Shared>,
    pod: Arc<Value>,
    uid: String,
    ns: String,
    name: String,
    ctrs: Vec<Ctr>,
    ev_tx: mpsc::Sender<Ev>,
    ev_rx: mpsc::Receiver<Ev>,
    transitions: HashMap<&'static str, (bool, String)>,
    last_status: Value,
    retry_publish: Option<Instant>,
    failed: Option<(String, String)>,
    terminal: bool,
    start_time: String,
    dir: PathBuf,
    volumes: Volumes,
    /// When setting up the volumes is tried again (after a `FailedMount`).
    volumes_retry: Option<Instant>,
    /// The pod's own network, once made.
    net: Option<crate::network::PodNet>,
}

fn killpg(pgid: i32, sig: i32) {
    // SAFETY: signalling a process group we created; ESRCH (already gone) is fine.
    unsafe {
        libc::killpg(pgid, sig);
    }
}

/// What a container's preStop hook needs: the handler and where it runs.
struct PreStop {
    action: probe::Action,
    host: String,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    target: Option<(i32, Option<crate::privileges::Privileges>)>,
    events: Recorder,
    pod: Arc<Value>,
    name: String,
}

/// The preStop hook within `grace` (a failure is a `FailedPreStopHook` event), then
/// `terminate` with what is left of it, at least 2 s (as the kubelet gives).
async fn stop_with_hook(pgid: i32, grace: Duration, exited: watch::Receiver<bool>, hook: Option<PreStop>) {
    let Some(h) = hook else { return terminate(pgid, grace, exited).await };
    let started = Instant::now();
    if let Err(e) = probe::run_hook(&h.action, grace, &h.host, &h.env, &h.cwd, h.target).await {
        h.events.pod(&h.pod, Some(&h.name), true, "FailedPreStopHook", format!("PreStopHook failed: {e}"));
    }
    terminate(pgid, grace.saturating_sub(started.elapsed()).max(Duration::from_secs(2)), exited).await;
}

/// SIGTERM to the group, then SIGKILL after `grace` if the container has not exited.
async fn terminate(pgid: i32, grace: Duration, mut exited: watch::Receiver<bool>) {
    killpg(pgid, libc::SIGTERM);
    let waited = tokio::time::timeout(grace, exited.wait_for(|e| *e)).await.map(|_| ()).is_ok();
    if !waited {
        killpg(pgid, libc::SIGKILL);
        let _ = exited.wait_for(|e| *e).await;
    }
}

impl Worker {
    fn new(sh: Arc<Shared>, pod: Arc<Value>) -> Worker {
        let s = |k: &str| pod["metadata"][k].as_str().unwrap_or("").to_string();
        let (uid, ns, name) = (s("uid"), s("namespace"), s("name"));
        let mut ctrs = Vec::new();
        for (list, status_list, init, ephemeral) in [("initContainers", "initContainerStatuses", true, false), ("containers", "containerStatuses", false, false), ("ephemeralContainers", "ephemeralContainerStatuses", false, true)] {
            for spec in pod["spec"][list].as_array().into_iter().flatten() {
                let name = spec["name"].as_str().unwrap_or("");
                ctrs.push(Ctr::new(spec, init, ephemeral, pod["status"][status_list].as_array().and_then(|l| l.iter().find(|c| c["name"] == name))));
            }
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let dir = sh.cfg.root.join(format!("{ns}_{name}_{uid}"));
        Worker {
            start_time: pod["status"]["startTime"].as_str().map(String::from).unwrap_or_else(now),
            terminal: phase == "Succeeded" || phase == "Failed",
            sh,
            pod,
            uid,
            ns,
            name,
            ctrs,
            ev_tx,
            ev_rx,
            transitions: HashMap::new(),
            last_status: Value::Null,
            retry_publish: None,
            failed: None,
            volumes: Volumes::new(dir.join("volumes")),
            volumes_retry: None,
            net: None,
            dir,
        }
    }

    fn path(&self) -> String {
        format!("/api/v1/namespaces/{}/pods/{}", self.ns, self.name)
    }

    async fn run(mut self, mut pod_rx: watch::Receiver<Arc<Value>>, mut stop_rx: watch::Receiver<Stop>) {
        if !self.terminal {
            self.admit();
        }
        loop {
            let stop = *stop_rx.borrow();
            if stop != Stop::Run {
                let cap = if stop == Stop::Shutdown { self.sh.cfg.shutdown_grace_max } else { Duration::from_secs(30) };
                self.terminate_all(self.grace().min(cap), stop == Stop::Removed).await;
                self.release();
                if stop == Stop::Removed {
                    Volumes::remove_all(&self.dir);
                    self.release_network();
                }
                return;
            }
            if self.pod["metadata"].get("deletionTimestamp").is_some() {
                self.terminate_all(self.grace(), true).await;
                self.release();
                self.publish().await;
                let opts = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}});
                match self.sh.client.delete(&self.path(), &opts).await {
                    Ok(_) | Err(ClientError::Status { code: 404 | 409, .. }) => {}
                    Err(e) => tracing::warn!(pod = self.name, error = %e, "removing a terminated pod failed"),
                }
                Volumes::remove_all(&self.dir);
                self.release_network();
                return;
            }
            if !self.terminal {
                self.step().await;
                self.publish().await;
                if matches!(pod::phase(&self.view()), "Succeeded" | "Failed") {
                    self.terminal = true;
                    self.release();
                }
            }
            let refresh = if self.terminal { None } else { self.volumes_retry.or(self.volumes.next_refresh()) };
            let deadline = self.ctrs.iter().filter_map(|c| c.next_start).chain(self.retry_publish).chain(refresh).min();
            tokio::select! {
                r = pod_rx.changed() => {
                    if r.is_err() {
                        // The runtime dropped us: treat as removed.
                        self.terminate_all(Duration::from_secs(2), true).await;
                        self.release();
                        return;
                    }
                    self.pod = pod_rx.borrow_and_update().clone();
                    self.add_ephemeral();
                }
                Some(ev) = self.ev_rx.recv() => self.handle(ev),
                _ = async { tokio::time::sleep_until(deadline.unwrap().into()).await }, if deadline.is_some() => {}
                _ = stop_rx.changed() => {}
            }
        }
    }

    /// Ephemeral containers added to the pod's spec since (`kubectl debug`): they start on
    /// the next step. The API server lets them be added only, never changed or removed.
    fn add_ephemeral(&mut self) {
        let pod = self.pod.clone();
        for spec in pod["spec"]["ephemeralContainers"].as_array().into_iter().flatten() {
            let name = spec["name"].as_str().unwrap_or("");
            if !self.ctrs.iter().any(|c| c.name == name) {
                self.ctrs.push(Ctr::new(spec, false, true, None));
            }
        }
    }

    fn grace(&self) -> Duration {
        let g = self.pod["metadata"]["deletionGracePeriodSeconds"]
            .as_u64()
            .or_else(|| self.pod["spec"]["terminationGracePeriodSeconds"].as_u64())
            .unwrap_or(30);
        Duration::from_secs(g.min(3600))
    }

    /// Node admission: the pod fails at once if the node cannot hold it.
    fn admit(&mut self) {
        let mut admitted = self.sh.admitted.lock().unwrap();
        let used = admitted.values().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        match pod::admit(&self.pod, self.sh.cfg.allocatable, used, admitted.len() as i64) {
            Ok(()) => {
                admitted.insert(self.uid.clone(), pod::pod_requests(&self.pod));
            }
            Err((reason, message)) => {
                drop(admitted);
                self.sh.events.pod(&self.pod, None, true, "OutOfResources", message.clone());
                self.failed = Some((reason, message));
            }
        }
    }

    fn release(&self) {
        self.sh.admitted.lock().unwrap().remove(&self.uid);
    }

    fn view(&self) -> PodView {
        PodView {
            init: self.ctrs.iter().filter(|c| c.init).map(Ctr::view).collect(),
            main: self.ctrs.iter().filter(|c| !c.init && !c.ephemeral).map(Ctr::view).collect(),
            ephemeral: self.ctrs.iter().filter(|c| c.ephemeral).map(Ctr::view).collect(),
            failed: self.failed.clone(),
            host_ip: self.sh.cfg.host_ip.clone(),
            pod_ip: self.pod_ip(),
            start_time: self.start_time.clone(),
        }
    }

    /// Starts whatever is due: the next init container, or (once they all succeeded) every
    /// container that is neither running nor finished nor backing off.
    async fn step(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let now_i = Instant::now();
        // The network (`ip` processes) is made while the volumes' objects are read.
        let attaching = self.start_network(now_i);
        let volumes = self.sync_volumes(now_i).await;
        if !self.finish_network(attaching, now_i).await || !volumes {
            return;
        }
        let due = |c: &Ctr| c.pgid.is_none() && !c.done && c.next_start.is_none_or(|t| t <= now_i);
        let inits: Vec<usize> = (0..self.ctrs.len()).filter(|i| self.ctrs[*i].init).collect();
        for i in inits {
            let c = &self.ctrs[i];
            if c.done && matches!(c.state, CState::Terminated { exit_code: 0, .. }) {
                continue;
            }
            if c.done {
                return; // failed for good: the pod is Failed
            }
            if due(c) {
                self.start(i).await;
            }
            return;
        }
        for i in 0..self.ctrs.len() {
            if !self.ctrs[i].init && due(&self.ctrs[i]) {
                self.start(i).await;
            }
        }
    }

    /// Sets up the pod's volumes before its first container, and refreshes them when due.
    /// False while they cannot be set up (the containers wait; `FailedMount` says why).
    async fn sync_volumes(&mut self, now_i: Instant) -> bool {
        let has_volumes = self.pod["spec"]["volumes"].as_array().is_some_and(|v| !v.is_empty());
        if !has_volumes {
            return true;
        }
        if let Err(why) = &self.sh.sandbox {
            if self.volumes_retry.is_none_or(|t| t <= now_i) {
                let msg = format!("MountVolume.SetUp failed: this node cannot mount volumes ({why})");
                self.sh.events.pod(&self.pod, None, true, "FailedMount", msg);
                self.volumes_retry = Some(now_i + Duration::from_secs(10));
            }
            return false;
        }
        let due = if self.volumes.ready() { self.volumes.next_refresh().is_some_and(|t| t <= now_i) } else { self.volumes_retry.is_none_or(|t| t <= now_i) };
        if !due {
            return self.volumes.ready();
        }
        let pod = self.pod.clone();
        match self.volumes.sync(&pod, &self.sh.client).await {
            Ok(()) => self.volumes_retry = None,
            Err(e) => {
                self.sh.events.pod(&self.pod, None, true, "FailedMount", e.to_string());
                if !self.volumes.ready() {
                    self.volumes_retry = Some(now_i + Duration::from_secs(2));
                }
            }
        }
        self.volumes.ready()
    }

    /// The pod's address: its own, or the node's when it shares the node's network.
    fn pod_ip(&self) -> String {
        self.net.as_ref().map_or_else(|| self.sh.cfg.host_ip.clone(), |n| n.ip.to_string())
    }

    fn host_network(&self) -> bool {
        self.pod["spec"]["hostNetwork"] == true
    }

    /// Starts giving the pod its network namespace before its first container (not to
    /// hostNetwork pods), on a blocking thread; None when there is nothing to do now.
    fn start_network(&self, now_i: Instant) -> Option<tokio::task::JoinHandle<Result<crate::network::PodNet, String>>> {
        if self.sh.network.is_none() || self.net.is_some() || self.host_network() || self.volumes_retry.is_some_and(|t| t > now_i) {
            return None;
        }
        let (sh, uid) = (self.sh.clone(), self.uid.clone());
        Some(tokio::task::spawn_blocking(move || sh.network.as_ref().expect("checked").attach(&uid)))
    }

    /// Whether the pod has its network: `attaching` finished (its /etc/hosts written), or
    /// none needed. False while it cannot be had (the containers wait;
    /// `FailedCreatePodSandBox` says why).
    async fn finish_network(&mut self, attaching: Option<tokio::task::JoinHandle<Result<crate::network::PodNet, String>>>, now_i: Instant) -> bool {
        let Some(h) = attaching else { return self.sh.network.is_none() || self.net.is_some() || self.host_network() };
        match h.await.unwrap_or_else(|e| Err(format!("making the pod's network: {e}"))) {
            Ok(net) => {
                // Its /etc/hosts names it at its address, as the kubelet writes it.
                let host = hostname_of(&self.pod, &self.name);
                let fqdn = self.pod["spec"]["subdomain"].as_str().filter(|s| !s.is_empty()).map(|s| format!("{host}.{s}.{}.svc.{}", self.ns, self.sh.cfg.cluster_domain));
                let hosts = crate::network::hosts_file(net.ip, &host, fqdn.as_deref(), &self.pod["spec"]["hostAliases"]);
                let _ = std::fs::create_dir_all(&self.dir);
                let _ = std::fs::write(self.dir.join("etc-hosts"), hosts);
                self.net = Some(net);
                true
            }
            Err(e) => {
                self.sh.events.pod(&self.pod, None, true, "FailedCreatePodSandBox", format!("Failed to create pod sandbox: {e}"));
                self.volumes_retry = Some(now_i + Duration::from_secs(2));
                false
            }
        }
    }

    fn release_network(&mut self) {
        if let (Some(n), Some(_)) = (&self.sh.network, self.net.take()) {
            n.detach(&self.uid);
        }
    }

    /// The container's own filesystem (see `sandbox`): its root, the pod's volumes at their
    /// mount paths, its working directory.
    fn sandbox_plan(&self, spec: &Value, env: &[(String, String)], cwd: &std::path::Path) -> Result<Option<Arc<sandbox::Plan>>, String> {
        let Ok(top) = &self.sh.sandbox else { return Ok(None) };
        let name = spec["name"].as_str().unwrap_or("");
        // A path element on the host: only what the API accepts as a container name.
        if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(format!("container name {name:?} is not a DNS label"));
        }
        let fs = self.dir.join(".fs").join(name);
        let mut mounts = Vec::new();
        for m in spec["volumeMounts"].as_array().into_iter().flatten() {
            let vol = m["name"].as_str().unwrap_or("");
            let (src, forced_ro) = self.volumes.source(vol).ok_or_else(|| format!("volumeMount {vol:?}: the pod has no volume of that name"))?;
            let sub = match (m["subPath"].as_str().filter(|s| !s.is_empty()), m["subPathExpr"].as_str().filter(|s| !s.is_empty())) {
                (Some(p), _) => Some(p.to_string()),
                (None, Some(e)) => Some(pod::expand(e, env)),
                _ => None,
            };
            let src = match sub {
                None => src.to_path_buf(),
                Some(sub) => sub_path(src, &sub)?,
            };
            let dst = m["mountPath"].as_str().unwrap_or("").to_string();
            mounts.push(sandbox::Mount { dst, src, read_only: forced_ro || m["readOnly"] == true });
        }
        let privileges = crate::privileges::of(&self.pod, spec)?;
        let host_network = self.host_network();
        if self.net.is_some() {
            let hosts = self.dir.join("etc-hosts");
            if hosts.exists() && !mounts.iter().any(|m| m.dst == "/etc/hosts") {
                mounts.push(sandbox::Mount { dst: "/etc/hosts".into(), src: hosts, read_only: false });
            }
        }
        // Its resolv.conf from dnsPolicy and dnsConfig (`None`: the host's, as it is).
        if let Some(r) = crate::dns::resolv::for_pod(&self.pod, &self.sh.host_resolv, self.sh.dns.as_ref())?
            && !mounts.iter().any(|m| m.dst == "/etc/resolv.conf")
        {
            let path = self.dir.join("etc-resolv.conf");
            std::fs::write(&path, r.render()).map_err(|e| format!("writing {}: {e}", path.display()))?;
            mounts.push(sandbox::Mount { dst: "/etc/resolv.conf".into(), src: path, read_only: false });
        }
        let hostname = (!host_network).then(|| hostname_of(&self.pod, &self.name));
        let spec = sandbox::Spec {
            root: fs.join("root"),
            layers: fs.join("layers"),
            top,
            mounts,
            keep: vec![self.dir.join("rootfs")],
            hide: vec![self.sh.cfg.root.clone()],
            workdir: cwd.to_path_buf(),
            hostname,
            read_only_root: spec["securityContext"]["readOnlyRootFilesystem"] == true,
            privileges,
            netns: self.net.as_ref().map(|n| n.netns.clone()),
        };
        let _ = std::fs::remove_dir_all(&spec.layers);
        std::fs::create_dir_all(&spec.root).map_err(|e| format!("creating {}: {e}", spec.root.display()))?;
        let plan = sandbox::plan(&spec)?;
        for d in &plan.layer_dirs {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        Ok(Some(Arc::new(plan)))
    }

    async fn fetch_env(&self, container: &Value) -> Result<pod::EnvData, String> {
        let (cms, secrets) = pod::env_sources(container);
        let mut d = pod::EnvData::default();
        for (kind, names) in [("configmaps", cms), ("secrets", secrets)] {
            for n in names {
                let got = match self.sh.client.get(&format!("/api/v1/namespaces/{}/{kind}/{n}", self.ns)).await {
                    Ok(obj) => {
                        let mut m = std::collections::BTreeMap::new();
                        for (k, v) in obj["data"].as_object().into_iter().flatten() {
                            let s = v.as_str().unwrap_or("");
                            let val = if kind == "secrets" {
                                use base64::Engine;
                                let bytes = base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("secret {n} key {k}: {e}"))?;
                                String::from_utf8_lossy(&bytes).into_owned()
                            } else {
                                s.to_string()
                            };
                            m.insert(k.clone(), val);
                        }
                        for (k, v) in obj["binaryData"].as_object().into_iter().flatten().filter(|_| kind == "configmaps") {
                            use base64::Engine;
                            let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or("")).unwrap_or_default();
                            m.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
                        }
                        Some(m)
                    }
                    Err(ClientError::Status { code: 404, .. }) => None,
                    Err(e) => return Err(format!("reading {kind} {n}: {e}")),
                };
                if kind == "configmaps" {
                    d.config_maps.insert(n, got);
                } else {
                    d.secrets.insert(n, got);
                }
            }
        }
        Ok(d)
    }

    async fn start(&mut self, i: usize) {
        let spec = self.ctrs[i].spec.clone();
        let name = self.ctrs[i].name.clone();
        let env = match self.fetch_env(&spec).await {
            Ok(d) => pod::resolve_env(&self.pod, &spec, &d),
            Err(e) => Err(e),
        };
        // A securityContext the runtime cannot honour (runAsNonRoot without a user) is a
        // configuration error, as in Kubernetes.
        let env = env.and_then(|e| crate::privileges::of(&self.pod, &spec).map(|_| e));
        let env = match env {
            Ok(e) => e,
            Err(msg) => {
                let c = &mut self.ctrs[i];
                c.state = CState::Waiting { reason: "CreateContainerConfigError".into(), message: msg.clone() };
                c.next_start = Some(Instant::now() + self.sh.cfg.backoff.base.min(Duration::from_secs(10)));
                self.sh.events.pod(&self.pod, Some(&name), true, "Failed", format!("Error: {msg}"));
                return;
            }
        };
        let strs = |v: &Value| -> Vec<String> { v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(|s| pod::expand(s, &env))).collect() };
        let mut argv = strs(&spec["command"]);
        argv.extend(strs(&spec["args"]));
        let image = spec["image"].as_str().unwrap_or("").to_string();
        let mut full_env: Vec<(String, String)> = if self.net.is_some() { self.sh.pod_env.clone() } else { self.sh.cfg.base_env.clone() };
        full_env.push(("HOSTNAME".into(), self.name.clone()));
        if argv.is_empty() {
            argv = vec!["/bin/sh".into(), "-c".into(), STAND_IN.into()];
            full_env.push(("CAPSTAN_IMAGE".into(), image.clone()));
        }
        full_env.extend(env.iter().cloned());
        let cwd = match spec["workingDir"].as_str().filter(|s| !s.is_empty()) {
            Some(w) => PathBuf::from(w),
            None => self.dir.join("rootfs"),
        };
        let scratch = self.dir.join("rootfs");
        if std::fs::create_dir_all(&scratch).is_ok() {
            // Writable by whatever user the containers run as, like an emptyDir.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o777));
        }
        let plan = match self.sandbox_plan(&spec, &full_env, &cwd) {
            Ok(p) => p,
            Err(msg) => {
                let c = &mut self.ctrs[i];
                c.state = CState::Waiting { reason: "CreateContainerError".into(), message: msg.clone() };
                c.next_start = Some(Instant::now() + self.sh.cfg.backoff.base.min(Duration::from_secs(10)));
                self.sh.events.pod(&self.pod, Some(&name), true, "Failed", format!("Error: {msg}"));
                return;
            }
        };
        if plan.is_none() {
            let _ = std::fs::create_dir_all(&cwd);
        }
        let c = &mut self.ctrs[i];
        if c.ever_started {
            c.restart_count += 1;
        }
        c.ever_started = true;
        c.start_gen += 1;
        c.next_start = None;
        c.killed_by_probe = false;
        c.oom = Default::default();
        let start_gen = c.start_gen;
        let log_dir = logs::container_dir(&self.sh.cfg.root, &self.ns, &self.name, &self.uid, &name);
        // Keep this start's log and the previous one (`kubectl logs --previous`).
        for (n, p) in logs::starts(&log_dir) {
            if n + 1 < c.restart_count {
                let _ = std::fs::remove_file(p);
            }
        }
        let sink = match LogSink::create(log_dir.join(format!("{}.log", c.restart_count))) {
            Ok(s) => s,
            Err(e) => {
                self.start_failed(i, format!("creating the log file: {e}"));
                return;
            }
        };
        // `tty: true`: the container's standard streams are a terminal of its own, its
        // process the leader of a new session (so of its own group, as with pipes).
        let pty = if spec["tty"] == true {
            match crate::stream::job::pty().and_then(|(m, s)| Ok((m, [s.try_clone()?, s.try_clone()?, s]))) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.start_failed(i, format!("allocating the container's terminal: {e}"));
                    return;
                }
            }
        } else {
            None
        };
        let cgroup = self.sh.cgroups.as_ref().and_then(|cg| cg.create(&format!("{}-{name}", self.uid), &spec).ok());
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear().envs(full_env.iter().map(|(k, v)| (k, v)));
        let master = match pty {
            Some((master, [a, b, c])) => {
                cmd.stdin(std::process::Stdio::from(a)).stdout(std::process::Stdio::from(b)).stderr(std::process::Stdio::from(c));
                // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the terminal by now.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Some(master)
            }
            None => {
                cmd.stdin(if spec["stdin"] == true { std::process::Stdio::piped() } else { std::process::Stdio::null() })
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .process_group(0);
                None
            }
        };
        if plan.is_none() {
            cmd.current_dir(&cwd);
        }
        if let Some(dir) = &cgroup {
            Cgroups::join_before_exec(dir, &mut cmd);
        }
        let report = match plan.as_ref().map(|p| p.install(&mut cmd)).transpose() {
            Ok(r) => r,
            Err(e) => {
                self.start_failed(i, format!("failed to create the container's namespaces: {e}"));
                return;
            }
        };
        let spawned = cmd.spawn();
        drop(cmd);
        let mut child = match spawned {
            Ok(ch) => ch,
            Err(e) => {
                let step = plan.as_ref().zip(report).and_then(|(p, r)| p.failed_step(r).map(String::from));
                let msg = match step {
                    Some(step) => format!("failed to create the container {name:?}: {step}: {e}"),
                    None => format!("failed to start container {name:?}: exec: {:?}: {e}", argv[0]),
                };
                sink.record("stderr", true, msg.as_bytes());
                sink.finish();
                self.start_failed(i, msg);
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        let pgid = pid as i32;
        crate::orphans::record(&self.dir.join(".fs").join(&name), pgid);
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let boxed = |w: Box<dyn tokio::io::AsyncWrite + Unpin + Send>| Arc::new(tokio::sync::Mutex::new(Some(w)));
        // A terminal's master is read (output) and written (input) through descriptors of
        // its own; its end (EIO) is the container's.
        let as_file = |m: &std::os::fd::OwnedFd| m.try_clone().map(|f| tokio::fs::File::from_std(std::fs::File::from(f)));
        let tty = master.map(|m| crate::stream::Tty { output: tokio::sync::broadcast::channel(TTY_CHUNKS).0, master: Arc::new(m) });
        let stdin = match &tty {
            Some(t) if spec["stdin"] == true => as_file(&t.master).ok().map(|f| boxed(Box::new(f))),
            Some(_) => None,
            None => child.stdin.take().map(|s| boxed(Box::new(s))),
        };
        let pumps = {
            let (s1, s2) = (sink.clone(), sink.clone());
            let a = match &tty {
                Some(t) => as_file(&t.master).ok().map(|f| tokio::spawn(logs::pump_tty(f, s1, t.output.clone()))),
                None => out.map(|o| tokio::spawn(logs::pump(o, "stdout", s1))),
            };
            let b = err.map(|e| tokio::spawn(logs::pump(e, "stderr", s2)));
            (a, b)
        };
        self.sh.live_logs.lock().unwrap().insert(sink.path().to_path_buf(), sink.clone());
        let attach_log = sink.clone();
        let (exited_tx, exited_rx) = watch::channel(false);
        let tx = self.ev_tx.clone();
        let sh = self.sh.clone();
        let sink_path = sink.path().to_path_buf();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Whatever the main process left behind in its group goes with it.
            killpg(pgid, libc::SIGKILL);
            let _ = exited_tx.send(true);
            use std::os::unix::process::ExitStatusExt;
            let (code, signal) = match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => (c, None),
                    (None, Some(sig)) => (128 + sig, Some(sig)),
                    _ => (-1, None),
                },
                Err(_) => (-1, None),
            };
            // The status says "terminated" only once what the container wrote is in its log
            // (kubectl logs right after a Job completes must show the last lines). Bounded: a
            // process that escaped the group may hold the pipes open; its output still goes to
            // the log, after the status.
            let mut drained = std::pin::pin!(async move {
                if let Some(a) = pumps.0 {
                    let _ = a.await;
                }
                if let Some(b) = pumps.1 {
                    let _ = b.await;
                }
            });
            let in_time = tokio::time::timeout(LOG_DRAIN, &mut drained).await.is_ok();
            let _ = tx.send(Ev::Exited { idx: i, start_gen, code, signal }).await;
            if !in_time {
                drained.await;
            }
            sink.finish();
            sh.live_logs.lock().unwrap().remove(&sink_path);
        });
        let memory_limit = crate::cgroup::limits(&spec).1.map(|q| q.units_ceil() as u64);
        let c = &mut self.ctrs[i];
        c.pgid = Some(pgid);
        c.exited = Some(exited_rx);
        c.cgroup = cgroup.clone();
        c.container_id = format!("process://{}/{pid}", self.sh.cfg.node_name);
        c.started_instant = Some(Instant::now());
        c.started_at = now();
        c.state = CState::Running { started_at: c.started_at.clone() };
        c.env = full_env;
        c.cwd = cwd;
        c.sandboxed = plan.is_some();
        c.privileges = if c.sandboxed { crate::privileges::of(&self.pod, &spec).ok() } else { None };
        c.counters.clear();
        let has_startup = Probe::of(Kind::Startup, &spec).is_some();
        c.started = !has_startup;
        c.ready = !has_startup && Probe::of(Kind::Readiness, &spec).is_none() && !c.init && !c.ephemeral;
        self.sh.running.lock().unwrap().insert(
            (self.uid.clone(), name.clone()),
            Running { ns: self.ns.clone(), pod: self.name.clone(), pgid, cgroup, memory_limit, oom: c.oom.clone(), started: Instant::now(), env: c.env.clone(), cwd: c.cwd.clone(), privileges: c.privileges.clone(),
                log: attach_log, stdin, stdin_once: spec["stdinOnce"] == true, tty },
        );
        // A postStart hook runs first; the probes start once it succeeded (as the kubelet
        // starts them after the container's start, which includes the hook).
        match hook(&spec, "postStart") {
            Some(action) => {
                c.post_start = true;
                c.ready = false;
                let (tx, env, cwd) = (self.ev_tx.clone(), c.env.clone(), c.cwd.clone());
                let host = self.net.as_ref().map_or_else(|| self.sh.cfg.host_ip.clone(), |n| n.ip.to_string());
                let target = if c.sandboxed { Some((pgid, c.privileges.clone())) } else { None };
                tokio::spawn(async move {
                    let result = probe::run_hook(&action, POST_START_MAX, &host, &env, &cwd, target).await;
                    let _ = tx.send(Ev::PostStart { idx: i, start_gen, result }).await;
                });
            }
            None => self.begin_probes(i),
        }
        self.sh.events.pod(&self.pod, Some(&name), false, "Pulled", format!("Container image {image:?} recorded (the process runtime does not pull images)"));
        self.sh.events.pod(&self.pod, Some(&name), false, "Created", format!("Created container: {name}"));
        self.sh.events.pod(&self.pod, Some(&name), false, "Started", format!("Started container {name}"));
    }

    /// A start that never produced a process: handled as an exit with code 128, as a
    /// runtime's `StartError` is.
    fn start_failed(&mut self, i: usize, message: String) {
        let name = self.ctrs[i].name.clone();
        self.sh.events.pod(&self.pod, Some(&name), true, "Failed", format!("Error: {message}"));
        let t = now();
        self.ctrs[i].started_instant = Some(Instant::now());
        self.exited(i, 128, None, Some(("StartError", message, t)));
    }

    /// The probes of a started container: the startup probe, else liveness and readiness.
    fn begin_probes(&mut self, i: usize) {
        if Probe::of(Kind::Startup, &self.ctrs[i].spec).is_some() {
            self.spawn_probe(i, Kind::Startup);
        } else {
            self.spawn_probe(i, Kind::Liveness);
            self.spawn_probe(i, Kind::Readiness);
        }
    }

    fn spawn_probe(&mut self, i: usize, kind: Kind) {
        let c = &mut self.ctrs[i];
        if c.init {
            return;
        }
        let Some(p) = Probe::of(kind, &c.spec) else { return };
        c.counters.insert(kind, ProbeCounter::new(kind == Kind::Liveness));
        let tx = self.ev_tx.clone();
        let start_gen = c.start_gen;
        let env = c.env.clone();
        let host = self.net.as_ref().map_or_else(|| self.sh.cfg.host_ip.clone(), |n| n.ip.to_string());
        let cwd = c.cwd.clone();
        let target = if c.sandboxed { c.pgid.map(|p| (p, c.privileges.clone())) } else { None };
        c.probes.push(tokio::spawn(async move {
            tokio::time::sleep(p.initial_delay).await;
            let mut tick = tokio::time::interval(p.period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let result = probe::run(&p, &host, &env, &cwd, target.clone()).await;
                if tx.send(Ev::Probe { idx: i, start_gen, kind, result }).await.is_err() {
                    return;
                }
            }
        }));
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Exited { idx, start_gen, code, signal } => {
                if self.ctrs.get(idx).is_some_and(|c| c.start_gen == start_gen) {
                    self.exited(idx, code, signal, None);
                }
            }
            Ev::PostStart { idx, start_gen, result } => {
                let Some(c) = self.ctrs.get_mut(idx) else { return };
                if c.start_gen != start_gen || c.pgid.is_none() || !c.post_start {
                    return;
                }
                c.post_start = false;
                match result {
                    Ok(()) => {
                        c.ready = c.started && Probe::of(Kind::Readiness, &c.spec).is_none() && !c.init;
                        self.begin_probes(idx);
                    }
                    Err(msg) => {
                        // As the kubelet: the container is killed and restarts by policy.
                        let name = c.name.clone();
                        self.sh.events.pod(&self.pod, Some(&name), true, "FailedPostStartHook", format!("PostStartHook failed: {msg}"));
                        self.sh.events.pod(&self.pod, Some(&name), false, "Killing", format!("FailedPostStartHook: stopping container {name}"));
                        let grace = p_grace(&self.pod, &c.spec, Kind::Liveness);
                        if let (Some(pgid), Some(ex)) = (c.pgid, c.exited.clone()) {
                            tokio::spawn(terminate(pgid, grace, ex));
                        }
                    }
                }
            }
            Ev::Probe { idx, start_gen, kind, result } => {
                let Some(c) = self.ctrs.get_mut(idx) else { return };
                if c.start_gen != start_gen || c.pgid.is_none() {
                    return;
                }
                let name = c.name.clone();
                if let Err(msg) = &result {
                    self.sh.events.pod(&self.pod, Some(&name), true, "Unhealthy", format!("{} probe failed: {msg}", kind.name()));
                }
                let Some(p) = Probe::of(kind, &c.spec) else { return };
                let Some(counter) = c.counters.get_mut(&kind) else { return };
                let Some(healthy) = counter.observe(result.is_ok(), &p) else { return };
                match (kind, healthy) {
                    (Kind::Readiness, r) => c.ready = r,
                    (Kind::Startup, true) => {
                        c.started = true;
                        for t in c.probes.drain(..) {
                            t.abort();
                        }
                        c.ready = Probe::of(Kind::Readiness, &c.spec).is_none();
                        self.spawn_probe(idx, Kind::Liveness);
                        self.spawn_probe(idx, Kind::Readiness);
                    }
                    (Kind::Startup | Kind::Liveness, false) => {
                        c.killed_by_probe = true;
                        let msg = format!("Container {name} failed {} probe, will be restarted", kind.name().to_ascii_lowercase());
                        self.sh.events.pod(&self.pod, Some(&name), false, "Killing", msg);
                        let grace = p_grace(&self.pod, &c.spec, kind);
                        let host = self.net.as_ref().map_or_else(|| self.sh.cfg.host_ip.clone(), |n| n.ip.to_string());
                        // As the kubelet: the preStop hook runs before a liveness kill too.
                        let hook = pre_stop(&self.sh, &self.pod, &host, c);
                        if let (Some(pgid), Some(ex)) = (c.pgid, c.exited.clone()) {
                            tokio::spawn(stop_with_hook(pgid, grace, ex, hook));
                        }
                    }
                    (Kind::Liveness, true) => {}
                }
            }
        }
    }

    /// A container ended (or never started): record it and decide whether it runs again.
    fn exited(&mut self, i: usize, code: i32, signal: Option<i32>, start_error: Option<(&str, String, String)>) {
        let policy = RestartPolicy::of(&self.pod);
        let backoff_cfg = self.sh.cfg.backoff;
        let pod_desc = format!("{}_{}({})", self.name, self.ns, self.uid);
        let c = &mut self.ctrs[i];
        for t in c.probes.drain(..) {
            t.abort();
        }
        if let Some(dir) = c.cgroup.take() {
            if Cgroups::oom_killed(&dir) {
                c.oom.store(true, Ordering::Relaxed);
            }
            Cgroups::remove(&dir);
        }
        self.sh.running.lock().unwrap().remove(&(self.uid.clone(), c.name.clone()));
        c.pgid = None;
        c.ready = false;
        c.started = false;
        let finished = now();
        let (reason, message, started_at) = match start_error {
            Some((r, m, t)) => (r.to_string(), m, t),
            None if c.oom.load(Ordering::Relaxed) => ("OOMKilled".into(), String::new(), c.started_at.clone()),
            None if code == 0 => ("Completed".into(), String::new(), c.started_at.clone()),
            None => ("Error".into(), String::new(), c.started_at.clone()),
        };
        let code = if reason == "OOMKilled" { 137 } else { code };
        let term = CState::Terminated { exit_code: code, signal, reason, message, started_at, finished_at: finished };
        let ran = c.started_instant.map_or(Duration::ZERO, |t| t.elapsed());
        let restart = if c.ephemeral {
            false
        } else if c.init {
            code != 0 && policy != RestartPolicy::Never
        } else {
            policy.restarts(code) || (c.killed_by_probe && policy != RestartPolicy::Never)
        };
        if !restart {
            c.state = term;
            c.done = true;
            return;
        }
        let delay = backoff_cfg.next(c.backoff, ran);
        c.backoff = Some(delay);
        c.last = Some(term.clone());
        c.next_start = Some(Instant::now() + delay);
        if delay.is_zero() {
            c.state = term;
        } else {
            let name = c.name.clone();
            c.state = CState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!("back-off {}s restarting failed container={name} pod={pod_desc}", delay.as_secs()),
            };
            self.sh.events.pod(&self.pod, Some(&name), true, "BackOff", format!("Back-off restarting failed container {name} in pod {pod_desc}"));
        }
    }

    /// Stops every running container (concurrently), waiting for each to exit.
    /// A container's preStop hook (when `announce`: a deletion, not a teardown) runs first,
    /// within the grace period; the container then gets what is left of it, at least 2 s.
    async fn terminate_all(&mut self, grace: Duration, announce: bool) {
        let mut stops: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> = Vec::new();
        let host = self.net.as_ref().map_or_else(|| self.sh.cfg.host_ip.clone(), |n| n.ip.to_string());
        for c in &mut self.ctrs {
            for t in c.probes.drain(..) {
                t.abort();
            }
            if let (Some(pgid), Some(ex)) = (c.pgid, c.exited.clone()) {
                if announce {
                    self.sh.events.pod(&self.pod, Some(&c.name), false, "Killing", format!("Stopping container {}", c.name));
                }
                let pre_stop = if announce { pre_stop(&self.sh, &self.pod, &host, c) } else { None };
                stops.push(Box::pin(stop_with_hook(pgid, grace, ex, pre_stop)));
            }
        }
        futures_util::future::join_all(stops).await;
        // Collect the exits so the final status shows them; nothing restarts now.
        let pending = self.ctrs.iter().filter(|c| c.pgid.is_some()).count();
        for _ in 0..pending {
            match tokio::time::timeout(Duration::from_secs(5), self.ev_rx.recv()).await {
                Ok(Some(Ev::Exited { idx, start_gen, code, signal })) if self.ctrs[idx].start_gen == start_gen => {
                    let c = &mut self.ctrs[idx];
                    for t in c.probes.drain(..) {
                        t.abort();
                    }
                    if let Some(dir) = c.cgroup.take() {
                        Cgroups::remove(&dir);
                    }
                    self.sh.running.lock().unwrap().remove(&(self.uid.clone(), c.name.clone()));
                    c.pgid = None;
                    c.ready = false;
                    c.state = CState::Terminated {
                        exit_code: code,
                        signal,
                        reason: if code == 0 { "Completed" } else { "Error" }.into(),
                        message: String::new(),
                        started_at: c.started_at.clone(),
                        finished_at: now(),
                    };
                    c.done = true;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        for c in &mut self.ctrs {
            c.done = true;
            c.next_start = None;
        }
    }

    /// Writes the status if it changed (a merge patch of `status`; lists are replaced whole,
    /// and fields that no longer apply are sent as null).
    async fn publish(&mut self) {
        let status = pod::status(&self.view(), &mut self.transitions, &now());
        if status == self.last_status && self.retry_publish.is_none() {
            return;
        }
        let mut patch = status.clone();
        for k in ["reason", "message", "initContainerStatuses"] {
            if patch.get(k).is_none() {
                patch[k] = Value::Null;
            }
        }
        match self.sh.client.merge_patch_quiet(&format!("{}/status", self.path()), &json!({"status": patch})).await {
            Ok(()) => {
                self.last_status = status;
                self.retry_publish = None;
            }
            Err(ClientError::Status { code: 404, .. }) => self.retry_publish = None,
            Err(e) => {
                tracing::debug!(pod = self.name, error = %e, "writing pod status failed; retrying");
                self.retry_publish = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }
}

/// A probe's own `terminationGracePeriodSeconds` wins over the pod's.
fn p_grace(pod: &Value, spec: &Value, kind: Kind) -> Duration {
    let g = spec[kind.field()]["terminationGracePeriodSeconds"]
        .as_u64()
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_u64())
        .unwrap_or(30);
    Duration::from_secs(g.min(3600))
}

/// Samples usage every `sample_every`: builds the stats document and kills containers over
/// their memory limit when the kernel does not (no cgroup v2).
async fn sample_loop(sh: Arc<Shared>) {
    let mut tick = tokio::time::interval(sh.cfg.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sh2 = sh.clone();
        let _ = tokio::task::spawn_blocking(move || sample_once(&sh2)).await;
    }
}

fn sample_once(sh: &Shared) {
    let entries: Vec<((String, String), i32, Option<PathBuf>, Option<u64>, Arc<AtomicBool>, String, String, Instant)> = sh
        .running
        .lock()
        .unwrap()
        .iter()
        .map(|(k, r)| (k.clone(), r.pgid, r.cgroup.clone(), r.memory_limit, r.oom.clone(), r.ns.clone(), r.pod.clone(), r.started))
        .collect();
    let pgids: Vec<i32> = entries.iter().map(|e| e.1).collect();
    let proc_usage = stats::groups_usage(&pgids);
    let now_i = Instant::now();
    let ts = now();
    let mut usage = sh.usage.lock().unwrap();
    let mut pods: HashMap<(String, String), Vec<Value>> = HashMap::new();
    let mut prev = HashMap::new();
    for (j, (key, pgid, cg, limit, oom, ns, pod, started)) in entries.into_iter().enumerate() {
        let (cpu, mem) = cg.as_deref().and_then(Cgroups::usage).unwrap_or(proc_usage[j]);
        if sh.cgroups.is_none()
            && let Some(l) = limit
            && mem > l
        {
            oom.store(true, Ordering::Relaxed);
            killpg(pgid, libc::SIGKILL);
        }
        let (p_cpu, p_t) = usage.prev.get(&key).copied().unwrap_or((0, started));
        let dt = now_i.duration_since(p_t).as_nanos().max(1) as u64;
        let nano_cores = (cpu.saturating_sub(p_cpu) as u128 * 1_000_000_000 / dt as u128) as u64;
        prev.insert(key.clone(), (cpu, now_i));
        pods.entry((ns, pod)).or_default().push(json!({"name": key.1, "cpuNanoCores": nano_cores, "memoryBytes": mem}));
    }
    usage.prev = prev;
    let (m_cpu, m_mem, _) = stats::machine_usage();
    let node_cores = match usage.node_prev {
        Some((c, t)) => (m_cpu.saturating_sub(c) as u128 * 1_000_000_000 / now_i.duration_since(t).as_nanos().max(1)) as u64,
        None => 0,
    };
    usage.node_prev = Some((m_cpu, now_i));
    usage.doc = json!({
        "nodes": [{"name": sh.cfg.node_name, "timestamp": ts, "window": format!("{}s", sh.cfg.sample_every.as_secs().max(1)), "cpuNanoCores": node_cores, "memoryBytes": m_mem}],
        "pods": pods.into_iter().map(|((ns, name), cs)| json!({"namespace": ns, "name": name, "timestamp": ts, "window": format!("{}s", sh.cfg.sample_every.as_secs().max(1)), "containers": cs})).collect::<Vec<_>>(),
    });
}

/// A volume mount's `subPath` inside `src`: created when missing (as a directory, as the
/// kubelet does), refused when it (or a link in it) leads outside the volume.
fn sub_path(src: &std::path::Path, sub: &str) -> Result<PathBuf, String> {
    crate::volume::files::check_path(sub).map_err(|e| format!("invalid subPath {sub:?}: {e}"))?;
    let base = std::fs::canonicalize(src).map_err(|e| format!("volume {}: {e}", src.display()))?;
    let p = base.join(sub);
    if std::fs::symlink_metadata(&p).is_err() {
        std::fs::create_dir_all(&p).map_err(|e| format!("creating subPath {sub:?}: {e}"))?;
    }
    let real = std::fs::canonicalize(&p).map_err(|e| format!("subPath {sub:?}: {e}"))?;
    if !real.starts_with(&base) {
        return Err(format!("subPath {sub:?} leads outside the volume (to {})", real.display()));
    }
    Ok(real)
}

/// The pod's hostname: `spec.hostname`, or its name cut to 63 bytes without a trailing `-` or
/// `.`, as the kubelet does (a name may be longer than a hostname may).
fn hostname_of(pod: &Value, name: &str) -> String {
    let h = pod["spec"]["hostname"].as_str().filter(|h| !h.is_empty()).unwrap_or(name);
    let mut h = h[..h.len().min(63)].to_string();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h
}
