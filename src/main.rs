//! `capstan`: the one binary. `up` runs the cluster in one process (the store, the API
//! server, a real node running pods as local processes, and any number of hollow nodes),
//! `apiserver` runs the API server on an embedded store, `kv` drives the store directly.
//! Later issues add the scheduler and controllers.

use std::path::PathBuf;

/// glibc's malloc was a third of the CPU profile of the steady-state API write path (5,000
/// hollow nodes renewing leases: _int_malloc, _int_free, malloc_consolidate); mimalloc's
/// per-thread free lists avoid that. Measured in bench/RESULTS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use storage::{Config, DeleteRequest, KeyRange, RangeRequest, Store};

#[derive(Parser)]
#[command(name = "capstan", version, about = "A Kubernetes-compatible control plane, built datastore-first")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster in this process (store, API server, a local node, hollow nodes)
    /// and write a kubeconfig.
    Up {
        #[arg(long, default_value = "./capstan-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: String,
        /// Hollow nodes (no processes: pods bound to them go Running) to run in this process.
        #[arg(long, default_value_t = 0)]
        hollow_nodes: usize,
        /// How often hollow nodes renew their leases (Kubernetes: 10 s).
        #[arg(long, default_value_t = 10)]
        hollow_lease_renew_seconds: u64,
        #[command(flatten)]
        node: NodeOpts,
        #[command(flatten)]
        opts: ServeOpts,
    },
    /// Run the scheduler against an API server.
    Scheduler {
        /// The API server.
        #[arg(long, default_value = "http://127.0.0.1:6443")]
        server: String,
        /// Where /metrics and /debug/scheduler/pods/<ns>/<name> are served.
        #[arg(long, default_value = "127.0.0.1:10259")]
        listen: String,
        /// A KubeSchedulerConfiguration file (profiles, plugins, weights).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// Run the controllers against an API server, with leader election so that several
    /// can run and one acts.
    Controllers {
        #[arg(long, default_value = "http://127.0.0.1:6443")]
        server: String,
        /// Where /metrics is served.
        #[arg(long, default_value = "127.0.0.1:10257")]
        listen: String,
        /// This candidate's identity in the leader election (default: hostname + pid).
        #[arg(long)]
        identity: Option<String>,
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// Run the API server on an embedded store.
    Apiserver {
        #[arg(long, default_value = "./capstan-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: String,
        #[command(flatten)]
        opts: ServeOpts,
    },
    /// Use the key-value store directly (the store capstan keeps every object in).
    Kv {
        /// The store's data directory.
        #[arg(long, default_value = "./capstan-data/store")]
        data_dir: PathBuf,
        /// Shards (one thread each); must match what the directory was created with.
        #[arg(long)]
        shards: Option<usize>,
        /// Acknowledge writes before they are durable. Loses data on a crash.
        #[arg(long)]
        unsafe_no_fsync: bool,
        #[command(subcommand)]
        op: KvOp,
    },
}

#[derive(clap::Args, Clone)]
struct ServeOpts {
    /// Store shards (threads); must match what the data directory was created with.
    #[arg(long)]
    shards: Option<usize>,
    /// Acknowledge writes before they are durable. Loses data on a crash.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Log level of the request log and everything else (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// The real node `capstan up` runs (pods as local processes).
#[derive(clap::Args, Clone)]
struct NodeOpts {
    /// Name of the local node (default: this machine's hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Run no local node (only hollow nodes, if any).
    #[arg(long)]
    no_local_node: bool,
    /// Run no scheduler (pods then run only if they name their node).
    #[arg(long)]
    no_scheduler: bool,
    /// Where the scheduler serves /metrics and /debug/scheduler/pods/<ns>/<name> (port 0: any).
    #[arg(long, default_value = "127.0.0.1:0")]
    scheduler_listen: String,
    /// A KubeSchedulerConfiguration file for the scheduler.
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    /// Run no controllers (Deployments and ReplicaSets then create no pods).
    #[arg(long)]
    no_controllers: bool,
    /// A node whose lease is older than this is marked unreachable (Kubernetes: 40).
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_seconds: u64,
    /// How often HorizontalPodAutoscalers are evaluated (Kubernetes: 15).
    #[arg(long, default_value_t = 15)]
    hpa_sync_seconds: u64,
    /// First CrashLoopBackOff delay in seconds (Kubernetes: 10; doubles up to 300).
    #[arg(long, default_value_t = 10)]
    crash_backoff_seconds: u64,
    /// How often container CPU and memory are sampled (kubectl top, memory limits).
    #[arg(long, default_value_t = 5)]
    usage_sample_seconds: u64,
}

#[derive(Subcommand)]
enum KvOp {
    /// Write a key.
    Put { key: String, value: String },
    /// Read a key (optionally at an older revision).
    Get {
        key: String,
        #[arg(long)]
        revision: Option<u64>,
    },
    /// List keys under a prefix.
    Range {
        prefix: String,
        #[arg(long, default_value_t = 0)]
        limit: usize,
        #[arg(long)]
        keys_only: bool,
    },
    /// Delete a key, or every key under a prefix with --prefix.
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Drop history older than a revision.
    Compact { revision: u64 },
    /// Write a snapshot now.
    Snapshot,
    /// Revision, key counts and the index's memory per key.
    Stats,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Up { opts, .. } | Command::Apiserver { opts, .. } => opts.log_level.clone(),
        Command::Kv { .. } => "warn".into(),
        Command::Scheduler { log_level, .. } | Command::Controllers { log_level, .. } => log_level.clone(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Kv { data_dir, shards, unsafe_no_fsync, op } => rt.block_on(kv(data_dir, shards, unsafe_no_fsync, op)),
        Command::Up { data_dir, listen, hollow_nodes, hollow_lease_renew_seconds, node, opts } => {
            rt.block_on(serve(data_dir, listen, opts, Some((node, hollow_nodes, hollow_lease_renew_seconds))))
        }
        Command::Apiserver { data_dir, listen, opts } => rt.block_on(serve(data_dir, listen, opts, None)),
        Command::Scheduler { server, listen, config, .. } => rt.block_on(run_scheduler(server, listen, config)),
        Command::Controllers { server, listen, identity, .. } => rt.block_on(run_controllers(server, listen, identity)),
    }
}

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: capstan
  cluster:
    server: {server}
contexts:
- name: capstan
  context:
    cluster: capstan
    user: capstan
    namespace: default
current-context: capstan
users:
- name: capstan
  user: {{}}
"
    )
}

