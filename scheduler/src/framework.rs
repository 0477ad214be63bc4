//! One scheduling cycle as a pure decision over a snapshot of nodes: PreFilter (per-pod
//! state: topology counts for spreading and inter-pod affinity), Filter (plugin by plugin over
//! chunks of nodes, stopping once enough feasible nodes are found, as kube-scheduler's
//! `percentageOfNodesToScore`), Score and NormalizeScore, then the choice. No sockets, no
//! clocks but the timings it reports, which it measures per plugin and extension point.
//!
//! Plugins and their semantics follow kube-scheduler: NodeUnschedulable, NodeName,
//! TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit (LeastAllocated or
//! MostAllocated), BalancedAllocation, InterPodAffinity, PodTopologySpread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::types::{NodeInfo, PodInfo, Taint};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Plugin {
    NodeUnschedulable,
    NodeName,
    TaintToleration,
    NodeAffinity,
    NodePorts,
    NodeResourcesFit,
    BalancedAllocation,
    InterPodAffinity,
    PodTopologySpread,
}

impl Plugin {
    pub const ALL: [Plugin; 9] = [
        Plugin::NodeUnschedulable,
        Plugin::NodeName,
        Plugin::TaintToleration,
        Plugin::NodeAffinity,
        Plugin::NodePorts,
        Plugin::NodeResourcesFit,
        Plugin::BalancedAllocation,
        Plugin::InterPodAffinity,
        Plugin::PodTopologySpread,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Plugin::NodeUnschedulable => "NodeUnschedulable",
            Plugin::NodeName => "NodeName",
            Plugin::TaintToleration => "TaintToleration",
            Plugin::NodeAffinity => "NodeAffinity",
            Plugin::NodePorts => "NodePorts",
            Plugin::NodeResourcesFit => "NodeResourcesFit",
            Plugin::BalancedAllocation => "BalancedAllocation",
            Plugin::InterPodAffinity => "InterPodAffinity",
            Plugin::PodTopologySpread => "PodTopologySpread",
        }
    }

    pub fn parse(s: &str) -> Option<Plugin> {
        Plugin::ALL.into_iter().find(|p| p.name() == s)
    }

    fn filters(self) -> bool {
        !matches!(self, Plugin::BalancedAllocation)
    }

    fn scores(self) -> bool {
        !matches!(self, Plugin::NodeUnschedulable | Plugin::NodeName | Plugin::NodePorts)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    LeastAllocated,
    MostAllocated,
}

/// A profile: which plugins run, with which score weights (KubeSchedulerConfiguration's).
#[derive(Clone, Debug)]
pub struct Profile {
    pub scheduler_name: String,
    pub filters: Vec<Plugin>,
    pub scores: Vec<(Plugin, i64)>,
    pub strategy: Strategy,
    /// 0 = adaptive (kube-scheduler's default).
    pub percentage_of_nodes_to_score: u32,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            scheduler_name: "default-scheduler".into(),
            filters: Plugin::ALL.into_iter().filter(|p| p.filters()).collect(),
            scores: vec![
                (Plugin::TaintToleration, 3),
                (Plugin::NodeAffinity, 2),
                (Plugin::NodeResourcesFit, 1),
                (Plugin::BalancedAllocation, 1),
                (Plugin::InterPodAffinity, 2),
                (Plugin::PodTopologySpread, 2),
            ],
            strategy: Strategy::LeastAllocated,
            percentage_of_nodes_to_score: 0,
        }
    }
}

impl Profile {
    /// How many feasible nodes are enough (kube-scheduler's numFeasibleNodesToFind).
    pub fn nodes_to_find(&self, all: usize) -> usize {
        const MIN: usize = 100;
        if all < MIN {
            return all;
        }
        let pct = if self.percentage_of_nodes_to_score == 0 {
            (50 - all as i64 / 125).max(5) as usize
        } else {
            self.percentage_of_nodes_to_score.min(100) as usize
        };
        (all * pct / 100).max(MIN)
    }
}

