//! `loadgen`: runs a declarative workload against an embedded capstan control plane (the
//! default) or any Kubernetes API server (`--server`, `--kubeconfig`), and reports what it
//! measured: per-call API latency (its own, and every component's from the server's
//! histogram), pod startup from server timestamps and as watched, every pod of the run
//! accounted for (a run that misses one fails, and exits 2 if a wait for Running timed out),
//! the control plane's CPU per pod and peak RSS (the whole process when embedded; the
//! server's `/metrics` with `--server`), and verdicts against Kubernetes' SLOs and the
//! workload's targets. `loadgen compare A.json B.json` puts
//! two reports side by side.

mod measure;
mod report;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use client::{Client, ClientError};
use serde::Deserialize;
use serde_json::json;

use loadgen::workload;
use measure::{ApiStats, Pods};
use report::{PhaseLine, Report};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "loadgen", version, about = "Load generator and measurement for Kubernetes control planes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a workload file.
    Run {
        workload: PathBuf,
        #[arg(long, default_value_t = 100)]
        nodes: u64,
        #[arg(long, default_value_t = 30)]
        pods_per_node: u64,
        /// Drive this API server instead of an embedded control plane.
        #[arg(long, conflicts_with = "kubeconfig")]
        server: Option<String>,
        /// Drive the server of this kubeconfig's current context.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long)]
        report_json: Option<PathBuf>,
        #[arg(long)]
        report_html: Option<PathBuf>,
    },
    /// Print two JSON reports side by side, with ratios.
    Compare { a: PathBuf, b: PathBuf },
}

fn main() -> Result<()> {
    loadgen::allocator::configure();
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into())).with_writer(std::io::stderr).init();
    match cli.cmd {
        Cmd::Compare { a, b } => {
            let read = |p: &PathBuf| -> Result<Report> { serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?).with_context(|| format!("{} is not a loadgen JSON report", p.display())) };
            print!("{}", report::compare(&read(&a)?, &read(&b)?));
            Ok(())
        }
        Cmd::Run { workload, nodes, pods_per_node, server, kubeconfig, report_json, report_html } => {
            let text = std::fs::read_to_string(&workload).with_context(|| format!("reading {}", workload.display()))?;
            let w = workload::parse(&text).map_err(|e| anyhow!("{}: {e}", workload.display()))?;
            let vars = workload::Vars { nodes, pods_per_node };
            // A kubeconfig gives the server (unless --server names one) and the credentials
            // for it: the CA and the client certificate every request of this process presents.
            let from_kc = kubeconfig.as_ref().map(|k| client::kubeconfig::load(k, None).map_err(|e| anyhow!(e))).transpose()?;
            if let Some(creds) = from_kc.as_ref().and_then(|k| k.credentials.as_ref()) {
                client::tls::set_default(creds).map_err(|e| anyhow!(e))?;
            }
            // Over TLS, hollow nodes get node tokens (created with the kubeconfig's admin
            // credentials) and present them with the CA alone.
            let node_tokens = from_kc.as_ref().and_then(|k| k.credentials.as_ref()).map(|c| client::tls::Credentials { ca_pem: c.ca_pem.clone(), cert_pem: None, key_pem: None });
            let server = match (server, from_kc) {
                (Some(s), _) => Some(s),
                (None, Some(k)) => Some(k.server),
                _ => None,
            };
            let rt = loadgen::runtime::multi_thread().enable_all().build()?;
            let r = rt.block_on(run(w, vars, server, node_tokens))?;
            print!("{}", report::table(&r));
            if let Some(p) = report_json {
                std::fs::write(&p, serde_json::to_vec_pretty(&r)?).with_context(|| format!("writing {}", p.display()))?;
            }
            if let Some(p) = report_html {
                std::fs::write(&p, report::html(&r)).with_context(|| format!("writing {}", p.display()))?;
            }
            rt.shutdown_timeout(Duration::from_secs(2));
            if r.waits_timed_out > 0 {
                eprintln!("loadgen: {} waitPodsRunning phase(s) timed out before every expected pod ran", r.waits_timed_out);
                std::process::exit(2);
            }
            Ok(())
        }
    }
}