/// Runs the store and the API server (and, for `up`, the nodes) until SIGINT or SIGTERM,
/// then stops cleanly: pods first (their containers get SIGTERM and their grace period, up
/// to 10 s), then open watches (a last bookmark each), then the store (synced, threads
/// joined when its last handle drops).
async fn serve(data_dir: PathBuf, listen: String, opts: ServeOpts, up: Option<(NodeOpts, usize, u64)>) -> Result<()> {
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let store_dir = data_dir.join("store");
    let mut cfg = Config::new(&store_dir);
    cfg.shards = shard_count(&store_dir, opts.shards);
    cfg.fsync = !opts.unsafe_no_fsync;
    // History older than 5 minutes is compacted, as the Kubernetes API server asks of etcd
    // (--etcd-compaction-interval=5m); without it every lease renewal is kept forever.
    cfg.compact_retention_age = Some(std::time::Duration::from_secs(300));
    let store = tokio::task::block_in_place(|| Store::open(cfg)).with_context(|| format!("opening the store in {}", store_dir.display()))?;
    apiserver::bootstrap(&store).await.context("creating the system namespaces")?;
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let server = format!("http://{addr}");
    let kc = data_dir.join("kubeconfig");
    let tmp = data_dir.join("kubeconfig.tmp");
    std::fs::write(&tmp, kubeconfig(&server))?;
    std::fs::rename(&tmp, &kc)?;
    let kc_abs = std::fs::canonicalize(&kc).unwrap_or(kc);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = apiserver::router_with_shutdown(store.clone(), stop_rx.clone());
    let mut stop_serving = stop_rx.clone();
    let mut server_task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_serving.wait_for(|s| *s).await;
            })
            .await
    });
    println!("capstan {} is serving the Kubernetes API at {server}", if up.is_some() { "cluster" } else { "API server" });
    println!("  data:       {}", std::fs::canonicalize(&data_dir).unwrap_or(data_dir.clone()).display());
    println!("  kubeconfig: {}", kc_abs.display());
    let mut local = None;
    let mut hollow = None;
    let mut sched = None;
    let mut ctrl = None;
    if let Some((node, hollow_nodes, lease_secs)) = up {
        if !node.no_controllers {
            let settings = controllers::run::Settings {
                node_monitor_grace: std::time::Duration::from_secs(node.node_monitor_grace_seconds.max(1)),
                hpa_sync: std::time::Duration::from_secs(node.hpa_sync_seconds.max(1)),
                ..Default::default()
            };
            ctrl = Some(std::sync::Arc::new(controllers::Controllers::start(&server, settings).await));
        }
        if !node.no_scheduler || ctrl.is_some() {
            let s = if node.no_scheduler { None } else { Some(std::sync::Arc::new(new_scheduler(&server, node.scheduler_config.as_deref())?)) };
            let a = serve_components(&node.scheduler_listen, s.clone(), ctrl.clone()).await?;
            println!("  scheduler:  http://{a}/metrics, http://{a}/debug/scheduler/pods/<namespace>/<name>, http://{a}/debug/pprof/profile?seconds=10 (controllers' metrics at the same /metrics)");
            sched = s;
        }
        if !node.no_local_node {
            let (k, name) = start_local_node(&server, &data_dir, addr.port(), &node).await?;
            println!("  node:       {name} (pods run as local processes; logs in {})", data_dir.join("pods").display());
            local = Some(k);
        }
        if hollow_nodes > 0 {
            let cfg = kubelet::HollowConfig { count: hollow_nodes, lease_renew: std::time::Duration::from_secs(lease_secs.max(1)), ..Default::default() };
            let h = kubelet::HollowNodes::start(&server, cfg).await.context("starting hollow nodes")?;
            println!("  hollow nodes: {hollow_nodes} (hollow-0 .. hollow-{})", hollow_nodes - 1);
            hollow = Some(h);
        }
    }
    println!("try:  export KUBECONFIG={}", kc_abs.display());
    println!("      kubectl get nodes");
    println!("stop with Ctrl-C");
    let early = tokio::select! {
        _ = shutdown_signal() => None,
        r = &mut server_task => Some(r),
    };
    if let Some(r) = early {
        r??;
        return Ok(());
    }
    eprintln!("capstan: shutting down (stopping pods)");
    drop(sched);
    drop(ctrl);
    if let Some(k) = local {
        k.shutdown().await;
    }
    drop(hollow);
    let _ = stop_tx.send(true);
    server_task.await??;
    eprintln!("capstan: stopped");
    drop(store);
    Ok(())
}