/// Per-pod state computed once before filtering.
#[derive(Default)]
struct PreState {
    /// For each hard spread constraint: counts per domain, and the minimum.
    spread_hard: Vec<(HashMap<String, i64>, i64)>,
    spread_soft: Vec<HashMap<String, i64>>,
    /// Required affinity: per term, the topology values holding a matching pod; `true` when
    /// no pod matches anywhere and the pod matches its own terms (it may go anywhere).
    affinity: Vec<HashSet<String>>,
    affinity_free: bool,
    anti: Vec<HashSet<String>>,
    /// Existing pods' required anti-affinity that the incoming pod matches: (key, value).
    existing_anti: HashSet<(String, String)>,
    /// Preferred inter-pod terms: per (topology key, value), the summed weight.
    preferred: HashMap<(String, String), i64>,
}

/// Timings of one attempt, per extension point and plugin.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub pre_filter: Duration,
    pub filter: Vec<(Plugin, Duration)>,
    pub score: Vec<(Plugin, Duration)>,
    pub total: Duration,
}

impl Timings {
    fn add(list: &mut Vec<(Plugin, Duration)>, p: Plugin, d: Duration) {
        match list.iter_mut().find(|(x, _)| *x == p) {
            Some((_, t)) => *t += d,
            None => list.push((p, d)),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Scheduled { node: usize, feasible: usize, evaluated: usize },
    /// Reasons with the number of nodes each ruled out.
    Unschedulable { reasons: BTreeMap<String, usize>, total: usize },
}

/// kube-scheduler's message: "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) had
/// untolerated taint {a: b}."
pub fn unschedulable_message(reasons: &BTreeMap<String, usize>, total: usize) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

fn topology_value<'a>(n: &'a NodeInfo, key: &str) -> Option<&'a String> {
    n.labels.get(key)
}

fn node_affinity_ok(p: &PodInfo, n: &NodeInfo) -> bool {
    if !p.node_selector.iter().all(|(k, v)| n.labels.get(k) == Some(v)) {
        return false;
    }
    match &p.required_node_terms {
        Some(terms) => terms.iter().any(|t| t.matches(n)),
        None => true,
    }
}

fn untolerated<'a>(p: &PodInfo, taints: &'a [Taint], effects: &[&str]) -> Option<&'a Taint> {
    taints.iter().find(|t| effects.contains(&t.effect.as_str()) && !p.tolerations.iter().any(|tol| tol.tolerates(t)))
}

fn pre_filter(p: &PodInfo, nodes: &[NodeInfo]) -> PreState {
    let mut st = PreState::default();
    let has_inter = !p.affinity.is_empty() || !p.anti_affinity.is_empty() || !p.preferred_affinity.is_empty() || !p.preferred_anti_affinity.is_empty();
    for c in &p.spread {
        let mut counts: HashMap<String, i64> = HashMap::new();
        for n in nodes.iter().filter(|n| node_affinity_ok(p, n)) {
            let Some(v) = topology_value(n, &c.topology_key) else { continue };
            let k = n.pods.iter().filter(|q| q.namespace == p.namespace && !q.terminal && c.selector.matches(&q.labels)).count() as i64;
            *counts.entry(v.clone()).or_default() += k;
        }
        if c.hard {
            let mut min = counts.values().copied().min().unwrap_or(0);
            if c.min_domains.is_some_and(|m| (counts.len() as i64) < m) {
                min = 0;
            }
            st.spread_hard.push((counts, min));
        } else {
            st.spread_soft.push(counts);
        }
    }
    st.affinity = vec![HashSet::new(); p.affinity.len()];
    st.anti = vec![HashSet::new(); p.anti_affinity.len()];
    let mut any_affinity_match = false;
    for n in nodes {
        if !has_inter && n.anti_affinity_pods == 0 {
            continue; // nothing on this node can matter to this pod
        }
        for q in &n.pods {
            if q.terminal {
                continue;
            }
            if has_inter {
                for (i, t) in p.affinity.iter().enumerate() {
                    if t.matches_pod(q)
                        && let Some(v) = topology_value(n, &t.topology_key)
                    {
                        st.affinity[i].insert(v.clone());
                        any_affinity_match = true;
                    }
                }
                for (i, t) in p.anti_affinity.iter().enumerate() {
                    if t.matches_pod(q)
                        && let Some(v) = topology_value(n, &t.topology_key)
                    {
                        st.anti[i].insert(v.clone());
                    }
                }
                for (w, t, sign) in p.preferred_affinity.iter().map(|(w, t)| (w, t, 1)).chain(p.preferred_anti_affinity.iter().map(|(w, t)| (w, t, -1))) {
                    if t.matches_pod(q)
                        && let Some(v) = topology_value(n, &t.topology_key)
                    {
                        *st.preferred.entry((t.topology_key.clone(), v.clone())).or_default() += i64::from(*w) * sign;
                    }
                }
            }
            // Symmetry: an existing pod's required anti-affinity that matches this pod.
            for t in &q.anti_affinity {
                if t.matches_pod(p)
                    && let Some(v) = topology_value(n, &t.topology_key)
                {
                    st.existing_anti.insert((t.topology_key.clone(), v.clone()));
                }
            }
        }
    }
    // A pod whose affinity matches no existing pod may still land if it matches itself (the
    // first pod of a group).
    st.affinity_free = !any_affinity_match && !p.affinity.is_empty() && p.affinity.iter().all(|t| t.matches_pod(p));
    st
}

