//! TLS for the client: the cluster CA to trust and a client certificate to present, set once
//! per process (`set_default`) by whoever holds them (`capstan up` for its own components,
//! read from a kubeconfig by others). A client of an `https://` server uses them; a client of
//! an `http://` one (a server run with `--insecure-http`) speaks plain HTTP as before.

use std::sync::{Arc, OnceLock, RwLock};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM text of the CA and of a client certificate and its key.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

static DEFAULT: OnceLock<RwLock<Option<Arc<rustls::ClientConfig>>>> = OnceLock::new();

fn slot() -> &'static RwLock<Option<Arc<rustls::ClientConfig>>> {
    DEFAULT.get_or_init(|| RwLock::new(None))
}

/// The rustls configuration `creds` describe.
pub fn client_config(creds: &Credentials) -> Result<rustls::ClientConfig, String> {
    let b = rustls::ClientConfig::builder().with_root_certificates(root_store(&creds.ca_pem)?);
    match (&creds.cert_pem, &creds.key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("client key: {e}"))?;
            b.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))
        }
        (None, None) => Ok(b.with_no_client_auth()),
        _ => Err("a client certificate needs its key, and a key its certificate".into()),
    }
}

/// A client certificate replaceable while clients present it (a kubelet's, rotated before it
/// expires): every TLS handshake after `replace` presents the new one; connections already
/// open keep the one they were made with.
#[derive(Debug)]
pub struct RotatingCert {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// How many times it was replaced (clients start new connections when it changes).
    generation: std::sync::atomic::AtomicU64,
}

/// A client's TLS configuration, with the handle of its certificate when that rotates.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    rotating: Option<Arc<RotatingCert>>,
}

impl ClientTls {
    /// Fixed credentials.
    pub fn fixed(creds: &Credentials) -> Result<ClientTls, String> {
        Ok(ClientTls { config: Arc::new(client_config(creds)?), rotating: None })
    }

    /// Trusting `ca_pem`, presenting `cert_pem` (with `key_pem`) until `rotating()` replaces it.
    pub fn with_rotating_cert(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ClientTls, String> {
        let plain = client_config(&Credentials { ca_pem: ca_pem.to_string(), cert_pem: None, key_pem: None })?;
        let provider = plain.crypto_provider().clone();
        let current = RwLock::new(Arc::new(certified(&provider, cert_pem, key_pem)?));
        let me = Arc::new(RotatingCert { current, provider, generation: Default::default() });
        let mut cfg = rustls::ClientConfig::builder().with_root_certificates(root_store(ca_pem)?).with_client_cert_resolver(me.clone());
        // A resumed session carries the certificate of the handshake it resumes: after a
        // rotation that would be the old one, so every connection makes a full handshake.
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(ClientTls { config: Arc::new(cfg), rotating: Some(me) })
    }

    pub fn config(&self) -> &rustls::ClientConfig {
        &self.config
    }

    pub fn rotating(&self) -> Option<&Arc<RotatingCert>> {
        self.rotating.as_ref()
    }
}

impl RotatingCert {
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `key_pem` is the key of the certificate in `cert_pem`.
    pub fn check_pair(cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("client key: {e}"))?;
        rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_client_auth_cert(chain, key).map(|_| ()).map_err(|e| format!("client certificate: {e}"))
    }

    /// From now on, new connections present `cert_pem`.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let k = certified(&self.provider, cert_pem, key_pem)?;
        *self.current.write().unwrap() = Arc::new(k);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }
}

impl rustls::client::ResolvesClientCert for RotatingCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified(provider: &rustls::crypto::CryptoProvider, cert_pem: &str, key_pem: &str) -> Result<rustls::sign::CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("client certificate: {e}"))?;
    if chain.is_empty() {
        return Err("client certificate: none in the PEM text".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("client key: {e}"))?;
    rustls::sign::CertifiedKey::from_der(chain, key, provider).map_err(|e| format!("client certificate: {e}"))
}

fn root_store(ca_pem: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| format!("CA certificate: {e}"))?;
        roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate in the credentials".into());
    }
    Ok(roots)
}

/// Makes `creds` what every `Client` made after this call uses for `https://` servers.
pub fn set_default(creds: &Credentials) -> Result<(), String> {
    let cfg = client_config(creds)?;
    *slot().write().unwrap() = Some(Arc::new(cfg));
    Ok(())
}

/// The default credentials' configuration, which a new `Client` connects with: TLS with them
/// for `https://` servers (with none set, no certificate is trusted, so every handshake fails
/// and says so; nothing is presented), plain TCP for `http://` ones.
pub(crate) fn default_config() -> Arc<rustls::ClientConfig> {
    slot().read().unwrap().clone().unwrap_or_else(|| {
        Arc::new(rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
    })
}

/// A connector presenting `cfg`'s credentials, for a client with an identity of its own.
pub fn connector_with(cfg: &rustls::ClientConfig) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg.clone()).https_or_http().enable_http1().wrap_connector(http)
}
