//! TLS and authentication end to end: `capstan up` serves the API over TLS with a certificate
//! of the cluster CA it made, the kubeconfig carries the CA and an admin client certificate,
//! and a request without valid credentials gets Kubernetes' 401 `Status`.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::*;

/// A client configuration trusting the cluster's CA and presenting `cert` (if any).
fn tls_config(ca_pem: &str, cert: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
    let (cert_pem, key_pem) = match cert {
        Some((c, k)) => (Some(c), Some(k)),
        None => (None, None),
    };
    Arc::new(client::tls::client_config(&client::tls::Credentials { ca_pem: ca_pem.to_string(), cert_pem, key_pem }).unwrap())
}

/// A client certificate for `user` signed by the CA in `pki`, valid from `not_before` to
/// `not_after` (days from now).
fn client_cert(pki: &std::path::Path, user: &str, group: &str, not_before: i64, not_after: i64) -> (String, String) {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.join("ca.crt")).unwrap(), ca_key).unwrap();
    client_cert_from(&issuer, user, group, not_before, not_after)
}

fn client_cert_from(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, user: &str, group: &str, not_before: i64, not_after: i64) -> (String, String) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, user);
    p.distinguished_name.push(rcgen::DnType::OrganizationName, group);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(not_before);
    p.not_after = now + time::Duration::days(not_after);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `capstan up` with `extra` in a data dir under `dir`: (whether it ran and exited 0, what it
/// wrote on stderr). For starts that must be refused.
fn start_fails(dir: &tempfile::TempDir, extra: &[&str]) -> (bool, String) {
    let mut out = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["up", "--listen", "127.0.0.1:0", "--no-local-node", "--etcd-listen", "none"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A start that does not fail would serve forever: it counts as a success after WAIT.
    let mut stderr = out.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + WAIT;
    let ok = loop {
        if let Some(st) = out.try_wait().unwrap() {
            break st.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = out.kill();
            let _ = out.wait();
            break true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (ok, reader.join().unwrap())
}

fn status(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

#[test]
fn the_admin_kubeconfig_works_over_tls_and_names_its_user() {
    let c = Cluster::start();
    assert!(std::fs::read_to_string(&c.kubeconfig).unwrap().contains("server: https://"), "the kubeconfig points at https");
    c.ok(&["get", "namespaces"]);
    let who: serde_json::Value = serde_json::from_str(&c.ok(&["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "kubernetes-admin", "{who}");
    assert_eq!(who["status"]["userInfo"]["groups"], serde_json::json!(["system:masters", "system:authenticated"]), "{who}");
    // kubectl 1.27 asks authentication.k8s.io/v1beta1 (v1 arrived in 1.28).
    let old = c.ok_with(&kubectl_version(27), &["auth", "whoami"]);
    assert!(old.contains("kubernetes-admin"), "{old}");
    // The kubeconfig holds the admin's private key: its owner alone reads it.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&c.kubeconfig).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn requests_without_valid_credentials_get_401_and_public_paths_stay_open() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let pki = c.dir.path().join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();

    // No client certificate: anonymous.
    let anon = tls_config(&ca, None);
    let (code, body) = https_get(&c.addr, anon.clone(), "/api/v1/namespaces");
    assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));
    let s = status(&body);
    assert_eq!((s["kind"].as_str(), s["reason"].as_str(), s["code"].as_u64()), (Some("Status"), Some("Unauthorized"), Some(401)), "{s}");
    for public in ["/healthz", "/livez", "/readyz", "/version"] {
        assert_eq!(https_get(&c.addr, anon.clone(), public).0, 200, "{public} is public");
    }
    assert_eq!(https_get(&c.addr, anon.clone(), "/apis").0, 401, "discovery is for authenticated users");
    assert_eq!(https_get(&c.addr, anon, "/metrics").0, 401);

    // A certificate of the cluster CA: its CN and O are who the request is from.
    // (Authenticated, then authorized by RBAC: discovery yes, namespaces not without a binding.)
    let alice = tls_config(&ca, Some(client_cert(&pki, "alice", "devs", -1, 1)));
    let (code, body) = https_get(&c.addr, alice.clone(), "/api");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (code, body) = https_get(&c.addr, alice.clone(), "/api/v1/namespaces");
    assert_eq!((code, status(&body)["reason"].as_str()), (403, Some("Forbidden")), "{}", String::from_utf8_lossy(&body));

    // Expired, or not yet valid: 401.
    for (from, to) in [(-3, -1), (1, 3)] {
        let cfg = tls_config(&ca, Some(client_cert(&pki, "alice", "devs", from, to)));
        let (code, body) = https_get(&c.addr, cfg, "/api/v1/namespaces");
        assert_eq!(code, 401, "valid {from}..{to} days from now: {}", String::from_utf8_lossy(&body));
    }

    // Signed by another CA: 401, not a TLS alert.
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "capstan-ca");
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::Issuer::new(p, other_key);
    let mallory = tls_config(&ca, Some(client_cert_from(&other, "kubernetes-admin", "system:masters", -1, 1)));
    let (code, body) = https_get(&c.addr, mallory, "/api/v1/namespaces");
    assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));
    assert_eq!(status(&body)["reason"], "Unauthorized");

    let (_, metrics) = http(&c.addr, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    let count = |cause: &str| -> u64 {
        let prefix = format!("apiserver_unauthorized_requests_total{{cause=\"{cause}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    assert!(count("anonymous") >= 3 && count("rejected_credentials") >= 3, "{metrics}");
}

#[test]
fn plain_http_to_the_tls_port_is_told_so_and_the_server_keeps_serving() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let mut s = std::net::TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 400") && resp.contains("Client sent an HTTP request to an HTTPS server"), "{resp}");
    // kubectl pointed at http:// fails as it does against kube-apiserver (the same 400).
    let wrong = c.fails(&["--server", &format!("http://{}", c.addr), "get", "namespaces"]);
    assert!(wrong.contains("the server rejected our request"), "{wrong}");
    c.ok(&["get", "namespaces"]);
    let (_, metrics) = http(&c.addr, "GET", "/metrics", &[], b"");
    let line = String::from_utf8_lossy(&metrics).lines().find(|l| l.starts_with("apiserver_tls_handshake_errors_total ")).map(str::to_string);
    assert!(line.as_deref().and_then(|l| l.split(' ').nth(1)).and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n >= 2), "{line:?}");
}

/// A TLS handshake with the server at `addr`, verifying its certificate for `name`.
fn handshake_as(addr: &str, ca_pem: &str, name: &str) -> Result<(), String> {
    let cfg = tls_config(ca_pem, None);
    let sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(cfg, rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    tls.read(&mut buf).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn tls_san_adds_names_to_the_serving_certificate_and_a_bad_one_refuses_to_start() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--tls-san", "api.example.test", "--tls-san", "10.9.8.7"]);
    let ca = std::fs::read_to_string(c.dir.path().join("pki").join("ca.crt")).unwrap();
    handshake_as(&c.addr, &ca, "api.example.test").expect("the certificate names api.example.test");
    handshake_as(&c.addr, &ca, "10.9.8.7").expect("the certificate names 10.9.8.7");
    let e = handshake_as(&c.addr, &ca, "other.example.test").expect_err("a name it was not given");
    assert!(e.contains("NotValidForName") || e.contains("not valid for"), "{e}");
    drop(c);
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = start_fails(&dir, &["--tls-san", "not a name"]);
    assert!(!ok && err.contains("--tls-san \"not a name\": not an IP address or a DNS name"), "{err}");
}

#[test]
fn a_restarted_cluster_keeps_its_ca_so_an_old_kubeconfig_still_works() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let saved = c.dir.path().join("kubeconfig.saved");
    std::fs::copy(&c.kubeconfig, &saved).unwrap();
    let dir = c.stop();
    let c = Cluster::start_with(dir, &["--no-local-node"]);
    let kc = client::kubeconfig::load(&saved, None).unwrap();
    let cfg = Arc::new(client::tls::client_config(&kc.credentials.unwrap()).unwrap());
    let (code, body) = https_get(&c.addr, cfg, "/api/v1/namespaces/default");
    assert_eq!(code, 200, "the first run's admin certificate, against the restarted server: {}", String::from_utf8_lossy(&body));
}

#[test]
fn insecure_http_serves_plain_http_as_an_unauthenticated_admin() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--insecure-http"]);
    assert!(std::fs::read_to_string(&c.kubeconfig).unwrap().contains("server: http://"));
    assert!(!c.dir.path().join("pki").join("ca.crt").exists(), "no CA is made for a plain-HTTP server");
    let who: serde_json::Value = serde_json::from_str(&c.ok(&["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:unsecured", "{who}");
}

#[test]
fn bearer_tokens_from_a_static_token_file_authenticate_and_a_bad_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "# token,user,uid,groups\nsecret-alice,alice,1001,\"devs,ops\"\n").unwrap();
    let c = Cluster::start_with(dir, &["--no-local-node", "--token-auth-file", path_str(&tokens)]);
    let ca = c.dir.path().join("pki").join("ca.crt");
    let server = format!("https://{}", c.addr);
    // A kubeconfig-less kubectl with the CA and a token only.
    let with_token = |token: &str| {
        std::process::Command::new(KUBECTL)
            .env("KUBECONFIG", "/dev/null")
            .args(["--server", &server, "--certificate-authority", path_str(&ca), "--token", token, "auth", "whoami", "-o", "json"])
            .output()
            .unwrap()
    };
    let out = with_token("secret-alice");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "alice", "{who}");
    assert_eq!(who["status"]["userInfo"]["groups"], serde_json::json!(["devs", "ops", "system:authenticated"]), "{who}");
    let out = with_token("secret-mallory");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthorized"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(c);

    // A malformed token file: capstan refuses to start, naming the file, the line and the field.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "ok,alice,1\n,bob,2\n").unwrap();
    let (ok, err) = start_fails(&dir, &["--token-auth-file", path_str(&bad)]);
    assert!(!ok, "started with a malformed token file: {err}");
    assert!(err.contains(path_str(&bad)) && err.contains("line 2: field 1 (token) is empty"), "{err}");
}

/// kubectl as a user of a client certificate the test signs with the cluster CA.
struct As {
    server: String,
    files: [std::path::PathBuf; 3],
}

impl As {
    fn new(c: &Cluster, user: &str, group: &str) -> As {
        let pki = c.dir.path().join("pki");
        let (cert, key) = client_cert(&pki, user, group, -1, 1);
        let (cf, kf) = (c.dir.path().join(format!("{user}.crt")), c.dir.path().join(format!("{user}.key")));
        std::fs::write(&cf, cert).unwrap();
        std::fs::write(&kf, key).unwrap();
        As { server: format!("https://{}", c.addr), files: [pki.join("ca.crt"), cf, kf] }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(KUBECTL)
            .env("KUBECONFIG", "/dev/null")
            .args(["--server", &self.server, "--certificate-authority", path_str(&self.files[0]), "--client-certificate", path_str(&self.files[1]), "--client-key", path_str(&self.files[2])])
            .args(args)
            .output()
            .unwrap()
    }
}

#[test]
fn rbac_grants_what_a_binding_says_and_can_i_agrees_with_what_happens() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let viewer = As::new(&c, "viewer", "devs");
    // Authenticated but bound to nothing: discovery and whoami only.
    let out = viewer.run(&["get", "pods", "-n", "default"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pods is forbidden: User \"viewer\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""), "{err}");
    assert!(viewer.run(&["auth", "whoami"]).status.success());

    c.ok(&["create", "rolebinding", "viewers", "--clusterrole=view", "--group=devs", "-n", "default"]);
    wait_until("the binding to take effect", || viewer.run(&["get", "pods", "-n", "default"]).status.success());
    c.ok(&["create", "configmap", "cm", "-n", "default", "--from-literal=a=b"]);
    c.ok(&["create", "secret", "generic", "s", "-n", "default", "--from-literal=a=b"]);
    c.ok(&["create", "deployment", "d", "--image=x", "-n", "default"]);
    // For each action, `kubectl auth can-i` says what actually happens.
    let actions: Vec<(Vec<&str>, Vec<&str>, bool)> = vec![
        (vec!["get", "configmaps", "-n", "default"], vec!["get", "configmap", "cm", "-n", "default"], true),
        (vec!["list", "deployments.apps", "-n", "default"], vec!["get", "deployments", "-n", "default"], true),
        (vec!["create", "configmaps", "-n", "default"], vec!["create", "configmap", "new", "-n", "default"], false),
        (vec!["delete", "deployments.apps", "-n", "default"], vec!["delete", "deployment", "d", "-n", "default"], false),
        (vec!["get", "secrets", "-n", "default"], vec!["get", "secret", "s", "-n", "default"], false),
        (vec!["list", "pods", "-n", "kube-system"], vec!["get", "pods", "-n", "kube-system"], false),
        (vec!["list", "nodes"], vec!["get", "nodes"], false),
    ];
    for (can_i, action, want) in actions {
        let mut a = vec!["auth", "can-i"];
        a.extend(&can_i);
        let answer = viewer.run(&a);
        let said = String::from_utf8_lossy(&answer.stdout).trim().to_string();
        assert_eq!(said, if want { "yes" } else { "no" }, "can-i {can_i:?}: {said} {}", String::from_utf8_lossy(&answer.stderr));
        let done = viewer.run(&action);
        assert_eq!(done.status.success(), want, "{action:?}: {}", String::from_utf8_lossy(&done.stderr));
        if !want {
            assert!(String::from_utf8_lossy(&done.stderr).contains("is forbidden: User \"viewer\""), "{action:?}: {}", String::from_utf8_lossy(&done.stderr));
        }
    }
    // `can-i --list` lists the rules of the binding in that namespace, and none of another.
    let listed = String::from_utf8_lossy(&viewer.run(&["auth", "can-i", "--list", "-n", "default"]).stdout).to_string();
    let row = |res: &str| listed.lines().find(|l| l.split_whitespace().next() == Some(res)).map(str::to_string);
    assert!(row("deployments.apps").is_some_and(|r| r.contains("[get list watch]")), "{listed}");
    assert!(row("selfsubjectaccessreviews.authorization.k8s.io").is_some_and(|r| r.contains("[create]")), "{listed}");
    assert!(row("secrets").is_none(), "{listed}");
    let elsewhere = String::from_utf8_lossy(&viewer.run(&["auth", "can-i", "--list", "-n", "kube-system"]).stdout).to_string();
    assert!(!elsewhere.contains("deployments.apps"), "{elsewhere}");
    // The admin (system:masters) may do anything, before RBAC is asked.
    assert_eq!(c.ok(&["auth", "can-i", "delete", "nodes"]).trim(), "yes");
    // The default roles are there, as in Kubernetes.
    let roles = c.ok(&["get", "clusterroles", "-o", "name"]);
    for r in ["cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user"] {
        assert!(roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{r}")), "{r} missing:\n{roles}");
    }
}

#[test]
fn impersonation_runs_a_request_as_another_user_when_rbac_allows_it() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    // The admin may impersonate anyone (system:masters).
    let who: serde_json::Value = serde_json::from_str(&c.ok(&["--as", "bob", "--as-group", "devs", "auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "bob", "{who}");
    assert_eq!(who["status"]["userInfo"]["groups"], serde_json::json!(["devs", "system:authenticated"]), "{who}");
    // As bob, the request is bob's: refused until a binding grants it.
    let err = c.fails(&["--as", "bob", "get", "pods", "-n", "default"]);
    assert!(err.contains("User \"bob\" cannot list resource \"pods\""), "{err}");
    c.ok(&["create", "rolebinding", "devs-view", "--clusterrole=view", "--group=devs", "-n", "default"]);
    wait_until("the binding to take effect for the impersonated group", || {
        std::process::Command::new(KUBECTL).env("KUBECONFIG", &c.kubeconfig).args(["--as", "bob", "--as-group", "devs", "get", "pods", "-n", "default"]).output().unwrap().status.success()
    });
    // A user without the impersonate verb cannot.
    let alice = As::new(&c, "alice", "people");
    let out = alice.run(&["--as", "kubernetes-admin", "get", "pods"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("users \"kubernetes-admin\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"), "{err}");
    // Granted impersonation of one user only.
    let role = c.write("imp.yaml", "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: impersonate-bob}\nrules:\n- {apiGroups: [\"\"], resources: [users], verbs: [impersonate], resourceNames: [bob]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: alice-as-bob}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: impersonate-bob}\nsubjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]\n");
    c.ok(&["apply", "-f", path_str(&role)]);
    wait_until("alice to be allowed to impersonate bob", || alice.run(&["--as", "bob", "auth", "whoami"]).status.success());
    assert!(!alice.run(&["--as", "carol", "auth", "whoami"]).status.success(), "resourceNames limit whom alice may be");
    assert!(!alice.run(&["--as", "bob", "--as-group", "system:masters", "auth", "whoami"]).status.success(), "a group needs its own grant");
}

#[test]
fn the_audit_log_records_each_request_at_the_level_the_policy_gives() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n\
         - level: None\n  nonResourceURLs: [\"/healthz*\", /readyz, /livez, /version]\n\
         - level: Metadata\n  resources: [{group: \"\", resources: [secrets]}]\n  omitStages: [RequestReceived]\n\
         - level: RequestResponse\n  resources: [{group: \"\", resources: [configmaps]}]\n\
         - level: Request\n  omitStages: [RequestReceived]\n",
    )
    .unwrap();
    let log = dir.path().join("audit").join("audit.log");
    let c = Cluster::start_with(dir, &["--no-local-node", "--audit-policy-file", path_str(&policy), "--audit-log-path", path_str(&log)]);
    c.ok(&["create", "secret", "generic", "s1", "--from-literal=password=topsecret-value"]);
    // -v=8 prints the answer's headers: its Audit-Id names the request's events.
    let created = std::process::Command::new(KUBECTL).env("KUBECONFIG", &c.kubeconfig).args(["create", "configmap", "cm1", "--from-literal=k=visible-value", "-v=8"]).output().unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let trace = String::from_utf8_lossy(&created.stderr).to_string();
    let audit_id = trace.lines().filter_map(|l| l.trim().strip_prefix("Audit-Id:").or_else(|| l.split("Audit-Id: ").nth(1))).map(|v| v.trim().trim_matches('"').to_string()).last().unwrap_or_else(|| panic!("no Audit-Id header in kubectl's trace: {trace}"));
    c.ok(&["get", "pods"]);
    c.ok(&["delete", "configmap", "cm1"]);
    let viewer = As::new(&c, "viewer", "devs");
    assert!(!viewer.run(&["get", "secrets"]).status.success());
    // Without credentials: 401, audited with no user.
    let ca_pem = client::kubeconfig::load(&c.kubeconfig, None).unwrap().credentials.unwrap().ca_pem;
    assert_eq!(https_get(&c.addr, tls_config(&ca_pem, None), "/api/v1/namespaces/default/pods?anonymous=1").0, 401);

    let events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).expect("each line is a JSON event")).collect()
    };
    let find = |evs: &[serde_json::Value], user: &str, verb: &str, resource: &str, code: u64| -> Option<serde_json::Value> {
        evs.iter()
            .find(|e| e["user"]["username"] == user && e["verb"] == verb && e["objectRef"]["resource"] == resource && e["responseStatus"]["code"] == code && e["stage"] == "ResponseComplete")
            .cloned()
    };
    let admin = "kubernetes-admin";
    wait_until("the session's requests in the audit log", || {
        let evs = events();
        find(&evs, admin, "create", "secrets", 201).is_some()
            && find(&evs, admin, "create", "configmaps", 201).is_some()
            && find(&evs, admin, "list", "pods", 200).is_some()
            && find(&evs, admin, "delete", "configmaps", 200).is_some()
            && find(&evs, "viewer", "list", "secrets", 403).is_some()
            && evs.iter().any(|e| e["responseStatus"]["code"] == 401 && e["requestURI"].as_str().is_some_and(|u| u.ends_with("anonymous=1")))
    });
    let refused = evs_401(&events());
    assert_eq!((refused["stage"].as_str(), refused["user"].get("username").and_then(|u| u.as_str())), (Some("ResponseStarted"), Some("")), "{refused}");
    assert!(refused["annotations"].get("authorization.k8s.io/decision").is_none(), "{refused}");
    let evs = events();
    for e in &evs {
        assert_eq!((e["kind"].as_str(), e["apiVersion"].as_str()), (Some("Event"), Some("audit.k8s.io/v1")), "{e}");
        if e["objectRef"]["resource"] != "configmaps" {
            assert_ne!(e["stage"], "RequestReceived", "omitted by the policy: {e}");
        }
        assert!(!e["requestURI"].as_str().unwrap().starts_with("/healthz"), "level None: {e}");
    }
    let secret = find(&evs, admin, "create", "secrets", 201).unwrap();
    assert_eq!(secret["level"], "Metadata", "{secret}");
    assert!(secret.get("requestObject").is_none() && secret.get("responseObject").is_none(), "{secret}");
    let text = std::fs::read_to_string(&log).unwrap();
    use base64::Engine;
    assert!(!text.contains("topsecret-value") && !text.contains(&base64::engine::general_purpose::STANDARD.encode("topsecret-value")), "a secret's value reached the audit log");
    let cm = find(&evs, admin, "create", "configmaps", 201).unwrap();
    assert_eq!(cm["level"], "RequestResponse");
    assert_eq!(cm["requestObject"]["data"]["k"], "visible-value", "{cm}");
    assert_eq!(cm["responseObject"]["metadata"]["name"], "cm1", "{cm}");
    assert_eq!(cm["objectRef"]["namespace"], "default");
    // Both stages of the create carry its ID, the one its answer's Audit-Id header gave.
    let stages: Vec<&str> = evs.iter().filter(|e| e["auditID"] == audit_id.as_str()).filter_map(|e| e["stage"].as_str()).collect();
    assert_eq!(stages, ["RequestReceived", "ResponseComplete"], "the events of request {audit_id}");
    assert_eq!(cm["auditID"], audit_id.as_str(), "{cm}");
    let pods = find(&evs, admin, "list", "pods", 200).unwrap();
    assert_eq!(pods["level"], "Request");
    assert_eq!(pods["user"]["groups"], serde_json::json!(["system:masters", "system:authenticated"]));
    assert_eq!(pods["sourceIPs"], serde_json::json!(["127.0.0.1"]), "{pods}");
    let refused = find(&evs, "viewer", "list", "secrets", 403).unwrap();
    assert_eq!(refused["annotations"]["authorization.k8s.io/decision"], "forbid", "{refused}");
    drop(c);

    // A malformed policy: capstan refuses to start, naming the file and the field.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n").unwrap();
    let log = dir.path().join("a.log");
    let (ok, err) = start_fails(&dir, &["--audit-policy-file", path_str(&bad), "--audit-log-path", path_str(&log)]);
    assert!(!ok && err.contains(path_str(&bad)) && err.contains("rules[0].level") && err.contains("line 4"), "{err}");
}

/// A CA made by the test: (certificate PEM, key PEM, issuer).
fn own_ca(cn: &str) -> (String, String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    (cert_pem, key_pem, rcgen::Issuer::new(p, key))
}

#[test]
fn a_given_ca_serving_certificate_and_client_ca_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("given");
    std::fs::create_dir(&files).unwrap();
    let write = |name: &str, text: &str| {
        let p = files.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (ca_pem, ca_key, ca) = own_ca("given-ca");
    // A serving certificate with a name only it carries.
    let mut p = rcgen::CertificateParams::new(vec!["byo.example".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let serving = p.signed_by(&key, &ca).unwrap();
    // Client certificates are trusted from a CA of their own.
    let (client_ca_pem, _, client_ca) = own_ca("client-ca");
    let args = [
        ("--ca-cert-file", write("ca.crt", &ca_pem)),
        ("--ca-key-file", write("ca.key", &ca_key)),
        ("--tls-cert-file", write("serving.crt", &serving.pem())),
        ("--tls-private-key-file", write("serving.key", &key.serialize_pem())),
        ("--client-ca-file", write("client-ca.crt", &client_ca_pem)),
    ];
    let mut extra = vec!["--no-local-node"];
    for (flag, path) in &args {
        extra.extend([*flag, path_str(path)]);
    }
    let c = Cluster::start_with(dir, &extra);
    assert!(!c.dir.path().join("pki").join("ca.crt").exists(), "no CA is made when one is given");
    let kc = client::kubeconfig::load(&c.kubeconfig, None).unwrap();
    assert_eq!(kc.credentials.as_ref().unwrap().ca_pem, ca_pem, "the kubeconfig carries the given CA");

    // The given serving certificate is the one served: a client asking for byo.example accepts it.
    let cfg = tls_config(&ca_pem, None);
    let tcp = std::net::TcpStream::connect(&c.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let conn = rustls::ClientConnection::new(cfg, rustls::pki_types::ServerName::try_from("byo.example").unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /version HTTP/1.1\r\nHost: byo.example\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp);
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&resp));

    // A certificate of the client CA authenticates, as does one of the cluster CA (which
    // signs the components' own); one of a CA given to neither flag does not.
    let alice = tls_config(&ca_pem, Some(client_cert_from(&client_ca, "alice", "system:masters", -1, 1)));
    assert_eq!(https_get(&c.addr, alice, "/api/v1/namespaces").0, 200);
    let from_cluster_ca = tls_config(&ca_pem, Some(client_cert_from(&ca, "bob", "system:masters", -1, 1)));
    assert_eq!(https_get(&c.addr, from_cluster_ca, "/api/v1/namespaces").0, 200);
    let (_, _, stranger) = own_ca("stranger-ca");
    let mallory = tls_config(&ca_pem, Some(client_cert_from(&stranger, "mallory", "system:masters", -1, 1)));
    assert_eq!(https_get(&c.addr, mallory, "/api/v1/namespaces").0, 401);
    drop(c);

    // A client CA file without a certificate in it is refused at start, naming the flag.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let (ok, err) = start_fails(&dir, &["--client-ca-file", path_str(&empty)]);
    assert!(!ok && err.contains("--client-ca-file"), "{err}");
}

/// kubectl with the CA and a bearer token only (no client certificate, which would win).
#[test]
fn kubectl_create_token_issues_service_account_tokens_that_die_with_what_they_are_bound_to() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    c.ok(&["create", "serviceaccount", "ci", "-n", "default"]);
    let token = c.ok(&["create", "token", "ci", "-n", "default"]).trim().to_string();
    let who: serde_json::Value = serde_json::from_slice(&with_token(&c, &token, &["auth", "whoami", "-o", "json"]).stdout).unwrap();
    let u = &who["status"]["userInfo"];
    assert_eq!(u["username"], "system:serviceaccount:default:ci", "{who}");
    assert_eq!(u["groups"], serde_json::json!(["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"]), "{who}");
    let uid = c.ok(&["get", "sa", "ci", "-n", "default", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(u["uid"], uid.as_str(), "{who}");

    // RBAC applies to it as to any user: forbidden until bound.
    let out = with_token(&c, &token, &["get", "pods", "-n", "default"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("User \"system:serviceaccount:default:ci\" cannot list resource \"pods\""), "{}", String::from_utf8_lossy(&out.stderr));
    c.ok(&["create", "rolebinding", "ci-view", "--clusterrole=view", "--serviceaccount=default:ci", "-n", "default"]);
    wait_until("the binding to let the token list pods", || with_token(&c, &token, &["get", "pods", "-n", "default"]).status.success());

    // Its issuer publishes the key, to ServiceAccounts (system:service-account-issuer-discovery).
    let jwks: serde_json::Value = serde_json::from_slice(&with_token(&c, &token, &["get", "--raw", "/openid/v1/jwks"]).stdout).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256", "{jwks}");
    let conf: serde_json::Value = serde_json::from_slice(&with_token(&c, &token, &["get", "--raw", "/.well-known/openid-configuration"]).stdout).unwrap();
    assert_eq!(conf["issuer"], "https://kubernetes.default.svc.cluster.local", "{conf}");

    // A TokenReview says whom it names, and that it is not for another audience.
    let review = |tok: &str, aud: &[&str]| -> serde_json::Value {
        let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": tok, "audiences": aud}});
        let f = c.write("review.json", &body.to_string());
        serde_json::from_str(&c.ok(&["create", "--raw", "/apis/authentication.k8s.io/v1/tokenreviews", "-f", path_str(&f)])).unwrap()
    };
    let r = review(&token, &[]);
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["user"]["username"], "system:serviceaccount:default:ci", "{r}");
    assert_eq!(review(&token, &["vault"])["status"]["authenticated"], serde_json::Value::Null);

    // Bad input: too short a lifetime, a missing ServiceAccount, a token for another
    // audience, an altered token.
    assert!(c.fails(&["create", "token", "ci", "-n", "default", "--duration", "5m"]).contains("may not specify a duration less than 10 minutes"));
    assert!(c.fails(&["create", "token", "nobody", "-n", "default"]).contains("serviceaccounts \"nobody\" not found"));
    let vault = c.ok(&["create", "token", "ci", "-n", "default", "--audience", "vault"]).trim().to_string();
    assert!(String::from_utf8_lossy(&with_token(&c, &vault, &["auth", "whoami"]).stderr).contains("Unauthorized"));
    let mut altered = token.clone().into_bytes();
    let i = altered.len() - 5;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    assert!(String::from_utf8_lossy(&with_token(&c, std::str::from_utf8(&altered).unwrap(), &["auth", "whoami"]).stderr).contains("Unauthorized"));

    // A token bound to a pod works while the pod exists and not after it is deleted.
    c.ok(&["run", "p", "--image=x", "-n", "default", "--overrides", r#"{"spec":{"serviceAccountName":"ci"}}"#]);
    let bound = c.ok(&["create", "token", "ci", "-n", "default", "--bound-object-kind", "Pod", "--bound-object-name", "p"]).trim().to_string();
    let who: serde_json::Value = serde_json::from_slice(&with_token(&c, &bound, &["auth", "whoami", "-o", "json"]).stdout).unwrap();
    assert_eq!(who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"], serde_json::json!(["p"]), "{who}");
    assert!(c.fails(&["create", "token", "default", "-n", "default", "--bound-object-kind", "Pod", "--bound-object-name", "p"]).contains("different serviceaccount name"));
    c.ok(&["delete", "pod", "p", "-n", "default", "--grace-period=0", "--force"]);
    assert!(String::from_utf8_lossy(&with_token(&c, &bound, &["auth", "whoami"]).stderr).contains("Unauthorized"), "a token of a deleted pod");

    // Deleting the ServiceAccount ends every token it had.
    assert!(with_token(&c, &token, &["auth", "whoami"]).status.success());
    c.ok(&["delete", "serviceaccount", "ci", "-n", "default"]);
    assert!(String::from_utf8_lossy(&with_token(&c, &token, &["auth", "whoami"]).stderr).contains("Unauthorized"), "a token of a deleted ServiceAccount");
}

/// An EncryptionConfiguration for secrets with `providers` (YAML list items).
fn encryption_config(dir: &std::path::Path, name: &str, providers: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}")).unwrap();
    p
}

/// The raw stored value of `key`, read with `capstan kv get` from a stopped cluster's store.
fn raw_value(data_dir: &std::path::Path, key: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_capstan")).args(["kv", "--data-dir", path_str(&data_dir.join("store")), "get", key]).output().unwrap();
    assert!(out.status.success(), "kv get {key}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn secrets_are_encrypted_at_rest_and_a_key_rotation_by_rewriting_works() {
    let files = tempfile::tempdir().unwrap();
    let key = |b: u8| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    };
    let one = encryption_config(files.path(), "one.yaml", &format!("  - aescbc:\n      keys:\n      - name: key1\n        secret: {}\n", key(1)));
    let both = encryption_config(files.path(), "both.yaml", &format!("  - aesgcm:\n      keys:\n      - name: key2\n        secret: {}\n  - aescbc:\n      keys:\n      - name: key1\n        secret: {}\n", key(2), key(1)));
    let two = encryption_config(files.path(), "two.yaml", &format!("  - aesgcm:\n      keys:\n      - name: key2\n        secret: {}\n", key(2)));
    let secret = "/registry/core/secrets/default/db";
    let read_password = |c: &Cluster| c.ok(&["get", "secret", "db", "-n", "default", "-o", "jsonpath={.data.password}"]);

    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--encryption-provider-config", path_str(&one)]);
    c.ok(&["create", "secret", "generic", "db", "-n", "default", "--from-literal=password=hunter2-plaintext"]);
    c.ok(&["create", "configmap", "cm", "-n", "default", "--from-literal=note=plain-configmap"]);
    assert_eq!(read_password(&c), "aHVudGVyMi1wbGFpbnRleHQ=", "the API serves the secret decrypted");
    let dir = c.stop();
    let raw = raw_value(dir.path(), secret);
    assert!(raw.contains("k8s:enc:aescbc:v1:key1:"), "{raw}");
    assert!(!raw.contains("hunter2") && !raw.contains("aHVudGVyMi1wbGFpbnRleHQ"), "the secret is plaintext in the store: {raw}");
    assert!(raw_value(dir.path(), "/registry/core/configmaps/default/cm").contains("plain-configmap"), "configmaps are not named, so stay plaintext");

    // Rotation: a new first key, the old one still read; rewrite everything; drop the old key.
    let c = Cluster::start_with(dir, &["--no-local-node", "--encryption-provider-config", path_str(&both)]);
    assert_eq!(read_password(&c), "aHVudGVyMi1wbGFpbnRleHQ=");
    let all = c.ok(&["get", "secrets", "-A", "-o", "json"]);
    let f = c.write("all.json", &all);
    c.ok(&["replace", "-f", path_str(&f)]);
    let dir = c.stop();
    assert!(raw_value(dir.path(), secret).contains("k8s:enc:aesgcm:v1:key2:"), "rewritten with the new key");
    let c = Cluster::start_with(dir, &["--no-local-node", "--encryption-provider-config", path_str(&two)]);
    assert_eq!(read_password(&c), "aHVudGVyMi1wbGFpbnRleHQ=", "readable with the new key alone");
    let dir = c.stop();

    // Without the key, reading the secret is a clear error, and the server keeps serving.
    let c = Cluster::start_with(dir, &["--no-local-node"]);
    let err = c.fails(&["get", "secret", "db", "-n", "default"]);
    assert!(err.contains("aesgcm key \"key2\""), "{err}");
    assert!(c.ok(&["get", "configmap", "cm", "-n", "default", "-o", "name"]).contains("configmap/cm"));
    drop(c);

    // A malformed configuration: capstan refuses to start, naming the file and the field.
    let bad = encryption_config(files.path(), "bad.yaml", "  - aescbc:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n");
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = start_fails(&dir, &["--encryption-provider-config", path_str(&bad)]);
    assert!(!ok && err.contains(path_str(&bad)) && err.contains("resources[0].providers[0].aescbc.keys[0].secret"), "{err}");
}

/// A TLS connection to `c` as the kubeconfig's admin, reads bounded by WAIT.
fn admin_stream(c: &Cluster) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let kc = client::kubeconfig::load(&c.kubeconfig, None).unwrap();
    let cfg = Arc::new(client::tls::client_config(&kc.credentials.unwrap()).unwrap());
    let tcp = std::net::TcpStream::connect(&c.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let conn = rustls::ClientConnection::new(cfg, rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Everything the server sends until it closes the connection; panics if it has not within
/// WAIT.
fn read_until_closed(s: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>) -> String {
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    if let Err(e) = r {
        assert!(e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut, "the server did not close the connection within {WAIT:?}: {text}");
    }
    text
}

#[test]
fn requests_have_deadlines_and_connections_have_limits() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--request-timeout", "1s", "--idle-connection-timeout", "1s"]);
    // A body announced and never sent: 504 at the deadline, as Kubernetes answers.
    let mut s = admin_stream(&c);
    s.write_all(b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\":").unwrap();
    let resp = read_until_closed(&mut s);
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp}");
    assert!(resp.contains("\"reason\":\"Timeout\"") && resp.contains("request did not complete within requested timeout"), "{resp}");
    // ... and the server keeps serving.
    assert!(c.ok(&["get", "ns", "default", "-o", "name"]).contains("namespace/default"));
    // A timeout the client asks for is honoured (when shorter); a malformed one is a 400.
    assert!(c.fails(&["get", "--raw", "/api/v1/namespaces?timeout=ten"]).contains("invalid timeout"));
    assert!(c.ok(&["get", "--raw", "/api/v1/namespaces?timeout=5s"]).contains("NamespaceList"));

    // Watches are exempt from the deadline; timeoutSeconds ends them, a negative one at once.
    let mut s = admin_stream(&c);
    s.write_all(b"GET /api/v1/namespaces?watch=true&timeoutSeconds=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let resp = read_until_closed(&mut s);
    assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("0\r\n\r\n"), "the watch ended: {resp}");
    let mut s = admin_stream(&c);
    s.write_all(b"GET /api/v1/namespaces?watch=true&timeoutSeconds=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let resp = read_until_closed(&mut s);
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("\"ADDED\"") && resp.ends_with("0\r\n\r\n"), "a watch ends at its timeoutSeconds: {resp}");
    assert!(c.fails(&["get", "--raw", "/api/v1/namespaces?watch=true&timeoutSeconds=soon"]).contains("timeoutSeconds"));

    // Headers past 1 MiB: 431, and the connection closes.
    let mut s = admin_stream(&c);
    let big = format!("GET /version HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1100 << 10));
    let _ = s.write_all(big.as_bytes());
    let resp = read_until_closed(&mut s);
    assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 431"), "{resp}");

    // A kept-alive connection with nothing in flight is closed after the idle timeout.
    let mut s = admin_stream(&c);
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let resp = read_until_closed(&mut s);
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("gitVersion"), "closed by the server once idle: {resp}");

    // Each limit is counted.
    let metrics = c.ok(&["get", "--raw", "/metrics"]);
    let count = |name: &str| metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).unwrap_or(0);
    assert!(count("apiserver_request_timeouts_total") >= 1, "{metrics}");
    assert!(count("apiserver_idle_connections_closed_total") >= 1, "{metrics}");
}

#[test]
fn a_kubelet_gets_what_its_node_needs_and_nothing_of_another_node() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let n1 = As::new(&c, "system:node:n1", "system:nodes");
    let refused = |out: std::process::Output| {
        assert!(!out.status.success(), "allowed: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Its own Node: it registers it and updates it; another node's it may read, not change.
    let node = |name: &str| format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}"}}}}}}"#);
    let f1 = c.write("n1.json", &node("n1"));
    assert!(n1.run(&["create", "-f", path_str(&f1)]).status.success());
    let f2 = c.write("n2.json", &node("n2"));
    assert!(refused(n1.run(&["create", "-f", path_str(&f2)])).contains("is not allowed to modify node \"n2\""));
    c.ok(&["create", "-f", path_str(&f2)]);
    assert!(n1.run(&["label", "node", "n1", "a=b"]).status.success());
    assert!(n1.run(&["get", "node", "n2"]).status.success(), "nodes are readable");
    assert!(refused(n1.run(&["label", "node", "n2", "a=b"])).contains("cannot modify node 'n2'"));
    assert!(refused(n1.run(&["label", "node", "n1", "node-restriction.kubernetes.io/pool=x"])).contains("node-restriction.kubernetes.io/pool"));
    // Its lease, not another's.
    let lease = |name: &str| format!(r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}","namespace":"kube-node-lease"}},"spec":{{"holderIdentity":"{name}"}}}}"#);
    assert!(n1.run(&["create", "-f", path_str(&c.write("l1.json", &lease("n1")))]).status.success());
    assert!(refused(n1.run(&["create", "-f", path_str(&c.write("l2.json", &lease("n2")))])).contains("same name as the requesting node"));

    // Pods: one on each node, each using a secret; n1 sees its own pod and secret only.
    c.ok(&["create", "secret", "generic", "s1", "-n", "default", "--from-literal=a=1"]);
    c.ok(&["create", "secret", "generic", "s2", "-n", "default", "--from-literal=a=2"]);
    let pod = |name: &str, node: &str, secret: &str| {
        format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"x","envFrom":[{{"secretRef":{{"name":"{secret}"}}}}]}}]}}}}"#)
    };
    c.ok(&["create", "-f", path_str(&c.write("p1.json", &pod("p1", "n1", "s1")))]);
    c.ok(&["create", "-f", path_str(&c.write("p2.json", &pod("p2", "n2", "s2")))]);
    wait_until("n1 to see the secret its pod uses", || n1.run(&["get", "secret", "s1", "-n", "default"]).status.success());
    assert!(n1.run(&["get", "pod", "p1", "-n", "default"]).status.success());
    let err = refused(n1.run(&["get", "secret", "s2", "-n", "default"]));
    assert!(err.contains("secrets \"s2\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\"") && err.contains("no relationship found between node 'n1' and this object"), "{err}");
    assert!(refused(n1.run(&["get", "pod", "p2", "-n", "default"])).contains("of another node"));
    assert!(refused(n1.run(&["get", "secrets", "-n", "default"])).contains("forbidden"));
    // Listing pods: only its own, by field selector.
    let mine = n1.run(&["get", "pods", "-A", "--field-selector", "spec.nodeName=n1", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&mine.stdout).trim(), "pod/p1", "{}", String::from_utf8_lossy(&mine.stderr));
    assert!(refused(n1.run(&["get", "pods", "-A"])).contains("spec.nodeName field selector"));
    assert!(refused(n1.run(&["get", "pods", "-A", "--field-selector", "spec.nodeName=n2"])).contains("forbidden"));
    // Its pods' status it may write; another node's pod it may not delete.
    assert!(refused(n1.run(&["delete", "pod", "p2", "-n", "default"])).contains("of another node"));
    assert!(n1.run(&["annotate", "pod", "p1", "-n", "default", "x=y"]).status.success() == false, "a kubelet does not update pod specs");
    let running = |name: &str| {
        let mut p: serde_json::Value = serde_json::from_str(&c.ok(&["get", "pod", name, "-n", "default", "-o", "json"])).unwrap();
        p["status"]["phase"] = serde_json::json!("Running");
        c.write(&format!("{name}-status.json"), &p.to_string())
    };
    let (s1, s2) = (running("p1"), running("p2"));
    let out = n1.run(&["replace", "--raw", "/api/v1/namespaces/default/pods/p1/status", "-f", path_str(&s1)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(refused(n1.run(&["replace", "--raw", "/api/v1/namespaces/default/pods/p2/status", "-f", path_str(&s2)])).contains("of another node"));
    // kubectl auth can-i agrees for the node, too.
    assert_eq!(String::from_utf8_lossy(&n1.run(&["auth", "can-i", "get", "secret/s2", "-n", "default"]).stdout).trim(), "no");
    assert_eq!(String::from_utf8_lossy(&n1.run(&["auth", "can-i", "get", "secret/s1", "-n", "default"]).stdout).trim(), "yes");
    // It creates only mirror pods bound to itself.
    let plain = c.write("plain.json", r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"own","namespace":"default"},"spec":{"nodeName":"n1","containers":[{"name":"c","image":"x"}]}}"#);
    assert!(refused(n1.run(&["create", "-f", path_str(&plain)])).contains("can only create mirror pods"));
    let mirror = c.write("mirror.json", r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"static-n1","namespace":"default","annotations":{"kubernetes.io/config.mirror":"abc"}},"spec":{"nodeName":"n1","containers":[{"name":"c","image":"x"}]}}"#);
    assert!(n1.run(&["create", "-f", path_str(&mirror)]).status.success());
    assert!(n1.run(&["delete", "pod", "p1", "-n", "default", "--wait=false"]).status.success(), "its own pod");
}