/// Filter: `Err(reason)` as kube-scheduler words it.
fn filter(plugin: Plugin, p: &PodInfo, n: &NodeInfo, st: &PreState) -> Result<(), String> {
    match plugin {
        Plugin::NodeUnschedulable => {
            let tolerated = p.tolerations.iter().any(|t| {
                t.tolerates(&Taint { key: "node.kubernetes.io/unschedulable".into(), value: String::new(), effect: "NoSchedule".into() })
            });
            if n.unschedulable && !tolerated { Err("node(s) were unschedulable".into()) } else { Ok(()) }
        }
        Plugin::NodeName => {
            if p.node_name.is_empty() || p.node_name == n.name { Ok(()) } else { Err("node(s) didn't match the requested node name".into()) }
        }
        Plugin::TaintToleration => match untolerated(p, &n.taints, &["NoSchedule", "NoExecute"]) {
            Some(t) if t.value.is_empty() => Err(format!("node(s) had untolerated taint {{{}: }}", t.key)),
            Some(t) => Err(format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value)),
            None => Ok(()),
        },
        Plugin::NodeAffinity => {
            if node_affinity_ok(p, n) { Ok(()) } else { Err("node(s) didn't match Pod's node affinity/selector".into()) }
        }
        Plugin::NodePorts => {
            let conflict = p.host_ports.iter().any(|(proto, ip, port)| {
                n.used_ports.iter().any(|(p2, ip2, port2)| p2 == proto && port2 == port && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0"))
            });
            if conflict { Err("node(s) didn't have free ports for the requested pod ports".into()) } else { Ok(()) }
        }
        Plugin::NodeResourcesFit => {
            let (a, r, q) = (&n.allocatable, &n.requested, &p.requests);
            if r.pods + 1 > a.pods {
                return Err("Too many pods".into());
            }
            if q.cpu > 0 && r.cpu + q.cpu > a.cpu {
                return Err("Insufficient cpu".into());
            }
            if q.memory > 0 && r.memory + q.memory > a.memory {
                return Err("Insufficient memory".into());
            }
            if q.ephemeral > 0 && r.ephemeral + q.ephemeral > a.ephemeral {
                return Err("Insufficient ephemeral-storage".into());
            }
            for (name, v) in &q.scalar {
                if *v > 0 && r.scalar(name) + v > a.scalar(name) {
                    return Err(format!("Insufficient {name}"));
                }
            }
            Ok(())
        }
        Plugin::InterPodAffinity => {
            for (k, v) in &st.existing_anti {
                if n.labels.get(k) == Some(v) {
                    return Err("node(s) didn't satisfy existing pods anti-affinity rules".into());
                }
            }
            if !st.affinity_free {
                for (i, t) in p.affinity.iter().enumerate() {
                    if !topology_value(n, &t.topology_key).is_some_and(|v| st.affinity[i].contains(v)) {
                        return Err("node(s) didn't match pod affinity rules".into());
                    }
                }
            }
            for (i, t) in p.anti_affinity.iter().enumerate() {
                if topology_value(n, &t.topology_key).is_some_and(|v| st.anti[i].contains(v)) {
                    return Err("node(s) didn't match pod anti-affinity rules".into());
                }
            }
            Ok(())
        }
        Plugin::PodTopologySpread => {
            let hard: Vec<_> = p.spread.iter().filter(|c| c.hard).collect();
            for (c, (counts, min)) in hard.iter().zip(&st.spread_hard) {
                let Some(v) = topology_value(n, &c.topology_key) else {
                    return Err("node(s) didn't match pod topology spread constraints (missing required label)".into());
                };
                let self_match = i64::from(c.selector.matches(&p.labels));
                let skew = counts.get(v).copied().unwrap_or(0) + self_match - min;
                if skew > c.max_skew {
                    return Err("node(s) didn't match pod topology spread constraints".into());
                }
            }
            Ok(())
        }
        Plugin::BalancedAllocation => Ok(()),
    }
}

