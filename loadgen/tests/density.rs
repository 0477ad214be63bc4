//! A tiny density run through the real `loadgen` binary (embedded control plane), checking the
//! report's accounting, not its timings.

use std::process::Command;

#[test]
fn a_tiny_density_run_accounts_for_every_pod() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let html = dir.path().join("r.html");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["run", &format!("{}/workloads/density.yaml", manifest_dir()), "--nodes", "20", "--pods-per-node", "10"])
        .arg("--report-json")
        .arg(&json)
        .arg("--report-html")
        .arg(&html)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "loadgen failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // The summary other tools read.
    assert_eq!(r["pods_total"], 200);
    assert_eq!(r["pods_running"], 200);
    assert!(r["pod_startup_p50_ms"].as_f64().unwrap() <= r["pod_startup_p99_ms"].as_f64().unwrap());
    assert!(r["api_mutating_p99_ms"].as_f64().is_some() && r["pods_per_sec"].as_f64().is_some());
    assert!(r["control_plane_peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(r["slo_pass"].is_boolean());
    let p = &r["pods"];
    assert_eq!(p["expected"], 200);
    assert_eq!(p["running"], 200, "{stdout}");
    let sum: u64 = ["running", "failed", "not_running", "missing"].iter().map(|k| p[k].as_u64().unwrap()).sum();
    assert_eq!(sum, 200, "{p}\n{stdout}");
    for a in r["api"].as_array().unwrap() {
        let q: Vec<f64> = ["p50_ms", "p90_ms", "p99_ms", "max_ms"].iter().map(|k| a[k].as_f64().unwrap()).collect();
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "percentiles ordered: {a}");
    }
    let names: Vec<&str> = r["verdicts"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"SLO: mutating API calls p99 (s)") && names.contains(&"SLO: pod startup p99 (s)") && names.contains(&"every pod accounted for"), "{names:?}");
    assert!(r["verdicts"].as_array().unwrap().iter().find(|v| v["name"] == "every pod accounted for").unwrap()["pass"].as_bool().unwrap());
    assert!(r["process_peak_rss_bytes"].as_u64().unwrap() > 0);
    let page = std::fs::read_to_string(&html).unwrap();
    // Drawn by the dashboard's renderer: pods Running and the process's memory over the run.
    assert!(page.contains("<svg") && page.contains("Pods Running") && page.contains("Process RSS") && !page.contains("<script"), "{page}");
    // compare: a report against itself is 1.00x everywhere it has numbers.
    let cmp = Command::new(env!("CARGO_BIN_EXE_loadgen")).arg("compare").arg(&json).arg(&json).output().unwrap();
    assert!(cmp.status.success());
    assert!(String::from_utf8_lossy(&cmp.stdout).contains("1.00x"));
}

#[test]
fn bad_workloads_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.yaml");
    std::fs::write(&w, "phases: [{explode: {}}]").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen")).arg("run").arg(&w).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown phase \"explode\""));
}

#[test]
fn replicasets_jobs_rollouts_and_churn_with_watch_latency() {
    let dir = tempfile::tempdir().unwrap();
    for (w, check) in [("jobs-and-rollout", "rollingUpdate"), ("churn", "churnPods")] {
        let json = dir.path().join(format!("{w}.json"));
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["run", &format!("{}/workloads/{w}.yaml", manifest_dir()), "--nodes", "5", "--pods-per-node", "4"])
            .arg("--report-json")
            .arg(&json)
            .output()
            .unwrap();
        assert!(out.status.success(), "{w}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let phase = r["phases"].as_array().unwrap().iter().find(|p| p["phase"] == check).unwrap();
        assert_eq!(phase["note"], "", "{w}: {phase}");
        assert_eq!(r["pods"]["not_running"], 0, "{w}");
        if w == "churn" {
            assert_eq!(r["pods"]["watch_event_count"], 20, "every churned pod's update was seen on the watch");
            assert!(r["pods"]["watch_event_p99_ms"].as_f64().unwrap() >= r["pods"]["watch_event_p50_ms"].as_f64().unwrap());
        }
    }
}

/// This checkout, asked at run time (cargo sets it for the test process); the compile-time value
/// is where a possibly shared build directory's binary was made.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into())
}
