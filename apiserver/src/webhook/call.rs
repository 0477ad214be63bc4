//! Calling a webhook: one HTTPS POST of the review on a connection made for it (TLS checked
//! against the webhook's `caBundle`, or the host's trust store without one), all within the
//! webhook's timeout, the answer's body bounded. Errors are the reasons a failurePolicy
//! judges, worded as Kubernetes' (`failed to call webhook: Post "URL": ...`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

/// The largest answer read from a webhook.
pub const RESPONSE_BYTES_MAX: usize = 3 << 20;

/// The host's trust store, for webhooks that give no `caBundle` (Debian's bundle path).
const HOST_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The TLS client configuration that trusts `ca_bundle` (PEM), or the host's roots.
pub fn tls_config(ca_bundle: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let host;
    let (pem, what) = match ca_bundle {
        Some(b) => (b, "caBundle"),
        None => {
            host = std::fs::read(HOST_ROOTS).map_err(|e| format!("no caBundle and the host's trust store {HOST_ROOTS}: {e}"))?;
            (&host[..], HOST_ROOTS)
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| format!("{what} is not PEM: {e}"))?;
        roots.add(c).map_err(|e| format!("{what} holds a certificate that cannot be used: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{what} holds no certificate"));
    }
    Ok(Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()))
}

/// Where one call goes.
pub struct Target<'a> {
    /// What to connect to (an address or a host name).
    pub host: &'a str,
    pub port: u16,
    /// The name the certificate must carry (the URL's host, or `NAME.NAMESPACE.svc`).
    pub server_name: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// The URL as errors name it.
    pub url: &'a str,
}

/// POSTs `body` to `t` and returns the answer's body; `Err` says why not.
pub async fn post(tls: Arc<rustls::ClientConfig>, t: &Target<'_>, body: Vec<u8>, timeout: Duration) -> Result<Bytes, String> {
    match tokio::time::timeout(timeout, exchange(tls, t, body)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(format!("failed to call webhook: Post {:?}: {e}", t.url)),
        Err(_) => Err(format!("failed to call webhook: Post {:?}: context deadline exceeded", t.url)),
    }
}

async fn exchange(tls: Arc<rustls::ClientConfig>, t: &Target<'_>, body: Vec<u8>) -> Result<Bytes, String> {
    let tcp = tokio::net::TcpStream::connect((t.host, t.port)).await.map_err(|e| format!("dial tcp {}:{}: {e}", t.host, t.port))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(t.server_name.to_string()).map_err(|e| format!("server name {:?}: {e}", t.server_name))?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let answer = async {
        let req = hyper::Request::post(t.path)
            .header(hyper::header::HOST, format!("{}:{}", t.server_name, t.port))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), RESPONSE_BYTES_MAX).collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
        if !status.is_success() {
            return Err(format!("the server answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(256)])));
        }
        Ok(body)
    }
    .await;
    driver.abort();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_must_hold_a_certificate() {
        assert_eq!(tls_config(Some(b"")).unwrap_err(), "caBundle holds no certificate");
        assert!(tls_config(Some(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")).is_err());
        let ca = rcgen::CertificateParams::new(vec!["ca".into()]).unwrap().self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        assert!(tls_config(Some(ca.pem().as_bytes())).is_ok());
    }

    #[tokio::test]
    async fn a_call_that_cannot_connect_or_never_answers_says_so_within_its_timeout() {
        let ca = rcgen::CertificateParams::new(vec!["ca".into()]).unwrap().self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let tls = tls_config(Some(ca.pem().as_bytes())).unwrap();
        // A port nobody listens on.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("https://127.0.0.1:{free}/x");
        let t = Target { host: "127.0.0.1", port: free, server_name: "127.0.0.1", path: "/x", url: &url };
        let e = post(tls.clone(), &t, b"{}".to_vec(), Duration::from_secs(5)).await.unwrap_err();
        assert!(e.starts_with(&format!("failed to call webhook: Post \"{url}\": dial tcp 127.0.0.1:{free}: ")), "{e}");
        // A listener that accepts and says nothing.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let url = format!("https://127.0.0.1:{port}/x");
        let t = Target { host: "127.0.0.1", port, server_name: "127.0.0.1", path: "/x", url: &url };
        let e = post(tls, &t, b"{}".to_vec(), Duration::from_millis(200)).await.unwrap_err();
        assert_eq!(e, format!("failed to call webhook: Post \"{url}\": context deadline exceeded"));
        drop(silent);
    }
}
