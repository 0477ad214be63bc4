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
use scheduler::cache::Cache;
use scheduler::framework::{self, Outcome, Profile, Scratch, Timings};
use scheduler::preemption::schedule_in_memory;
use scheduler::types::{NodeInfo, PodInfo};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// A workload name (basic, anti-affinity, topology-spread, preemption, mixed-churn,
    /// node-selector, nearly-full) or a YAML file.
    #[arg(long, default_value = "basic")]
    workload: String,
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 10000)]
    pods: usize,
    #[arg(long)]
    json: bool,
    /// Filter-and-score workers (1 = the calling thread only); default: the machine's cores.
    #[arg(long)]
    parallelism: Option<usize>,
    /// Nodes to visit from which a cycle goes to the worker pool.
    #[arg(long, default_value_t = framework::PARALLEL_MIN_NODES)]
    parallel_min_nodes: usize,
    /// Run every dynamic filter on every node visited, keeping no verdicts between pods of
    /// a class (to measure what keeping them saves).
    #[arg(long)]
    no_kept_verdicts: bool,
}

/// The shipped workloads, compiled in: a binary never depends on where its sources were checked
/// out (a build directory shared between checkouts would otherwise read another tree's files).
const SHIPPED: &[(&str, &str)] = &[
    ("basic", include_str!("../../scheduler-workloads/basic.yaml")),
    ("anti-affinity", include_str!("../../scheduler-workloads/anti-affinity.yaml")),
    ("topology-spread", include_str!("../../scheduler-workloads/topology-spread.yaml")),
    ("preemption", include_str!("../../scheduler-workloads/preemption.yaml")),
    ("mixed-churn", include_str!("../../scheduler-workloads/mixed-churn.yaml")),
    ("node-selector", include_str!("../../scheduler-workloads/node-selector.yaml")),
    ("nearly-full", include_str!("../../scheduler-workloads/nearly-full.yaml")),
    // kube-scheduler's scheduler_perf workloads as they are there (shapes, init pods,
    // templates): their CI thresholds are in each file and in bench/RESULTS.md.
    ("kube-basic", include_str!("../../scheduler-workloads/kube-basic.yaml")),
    ("kube-pod-anti-affinity", include_str!("../../scheduler-workloads/kube-pod-anti-affinity.yaml")),
    ("pod-affinity", include_str!("../../scheduler-workloads/pod-affinity.yaml")),
    ("preferred-pod-affinity", include_str!("../../scheduler-workloads/preferred-pod-affinity.yaml")),
    ("preferred-pod-anti-affinity", include_str!("../../scheduler-workloads/preferred-pod-anti-affinity.yaml")),
    ("node-affinity", include_str!("../../scheduler-workloads/node-affinity.yaml")),
    ("kube-topology-spreading", include_str!("../../scheduler-workloads/kube-topology-spreading.yaml")),
    ("preferred-topology-spreading", include_str!("../../scheduler-workloads/preferred-topology-spreading.yaml")),
    ("daemonset", include_str!("../../scheduler-workloads/daemonset.yaml")),
    ("preemption-basic", include_str!("../../scheduler-workloads/preemption-basic.yaml")),
    ("required-anti-affinity-ns-selector", include_str!("../../scheduler-workloads/required-anti-affinity-ns-selector.yaml")),
    ("preferred-anti-affinity-ns-selector", include_str!("../../scheduler-workloads/preferred-anti-affinity-ns-selector.yaml")),
    ("preemption-async", include_str!("../../scheduler-workloads/preemption-async.yaml")),
    ("unschedulable", include_str!("../../scheduler-workloads/unschedulable.yaml")),
    ("kube-secrets", include_str!("../../scheduler-workloads/kube-secrets.yaml")),
    ("kube-mixed-base-pod", include_str!("../../scheduler-workloads/kube-mixed-base-pod.yaml")),
];

