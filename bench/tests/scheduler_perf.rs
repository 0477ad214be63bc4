//! The tiny CI run of scheduler-perf: every workload runs and accounts for every pod.

#[test]
fn every_workload_runs_and_accounts_for_every_pod() {
    for w in ["basic", "anti-affinity", "topology-spread", "preemption", "mixed-churn"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_scheduler-perf")).args(["--workload", w, "--nodes", "30", "--pods", "120", "--json"]).output().unwrap();
        assert!(out.status.success(), "{w}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["scheduled"].as_u64().unwrap() + v["unschedulable"].as_u64().unwrap(), 120, "{w}");
        assert!(v["attempt_p50_us"].as_f64().unwrap() <= v["attempt_p99_us"].as_f64().unwrap());
        if w == "preemption" {
            assert!(v["preempted"].as_u64().unwrap() > 0, "high-priority pods preempted low ones");
        }
        if w == "basic" {
            assert_eq!(v["unschedulable"], 0);
        }
    }
}
