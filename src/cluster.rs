//! `capstan up --replicas N`: a replicated cluster on this machine. Each replica is its own
//! `capstan server` process (so that one can be killed as a machine would die), on loopback,
//! with its directory `D/replica-I/` and its log `D/replica-I/capstan.log`. The local node and
//! any hollow nodes run in this process, as clients of every replica: they follow whichever
//! answers. The ports chosen the first time are kept in `D/cluster.json` and reused, since
//! the members know each other by URL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::common::{kubeconfig_multi, shutdown_signal, write_kubeconfig};
use crate::single::start_local_node;
use crate::{NodeOpts, ServeOpts};

struct Spec {
    name: String,
    api: String,
    peer: String,
}

fn free_port(host: &str) -> Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

/// The replicas' names and addresses: as recorded, or chosen now (API ports from `--listen`
/// upward, or free ports for port 0; peer ports free).
fn specs(dir: &Path, n: usize, listen: &str) -> Result<Vec<Spec>> {
    let path = dir.join("cluster.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        let rs = v["replicas"].as_array().cloned().unwrap_or_default();
        if rs.len() != n {
            bail!("{} holds a cluster of {} replicas, not {n}", dir.display(), rs.len());
        }
        return Ok(rs
            .iter()
            .map(|r| Spec { name: r["name"].as_str().unwrap_or("").into(), api: r["api"].as_str().unwrap_or("").into(), peer: r["peer"].as_str().unwrap_or("").into() })
            .collect());
    }
    let (host, port) = listen.rsplit_once(':').context("--listen is HOST:PORT")?;
    let port: u16 = port.parse().context("--listen port")?;
    let mut out = Vec::new();
    for i in 0..n {
        let api_port = if port == 0 { free_port(host)? } else { port + i as u16 };
        out.push(Spec { name: format!("r{i}"), api: format!("{host}:{api_port}"), peer: format!("{host}:{}", free_port(host)?) });
    }
    let v = json!({"replicas": out.iter().map(|s| json!({"name": s.name, "api": s.api, "peer": s.peer})).collect::<Vec<_>>()});
    std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
    Ok(out)
}

/// Starts replica `s` and waits for the line that gives its API URL; the rest of its output
/// goes to its log file.
/// The names each replica's serving certificate gets beyond its own address: the `--tls-san`s
/// given, and the local node's pod gateway (its pods reach the API there, the node relaying
/// it to a replica), as `capstan up`'s certificate names it.
fn replica_sans(opts: &ServeOpts, node: &NodeOpts) -> Result<Vec<String>> {
    let gateway = if node.no_local_node { None } else { crate::single::node_pod_cidr(node)?.map(|c| c.nth(1).to_string()) };
    Ok(opts.tls.tls_san.iter().cloned().chain(gateway).collect())
}

