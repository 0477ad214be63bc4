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
        .args(["run", common::path_str(&common::source_dir().join("loadgen/workloads/scheduler-basic.yaml")), "--nodes", "5", "--pods-per-node", "10", "--server", &format!("http://{}", c.addr)])
        .arg("--report-json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["pods"]["running"], 50);
    assert!(r["target"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    assert_eq!(c.ok(&["get", "pods", "-n", "sched", "--no-headers"]).lines().count(), 50);
}
