//! `capstan node join`: a real node on another machine joins a cluster by kubeadm's TLS
//! bootstrap. With a bootstrap token (`ID.SECRET`, whose Secret in `kube-system` carries
//! `auth-extra-groups: system:bootstrappers:kubeadm:default-node-token`) and the cluster's CA
//! certificate, it makes a key and asks for a client certificate `system:node:NAME` in
//! `system:nodes` through a CertificateSigningRequest to the
//! `kubernetes.io/kube-apiserver-client-kubelet` signer. The controllers approve it (that
//! group is bound to the auto-approval role, as kubeadm binds it) and sign it with the
//! cluster CA; the node keeps the certificate and its key in `D/pki/kubelet.{crt,key}` and runs
//! with them, judged by the Node authorizer like any kubelet. A later start reuses the
//! certificate while a fifth of its life is left; past that (or with none) it asks again,
//! which needs `--token`.
//!
//! While it runs, the node rotates its certificate as the kubelet does
//! (`--rotate-certificates`): at a random point between 70% and 90% of the certificate's
//! life it asks for a new one with a fresh key, authenticated by the current certificate
//! (approved as `selfnodeclient`), keeps the pair in one file (`D/pki/kubelet-client-current.pem`,
//! certificate then key, replaced by one rename so a crash leaves the old pair or the new one,
//! never a mix) and presents it on every new connection (`client::tls::RotatingCert`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::json;

use crate::common::{hostname, shutdown_signal};

