//! The cluster's certificates. A CA is made on the first start (`D/pki/ca.crt`, `ca.key`) and
//! reused after, or given (`--ca-cert-file`, `--ca-key-file`: how the replicas of one cluster
//! share one CA). From it, at every start: the API server's serving certificate (SANs for
//! every address it answers on), the admin's client certificate for the kubeconfig
//! (`CN=kubernetes-admin, O=system:masters`), and one for the components this process runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsOpts;

/// How long the certificates issued at a start last (they are issued again at every start).
const LEAF_DAYS: i64 = 365;
const CA_DAYS: i64 = 3650;

pub struct Pki {
    pub ca_pem: String,
    /// The CA's key, for the controllers' certificate signer (in this process only).
    ca_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// `--client-ca-file`: trusted for client certificates as well as the cluster CA. The
    /// cluster CA stays trusted because it signs what this process's own components and the
    /// admin kubeconfig present; a certificate from neither is refused (401).
    client_ca_pem: Option<String>,
    /// `--tls-cert-file` and `--tls-private-key-file`: served instead of an issued certificate.
    serving: Option<(String, String)>,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

impl Pki {
    /// The CA of `opts`, or the one in `data_dir/pki`, made there if there is none.
    pub fn load_or_create(data_dir: &Path, opts: &TlsOpts) -> Result<Pki> {
        let (ca_pem, key_pem) = match (&opts.ca_cert_file, &opts.ca_key_file) {
            (Some(c), Some(k)) => (read(c)?, read(k)?),
            (None, None) => {
                let dir = data_dir.join("pki");
                let (c, k) = (dir.join("ca.crt"), dir.join("ca.key"));
                if c.exists() && k.exists() {
                    (read(&c)?, read(&k)?)
                } else {
                    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                    let (cert, key) = new_ca()?;
                    write_private(&k, &key)?;
                    write_private(&c, &cert)?;
                    eprintln!("capstan: made a cluster CA in {}", dir.display());
                    (cert, key)
                }
            }
            _ => bail!("--ca-cert-file and --ca-key-file go together"),
        };
        let key = KeyPair::from_pem(&key_pem).context("the CA's key")?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).context("the CA's certificate")?;
        let client_ca_pem = opts.client_ca_file.as_deref().map(read).transpose()?;
        let serving = match (&opts.tls_cert_file, &opts.tls_private_key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => bail!("--tls-cert-file and --tls-private-key-file go together"),
        };
        Ok(Pki { ca_pem, ca_key_pem: key_pem, issuer, client_ca_pem, serving })
    }

    /// A client certificate for `user` in `group` (none when empty), signed by the CA. (One
    /// group: rcgen writes one value per attribute type.)
    pub fn client(&self, user: &str, group: &str) -> Result<Issued> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, user);
        if !group.is_empty() {
            p.distinguished_name.push(DnType::OrganizationName, group);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }

    /// A replica's peer certificate: `CN=system:capstan-peer:NAME` in the peers' group, for
    /// serving and dialing (mutual TLS), `hosts` as its SANs (`crate::peer_tls`).
    pub fn peer(&self, name: &str, hosts: &[String]) -> Result<Issued> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, format!("system:capstan-peer:{name}"));
        p.distinguished_name.push(DnType::OrganizationName, crate::peer_tls::PEERS_GROUP);
        p.subject_alt_names = sans(hosts)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }

    /// A serving certificate for the components' metrics and profiling port (`hosts` as its
    /// SANs), always of the cluster CA (not `--tls-cert-file`, the API's).
    pub fn components_serving(&self, hosts: &[String]) -> Result<Issued> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, "capstan-components");
        p.subject_alt_names = sans(hosts)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(p)
    }

    /// A client certificate in the peers' group, for `capstan member`.
    pub fn member_client(&self) -> Result<Issued> {
        self.client("capstan-member", crate::peer_tls::PEERS_GROUP)
    }

    /// The serving certificate: `hosts` (names and IP addresses) as its SANs.
    fn serving(&self, hosts: &[String]) -> Result<Issued> {
        if let Some((c, k)) = &self.serving {
            return Ok(Issued { cert_pem: c.clone(), key_pem: k.clone() });
        }
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, "capstan-apiserver");
        p.subject_alt_names = sans(hosts)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(p)
    }

    fn issue(&self, mut p: CertificateParams) -> Result<Issued> {
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + days(LEAF_DAYS);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// What the API's TLS listener needs, its certificate naming `hosts`.
    pub fn listener(&self, hosts: &[String]) -> Result<apiserver::serve::Tls> {
        let issued = self.serving(hosts)?;
        let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().context("the serving certificate")?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).context("the serving key")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.context("the cluster CA")?).context("the cluster CA")?;
        }
        if let Some(bundle) = &self.client_ca_pem {
            let before = roots.len();
            for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
                roots.add(c.context("--client-ca-file")?).context("--client-ca-file")?;
            }
            if roots.len() == before {
                bail!("--client-ca-file holds no certificate");
            }
        }
        let ca = Arc::new(apiserver::authn::ClientCa::new(roots).map_err(anyhow::Error::msg)?);
        let mut config = rustls::ServerConfig::builder().with_client_cert_verifier(ca.handshake_verifier()).with_single_cert(chain, key).context("the serving certificate and key")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(apiserver::serve::Tls { config: Arc::new(config), client_ca: ca, tokens: apiserver::authn::StaticTokens::none() })
    }

    /// The etcd endpoint's TLS: a serving certificate of the cluster CA naming `hosts`, and
    /// a client certificate of the cluster CA required of every connection.
    pub fn etcd_listener(&self, hosts: &[String]) -> Result<Arc<rustls::ServerConfig>> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, "capstan-etcd");
        p.subject_alt_names = sans(hosts)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issued = self.issue(p)?;
        let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().context("the etcd serving certificate")?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).context("the etcd serving key")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.context("the cluster CA")?).context("the cluster CA")?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().context("the etcd client verifier")?;
        let config = rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(chain, key).context("the etcd serving certificate")?;
        Ok(Arc::new(config))
    }

    /// The identities of the components a process runs, each issued at start: the
    /// scheduler's and the controller manager's certificates, as Kubernetes names them.
    pub fn identities(&self) -> Result<Identities> {
        Ok(Identities {
            scheduler: self.credentials(&self.client("system:kube-scheduler", "")?),
            controller_manager: self.credentials(&self.client("system:kube-controller-manager", "")?),
            ca_only: client::tls::Credentials { ca_pem: self.ca_pem.clone(), cert_pem: None, key_pem: None },
            signer: controllers::csr::Signer::new(self.ca_pem.clone(), self.ca_key_pem.clone()),
        })
    }

    /// Client credentials as the `client` crate takes them.
    pub fn credentials(&self, issued: &Issued) -> client::tls::Credentials {
        client::tls::Credentials { ca_pem: self.ca_pem.clone(), cert_pem: Some(issued.cert_pem.clone()), key_pem: Some(issued.key_pem.clone()) }
    }

    /// Where the CA's files are when it was made here (for `up --replicas` to hand on).
    pub fn files(data_dir: &Path) -> (PathBuf, PathBuf) {
        (data_dir.join("pki").join("ca.crt"), data_dir.join("pki").join("ca.key"))
    }
}