fn frac(req: i64, alloc: i64) -> f64 {
    if alloc <= 0 { 1.0 } else { (req as f64 / alloc as f64).min(1.0) }
}

/// Raw score (before normalization).
fn score(plugin: Plugin, strategy: Strategy, p: &PodInfo, n: &NodeInfo, st: &PreState) -> i64 {
    match plugin {
        Plugin::NodeResourcesFit => {
            // Pods without requests count as 100m / 200 MiB, as kube-scheduler's scoring does.
            let cpu = if p.requests.cpu > 0 { p.requests.cpu } else { 100 };
            let mem = if p.requests.memory > 0 { p.requests.memory } else { 200 << 20 };
            let c = frac(n.requested.cpu + cpu, n.allocatable.cpu);
            let m = frac(n.requested.memory + mem, n.allocatable.memory);
            let used = (c + m) / 2.0;
            let s = match strategy {
                Strategy::LeastAllocated => 1.0 - used,
                Strategy::MostAllocated => used,
            };
            (s * 100.0) as i64
        }
        Plugin::BalancedAllocation => {
            let c = frac(n.requested.cpu + p.requests.cpu, n.allocatable.cpu);
            let m = frac(n.requested.memory + p.requests.memory, n.allocatable.memory);
            let std = (c - m).abs() / 2.0;
            ((1.0 - std) * 100.0) as i64
        }
        Plugin::TaintToleration => n.taints.iter().filter(|t| t.effect == "PreferNoSchedule" && !p.tolerations.iter().any(|tol| tol.tolerates(t))).count() as i64,
        Plugin::NodeAffinity => p.preferred_node_terms.iter().filter(|(_, t)| t.matches(n)).map(|(w, _)| i64::from(*w)).sum(),
        Plugin::InterPodAffinity => {
            if st.preferred.is_empty() {
                return 0;
            }
            st.preferred.iter().filter(|((k, v), _)| n.labels.get(k) == Some(v)).map(|(_, w)| *w).sum()
        }
        Plugin::PodTopologySpread => {
            let soft: Vec<_> = p.spread.iter().filter(|c| !c.hard).collect();
            soft.iter().zip(&st.spread_soft).map(|(c, counts)| topology_value(n, &c.topology_key).and_then(|v| counts.get(v)).copied().unwrap_or(0)).sum()
        }
        _ => 0,
    }
}

/// Scales raw scores to 0..=100; `reverse` when lower raw is better.
fn normalize(scores: &mut [i64], reverse: bool) {
    let (min, max) = scores.iter().fold((i64::MAX, i64::MIN), |(a, b), s| (a.min(*s), b.max(*s)));
    if scores.is_empty() {
        return;
    }
    for s in scores.iter_mut() {
        *s = if max == min {
            if reverse { 100 } else if max == 0 { 0 } else { 100 }
        } else if reverse {
            (max - *s) * 100 / (max - min)
        } else {
            (*s - min) * 100 / (max - min)
        };
    }
}

const CHUNK: usize = 256;

