//! Small things every subcommand uses: the kubeconfig it writes, the host's name, the
//! shutdown signal, and the store's shard count.

use std::path::Path;

use anyhow::{Context, Result};

/// The store's history is compacted at five minutes, as kube-apiserver compacts etcd, and
/// whenever it holds more than this many bytes of overwritten and deleted values: on a big
/// cluster five minutes of pod updates is gigabytes (etcd's whole default quota is 2 GiB).
pub const HISTORY_BYTES_MAX: u64 = 512 << 20;

/// The kubeconfig's user: the admin's client certificate and the CA, or nothing (a server
/// on `--insecure-http`).
pub struct KubeUser {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn cluster_entry(url: &str, user: Option<&KubeUser>) -> String {
    match user {
        Some(u) => format!("    server: {url}\n    certificate-authority-data: {}\n", b64(&u.ca_pem)),
        None => format!("    server: {url}\n"),
    }
}

fn user_entry(user: Option<&KubeUser>) -> String {
    match user {
        Some(u) => format!("  user:\n    client-certificate-data: {}\n    client-key-data: {}\n", b64(&u.cert_pem), b64(&u.key_pem)),
        None => "  user: {}\n".into(),
    }
}

pub fn kubeconfig(server: &str, user: Option<&KubeUser>) -> String {
    kubeconfig_multi_named(&[("capstan".to_string(), server.to_string())], user, true)
}

/// A kubeconfig with one context per API server (the replicas of one cluster), the first
/// current.
pub fn kubeconfig_multi(servers: &[(String, String)], user: Option<&KubeUser>) -> String {
    kubeconfig_multi_named(servers, user, false)
}

fn kubeconfig_multi_named(servers: &[(String, String)], user: Option<&KubeUser>, single: bool) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    let cluster = |name: &str| if single { name.to_string() } else { format!("capstan-{name}") };
    for (name, url) in servers {
        s += &format!("- name: {}\n  cluster:\n{}", cluster(name), cluster_entry(url, user));
    }
    s += "contexts:\n";
    for (name, _) in servers {
        s += &format!("- name: {name}\n  context:\n    cluster: {}\n    user: capstan\n    namespace: default\n", cluster(name));
    }
    s += &format!("current-context: {}\nusers:\n- name: capstan\n{}", servers.first().map_or("", |(n, _)| n.as_str()), user_entry(user));
    s
}

/// Writes `D/kubeconfig` whole (temporary file, rename), returning its absolute path.
pub fn write_kubeconfig(data_dir: &Path, text: &str) -> Result<std::path::PathBuf> {
    let kc = data_dir.join("kubeconfig");
    let tmp = data_dir.join("kubeconfig.tmp");
    // It holds the admin's private key: readable by its owner only.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &kc)?;
    Ok(std::fs::canonicalize(&kc).unwrap_or(kc))
}

/// The Kubernetes API on `listener` (over TLS when `tls` is given, with clients identified by
/// their certificates; plain HTTP and no authentication when not), until `true` is sent on
/// the returned channel (then it finishes what it is serving and the task ends). While the
/// returned offer is held, this process's clients of `base` (the listener's URL) reach the
/// same router through calls instead of loopback connections (`client::local`).
pub fn serve_api(
    listener: tokio::net::TcpListener,
    base: &str,
    store: storage::Store,
    tls: Option<apiserver::serve::Tls>,
    options: apiserver::Options,
    limits: apiserver::serve::Limits,
) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<std::io::Result<()>>, client::local::Offer) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = apiserver::router_with_shutdown(store, stop_rx.clone(), options);
    let in_process = apiserver::in_process::InProcess::new(app.clone(), tls.as_ref().map(|t| t.client_ca.clone()));
    let offer = client::local::offer(base, std::sync::Arc::new(in_process));
    let mut stop_serving = stop_rx;
    let stopped = async move {
        let _ = stop_serving.wait_for(|s| *s).await;
    };
    let task = tokio::spawn(apiserver::serve::serve(listener, app, tls, limits, stopped));
    (stop_tx, task, offer)
}

