//! etcd's v3 API on `capstan up`'s store, driven by the real `etcdctl` (Debian's etcd-client,
//! 3.4) and the `etcd-client` crate: the same store the Kubernetes API serves, with etcd's
//! semantics, errors and exit codes, open only to `system:masters` certificates.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

/// A cluster with the etcd API on a free port, and etcdctl's arguments for it.
struct Etcd {
    c: Cluster,
    url: String,
    args: Vec<String>,
}

fn start(extra: &[&str]) -> Etcd {
    let mut all = vec!["--no-local-node", "--etcd-listen", "127.0.0.1:0"];
    all.extend_from_slice(extra);
    let e = Etcd::from(Cluster::start_with(tempfile::tempdir().unwrap(), &all));
    assert!(e.url.starts_with("https://127.0.0.1:"), "{}", e.url);
    e
}

impl Etcd {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3").args(&self.args).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("etcdctl (apt-get install etcd-client)");
        {
            use std::io::Write;
            let mut sin = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                sin.write_all(s.as_bytes()).unwrap();
            }
        }
        child.wait_with_output().unwrap()
    }

    /// etcdctl's output, which must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, None);
        assert!(o.status.success(), "etcdctl {args:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// etcdctl's error output, which must fail with `code`.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> (i32, String) {
        let o = self.run(args, stdin);
        assert!(!o.status.success(), "etcdctl {args:?} succeeded: {}", String::from_utf8_lossy(&o.stdout));
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).to_string())
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-w", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn revision(&self) -> i64 {
        self.json(&["get", "x-no-such-key"])["header"]["revision"].as_i64().unwrap()
    }
}

fn b64(s: &serde_json::Value) -> String {
    use base64::Engine;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap_or("")).unwrap()).unwrap()
}

