//! The scheduler's compact view of pods and nodes, parsed once from the API's objects
//! (through `k8s-openapi`'s types) when they arrive, so that a scheduling cycle never touches
//! JSON: resources as integers, labels and selectors as small vectors.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::Quantity;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sLabelSelector;

pub type Labels = BTreeMap<String, String>;

/// Requested or allocatable resources: cpu in millicores, memory and ephemeral storage in
/// bytes, pods as a count, extended resources by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub ephemeral: i64,
    pub pods: i64,
    pub scalar: Vec<(String, i64)>,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.ephemeral += o.ephemeral;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            match self.scalar.iter_mut().find(|(x, _)| x == k) {
                Some((_, s)) => *s += v,
                None => self.scalar.push((k.clone(), *v)),
            }
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.ephemeral -= o.ephemeral;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            if let Some((_, s)) = self.scalar.iter_mut().find(|(x, _)| x == k) {
                *s -= v;
            }
        }
    }

    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
    }

    fn from_map(m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Resources {
        let mut r = Resources::default();
        for (k, q) in m {
            let Ok(q) = Quantity::parse(&q.0) else { continue };
            match k.as_str() {
                "cpu" => r.cpu = q.milli,
                "memory" => r.memory = q.units_ceil(),
                "ephemeral-storage" => r.ephemeral = q.units_ceil(),
                "pods" => r.pods = q.units_ceil(),
                // hugepages and extended resources (vendor.com/gpu...) are counted by name.
                _ => r.scalar.push((k.clone(), q.units_ceil())),
            }
        }
        r
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_value(labels.get(&self.key))
    }

    /// Whether a label (or field) value, `None` when absent, satisfies the requirement.
    pub fn matches_value(&self, v: Option<&String>) -> bool {
        match &self.op {
            Op::In(vals) => v.is_some_and(|v| vals.contains(v)),
            Op::NotIn(vals) => v.is_none_or(|v| !vals.contains(v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
            Op::Gt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|x| x > *n),
            Op::Lt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|x| x < *n),
        }
    }

    fn parse(key: &str, op: &str, values: Option<&Vec<String>>) -> Option<Requirement> {
        let vals = values.cloned().unwrap_or_default();
        let num = || vals.first().and_then(|v| v.parse().ok());
        let op = match op {
            "In" => Op::In(vals),
            "NotIn" => Op::NotIn(vals),
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            "Gt" => Op::Gt(num()?),
            "Lt" => Op::Lt(num()?),
            _ => return None,
        };
        Some(Requirement { key: key.to_string(), op })
    }
}

/// A label selector (`matchLabels` + `matchExpressions`); `None` in a term means "nothing".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    pub fn from_k8s(s: &K8sLabelSelector) -> Option<Selector> {
        let mut reqs = Vec::new();
        for (k, v) in s.match_labels.iter().flatten() {
            reqs.push(Requirement { key: k.clone(), op: Op::In(vec![v.clone()]) });
        }
        for e in s.match_expressions.iter().flatten() {
            reqs.push(Requirement::parse(&e.key, &e.operator, e.values.as_ref())?);
        }
        Some(Selector(reqs))
    }
}

/// One `nodeSelectorTerms` entry: label requirements and `metadata.name` field requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeTerm {
    pub labels: Vec<Requirement>,
    pub names: Vec<Requirement>,
}

impl NodeTerm {
    pub fn matches(&self, node: &NodeInfo) -> bool {
        if self.labels.is_empty() && self.names.is_empty() {
            return false; // an empty term matches nothing
        }
        self.labels.iter().all(|r| r.matches(&node.labels)) && self.names.iter().all(|r| r.matches_value(Some(&node.name)))
    }

