//! `capstan up` and `capstan apiserver` on one store: the store, the API server and (for `up`)
//! the scheduler, the controllers, a real node and hollow nodes, in this process.

use std::path::PathBuf;

use anyhow::{Context, Result};
use storage::{Config, Store};

use crate::common::{hostname, kubeconfig, serve_api, shard_count, shutdown_signal, write_kubeconfig};
use crate::components::{new_scheduler, serve_components};
use crate::{NodeOpts, ServeOpts};

/// Runs the store and the API server (and, for `up`, the nodes) until SIGINT or SIGTERM,
/// then stops cleanly: pods first (their containers get SIGTERM and their grace period, up
/// to 10 s), then open watches (a last bookmark each), then the store (synced, threads
/// joined when its last handle drops).
pub async fn serve(data_dir: PathBuf, listen: String, opts: ServeOpts, up: Option<(NodeOpts, usize, u64)>) -> Result<()> {
    // Handlers first: a SIGTERM that arrives while the cluster is still starting is kept
    // until it has started, and then stops it gracefully (the node tears its network down),
    // instead of killing the process half-way with the default action.
    let shutdown = shutdown_signal();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    crate::datadir::prepare(&data_dir, crate::datadir::Kind::Single)?;
    let store_dir = data_dir.join("store");
    let mut cfg = Config::new(&store_dir);
    cfg.shards = shard_count(&store_dir, opts.shards);
    cfg.fsync = !opts.unsafe_no_fsync;
    // History older than 5 minutes is compacted, as the Kubernetes API server asks of etcd
    // (--etcd-compaction-interval=5m); without it every lease renewal is kept forever.
    cfg.compact_retention_age = Some(std::time::Duration::from_secs(300));
    cfg.compact_history_bytes_max = Some(crate::common::HISTORY_BYTES_MAX);
    let store = tokio::task::block_in_place(|| Store::open(cfg)).with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let service_cidr = crate::common::service_range(&opts)?;
    apiserver::bootstrap(&store).await.context("creating the system namespaces")?;
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    // Pods with a network of their own reach the API at their gateway (the local node relays
    // it): the serving certificate names that address too.
    let mut names: Vec<String> = up.as_ref().and_then(|(n, _, _)| crate::single::node_pod_cidr(n).ok().flatten()).map(|c| c.nth(1).to_string()).into_iter().collect();
    names.extend(crate::common::api_service_names());
    let sec = crate::common::security(&data_dir, &opts.tls, &addr, &names)?;
    apiserver::system_services::publish_api(&store, addr, true).await.context("publishing the API server in the kubernetes Service")?;
    let server = format!("{}://{addr}", sec.scheme);
    let kc_abs = write_kubeconfig(&data_dir, &kubeconfig(&server, sec.admin.as_ref()))?;
    let ui_hooks = sec.options.ui.clone();
    crate::components::lend_profiler(&ui_hooks);
    let (stop_tx, mut server_task, _in_process) = serve_api(listener, &server, store.clone(), sec.tls, sec.options, sec.limits);
    println!("capstan {} is serving the Kubernetes API at {server}", if up.is_some() { "cluster" } else { "API server" });
    println!("  data:       {}", std::fs::canonicalize(&data_dir).unwrap_or(data_dir.clone()).display());
    println!("  kubeconfig: {}", kc_abs.display());
    println!("  dashboard:  {server}/ui/ (no login through `kubectl proxy`: http://127.0.0.1:8001/ui/)");
    let name = up.as_ref().and_then(|(n, ..)| n.node_name.clone()).unwrap_or_else(hostname);
    let etcd = crate::etcd::start(&opts.etcd, &store, &store_dir, &data_dir, sec.pki.as_ref(), |url| std::sync::Arc::new(etcdapi::SingleMember::new(&name, vec![url.to_string()]))).await?;
    if let Some((url, _)) = &etcd {
        match sec.pki.is_some() {
            true => {
                let pki = std::fs::canonicalize(data_dir.join("pki")).unwrap_or(data_dir.join("pki"));
                println!("  etcd API:   {url} (etcdctl --endpoints {url} --cacert {0}/ca.crt --cert {0}/apiserver-etcd-client.crt --key {0}/apiserver-etcd-client.key)", pki.display());
            }
            false => println!("  etcd API:   {url}"),
        }
    }
    let mut local = None;
    let mut hollow = None;
    let mut sched = None;
    let mut ctrl = None;
    if let Some((node, hollow_nodes, lease_secs)) = up {
        // The nodes first: a kubelet registers without waiting for the controllers, whose
        // start waits for their ServiceAccount tokens.
        if !node.no_local_node {
            let who = sec.pki.as_ref().map_or(NodeCredentials::Process, NodeCredentials::Issue);
            let (k, name) = start_local_node(&server, &data_dir, addr.port(), &node, who, Some(service_cidr)).await?;
            println!("  node:       {name} (pods run as local processes; logs in {})", data_dir.join("pods").display());
            local = Some(k);
        }
        if hollow_nodes > 0 {
            let node_tokens = sec.identities.as_ref().map(|i| i.ca_only.clone());
            let cfg = kubelet::HollowConfig { count: hollow_nodes, lease_renew: std::time::Duration::from_secs(lease_secs.max(1)), node_tokens, ..Default::default() };
            let h = kubelet::HollowNodes::start(&server, cfg).await.context("starting hollow nodes")?;
            println!("  hollow nodes: {hollow_nodes} (hollow-0 .. hollow-{})", hollow_nodes - 1);
            hollow = Some(h);
        }
        if !node.no_controllers {
            let settings = controllers::run::Settings {
                node_monitor_grace: std::time::Duration::from_secs(node.node_monitor_grace_seconds.max(1)),
                hpa_sync: std::time::Duration::from_secs(node.hpa_sync_seconds.max(1)),
                credentials: sec.identities.as_ref().map(|i| i.controller_manager.clone()),
                signer: sec.identities.as_ref().map(|i| controllers::csr::Signer { duration: std::time::Duration::from_secs(node.cluster_signing_duration_seconds.max(1)), ..i.signer.clone() }),
                node_ranges: node_ranges(&node)?,
                ..Default::default()
            };
            ctrl = Some(std::sync::Arc::new(controllers::Controllers::start(&server, settings).await));
            ui_hooks.set_running("controller-manager", true);
        }
        if !node.no_scheduler || ctrl.is_some() {
            let s = if node.no_scheduler { None } else { Some(std::sync::Arc::new(new_scheduler(&server, node.scheduler_config.as_deref(), sec.identities.as_ref().map(|i| &i.scheduler))?)) };
            let (a, scheme) = serve_components(&node.scheduler_listen, s.clone(), ctrl.clone(), sec.pki.as_ref().map(|p| (p, server.as_str()))).await?;
            println!("  scheduler:  {scheme}://{a}/metrics, {scheme}://{a}/debug/scheduler/pods/<namespace>/<name>, {scheme}://{a}/debug/pprof/profile?seconds=10 (controllers' metrics at the same /metrics)");
            crate::components::show_scheduler(&ui_hooks, s.clone());
            sched = s;
        }
    }
    println!("try:  export KUBECONFIG={}", kc_abs.display());
    println!("      kubectl get nodes");
    println!("stop with Ctrl-C");
    let early = tokio::select! {
        _ = shutdown => None,
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
    if let Some((_, e)) = etcd {
        e.stop();
    }
    drop(store);
    Ok(())
}

/// Who a node's kubelet is to the API server.
/// A node's own TLS: the cluster CA (for the kubelet endpoint's client certificates) and
/// the client configuration presenting the node's certificate.
pub struct Given {
    pub ca_pem: String,
    pub tls: client::tls::ClientTls,
}

pub enum NodeCredentials<'a> {
    /// A certificate of the cluster CA issued at this start (`up`).
    Issue(&'a crate::pki::Pki),
    /// A certificate it holds (`node join`), possibly rotating.
    Given(Given),
    /// The process's default credentials (`--insecure-http`).
    Process,
}

/// The cluster's pod range cut into node ranges (`--cluster-cidr`, `--node-cidr-mask-size`).
pub fn node_ranges(o: &NodeOpts) -> Result<Option<controllers::ipam::Ranges>> {
    crate::common::node_ranges(&o.cluster_cidr, o.node_cidr_mask_size)
}

/// The local node's pod range: the first node range (the controllers' node IPAM sees it
/// taken and gives the next ones to nodes that join), or None for `none`.
pub fn node_pod_cidr(o: &NodeOpts) -> Result<Option<kubelet::network::Cidr>> {
    let Some(r) = node_ranges(o)? else { return Ok(None) };
    Ok(Some(r.nth(0).to_string().parse().map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?))
}

/// `--cluster-domain`: a DNS name of labels (lowercased, no trailing dot).
fn cluster_domain(o: &NodeOpts) -> Result<String> {
    let d = o.cluster_domain.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-') && !l.ends_with('-');
    if d.is_empty() || d.len() > 200 || !d.split('.').all(label_ok) {
        anyhow::bail!("--cluster-domain {:?}: not a DNS domain (labels of letters, digits and '-', separated by dots)", o.cluster_domain);
    }
    Ok(d)
}

/// `--dns-upstream`: `IP` (port 53) or `IP:PORT`, comma-separated.
fn dns_upstreams(list: &str) -> Result<Vec<std::net::SocketAddr>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<std::net::SocketAddr>().or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53))).map_err(|_| anyhow::anyhow!("--dns-upstream: {s:?} is not an IP or IP:PORT")))
        .collect()
}

