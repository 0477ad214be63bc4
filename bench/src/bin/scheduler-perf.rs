//! scheduler-perf: capstan's scheduling cycle in-process against an in-memory cluster state
//! (no API server, no binding), after kube-scheduler's scheduler_perf. Workloads are YAML
//! files (bench/scheduler-workloads/) or their names. Every attempt is timed into an
//! hdrhistogram; the end-to-end figure (through `capstan up`, binding included) comes from
//! bench/scheduler-run.sh.
//!
//! `cargo run --release -p bench --bin scheduler-perf -- --workload basic --nodes 5000 --pods 50000 [--json]`

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use scheduler::framework::{self, Outcome, Profile, Timings};
use scheduler::types::{NodeInfo, PodInfo};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// A workload name (basic, anti-affinity, topology-spread, preemption, mixed-churn) or a
    /// YAML file.
    #[arg(long, default_value = "basic")]
    workload: String,
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 10000)]
    pods: usize,
    #[arg(long)]
    json: bool,
}

fn load(w: &str) -> Result<Value> {
    let path = if w.ends_with(".yaml") { std::path::PathBuf::from(w) } else { std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scheduler-workloads").join(format!("{w}.yaml")) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading workload {}", path.display()))?;
    let v: Value = serde_norway::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    if !v["node"].is_object() || !v["pod"].is_object() {
        bail!("{}: a workload needs node: and pod: templates", path.display());
    }
    Ok(v)
}

fn node(i: usize, t: &Value) -> NodeInfo {
    let zones = t["zones"].as_u64().unwrap_or(1).max(1) as usize;
    let v = json!({"metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}"), "topology.kubernetes.io/zone": format!("zone-{}", i % zones)}},
        "status": {"allocatable": {"cpu": t["cpu"], "memory": t["memory"], "pods": t["pods"].to_string()}}});
    NodeInfo::from_json(&v).expect("node template")
}

fn pod(i: usize, t: &Value, prefix: &str) -> PodInfo {
    let mut v = json!({"metadata": {"name": format!("{prefix}-{i}"), "namespace": "perf", "uid": format!("{prefix}-{i}"), "labels": {"app": "perf"}},
        "spec": {"priority": t["priority"].as_i64().unwrap_or(0), "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": t["cpu"], "memory": t["memory"]}}}]}});
    if let Some(groups) = t["antiAffinityGroups"].as_u64() {
        let g = format!("g{}", i as u64 % groups.max(1));
        v["metadata"]["labels"]["group"] = json!(g);
        v["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"group": g}}, "topologyKey": "kubernetes.io/hostname"}]}});
    }
    if t["spreadOverZones"].as_bool() == Some(true) {
        v["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "perf"}}}]);
    }
    PodInfo::from_json(&v).expect("pod template")
}

fn main() -> Result<()> {
    let a = Args::parse();
    let w = load(&a.workload)?;
    let name = w["name"].as_str().unwrap_or(&a.workload).to_string();
    let mut nodes: Vec<NodeInfo> = (0..a.nodes).map(|i| node(i, &w["node"])).collect();
    // Pre-placed low-priority pods (the preemption workload).
    if w["fill"].is_object() {
        let per = w["fill"]["perNode"].as_u64().unwrap_or(0) as usize;
        for (i, n) in nodes.iter_mut().enumerate() {
            for k in 0..per {
                n.add_pod(Arc::new(pod(i * per + k, &w["fill"], "fill")));
            }
        }
    }
    let profile = Profile::default();
    let churn = w["churnEvery"].as_u64().unwrap_or(0) as usize;
    let pods: Vec<PodInfo> = (0..a.pods).map(|i| pod(i, &w["pod"], "p")).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut scheduled, mut unschedulable, mut preempted) = (0u64, 0u64, 0u64);
    let mut placed: Vec<(usize, String)> = Vec::new();
    let start = Instant::now();
    for (i, p) in pods.into_iter().enumerate() {
        let t0 = Instant::now();
        let mut t = Timings::default();
        let mut outcome = framework::schedule(&profile, &p, &nodes, i % nodes.len().max(1), &mut t);
        if matches!(outcome, Outcome::Unschedulable { .. }) && p.priority > 0
            && let Some((ni, victims)) = framework::preempt(&profile, &p, &nodes)
        {
            for v in &victims {
                nodes[ni].remove_pod(&v.uid);
            }
            preempted += victims.len() as u64;
            outcome = framework::schedule(&profile, &p, &nodes, i % nodes.len().max(1), &mut t);
        }
        let _ = hist.record(t0.elapsed().as_nanos().max(1) as u64);
        match outcome {
            Outcome::Scheduled { node, .. } => {
                scheduled += 1;
                placed.push((node, p.uid.clone()));
                nodes[node].add_pod(Arc::new(p));
            }
            Outcome::Unschedulable { .. } => unschedulable += 1,
        }
        if churn > 0 && i % churn == churn - 1 && !placed.is_empty() {
            let (n, uid) = placed.swap_remove((i * 7919) % placed.len());
            nodes[n].remove_pod(&uid);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let out = json!({
        "workload": name, "nodes": a.nodes, "pods": a.pods,
        "pods_per_sec": a.pods as f64 / secs.max(1e-9),
        "attempt_p50_us": hist.value_at_quantile(0.5) as f64 / 1000.0,
        "attempt_p99_us": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "attempt_p999_us": hist.value_at_quantile(0.999) as f64 / 1000.0,
        "scheduled": scheduled, "unschedulable": unschedulable, "preempted": preempted,
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "{name}: {} nodes, {} pods in {secs:.2} s: {:.0} pods/s; attempt p50 {:.1} us, p99 {:.1} us, p999 {:.1} us; scheduled {scheduled}, unschedulable {unschedulable}, victims {preempted}",
            a.nodes, a.pods, out["pods_per_sec"].as_f64().unwrap_or(0.0), out["attempt_p50_us"].as_f64().unwrap_or(0.0), out["attempt_p99_us"].as_f64().unwrap_or(0.0), out["attempt_p999_us"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
