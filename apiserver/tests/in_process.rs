//! The in-process transport (`client::local`, `apiserver::in_process`): a client of an API
//! server in its own process reaches it through calls, and is authenticated as it would be
//! over TLS: by the certificate it presents (verified against the client CA), else by its
//! bearer token, else anonymous. A client of another URL, or made after the offer ends, goes
//! over the network; one made before the offer ended answers as a closed connection.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let pem = p.self_signed(&key).unwrap().pem();
    Ca { issuer: Issuer::from_ca_cert_pem(&pem, key).unwrap(), pem }
}

/// A client certificate of `ca` for `user` in `group`: (certificate, key) PEM.
fn client_cert(ca: &Ca, user: &str, group: &str) -> (String, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, user);
    p.distinguished_name.push(DnType::OrganizationName, group);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    (p.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
}

fn creds(ca: &Ca, cert: Option<&(String, String)>) -> client::tls::Credentials {
    client::tls::Credentials { ca_pem: ca.pem.clone(), cert_pem: cert.map(|c| c.0.clone()), key_pem: cert.map(|c| c.1.clone()) }
}

async fn whoami(c: &client::Client) -> Result<serde_json::Value, client::ClientError> {
    let review = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    c.post("/apis/authentication.k8s.io/v1/selfsubjectreviews", &review).await.map(|r| r["status"]["userInfo"].clone())
}

fn status_code(r: &Result<serde_json::Value, client::ClientError>) -> Option<u16> {
    match r {
        Err(client::ClientError::Status { code, .. }) => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_callers_are_authenticated_as_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let store = tokio::task::block_in_place(|| storage::Store::open(storage::Config::new(dir.path().join("store")))).unwrap();
    apiserver::bootstrap(&store).await.unwrap();
    let cluster = ca("cluster-ca");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(pem_der(&cluster.pem))).unwrap();
    let client_ca = Arc::new(apiserver::authn::ClientCa::new(roots).unwrap());
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = apiserver::Options { authn: apiserver::authn::Mode::Tls { tokens: apiserver::authn::StaticTokens::none() }, ..apiserver::Options::insecure() };
    let app = apiserver::router_with_shutdown(store, stop_rx, opts);
    // Nothing listens here: a request that left the process would fail to connect.
    let base = "https://127.0.0.1:9";
    let offer = client::local::offer(base, Arc::new(apiserver::in_process::InProcess::new(app, Some(client_ca))));
    let before = apiserver::in_process::requests();

    // A certificate of the cluster CA: its CN and O, as over TLS.
    let alice = client_cert(&cluster, "alice", "system:masters");
    let c = client::Client::with_credentials(base, "test", &creds(&cluster, Some(&alice))).unwrap();
    assert!(c.in_process(), "a client of the offered base URL goes through calls");
    let u = whoami(&c).await.expect("alice is authenticated by her certificate");
    assert_eq!(u["username"], "alice");
    assert!(u["groups"].as_array().unwrap().iter().any(|g| g == "system:masters"), "{u}");
    c.get("/api/v1/namespaces/default").await.expect("a member of system:masters reads anything");
    assert!(apiserver::in_process::requests() >= before + 2, "the requests were counted as in-process");

    // A certificate of another CA: 401, as its TLS connection's requests would be.
    let mallory = client_cert(&ca("other-ca"), "mallory", "system:masters");
    let m = client::Client::with_credentials(base, "test", &creds(&cluster, Some(&mallory))).unwrap();
    assert_eq!(status_code(&m.get("/api/v1/namespaces/default").await), Some(401));
    // No certificate and no token: anonymous, refused outside the public paths.
    let anon = client::Client::with_credentials(base, "test", &creds(&cluster, None)).unwrap();
    assert_eq!(status_code(&anon.get("/api/v1/namespaces/default").await), Some(401));
    // A bearer token no authenticator knows: 401 too.
    let bad = anon.with_bearer(client::Bearer::new("not-a-token").unwrap());
    assert_eq!(status_code(&bad.get("/api/v1/namespaces/default").await), Some(401));

    // Another URL is not served in-process.
    assert!(!client::Client::with_credentials("https://127.0.0.1:10", "test", &creds(&cluster, Some(&alice))).unwrap().in_process());
    // After the offer ends: new clients use the network; one made before answers as a
    // closed connection would.
    drop(offer);
    assert!(!client::Client::with_credentials(base, "test", &creds(&cluster, Some(&alice))).unwrap().in_process());
    match c.get("/api/v1/namespaces/default").await {
        Err(client::ClientError::Transport(_)) => {}
        other => panic!("a request after the offer ended: {other:?}"),
    }
}

/// The DER of the first certificate in `pem`.
fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).next().unwrap().unwrap().to_vec()
}