    pub fn from_k8s(t: &core::NodeSelectorTerm) -> NodeTerm {
        let conv = |list: &Option<Vec<core::NodeSelectorRequirement>>, field: bool| -> Vec<Requirement> {
            list.iter()
                .flatten()
                .map(|r| {
                    let key = if field { "metadata.name" } else { r.key.as_str() };
                    // An unparsable requirement matches nothing (as Kubernetes rejects it).
                    Requirement::parse(key, &r.operator, r.values.as_ref()).unwrap_or(Requirement { key: key.into(), op: Op::In(vec![]) })
                })
                .collect()
        };
        NodeTerm { labels: conv(&t.match_expressions, false), names: conv(&t.match_fields, true) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Toleration {
    pub key: String,
    pub exists: bool,
    pub value: String,
    pub effect: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl Toleration {
    pub fn tolerates(&self, t: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != t.effect {
            return false;
        }
        if self.key.is_empty() {
            return self.exists;
        }
        self.key == t.key && (self.exists || self.value == t.value)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AffinityTerm {
    pub selector: Selector,
    /// Namespaces the term names (the pod's own when it names none and has no
    /// namespaceSelector).
    pub namespaces: Vec<String>,
    /// `namespaceSelector`: namespaces by their labels as well (`{}`: every namespace).
    pub namespace_selector: Option<Selector>,
    pub topology_key: String,
}

impl AffinityTerm {
    /// Whether the term looks at namespace `ns`, whose labels are `labels` (None: unknown).
    pub fn covers(&self, ns: &str, labels: Option<&Labels>) -> bool {
        self.namespaces.iter().any(|n| n == ns) || self.namespace_selector.as_ref().is_some_and(|s| s.matches(labels.unwrap_or(&Labels::new())))
    }

    /// Whether the term selects pod `p`, in a namespace labelled `ns_labels`.
    pub fn matches_pod(&self, p: &PodInfo, ns_labels: Option<&Labels>) -> bool {
        self.covers(&p.namespace, ns_labels) && self.selector.matches(&p.labels)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpreadConstraint {
    pub max_skew: i64,
    pub topology_key: String,
    pub hard: bool,
    pub selector: Selector,
    pub min_domains: Option<i64>,
}

/// A pod as the scheduler decodes it from the API: the whole spec (what scheduling reads
/// of it is spread over many fields), and of the metadata and status only the fields read
/// here. The rest of each object, managedFields above all, is scanned over, not built: every
/// pod event of the cluster is decoded by the scheduler's watch. `Option`s throughout, so
/// that a JSON `null` reads as absent, as it does in `k8s-openapi`'s types.
#[derive(Debug, Default, serde::Deserialize)]
pub struct WirePod {
    #[serde(default)]
    pub metadata: WireMeta,
    pub spec: Option<core::PodSpec>,
    /// A pod's status; the object of an ERROR event is a `Status`, whose `status` is a
    /// string, read as none.
    #[serde(default, deserialize_with = "client::decode::object_or_none")]
    pub status: Option<WireStatus>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub labels: Option<Labels>,
    pub deletion_timestamp: Option<String>,
    pub owner_references: Option<Vec<WireOwner>>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct WireOwner {
    pub uid: Option<String>,
    pub controller: Option<bool>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireStatus {
    pub phase: Option<String>,
    pub nominated_node_name: Option<String>,
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// What scheduling needs of a pod.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: Labels,
    pub priority: i32,
    pub scheduler_name: String,
    pub node_name: String,
    pub nominated_node: String,
    pub requests: Resources,
    /// (protocol, hostIP, hostPort).
    pub host_ports: Vec<(String, String, i32)>,
    pub tolerations: Vec<Toleration>,
    pub node_selector: Labels,
    pub required_node_terms: Option<Vec<NodeTerm>>,
    pub preferred_node_terms: Vec<(i32, NodeTerm)>,
    pub affinity: Vec<AffinityTerm>,
    pub anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
    pub spread: Vec<SpreadConstraint>,
    /// The controller owner's uid (pods of one owner are alike for scheduling).
    pub owner: String,
    pub terminal: bool,
    pub deleting: bool,
    /// `preemptionPolicy: Never`.
    pub never_preempts: bool,
    /// The PersistentVolumeClaims its volumes name (VolumeBinding).
    pub claims: Vec<String>,
    /// `status.startTime`, Unix seconds (preemption prefers victims that started later).
    pub start_time: Option<i64>,
}

impl PodInfo {
    pub fn from_json(v: &serde_json::Value) -> Result<PodInfo, String> {
        use serde::Deserialize;
        let pod = WirePod::deserialize(v).map_err(|e| format!("not a Pod: {e}"))?;
        Ok(PodInfo::from_wire(pod))
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Built from a decoded pod, which it consumes (its strings move, not copied).
    pub fn from_wire(pod: WirePod) -> PodInfo {
        let WirePod { metadata: m, spec, status } = pod;
        let ns = m.namespace.unwrap_or_default();
        let spec = spec.unwrap_or_default();
        let status = status.unwrap_or_default();
        // Requests: the sum over containers, or the largest init container if more.
        let mut req = Resources::default();
        for c in &spec.containers {
            if let Some(r) = c.resources.as_ref().and_then(|r| r.requests.as_ref().or(r.limits.as_ref())) {
                req.add(&Resources::from_map(r));
            }
        }
        for c in spec.init_containers.iter().flatten() {
            if let Some(r) = c.resources.as_ref().and_then(|r| r.requests.as_ref().or(r.limits.as_ref())) {
                let r = Resources::from_map(r);
                req.cpu = req.cpu.max(r.cpu);
                req.memory = req.memory.max(r.memory);
                req.ephemeral = req.ephemeral.max(r.ephemeral);
            }
        }
        if let Some(o) = &spec.overhead {
            req.add(&Resources::from_map(o));
        }
        req.pods = 1;
        let mut host_ports = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|h| *h > 0) {
                    host_ports.push((p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()), hp));
                }
            }
        }
        let tolerations = spec
            .tolerations
            .iter()
            .flatten()
            .map(|t| Toleration {
                key: t.key.clone().unwrap_or_default(),
                exists: t.operator.as_deref() == Some("Exists"),
                value: t.value.clone().unwrap_or_default(),
                effect: t.effect.clone().unwrap_or_default(),
            })
            .collect();
        let aff = spec.affinity.clone().unwrap_or_default();
        let na = aff.node_affinity.unwrap_or_default();
        let required_node_terms = na.required_during_scheduling_ignored_during_execution.map(|r| r.node_selector_terms.iter().map(NodeTerm::from_k8s).collect());
        let preferred_node_terms = na.preferred_during_scheduling_ignored_during_execution.iter().flatten().map(|p| (p.weight, NodeTerm::from_k8s(&p.preference))).collect();
        let term = |t: &core::PodAffinityTerm| -> Option<AffinityTerm> {
            let selector = match &t.label_selector {
                Some(s) => Selector::from_k8s(s)?,
                None => return None, // a nil selector matches no pods
            };
            // An unparsable namespaceSelector selects no namespace (as Kubernetes rejects it).
            let namespace_selector = t.namespace_selector.as_ref().map(|s| Selector::from_k8s(s).unwrap_or(Selector(vec![Requirement { key: String::new(), op: Op::In(vec![]) }])));
            let namespaces = match &t.namespaces {
                Some(n) if !n.is_empty() => n.clone(),
                _ if namespace_selector.is_some() => vec![],
                _ => vec![ns.clone()],
            };
            Some(AffinityTerm { selector, namespaces, namespace_selector, topology_key: t.topology_key.clone() })
        };
        let pa = aff.pod_affinity.unwrap_or_default();
        let paa = aff.pod_anti_affinity.unwrap_or_default();
        let spread = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .filter_map(|c| {
                Some(SpreadConstraint {
                    max_skew: i64::from(c.max_skew.max(1)),
                    topology_key: c.topology_key.clone(),
                    hard: c.when_unsatisfiable == "DoNotSchedule",
                    selector: Selector::from_k8s(c.label_selector.as_ref()?)?,
                    min_domains: c.min_domains.map(i64::from),
                })
            })
            .collect();
        let phase = status.phase.as_deref().unwrap_or("");
        PodInfo {
            name: m.name.unwrap_or_default(),
            uid: m.uid.unwrap_or_default(),
            labels: m.labels.unwrap_or_default(),
            priority: spec.priority.unwrap_or(0),
            scheduler_name: spec.scheduler_name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default-scheduler".into()),
            node_name: spec.node_name.clone().unwrap_or_default(),
            nominated_node: status.nominated_node_name.clone().unwrap_or_default(),
            requests: req,
            host_ports,
            tolerations,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_node_terms,
            preferred_node_terms,
            affinity: pa.required_during_scheduling_ignored_during_execution.iter().flatten().filter_map(term).collect(),
            anti_affinity: paa.required_during_scheduling_ignored_during_execution.iter().flatten().filter_map(term).collect(),
            preferred_affinity: pa.preferred_during_scheduling_ignored_during_execution.iter().flatten().filter_map(|w| Some((w.weight, term(&w.pod_affinity_term)?))).collect(),
            preferred_anti_affinity: paa.preferred_during_scheduling_ignored_during_execution.iter().flatten().filter_map(|w| Some((w.weight, term(&w.pod_affinity_term)?))).collect(),
            spread,
            owner: m.owner_references.into_iter().flatten().find(|o| o.controller == Some(true)).and_then(|o| o.uid).unwrap_or_default(),
            terminal: phase == "Succeeded" || phase == "Failed",
            deleting: m.deletion_timestamp.is_some(),
            never_preempts: spec.preemption_policy.as_deref() == Some("Never"),
            claims: spec.volumes.iter().flatten().filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone())).collect(),
            start_time: status.start_time.as_ref().map(|t| t.0.as_second()),
            namespace: ns,
        }
    }
}

/// What scheduling needs of a node, with the pods assigned (or assumed) on it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: Vec<(String, String, i32)>,
    /// Pods nominated to this node by a preemption and not bound yet: what they request is
    /// held for them against pods of no higher priority (kube-scheduler's nominated pods).
    pub nominated: Vec<Arc<PodInfo>>,
}

impl NodeInfo {
    pub fn from_json(v: &serde_json::Value) -> Result<NodeInfo, String> {
        use serde::Deserialize;
        let n = core::Node::deserialize(v).map_err(|e| format!("not a Node: {e}"))?;
        let spec = n.spec.unwrap_or_default();
        let status = n.status.unwrap_or_default();
        Ok(NodeInfo {
            name: n.metadata.name.unwrap_or_default(),
            labels: n.metadata.labels.unwrap_or_default(),
            taints: spec.taints.iter().flatten().map(|t| Taint { key: t.key.clone(), value: t.value.clone().unwrap_or_default(), effect: t.effect.clone() }).collect(),
            unschedulable: spec.unschedulable.unwrap_or(false),
            allocatable: status.allocatable.as_ref().or(status.capacity.as_ref()).map(Resources::from_map).unwrap_or_default(),
            ..Default::default()
        })
    }

    /// What the pods nominated here at `priority` or above (other than `uid`) request, and
    /// how many they are; none for most nodes.
    pub fn nominated_for(&self, priority: i32, uid: &str) -> Option<(Resources, i64)> {
        let mut held: Option<(Resources, i64)> = None;
        for n in self.nominated.iter().filter(|n| n.priority >= priority && n.uid != uid) {
            let h = held.get_or_insert_with(Default::default);
            h.0.add(&n.requests);
            h.1 += 1;
        }
        held
    }

    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.used_ports.extend(p.host_ports.iter().cloned());
        self.pods.push(p);
    }

    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.uid == uid)?;
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests);
        for hp in &p.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        Some(p)
    }
}
