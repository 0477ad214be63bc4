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
    let script = source_dir().join("tests/python/client_e2e.py");
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&c.kubeconfig)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("run python3 {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} against {} failed ({}) after {:?}:\nstdout:\n{stdout}\nstderr:\n{stderr}",
        script.display(),
        c.addr,
        out.status,
        started.elapsed()
    );
    assert!(stdout.lines().any(|l| l == "6 passed, 0 failed"), "unexpected summary:\nstdout:\n{stdout}\nstderr:\n{stderr}");
}
