//! `capstan server`: one replica of a replicated cluster, in etcd's style of flags. Its store
//! is a raft member (`raft::replica`); its API server serves the whole Kubernetes API from its
//! own watch cache (writes go to the leader through raft, reads wait for a read index); and
//! it runs the scheduler and the controllers while it holds their leases (one replica at a
//! time runs each, as kube-scheduler and kube-controller-manager elect a leader).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use raft::replica::{InitialState, Replica, ReplicaConfig};

use crate::common::{kubeconfig, serve_api, shutdown_signal, write_kubeconfig};
use crate::components::new_scheduler;

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// This member's name (unique in the cluster; its id is derived from it).
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub tls: crate::TlsOpts,
    #[command(flatten)]
    pub etcd: crate::etcd::EtcdOpts,
    /// The range Service cluster IPs come from (Kubernetes' --service-cluster-ip-range).
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: String,
    /// The cluster's pod range: the elected controllers give each node a share of it
    /// (`none`: nodes get none, and their pods share their network).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// The size of each node's share of `--cluster-cidr`.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    #[arg(long, default_value = "./capstan-data")]
    pub data_dir: PathBuf,
    /// Where the Kubernetes API is served.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: String,
    /// Where the other replicas reach this one.
    #[arg(long, default_value = "127.0.0.1:2380")]
    pub peer_listen: String,
    /// The peer URL the others use for this member (default: http:// + --peer-listen).
    #[arg(long)]
    pub advertise_peer_url: Option<String>,
    /// Every initial member: NAME=http://HOST:PORT,... (this member among them).
    #[arg(long)]
    pub initial_cluster: String,
    /// `new`: the initial members start a cluster together; `existing`: this member joins a
    /// cluster that has added it (`capstan member add`).
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Distinguishes clusters started from the same member list.
    #[arg(long, default_value = "capstan")]
    pub initial_cluster_token: String,
    /// Acknowledge writes before they are durable. Loses data on a crash.
    #[arg(long)]
    pub unsafe_no_fsync: bool,
    /// Run no scheduler in this replica.
    #[arg(long)]
    pub no_scheduler: bool,
    /// Run no controllers in this replica.
    #[arg(long)]
    pub no_controllers: bool,
    /// Raft: heartbeat interval and election timeout range, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    #[arg(long, default_value_t = 300)]
    pub election_timeout_min_ms: u64,
    #[arg(long, default_value_t = 600)]
    pub election_timeout_max_ms: u64,
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Creates the system namespaces once a quorum exists (every replica tries; the first wins).
async fn bootstrap(store: &storage::Store, api: std::net::SocketAddr) -> Result<()> {
    let mut waited = Duration::ZERO;
    loop {
        let step = async {
            apiserver::bootstrap(store).await?;
            apiserver::system_services::publish_api(store, api, false).await
        };
        match step.await {
            Ok(()) => return Ok(()),
            Err(storage::StoreError::NoQuorum(_) | storage::StoreError::Unavailable(_)) => {
                if waited.as_secs() % 10 == 0 && !waited.is_zero() {
                    eprintln!("capstan: waiting for a quorum of the cluster's members ({}s)", waited.as_secs());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                waited += Duration::from_millis(200);
            }
            Err(e) => return Err(e).context("creating the system namespaces"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Part {
    Scheduler,
    Controllers,
}

/// The leases the scheduler and the controllers are elected by, in `kube-system` (Kubernetes'
/// names, which its default roles let the two components hold).
pub const SCHEDULER_LEASE: &str = "kube-scheduler";
pub const CONTROLLERS_LEASE: &str = "kube-controller-manager";

/// Runs the scheduler (or the controllers) in this replica whenever it holds their lease, as
/// its own identity when `ids` are given.
fn elected(api: String, part: Part, identity: String, ids: Option<crate::pki::Identities>, ranges: Option<controllers::ipam::Ranges>, ui: apiserver::dashboard::Hooks) -> tokio::task::JoinHandle<()> {
    let lease = match part {
        Part::Scheduler => SCHEDULER_LEASE,
        Part::Controllers => CONTROLLERS_LEASE,
    };
    tokio::spawn(async move {
        loop {
            let own = ids.as_ref().map(|i| match part {
                Part::Scheduler => &i.scheduler,
                Part::Controllers => &i.controller_manager,
            });
            let c = match own.map(|creds| kubelet::client::Client::with_credentials(&api, "capstan-server-election/0.1", creds)) {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "the component's credentials are unusable");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                None => kubelet::client::Client::with_agent(&api, "capstan-server-election/0.1"),
            };
            let mut leading = controllers::leader::campaign(c, "kube-system", lease, &identity).await;
            let running: Box<dyn std::any::Any + Send> = match part {
                Part::Controllers => {
                    let settings = controllers::run::Settings {
                        credentials: ids.as_ref().map(|i| i.controller_manager.clone()),
                        signer: ids.as_ref().map(|i| i.signer.clone()),
                        node_ranges: ranges,
                        ..Default::default()
                    };
                    let c = controllers::Controllers::start(&api, settings).await;
                    ui.set_running("controller-manager", true);
                    Box::new(c)
                }
                Part::Scheduler => match new_scheduler(&api, None, ids.as_ref().map(|i| &i.scheduler)) {
                    Ok(s) => {
                        let s = std::sync::Arc::new(s);
                        crate::components::show_scheduler(&ui, Some(s.clone()));
                        Box::new(s)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "starting the scheduler failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            println!("capstan: this replica now runs the {part:?} (it holds the {lease} lease)");
            leading.lost().await;
            match part {
                Part::Scheduler => crate::components::show_scheduler(&ui, None),
                Part::Controllers => ui.set_running("controller-manager", false),
            }
            drop(running);
            println!("capstan: this replica lost the {lease} lease and stopped the {part:?}");
        }
    })
}

pub async fn run(a: ServerArgs) -> Result<()> {
    crate::datadir::prepare(&a.data_dir, crate::datadir::Kind::Replica)?;
    let initial = raft::cluster::parse_initial_cluster(&a.initial_cluster).map_err(anyhow::Error::msg)?;
    let state = if a.initial_cluster_state == "existing" { InitialState::Existing } else { InitialState::New };
    if a.election_timeout_min_ms >= a.election_timeout_max_ms || a.heartbeat_ms >= a.election_timeout_min_ms {
        bail!("need --heartbeat-ms < --election-timeout-min-ms < --election-timeout-max-ms");
    }
    let api_listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
    let api_addr = api_listener.local_addr()?;
    let range: kubelet::network::Cidr = a.service_cluster_ip_range.parse().map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?;
    let ranges = crate::common::node_ranges(&a.cluster_cidr, a.node_cidr_mask_size)?;
    apiserver::reserve::configure_service_range(range.base, range.bits).map_err(anyhow::Error::msg)?;
    let sec = crate::common::security(&a.data_dir, &a.tls, &api_addr, &crate::common::api_service_names())?;
    let api_url = format!("{}://{api_addr}", sec.scheme);
    let peer_listener = tokio::net::TcpListener::bind(&a.peer_listen).await.with_context(|| format!("listening for peers on {}", a.peer_listen))?;
    let peer_addr = peer_listener.local_addr()?;
    let mut cfg = ReplicaConfig::new(&a.name, &a.data_dir, initial);
    let peer_scheme = if sec.pki.is_some() { "https" } else { "http" };
    cfg.peer_url = a.advertise_peer_url.clone().unwrap_or_else(|| format!("{peer_scheme}://{peer_addr}"));
    // Mutual TLS between replicas whenever the API is on TLS (`crate::peer_tls`).
    if let Some(pki) = &sec.pki {
        let mut hosts = crate::pki::hosts_for(&peer_addr);
        if let Some(h) = a.advertise_peer_url.as_deref().map(raft::network::authority).and_then(|a| a.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string())) {
            hosts.push(h);
        }
        let peer = pki.peer(&a.name, &hosts)?;
        let (server, client) = crate::peer_tls::configs(&pki.ca_pem, &peer.cert_pem, &peer.key_pem)?;
        cfg.peer_tls = Some(server);
        cfg.connector = std::sync::Arc::new(raft::network::TlsConnector { config: client });
    }
    cfg.api_url = api_url.clone();
    cfg.initial_state = state;
    cfg.cluster_token = a.initial_cluster_token.clone();
    cfg.fsync = !a.unsafe_no_fsync;
    cfg.heartbeat = Duration::from_millis(a.heartbeat_ms);
    cfg.election_timeout = (Duration::from_millis(a.election_timeout_min_ms), Duration::from_millis(a.election_timeout_max_ms));
    // History older than 5 minutes is compacted (the leader proposes it), as the Kubernetes API
    // server asks of etcd (--etcd-compaction-interval=5m).
    cfg.store.compact_retention_age = Some(Duration::from_secs(300));
    cfg.store.compact_history_bytes_max = Some(crate::common::HISTORY_BYTES_MAX);
    if a.unsafe_no_fsync {
        tracing::warn!("!!! --unsafe-no-fsync: this replica acknowledges writes BEFORE they are durable !!!");
    }
    // One handler for the whole run (see `shutdown_signal`).
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let replica = Replica::start_on(cfg, peer_listener).await.with_context(|| format!("starting replica {}", a.name))?;
    let store = replica.store.clone();
    let ui_hooks = sec.options.ui.clone();
    crate::components::lend_profiler(&ui_hooks);
    ui_hooks.set_replication(std::sync::Arc::new(replica.status_source()));
    let (stop_tx, mut server_task, _in_process) = serve_api(api_listener, &api_url, store.clone(), sec.tls, sec.options, sec.limits);
    let kc = write_kubeconfig(&a.data_dir, &kubeconfig(&api_url, sec.admin.as_ref()))?;
    println!("capstan replica {} is serving the Kubernetes API at {api_url}", a.name);
    println!("  peer:       {}  (cluster {:016x}, member {:016x})", replica.status()["members"].as_array().and_then(|m| m.iter().find(|x| x["name"] == a.name.as_str())).and_then(|m| m["peerURL"].as_str()).unwrap_or(&format!("{peer_scheme}://{peer_addr}")), replica.cluster_id(), replica.id());
    println!("  status:     {peer_scheme}://{peer_addr}/raft/status");
    println!("  data:       {}", std::fs::canonicalize(&a.data_dir).unwrap_or(a.data_dir.clone()).display());
    println!("  kubeconfig: {}", kc.display());
    println!("  dashboard:  {api_url}/ui/");
    let membership = |url: &str| -> std::sync::Arc<dyn etcdapi::Membership> { std::sync::Arc::new(crate::etcd::RaftMembership { raft: replica.raft().clone(), handle: replica.membership_handle(), id: replica.id(), cluster: replica.cluster_id(), url: url.to_string() }) };
    let etcd = crate::etcd::start(&a.etcd, &store, &a.data_dir.join("store"), &a.data_dir, sec.pki.as_ref(), membership).await?;
    if let Some((url, _)) = &etcd {
        println!("  etcd API:   {url}");
        replica.advertise_client_url(url);
    }
    println!("stop with Ctrl-C (a leader hands leadership over first)");
    let mut stopping = false;
    let bootstrapped = tokio::select! {
        r = bootstrap(&store, api_addr) => r,
        _ = &mut shutdown => {
            stopping = true;
            Ok(())
        }
    };
    bootstrapped?;
    let identity = format!("{}_{}", a.name, std::process::id());
    let mut elections = Vec::new();
    if !a.no_controllers {
        elections.push(elected(api_url.clone(), Part::Controllers, identity.clone(), sec.identities.clone(), ranges, ui_hooks.clone()));
    }
    if !a.no_scheduler {
        elections.push(elected(api_url.clone(), Part::Scheduler, identity, sec.identities.clone(), None, ui_hooks.clone()));
    }
    let mut removed_check = tokio::time::interval(Duration::from_millis(500));
    let early = loop {
        if stopping {
            break None;
        }
        tokio::select! {
            _ = &mut shutdown => break None,
            r = &mut server_task => break Some(r),
            _ = removed_check.tick() => {
                if replica.removed() {
                    eprintln!("capstan: member {} was removed from the cluster; it stops serving", a.name);
                    break None;
                }
                if let Some(why) = replica.failed() {
                    eprintln!("capstan: replica {}'s raft stopped ({why}); exiting so that a restart checks the log and catches up", a.name);
                    break None;
                }
            }
        }
    };
    for e in &elections {
        e.abort();
    }
    drop(elections);
    if let Some(r) = early {
        r??;
        return Ok(());
    }
    eprintln!("capstan: shutting down replica {}", a.name);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), server_task).await;
    let was_removed = replica.removed();
    let failed = replica.failed();
    if let Some((_, e)) = etcd {
        e.stop();
    }
    drop(store);
    replica.shutdown().await;
    eprintln!("capstan: stopped");
    if was_removed {
        bail!("this member was removed from the cluster");
    }
    if let Some(why) = failed {
        bail!("raft stopped: {why}");
    }
    Ok(())
}