/// Who the in-process components are to the API server (RBAC grants each its default role:
/// `system:kube-scheduler`, `system:kube-controller-manager`, whose controllers then each use
/// their own ServiceAccount); `ca_only` trusts the cluster CA and presents no certificate, for
/// clients that authenticate with a bearer token (hollow nodes' node tokens).
#[derive(Clone, Debug)]
pub struct Identities {
    pub scheduler: client::tls::Credentials,
    pub controller_manager: client::tls::Credentials,
    pub ca_only: client::tls::Credentials,
    /// The CA, for the controllers to sign approved CertificateSigningRequests with.
    pub signer: controllers::csr::Signer,
}

/// `hosts` (names and IP addresses) as SANs, each once.
fn sans(hosts: &[String]) -> Result<Vec<SanType>> {
    let mut out = Vec::new();
    for h in hosts {
        let san = match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.clone().try_into()?),
        };
        if !out.contains(&san) {
            out.push(san);
        }
    }
    Ok(out)
}

/// Writes `issued` as `dir/NAME.crt` and `dir/NAME.key` (owner-only), for a command run
/// later (`capstan member` with `up --replicas`' member certificate).
pub fn write_pair(dir: &Path, name: &str, issued: &Issued) -> Result<(PathBuf, PathBuf)> {
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    write_private(&c, &issued.cert_pem)?;
    write_private(&k, &issued.key_pem)?;
    Ok((c, k))
}

fn new_ca() -> Result<(String, String)> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "capstan-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + days(CA_DAYS);
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The ServiceAccount signing key: `--service-account-signing-key-file`, or `D/pki/sa.key`,
/// made on the first start and kept (tokens issued before a restart stay valid).
pub fn service_account_keys(data_dir: &Path, opts: &TlsOpts) -> Result<Arc<apiserver::sa_token::Keys>> {
    let (path, pem) = match &opts.service_account_signing_key_file {
        Some(f) => (f.clone(), read(f)?),
        None => {
            let f = sa_key_file(data_dir);
            if !f.exists() {
                std::fs::create_dir_all(data_dir.join("pki")).with_context(|| format!("creating {}", data_dir.join("pki").display()))?;
                write_private(&f, &KeyPair::generate()?.serialize_pem())?;
            }
            let pem = read(&f)?;
            (f, pem)
        }
    };
    let keys = apiserver::sa_token::Keys::from_pem(&pem, &opts.service_account_issuer).map_err(|e| anyhow::anyhow!("the ServiceAccount signing key {}: {e}", path.display()))?;
    // Legacy token Secrets carry the cluster CA (when this process has one).
    if let Some(ca) = [opts.ca_cert_file.clone(), Some(data_dir.join("pki").join("ca.crt"))].into_iter().flatten().find(|f| f.exists()) {
        keys.set_root_ca(&read(&ca)?);
    }
    Ok(Arc::new(keys))
}

/// Where the ServiceAccount key is kept when none is given.
pub fn sa_key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("pki").join("sa.key")
}

/// The names and addresses a listener on `addr` answers to: the address itself, and for a
/// wildcard or loopback one, localhost, 127.0.0.1 and this host's name.
pub fn hosts_for(addr: &std::net::SocketAddr) -> Vec<String> {
    let mut v = vec![addr.ip().to_string()];
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        v.extend(["127.0.0.1".to_string(), "localhost".to_string(), crate::common::hostname()]);
    }
    v
}
