//! Workload files: named phases run in order, with counts given as numbers or as the
//! run's variables (`nodes`, `pods`, `deployments`, `replicasPerDeployment`), and targets the
//! verdicts are computed against.

use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Vars {
    pub nodes: u64,
    pub pods_per_node: u64,
}

impl Vars {
    pub fn pods(&self) -> u64 {
        self.nodes * self.pods_per_node
    }
    pub fn replicas_per_deployment(&self) -> u64 {
        self.pods().clamp(1, 100)
    }
    pub fn deployments(&self) -> u64 {
        self.pods().div_ceil(self.replicas_per_deployment())
    }

    /// A count: a number, or a variable's name.
    pub fn count(&self, v: &Value) -> Result<u64, String> {
        match v {
            Value::Number(n) => n.as_u64().ok_or_else(|| format!("{n} is not a count")),
            Value::String(s) => match s.as_str() {
                "nodes" => Ok(self.nodes),
                "pods" => Ok(self.pods()),
                "podsPerNode" => Ok(self.pods_per_node),
                "deployments" => Ok(self.deployments()),
                "replicasPerDeployment" => Ok(self.replicas_per_deployment()),
                other => other.parse().map_err(|_| format!("unknown count {other:?} (a number, nodes, pods, podsPerNode, deployments, replicasPerDeployment)")),
            },
            _ => Err(format!("{v} is not a count")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Phase {
    pub kind: String,
    pub args: Value,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub phases: Vec<Phase>,
    pub targets: Value,
}

pub const PHASES: &[&str] = &[
    "createNodes",
    "createNamespace",
    "createDeployments",
    "createPods",
    "createReplicaSets",
    "createJobs",
    "rollingUpdate",
    "waitPodsRunning",
    "scaleDeployments",
    "deleteDeployments",
    "churnPods",
    "listStorm",
    "watchStorm",
];

/// The pod a pod-creating phase makes (loadgen's live runs and the scheduler simulator alike):
/// 10m CPU, 16Mi memory, labelled `app: <app>`, with the phase's `template` (a Pod's
/// `metadata.labels` and `spec` fields, e.g. affinity, priority, larger requests) merged over it.
pub fn pod_template(app: &str, phase: &Value) -> Value {
    let mut t = serde_json::json!({"metadata": {"labels": {"app": app, "loadgen": "true"}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
    if let Some(over) = phase.get("template") {
        merge(&mut t, over);
    }
    t
}

/// `over` merged into `base`: objects key by key, anything else replaced (lists whole).
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

pub fn parse(text: &str) -> Result<Workload, String> {
    let v: Value = serde_norway::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let name = v["name"].as_str().unwrap_or("workload").to_string();
    let mut phases = Vec::new();
    for (i, p) in v["phases"].as_array().ok_or("a workload needs a list of phases")?.iter().enumerate() {
        let m = p.as_object().filter(|m| m.len() == 1).ok_or_else(|| format!("phase {i}: one key naming the phase, e.g. createPods: {{...}}"))?;
        let (kind, args) = m.iter().next().unwrap();
        if !PHASES.contains(&kind.as_str()) {
            return Err(format!("phase {i}: unknown phase {kind:?} (known: {})", PHASES.join(", ")));
        }
        phases.push(Phase { kind: kind.clone(), args: args.clone() });
    }
    Ok(Workload { name, phases, targets: v["targets"].clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_workloads_parse() {
        for f in ["density", "load", "churn", "scheduler-basic"] {
            let text = std::fs::read_to_string(format!("{}/workloads/{f}.yaml", std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()))).unwrap();
            let w = parse(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(!w.phases.is_empty());
        }
    }

    #[test]
    fn a_phase_template_is_merged_over_the_pod() {
        let p = pod_template("web", &serde_json::json!({"template": {"metadata": {"labels": {"tier": "a"}}, "spec": {"priority": 7, "containers": [{"name": "big", "resources": {"requests": {"cpu": "2"}}}]}}}));
        assert_eq!(p["metadata"]["labels"], serde_json::json!({"app": "web", "loadgen": "true", "tier": "a"}));
        assert_eq!(p["spec"]["priority"], 7);
        assert_eq!(p["spec"]["containers"][0]["name"], "big", "lists are replaced whole");
        assert_eq!(pod_template("x", &serde_json::json!({}))["spec"]["containers"][0]["resources"]["requests"]["cpu"], "10m");
    }

    #[test]
    fn counts_and_errors() {
        let v = Vars { nodes: 5000, pods_per_node: 30 };
        assert_eq!(v.count(&serde_json::json!("pods")).unwrap(), 150_000);
        assert_eq!(v.deployments(), 1500);
        assert!(v.count(&serde_json::json!("lots")).is_err());
        assert!(parse("phases: [{bogus: {}}]").unwrap_err().contains("unknown phase"));
        assert!(parse("phases: 3").is_err());
    }
}