#[test]
fn etcdctl_reads_and_writes_the_clusters_store_with_etcds_semantics() {
    let e = start(&["--no-controllers", "--no-scheduler"]);
    // The Kubernetes objects are there, under Kubernetes' keys.
    assert!(e.ok(&["get", "/registry/", "--prefix", "--keys-only"]).contains("/registry/core/namespaces/default"));
    // Put, get and delete with their flags.
    assert_eq!(e.ok(&["put", "k1", "v1"]).trim(), "OK");
    let first = e.json(&["get", "k1"]);
    let create = first["kvs"][0]["create_revision"].as_i64().unwrap();
    assert_eq!((b64(&first["kvs"][0]["value"]), first["kvs"][0]["version"].as_i64()), ("v1".into(), Some(1)));
    assert_eq!(e.ok(&["put", "k1", "v2", "--prev-kv"]), "OK\nk1\nv1\n");
    e.ok(&["put", "k2", "b"]);
    e.ok(&["put", "k3", "a"]);
    assert_eq!(e.ok(&["get", "k", "--prefix", "--keys-only"]).split_whitespace().collect::<Vec<_>>(), ["k1", "k2", "k3"]);
    assert_eq!(e.ok(&["get", "k", "--prefix", "--print-value-only", "--sort-by=VALUE"]).split_whitespace().collect::<Vec<_>>(), ["a", "b", "v2"]);
    assert_eq!(e.ok(&["get", "k", "--prefix", "--keys-only", "--order=DESCEND", "--limit=2"]).split_whitespace().collect::<Vec<_>>(), ["k3", "k2"]);
    assert_eq!(e.ok(&["get", "k2", "--from-key", "--keys-only"]).split_whitespace().filter(|k| k.starts_with('k')).collect::<Vec<_>>(), ["k2", "k3"]);
    assert_eq!(e.ok(&["get", "k", "--prefix", "--keys-only", "--sort-by=MODIFY", "--order=DESCEND"]).split_whitespace().collect::<Vec<_>>(), ["k3", "k2", "k1"]);
    // An older revision reads the older value.
    assert_eq!(e.ok(&["get", "k1", "--print-value-only", &format!("--rev={create}")]).trim(), "v1");
    // ignore-value keeps the value and takes the new lease; on a missing key it is refused.
    let lease = e.ok(&["lease", "grant", "600"]).split_whitespace().nth(1).unwrap().to_string();
    e.ok(&["put", "k2", "--ignore-value", &format!("--lease={lease}")]);
    let k2 = e.json(&["get", "k2"]);
    assert_eq!((b64(&k2["kvs"][0]["value"]), format!("{:x}", k2["kvs"][0]["lease"].as_i64().unwrap())), ("b".into(), lease.clone()));
    let (_, err) = e.fails(&["put", "nope", "--ignore-value"], None);
    assert!(err.contains("etcdserver: key not found"), "{err}");
    assert_eq!(e.ok(&["del", "k3", "--prev-kv"]), "1\nk3\na\n");
    assert_eq!(e.ok(&["del", "k", "--prefix"]).trim(), "2");
    // A txn in interactive mode: the compare holds, then fails.
    e.ok(&["put", "t", "1"]);
    let txn = "value(\"t\") = \"1\"\n\nput t 2\nget t\n\nput t failed\n\n";
    let o = e.run(&["txn", "-i"], Some(txn));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.is_empty() && !l.starts_with("compares") && !l.starts_with("success") && !l.starts_with("failure")).collect::<Vec<_>>(), ["SUCCESS", "OK", "t", "2"]);
    let o = e.run(&["txn", "-i"], Some(txn));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAILURE"));
    assert_eq!(e.ok(&["get", "t", "--print-value-only"]).trim(), "failed");
    // Revisions of version and mod in compares.
    let o = e.run(&["txn"], Some("ver(\"t\") = \"3\"\nmod(\"t\") > \"1\"\n\nput t via-version\n\n\n"));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("SUCCESS"), "{}", String::from_utf8_lossy(&o.stdout));
    // Too many ops in one txn: etcd's message and exit code.
    let many: String = (0..129).map(|i| format!("put m{i} x\n")).collect();
    let (code, err) = e.fails(&["txn"], Some(&format!("\n{many}\n\n")));
    assert!(err.contains("etcdserver: too many operations in txn request"), "{err}");
    assert_eq!(code, 1);
    assert!(e.ok(&["get", "m", "--prefix", "--keys-only"]).trim().is_empty(), "nothing applied");
    // Compaction: older revisions are gone, with etcd's error.
    let rev = e.revision();
    assert_eq!(e.ok(&["compaction", &rev.to_string()]).trim(), format!("compacted revision {rev}"));
    let (code, err) = e.fails(&["get", "t", &format!("--rev={}", rev - 1)], None);
    assert!(err.contains("etcdserver: mvcc: required revision has been compacted"), "{err}");
    assert_eq!(code, 1);
    let (_, err) = e.fails(&["get", "t", &format!("--rev={}", rev + 1000)], None);
    assert!(err.contains("etcdserver: mvcc: required revision is a future revision"), "{err}");
    // A value over the request limit is refused; nothing is written.
    let big = "x".repeat(2 * 1024 * 1024);
    let (_, err) = e.fails(&["put", "big"], Some(&big));
    assert!(err.contains("ResourceExhausted") || err.contains("request is too large") || err.contains("larger than max"), "{err}");
    assert!(e.ok(&["get", "big"]).is_empty());
    // Membership and status, as etcdctl shows them.
    let members = e.json(&["member", "list"]);
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
    assert_eq!(members["members"][0]["clientURLs"][0], e.url.as_str());
    let status = e.json(&["endpoint", "status"]);
    assert_eq!(status[0]["Status"]["version"], "3.6.0");
    assert_eq!(status[0]["Status"]["leader"], members["members"][0]["ID"]);
    // etcdctl 3.4 says it on stderr.
    let health = e.run(&["endpoint", "health"], None);
    assert!(health.status.success() && String::from_utf8_lossy(&health.stderr).contains("is healthy: successfully committed proposal"), "{health:?}");
    e.ok(&["alarm", "list"]);
    // HashKV hashes the keyspace: the same twice, another after a write.
    let hash = || e.ok(&["endpoint", "hashkv"]).trim().rsplit(", ").next().unwrap().to_string();
    let h1 = hash();
    assert_eq!(h1, hash());
    e.ok(&["put", "hashed", "x"]);
    assert_ne!(h1, hash(), "a write changes the hash");
    e.ok(&["defrag"]);
    // A write through etcd is a write to the cluster: kubectl sees it.
    e.c.ok(&["create", "configmap", "seen", "--from-literal=a=b"]);
    assert!(e.ok(&["get", "/registry/core/configmaps/default/seen", "--keys-only"]).contains("seen"));
    e.ok(&["del", "/registry/core/configmaps/default/seen"]);
    wait_until("kubectl to see the configmap deleted through etcd", || !e.c.kubectl_with(KUBECTL, &["get", "configmap", "seen"]).status.success());
}