fn load(w: &str) -> Result<Value> {
    let (name, text) = match SHIPPED.iter().find(|(n, _)| *n == w) {
        Some((n, t)) => (n.to_string(), t.to_string()),
        None if w.ends_with(".yaml") || w.contains('/') => (w.to_string(), std::fs::read_to_string(w).with_context(|| format!("reading workload {w}"))?),
        None => bail!("no workload {w:?}: give a file, or one of {}", SHIPPED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")),
    };
    let v: Value = serde_norway::from_str(&text).with_context(|| format!("{name} is not YAML"))?;
    if !v["node"].is_object() || !v["pod"].is_object() {
        bail!("{name}: a workload needs node: and pod: templates");
    }
    Ok(v)
}

fn node(i: usize, t: &Value) -> NodeInfo {
    let zones = t["zones"].as_u64().unwrap_or(1).max(1) as usize;
    // `zoneValues: [a, b]`: the zone label round-robin over these (scheduler_perf's
    // labelNodePrepareStrategy); else `zone-<i % zones>`.
    let zone = match t["zoneValues"].as_array().filter(|z| !z.is_empty()) {
        Some(z) => z[i % z.len()].as_str().unwrap_or("").to_string(),
        None => format!("zone-{}", i % zones),
    };
    let mut v = json!({"metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}"), "topology.kubernetes.io/zone": zone}},
        "status": {"allocatable": {"cpu": t["cpu"], "memory": t["memory"], "pods": t["pods"].to_string()}}});
    // `labelEvery: N`: every Nth node is in pool "special" (the rest in "general").
    if let Some(every) = t["labelEvery"].as_u64() {
        v["metadata"]["labels"]["pool"] = json!(if i as u64 % every.max(1) == 0 { "special" } else { "general" });
    }
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
    // `namespaces: N`: pod i in namespace `<prefix>-ns-<i % N>` (scheduler_perf's pod sets).
    if let Some(n) = t["namespaces"].as_u64() {
        v["metadata"]["namespace"] = json!(format!("{prefix}-ns-{}", i as u64 % n.max(1)));
    }
    if t["nodeSelector"].is_object() {
        v["spec"]["nodeSelector"] = t["nodeSelector"].clone();
    }
    if t["spreadOverZones"].as_bool() == Some(true) {
        v["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "perf"}}}]);
    }
    // `template:` a Pod's metadata and spec merged over this one (scheduler_perf's pod
    // templates, written as they are there).
    if let Some(tpl) = t.get("template") {
        loadgen::workload::merge(&mut v, tpl);
    }
    PodInfo::from_json(&v).expect("pod template")
}

