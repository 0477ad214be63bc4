//! `capstan scheduler snapshot` and `capstan scheduler simulate`: a cluster's nodes and bound
//! pods taken from a live API server into a file, and a workload (loadgen's format) scheduled
//! against such a file, or against generated nodes, in memory with the scheduler's own code
//! (`scheduler::simulate`). Files are checked here: size, JSON, kinds, each refused with the
//! file, the position and the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use loadgen::workload;
use scheduler::types::{NodeInfo, PodInfo};

/// The largest snapshot or workload file read (a snapshot of 65,000 nodes and 150,000 pods is
/// well under it).
const MAX_FILE: u64 = 4 << 30;
const SNAPSHOT_KIND: &str = "SchedulerSnapshot";

#[derive(clap::Subcommand)]
pub enum SchedulerOp {
    /// Print the cluster's nodes and the pods bound to them (JSON), for `simulate --cluster`.
    Snapshot {
        /// The API server (default: the kubeconfig's, else http://127.0.0.1:6443).
        #[arg(long)]
        server: Option<String>,
        /// The kubeconfig whose current context gives the server and the credentials.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Schedule a workload's pods in memory with the real scheduler code (no API server) and
    /// report every placement, the unschedulable pods, per-plugin latency and the cluster after.
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// A snapshot (`capstan scheduler snapshot`); without one, the workload's `createNodes`
    /// phases make nodes as loadgen's hollow nodes are.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// A workload file in loadgen's format; its pod-creating phases give the pods, in order.
    #[arg(long)]
    workload: PathBuf,
    /// The workload's `nodes` variable.
    #[arg(long, default_value_t = 100)]
    nodes: u64,
    /// The workload's `podsPerNode` variable (`pods` is nodes x podsPerNode).
    #[arg(long, default_value_t = 30)]
    pods_per_node: u64,
    /// A KubeSchedulerConfiguration (its first profile is simulated).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A second KubeSchedulerConfiguration, simulated on the same input and compared.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Where to write the report as JSON (default: a summary on stdout).
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Where to write the report as an HTML page.
    #[arg(long)]
    report_html: Option<PathBuf>,
}

pub async fn snapshot(c: client::Client) -> Result<()> {
    let nodes = c.get("/api/v1/nodes").await.map_err(|e| anyhow!("listing nodes: {e}"))?;
    let pods = c.get("/api/v1/pods").await.map_err(|e| anyhow!("listing pods: {e}"))?;
    let bound: Vec<Value> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .map(|p| with_kind(p, "Pod"))
        .collect();
    let nodes: Vec<Value> = nodes["items"].as_array().into_iter().flatten().map(|n| with_kind(n, "Node")).collect();
    let out = json!({"apiVersion": "capstan.io/v1", "kind": SNAPSHOT_KIND, "nodes": nodes, "pods": bound});
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &out)?;
    use std::io::Write;
    writeln!(stdout)?;
    Ok(())
}

fn with_kind(v: &Value, kind: &str) -> Value {
    let mut v = v.clone();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!(kind);
    v
}

fn read_bounded(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.len();
    if len > MAX_FILE {
        bail!("{}: {len} bytes, more than the {} a file may have", path.display(), MAX_FILE);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// A snapshot file: nodes in order, and the pods bound to them.
pub fn read_snapshot(path: &Path) -> Result<(Vec<NodeInfo>, Vec<(Arc<PodInfo>, String)>)> {
    let text = read_bounded(path)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: line {} column {}: {e}", path.display(), e.line(), e.column()))?;
    if v["kind"] != SNAPSHOT_KIND {
        bail!("{}: kind {} is not {SNAPSHOT_KIND} (make one with `capstan scheduler snapshot`)", path.display(), v["kind"]);
    }
    let mut nodes = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, n) in v["nodes"].as_array().ok_or_else(|| anyhow!("{}: `nodes` is not a list", path.display()))?.iter().enumerate() {
        if n["kind"] != "Node" {
            bail!("{}: nodes[{i}]: kind {} is not Node", path.display(), n["kind"]);
        }
        let node = NodeInfo::from_json(n).map_err(|e| anyhow!("{}: nodes[{i}]: {e}", path.display()))?;
        if node.name.is_empty() || !names.insert(node.name.clone()) {
            bail!("{}: nodes[{i}]: no name, or a name given twice ({:?})", path.display(), node.name);
        }
        nodes.push(node);
    }
    let mut bound = Vec::new();
    for (i, p) in v["pods"].as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
        if p["kind"] != "Pod" {
            bail!("{}: pods[{i}]: kind {} is not Pod", path.display(), p["kind"]);
        }
        let pod = PodInfo::from_json(p).map_err(|e| anyhow!("{}: pods[{i}]: {e}", path.display()))?;
        if !names.contains(&pod.node_name) {
            bail!("{}: pods[{i}] ({}): bound to {:?}, which is not among the nodes", path.display(), pod.key(), pod.node_name);
        }
        let node = pod.node_name.clone();
        bound.push((Arc::new(pod), node));
    }
    Ok((nodes, bound))
}