fn new_scheduler(server: &str, config: Option<&std::path::Path>) -> Result<scheduler::Scheduler> {
    let profiles = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            scheduler::config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => vec![scheduler::framework::Profile::default()],
    };
    Ok(scheduler::Scheduler::start(server, profiles))
}

/// One listener for the in-process components: `/metrics` (scheduler and controllers), the
/// scheduler's `/debug/scheduler/pods/<ns>/<name>`, and `/debug/pprof/profile` (CPU
/// profiles of the whole process).
async fn serve_components(listen: &str, s: Option<std::sync::Arc<scheduler::Scheduler>>, c: Option<std::sync::Arc<controllers::Controllers>>) -> Result<std::net::SocketAddr> {
    let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("components: listening on {listen}"))?;
    let addr = l.local_addr()?;
    let (s2, c2) = (s.clone(), c.clone());
    let mut app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (s, c) = (s2.clone(), c2.clone());
            async move {
                let mut t = s.map(|s| s.metrics_text()).unwrap_or_default();
                t.push_str(&c.map(|c| c.metrics_text()).unwrap_or_default());
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], t)
            }
        }),
    );
    match &s {
        Some(s) => app = app.merge(s.debug_router()),
        None => app = app.merge(scheduler::cpuprof::router()),
    }
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(addr)
}

async fn start_scheduler(server: &str, listen: &str, config: Option<&std::path::Path>) -> Result<(scheduler::Scheduler, std::net::SocketAddr)> {
    let s = new_scheduler(server, config)?;
    let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("scheduler: listening on {listen}"))?;
    let addr = l.local_addr()?;
    let app = s.router();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok((s, addr))
}

async fn run_controllers(server: String, listen: String, identity: Option<String>) -> Result<()> {
    let me = identity.unwrap_or_else(|| format!("{}_{}", hostname(), std::process::id()));
    let l = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("controllers: listening on {listen}"))?;
    let addr = l.local_addr()?;
    println!("capstan controllers for {server} as {me}: metrics at http://{addr}/metrics; waiting to lead; stop with Ctrl-C");
    let c = kubelet::client::Client::with_agent(&server, "capstan-controllers/0.1");
    tokio::select! {
        _ = controllers::leader::lead(c, "kube-system", "capstan-controller-manager", &me) => {}
        _ = shutdown_signal() => return Ok(()),
    }
    println!("leading: controllers running");
    let ctrl = std::sync::Arc::new(controllers::Controllers::start(&server, Default::default()).await);
    let c2 = ctrl.clone();
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || {
        let c = c2.clone();
        async move { c.metrics_text() }
    }));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    shutdown_signal().await;
    drop(ctrl);
    Ok(())
}

async fn run_scheduler(server: String, listen: String, config: Option<PathBuf>) -> Result<()> {
    let (s, addr) = start_scheduler(&server, &listen, config.as_deref()).await?;
    println!("capstan scheduler for {server}: metrics at http://{addr}/metrics; stop with Ctrl-C");
    shutdown_signal().await;
    drop(s);
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_ascii_lowercase()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "capstan-node".into())
}

