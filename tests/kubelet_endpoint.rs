//! The kubelet endpoint's door: TLS, a client certificate of the cluster CA required, each
//! request authorized by the API server (SubjectAccessReview on nodes/proxy or nodes/stats);
//! the API server reaches it with its own kubelet client certificate, so `kubectl logs` and
//! `kubectl top` work while a caller without a certificate, or one RBAC does not allow, is
//! refused.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::*;

const NODE: &str = "node-k";

/// A client certificate of the cluster CA in `pki` for `user` in `group`.
fn cert(pki: &std::path::Path, user: &str, group: &str) -> (String, String) {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.join("ca.crt")).unwrap(), ca_key).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, user);
    p.distinguished_name.push(rcgen::DnType::OrganizationName, group);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    (p.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
}

/// GET `path` from the kubelet at `addr` presenting `cert`: the status code, or why there was
/// none.
fn get(addr: &str, cert: Option<&(String, String)>, path: &str) -> Result<u16, String> {
    use rustls::pki_types::pem::PemObject;
    // The kubelet's certificate is self-signed: accepted as the API server accepts it.
    let b = rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(Arc::new(apiserver::node_proxy::AnyServer));
    let cfg = match cert {
        Some((c, k)) => b.with_client_auth_cert(rustls::pki_types::CertificateDer::pem_slice_iter(c.as_bytes()).map(|c| c.unwrap()).collect(), rustls::pki_types::PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap()).unwrap(),
        None => b.with_no_client_auth(),
    };
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut s = rustls::StreamOwned::new(rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap(), tcp);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let head = String::from_utf8_lossy(&out);
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no HTTP answer: {head:?}"))
}

#[test]
fn the_kubelet_endpoint_admits_authorized_client_certificates_only() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE, "--usage-sample-seconds", "1"]);
    c.ok(&["wait", "--for=condition=Ready", &format!("node/{NODE}"), "--timeout=60s"]);
    // Through the API server (its kubelet client certificate), as before.
    c.ok(&["run", "hello", "--image=busybox", "--restart=Never", "--command", "--", "sh", "-c", "echo hello through the door"]);
    wait_until("the pod to succeed", || c.kubectl_with(KUBECTL, &["get", "pod", "hello", "-o", "jsonpath={.status.phase}"]).stdout == b"Succeeded");
    assert!(c.ok(&["logs", "hello"]).contains("hello through the door"));
    wait_until("kubectl top node to answer", || c.kubectl_with(KUBECTL, &["top", "node", NODE]).status.success());

    let port = c.ok(&["get", "node", NODE, "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"]);
    let addr = format!("127.0.0.1:{port}");
    let pki = c.dir.path().join("pki");
    let admin = cert(&pki, "someone-admin", "system:masters");
    assert_eq!(get(&addr, Some(&admin), "/healthz"), Ok(200));
    assert_eq!(get(&addr, Some(&admin), "/containerLogs/default/hello/hello").map(|c| c == 200), Ok(true));
    // No certificate: the handshake fails. A certificate RBAC grants nothing on nodes: 403.
    assert!(get(&addr, None, "/healthz").is_err(), "answered without a client certificate");
    let nobody = cert(&pki, "nobody", "nobodies");
    assert_eq!(get(&addr, Some(&nobody), "/containerLogs/default/hello/hello"), Ok(403));
    assert_eq!(get(&addr, Some(&nobody), "/stats/capstan"), Ok(403));
    // Granted nodes/stats (and not nodes/proxy), it reads stats, not logs.
    c.ok(&["create", "clusterrole", "stats-reader", "--verb=get", "--resource=nodes/stats"]);
    c.ok(&["create", "clusterrolebinding", "stats-reader", "--clusterrole=stats-reader", "--user=stats-user"]);
    let stats = cert(&pki, "stats-user", "monitoring");
    wait_until("RBAC to grant stats-user nodes/stats", || get(&addr, Some(&stats), "/stats/capstan") == Ok(200));
    assert_eq!(get(&addr, Some(&stats), "/containerLogs/default/hello/hello"), Ok(403));
    // A certificate of another CA: refused at the handshake.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut op = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    op.distinguished_name.push(rcgen::DnType::CommonName, "intruder");
    op.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
    let other = (op.self_signed(&other_key).unwrap().pem(), other_key.serialize_pem());
    assert!(get(&addr, Some(&other), "/healthz").is_err(), "a certificate of another CA was admitted");
}