/// DefaultPreemption (PostFilter): a node where evicting pods of lower priority lets `p`
/// fit, and the fewest, least important victims there. Nodes that failed for reasons no
/// eviction can fix (unschedulable, name, taints, node affinity) are not candidates. On a
/// candidate every lower-priority pod is removed, the pod must then pass every filter, and
/// victims are reprieved from the most important down while it still does. Among candidates:
/// the lowest highest-victim priority, then the smallest priority sum, then the fewest
/// victims (kube-scheduler's order, without PodDisruptionBudgets).
pub fn preempt(profile: &Profile, p: &PodInfo, nodes: &[NodeInfo]) -> Option<(usize, Vec<std::sync::Arc<PodInfo>>)> {
    if p.never_preempts {
        return None;
    }
    let unresolvable = [Plugin::NodeUnschedulable, Plugin::NodeName, Plugin::TaintToleration, Plugin::NodeAffinity];
    let st = pre_filter(p, nodes);
    let passes = |n: &NodeInfo| profile.filters.iter().all(|&f| filter(f, p, n, &st).is_ok());
    let mut best: Option<(usize, Vec<std::sync::Arc<PodInfo>>, (i64, i64, usize))> = None;
    for (i, n) in nodes.iter().enumerate() {
        if unresolvable.iter().any(|&f| profile.filters.contains(&f) && filter(f, p, n, &st).is_err()) {
            continue;
        }
        let mut lower: Vec<std::sync::Arc<PodInfo>> = n.pods.iter().filter(|q| q.priority < p.priority && !q.deleting).cloned().collect();
        if lower.is_empty() {
            continue;
        }
        let mut sim = n.clone();
        for q in &lower {
            sim.remove_pod(&q.uid);
        }
        if !passes(&sim) {
            continue;
        }
        // Reprieve the most important first.
        lower.sort_by_key(|q| std::cmp::Reverse(q.priority));
        let mut victims = Vec::new();
        for q in lower {
            sim.add_pod(q.clone());
            if !passes(&sim) {
                sim.remove_pod(&q.uid);
                victims.push(q);
            }
        }
        let key = (victims.iter().map(|v| i64::from(v.priority)).max().unwrap_or(i64::MIN), victims.iter().map(|v| i64::from(v.priority)).sum(), victims.len());
        if best.as_ref().is_none_or(|b| key < b.2) {
            best = Some((i, victims, key));
        }
    }
    best.map(|(i, v, _)| (i, v))
}

