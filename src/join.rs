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
}

const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

pub async fn run(a: JoinArgs) -> Result<()> {
    let name = a.node_name.clone().unwrap_or_else(hostname);
    let ca_pem = std::fs::read_to_string(&a.certificate_authority).with_context(|| format!("reading {}", a.certificate_authority.display()))?;
    let pki = a.data_dir.join("pki");
    std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
    let (crt, key) = (pki.join("kubelet.crt"), pki.join("kubelet.key"));
    let (cert_pem, key_pem) = match usable(&crt, &key, &name) {
        Some(pair) => {
            println!("capstan: node {name} uses its certificate {}", crt.display());
            pair
        }
        None => {
            let token = a.token.as_deref().ok_or_else(|| anyhow!("node {name} has no usable certificate in {}: give --token ID.SECRET (a bootstrap token)", pki.display()))?;
            let pair = bootstrap(&a.server, &ca_pem, token, &name, Duration::from_secs(a.approval_timeout_seconds)).await?;
            let issued = crate::pki::Issued { cert_pem: pair.0.clone(), key_pem: pair.1.clone() };
            crate::pki::write_pair(&pki, "kubelet", &issued)?;
            pair
        }
    };
    let credentials = client::tls::Credentials { ca_pem, cert_pem: Some(cert_pem), key_pem: Some(key_pem) };
    let port = a.server.trim_end_matches('/').rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(6443);
    let opts = crate::NodeOpts {
        node_name: Some(name.clone()),
        no_local_node: false,
        no_scheduler: true,
        scheduler_listen: String::new(),
        scheduler_config: None,
        no_controllers: true,
        node_monitor_grace_seconds: 40,
        hpa_sync_seconds: 15,
        crash_backoff_seconds: 10,
        usage_sample_seconds: 5,
    };
    let (k, name) = crate::single::start_local_node(&a.server, &a.data_dir, port, &opts, crate::single::NodeCredentials::Given(credentials)).await?;
    println!("capstan node {name} joined {} as system:node:{name} (pods run as local processes; logs in {}); stop with Ctrl-C", a.server, a.data_dir.join("pods").display());
    shutdown_signal().await;
    eprintln!("capstan: stopping node {name} (its pods first)");
    k.shutdown().await;
    Ok(())
}

/// The certificate and key in `crt` and `key`, if they are this node's and more than a fifth
/// of their life is left.
fn usable(crt: &std::path::Path, key: &std::path::Path, name: &str) -> Option<(String, String)> {
    let (c, k) = (std::fs::read_to_string(crt).ok()?, std::fs::read_to_string(key).ok()?);
    let (_, p) = x509_parser::pem::parse_x509_pem(c.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    let user = apiserver::authn::user_of_certificate(&p.contents).ok()?;
    if user.name != format!("system:node:{name}") {
        return None;
    }
    let (from, to) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    let now = jiff::Timestamp::now().as_second();
    (now < to - (to - from) / 5).then_some((c, k))
}

/// Asks for a client certificate with bootstrap `token` and waits until it is signed:
/// (certificate PEM, key PEM).
async fn bootstrap(server: &str, ca_pem: &str, token: &str, name: &str, wait: Duration) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{name}"));
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    let request = p.serialize_request(&key)?.pem()?;
    // The CA only: a client certificate would authenticate first and the token be ignored.
    let ca_only = client::tls::Credentials { ca_pem: ca_pem.to_string(), cert_pem: None, key_pem: None };
    let c = client::Client::with_credentials(server, "capstan-node-join/0.1", &ca_only)
        .map_err(anyhow::Error::msg)?
        .with_bearer(client::Bearer::new(token).map_err(anyhow::Error::msg)?);
    let body = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(&request), "signerName": SIGNER,
                 "usages": ["digital signature", "key encipherment", "client auth"]},
    });
    let made = c.post("/apis/certificates.k8s.io/v1/certificatesigningrequests", &body).await.map_err(|e| anyhow!("asking {server} for a node certificate with the bootstrap token: {e}"))?;
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