fn spawn(exe: &Path, dir: &Path, s: &Spec, i: usize, initial: &str, opts: &ServeOpts, node: &NodeOpts) -> Result<(Child, String, Option<String>)> {
    let rdir = dir.join(format!("replica-{}", &s.name[1..]));
    std::fs::create_dir_all(&rdir)?;
    let log_path = rdir.join("capstan.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(exe);
    cmd.arg("server")
        .args(["--name", &s.name])
        .arg("--data-dir")
        .arg(&rdir)
        .args(["--listen", &s.api, "--peer-listen", &s.peer, "--initial-cluster", initial, "--log-level", &opts.log_level]);
    // Each replica serves the etcd API on its own port: the given port upward, or free ports.
    let etcd = match opts.etcd.etcd_listen.as_deref() {
        Some("none") => "none".to_string(),
        Some(l) => match l.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
            Some((h, Ok(p))) if p != 0 => format!("{h}:{}", p.checked_add(i as u16).with_context(|| format!("--etcd-listen {l}: no port {p} + {i} for replica {i}"))?),
            _ => l.to_string(),
        },
        None => "127.0.0.1:0".to_string(),
    };
    cmd.args(["--etcd-listen", &etcd]);
    cmd.args(["--service-cluster-ip-range", &opts.service_cluster_ip_range]);
    for san in replica_sans(opts, node)? {
        cmd.args(["--tls-san", &san]);
    }
    cmd.args(["--cluster-cidr", &node.cluster_cidr, "--node-cidr-mask-size", &node.node_cidr_mask_size.to_string()]);
    cmd.arg("--etcd-max-request-bytes").arg(opts.etcd.etcd_max_request_bytes.to_string());
    cmd.arg("--etcd-max-txn-ops").arg(opts.etcd.etcd_max_txn_ops.to_string());
    cmd.arg("--etcd-watch-progress-notify-interval-seconds").arg(opts.etcd.etcd_watch_progress_notify_interval_seconds.to_string());
    if opts.unsafe_no_fsync {
        cmd.arg("--unsafe-no-fsync");
    }
    // One signing key for ServiceAccount tokens, so a token works against any replica.
    let sa_key = opts.tls.service_account_signing_key_file.clone().unwrap_or_else(|| crate::pki::sa_key_file(dir));
    cmd.arg("--service-account-signing-key-file").arg(sa_key).arg("--service-account-issuer").arg(&opts.tls.service_account_issuer);
    cmd.arg("--request-timeout").arg(format!("{}ms", opts.tls.request_timeout.as_millis()));
    cmd.arg("--max-requests-inflight").arg(opts.tls.max_requests_inflight.to_string());
    cmd.arg("--max-mutating-requests-inflight").arg(opts.tls.max_mutating_requests_inflight.to_string());
    cmd.arg("--max-connections-per-client").arg(opts.tls.max_connections_per_client.to_string());
    cmd.arg("--idle-connection-timeout").arg(format!("{}ms", opts.tls.idle_connection_timeout.as_millis()));
    // One encryption configuration: every replica applies the same log.
    if let Some(e) = &opts.tls.encryption_provider_config {
        cmd.arg("--encryption-provider-config").arg(e);
    }
    if opts.tls.insecure_http {
        cmd.arg("--insecure-http");
    } else {
        // One cluster, one CA: every replica's serving certificate is signed by it, so the
        // kubeconfig works against any of them.
        let (ca, key) = match (&opts.tls.ca_cert_file, &opts.tls.ca_key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => crate::pki::Pki::files(dir),
        };
        cmd.arg("--ca-cert-file").arg(ca).arg("--ca-key-file").arg(key);
        if let Some(c) = &opts.tls.client_ca_file {
            cmd.arg("--client-ca-file").arg(c);
        }
        if let Some(t) = &opts.tls.token_auth_file {
            cmd.arg("--token-auth-file").arg(t);
        }
        // Each replica audits what it serves, into its own directory.
        if let (Some(p), Some(l)) = (&opts.tls.audit_policy_file, &opts.tls.audit_log_path) {
            cmd.arg("--audit-policy-file").arg(p).arg("--audit-log-path").arg(rdir.join(l.file_name().unwrap_or(std::ffi::OsStr::new("audit.log"))));
            cmd.arg("--audit-log-maxsize").arg(opts.tls.audit_log_maxsize.to_string()).arg("--audit-log-maxbackup").arg(opts.tls.audit_log_maxbackup.to_string());
        }
    }
    if node.no_scheduler {
        cmd.arg("--no-scheduler");
    }
    if node.no_controllers {
        cmd.arg("--no-controllers");
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::from(log.try_clone()?)).stdin(Stdio::null()).spawn().context("starting a replica")?;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = log;
        let (mut sent, mut etcd_sent) = (false, false);
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !sent && let Some(url) = line.split("serving the Kubernetes API at ").nth(1) {
                let _ = tx.send((false, url.trim().to_string()));
                sent = true;
            }
            if !etcd_sent && let Some(url) = line.split("etcd API:").nth(1) {
                let _ = tx.send((true, url.trim().to_string()));
                etcd_sent = true;
            }
            let _ = std::io::Write::write_all(&mut log, format!("{line}\n").as_bytes());
        }
    });
    let url = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok((_, url)) => url,
        Err(_) => {
            let _ = child.kill();
            bail!("replica {} did not start within 60 s; see {}", s.name, log_path.display())
        }
    };
    // The etcd line follows at once when the API is served.
    let etcd_url = if etcd == "none" { None } else { rx.recv_timeout(Duration::from_secs(10)).ok().map(|(_, u)| u) };
    Ok((child, url, etcd_url))
}