/// The control plane started in this process on a temporary data directory.
struct Embedded {
    _dir: tempfile::TempDir,
    _sched: scheduler::Scheduler,
    _ctrl: controllers::Controllers,
    _server: tokio::task::JoinHandle<()>,
    /// The components above reach the server through calls (`client::local`), as in
    /// `capstan up`; the watch of pods and the hollow nodes too.
    _in_process: client::local::Offer,
}

async fn embedded() -> Result<(String, Embedded)> {
    let dir = tempfile::tempdir()?;
    let mut cfg = storage::Config::new(dir.path().join("store"));
    cfg.compact_retention_age = Some(Duration::from_secs(300));
    // As `capstan up`: five minutes of history, at most 512 MiB of it.
    cfg.compact_history_bytes_max = Some(512 << 20);
    let store = tokio::task::block_in_place(|| storage::Store::open(cfg))?;
    apiserver::bootstrap(&store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = apiserver::router(store);
    let in_process = client::local::offer(&base, std::sync::Arc::new(apiserver::in_process::InProcess::new(app.clone(), None)));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let c = Client::new(&base);
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.get("/api/v1/namespaces/default").await.is_err() {
        if Instant::now() > deadline {
            bail!("the embedded API server never became ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sched = scheduler::Scheduler::start(&base, vec![scheduler::framework::Profile::default()]);
    let ctrl = controllers::Controllers::start(&base, Default::default()).await;
    Ok((base.clone(), Embedded { _dir: dir, _sched: sched, _ctrl: ctrl, _server: server, _in_process: in_process }))
}

/// The server's (CPU seconds, peak RSS bytes) from its `/metrics`: Prometheus' process
/// collector, and capstan's peak RSS (else the current RSS). None when it publishes neither.
async fn server_usage(c: &Client) -> Option<(f64, u64)> {
    let text = c.get_text("/metrics").await.ok()?;
    let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
    let cpu = value("process_cpu_seconds_total")?;
    let rss = value("capstan_process_peak_resident_memory_bytes").or_else(|| value("process_resident_memory_bytes"))?;
    Some((cpu, rss as u64))
}

/// A timed API call.
async fn call<T>(stats: &ApiStats, verb: &str, resource: &str, f: impl std::future::Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    let t = Instant::now();
    let r = f.await;
    let ok = r.is_ok() || matches!(r, Err(ClientError::Status { code: 409, .. }));
    stats.record(verb, resource, t.elapsed(), ok);
    r
}

/// Runs `f(i)` for i in 0..count at `qps` (0: as fast as allowed), at most `conc` at once.
async fn paced<F, Fut>(count: u64, qps: f64, conc: usize, progress: &Progress, f: F) -> (f64, u64)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(conc));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for i in 0..count {
        if qps > 0.0 {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / qps)).into()).await;
        }
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let fut = f(i);
        let fl = failures.clone();
        let p = progress.clone();
        tasks.push(tokio::spawn(async move {
            if !fut.await {
                fl.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            p.inc();
            drop(permit);
        }));
    }
    futures_util::future::join_all(tasks).await;
    (start.elapsed().as_secs_f64(), failures.load(std::sync::atomic::Ordering::Relaxed))
}

/// Progress: a bar on a terminal, plain lines otherwise.
#[derive(Clone)]
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    done: Arc<std::sync::atomic::AtomicU64>,
    phase: String,
    total: u64,
}