/// `pod`, and with `perNode: true` bound by required node affinity to node `i % nodes` (a
/// DaemonSet's pods, as its controller writes them: `matchFields metadata.name`).
fn pod_for(i: usize, t: &Value, prefix: &str, nodes: usize) -> PodInfo {
    if t["perNode"].as_bool() != Some(true) {
        return pod(i, t, prefix);
    }
    let mut t = t.clone();
    let term = json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": [format!("node-{}", i % nodes.max(1))]}]});
    loadgen::workload::merge(&mut t, &json!({"template": {"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}}}}));
    pod(i, &t, prefix)
}


/// A `/proc/self/status` memory line (`VmRSS:`, `VmHWM:`), in bytes.
fn rss(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|st| st.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())).unwrap_or(0) * 1024
}

fn main() -> Result<()> {
    let a = Args::parse();
    let w = load(&a.workload)?;
    let name = w["name"].as_str().unwrap_or(&a.workload).to_string();
    let rss_start = rss("VmRSS:");
    let t_build = Instant::now();
    let mut cache = Cache::default();
    for i in 0..a.nodes {
        cache.upsert_node(node(i, &w["node"]));
    }
    // Pre-placed pods (the preemption and nearly-full workloads); `skipEvery: N` leaves every
    // Nth node empty.
    if w["fill"].is_object() {
        let per = w["fill"]["perNode"].as_u64().unwrap_or(0) as usize;
        let skip = w["fill"]["skipEvery"].as_u64().unwrap_or(0) as usize;
        for i in 0..a.nodes {
            if skip > 0 && i % skip == 0 {
                continue;
            }
            for k in 0..per {
                cache.place(Arc::new(pod(i * per + k, &w["fill"], "fill")), &format!("node-{i}"), false);
            }
        }
    }
    // Namespaces' labels (for namespaceSelector): those of the init and measured pods.
    if let Some(labels) = w["namespaceLabels"].as_object() {
        let labels: scheduler::types::Labels = labels.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect();
        for (part, prefix) in [("init", "init"), ("pod", "p")] {
            for k in 0..w[part]["namespaces"].as_u64().unwrap_or(0) {
                cache.set_namespace(format!("{prefix}-ns-{k}"), Some(labels.clone()));
            }
        }
    }
    let built = t_build.elapsed();
    // What the nodes (and pre-placed pods) cost the cache.
    let state_bytes = rss("VmRSS:").saturating_sub(rss_start);
    let mut profile = Profile::default();
    // `init: {count: N, ...template}`: pods scheduled (not measured) before the measured ones,
    // as scheduler_perf's init pods.
    // A list of such groups runs them in order (MixedSchedulingBasePod's five templates).
    let mut init_scheduled = 0u64;
    let init_groups: Vec<(&Value, String)> = match &w["init"] {
        Value::Array(groups) => groups.iter().enumerate().map(|(g, v)| (v, format!("init{g}"))).collect(),
        v if v.is_object() => vec![(v, "init".to_string())],
        _ => Vec::new(),
    };
    for (group, prefix) in init_groups {
        let mut scratch = Scratch::new(None);
        for i in 0..group["count"].as_u64().unwrap_or(0) as usize {
            let p = pod(i, group, &prefix);
            let mut t = Timings::default();
            if let Outcome::Scheduled { node, .. } = framework::schedule(&profile, &p, &cache, i % cache.nodes().len().max(1), &mut scratch, &mut t) {
                let name = cache.nodes()[node].name.clone();
                cache.place(Arc::new(p), &name, false);
                init_scheduled += 1;
            }
        }
    }
    if let Some(n) = a.parallelism {
        profile.parallelism = n;
    }
    let mut scratch = Scratch::new(framework::worker_pool(profile.parallelism));
    scratch.parallel_min_nodes = a.parallel_min_nodes;
    scratch.memo = !a.no_kept_verdicts;
    let mut kept = 0u64;
    let mut sources = [0u64; 4];
    let (mut reused, mut parallel) = (0u64, 0u64);
    let churn = w["churnEvery"].as_u64().unwrap_or(0) as usize;
    let pods: Vec<PodInfo> = (0..a.pods).map(|i| pod_for(i, &w["pod"], "p", a.nodes)).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut scheduled, mut unschedulable, mut preempted) = (0u64, 0u64, 0u64);
    let mut placed: Vec<String> = Vec::new();
    let mut preempt_offset = 0usize;
    let interleave = w["interleave"]["every"].as_u64().unwrap_or(0) as usize;
    // (scheduled, unschedulable) of the interleaved pods.
    let mut interleaved = (0u64, 0u64);
    let start = Instant::now();
    for (i, p) in pods.into_iter().enumerate() {
        let t0 = Instant::now();
        let mut t = Timings::default();
        let start_at = i % cache.nodes().len().max(1);
        let (outcome, victims) = schedule_in_memory(&profile, &p, &mut cache, &mut scratch, start_at, start_at, &mut preempt_offset, &mut t);
        preempted += victims.map_or(0, |v| v.len() as u64);
        let _ = hist.record(t0.elapsed().as_nanos().max(1) as u64);
        sources[t.candidates.index()] += 1;
        reused += u64::from(t.static_reused);
        kept += t.verdicts_kept as u64;
        parallel += u64::from(t.parallel);
        match outcome {
            Outcome::Scheduled { node, .. } => {
                scheduled += 1;
                placed.push(p.uid.clone());
                let name = cache.nodes()[node].name.clone();
                cache.place(Arc::new(p), &name, true);
            }
            Outcome::Unschedulable { .. } => unschedulable += 1,
        }
        if churn > 0 && i % churn == churn - 1 && !placed.is_empty() {
            let uid = placed.swap_remove((i * 7919) % placed.len());
            cache.unplace(&uid);
        }
        // `interleave: {every: N, ...template}`: a pod of another kind tried after every N
        // measured ones (scheduler_perf's pods created at 5/s beside the measured ones):
        // its attempts (and preemptions) take the cycle's time but are not measured.
        if interleave > 0 && i % interleave == interleave - 1 {
            let q = pod(i, &w["interleave"], "x");
            let mut t = Timings::default();
            let start_at = i % cache.nodes().len().max(1);
            let (o, victims) = schedule_in_memory(&profile, &q, &mut cache, &mut scratch, start_at, start_at, &mut preempt_offset, &mut t);
            preempted += victims.map_or(0, |v| v.len() as u64);
            match o {
                Outcome::Scheduled { node, .. } => {
                    let name = cache.nodes()[node].name.clone();
                    cache.place(Arc::new(q), &name, true);
                    interleaved.0 += 1;
                }
                Outcome::Unschedulable { .. } => interleaved.1 += 1,
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // The process's peak resident memory (cluster state, indexes, the pods placed).
    let peak_rss = rss("VmHWM:");
    let out = json!({
        "workload": name, "nodes": a.nodes, "pods": a.pods,
        "pods_per_sec": a.pods as f64 / secs.max(1e-9),
        "attempt_p50_us": hist.value_at_quantile(0.5) as f64 / 1000.0,
        "attempt_p99_us": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "attempt_p999_us": hist.value_at_quantile(0.999) as f64 / 1000.0,
        "scheduled": scheduled, "unschedulable": unschedulable, "preempted": preempted,
        "candidates_all": sources[0], "candidates_static_class": sources[1], "candidates_free_index": sources[2], "candidates_spread_domains": sources[3],
        "static_reused": reused, "verdicts_kept": kept, "parallel_cycles": parallel, "parallelism": profile.parallelism,
        "init_scheduled": init_scheduled,
        "interleaved_scheduled": interleaved.0, "interleaved_unschedulable": interleaved.1,
        "peak_rss_bytes": peak_rss, "state_bytes": state_bytes, "state_bytes_per_node": state_bytes / a.nodes.max(1) as u64, "build_seconds": built.as_secs_f64(),
    });
    // Nothing placed over its node's allocatable.
    for n in cache.nodes() {
        if n.requested.cpu > n.allocatable.cpu || n.requested.memory > n.allocatable.memory || n.requested.pods > n.allocatable.pods {
            bail!("{} is over its allocatable: {:?} > {:?}", n.name, n.requested, n.allocatable);
        }
    }
    if a.json {
        println!("{out}");
    } else {
        println!(
            "{name}: {} nodes, {} pods in {secs:.2} s: {:.0} pods/s; attempt p50 {:.1} us, p99 {:.1} us, p999 {:.1} us; scheduled {scheduled}, unschedulable {unschedulable}, victims {preempted}; candidates all/class/free-index/spread-domains {}/{}/{}/{}, static results reused {reused}, node verdicts kept {kept}, parallel {parallel}; peak RSS {} MiB, cluster state {} MiB ({:.1} KiB per node) built in {:.2} s",
            a.nodes, a.pods, out["pods_per_sec"].as_f64().unwrap_or(0.0), out["attempt_p50_us"].as_f64().unwrap_or(0.0), out["attempt_p99_us"].as_f64().unwrap_or(0.0), out["attempt_p999_us"].as_f64().unwrap_or(0.0), sources[0], sources[1], sources[2], sources[3], peak_rss >> 20, state_bytes >> 20, state_bytes as f64 / 1024.0 / a.nodes.max(1) as f64, built.as_secs_f64()
        );
    }
    Ok(())
}
