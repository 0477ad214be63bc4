//! `capstan`: the one binary. `up` runs the cluster in one process (today: the store and the
//! API server), `apiserver` runs the API server on an embedded store, `kv` drives the store
//! directly. Later issues add the scheduler, controllers and kubelets.

use std::path::PathBuf;

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
    /// Run a whole cluster in this process (today: store + API server + hollow nodes) and
    /// write a kubeconfig.
    Up {
        #[arg(long, default_value = "./capstan-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: String,
        /// Hollow nodes (no processes: pods bound to them go Running) to run in this process.
        #[arg(long, default_value_t = 0)]
        hollow_nodes: usize,
        #[command(flatten)]
        opts: ServeOpts,
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
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Kv { data_dir, shards, unsafe_no_fsync, op } => rt.block_on(kv(data_dir, shards, unsafe_no_fsync, op)),
        Command::Up { data_dir, listen, hollow_nodes, opts } => rt.block_on(serve(data_dir, listen, opts, true, hollow_nodes)),
        Command::Apiserver { data_dir, listen, opts } => rt.block_on(serve(data_dir, listen, opts, false, 0)),
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

/// Runs the store and the API server until SIGINT or SIGTERM, then stops cleanly (the store
/// syncs and its threads end when the last handle drops).
async fn serve(data_dir: PathBuf, listen: String, opts: ServeOpts, up: bool, hollow_nodes: usize) -> Result<()> {
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let store_dir = data_dir.join("store");
    let mut cfg = Config::new(&store_dir);
    cfg.shards = shard_count(&store_dir, opts.shards);
    cfg.fsync = !opts.unsafe_no_fsync;
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
    println!("capstan {} is serving the Kubernetes API at {server}", if up { "cluster" } else { "API server" });
    println!("  data:       {}", std::fs::canonicalize(&data_dir).unwrap_or(data_dir.clone()).display());
    println!("  kubeconfig: {}", kc_abs.display());
    println!("try:  export KUBECONFIG={}", kc_abs.display());
    println!("      kubectl get namespaces");
    println!("stop with Ctrl-C");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = apiserver::router_with_shutdown(store.clone(), stop_rx);
    let server_task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                // Open watches end with a bookmark instead of holding the shutdown open.
                let _ = stop_tx.send(true);
            })
            .await
    });
    let hollow = if hollow_nodes > 0 {
        let cfg = kubelet::HollowConfig { count: hollow_nodes, ..Default::default() };
        let h = kubelet::HollowNodes::start(&server, cfg).await.context("starting hollow nodes")?;
        println!("  hollow nodes: {hollow_nodes} (hollow-0 .. hollow-{})", hollow_nodes - 1);
        Some(h)
    } else {
        None
    };
    server_task.await??;
    drop(hollow);
    eprintln!("capstan: shutting down");
    drop(store);
    Ok(())
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