/// Schedules one pod over `nodes`, starting the search at `start` (rotated by the caller so
/// that early stops do not always favour the same nodes).
pub fn schedule(profile: &Profile, p: &PodInfo, nodes: &[NodeInfo], start: usize, t: &mut Timings) -> Outcome {
    let t0 = Instant::now();
    let st = pre_filter(p, nodes);
    t.pre_filter += t0.elapsed();
    let total = nodes.len();
    let want = profile.nodes_to_find(total);
    let mut feasible: Vec<usize> = Vec::with_capacity(want.min(total));
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut evaluated = 0;
    let mut candidates: Vec<usize> = Vec::with_capacity(CHUNK);
    while evaluated < total && feasible.len() < want {
        candidates.clear();
        let end = (evaluated + CHUNK).min(total);
        candidates.extend((evaluated..end).map(|i| (i + start) % total));
        evaluated = end;
        for &plugin in &profile.filters {
            let tp = Instant::now();
            candidates.retain(|&i| match filter(plugin, p, &nodes[i], &st) {
                Ok(()) => true,
                Err(r) => {
                    *reasons.entry(r).or_default() += 1;
                    false
                }
            });
            Timings::add(&mut t.filter, plugin, tp.elapsed());
            if candidates.is_empty() {
                break;
            }
        }
        feasible.extend_from_slice(&candidates);
    }
    feasible.truncate(want.max(1));
    if feasible.is_empty() {
        t.total = t0.elapsed();
        return Outcome::Unschedulable { reasons, total };
    }
    if feasible.len() == 1 {
        t.total = t0.elapsed();
        return Outcome::Scheduled { node: feasible[0], feasible: 1, evaluated };
    }
    let mut totals = vec![0i64; feasible.len()];
    let mut raw = vec![0i64; feasible.len()];
    for &(plugin, weight) in &profile.scores {
        if !plugin.scores() || weight == 0 {
            continue;
        }
        let tp = Instant::now();
        for (k, &i) in feasible.iter().enumerate() {
            raw[k] = score(plugin, profile.strategy, p, &nodes[i], &st);
        }
        match plugin {
            Plugin::TaintToleration | Plugin::PodTopologySpread => normalize(&mut raw, true),
            Plugin::NodeAffinity | Plugin::InterPodAffinity => normalize(&mut raw, false),
            _ => {}
        }
        for (k, s) in raw.iter().enumerate() {
            totals[k] += s * weight;
        }
        Timings::add(&mut t.score, plugin, tp.elapsed());
    }
    let best = (0..feasible.len()).max_by_key(|&k| (totals[k], std::cmp::Reverse(k))).unwrap_or(0);
    t.total = t0.elapsed();
    Outcome::Scheduled { node: feasible[best], feasible: feasible.len(), evaluated }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn node(name: &str, cpu: &str, zone: &str, extra: Value) -> NodeInfo {
        let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": zone}}, "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}});
        merge(&mut v, extra);
        NodeInfo::from_json(&v).unwrap()
    }

    fn pod(name: &str, extra: Value) -> PodInfo {
        let mut v = json!({"metadata": {"name": name, "namespace": "ns", "uid": name, "labels": {}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        merge(&mut v, extra);
        PodInfo::from_json(&v).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn run(p: &PodInfo, nodes: &[NodeInfo]) -> Result<String, String> {
        run_with(&Profile::default(), p, nodes)
    }

    fn run_with(profile: &Profile, p: &PodInfo, nodes: &[NodeInfo]) -> Result<String, String> {
        match schedule(profile, p, nodes, 0, &mut Timings::default()) {
            Outcome::Scheduled { node, .. } => Ok(nodes[node].name.clone()),
            Outcome::Unschedulable { reasons, total } => Err(unschedulable_message(&reasons, total)),
        }
    }

    fn cpu(c: &str) -> Value {
        json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": c}}}]}})
    }

    fn with_pod(mut n: NodeInfo, p: PodInfo) -> NodeInfo {
        n.add_pod(Arc::new(p));
        n
    }

    #[test]
    fn plugin_cases() {
        let two = || vec![node("a", "1", "z1", json!({})), node("b", "4", "z2", json!({}))];
        let cases: Vec<(&str, PodInfo, Vec<NodeInfo>, Result<&str, &str>)> = vec![
            ("fit picks the node with room", pod("p", cpu("2")), two(), Ok("b")),
            ("nothing fits", pod("p", cpu("8")), two(), Err("0/2 nodes are available: 2 Insufficient cpu.")),
            (
                "untolerated taint",
                pod("p", json!({})),
                vec![node("a", "4", "z1", json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}})), node("b", "1", "z1", json!({}))],
                Ok("b"),
            ),
            (
                "tolerated taint",
                pod("p", json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}], "nodeSelector": {"zone": "z1"}}})),
                vec![node("a", "4", "z1", json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}})), node("b", "4", "z2", json!({}))],
                Ok("a"),
            ),
            (
                "taint message",
                pod("p", json!({})),
                vec![node("a", "4", "z1", json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoExecute"}]}})), node("b", "4", "z1", json!({"spec": {"unschedulable": true}}))],
                Err("0/2 nodes are available: 1 node(s) had untolerated taint {k: v}, 1 node(s) were unschedulable."),
            ),
            ("node selector", pod("p", json!({"spec": {"nodeSelector": {"zone": "z1"}}})), two(), Ok("a")),
            (
                "required node affinity with Gt",
                pod("p", json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]}]}]}}}}})),
                vec![node("a", "4", "z1", json!({"metadata": {"labels": {"gen": "2"}}})), node("b", "1", "z1", json!({"metadata": {"labels": {"gen": "5"}}}))],
                Ok("b"),
            ),
            ("node name", pod("p", json!({"spec": {"nodeName": "a"}})), two(), Ok("a")),
            (
                "host ports",
                pod("p", json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}})),
                vec![with_pod(node("a", "4", "z1", json!({})), pod("q", json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}))), node("b", "1", "z1", json!({}))],
                Ok("b"),
            ),
        ];
        for (what, p, nodes, want) in cases {
            assert_eq!(run(&p, &nodes).as_deref().map_err(|e| e.as_str()), want.map_err(|e| e), "{what}");
        }
    }

    #[test]
    fn inter_pod_affinity_and_anti_affinity() {
        let db = pod("db", json!({"metadata": {"labels": {"app": "db"}}}));
        let nodes = vec![with_pod(node("a", "4", "z1", json!({})), db), node("b", "4", "z2", json!({})), node("c", "4", "z2", json!({}))];
        let anti = pod("web", json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}}}));
        assert_ne!(run(&anti, &nodes).unwrap(), "a");
        let aff = pod("web", json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}}}));
        assert_eq!(run(&aff, &nodes).unwrap(), "a");
        // Affinity to pods that exist nowhere: unschedulable, unless the pod matches itself.
        let lonely = pod("x", json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}}}));
        assert_eq!(run(&lonely, &nodes).unwrap_err(), "0/3 nodes are available: 3 node(s) didn't match pod affinity rules.");
        let mut first = lonely.clone();
        first.labels.insert("app".into(), "cache".into());
        assert!(run(&first, &nodes).is_ok());
        // Symmetry: an existing pod's anti-affinity keeps a matching newcomer away.
        let guard = pod("guard", json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}));
        let nodes = vec![with_pod(node("a", "4", "z1", json!({})), guard), node("b", "1", "z1", json!({}))];
        let web = pod("w", json!({"metadata": {"labels": {"app": "web"}}}));
        assert_eq!(run(&web, &nodes).unwrap(), "b");
    }

    #[test]
    fn topology_spread_hard_and_soft() {
        let app = |n: &str| pod(n, json!({"metadata": {"labels": {"app": "s"}}}));
        let nodes = vec![with_pod(with_pod(node("a", "4", "z1", json!({})), app("x1")), app("x2")), node("b", "1", "z2", json!({})), node("c", "1", "z3", json!({}))];
        let c = |hard: bool| {
            pod("new", json!({"metadata": {"labels": {"app": "s"}}, "spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": if hard { "DoNotSchedule" } else { "ScheduleAnyway" }, "labelSelector": {"matchLabels": {"app": "s"}}}]}}))
        };
        assert_ne!(run(&c(true), &nodes).unwrap(), "a", "skew would be 3");
        assert_ne!(run(&c(false), &nodes).unwrap(), "a", "soft spreading scores a down");
        let only_a = vec![nodes[0].clone()];
        assert!(run(&c(true), &only_a).is_ok(), "one domain: skew 0");
    }

    #[test]
    fn scoring_strategies() {
        let busy = with_pod(node("a", "4", "z1", json!({})), pod("q", cpu("3")));
        let nodes = vec![busy, node("b", "4", "z1", json!({}))];
        assert_eq!(run(&pod("p", cpu("500m")), &nodes).unwrap(), "b");
        let most = Profile { strategy: Strategy::MostAllocated, ..Default::default() };
        assert_eq!(run_with(&most, &pod("p", cpu("500m")), &nodes).unwrap(), "a");
    }

    #[test]
    fn preemption_evicts_the_fewest_least_important_pods() {
        let at = |name: &str, c: &str, prio: i32| pod(name, json!({"spec": {"priority": prio, "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": c}}}]}}));
        let a = with_pod(with_pod(node("a", "4", "z1", json!({})), at("a-low", "2", 10)), at("a-mid", "2", 50));
        let b = with_pod(with_pod(node("b", "4", "z1", json!({})), at("b-low1", "2", 1)), at("b-low2", "2", 1));
        let c = with_pod(node("c", "4", "z1", json!({"spec": {"unschedulable": true}})), at("c-low", "4", 0));
        let nodes = vec![a, b, c];
        let high = at("high", "2", 100);
        assert!(run(&high, &nodes).is_err(), "no room without preemption");
        let (n, victims) = preempt(&Profile::default(), &high, &nodes).unwrap();
        // One victim of priority 1 on b beats one of priority 10 on a; c is unschedulable.
        assert_eq!(nodes[n].name, "b");
        assert_eq!(victims.len(), 1);
        assert_eq!(victims[0].priority, 1);
        let low = at("low", "2", 0);
        assert!(preempt(&Profile::default(), &low, &nodes).is_none(), "nothing has lower priority");
        let mut never = high.clone();
        never.never_preempts = true;
        assert!(preempt(&Profile::default(), &never, &nodes).is_none());
    }

    #[test]
    fn adaptive_nodes_to_score() {
        let p = Profile::default();
        assert_eq!(p.nodes_to_find(50), 50);
        assert_eq!(p.nodes_to_find(1000), 420);
        assert_eq!(p.nodes_to_find(5000), 500);
        assert_eq!(p.nodes_to_find(100_000), 5000);
    }
}