#[derive(clap::Args)]
pub struct JoinArgs {
    /// The API server (https://HOST:PORT).
    #[arg(long)]
    server: String,
    /// A bootstrap token, `ID.SECRET` (needed when the node has no certificate yet).
    #[arg(long)]
    token: Option<String>,
    /// The cluster's CA certificate (the control plane's `D/pki/ca.crt`).
    #[arg(long)]
    certificate_authority: PathBuf,
    /// Where the node keeps its certificate, pods and logs.
    #[arg(long, default_value = "./capstan-node")]
    data_dir: PathBuf,
    /// The node's name (default: this machine's hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// How long to wait for the certificate to be approved and signed.
    #[arg(long, default_value_t = 600)]
    approval_timeout_seconds: u64,
    /// How long to wait for the cluster's node IPAM to give the node its pod range
    /// (`spec.podCIDR`); without one by then (or with 0) its pods share its network.
    #[arg(long, default_value_t = 60)]
    pod_cidr_wait_seconds: u64,
    /// The cluster's Service range, as the API server was given it: the node's proxy and
    /// cluster DNS serve it (`none`: neither runs).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// The cluster's DNS domain (kubelet's `--cluster-domain`).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

pub async fn run(a: JoinArgs) -> Result<()> {
    let name = a.node_name.clone().unwrap_or_else(hostname);
    let ca_pem = std::fs::read_to_string(&a.certificate_authority).with_context(|| format!("reading {}", a.certificate_authority.display()))?;
    let pki = a.data_dir.join("pki");
    std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
    let current = pki.join(CURRENT);
    // A node joined before rotation kept its pair in two files: taken over once.
    let (old_crt, old_key) = (pki.join("kubelet.crt"), pki.join("kubelet.key"));
    if !current.exists()
        && let (Ok(c), Ok(k)) = (std::fs::read_to_string(&old_crt), std::fs::read_to_string(&old_key))
    {
        crate::pki::write_private(&current, &format!("{c}{k}"))?;
    }
    let wait = Duration::from_secs(a.approval_timeout_seconds);
    let (cert_pem, key_pem) = match usable(&current, &name) {
        Some(pair) => {
            println!("capstan: node {name} uses its certificate {}", current.display());
            pair
        }
        None => {
            let token = a.token.as_deref().ok_or_else(|| anyhow!("node {name} has no usable certificate in {}: give --token ID.SECRET (a bootstrap token)", pki.display()))?;
            // The CA only: a client certificate would authenticate first and the token be ignored.
            let ca_only = client::tls::Credentials { ca_pem: ca_pem.clone(), cert_pem: None, key_pem: None };
            let c = client::Client::with_credentials(&a.server, "capstan-node-join/0.1", &ca_only)
                .map_err(anyhow::Error::msg)?
                .with_bearer(client::Bearer::new(token).map_err(anyhow::Error::msg)?);
            let pair = request_certificate(&c, &name, wait).await.map_err(|e| anyhow!("asking {} for a node certificate with the bootstrap token: {e}", a.server))?;
            crate::pki::write_private(&current, &format!("{}{}", pair.0, pair.1))?;
            pair
        }
    };
    let tls = client::tls::ClientTls::with_rotating_cert(&ca_pem, &cert_pem, &key_pem).map_err(|e| anyhow!("{}: {e}", current.display()))?;
    let credentials = crate::single::Given { ca_pem, tls: tls.clone() };
    let port = a.server.trim_end_matches('/').rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(6443);
    let service_cidr: Option<kubelet::network::Cidr> = match a.service_cluster_ip_range.as_str() {
        "none" | "" => None,
        r => Some(r.parse().map_err(|e| anyhow!("--service-cluster-ip-range: {e}"))?),
    };
    let me = client::Client::with_tls(&a.server, "capstan-kubelet/0.1", &tls);
    let pod_cidr = pod_range(&me, &name, Duration::from_secs(a.pod_cidr_wait_seconds)).await?;
    if pod_cidr.is_none() {
        eprintln!("capstan: node {name} has no pod range: its pods share its network (is the controller manager running with --cluster-cidr?)");
    }
    let opts = crate::NodeOpts {
        node_name: Some(name.clone()),
        no_local_node: false,
        no_scheduler: true,
        scheduler_listen: String::new(),
        scheduler_config: None,
        no_controllers: true,
        node_monitor_grace_seconds: 40,
        hpa_sync_seconds: 15,
        cluster_signing_duration_seconds: 365 * 24 * 3600,
        crash_backoff_seconds: 10,
        usage_sample_seconds: 5,
        // The range the cluster's node IPAM gave, whole.
        cluster_cidr: pod_cidr.unwrap_or_else(|| "none".into()),
        node_cidr_mask_size: 0,
        cluster_domain: a.cluster_domain.clone(),
        dns_upstream: None,
    };
    let (k, name) = crate::single::start_local_node(&a.server, &a.data_dir, port, &opts, crate::single::NodeCredentials::Given(credentials), service_cidr).await?;
    println!("capstan node {name} joined {} as system:node:{name} (pods run as local processes; logs in {}); stop with Ctrl-C", a.server, a.data_dir.join("pods").display());
    let handle = tls.rotating().expect("a rotating certificate").clone();
    let rotation = tokio::spawn(rotate(client::Client::with_tls(&a.server, "capstan-kubelet/0.1", &tls), handle, current, name.clone(), cert_pem, wait));
    shutdown_signal().await;
    rotation.abort();
    eprintln!("capstan: stopping node {name} (its pods first)");
    k.shutdown().await;
    Ok(())
}

/// The node's pod range, as the cluster's node IPAM gives it: the Node is registered bare
/// (the kubelet fills it in when it starts) and read until its `spec.podCIDR` is set, for at
/// most `wait` (None then, as with a zero wait).
async fn pod_range(c: &client::Client, name: &str, wait: Duration) -> Result<Option<String>> {
    if wait.is_zero() {
        return Ok(None);
    }
    let path = format!("/api/v1/nodes/{name}");
    let bare = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
    match c.post("/api/v1/nodes", &bare).await {
        Ok(_) | Err(client::ClientError::Status { code: 409, .. }) => {}
        Err(e) => bail!("registering node {name}: {e}"),
    }
    let deadline = Instant::now() + wait;
    loop {
        match c.get(&path).await {
            Ok(n) => {
                if let Some(r) = n["spec"]["podCIDR"].as_str().filter(|r| !r.is_empty()) {
                    return Ok(Some(r.to_string()));
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the node for its pod range"),
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The file of the node's current certificate and key.
const CURRENT: &str = "kubelet-client-current.pem";

/// The certificate and key in `path` (certificate first), if they are this node's, match,
/// and more than a fifth of their life is left.
fn usable(path: &std::path::Path, name: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let at = text.find("-----BEGIN PRIVATE KEY-----").or_else(|| text.find("-----BEGIN EC PRIVATE KEY-----")).or_else(|| text.find("-----BEGIN RSA PRIVATE KEY-----"))?;
    let (c, k) = (text[..at].to_string(), text[at..].to_string());
    let (_, p) = x509_parser::pem::parse_x509_pem(c.as_bytes()).ok()?;
    let user = apiserver::authn::user_of_certificate(&p.contents).ok()?;
    if user.name != format!("system:node:{name}") {
        return None;
    }
    // The key is the certificate's (a file written by hand could pair them wrongly).
    client::tls::RotatingCert::check_pair(&c, &k).ok()?;
    let (from, to) = validity(&c)?;
    (jiff::Timestamp::now().as_second() < to - (to - from) / 5).then_some((c, k))
}

/// A certificate's notBefore and notAfter, in Unix seconds.
fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    Some((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// When to rotate a certificate valid from `from` to `to`: at `jitter` (in [0, 1)) of the
/// way from 70% to 90% of its life, as the kubelet's certificate manager picks it.
fn rotation_deadline(from: i64, to: i64, jitter: f64) -> i64 {
    let permille = 700 + (200.0 * jitter.clamp(0.0, 1.0)).round() as i64;
    from + (to - from) * permille / 1000
}

/// Rotates the node's certificate forever: waits for the deadline, asks with the current
/// certificate, keeps and presents the new pair. A failed request is retried after 10 s,
/// doubling up to an hour (each try is a new request object: an unapproved node must not
/// flood the cluster with them); the current certificate works until it expires, then the
/// node's requests fail with 401 until a rotation succeeds, as a kubelet's do.
async fn rotate(c: client::Client, handle: std::sync::Arc<client::tls::RotatingCert>, path: PathBuf, name: String, mut cert_pem: String, wait: Duration) {
    loop {
        let Some((from, to)) = validity(&cert_pem) else {
            tracing::error!("the node's certificate cannot be read; it will not be rotated");
            return;
        };
        let jitter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) as f64 / 1e9;
        let at = rotation_deadline(from, to, jitter);
        let now = jiff::Timestamp::now().as_second();
        if at > now {
            tokio::time::sleep(Duration::from_secs((at - now) as u64)).await;
        }
        let mut backoff = Duration::from_secs(10);
        loop {
            match request_certificate(&c, &name, wait).await {
                Ok((new_cert, new_key)) => {
                    if let Err(e) = crate::pki::write_private(&path, &format!("{new_cert}{new_key}")) {
                        tracing::warn!(error = %e, "keeping the rotated certificate failed; presenting it anyway");
                    }
                    if let Err(e) = handle.replace(&new_cert, &new_key) {
                        tracing::error!(error = %e, "the rotated certificate cannot be presented");
                        return;
                    }
                    let until = validity(&new_cert).and_then(|(_, t)| jiff::Timestamp::from_second(t).ok()).map(|t| t.to_string()).unwrap_or_default();
                    println!("capstan: node {name} rotated its client certificate; the new one is valid until {until}");
                    cert_pem = new_cert;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "rotating the node's certificate failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(3600));
                }
            }
        }
    }
}

/// Asks for a client certificate `system:node:NAME` with a fresh key, as `c` authenticates
/// (a bootstrap token, or the node's current certificate), and waits until it is signed:
/// (certificate PEM, key PEM).
async fn request_certificate(c: &client::Client, name: &str, wait: Duration) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{name}"));
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    let request = p.serialize_request(&key)?.pem()?;
    let body = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(&request), "signerName": SIGNER,
                 "usages": ["digital signature", "key encipherment", "client auth"]},
    });
    let made = c.post("/apis/certificates.k8s.io/v1/certificatesigningrequests", &body).await.map_err(|e| anyhow!("{e}"))?;
    let csr = made["metadata"]["name"].as_str().unwrap_or("").to_string();
    println!("capstan: asked for a certificate for system:node:{name} ({csr}); waiting for it to be approved and signed (an administrator can: kubectl certificate approve {csr})");
    let path = format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{csr}");
    let deadline = Instant::now() + wait;
    loop {
        match c.get(&path).await {
            Ok(o) => {
                if let Some(cond) = o["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Denied" || c["type"] == "Failed") {
                    bail!("{csr} was {}: {}", cond["type"].as_str().unwrap_or(""), cond["message"].as_str().unwrap_or(""));
                }
                if let Some(b) = o["status"]["certificate"].as_str().filter(|b| !b.is_empty()) {
                    let pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b)?).context("the issued certificate")?;
                    println!("capstan: {csr} approved and signed");
                    return Ok((pem, key.serialize_pem()));
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading {csr} failed; retrying"),
        }
        if Instant::now() > deadline {
            bail!("{csr} was not approved and signed within {} s (kubectl certificate approve {csr}, then join again)", wait.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_falls_between_70_and_90_percent_of_the_life() {
        assert_eq!(rotation_deadline(1000, 2000, 0.0), 1700);
        assert_eq!(rotation_deadline(1000, 2000, 0.5), 1800);
        assert_eq!(rotation_deadline(1000, 2000, 1.0), 1900);
        assert_eq!(rotation_deadline(1000, 2000, 7.0), 1900, "jitter past 1 is clamped");
    }
}