#[test]
fn rbac_refuses_to_grant_what_the_granter_does_not_hold_and_answers_access_reviews() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let dev = As::new(&c, "dev", "devs");
    c.ok(&["create", "namespace", "team"]);
    c.ok(&["create", "rolebinding", "dev-admin", "--clusterrole=admin", "--user=dev", "-n", "team"]);
    wait_until("dev's admin binding to take effect", || dev.run(&["get", "roles", "-n", "team"]).status.success());
    let refused = |out: std::process::Output| {
        assert!(!out.status.success(), "allowed: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A role with permissions it holds: allowed; with one it does not: refused, naming it.
    assert!(dev.run(&["create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", "team"]).status.success());
    let err = refused(dev.run(&["create", "role", "quota-maker", "--verb=create", "--resource=resourcequotas", "-n", "team"]));
    assert!(err.contains("roles.rbac.authorization.k8s.io \"quota-maker\" is forbidden: user \"dev\"") && err.contains("is attempting to grant RBAC permissions not currently held") && err.contains("Resources:[\"resourcequotas\"], Verbs:[\"create\"]"), "{err}");
    // A binding to a role it holds: allowed; to cluster-admin: refused.
    assert!(dev.run(&["create", "rolebinding", "viewers", "--clusterrole=view", "--user=eve", "-n", "team"]).status.success());
    assert!(refused(dev.run(&["create", "rolebinding", "grab", "--clusterrole=cluster-admin", "--user=dev", "-n", "team"])).contains("not currently held"));
    // ... unless it may `bind` cluster-admin.
    c.ok(&["create", "clusterrole", "binder", "--verb=bind", "--resource=clusterroles", "--resource-name=cluster-admin"]);
    c.ok(&["create", "rolebinding", "dev-binder", "--clusterrole=binder", "--user=dev", "-n", "team"]);
    wait_until("the bind verb to take effect", || dev.run(&["create", "rolebinding", "grab", "--clusterrole=cluster-admin", "--user=dev", "-n", "team"]).status.success());

    // SubjectAccessReview and LocalSubjectAccessReview answer for another user.
    let review = |path: &str, body: serde_json::Value| -> serde_json::Value {
        let f = c.write("sar.json", &body.to_string());
        serde_json::from_str(&c.ok(&["create", "--raw", path, "-f", path_str(&f)])).unwrap()
    };
    let sar = |ns: &str| serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "eve", "groups": ["system:authenticated"], "resourceAttributes": {"verb": "list", "resource": "pods", "namespace": ns}}});
    assert_eq!(review("/apis/authorization.k8s.io/v1/subjectaccessreviews", sar("team"))["status"]["allowed"], true);
    assert_eq!(review("/apis/authorization.k8s.io/v1/subjectaccessreviews", sar("default"))["status"]["allowed"], false);
    let mut local = sar("team");
    local["kind"] = serde_json::json!("LocalSubjectAccessReview");
    let r = review("/apis/authorization.k8s.io/v1/namespaces/team/localsubjectaccessreviews", local.clone());
    assert_eq!((r["status"]["allowed"].clone(), r["metadata"]["namespace"].clone()), (serde_json::json!(true), serde_json::json!("team")), "{r}");
    let f = c.write("lsar.json", &local.to_string());
    assert!(c.fails(&["create", "--raw", "/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews", "-f", path_str(&f)]).contains("must match the namespace"));
    // Without the right to create SubjectAccessReviews (admin has it only as Local ones).
    let f = c.write("sar2.json", &sar("team").to_string());
    assert!(refused(dev.run(&["create", "--raw", "/apis/authorization.k8s.io/v1/subjectaccessreviews", "-f", path_str(&f)])).contains("forbidden"));
}

