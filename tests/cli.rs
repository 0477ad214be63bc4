//! The real `capstan` binary's store commands, end to end.

mod common;

use std::process::Command;

fn capstan(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("kv")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run capstan");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn kv_commands_write_read_and_persist_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, out, err) = capstan(d, &["put", "/registry/a", "hello"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "OK revision 1");
    assert!(capstan(d, &["put", "/registry/b", "world"]).0);
    assert!(capstan(d, &["put", "/registry/a", "again"]).0);
    let (ok, out, _) = capstan(d, &["get", "/registry/a"]);
    assert!(ok);
    assert!(out.starts_with("/registry/a\tagain\t(create_revision 1, mod_revision 3, version 2)"), "{out}");
    let (_, out, _) = capstan(d, &["get", "/registry/a", "--revision", "1"]);
    assert!(out.contains("\thello\t"), "{out}");
    let (_, out, _) = capstan(d, &["range", "/registry/"]);
    assert_eq!(out, "/registry/a\tagain\n/registry/b\tworld\n");
    let (ok, _, err) = capstan(d, &["get", "/missing"]);
    assert!(!ok);
    assert!(err.contains("/missing not found"), "{err}");
    assert!(capstan(d, &["snapshot"]).0);
    let (_, out, _) = capstan(d, &["stats"]);
    assert!(out.contains("live keys             2"), "{out}");
    let (_, out, _) = capstan(d, &["del", "--prefix", "/registry/"]);
    assert_eq!(out.trim(), "deleted 2 at revision 4");
}

/// `loadgen --server` against a separately started `capstan up` (the loadgen binary is built
/// beside capstan's by `cargo test --workspace`).
#[test]
fn loadgen_drives_a_separately_started_cluster() {
    let loadgen = std::path::Path::new(env!("CARGO_BIN_EXE_capstan")).with_file_name("loadgen");
    if !loadgen.exists() {
        panic!("{} is missing: run the suite with cargo test --workspace", loadgen.display());
    }
    let c = common::Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let json = c.dir.path().join("r.json");
    let out = std::process::Command::new(&loadgen)
        .args(["run", common::path_str(&common::source_dir().join("loadgen/workloads/scheduler-basic.yaml")), "--nodes", "5", "--pods-per-node", "10", "--kubeconfig", common::path_str(&c.kubeconfig)])
        .arg("--report-json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["pods"]["running"], 50);
    // Over TLS, with the kubeconfig's CA and admin certificate.
    assert!(r["target"].as_str().unwrap().starts_with("https://127.0.0.1:"), "{}", r["target"]);
    assert_eq!(c.ok(&["get", "pods", "-n", "sched", "--no-headers"]).lines().count(), 50);
    // The control plane's own CPU and memory, from capstan's /metrics.
    assert!(r["control_plane_cpu_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{}", r["control_plane_cpu_seconds"]);
    assert!(r["cpu_ms_per_pod"].as_f64().is_some(), "{}", r["cpu_ms_per_pod"]);
    assert!(r["control_plane_peak_rss_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{}", r["control_plane_peak_rss_bytes"]);
}

/// With no scheduler nothing runs: the wait for Running times out, the accounting verdict
/// fails, and loadgen exits 2 (a run that did not do what it measured is not a result).
#[test]
fn loadgen_fails_a_run_whose_pods_never_run() {
    let loadgen = std::path::Path::new(env!("CARGO_BIN_EXE_capstan")).with_file_name("loadgen");
    let c = common::Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--no-scheduler"]);
    let workload = c.write(
        "stuck.yaml",
        "name: stuck\nphases:\n  - createNamespace: {name: stuck}\n  - createPods: {namespace: stuck, count: 3}\n  - waitPodsRunning: {namespace: stuck, expected: 3, timeoutSeconds: 2}\n",
    );
    let json = c.dir.path().join("r.json");
    let out = std::process::Command::new(&loadgen)
        .args(["run", common::path_str(&workload), "--kubeconfig", common::path_str(&c.kubeconfig)])
        .arg("--report-json")
        .arg(&json)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let verdict = r["verdicts"].as_array().unwrap().iter().find(|v| v["name"] == "every pod accounted for").unwrap();
    assert_eq!(verdict["pass"], false, "{verdict}");
    assert_eq!((r["pods"]["not_running"].as_u64(), r["waits_timed_out"].as_u64()), (Some(3), Some(1)));
    assert_eq!(r["slo_pass"], false);
}