/// The nodes and pods a workload makes, in order; and the phases that have nothing to
/// simulate (waits, deletions, API storms), by name.
pub fn expand(w: &workload::Workload, vars: &workload::Vars, make_nodes: bool) -> Result<(Vec<NodeInfo>, Vec<PodInfo>, Vec<String>)> {
    let (mut nodes, mut pods, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    let mut uid = 0u64;
    let mut next_node = 0usize;
    for (i, ph) in w.phases.iter().enumerate() {
        let a = &ph.args;
        let count = |k: &str| vars.count(&a[k]).map_err(|e| anyhow!("phase {i} ({}): {k}: {e}", ph.kind));
        let ns = a["namespace"].as_str().unwrap_or("loadgen").to_string();
        let mut add = |name: String, app: &str, pods: &mut Vec<PodInfo>| -> Result<()> {
            let mut v = workload::pod_template(app, a);
            uid += 1;
            v["metadata"]["name"] = json!(name);
            v["metadata"]["namespace"] = json!(ns);
            v["metadata"]["uid"] = json!(format!("sim-{uid}"));
            pods.push(PodInfo::from_json(&v).map_err(|e| anyhow!("phase {i} ({}): the pod template: {e}", ph.kind))?);
            Ok(())
        };
        match ph.kind.as_str() {
            "createNodes" if make_nodes => {
                let cfg = kubelet::HollowConfig { name_prefix: "loadgen-node-".into(), ..Default::default() };
                for _ in 0..count("count")? {
                    nodes.push(NodeInfo::from_json(&cfg.node(next_node).api_object()).map_err(|e| anyhow!("phase {i}: {e}"))?);
                    next_node += 1;
                }
            }
            "createNodes" => skipped.push(format!("{} (the snapshot's nodes are used)", ph.kind)),
            "createNamespace" => {}
            "createPods" => {
                for k in 0..count("count")? {
                    add(format!("p-{k}"), "bare", &mut pods)?;
                }
            }
            "createDeployments" | "createReplicaSets" | "createJobs" => {
                let (n, replicas) = (count("count")?, count("replicas")?);
                let prefix = match ph.kind.as_str() {
                    "createDeployments" => "d",
                    "createReplicaSets" => "rs",
                    _ => "j",
                };
                for d in 0..n {
                    let owner = format!("{prefix}-{d}");
                    for r in 0..replicas {
                        add(format!("{owner}-{r}"), &owner, &mut pods)?;
                    }
                }
            }
            other => skipped.push(other.to_string()),
        }
    }
    Ok((nodes, pods, skipped))
}

fn profile_of(path: Option<&Path>) -> Result<scheduler::framework::Profile> {
    let Some(p) = path else { return Ok(Default::default()) };
    let text = read_bounded(p)?;
    let mut profiles = scheduler::config::parse(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    if profiles.is_empty() {
        bail!("{}: no profile", p.display());
    }
    let mut first = profiles.swap_remove(0);
    // Named after the file when the profile keeps the default name, so two are told apart.
    if first.scheduler_name == "default-scheduler" {
        first.scheduler_name = p.file_name().map_or("config".into(), |f| f.to_string_lossy().into_owned());
    }
    Ok(first)
}

pub fn simulate(a: SimulateArgs) -> Result<()> {
    let text = read_bounded(&a.workload)?;
    let w = workload::parse(&text).map_err(|e| anyhow!("{}: {e}", a.workload.display()))?;
    let vars = workload::Vars { nodes: a.nodes, pods_per_node: a.pods_per_node };
    let (mut nodes, bound) = match &a.cluster {
        Some(p) => read_snapshot(p)?,
        None => (Vec::new(), Vec::new()),
    };
    let (made, pods, skipped) = expand(&w, &vars, a.cluster.is_none()).map_err(|e| anyhow!("{}: {e}", a.workload.display()))?;
    nodes.extend(made);
    if nodes.is_empty() {
        bail!("no nodes: give --cluster SNAPSHOT, or a workload with a createNodes phase");
    }
    let input = scheduler::simulate::Input { nodes, bound, pods };
    let first = profile_of(a.config.as_deref())?;
    let second = a.compare.as_deref().map(|p| profile_of(Some(p))).transpose()?;
    let mut reports = vec![scheduler::simulate::run(&input, &first)];
    if let Some(p) = &second {
        reports.push(scheduler::simulate::run(&input, p));
    }
    let mut out: Vec<Value> = reports.iter().map(|r| r.to_json()).collect();
    for o in &mut out {
        o["workload"] = json!(w.name);
        o["nodes"] = json!(input.nodes.len());
        o["bound_before"] = json!(input.bound.len());
        o["phases_not_simulated"] = json!(skipped);
    }
    let doc = if let [x, y] = reports.as_slice() {
        let d = scheduler::simulate::differences(x, y);
        json!({"reports": out, "differences": d.iter().map(|(p, a, b)| json!({"pod": p, "a": a, "b": b})).collect::<Vec<_>>()})
    } else {
        out.remove(0)
    };
    if let Some(p) = &a.report_json {
        std::fs::write(p, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.report_html {
        let refs: Vec<&scheduler::simulate::Report> = reports.iter().collect();
        std::fs::write(p, scheduler::simulate::html(&refs)).with_context(|| format!("writing {}", p.display()))?;
    }
    for r in &reports {
        let j = r.to_json();
        println!(
            "{}: {} pods on {} nodes: {} scheduled, {} unschedulable, {} preempted; attempt p50 {:.1} us, p99 {:.1} us; cpu {:.1}% used",
            r.profile, r.placements.len(), input.nodes.len(), r.scheduled(), r.placements.len() - r.scheduled(), j["preempted"],
            j["attempt"]["p50_us"].as_f64().unwrap_or(0.0), j["attempt"]["p99_us"].as_f64().unwrap_or(0.0), j["utilisation"]["cpu"]["cluster"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    if let [x, y] = reports.as_slice() {
        println!("placements that differ: {} of {}", scheduler::simulate::differences(x, y).len(), x.placements.len());
    }
    if !skipped.is_empty() {
        println!("not simulated: {}", skipped.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_expand_to_loadgens_pods_in_order() {
        let w = workload::parse("name: t\nphases:\n- createNodes: {count: nodes}\n- createPods: {namespace: a, count: 3, template: {spec: {priority: 5}}}\n- createDeployments: {namespace: b, count: 2, replicas: 2}\n- waitPodsRunning: {namespace: a, expected: pods}\n").unwrap();
        let (nodes, pods, skipped) = expand(&w, &workload::Vars { nodes: 4, pods_per_node: 1 }, true).unwrap();
        assert_eq!(nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["loadgen-node-0", "loadgen-node-1", "loadgen-node-2", "loadgen-node-3"]);
        assert_eq!(pods.iter().map(|p| p.key()).collect::<Vec<_>>(), ["a/p-0", "a/p-1", "a/p-2", "b/d-0-0", "b/d-0-1", "b/d-1-0", "b/d-1-1"]);
        assert_eq!(pods[0].priority, 5);
        assert_eq!(pods[3].labels["app"], "d-0");
        assert_eq!(skipped, ["waitPodsRunning"]);
        let bad = workload::parse("phases:\n- createPods: {count: lots}\n").unwrap();
        assert!(expand(&bad, &workload::Vars { nodes: 1, pods_per_node: 1 }, true).unwrap_err().to_string().contains("count"));
    }

    #[test]
    fn bad_snapshots_are_refused_with_the_place_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let f = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            read_snapshot(&p).unwrap_err().to_string()
        };
        assert!(f("a", "{\"kind\": \"SchedulerSnapshot\",\n \"nodes\": [}").contains("line 2 column"));
        assert!(f("b", "{\"kind\": \"Other\"}").contains("is not SchedulerSnapshot"));
        assert!(f("c", r#"{"kind": "SchedulerSnapshot", "nodes": [{"kind": "Service"}]}"#).contains("nodes[0]: kind \"Service\" is not Node"));
        let node = r#"{"kind": "Node", "metadata": {"name": "n1"}}"#;
        assert!(f("d", &format!(r#"{{"kind": "SchedulerSnapshot", "nodes": [{node}, {node}]}}"#)).contains("nodes[1]: no name, or a name given twice"));
        assert!(f("e", &format!(r#"{{"kind": "SchedulerSnapshot", "nodes": [{node}], "pods": [{{"kind": "Pod", "metadata": {{"name": "p", "namespace": "x"}}, "spec": {{"nodeName": "n9", "containers": []}}}}]}}"#)).contains("pods[0] (x/p): bound to \"n9\""));
    }
}
