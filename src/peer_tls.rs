//! Mutual TLS between the replicas of a cluster: every replica serves its peer port and
//! dials its peers with a peer certificate of the cluster CA (`Pki::peer`: CN
//! `system:capstan-peer:NAME`, O `system:capstan-peers`), and admits only connections that
//! present one too. A certificate of the same CA for anything else (the admin's, a
//! kubelet's) is refused at the handshake: raft's port is not the API's. `capstan member`
//! presents a certificate of the peers' group (`up --replicas` writes one to
//! `D/pki/member.{crt,key}`). Over `--insecure-http` the peers speak plain HTTP/2, as before.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The group of every certificate the peer port admits.
pub const PEERS_GROUP: &str = "system:capstan-peers";

/// The listener's and the dialer's TLS configurations for a replica presenting `cert_pem`
/// (with `key_pem`), trusting `ca_pem`.
pub fn configs(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> {
    let roots = Arc::new(roots(ca_pem)?);
    let chain = || CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().context("the peer certificate");
    let key = || PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the peer key");
    let inner = rustls::server::WebPkiClientVerifier::builder(roots.clone()).build().context("the peer verifier")?;
    let mut server = rustls::ServerConfig::builder().with_client_cert_verifier(Arc::new(PeersOnly { inner })).with_single_cert(chain()?, key()?).context("the peer certificate")?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(chain()?, key()?).context("the peer certificate")?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(server), Arc::new(client)))
}

/// A dialer's configuration only (`capstan member`): trusting `ca_pem`, presenting the
/// certificate if one is given.
pub fn client(ca_pem: &str, cert: Option<(&str, &str)>) -> Result<Arc<rustls::ClientConfig>> {
    let b = rustls::ClientConfig::builder().with_root_certificates(Arc::new(roots(ca_pem)?));
    let mut c = match cert {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().context("the client certificate")?;
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the client key")?).context("the client certificate")?
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.context("the cluster CA")?).context("the cluster CA")?;
    }
    anyhow::ensure!(!roots.is_empty(), "no CA certificate to trust");
    Ok(roots)
}

/// The CA's verifier, then: the certificate is in the peers' group.
#[derive(Debug)]
struct PeersOnly {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for PeersOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match apiserver::authn::user_of_certificate(end_entity) {
            Ok(u) if u.groups.iter().any(|g| g == PEERS_GROUP) => Ok(ok),
            Ok(u) => Err(rustls::Error::General(format!("{} is not a peer of this cluster (not in {PEERS_GROUP})", u.name))),
            Err(e) => Err(rustls::Error::General(e)),
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