#[test]
fn bootstrap_tokens_authenticate_until_they_expire_and_expired_ones_are_cleaned_up() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let token_secret = |id: &str, expiration: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-{id}\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: {id}\n  token-secret: 0123456789abcdef\n  expiration: \"{expiration}\"\n  usage-bootstrap-authentication: \"true\"\n  auth-extra-groups: system:bootstrappers:kubeadm:default-node-token\n"
        )
    };
    c.ok(&["apply", "-f", path_str(&c.write("good.yaml", &token_secret("abcdef", "2099-01-01T00:00:00Z")))]);
    // stringData is stored as data, as in Kubernetes.
    let stored: serde_json::Value = serde_json::from_str(&c.ok(&["get", "secret", "bootstrap-token-abcdef", "-n", "kube-system", "-o", "json"])).unwrap();
    assert!(stored.get("stringData").is_none() && stored["data"]["token-id"] == "YWJjZGVm", "{stored}");
    let who: serde_json::Value = serde_json::from_slice(&with_token(&c, "abcdef.0123456789abcdef", &["auth", "whoami", "-o", "json"]).stdout).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:bootstrap:abcdef", "{who}");
    assert_eq!(who["status"]["userInfo"]["groups"], serde_json::json!(["system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token", "system:authenticated"]));
    assert!(String::from_utf8_lossy(&with_token(&c, "abcdef.0123456789abcdee", &["auth", "whoami"]).stderr).contains("Unauthorized"));
    // Expired: refused, and the token cleaner deletes its Secret.
    c.ok(&["apply", "-f", path_str(&c.write("old.yaml", &token_secret("zzzzzz", "2020-01-01T00:00:00Z")))]);
    assert!(String::from_utf8_lossy(&with_token(&c, "zzzzzz.0123456789abcdef", &["auth", "whoami"]).stderr).contains("Unauthorized"));
    wait_until("the token cleaner to delete the expired token's Secret", || {
        c.kubectl_with(KUBECTL, &["get", "secret", "bootstrap-token-zzzzzz", "-n", "kube-system"]).status.code() == Some(1)
    });
    assert!(c.ok(&["get", "secrets", "-n", "kube-system", "-o", "name"]).contains("bootstrap-token-abcdef"), "the unexpired one stays");
}