pub async fn up(n: usize, data_dir: PathBuf, listen: String, opts: ServeOpts, node: NodeOpts, hollow_nodes: usize, lease_secs: u64) -> Result<()> {
    if n == 0 || n > 9 {
        bail!("--replicas must be 1 to 9, got {n}");
    }
    if opts.shards.is_some_and(|s| s != 1) {
        bail!("a replica's store has one shard (apply is serial in raft's log order)");
    }
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    crate::datadir::prepare(&data_dir, crate::datadir::Kind::Cluster)?;
    let specs = specs(&data_dir, n, &listen)?;
    // The cluster CA (made here on the first start) and this process's credentials, before
    // the replicas start with it.
    crate::pki::service_account_keys(&data_dir, &opts.tls)?;
    let pki = if opts.tls.insecure_http { None } else { Some(crate::pki::Pki::load_or_create(&data_dir, &opts.tls)?) };
    let admin = if let Some(pki) = &pki {
        let own = pki.client("system:capstan-components", "system:masters")?;
        client::tls::set_default(&pki.credentials(&own)).map_err(anyhow::Error::msg)?;
        let a = pki.client("kubernetes-admin", "system:masters")?;
        Some(crate::common::KubeUser { ca_pem: pki.ca_pem.clone(), cert_pem: a.cert_pem, key_pem: a.key_pem })
    } else {
        None
    };
    // Over TLS the replicas talk mutual TLS (`crate::peer_tls`); `capstan member` presents
    // the member certificate written here.
    let peer_scheme = if pki.is_some() { "https" } else { "http" };
    let member_flags = match &pki {
        Some(p) => {
            let (cert, key) = crate::pki::write_pair(&data_dir.join("pki"), "member", &p.member_client()?)?;
            // etcdctl's certificate for the replicas' etcd endpoints (`crate::etcd`).
            crate::pki::write_pair(&data_dir.join("pki"), "apiserver-etcd-client", &p.client("kube-apiserver-etcd-client", "system:masters")?)?;
            format!(" --cacert {} --cert {} --key {}", data_dir.join("pki").join("ca.crt").display(), cert.display(), key.display())
        }
        None => String::new(),
    };
    let initial: Vec<String> = specs.iter().map(|s| format!("{}={peer_scheme}://{}", s.name, s.peer)).collect();
    let initial = initial.join(",");
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut apis = Vec::new();
    let mut etcds = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let (child, url, etcd) = spawn(&exe, &data_dir, s, i, &initial, &opts, &node)?;
        apis.push((s.name.clone(), url));
        etcds.extend(etcd);
        children.push(child);
    }
    let kc = write_kubeconfig(&data_dir, &kubeconfig_multi(&apis, admin.as_ref()))?;
    let all_apis = apis.iter().map(|(_, u)| u.clone()).collect::<Vec<_>>().join(",");
    println!("capstan cluster of {n} replicas is serving the Kubernetes API at:");
    for ((s, (_, url)), c) in specs.iter().zip(&apis).zip(&children) {
        println!("  {}: {url}  (peer {peer_scheme}://{}, pid {}, log {})", s.name, s.peer, c.id(), data_dir.join(format!("replica-{}", &s.name[1..])).join("capstan.log").display());
    }
    println!("  data:       {}", std::fs::canonicalize(&data_dir).unwrap_or(data_dir.clone()).display());
    println!("  kubeconfig: {} (one context per replica; {} is current)", kc.display(), specs[0].name);
    println!("  members:    capstan member list --endpoints {}{member_flags}", specs.iter().map(|s| format!("{peer_scheme}://{}", s.peer)).collect::<Vec<_>>().join(","));
    if !etcds.is_empty() {
        let pki_dir = std::fs::canonicalize(data_dir.join("pki")).unwrap_or(data_dir.join("pki"));
        let creds = if pki.is_some() { format!(" --cacert {0}/ca.crt --cert {0}/apiserver-etcd-client.crt --key {0}/apiserver-etcd-client.key", pki_dir.display()) } else { String::new() };
        println!("  etcd API:   etcdctl --endpoints {}{creds}", etcds.join(","));
    }
    // Wait until the cluster answers (a leader, the namespaces) before starting nodes.
    let client = kubelet::client::Client::new(&all_apis);
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get("/api/v1/namespaces/kube-node-lease").await.is_err() {
        if Instant::now() > deadline {
            bail!("the replicas did not form a cluster within 60 s; see their logs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut local = None;
    let mut hollow = None;
    if !node.no_local_node {
        let port: u16 = apis[0].1.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(6443);
        let who = pki.as_ref().map_or(crate::single::NodeCredentials::Process, crate::single::NodeCredentials::Issue);
        let (k, name) = start_local_node(&all_apis, &data_dir, port, &node, who, opts.service_cluster_ip_range.parse().ok()).await?;
        println!("  node:       {name} (pods run as local processes; logs in {}; follows every replica)", data_dir.join("pods").display());
        local = Some(k);
    }
    if hollow_nodes > 0 {
        let node_tokens = pki.as_ref().map(|p| client::tls::Credentials { ca_pem: p.ca_pem.clone(), cert_pem: None, key_pem: None });
        let cfg = kubelet::HollowConfig { count: hollow_nodes, lease_renew: Duration::from_secs(lease_secs.max(1)), node_tokens, ..Default::default() };
        hollow = Some(kubelet::HollowNodes::start(&all_apis, cfg).await.context("starting hollow nodes")?);
        println!("  hollow nodes: {hollow_nodes} (hollow-0 .. hollow-{})", hollow_nodes - 1);
    }
    println!("try:  export KUBECONFIG={}", kc.display());
    println!("      kubectl get nodes; kubectl --context r1 get nodes");
    println!("stop with Ctrl-C");
    shutdown_signal().await;
    eprintln!("capstan: shutting down (stopping pods, then the replicas)");
    if let Some(k) = local {
        k.shutdown().await;
    }
    drop(hollow);
    for c in &children {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for (mut c, s) in children.into_iter().zip(&specs) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {
                    eprintln!("capstan: replica {} did not stop within 20 s; killing it", s.name);
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
            }
        }
    }
    eprintln!("capstan: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Up {
        #[command(flatten)]
        node: NodeOpts,
        #[command(flatten)]
        opts: ServeOpts,
    }

    #[test]
    fn replicas_certificates_name_the_local_nodes_pod_gateway() {
        let sans = |args: &[&str]| {
            let u = Up::parse_from(std::iter::once("up").chain(args.iter().copied()));
            replica_sans(&u.opts, &u.node).unwrap()
        };
        assert_eq!(sans(&[]), ["10.244.0.1"]);
        assert_eq!(sans(&["--tls-san", "api.example.test", "--cluster-cidr", "10.50.0.0/16"]), ["api.example.test", "10.50.0.1"]);
        assert!(sans(&["--no-local-node"]).is_empty());
    }
}
