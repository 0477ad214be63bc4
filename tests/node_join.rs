//! A node from another machine: `capstan node join --token` gets its client certificate
//! through a CertificateSigningRequest that the controllers approve (kubeadm's bootstrap
//! group is bound to auto-approval) and sign, then runs pods as `system:node:NAME`.

mod common;

use common::*;

const CAPSTAN: &str = env!("CARGO_BIN_EXE_capstan");

/// A child process stopped when the test ends, however it ends.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn bootstrap_token(c: &Cluster, id: &str, secret: &str, groups: Option<&str>) {
    let mut args = vec![
        "create".to_string(), "secret".into(), "generic".into(), format!("bootstrap-token-{id}"), "-n".into(), "kube-system".into(),
        "--type".into(), "bootstrap.kubernetes.io/token".into(),
        format!("--from-literal=token-id={id}"), format!("--from-literal=token-secret={secret}"), "--from-literal=usage-bootstrap-authentication=true".into(),
    ];
    if let Some(g) = groups {
        args.push(format!("--from-literal=auth-extra-groups={g}"));
    }
    c.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn join(c: &Cluster, dir: &std::path::Path, token: &str, name: &str) -> std::process::Command {
    let ca = c.dir.path().join("pki").join("ca.crt");
    let mut cmd = std::process::Command::new(CAPSTAN);
    cmd.args(["node", "join", "--server", &format!("https://{}", c.addr), "--token", token, "--certificate-authority", path_str(&ca), "--node-name", name, "--data-dir"]).arg(dir);
    // The node serves the cluster's own Service range (the harness gives each its own).
    cmd.args(["--service-cluster-ip-range", &ranges(c).1]);
    cmd
}

/// The pod and Service ranges the harness gave cluster `c`.
fn ranges(c: &Cluster) -> (String, String) {
    let r = std::fs::read_to_string(c.dir.path().join(".test-ranges")).unwrap();
    let (p, s) = r.split_once(' ').unwrap();
    (p.to_string(), s.to_string())
}

#[test]
fn a_node_joins_with_a_bootstrap_token_through_an_approved_certificate_request() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    // A token without kubeadm's node group may not even ask.
    bootstrap_token(&c, "zzzzzz", "zzzzzzzzzzzzzzzz", None);
    let node_dir = tempfile::tempdir().unwrap();
    let refused = join(&c, node_dir.path(), "zzzzzz.zzzzzzzzzzzzzzzz", "stranger").output().unwrap();
    assert!(!refused.status.success(), "joined without the bootstrap group");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("forbidden"), "{}", String::from_utf8_lossy(&refused.stderr));

    bootstrap_token(&c, "abcdef", "0123456789abcdef", Some("system:bootstrappers:kubeadm:default-node-token"));
    let _node = Stopped(join(&c, node_dir.path(), "abcdef.0123456789abcdef", "joined").stdout(std::process::Stdio::null()).spawn().unwrap());
    wait_until("node joined registered and Ready", || {
        c.kubectl_with(KUBECTL, &["get", "node", "joined", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]).stdout == b"True"
    });
    // Its request: from the bootstrap token's user, approved automatically, issued.
    let csrs: serde_json::Value = serde_json::from_str(&c.ok(&["get", "csr", "-o", "json"])).unwrap();
    let mine = csrs["items"].as_array().unwrap().iter().find(|r| r["spec"]["username"] == "system:bootstrap:abcdef").expect("the node's request");
    assert_eq!(mine["spec"]["signerName"], "kubernetes.io/kube-apiserver-client-kubelet");
    let approved = mine["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Approved").expect("approved");
    assert_eq!(approved["reason"], "AutoApproved");
    assert!(mine["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty()), "issued");
    assert!(c.ok(&["get", "csr", mine["metadata"]["name"].as_str().unwrap()]).contains("Approved,Issued"));
    // The node's certificate is system:node:joined, and the node runs pods.
    let crt = node_dir.path().join("pki").join("kubelet-client-current.pem");
    let pem = std::fs::read_to_string(&crt).unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let user = apiserver::authn::user_of_certificate(&der).unwrap();
    assert_eq!((user.name.as_str(), user.groups[0].as_str()), ("system:node:joined", "system:nodes"));
    // The cluster's node IPAM gave it the first /24 of the pod range (no other node here),
    // and its pods live in it.
    let first = ranges(&c).0.replace(".0.0/16", ".0.0/24");
    assert_eq!(c.ok(&["get", "node", "joined", "-o", "jsonpath={.spec.podCIDR}"]), first);
    c.ok(&["run", "hello", "--image=busybox", "--restart=Never", r#"--overrides={"spec":{"nodeName":"joined"}}"#, "--command", "--", "sh", "-c", "echo hello from the joined node"]);
    wait_until("the pod on the joined node to succeed", || c.kubectl_with(KUBECTL, &["get", "pod", "hello", "-o", "jsonpath={.status.phase}"]).stdout == b"Succeeded");
    assert!(c.ok(&["logs", "hello"]).contains("hello from the joined node"));
    let ip = c.ok(&["get", "pod", "hello", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip.starts_with(first.trim_end_matches("0/24")), "pod IP {ip} outside the node's range {first}");
    // An administrator can deny a request; the controllers then leave it alone.
    // An administrator approves or denies other requests with kubectl (protobuf bodies to
    // the approval subresource); an approved client request is signed.
    let other = tempfile::tempdir().unwrap();
    for user in ["alice", "bob"] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, user);
        let req = p.serialize_request(&key).unwrap().pem().unwrap();
        use base64::Engine;
        let manifest = other.path().join(format!("{user}.yaml"));
        std::fs::write(&manifest, format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {user}}}\nspec:\n  request: {}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n", base64::engine::general_purpose::STANDARD.encode(req))).unwrap();
        c.ok(&["apply", "-f", path_str(&manifest)]);
    }
    c.ok(&["certificate", "deny", "alice"]);
    c.ok(&["certificate", "approve", "bob"]);
    wait_until("bob's certificate issued", || c.ok(&["get", "csr", "bob"]).contains("Approved,Issued"));
    assert!(c.ok(&["get", "csr", "alice"]).contains("Denied"));
    assert!(!c.ok(&["get", "csr", "alice"]).contains("Issued"));
    // A kubelet serving certificate (kubernetes.io/kubelet-serving, never approved by the
    // controllers): once approved, signed for server auth with the names it asked for; one
    // that also asks for client auth is Failed.
    for (name, usages) in [("serving", "[digital signature, key encipherment, server auth]"), ("serving-bad", "[digital signature, server auth, client auth]")] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["joined.example".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "system:node:joined");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
        p.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let req = p.serialize_request(&key).unwrap().pem().unwrap();
        use base64::Engine;
        let manifest = other.path().join(format!("{name}.yaml"));
        std::fs::write(&manifest, format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {}\n  signerName: kubernetes.io/kubelet-serving\n  usages: {usages}\n", base64::engine::general_purpose::STANDARD.encode(req))).unwrap();
        c.ok(&["apply", "-f", path_str(&manifest)]);
        c.ok(&["certificate", "approve", name]);
    }
    wait_until("the serving certificate issued", || c.ok(&["get", "csr", "serving"]).contains("Approved,Issued"));
    wait_until("the request asking for client auth failed", || c.ok(&["get", "csr", "serving-bad"]).contains("Failed"));
    let issued: serde_json::Value = serde_json::from_str(&c.ok(&["get", "csr", "serving", "-o", "json"])).unwrap();
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD.decode(issued["status"]["certificate"].as_str().unwrap()).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = p.parse_x509().unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth, "{eku:?}");
    let names = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
    assert!(names.contains("joined.example") && names.contains("127, 0, 0, 1"), "{names}");
}