/// With credentials, the node's kubelet runs as `system:node:NAME` in `system:nodes`, so the
/// Node authorizer and NodeRestriction judge it.
pub async fn start_local_node(server: &str, data_dir: &std::path::Path, api_port: u16, o: &NodeOpts, who: NodeCredentials<'_>, service_cidr: Option<kubelet::network::Cidr>) -> Result<(kubelet::Kubelet, String)> {
    let name = o.node_name.clone().unwrap_or_else(hostname);
    // The NetworkPolicy agent's own identity (it reads every pod, which a node may not).
    let policy_client = match &who {
        NodeCredentials::Issue(p) => {
            let creds = p.credentials(&p.client(apiserver::default_roles::NETWORK_POLICY_AGENT, "")?);
            Some(kubelet::client::Client::with_tls(server, "capstan-network-policy/0.1", &client::tls::ClientTls::fixed(&creds).map_err(anyhow::Error::msg)?))
        }
        NodeCredentials::Process => Some(kubelet::client::Client::new(server)),
        NodeCredentials::Given(_) => None,
    };
    let tls = match who {
        NodeCredentials::Issue(p) => {
            let creds = p.credentials(&p.client(&format!("system:node:{name}"), apiserver::node_authz::NODES_GROUP)?);
            Some(Given { ca_pem: creds.ca_pem.clone(), tls: client::tls::ClientTls::fixed(&creds).map_err(anyhow::Error::msg)? })
        }
        NodeCredentials::Given(g) => Some(g),
        NodeCredentials::Process => None,
    };
    let root = data_dir.join("pods");
    std::fs::create_dir_all(&root)?;
    let mut spec = kubelet::NodeSpec::local(&name, data_dir);
    let pod_cidr = node_pod_cidr(o)?;
    spec.pod_cidr = pod_cidr.map(|c| c.to_string());
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
        pod_cidr,
        data_dir: data_dir.to_path_buf(),
        service_cidr,
        cluster_domain: cluster_domain(o)?,
        policy_client,
        dns_upstream: match &o.dns_upstream {
            Some(list) => dns_upstreams(list)?,
            None => kubelet::dns::host_upstreams(service_cidr.map(|s| std::net::IpAddr::V4(s.nth(10))).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))),
        },
    };
    let client = match &tls {
        Some(g) => kubelet::client::Client::with_tls(server, "capstan-kubelet/0.1", &g.tls),
        None => kubelet::client::Client::new(server),
    };
    let rt = std::sync::Arc::new(kubelet::process::ProcessRuntime::new(cfg, client));
    let client_ca = tls.as_ref().map(|g| g.ca_pem.clone());
    let kcfg = kubelet::KubeletConfig { tls: tls.map(|g| g.tls), client_ca, ..Default::default() };
    let k = kubelet::Kubelet::start(server, kcfg, vec![spec], rt).await.context("starting the local node")?;
    Ok((k, name))
}

