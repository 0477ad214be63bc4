//! The tiny CI run of scheduler-perf: every workload runs and accounts for every pod.

#[test]
fn every_workload_runs_and_accounts_for_every_pod() {
    for w in ["basic", "anti-affinity", "topology-spread", "preemption", "mixed-churn", "node-selector", "nearly-full"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_scheduler-perf")).args(["--workload", w, "--nodes", "30", "--pods", "120", "--json"]).output().unwrap();
        assert!(out.status.success(), "{w}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["scheduled"].as_u64().unwrap() + v["unschedulable"].as_u64().unwrap(), 120, "{w}");
        assert!(v["attempt_p50_us"].as_f64().unwrap() <= v["attempt_p99_us"].as_f64().unwrap());
        if w == "preemption" {
            assert!(v["preempted"].as_u64().unwrap() > 0, "high-priority pods preempted low ones");
        }
        if w == "basic" {
            assert_eq!(v["unschedulable"], 0, "{w}");
        }
    }
}

fn run(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scheduler-perf")).args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_indexes_and_the_pool_are_used_where_they_should_be() {
    // 4 special nodes of 400: every pod after the first reuses its class's static result.
    let v = run(&["--workload", "node-selector", "--nodes", "400", "--pods", "100"]);
    assert_eq!(v["scheduled"], 100);
    assert_eq!(v["candidates_static_class"], 100, "{v}");
    assert_eq!(v["static_reused"], 99, "{v}");
    // 20 nodes with room of 400: after one full scan, the free-resource index finds them.
    let v = run(&["--workload", "nearly-full", "--nodes", "400", "--pods", "120"]);
    assert_eq!(v["scheduled"], 120);
    assert!(v["candidates_free_index"].as_u64().unwrap() >= 119, "{v}");
    // Every cycle on the pool when asked to.
    let v = run(&["--workload", "anti-affinity", "--nodes", "400", "--pods", "200", "--parallelism", "2", "--parallel-min-nodes", "1"]);
    assert_eq!((v["scheduled"].as_u64(), v["parallel_cycles"].as_u64()), (Some(200), Some(200)), "{v}");
}

#[test]
fn an_unknown_workload_is_refused_with_the_shipped_names() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scheduler-perf")).args(["--workload", "nope", "--nodes", "3", "--pods", "3"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no workload \"nope\"") && err.contains("nearly-full"), "{err}");
}