#[test]
fn pod_security_admission_enforces_and_warns_by_namespace_labels() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    c.ok(&["create", "namespace", "secure"]);
    c.ok(&["label", "namespace", "secure", "pod-security.kubernetes.io/enforce=baseline", "pod-security.kubernetes.io/warn=restricted"]);
    // A privileged pod is refused, every violation named.
    let privileged = c.write("priv.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: root, namespace: secure}\nspec:\n  hostNetwork: true\n  containers:\n  - name: c\n    image: x\n    securityContext: {privileged: true}\n");
    let err = c.fails(&["apply", "-f", path_str(&privileged)]);
    assert!(err.contains("pods \"root\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true), privileged (container \"c\" must not set securityContext.privileged=true)"), "{err}");
    // A plain pod passes baseline and is warned about restricted.
    let out = c.kubectl_with(KUBECTL, &["run", "plain", "--image=x", "-n", "secure"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(warned.contains("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"), "{warned}");
    // A Deployment whose template is privileged is created, with the warning.
    let out = c.kubectl_with(KUBECTL, &["create", "deployment", "d", "--image=x", "-n", "secure"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("would violate PodSecurity"), "{}", String::from_utf8_lossy(&out.stderr));
    // Elsewhere nothing is checked; a bad label value is refused.
    let anywhere = c.write("priv2.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: root, namespace: default}\nspec:\n  hostNetwork: true\n  containers:\n  - name: c\n    image: x\n    securityContext: {privileged: true}\n");
    c.ok(&["apply", "-f", path_str(&anywhere)]);
    assert!(c.fails(&["label", "namespace", "default", "pod-security.kubernetes.io/enforce=strict"]).contains("must be one of privileged, baseline, restricted"));
    // A version label pins the checks: restricted as of 1.22 does not yet forbid runAsUser 0
    // (1.23 added that check); the latest does.
    c.ok(&["create", "namespace", "pinned"]);
    c.ok(&["label", "namespace", "pinned", "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=v1.22"]);
    let root = |name: &str| {
        c.write(&format!("{name}.yaml"), &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: pinned}}\nspec:\n  securityContext: {{runAsNonRoot: true, runAsUser: 0, seccompProfile: {{type: RuntimeDefault}}}}\n  containers:\n  - name: c\n    image: x\n    securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}\n"))
    };
    c.ok(&["apply", "-f", path_str(&root("old-rules"))]);
    c.ok(&["label", "namespace", "pinned", "--overwrite", "pod-security.kubernetes.io/enforce-version=latest"]);
    let err = c.fails(&["apply", "-f", path_str(&root("new-rules"))]);
    assert!(err.contains("violates PodSecurity \"restricted:latest\": runAsUser=0 (pod must not set runAsUser=0)"), "{err}");
    c.ok(&["label", "namespace", "pinned", "--overwrite", "pod-security.kubernetes.io/enforce-version=v1.23"]);
    let err = c.fails(&["apply", "-f", path_str(&root("new-rules"))]);
    assert!(err.contains("violates PodSecurity \"restricted:v1.23\": runAsUser=0"), "{err}");
}

