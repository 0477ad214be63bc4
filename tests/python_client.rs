//! The official Kubernetes Python client (`pip install kubernetes`) against the real `capstan up`.

mod common;

use std::process::Command;
use std::time::Instant;

use common::*;

#[test]
fn official_python_client_creates_lists_watches_and_gets_409_on_stale_update() {
    let probe = Command::new("python3").args(["-c", "import kubernetes"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Python package `kubernetes` is not importable; run `python3 -m pip install kubernetes` (CI installs it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run python3 ({e}); install Python 3 and then `python3 -m pip install kubernetes` (CI installs it)"),
    }

    let c = Cluster::start();
    let stdout = run_script(&c, "client_e2e.py", &[]);
    assert!(stdout.lines().any(|l| l == "7 passed, 0 failed"), "unexpected summary:\n{stdout}");
}

/// Runs `tests/python/SCRIPT KUBECONFIG ARGS...` against `c` and returns what it printed;
/// fails, with its output, unless it exits 0.
fn run_script(c: &Cluster, script: &str, args: &[&str]) -> String {
    let script = source_dir().join("tests/python").join(script);
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&c.kubeconfig)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("HOME", c.dir.path())
        .output()
        .unwrap_or_else(|e| panic!("run python3 {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{} {args:?} against {} failed ({}) after {:?}:\nstdout:\n{stdout}\nstderr:\n{stderr}", script.display(), c.addr, out.status, started.elapsed());
    stdout
}

/// Every served kind through the Python client's typed API (`tests/python/every_kind.py`):
/// create, read, list, replace, patch, delete and a watch, each answer deserialized into the
/// client's (pydantic) model, which refuses a missing required field or a wrong type.
#[test]
fn official_python_client_round_trips_every_served_kind() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let stdout = run_script(&c, "every_kind.py", &[]);
    let summary = stdout.lines().last().unwrap_or("");
    let passed: usize = summary.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(summary.ends_with(" passed, 0 failed") && passed >= 39, "unexpected summary {summary:?}:\n{stdout}");
}

/// The same samples through kubectl (`every_kind.py --kubectl`): apply, `get -o wide`,
/// `describe` (typed printers that panic on a nil pointer a default should have filled),
/// `get -o yaml`, delete.
#[test]
fn kubectl_applies_gets_and_describes_every_sample_kind() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let stdout = run_script(&c, "every_kind.py", &["--kubectl"]);
    assert!(stdout.lines().last().is_some_and(|l| l.ends_with(" passed, 0 failed")), "{stdout}");
}

/// Over TLS with a bearer token (the static token file) instead of the kubeconfig's client
/// certificate: the Python client's `Configuration` as an operator writes it.
#[test]
fn official_python_client_authenticates_with_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "py-token-123,py-admin,42,system:masters\nlimited-token,nobody,43\n").unwrap();
    let c = Cluster::start_with(dir, &["--no-local-node", "--token-auth-file", path_str(&tokens)]);
    let ca = c.dir.path().join("pki").join("ca.crt");
    let script = r#"
import sys, kubernetes.client as k
from kubernetes.client.rest import ApiException
def api(token):
    cfg = k.Configuration()
    cfg.host = sys.argv[1]
    cfg.ssl_ca_cert = sys.argv[2]
    cfg.api_key = {"authorization": "Bearer " + token}
    return k.CoreV1Api(k.ApiClient(cfg))
names = sorted(n.metadata.name for n in api("py-token-123").list_namespace().items)
assert "kube-system" in names, names
for token, code in [("limited-token", 403), ("wrong-token", 401)]:
    try:
        api(token).list_namespace()
        raise SystemExit("%s: listed namespaces" % token)
    except ApiException as e:
        assert e.status == code, (token, e.status, e.body)
print("token ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("https://{}", c.addr), path_str(&ca)])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("token ok"), "stdout:\n{stdout}\nstderr:\n{stderr}");
}
