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
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()) {
        let c = c.map_err(|e| format!("CA certificate: {e}"))?;
        roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate in the credentials".into());
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
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

/// Makes `creds` what every `Client` made after this call uses for `https://` servers.
pub fn set_default(creds: &Credentials) -> Result<(), String> {
    let cfg = client_config(creds)?;
    *slot().write().unwrap() = Some(Arc::new(cfg));
    Ok(())
}

/// The connector a new `Client` uses: TLS with the default credentials for `https://`
/// servers (with none set, no certificate is trusted, so every handshake fails and says so),
/// plain TCP for `http://` ones.
pub(crate) fn connector() -> HttpsConnector<HttpConnector> {
    let cfg = slot().read().unwrap().clone().unwrap_or_else(|| {
        Arc::new(rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
    });
    connector_with(&cfg)
}

/// A connector presenting `cfg`'s credentials, for a client with an identity of its own.
pub fn connector_with(cfg: &rustls::ClientConfig) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg.clone()).https_or_http().enable_http1().wrap_connector(http)
}