/// A TLS connection to `c` presenting `who`'s certificate, reads bounded by WAIT.
fn stream_as(c: &Cluster, who: &As) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let creds = client::tls::Credentials { ca_pem: read(&who.files[0]), cert_pem: Some(read(&who.files[1])), key_pem: Some(read(&who.files[2])) };
    let cfg = Arc::new(client::tls::client_config(&creds).unwrap());
    let tcp = std::net::TcpStream::connect(&c.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let conn = rustls::ClientConnection::new(cfg, rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn priority_and_fairness_keeps_a_flooding_user_from_the_seats_of_others() {
    // Two seats in all, so that each priority level has one.
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--max-requests-inflight", "1", "--max-mutating-requests-inflight", "1"]);
    // The default levels and schemas are there, as in Kubernetes.
    let levels = c.ok(&["get", "prioritylevelconfigurations", "-o", "name"]);
    for l in ["exempt", "catch-all", "global-default", "workload-low", "node-high"] {
        assert!(levels.contains(&format!("prioritylevelconfiguration.flowcontrol.apiserver.k8s.io/{l}")), "{levels}");
    }
    // The flooder gets a level of its own: one seat, one queue of one.
    let config = c.write("flood.yaml", "apiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: PriorityLevelConfiguration\nmetadata: {name: tiny}\nspec:\n  type: Limited\n  limited:\n    nominalConcurrencyShares: 1\n    limitResponse: {type: Queue, queuing: {queues: 1, handSize: 1, queueLengthLimit: 1}}\n---\napiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: FlowSchema\nmetadata: {name: flood}\nspec:\n  matchingPrecedence: 50\n  priorityLevelConfiguration: {name: tiny}\n  distinguisherMethod: {type: ByUser}\n  rules:\n  - subjects: [{kind: User, user: {name: flooder}}]\n    resourceRules: [{verbs: ['*'], apiGroups: ['*'], resources: ['*'], namespaces: ['*'], clusterScope: true}]\n");
    c.ok(&["apply", "-f", path_str(&config)]);
    let flooder = As::new(&c, "flooder", "devs");
    let writer = As::new(&c, "writer", "devs");
    c.ok(&["create", "rolebinding", "devs-edit", "--clusterrole=edit", "--group=devs", "-n", "default"]);
    wait_until("the binding to let the flooder list configmaps", || flooder.run(&["get", "configmaps", "-n", "default"]).status.success());
    let metric = |name: &str| {
        let m = c.ok(&["get", "--raw", "/metrics"]);
        m.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).unwrap_or(0)
    };
    wait_until("the tiny level to be configured", || metric("apiserver_flowcontrol_nominal_limit_seats{priority_level=\"tiny\"}") == 1);

    // The flooder holds its seat: a create whose body never finishes.
    let mut holder = stream_as(&c, &flooder);
    holder.write_all(b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{").unwrap();
    holder.flush().unwrap();
    wait_until("the flooder's held request to take the seat", || metric("apiserver_flowcontrol_current_executing_seats{priority_level=\"tiny\"}") == 1);
    // Its next request waits in the queue ...
    let mut queued = stream_as(&c, &flooder);
    queued.write_all(b"GET /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    queued.flush().unwrap();
    wait_until("the flooder's second request to be queued", || metric("apiserver_flowcontrol_current_inqueue_requests{priority_level=\"tiny\"}") == 1);
    // ... and the one after is refused, as Kubernetes refuses it.
    let mut refused = stream_as(&c, &flooder);
    refused.write_all(b"GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let resp = read_until_closed(&mut refused);
    assert!(resp.starts_with("HTTP/1.1 429") && resp.to_ascii_lowercase().contains("retry-after: 1") && resp.contains("\"reason\":\"TooManyRequests\""), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("x-kubernetes-pf-prioritylevel-uid"), "{resp}");
    // Meanwhile the writer, in another level, is served.
    let mut w = stream_as(&c, &writer);
    let body = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"w"}}"#;
    w.write_all(format!("POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).unwrap();
    let resp = read_until_closed(&mut w);
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("x-kubernetes-pf-flowschema-uid"), "{resp}");
    // When the held request ends, the queued one is started.
    drop(holder);
    let resp = read_until_closed(&mut queued);
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("ConfigMapList"), "{resp}");
    assert!(metric("apiserver_flowcontrol_rejected_requests_total{priority_level=\"tiny\",reason=\"queue-full\"}") >= 1);
}

/// The audit event of the test's unauthenticated request.
fn evs_401(evs: &[serde_json::Value]) -> serde_json::Value {
    evs.iter().find(|e| e["responseStatus"]["code"] == 401).cloned().expect("a 401 event")
}
