//! `capstan`: the one binary. `up` runs the cluster in one process (the store, the API
//! server, the scheduler, the controllers, a real node running pods as local processes, and
//! any number of hollow nodes), or with `--replicas N` as N replica processes; `server` runs one
//! replica of a replicated cluster; `member` changes its membership; `apiserver` runs the API
//! server on an embedded store; `scheduler` and `controllers` run those alone; `kv` drives the
//! store directly. One file per subcommand's job: `single.rs`, `server.rs`, `cluster.rs`,
//! `member.rs`, `components.rs`, `kv.rs`; `datadir.rs` versions the data directory.

mod cluster;
mod common;
mod components;
mod etcd;
mod migrate;
mod snapshot;
mod datadir;
mod join;
mod kv;
mod simulate;
mod member;
mod peer_tls;
mod pki;
mod server;
mod single;

use std::path::PathBuf;

/// glibc's malloc was a third of the CPU profile of the steady-state API write path (5,000
/// hollow nodes renewing leases: _int_malloc, _int_free, malloc_consolidate); mimalloc's
/// per-thread free lists avoid that. Measured in bench/RESULTS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
        /// Run the control plane as this many replica processes (`capstan server`) on loopback,
        /// replicated with raft; the nodes run in this process and follow whichever replica
        /// answers. Without it: one process, one store.
        #[arg(long)]
        replicas: Option<usize>,
        #[command(flatten)]
        node: NodeOpts,
        #[command(flatten)]
        opts: ServeOpts,
    },
    /// Run one replica of a replicated cluster: its store member (raft), an API server with its
    /// own watch cache, and, while it holds their leases, the scheduler and the controllers.
    Server(server::ServerArgs),
    /// List or change the members of a replicated cluster.
    Member(member::MemberArgs),
    /// Run a node of an existing cluster (`join`: get its certificate with a bootstrap token).
    Node {
        #[command(subcommand)]
        op: NodeCmd,
    },
    /// Run the scheduler against an API server.
    #[command(args_conflicts_with_subcommands = true)]
    Scheduler {
        /// `snapshot` or `simulate`; without one, the scheduler runs.
        #[command(subcommand)]
        op: Option<simulate::SchedulerOp>,
        /// The API server (default: the kubeconfig's, else http://127.0.0.1:6443).
        #[arg(long)]
        server: Option<String>,
        /// The kubeconfig whose current context gives the server and the credentials.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Where /metrics and /debug/scheduler/pods/<ns>/<name> are served: HTTPS (a
        /// self-signed certificate) for callers the API server authorizes, when the kubeconfig
        /// has a CA; /healthz open.
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
        /// The API server (default: the kubeconfig's, else http://127.0.0.1:6443).
        #[arg(long)]
        server: Option<String>,
        /// The kubeconfig whose current context gives the server and the credentials.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Where /metrics is served: HTTPS for callers the API server authorizes, when the
        /// kubeconfig has a CA; /healthz open.
        #[arg(long, default_value = "127.0.0.1:10257")]
        listen: String,
        /// This candidate's identity in the leader election (default: hostname + pid).
        #[arg(long)]
        identity: Option<String>,
        /// The cluster's pod range, of which each node gets a share (kube-controller-manager's
        /// `--allocate-node-cidrs --cluster-cidr`; default `none`: no node gets one).
        #[arg(long, default_value = "none")]
        cluster_cidr: String,
        /// The size of each node's share of `--cluster-cidr`.
        #[arg(long, default_value_t = 24)]
        node_cidr_mask_size: u8,
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
    /// Make a new data directory from a real etcd's keys, read at one revision.
    Migrate(migrate::MigrateArgs),
    /// Back up a running capstan's store and restore it into a new data directory.
    Snapshot {
        #[command(subcommand)]
        op: snapshot::SnapshotCmd,
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
pub struct ServeOpts {
    /// Store shards (threads); must match what the data directory was created with.
    #[arg(long)]
    shards: Option<usize>,
    /// Acknowledge writes before they are durable. Loses data on a crash.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Log level of the request log and everything else (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    log_level: String,
    #[command(flatten)]
    tls: TlsOpts,
    #[command(flatten)]
    etcd: etcd::EtcdOpts,
    /// The range Service cluster IPs come from (Kubernetes' --service-cluster-ip-range; its
    /// first address is the `kubernetes` Service's). The local node routes it to nothing but
    /// its Service proxy.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
}

/// TLS and client certificates of the API. By default the API is served over TLS with a
/// certificate from the cluster CA (made in the data dir on first start), and the kubeconfig
/// carries the CA and an admin client certificate.
#[derive(clap::Args, Clone, Default)]
pub struct TlsOpts {
    /// Serve plain HTTP with no authentication: every request is cluster-admin. For
    /// benchmarks on loopback only.
    #[arg(long)]
    pub insecure_http: bool,
    /// Another address or DNS name the serving certificate names (repeatable), besides the
    /// listen address and the `kubernetes` Service's names (kubeadm's
    /// --apiserver-cert-extra-sans).
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_san: Vec<String>,
    /// Use this CA (PEM) instead of making one in the data dir; needs --ca-key-file.
    #[arg(long)]
    pub ca_cert_file: Option<PathBuf>,
    /// The key (PEM) of --ca-cert-file.
    #[arg(long)]
    pub ca_key_file: Option<PathBuf>,
    /// Also trust client certificates of this CA bundle (PEM); the cluster CA stays trusted.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// The key (PKCS#8 PEM, ECDSA P-256) ServiceAccount tokens are signed with, instead of
    /// one made in the data dir (`D/pki/sa.key`).
    #[arg(long)]
    pub service_account_signing_key_file: Option<PathBuf>,
    /// The `iss` of ServiceAccount tokens, and the one accepted.
    #[arg(long, default_value = apiserver::sa_token::DEFAULT_ISSUER)]
    pub service_account_issuer: String,
    /// Serve this certificate (PEM, chain) instead of one issued by the CA; needs
    /// --tls-private-key-file.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// The key (PEM) of --tls-cert-file.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Bearer tokens, as Kubernetes' static token file: CSV lines of
    /// `token,user,uid[,"group1,group2"]`.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// An audit policy (Kubernetes' `audit.k8s.io/v1` Policy); needs --audit-log-path.
    #[arg(long)]
    pub audit_policy_file: Option<PathBuf>,
    /// Where audit events are written, one JSON line each.
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// Rotate the audit log past this many megabytes.
    #[arg(long, default_value_t = 100)]
    pub audit_log_maxsize: u64,
    /// Rotated audit logs kept (0: all).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxbackup: usize,
    /// What a request that is not a watch or a stream may take before it is answered 504
    /// (a Go duration: `60s`, `2m`).
    #[arg(long, default_value = "60s", value_parser = go_duration)]
    pub request_timeout: std::time::Duration,
    /// Seats for read-only requests; with --max-mutating-requests-inflight, the seats API
    /// Priority and Fairness shares among priority levels (Kubernetes' defaults: 400 + 200).
    #[arg(long, default_value_t = 400)]
    pub max_requests_inflight: usize,
    /// Seats for mutating requests (added to --max-requests-inflight).
    #[arg(long, default_value_t = 200)]
    pub max_mutating_requests_inflight: usize,
    /// Connections one client address may hold open; more are closed at accept.
    #[arg(long, default_value_t = 4096)]
    pub max_connections_per_client: usize,
    /// A connection with no request in flight for this long is closed (a Go duration).
    #[arg(long, default_value = "90s", value_parser = go_duration)]
    pub idle_connection_timeout: std::time::Duration,
    /// Encrypt resources at rest as this EncryptionConfiguration
    /// (`apiserver.config.k8s.io/v1`: aesgcm, aescbc, secretbox, identity) says.
    #[arg(long)]
    pub encryption_provider_config: Option<PathBuf>,
}

/// The real node `capstan up` runs (pods as local processes).
#[derive(clap::Args, Clone)]
pub struct NodeOpts {
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
    /// The longest life of a certificate the controllers sign (Kubernetes'
    /// `--cluster-signing-duration`: a year).
    #[arg(long, default_value_t = 365 * 24 * 3600)]
    cluster_signing_duration_seconds: u64,
    /// First CrashLoopBackOff delay in seconds (Kubernetes: 10; doubles up to 300).
    #[arg(long, default_value_t = 10)]
    crash_backoff_seconds: u64,
    /// How often container CPU and memory are sampled (kubectl top, memory limits).
    #[arg(long, default_value_t = 5)]
    usage_sample_seconds: u64,
    /// The cluster's pod range (kubeadm's default): the local node's pods get network
    /// namespaces of their own with addresses from its first /24; `none`: pods share the
    /// node's network.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The size of each node's share of `--cluster-cidr` (kube-controller-manager's
    /// `--node-cidr-mask-size`): the controllers give every node that joins one.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// The cluster's DNS domain (kubelet's `--cluster-domain`).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Where the node's cluster DNS asks about names outside the cluster's domain:
    /// comma-separated IP or IP:PORT (default: this host's /etc/resolv.conf name servers).
    #[arg(long)]
    dns_upstream: Option<String>,
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Join a cluster by TLS bootstrap, then run this machine as its node.
    Join(join::JoinArgs),
}

#[derive(Subcommand)]
pub enum KvOp {
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
    // Freed pages kept 60 s before they go back to the OS (why: loadgen/src/allocator.rs).
    loadgen::allocator::configure();
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Up { opts, .. } | Command::Apiserver { opts, .. } => opts.log_level.clone(),
        Command::Server(a) => a.log_level.clone(),
        Command::Kv { .. } | Command::Member(_) | Command::Snapshot { .. } | Command::Migrate(_) => "warn".into(),
        Command::Node { .. } => "info".into(),
        Command::Scheduler { log_level, .. } | Command::Controllers { log_level, .. } => log_level.clone(),
    };
    // openraft narrates every election and stream at info; a replica's log keeps its warnings.
    let level = if level == "info" { "info,openraft=warn".to_string() } else { level };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .init();
    // I/O polled every few tasks (why: loadgen/src/runtime.rs).
    let rt = loadgen::runtime::multi_thread().enable_all().build()?;
    match cli.command {
        Command::Kv { data_dir, shards, unsafe_no_fsync, op } => rt.block_on(kv::kv(data_dir, shards, unsafe_no_fsync, op)),
        Command::Snapshot { op } => rt.block_on(snapshot::run(op)),
        Command::Migrate(a) => rt.block_on(migrate::run(a)),
        Command::Up { data_dir, listen, hollow_nodes, hollow_lease_renew_seconds, replicas: Some(n), node, opts } => {
            rt.block_on(cluster::up(n, data_dir, listen, opts, node, hollow_nodes, hollow_lease_renew_seconds))
        }
        Command::Up { data_dir, listen, hollow_nodes, hollow_lease_renew_seconds, replicas: None, node, opts } => {
            rt.block_on(single::serve(data_dir, listen, opts, Some((node, hollow_nodes, hollow_lease_renew_seconds))))
        }
        Command::Apiserver { data_dir, listen, opts } => rt.block_on(single::serve(data_dir, listen, opts, None)),
        Command::Server(a) => rt.block_on(server::run(a)),
        Command::Member(a) => rt.block_on(member::run(a)),
        Command::Node { op: NodeCmd::Join(a) } => rt.block_on(join::run(a)),
        Command::Scheduler { op: Some(simulate::SchedulerOp::Simulate(a)), .. } => simulate::simulate(a),
        Command::Scheduler { op: Some(simulate::SchedulerOp::Snapshot { server, kubeconfig }), .. } => {
            let (server, creds) = api_server(server, kubeconfig)?;
            let c = match creds {
                Some(cr) => client::Client::with_credentials(&server, "capstan-scheduler-snapshot/0.1", &cr).map_err(anyhow::Error::msg)?,
                None => client::Client::with_agent(&server, "capstan-scheduler-snapshot/0.1"),
            };
            rt.block_on(simulate::snapshot(c))
        }
        Command::Scheduler { op: None, server, kubeconfig, listen, config, .. } => {
            let (server, creds) = api_server(server, kubeconfig)?;
            rt.block_on(components::run_scheduler(server, listen, config, creds))
        }
        Command::Controllers { server, kubeconfig, listen, identity, cluster_cidr, node_cidr_mask_size, .. } => {
            let (server, creds) = api_server(server, kubeconfig)?;
            let ranges = common::node_ranges(&cluster_cidr, node_cidr_mask_size)?;
            rt.block_on(components::run_controllers(server, listen, identity, creds, ranges))
        }
    }
}

/// The API server a component talks to, and (from a kubeconfig) the credentials it presents,
/// set as this process's default (and returned).
fn api_server(server: Option<String>, kubeconfig: Option<PathBuf>) -> Result<(String, Option<client::tls::Credentials>)> {
    let kc = kubeconfig.as_ref().map(|k| client::kubeconfig::load(k, None).map_err(anyhow::Error::msg)).transpose()?;
    let creds = kc.as_ref().and_then(|k| k.credentials.clone());
    if let Some(creds) = &creds {
        client::tls::set_default(creds).map_err(anyhow::Error::msg)?;
    }
    Ok((server.or(kc.map(|k| k.server)).unwrap_or_else(|| "http://127.0.0.1:6443".into()), creds))
}

/// A Go duration flag (`60s`, `1m30s`), as Kubernetes' flags take them.
fn go_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = apiserver::deadline::parse_go_duration(s).map_err(|_| format!("{s:?} is not a duration (say 60s, 2m or 1h30m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}