/// The API's security, decided at start: with TLS (the default), the cluster's PKI, the
/// listener's TLS, the kubeconfig's admin user, and the credentials this process's own
/// components use (set as the client's default); with `--insecure-http`, none of it.
pub struct Security {
    pub scheme: &'static str,
    pub tls: Option<apiserver::serve::Tls>,
    pub admin: Option<KubeUser>,
    /// How the API serves (authentication, audit, ServiceAccount keys, request timeout).
    pub options: apiserver::Options,
    pub limits: apiserver::serve::Limits,
    /// The cluster's CA, to issue components their own certificates (none over plain HTTP).
    pub pki: Option<crate::pki::Pki>,
    /// The in-process components' own identities (none over plain HTTP, where nothing is
    /// authenticated).
    pub identities: Option<crate::pki::Identities>,
}

fn limits(opts: &crate::TlsOpts) -> apiserver::serve::Limits {
    apiserver::serve::Limits { max_connections_per_client: opts.max_connections_per_client.max(1), idle_timeout: opts.idle_connection_timeout, ..Default::default() }
}

/// The auditor `--audit-policy-file` and `--audit-log-path` ask for (both or neither).
fn auditor(opts: &crate::TlsOpts) -> Result<Option<std::sync::Arc<apiserver::audit::Auditor>>> {
    let (policy, path) = match (&opts.audit_policy_file, &opts.audit_log_path) {
        (None, None) => return Ok(None),
        (Some(p), Some(l)) => (p, l),
        _ => anyhow::bail!("--audit-policy-file and --audit-log-path go together"),
    };
    let text = std::fs::read_to_string(policy).with_context(|| format!("reading the audit policy {}", policy.display()))?;
    let parsed = apiserver::audit::Policy::parse(&text).map_err(|e| anyhow::anyhow!("the audit policy {}: {e}", policy.display()))?;
    let cfg = apiserver::audit::LogConfig { path: path.clone(), max_bytes: opts.audit_log_maxsize.max(1) << 20, max_backups: opts.audit_log_maxbackup };
    let a = apiserver::audit::Auditor::start(parsed, cfg).with_context(|| format!("opening the audit log {}", path.display()))?;
    Ok(Some(a))
}

/// Installs `--encryption-provider-config` (process-wide, before the API serves).
fn encryption(opts: &crate::TlsOpts) -> Result<()> {
    let Some(f) = &opts.encryption_provider_config else { return Ok(()) };
    let text = std::fs::read_to_string(f).with_context(|| format!("reading the encryption configuration {}", f.display()))?;
    let cfg = apiserver::encryption::Config::parse(&text).map_err(|e| anyhow::anyhow!("the encryption configuration {}: {e}", f.display()))?;
    apiserver::encryption::install(cfg).map_err(anyhow::Error::msg)?;
    tracing::info!(file = %f.display(), "encryption at rest configured");
    Ok(())
}

/// Sets the Service range from `--service-cluster-ip-range` (once, before the API serves).
pub fn service_range(opts: &crate::ServeOpts) -> Result<kubelet::network::Cidr> {
    let c: kubelet::network::Cidr = opts.service_cluster_ip_range.parse().map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?;
    apiserver::reserve::configure_service_range(c.base, c.bits).map_err(anyhow::Error::msg)?;
    Ok(c)
}

/// The names pods know the API server by: the `kubernetes` Service's address and DNS names
/// (Kubernetes' serving certificate has them too).
pub fn api_service_names() -> Vec<String> {
    let (ip, _) = apiserver::system_services::addresses();
    let mut v = vec![ip.to_string()];
    v.extend(["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"].map(String::from));
    v
}