impl Progress {
    fn new(phase: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(indicatif::ProgressStyle::with_template("{msg:>20} [{bar:40}] {pos}/{len} {per_sec} eta {eta}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
            b.set_message(phase.to_string());
            b
        });
        if bar.is_none() {
            eprintln!("loadgen: {phase}: 0/{total}");
        }
        Progress { bar, done: Default::default(), phase: phase.to_string(), total }
    }
    fn inc(&self) {
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
    fn set(&self, n: u64) {
        let before = self.done.swap(n, std::sync::atomic::Ordering::Relaxed);
        match &self.bar {
            Some(b) => b.set_position(n),
            // Plain lines when not a terminal: one per tenth of the way.
            None => {
                let total = self.total.max(1);
                if before * 10 / total != n * 10 / total {
                    eprintln!("loadgen: {}: {n}/{total}", self.phase);
                }
            }
        }
    }
    fn finish(&self, phase: &str, total: u64) {
        match &self.bar {
            Some(b) => b.finish(),
            None => eprintln!("loadgen: {phase}: {}/{total}", self.done.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }
}

async fn run(w: workload::Workload, vars: workload::Vars, server: Option<String>, node_tokens: Option<client::tls::Credentials>) -> Result<Report> {
    let started = Instant::now();
    let embedded_mode = server.is_none();
    let (base, _embedded) = match server {
        Some(s) => (s, None),
        None => {
            let (b, e) = embedded().await?;
            (b, Some(e))
        }
    };
    let c = Client::with_agent(&base, "capstan-loadgen/0.1");
    let over_time: Arc<std::sync::Mutex<report::OverTime>> = Default::default();
    let sampler = tokio::spawn(measure::sample_usage(started, over_time.clone()));
    let stats = Arc::new(ApiStats::default());
    let pods = Arc::new(Pods::new());
    // One watch of every pod, for startup latency and accounting.
    let watcher = {
        let (c, pods) = (c.clone(), pods.clone());
        tokio::spawn(async move {
            let mut rv = String::new();
            loop {
                if rv.is_empty() {
                    match c.get("/api/v1/pods").await {
                        Ok(l) => {
                            for p in l["items"].as_array().into_iter().flatten() {
                                if let Ok(p) = measure::PodLite::deserialize(p) {
                                    pods.observe(&p);
                                }
                            }
                            rv = l["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                }
                let mut s = match c.watch(&format!("/api/v1/pods?watch=true&allowWatchBookmarks=true&resourceVersion={rv}")).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, resource_version = %rv, "the pod watch could not resume; listing every pod again");
                        rv.clear();
                        continue;
                    }
                };
                while let Some(ev) = s.next_as::<measure::PodEvent>().await {
                    if ev.type_ == "ERROR" {
                        tracing::warn!(resource_version = %rv, "the pod watch ended with an error event; listing every pod again");
                        rv.clear();
                        break;
                    }
                    if let Some(r) = &ev.object.metadata.resource_version {
                        rv.clone_from(r);
                    }
                    match ev.type_.as_str() {
                        "ADDED" | "MODIFIED" => pods.observe(&ev.object),
                        "DELETED" => pods.deleted(&ev.object),
                        _ => {}
                    }
                }
            }
        })
    };
    let mut hollow = None;
    let mut lines = Vec::new();
    let mut expected_pods = 0u64;
    let mut first_create: Option<f64> = None;
    let mut extra_tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut waits_timed_out = 0u64;
    // The server's own CPU and memory, when it publishes them (capstan, kube-apiserver).
    let server_usage_at_start = if embedded_mode { None } else { server_usage(&c).await };
    // The server's latency histogram of mutating calls: every component's writes, not only
    // this run's (none when the server does not publish one).
    let mutating_at_start = c.get_text("/metrics").await.ok().map(|t| measure::mutating_buckets(&t));
    for ph in &w.phases {
        let a = &ph.args;
        // The phase's arguments for the pod template, owned by each create's task.
        let phase_args = Arc::new(ph.args.clone());
        let t0 = Instant::now();
        let count = |k: &str| vars.count(&a[k]).map_err(|e| anyhow!("{}: {k}: {e}", ph.kind));
        let qps = a["qps"].as_f64().unwrap_or(0.0);
        let ns = a["namespace"].as_str().unwrap_or("default").to_string();
        let mut line = PhaseLine { phase: ph.kind.clone(), seconds: 0.0, items: 0, configured_qps: (qps > 0.0).then_some(qps), achieved_qps: None, note: String::new() };
        if matches!(ph.kind.as_str(), "createDeployments" | "createPods" | "createReplicaSets" | "createJobs" | "waitPodsRunning") {
            pods.own(&ns);
        }
        match ph.kind.as_str() {
            "createNodes" => {
                let n = count("count")?;
                // Node tokens are capstan's: another API server (kube-apiserver) does not know
                // them, so there the hollow nodes write with the kubeconfig's credentials.
                let capstan = c.get("/version").await.ok().is_some_and(|v| v["gitVersion"].as_str().is_some_and(|g| g.contains("capstan")));
                let node_tokens = node_tokens.clone().filter(|_| capstan);
                let cfg = kubelet::HollowConfig { count: n as usize, name_prefix: "loadgen-node-".into(), node_tokens: node_tokens.clone(), ..Default::default() };
                hollow = Some(kubelet::HollowNodes::start(&base, cfg).await.map_err(|e| anyhow!("starting hollow nodes: {e}"))?);
                line.items = n;
                line.note = if node_tokens.is_some() { "hollow nodes in this process, each writing with its own node token".into() } else { "hollow nodes in this process".into() };
            }
            "createNamespace" => {
                let name = a["name"].as_str().unwrap_or("loadgen");
                let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                let _ = call(&stats, "create", "namespaces", c.post("/api/v1/namespaces", &body)).await;
                line.items = 1;
            }
            "createDeployments" => {
                let n = count("count")?;
                let replicas = count("replicas")?;
                expected_pods += n * replicas;
                first_create.get_or_insert(pods.elapsed());
                let p = Progress::new(&ph.kind, n);
                let (secs, failed) = paced(n, qps, 64, &p, |i| {
                    let (c, stats, ns, args) = (c.clone(), stats.clone(), ns.clone(), phase_args.clone());
                    async move {
                        let name = format!("d-{i}");
                        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
                            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": workload::pod_template(&name, &args)}});
                        call(&stats, "create", "deployments", c.post(&format!("/apis/apps/v1/namespaces/{ns}/deployments"), &d)).await.is_ok()
                    }
                })
                .await;
                p.finish(&ph.kind, n);
                line.paced(n, secs, failed);
            }
            "createPods" => {
                let n = count("count")?;
                expected_pods += n;
                first_create.get_or_insert(pods.elapsed());
                let p = Progress::new(&ph.kind, n);
                let (secs, failed) = paced(n, qps, 256, &p, |i| {
                    let (c, stats, ns, pods, args) = (c.clone(), stats.clone(), ns.clone(), pods.clone(), phase_args.clone());
                    async move {
                        let name = format!("p-{i}");
                        let mut pod = workload::pod_template("bare", &args);
                        pod["apiVersion"] = json!("v1");
                        pod["kind"] = json!("Pod");
                        pod["metadata"]["name"] = json!(name);
                        pod["metadata"]["namespace"] = json!(ns);
                        pods.sent(&format!("{ns}/{name}"));
                        call(&stats, "create", "pods", c.post(&format!("/api/v1/namespaces/{ns}/pods"), &pod)).await.is_ok()
                    }
                })
                .await;
                p.finish(&ph.kind, n);
                line.paced(n, secs, failed);
            }
            "createReplicaSets" | "createJobs" => {
                let n = count("count")?;
                let replicas = count("replicas")?;
                expected_pods += n * replicas;
                first_create.get_or_insert(pods.elapsed());
                let jobs = ph.kind == "createJobs";
                let run_seconds = a["runSeconds"].as_f64().unwrap_or(1.0);
                let p = Progress::new(&ph.kind, n);
                let (secs, failed) = paced(n, qps, 64, &p, |i| {
                    let (c, stats, ns, args) = (c.clone(), stats.clone(), ns.clone(), phase_args.clone());
                    async move {
                        if jobs {
                            let name = format!("j-{i}");
                            let mut t = workload::pod_template(&name, &args);
                            t["spec"]["restartPolicy"] = json!("Never");
                            // Hollow pods finish after this; real ones run their command.
                            t["metadata"]["annotations"] = json!({"hollow.capstan.io/run-seconds": run_seconds.to_string()});
                            let j = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
                                "spec": {"completions": replicas, "parallelism": replicas, "template": t}});
                            call(&stats, "create", "jobs", c.post(&format!("/apis/batch/v1/namespaces/{ns}/jobs"), &j)).await.is_ok()
                        } else {
                            let name = format!("rs-{i}");
                            let r = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name, "namespace": ns},
                                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": workload::pod_template(&name, &args)}});
                            call(&stats, "create", "replicasets", c.post(&format!("/apis/apps/v1/namespaces/{ns}/replicasets"), &r)).await.is_ok()
                        }
                    }
                })
                .await;
                p.finish(&ph.kind, n);
                line.paced(n, secs, failed);
            }
            "rollingUpdate" => {
                // A new template for every Deployment, then wait until each reports all
                // replicas updated and available (what `kubectl rollout status` waits for).
                let list = call(&stats, "list", "deployments", c.get(&format!("/apis/apps/v1/namespaces/{ns}/deployments"))).await.map_err(|e| anyhow!("listing deployments: {e}"))?;
                let names: Arc<Vec<String>> = Arc::new(list["items"].as_array().into_iter().flatten().filter_map(|d| d["metadata"]["name"].as_str().map(String::from)).collect());
                let n = names.len() as u64;
                let p = Progress::new(&ph.kind, n);
                let stamp = jiff::Timestamp::now().as_second().to_string();
                let (_, _) = paced(n, qps, 64, &p, |i| {
                    let (c, stats, ns, names, stamp) = (c.clone(), stats.clone(), ns.clone(), names.clone(), stamp.clone());
                    async move {
                        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{}", names[i as usize]);
                        let patch = json!({"spec": {"template": {"metadata": {"annotations": {"loadgen/rollout": stamp}}}}});
                        call(&stats, "patch", "deployments", c.merge_patch(&path, &patch)).await.is_ok()
                    }
                })
                .await;
                p.finish(&ph.kind, n);
                let timeout = Duration::from_secs(a["timeoutSeconds"].as_u64().unwrap_or(600));
                let deadline = Instant::now() + timeout;
                loop {
                    let l = call(&stats, "list", "deployments", c.get(&format!("/apis/apps/v1/namespaces/{ns}/deployments"))).await.map_err(|e| anyhow!("listing deployments: {e}"))?;
                    let done = l["items"].as_array().into_iter().flatten().filter(|d| {
                        let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
                        d["status"]["updatedReplicas"].as_i64() == Some(want) && d["status"]["availableReplicas"].as_i64() == Some(want) && d["status"]["replicas"].as_i64() == Some(want)
                            && d["status"]["observedGeneration"] == d["metadata"]["generation"]
                    }).count() as u64;
                    if done >= n {
                        break;
                    }
                    if Instant::now() > deadline {
                        line.note = format!("timed out with {done} of {n} rolled out");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                line.items = n;
            }
            "waitPodsRunning" => {
                let want = count("expected")?;
                let timeout = Duration::from_secs(a["timeoutSeconds"].as_u64().unwrap_or(600));
                let p = Progress::new(&ph.kind, want);
                let deadline = Instant::now() + timeout;
                loop {
                    let n = pods.running(&ns) as u64;
                    p.set(n);
                    if n >= want {
                        break;
                    }
                    if Instant::now() > deadline {
                        line.note = format!("timed out after {}s with {n} of {want} running", timeout.as_secs());
                        waits_timed_out += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                p.finish(&ph.kind, want);
                line.items = pods.running(&ns) as u64;
            }
            "scaleDeployments" => {
                let factor = a["factor"].as_f64().unwrap_or(1.0).max(0.0);
                let list = call(&stats, "list", "deployments", c.get(&format!("/apis/apps/v1/namespaces/{ns}/deployments"))).await.map_err(|e| anyhow!("listing deployments: {e}"))?;
                let items: Vec<(String, i64)> = list["items"].as_array().into_iter().flatten().map(|d| (d["metadata"]["name"].as_str().unwrap_or("").to_string(), d["spec"]["replicas"].as_i64().unwrap_or(1))).collect();
                let n = items.len() as u64;
                let items = Arc::new(items);
                let p = Progress::new(&ph.kind, n);
                let (secs, failed) = paced(n, qps, 64, &p, |i| {
                    let (c, stats, ns, items) = (c.clone(), stats.clone(), ns.clone(), items.clone());
                    async move {
                        let (name, r) = &items[i as usize];
                        let want = ((*r as f64) * factor).ceil() as i64;
                        call(&stats, "patch", "deployments/scale", c.merge_patch(&format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale"), &json!({"spec": {"replicas": want}}))).await.is_ok()
                    }
                })
                .await;
                p.finish(&ph.kind, n);
                line.paced(n, secs, failed);
            }
            "deleteDeployments" => {
                let list = call(&stats, "list", "deployments", c.get(&format!("/apis/apps/v1/namespaces/{ns}/deployments"))).await.map_err(|e| anyhow!("listing deployments: {e}"))?;
                let names: Arc<Vec<String>> = Arc::new(list["items"].as_array().into_iter().flatten().filter_map(|d| d["metadata"]["name"].as_str().map(String::from)).collect());
                let n = names.len() as u64;
                let p = Progress::new(&ph.kind, n);
                let (secs, failed) = paced(n, qps, 64, &p, |i| {
                    let (c, stats, ns, names) = (c.clone(), stats.clone(), ns.clone(), names.clone());
                    async move {
                        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{}", names[i as usize]);
                        call(&stats, "delete", "deployments", c.delete(&path, &json!({"propagationPolicy": "Background"}))).await.is_ok()
                    }
                })
                .await;
                p.finish(&ph.kind, n);
                line.paced(n, secs, failed);
            }
            "churnPods" => {
                let n = count("count")?;
                let p = Progress::new(&ph.kind, n);
                let (secs, failed) = paced(n, qps, 128, &p, |i| {
                    let (c, stats, ns, pods) = (c.clone(), stats.clone(), ns.clone(), pods.clone());
                    async move {
                        let path = format!("/api/v1/namespaces/{ns}/pods/p-{i}");
                        pods.mark_sent(&format!("{ns}/p-{i}"));
                        let a = call(&stats, "patch", "pods", c.merge_patch(&path, &json!({"metadata": {"labels": {"loadgen-mark": "1"}}}))).await.is_ok();
                        // The delete follows the update's watch event (or 5 s), so both are seen.
                        let t = Instant::now();
                        while pods.marked(&format!("{ns}/p-{i}")) && t.elapsed() < Duration::from_secs(5) {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        let b = call(&stats, "delete", "pods", c.delete(&path, &json!({"gracePeriodSeconds": 0}))).await.is_ok();
                        a && b
                    }
                })
                .await;
                p.finish(&ph.kind, n);
                line.paced(n, secs, failed);
            }
            "listStorm" => {
                let n = a["lists"].as_u64().unwrap_or(10);
                let conc = a["concurrency"].as_u64().unwrap_or(4).max(1) as usize;
                let p = Progress::new(&ph.kind, n);
                let (secs, failed) = paced(n, 0.0, conc, &p, |_| {
                    let (c, stats, ns) = (c.clone(), stats.clone(), ns.clone());
                    async move { call(&stats, "list", "pods", c.get(&format!("/api/v1/namespaces/{ns}/pods"))).await.is_ok() }
                })
                .await;
                p.finish(&ph.kind, n);
                line.paced(n, secs, failed);
            }
            "watchStorm" => {
                let n = a["watchers"].as_u64().unwrap_or(10);
                for _ in 0..n {
                    let (c, ns) = (c.clone(), ns.clone());
                    extra_tasks.push(tokio::spawn(async move {
                        if let Ok(mut s) = c.watch(&format!("/api/v1/namespaces/{ns}/pods?watch=true")).await {
                            while s.next().await.is_some() {}
                        }
                    }));
                }
                line.items = n;
                line.note = "watchers stay open for the rest of the run".into();
            }
            other => bail!("phase {other} is not implemented"),
        }
        line.seconds = t0.elapsed().as_secs_f64();
        lines.push(line);
    }
    for t in extra_tasks {
        t.abort();
    }
    let pod_report = pods.report(expected_pods);
    watcher.abort();
    sampler.abort();
    let over_time = over_time.lock().unwrap().clone();
    drop(hollow);
    let rate = match (first_create, pod_report.running_over_time.last()) {
        (Some(a), Some((t, n))) if *t > a => Some(*n as f64 / (t - a)),
        _ => None,
    };
    let api = stats.summary();
    let server_mutating = match (mutating_at_start, c.get_text("/metrics").await.ok()) {
        (Some(before), Some(text)) => measure::quantile_bound(&before, &measure::mutating_buckets(&text), 0.99),
        _ => None,
    };
    let verdicts = report::verdicts(&api, &pod_report, rate, &w.targets, embedded_mode, waits_timed_out, server_mutating);
    let (cpu, rss) = measure::process_usage();
    let (cp_cpu, cp_rss) = if embedded_mode {
        (Some(cpu), Some(rss))
    } else {
        match (server_usage_at_start, server_usage(&c).await) {
            (Some((c0, _)), Some((c1, peak))) => (Some(c1 - c0), Some(peak)),
            _ => (None, None),
        }
    };
    let slo_pass = verdicts.iter().filter(|v| v.name.starts_with("SLO:") || v.name == "every pod accounted for").all(|v| v.pass);
    let (p50, p99) = if embedded_mode && pod_report.startup_client_p99_s.is_some() {
        (pod_report.startup_client_p50_s, pod_report.startup_client_p99_s)
    } else {
        (pod_report.startup_server_p50_s, pod_report.startup_server_p99_s)
    };
    Ok(Report {
        pods_total: pod_report.expected,
        pods_running: pod_report.running,
        pod_startup_p50_ms: p50.map(|s| s * 1000.0),
        pod_startup_p99_ms: p99.map(|s| s * 1000.0),
        api_mutating_p99_ms: report::mutating_p99_ms(&api),
        pods_per_sec: rate,
        control_plane_peak_rss_bytes: cp_rss,
        control_plane_cpu_seconds: cp_cpu,
        cpu_ms_per_pod: cp_cpu.filter(|_| pod_report.expected > 0).map(|c| c * 1000.0 / pod_report.expected as f64),
        waits_timed_out,
        server_mutating_p99_bound_s: server_mutating.map(|b| b.0),
        server_mutating_calls: server_mutating.map(|b| b.1),
        slo_pass,
        workload: w.name,
        target: if embedded_mode { "embedded capstan".into() } else { base },
        nodes: vars.nodes,
        pods_per_node: vars.pods_per_node,
        seconds: started.elapsed().as_secs_f64(),
        phases: lines,
        api,
        pods: pod_report,
        pods_per_second_created_to_running: rate,
        process_cpu_seconds: cpu,
        process_peak_rss_bytes: rss,
        process_note: if embedded_mode { "loadgen and the whole control plane in this process".into() } else { "loadgen (and its hollow nodes) only".into() },
        verdicts,
        over_time,
    })
}