#[test]
fn etcdctl_watches_and_leases() {
    let e = start(&["--no-controllers", "--no-scheduler"]);
    let before = e.revision();
    // A watch on a prefix with previous values, from now.
    let mut w = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(&e.args)
        .args(["watch", "/w/", "--prefix", "--prev-kv"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = w.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // The watch is registered once a put made after it shows up: keep writing a marker.
    let mut seen = Vec::new();
    wait_until("the watch to see a marker put", || {
        e.ok(&["put", "/w/marker", "m"]);
        while let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push(l);
        }
        seen.iter().any(|l| l == "/w/marker")
    });
    e.ok(&["put", "/w/a", "1"]);
    e.ok(&["put", "/w/a", "2"]);
    e.ok(&["put", "/other", "x"]);
    e.ok(&["del", "/w/a"]);
    let mut lines = Vec::new();
    wait_until("the watch to print the delete", || {
        while let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            lines.push(l);
        }
        lines.iter().filter(|l| *l == "DELETE").count() == 1
    });
    let _ = w.kill();
    let _ = w.wait();
    // PUT, key, value; the second with its previous value first; the delete with the last
    // value, then the deleted key with no value.
    let text = lines.join("\n");
    assert!(text.starts_with("PUT\n/w/a\n1\nPUT\n/w/a\n1\n/w/a\n2\nDELETE\n/w/a\n2\n/w/a\n"), "{text}");
    assert!(!text.contains("/other"));
    // A watch from an old revision replays history, then goes on.
    let o = Command::new("timeout").args(["5"]).arg("etcdctl").env("ETCDCTL_API", "3").args(&e.args).args(["watch", "/w/a", &format!("--rev={before}")]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().filter(|l| *l == "PUT" || *l == "DELETE").collect::<Vec<_>>(), ["PUT", "PUT", "DELETE"]);
    // Leases: keys attached go when the lease is revoked.
    let grant = e.ok(&["lease", "grant", "100"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    assert!(grant.contains("granted with TTL(100s)"), "{grant}");
    e.ok(&["put", "leased/a", "1", &format!("--lease={id}")]);
    e.ok(&["put", "leased/b", "2", &format!("--lease={id}")]);
    let ttl = e.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("attached keys([leased/a leased/b])"), "{ttl}");
    assert!(e.ok(&["lease", "list"]).contains(&id));
    assert!(e.ok(&["lease", "keep-alive", "--once", &id]).contains(&format!("lease {id} keepalived with TTL(100)")));
    assert!(e.ok(&["lease", "revoke", &id]).contains("revoked"));
    assert!(e.ok(&["get", "leased/", "--prefix"]).is_empty(), "the lease's keys are gone");
    assert!(e.ok(&["lease", "timetolive", &id]).contains("already expired"));
    let (_, err) = e.fails(&["put", "x", "y", &format!("--lease={id}")], None);
    assert!(err.contains("etcdserver: requested lease not found"), "{err}");
    // A lease that is not kept alive expires, and its keys with it.
    let short = e.ok(&["lease", "grant", "2"]).split_whitespace().nth(1).unwrap().to_string();
    e.ok(&["put", "ephemeral", "1", &format!("--lease={short}")]);
    wait_until("the 2 s lease to expire and take its key", || e.ok(&["get", "ephemeral"]).is_empty());
}

#[test]
fn only_system_masters_certificates_may_use_the_endpoint() {
    let e = start(&["--no-controllers", "--no-scheduler"]);
    let pki = e.c.dir.path().join("pki");
    // A certificate of the cluster CA for a user who is not in system:masters.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.join("ca.crt")).unwrap(), ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "alice");
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "developers");
    let cert = p.signed_by(&key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alice.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("alice.key"), key.serialize_pem()).unwrap();
    let as_alice = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(&e.args[0])
            .arg(&e.args[1])
            .arg(format!("--cert={}", dir.path().join("alice.crt").display()))
            .arg(format!("--key={}", dir.path().join("alice.key").display()))
            .args(args)
            .output()
            .unwrap()
    };
    let o = as_alice(&["put", "k", "v"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("etcdserver: permission denied"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(e.ok(&["get", "k"]).is_empty(), "nothing written");
    // No certificate at all: the handshake is refused.
    let o = Command::new("etcdctl").env("ETCDCTL_API", "3").args([&e.args[0], &e.args[1], "--dial-timeout=2s", "get", "k"]).output().unwrap();
    assert!(!o.status.success());

    // etcd's own authentication is disabled and stays so: the certificate is the credential.
    // (etcdctl 3.4 has no `auth status`: etcdapi/tests/auth.rs asks for it.)
    e.ok(&["auth", "disable"]);
    for args in [&["auth", "enable"][..], &["user", "add", "root", "--new-user-password=pw"], &["user", "list"], &["role", "add", "reader"], &["role", "grant-permission", "reader", "read", "k"]] {
        let (code, err) = e.fails(args, None);
        assert!(code != 0 && err.contains("authentication is not enabled and cannot be") && err.contains("client certificates"), "etcdctl {args:?}: {err}");
    }
    let (_, err) = e.fails(&["--user=root:pw", "--dial-timeout=5s", "get", "k"], None);
    assert!(err.contains("authentication is not enabled"), "a login: {err}");
}

#[test]
fn etcdctl_snapshot_save_then_capstan_restore_serves_the_same_objects_at_the_same_revisions() {
    let e = start(&["--no-controllers", "--no-scheduler"]);
    e.c.ok(&["create", "configmap", "kept", "--from-literal=a=b"]);
    let rv = e.c.ok(&["get", "configmap", "kept", "-o", "jsonpath={.metadata.resourceVersion}"]);
    for batch in 0..2 {
        let puts: String = (0..100).map(|i| format!("put key/{batch}/{i} value-{batch}-{i}\n")).collect();
        let o = e.run(&["txn"], Some(&format!("\n{puts}\n\n")));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let revision = e.revision();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let saved = e.ok(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let capstan = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_capstan")).args(args).output().unwrap();
    let status = capstan(&["snapshot", "status", file.to_str().unwrap(), "--json"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(s["revision"].as_i64().unwrap() >= revision, "{s}");
    assert!(s["keys"].as_u64().unwrap() >= 201, "{s}");
    // capstan's own client saves the same kind of file.
    let own = dir.path().join("own.db");
    let pki = e.c.dir.path().join("pki");
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let o = capstan(&["snapshot", "save", own.to_str().unwrap(), "--endpoint", &e.url, "--cacert", &p("ca.crt"), "--cert", &p("apiserver-etcd-client.crt"), "--key", &p("apiserver-etcd-client.key")]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Snapshot saved at"), "{o:?}");
    // A damaged file is refused, naming where and why; nothing is restored from it.
    let mut bytes = std::fs::read(&file).unwrap();
    let flipped = dir.path().join("flipped.db");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&flipped, &bytes).unwrap();
    let o = capstan(&["snapshot", "status", flipped.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("at byte") && err.contains("checksum"), "{err}");
    bytes[mid] ^= 0x55;
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let o = capstan(&["snapshot", "restore", truncated.to_str().unwrap(), "--data-dir", dir.path().join("never").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("truncated"), "{err}");
    assert!(!dir.path().join("never").join("store").exists(), "nothing restored in part");
    // Restored into a new data directory, then served.
    let restored = tempfile::tempdir().unwrap();
    let o = capstan(&["snapshot", "restore", file.to_str().unwrap(), "--data-dir", restored.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = capstan(&["snapshot", "restore", file.to_str().unwrap(), "--data-dir", restored.path().to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already holds a store"));
    let r = Etcd::from(Cluster::start_with(restored, &["--no-local-node", "--no-controllers", "--no-scheduler", "--etcd-listen", "127.0.0.1:0"]));
    assert_eq!(r.c.ok(&["get", "configmap", "kept", "-o", "jsonpath={.metadata.resourceVersion}"]), rv, "the same object at the same resourceVersion");
    assert_eq!(r.ok(&["get", "key/1/99", "--print-value-only"]).trim(), "value-1-99");
    assert_eq!(r.ok(&["get", "key/", "--prefix", "--keys-only"]).split_whitespace().count(), 200);
    // History before the snapshot is gone: a Kubernetes watch from there is told 410 Gone.
    let (code, body) = http(&r.c.addr, "GET", &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1"), &[], b"");
    let body = String::from_utf8_lossy(&body);
    assert!(code == 410 || body.contains("\"code\":410"), "{code} {body}");
}

impl Etcd {
    /// The etcd flags of a cluster already started with `--etcd-listen`.
    fn from(c: Cluster) -> Etcd {
        let url = c.printed("etcd API:").split_whitespace().nth(2).unwrap().to_string();
        let pki = c.dir.path().join("pki");
        let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
        let args = vec![format!("--endpoints={url}"), format!("--cacert={}", p("ca.crt")), format!("--cert={}", p("apiserver-etcd-client.crt")), format!("--key={}", p("apiserver-etcd-client.key"))];
        Etcd { c, url, args }
    }
}

/// A process the test started (a real etcd, a `capstan server`), stopped on drop, and the
/// etcd URL it serves.
struct Running {
    child: std::process::Child,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free now and not handed out before in this process (the kernel may give
/// a port just released to the next bind, and a test takes several before starting anything).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

/// `capstan server` as member `name` of `initial` (no scheduler or controllers), with the
/// etcd API on a free port, once it printed that port; `extra` flags are added.
fn capstan_server(name: &str, dir: &std::path::Path, peer: &str, initial: &str, extra: &[&str]) -> Running {
    capstan_server_env(name, dir, peer, initial, extra, &[])
}

/// `capstan_server` with environment variables (failpoints) set for it.
fn capstan_server_env(name: &str, dir: &std::path::Path, peer: &str, initial: &str, extra: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .envs(env.iter().copied())
        .args(["server", "--name", name, "--data-dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:0", "--peer-listen", peer])
        .args(["--initial-cluster", initial, "--etcd-listen", "127.0.0.1:0", "--no-scheduler", "--no-controllers", "--log-level", "warn"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut r = Running { child, url: String::new() };
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(out).lines();
    for l in lines.by_ref() {
        let l = l.unwrap();
        if let Some(u) = l.split("etcd API:").nth(1) {
            r.url = u.trim().to_string();
            break;
        }
    }
    assert!(r.url.starts_with("http"), "capstan server {name} did not print its etcd URL (it exited?)");
    std::thread::spawn(move || lines.for_each(drop));
    r
}

/// etcd adds a voter in one step: when making the new member a voter fails after it was
/// added as a learner (a failpoint here), it is taken out again, and the call fails saying so.
#[test]
fn a_voter_that_cannot_be_made_one_is_not_left_behind_as_a_learner() {
    let root = tempfile::tempdir().unwrap();
    let peer = format!("127.0.0.1:{}", free_port());
    let m0 = capstan_server_env("m0", &root.path().join("m0"), &peer, &format!("m0=http://{peer}"), &["--insecure-http"], &[("CAPSTAN_FAILPOINTS", "membership::make_voter=eio")]);
    let run = |args: &[&str]| Command::new("etcdctl").env("ETCDCTL_API", "3").arg(format!("--endpoints={}", m0.url)).args(args).output().unwrap();
    wait_until("the single member to serve", || run(&["put", "before", "1"]).status.success());
    let o = run(&["member", "add", "m1", &format!("--peer-urls=http://127.0.0.1:{}", free_port())]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("adding member") && err.contains("as a voter failed") && err.contains("it was not added"), "{}{err}", String::from_utf8_lossy(&o.stdout));
    let list: serde_json::Value = serde_json::from_slice(&run(&["member", "list", "-w", "json"]).stdout).unwrap();
    let members = list["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 1, "only m0 is left: {list}");
    assert!(run(&["put", "after", "2"]).status.success(), "the member still serves writes");
}

/// When taking the half-added member out fails as well, the call says a learner is left and
/// what to do with it, and removing it then works.
#[test]
fn a_voter_add_that_cannot_be_undone_says_a_learner_is_left() {
    let root = tempfile::tempdir().unwrap();
    let peer = format!("127.0.0.1:{}", free_port());
    let failpoints = [("CAPSTAN_FAILPOINTS", "membership::make_voter=eio;membership::take_out=eio")];
    let m0 = capstan_server_env("m0", &root.path().join("m0"), &peer, &format!("m0=http://{peer}"), &["--insecure-http"], &failpoints);
    let run = |args: &[&str]| Command::new("etcdctl").env("ETCDCTL_API", "3").arg(format!("--endpoints={}", m0.url)).args(args).output().unwrap();
    wait_until("the single member to serve", || run(&["put", "before", "1"]).status.success());
    let o = run(&["member", "add", "m1", &format!("--peer-urls=http://127.0.0.1:{}", free_port())]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("was added as a learner but making it a voter failed") && err.contains("promote or remove it"), "{err}");
    let list: serde_json::Value = serde_json::from_slice(&run(&["member", "list", "-w", "json"]).stdout).unwrap();
    let learner = list["members"].as_array().unwrap().iter().find(|m| m["isLearner"] == true).unwrap_or_else(|| panic!("the learner is listed: {list}")).clone();
    let id = format!("{:x}", learner["ID"].as_u64().unwrap());
    let o = run(&["member", "remove", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list: serde_json::Value = serde_json::from_slice(&run(&["member", "list", "-w", "json"]).stdout).unwrap();
    assert_eq!(list["members"].as_array().unwrap().len(), 1, "{list}");
}

/// A real etcd (Debian's etcd-server) on free loopback ports in `dir`.
fn real_etcd(dir: &std::path::Path) -> Running {
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "src", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url, "--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("src={peer_url}"), "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (apt-get install etcd-server)");
    let e = Running { child, url };
    wait_until("the real etcd to be healthy", || Command::new("etcdctl").env("ETCDCTL_API", "3").args(["--endpoints", &e.url, "endpoint", "health"]).output().unwrap().status.success());
    e
}

#[test]
fn migrate_copies_a_real_etcds_keys_at_one_revision_into_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let src = real_etcd(dir.path());
    let etcdctl = |args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new("etcdctl").env("ETCDCTL_API", "3").args(["--endpoints", &src.url]).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        if let Some(s) = stdin {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    // More keys than one page of the copy, a leased key, an overwrite and a delete.
    for batch in 0..12 {
        let puts: String = (0..100).map(|i| format!("put src/{batch:02}/{i:03} v{batch}-{i}\n")).collect();
        etcdctl(&["txn"], Some(&format!("\n{puts}\n\n")));
    }
    let lease = etcdctl(&["lease", "grant", "600"], None).split_whitespace().nth(1).unwrap().to_string();
    etcdctl(&["put", "src/leased", "l", &format!("--lease={lease}")], None);
    etcdctl(&["put", "src/00/000", "overwritten"], None);
    etcdctl(&["del", "src/11/099"], None);
    let expected = etcdctl(&["get", "", "--from-key"], None);
    let target = tempfile::tempdir().unwrap();
    let migrate = |to: &std::path::Path| Command::new(env!("CARGO_BIN_EXE_capstan")).args(["migrate", "--from-etcd", &src.url, "--data-dir"]).arg(to).output().unwrap();
    let o = migrate(target.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("migrated 1200 keys"), "{}", String::from_utf8_lossy(&o.stdout));
    let o = migrate(target.path());
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already holds a store"));
    // The new store serves the same keys and values.
    let e = Etcd::from(Cluster::start_with(target, &["--no-local-node", "--no-controllers", "--no-scheduler", "--etcd-listen", "127.0.0.1:0"]));
    let got = e.ok(&["get", "src/", "--prefix"]);
    assert_eq!(got, expected, "the same keys and values, in order");
    assert_eq!(e.json(&["get", "src/leased"])["kvs"][0]["lease"].as_i64().unwrap_or(0), 0, "leases are not carried");
}

#[test]
fn a_snapshot_restores_into_a_new_replicated_cluster_at_the_same_revisions() {
    let e = start(&["--no-controllers", "--no-scheduler"]);
    e.c.ok(&["create", "configmap", "kept", "--from-literal=a=b"]);
    let rv = e.c.ok(&["get", "configmap", "kept", "-o", "jsonpath={.metadata.resourceVersion}"]);
    e.ok(&["put", "plain-key", "plain-value"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    e.ok(&["snapshot", "save", file.to_str().unwrap()]);
    // Three members, each restored from the same file (the source had two shards: a
    // replica's store has one), sharing the source's CA.
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial = (0..3).map(|i| format!("r{i}=https://127.0.0.1:{}", peers[i])).collect::<Vec<_>>().join(",");
    let pki = e.c.dir.path().join("pki");
    let mut replicas: Vec<Running> = Vec::new();
    for i in 0..3 {
        let d = dir.path().join(format!("r{i}"));
        let o = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["snapshot", "restore", file.to_str().unwrap(), "--data-dir", d.to_str().unwrap(), "--name", &format!("r{i}"), "--initial-cluster", &initial])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let name = format!("r{i}");
        let peer = format!("127.0.0.1:{}", peers[i]);
        let r = capstan_server(&name, &d, &peer, &initial, &["--ca-cert-file", pki.join("ca.crt").to_str().unwrap(), "--ca-key-file", pki.join("ca.key").to_str().unwrap()]);
        assert!(r.url.starts_with("https://"), "replica r{i} serves etcd's API on TLS");
        replicas.push(r);
    }
    let on = |i: usize, args: &[&str]| -> String {
        let mut a = e.args.clone();
        a[0] = format!("--endpoints={}", replicas[i].url);
        let o = Command::new("etcdctl").env("ETCDCTL_API", "3").args(&a).args(args).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    // Each member serves the snapshot's keys once the three have elected a leader.
    wait_until("the restored members to serve the snapshot's keys", || (0..3).all(|i| on(i, &["get", "plain-key", "--print-value-only"]).trim() == "plain-value"));
    let members: serde_json::Value = serde_json::from_str(&on(0, &["member", "list", "-w", "json"])).unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
    // Each member records its etcd URL in the membership (etcd's client URLs), so etcdctl's
    // `--cluster` reaches every member through any one.
    let mut urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    urls.sort();
    wait_until("endpoint status --cluster through r0 to reach the three members", || {
        let status: serde_json::Value = serde_json::from_str(&on(0, &["endpoint", "status", "--cluster", "-w", "json"])).unwrap_or_default();
        let mut reached: Vec<String> = status.as_array().map(|a| a.iter().filter_map(|s| s["Endpoint"].as_str().map(str::to_string)).collect()).unwrap_or_default();
        reached.sort();
        reached == urls
    });
    // The Kubernetes object at the same resourceVersion, through a replica's API.
    let kc = dir.path().join("r1").join("kubeconfig");
    let o = Command::new(KUBECTL).args(["--kubeconfig", kc.to_str().unwrap(), "get", "configmap", "kept", "-o", "jsonpath={.metadata.resourceVersion}"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), rv, "{}", String::from_utf8_lossy(&o.stderr));
    // And it goes on: a write through one member is read through another, past the snapshot.
    let before = on(2, &["get", "plain-key", "-w", "json"]);
    on(0, &["put", "after-restore", "yes"]);
    wait_until("the write to reach r2", || on(2, &["get", "after-restore", "--print-value-only"]).trim() == "yes");
    let b: serde_json::Value = serde_json::from_str(&before).unwrap();
    let a: serde_json::Value = serde_json::from_str(&on(2, &["get", "after-restore", "-w", "json"])).unwrap();
    assert!(a["kvs"][0]["mod_revision"].as_i64() > b["header"]["revision"].as_i64(), "revisions go on from the snapshot's");
    // Membership through etcd's Cluster service: an unknown member is not found; the leader,
    // removed through its own endpoint (it stops as the change commits), answers that it is
    // removed, and the two others go on without it.
    let o = Command::new("etcdctl").env("ETCDCTL_API", "3").args(&e.args).arg(format!("--endpoints={}", replicas[0].url)).args(["member", "promote", "1234"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("member not found"), "{}", String::from_utf8_lossy(&o.stderr));
    let status = |i: usize| -> serde_json::Value { serde_json::from_str(&on(i, &["endpoint", "status", "-w", "json"])).unwrap_or_default() };
    let leader = (0..3).find(|i| { let s = status(*i); s[0]["Status"]["leader"] == s[0]["Status"]["header"]["member_id"] }).expect("a leader");
    let leader_id = format!("{:x}", status(leader)[0]["Status"]["leader"].as_u64().unwrap());
    let removed = on(leader, &["member", "remove", &leader_id]);
    assert!(removed.contains("removed from cluster"), "the leader removing itself: {removed:?}");
    let other = (0..3).find(|i| *i != leader).unwrap();
    wait_until("two members left in the membership", || {
        let left: serde_json::Value = serde_json::from_str(&on(other, &["member", "list", "-w", "json"])).unwrap_or_default();
        left["members"].as_array().is_some_and(|m| m.len() == 2 && m.iter().all(|x| format!("{:x}", x["ID"].as_u64().unwrap_or(0)) != leader_id))
    });
}

/// etcd's membership calls as etcdctl makes them, on a replicated capstan: a member added by
/// peer URL alone (MemberAdd carries no name) joins under the name etcdctl printed for it,
/// is promoted, gets a new peer URL (MemberUpdate) and goes on there after a restart; a voter
/// added directly, and removed; and the calls' errors, as etcd words them.
#[test]
fn etcdctl_adds_promotes_updates_and_removes_members() {
    let root = tempfile::tempdir().unwrap();
    let peers: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let initial = (0..3).map(|i| format!("m{i}=http://{}", peers[i])).collect::<Vec<_>>().join(",");
    // Plain HTTP (--insecure-http): this test is about membership, not TLS.
    let mut members: Vec<Running> = (0..3).map(|i| capstan_server(&format!("m{i}"), &root.path().join(format!("m{i}")), &peers[i], &initial, &["--insecure-http"])).collect();
    let run = |url: &str, args: &[&str]| Command::new("etcdctl").env("ETCDCTL_API", "3").arg(format!("--endpoints={url}")).args(args).output().unwrap();
    let ok = |url: &str, args: &[&str]| -> String {
        let o = run(url, args);
        assert!(o.status.success(), "etcdctl {args:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let fails = |url: &str, args: &[&str]| -> String {
        let o = run(url, args);
        assert!(!o.status.success(), "etcdctl {args:?} succeeded: {}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let list = |url: &str| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&ok(url, &["member", "list", "-w", "json"])).unwrap();
        v["members"].as_array().cloned().unwrap_or_default()
    };
    let url0 = members[0].url.clone();
    wait_until("the three members to elect a leader and serve", || run(&url0, &["put", "before", "1"]).status.success());
    // Added by peer URL alone, through a follower or the leader alike: nameless until it
    // starts, and etcdctl prints the flags to start it with.
    let new_peer = format!("127.0.0.1:{}", free_port());
    // etcd refuses a new member until the leader has heard from every voter lately ("unhealthy
    // cluster"); a cluster just started may not be there yet, and an operator tries again.
    let mut added = String::new();
    wait_until("the leader to hear from every voter and take the new member", || {
        let o = run(&members[1].url, &["member", "add", "m3", &format!("--peer-urls=http://{new_peer}"), "--learner"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() || err.contains("unhealthy cluster"), "etcdctl member add: {err}");
        added = String::from_utf8_lossy(&o.stdout).to_string();
        o.status.success()
    });
    let id = added.split_whitespace().nth(1).unwrap().to_string();
    let joined_initial = added.lines().find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=")).unwrap().trim_matches('"').to_string();
    assert!(joined_initial.contains(&format!("m3=http://{new_peer}")) && joined_initial.contains("m0=http://"), "{added}");
    assert!(added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{added}");
    let m3 = list(&url0).into_iter().find(|m| format!("{:x}", m["ID"].as_u64().unwrap()) == id).expect("the added member is listed");
    assert_eq!((m3.get("name"), m3["isLearner"].as_bool()), (None, Some(true)), "nameless and a learner before it starts: {m3}");
    // One learner at a time, and not promoted before it has caught up (it has not started);
    // a voter cannot be promoted: etcd's rules and words.
    assert!(fails(&url0, &["member", "add", "m5", &format!("--peer-urls=http://127.0.0.1:{}", free_port()), "--learner"]).contains("too many learner members in cluster"));
    assert!(fails(&url0, &["member", "promote", &id]).contains("can only promote a learner member which is in sync with leader"));
    let voter0 = list(&url0).into_iter().find(|m| m["name"] == "m0").map(|m| format!("{:x}", m["ID"].as_u64().unwrap())).unwrap();
    let e = fails(&url0, &["member", "promote", &voter0]);
    assert!(e.contains("can only promote a learner member") && !e.contains("in sync"), "{e}");
    // Its peer URL cannot be given twice; an unknown member cannot be updated.
    assert!(fails(&url0, &["member", "add", "again", &format!("--peer-urls=http://{new_peer}")]).contains("Peer URLs already exists"));
    assert!(fails(&url0, &["member", "update", "1234", "--peer-urls=http://127.0.0.1:1"]).contains("member not found"));
    // It starts with what etcdctl printed, finds itself by its peer URL, and announces its name.
    let m3_dir = root.path().join("m3");
    members.push(capstan_server("m3", &m3_dir, &new_peer, &joined_initial, &["--initial-cluster-state", "existing", "--insecure-http"]));
    wait_until("m3 to be listed under its name", || list(&url0).iter().any(|m| m["name"] == "m3"));
    let url3 = members[3].url.clone();
    wait_until("m3 to serve what was written before it joined", || run(&url3, &["get", "before", "--print-value-only"]).stdout.starts_with(b"1"));
    // Every member lists every member's etcd URL (its client URL).
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    wait_until("every member's client URL to be listed by every member", || {
        urls.iter().all(|u| {
            let mut listed: Vec<String> = list(u).iter().flat_map(|m| m["clientURLs"].as_array().cloned().unwrap_or_default()).filter_map(|c| c.as_str().map(str::to_string)).collect();
            listed.sort();
            let mut want = urls.clone();
            want.sort();
            listed == want
        })
    });
    ok(&url0, &["member", "promote", &id]);
    wait_until("m3 to be a voter", || list(&url0).iter().any(|m| m["name"] == "m3" && m["isLearner"].as_bool() != Some(true)));
    // A new peer URL: the member restarts there (with its data) and the leader reaches it.
    let moved_peer = format!("127.0.0.1:{}", free_port());
    let o = ok(&url0, &["member", "update", &id, &format!("--peer-urls=http://{moved_peer}")]);
    assert!(o.contains("updated in cluster"), "{o}");
    assert!(list(&url0).iter().any(|m| m["name"] == "m3" && m["peerURLs"][0] == format!("http://{moved_peer}").as_str()));
    drop(members.pop());
    members.push(capstan_server("m3", &m3_dir, &moved_peer, &joined_initial, &["--initial-cluster-state", "existing", "--insecure-http"]));
    ok(&url0, &["put", "after-move", "2"]);
    let url3 = members[3].url.clone();
    wait_until("m3, moved, to get a write made after its move", || run(&url3, &["get", "after-move", "--print-value-only"]).stdout.starts_with(b"2"));
    // A voter added directly (four running voters stay a quorum of five), then removed.
    let voter_peer = format!("127.0.0.1:{}", free_port());
    let added = ok(&url0, &["member", "add", "m4", &format!("--peer-urls=http://{voter_peer}")]);
    let voter = added.split_whitespace().nth(1).unwrap().to_string();
    assert!(list(&url0).iter().any(|m| format!("{:x}", m["ID"].as_u64().unwrap()) == voter && m["isLearner"].as_bool() != Some(true)), "m4 is a voter at once");
    // With a voter that never ran, another voter is refused, as etcd refuses it, and so is a
    // learner (etcd's strict reconfiguration check covers both).
    assert!(fails(&url0, &["member", "add", "m5", &format!("--peer-urls=http://127.0.0.1:{}", free_port())]).contains("unhealthy cluster"));
    assert!(fails(&url0, &["member", "add", "m6", &format!("--peer-urls=http://127.0.0.1:{}", free_port()), "--learner"]).contains("unhealthy cluster"));
    ok(&url0, &["member", "remove", &voter]);
    assert_eq!(list(&url0).len(), 4);
    ok(&url0, &["put", "after-remove", "3"]);
}