/// `extra_hosts`: more names for the serving certificate (the address pods on the local
/// node reach the API at).
pub fn security(data_dir: &Path, opts: &crate::TlsOpts, addr: &std::net::SocketAddr, extra_hosts: &[String]) -> Result<Security> {
    encryption(opts)?;
    if opts.insecure_http && opts.token_auth_file.is_some() {
        anyhow::bail!("--token-auth-file needs TLS: with --insecure-http nothing is authenticated");
    }
    if opts.insecure_http {
        tracing::warn!("!!! --insecure-http: the API is served over plain HTTP WITHOUT authentication; anyone who can reach {addr} is cluster-admin. For benchmarks on loopback only !!!");
        eprintln!("capstan: WARNING: --insecure-http: plain HTTP, no authentication (anyone who can reach {addr} is cluster-admin)");
        let sa_keys = Some(crate::pki::service_account_keys(data_dir, opts)?);
        let options = apiserver::Options { authn: apiserver::authn::Mode::Insecure, audit: auditor(opts)?, sa_keys, request_timeout: opts.request_timeout, apf_seats: opts.max_requests_inflight + opts.max_mutating_requests_inflight, ui: Default::default() };
        return Ok(Security { scheme: "http", tls: None, admin: None, options, limits: limits(opts), pki: None, identities: None });
    }
    for san in &opts.tls_san {
        let dns = !san.is_empty() && san.len() <= 253 && san.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*'));
        if san.parse::<std::net::IpAddr>().is_err() && !dns {
            anyhow::bail!("--tls-san {san:?}: not an IP address or a DNS name");
        }
    }
    let pki = crate::pki::Pki::load_or_create(data_dir, opts)?;
    let mut hosts = crate::pki::hosts_for(addr);
    hosts.extend(extra_hosts.iter().cloned());
    hosts.extend(opts.tls_san.iter().cloned());
    let mut tls = pki.listener(&hosts)?;
    if let Some(f) = &opts.token_auth_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?;
        let tokens = apiserver::authn::StaticTokens::parse(&text).map_err(|e| anyhow::anyhow!("the token file {}: {e}", f.display()))?;
        tracing::info!(file = %f.display(), tokens = tokens.len(), "bearer tokens from a static token file");
        tls.tokens = std::sync::Arc::new(tokens);
    }
    let admin = pki.client("kubernetes-admin", "system:masters")?;
    let own = pki.client("system:capstan-components", "system:masters")?;
    client::tls::set_default(&pki.credentials(&own)).map_err(anyhow::Error::msg)?;
    let sa_keys = Some(crate::pki::service_account_keys(data_dir, opts)?);
    let options = apiserver::Options { authn: apiserver::authn::Mode::Tls { tokens: tls.tokens.clone() }, audit: auditor(opts)?, sa_keys, request_timeout: opts.request_timeout, apf_seats: opts.max_requests_inflight + opts.max_mutating_requests_inflight, ui: Default::default() };
    let identities = Some(pki.identities()?);
    // The API server's client certificate to kubelets (kubeadm's name and group).
    let kubelet_client = pki.client("kube-apiserver-kubelet-client", "system:masters")?;
    apiserver::node_proxy::use_client_certificate(&kubelet_client.cert_pem, &kubelet_client.key_pem).map_err(anyhow::Error::msg)?;
    // The client certificate to aggregated API servers (kubeadm's front-proxy-client), of the
    // cluster CA, which `extension-apiserver-authentication` tells them to trust for it.
    let front_proxy = pki.client(apiserver::aggregator::FRONT_PROXY_CN, "")?;
    apiserver::aggregator::use_front_proxy(&pki.ca_pem, &front_proxy.cert_pem, &front_proxy.key_pem).map_err(anyhow::Error::msg)?;
    Ok(Security { scheme: "https", tls: Some(tls), options, limits: limits(opts), admin: Some(KubeUser { ca_pem: pki.ca_pem.clone(), cert_pem: admin.cert_pem, key_pem: admin.key_pem }), pki: Some(pki), identities })
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_ascii_lowercase()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "capstan-node".into())
}

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C) after it is called: the handlers are
/// registered by the call, not when the future is first polled. Make one for the process and
/// keep it: once tokio handles a signal its default action is gone, so a signal that arrives
/// while no handler future exists (between two calls in a loop) is lost and the process no
/// longer stops on it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

pub fn shard_count(data_dir: &std::path::Path, flag: Option<usize>) -> usize {
    if let Some(n) = flag {
        return n;
    }
    // An existing store keeps its shard count; a new one gets one shard per core.
    match std::fs::read_dir(data_dir.join("wal")) {
        Ok(rd) => rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("shard-")).count().max(1),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}


/// `--cluster-cidr` cut into node ranges of `--node-cidr-mask-size`, or None for `none`. A
/// cluster range no wider than a node's is one node range.
pub fn node_ranges(cluster_cidr: &str, node_mask: u8) -> Result<Option<controllers::ipam::Ranges>> {
    match cluster_cidr {
        "none" | "" => Ok(None),
        c => {
            let cluster: controllers::ipam::Net = c.parse().map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?;
            Ok(Some(controllers::ipam::Ranges::new(c, node_mask.max(cluster.bits)).map_err(|e| anyhow::anyhow!("--cluster-cidr {c}: {e}"))?))
        }
    }
}