async fn start_local_node(server: &str, data_dir: &std::path::Path, api_port: u16, o: &NodeOpts) -> Result<(kubelet::Kubelet, String)> {
    let name = o.node_name.clone().unwrap_or_else(hostname);
    let root = data_dir.join("pods");
    std::fs::create_dir_all(&root)?;
    let spec = kubelet::NodeSpec::local(&name, data_dir);
    let q = |k: &str| spec.capacity.get(k).and_then(|v| v.as_str()).and_then(|s| api::Quantity::parse(s).ok()).unwrap_or_default();
    let mut base_env = vec![
        ("KUBERNETES_SERVICE_HOST".to_string(), "127.0.0.1".to_string()),
        ("KUBERNETES_SERVICE_PORT".to_string(), api_port.to_string()),
    ];
    for k in ["PATH", "HOME", "LANG"] {
        if let Ok(v) = std::env::var(k) {
            base_env.push((k.to_string(), v));
        }
    }
    let cfg = kubelet::process::ProcessConfig {
        node_name: name.clone(),
        root,
        backoff: kubelet::pod::Backoff { base: std::time::Duration::from_secs(o.crash_backoff_seconds.max(1)), ..Default::default() },
        sample_every: std::time::Duration::from_secs(o.usage_sample_seconds.max(1)),
        shutdown_grace_max: std::time::Duration::from_secs(10),
        allocatable: kubelet::pod::Allocatable { cpu_milli: q("cpu").milli, memory: q("memory").units_ceil(), pods: q("pods").units_ceil() },
        host_ip: "127.0.0.1".into(),
        base_env,
    };
    let rt = std::sync::Arc::new(kubelet::process::ProcessRuntime::new(cfg, kubelet::client::Client::new(server)));
    let k = kubelet::Kubelet::start(server, kubelet::KubeletConfig::default(), vec![spec], rt).await.context("starting the local node")?;
    Ok((k, name))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn shard_count(data_dir: &std::path::Path, flag: Option<usize>) -> usize {
    if let Some(n) = flag {
        return n;
    }
    // An existing store keeps its shard count; a new one gets one shard per core.
    match std::fs::read_dir(data_dir.join("wal")) {
        Ok(rd) => rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("shard-")).count().max(1),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

fn show(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn kv(data_dir: PathBuf, shards: Option<usize>, unsafe_no_fsync: bool, op: KvOp) -> Result<()> {
    let mut cfg = Config::new(&data_dir);
    cfg.shards = shard_count(&data_dir, shards);
    cfg.fsync = !unsafe_no_fsync;
    let store = Store::open(cfg).with_context(|| format!("opening the store in {}", data_dir.display()))?;
    match op {
        KvOp::Put { key, value } => {
            let r = store.put(key, value).await?;
            println!("OK revision {}", r.revision);
        }
        KvOp::Get { key, revision } => {
            let mut req = RangeRequest::key(key.clone());
            req.revision = revision;
            let r = store.range(req).await?;
            match r.kvs.first() {
                Some(kv) => println!(
                    "{}\t{}\t(create_revision {}, mod_revision {}, version {})",
                    key,
                    show(&kv.value),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version
                ),
                None => anyhow::bail!("{key} not found at revision {}", r.revision),
            }
        }
        KvOp::Range { prefix, limit, keys_only } => {
            let mut req = RangeRequest::prefix(prefix).limit(limit);
            req.keys_only = keys_only;
            let r = store.range(req).await?;
            for kv in &r.kvs {
                if keys_only {
                    println!("{}", show(&kv.key));
                } else {
                    println!("{}\t{}", show(&kv.key), show(&kv.value));
                }
            }
            eprintln!("{} of {} keys at revision {}{}", r.kvs.len(), r.count, r.revision, if r.more { " (more)" } else { "" });
        }
        KvOp::Del { key, prefix } => {
            let range = if prefix { KeyRange::Prefix(key.into()) } else { KeyRange::Key(key.into()) };
            let r = store.delete(DeleteRequest { range, prev_kv: false }).await?;
            println!("deleted {} at revision {}", r.deleted, r.revision);
        }
        KvOp::Compact { revision } => {
            store.compact(revision).await?;
            println!("compacted to revision {revision}");
        }
        KvOp::Snapshot => {
            let rev = store.snapshot().await?;
            println!("snapshot at revision {rev}");
        }
        KvOp::Stats => {
            let s = store.stats().await;
            println!("revision              {}", s.revision);
            println!("compact revision      {}", s.compact_revision);
            println!("shards                {}", store.shards());
            println!("live keys             {}", s.live_keys);
            println!("indexed keys          {}", s.indexed_keys);
            println!("retained revisions    {}", s.retained_revisions);
            println!("key bytes             {}", s.key_bytes);
            println!("value bytes           {}", s.value_bytes);
            println!("index overhead bytes  {}", s.index_overhead_bytes);
            println!("index bytes per key   {:.1}", s.index_bytes_per_key());
            println!("leases                {}", s.leases);
            println!("log bytes since snap  {}", s.wal_bytes_since_snapshot);
        }
    }
    Ok(())
}