/// The node's certificate: (user, notBefore, notAfter, serial).
fn node_certificate(dir: &std::path::Path) -> Option<(String, i64, i64, String)> {
    let pem = std::fs::read_to_string(dir.join("pki").join("kubelet-client-current.pem")).ok()?;
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    let user = apiserver::authn::user_of_certificate(&p.contents).ok()?.name;
    Some((user, cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp(), cert.raw_serial_as_string()))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// As the kubelet with `--rotate-certificates`: between 70% and 90% of its certificate's life
/// (30 s here, `--cluster-signing-duration-seconds`), the node asks for a new one with the old
/// one, is approved as `selfnodeclient`, and goes on working after the first has expired (the
/// API server refuses an expired certificate on every request, open connections included).
#[test]
fn a_joined_node_rotates_its_certificate_and_works_past_the_first_ones_expiry() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--cluster-signing-duration-seconds", "30"]);
    bootstrap_token(&c, "rotate", "0123456789abcdef", Some("system:bootstrappers:kubeadm:default-node-token"));
    let node_dir = tempfile::tempdir().unwrap();
    let _node = Stopped(join(&c, node_dir.path(), "rotate.0123456789abcdef", "turning").stdout(std::process::Stdio::null()).spawn().unwrap());
    wait_until("node turning Ready", || {
        c.kubectl_with(KUBECTL, &["get", "node", "turning", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]).stdout == b"True"
    });
    let first = node_certificate(node_dir.path()).expect("the first certificate");
    assert_eq!(first.0, "system:node:turning");
    assert!(first.2 - first.1 <= 33, "a 30 s certificate (backdated by a tenth): {first:?}");
    wait_until_within(std::time::Duration::from_secs(90), "the node's certificate rotated", || node_certificate(node_dir.path()).is_some_and(|n| n.3 != first.3));
    let second = node_certificate(node_dir.path()).unwrap();
    assert_eq!(second.0, "system:node:turning");
    assert!(second.1 >= first.1 + (first.2 - first.1) * 6 / 10, "renewed late in the first one's life: {first:?} then {second:?}");
    let csrs: serde_json::Value = serde_json::from_str(&c.ok(&["get", "csr", "-o", "json"])).unwrap();
    let renewal = csrs["items"].as_array().unwrap().iter().find(|r| r["spec"]["username"] == "system:node:turning").expect("a request from the node itself");
    assert!(renewal["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Approved" && c["reason"] == "AutoApproved"), "{renewal}");
    // Past the first certificate's end, the node still reports and runs pods.
    wait_until_within(std::time::Duration::from_secs(60), "the first certificate to expire", || now() > first.2 + 1);
    // The cleaner deletes a request once the certificate it was issued has expired.
    wait_until("the bootstrap request deleted after its certificate expired", || {
        let csrs: serde_json::Value = serde_json::from_str(&c.ok(&["get", "csr", "-o", "json"])).unwrap();
        !csrs["items"].as_array().unwrap().iter().any(|r| r["spec"]["username"] == "system:bootstrap:rotate")
    });
    c.ok(&["run", "late", "--image=busybox", "--restart=Never", r#"--overrides={"spec":{"nodeName":"turning"}}"#, "--command", "--", "sh", "-c", "echo still here"]);
    wait_until("the pod on the rotated node to succeed", || c.kubectl_with(KUBECTL, &["get", "pod", "late", "-o", "jsonpath={.status.phase}"]).stdout == b"Succeeded");
    assert!(c.ok(&["logs", "late"]).contains("still here"));
}
