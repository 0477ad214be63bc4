//! DefaultPreemption (the PostFilter): when a pod fits nowhere, a node where evicting pods of
//! lower priority lets it fit, and the victims there, as kube-scheduler chooses them.
//!
//! - Candidates: nodes that fail only for reasons an eviction can fix (not the static
//!   filters: name, unschedulable, taints, node affinity), have pods of lower priority, and
//!   whose allocatable holds the pod once those are gone (arithmetic on the node's totals,
//!   before any simulation).
//! - Dry runs, limited as kube-scheduler limits them: from a rotating offset, nodes are
//!   simulated until `max(nodes x minCandidateNodesPercentage / 100, minCandidateNodesAbsolute)`
//!   viable candidates are found (10% and 100 by default). A dry run removes every
//!   lower-priority pod, requires the pod to pass every filter, then reprieves victims from the
//!   most important down (those whose eviction would violate a PodDisruptionBudget first) while
//!   the pod still fits.
//! - The node: fewest PodDisruptionBudget violations, then the lowest highest-victim priority,
//!   the smallest sum of victim priorities, the fewest victims, the latest start among the
//!   highest-priority victims, the first found.
//!
//! The victims are deleted by the caller, asynchronously: a cycle never waits on the API.

use std::cmp::Reverse;
use std::sync::Arc;

use crate::cache::Cache;
use crate::framework::{Profile, filter, pre_filter};
use crate::types::{NodeInfo, PodInfo, Resources, Selector};

/// DefaultPreemption's arguments (`pluginConfig` of a KubeSchedulerConfiguration profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreemptionArgs {
    pub min_candidate_nodes_percentage: u32,
    pub min_candidate_nodes_absolute: u32,
}

impl Default for PreemptionArgs {
    fn default() -> Self {
        PreemptionArgs { min_candidate_nodes_percentage: 10, min_candidate_nodes_absolute: 100 }
    }
}

impl PreemptionArgs {
    /// Checked as kube-scheduler validates DefaultPreemptionArgs.
    pub fn new(percentage: i64, absolute: i64) -> Result<PreemptionArgs, String> {
        if !(0..=100).contains(&percentage) {
            return Err(format!("minCandidateNodesPercentage: Invalid value: {percentage}: not in valid range [0, 100]"));
        }
        if absolute < 0 {
            return Err(format!("minCandidateNodesAbsolute: Invalid value: {absolute}: not in valid range [0, inf)"));
        }
        if percentage == 0 && absolute == 0 {
            return Err("minCandidateNodesAbsolute: Invalid value: 0: both minCandidateNodesPercentage and minCandidateNodesAbsolute cannot be zero".into());
        }
        Ok(PreemptionArgs { min_candidate_nodes_percentage: percentage as u32, min_candidate_nodes_absolute: absolute.min(i64::from(u32::MAX)) as u32 })
    }

    /// How many viable candidates to look for among `nodes`.
    pub fn candidates(&self, nodes: usize) -> usize {
        let share = nodes * self.min_candidate_nodes_percentage as usize / 100;
        share.max(self.min_candidate_nodes_absolute as usize).min(nodes).max(1)
    }
}

/// A PodDisruptionBudget as preemption reads it: the pods it covers and how many of them may
/// still be disrupted (`status.disruptionsAllowed`).
#[derive(Clone, Debug)]
pub struct Budget {
    pub namespace: String,
    /// None: an absent or empty selector, which covers no pod here (kube-scheduler's reading).
    pub selector: Option<Selector>,
    pub allowed: i64,
}

impl Budget {
    pub fn from_json(v: &serde_json::Value) -> Option<Budget> {
        use serde::Deserialize;
        let sel = v["spec"].get("selector").and_then(|s| k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::deserialize(s).ok());
        let selector = sel.as_ref().and_then(Selector::from_k8s).filter(|s| !s.0.is_empty());
        Some(Budget { namespace: v["metadata"]["namespace"].as_str()?.to_string(), selector, allowed: v["status"]["disruptionsAllowed"].as_i64().unwrap_or(0) })
    }

    fn covers(&self, p: &PodInfo) -> bool {
        self.namespace == p.namespace && self.selector.as_ref().is_some_and(|s| s.matches(&p.labels))
    }
}

/// A node where preemption works, and what it costs.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub node: usize,
    /// Most important first.
    pub victims: Vec<Arc<PodInfo>>,
    pub violations: usize,
}

/// The node and victims for `p`, or None when no eviction of lower-priority pods makes it
/// fit. `offset` rotates where the search starts (the caller varies it per attempt).
pub fn preempt(profile: &Profile, p: &PodInfo, cache: &Cache, offset: usize) -> Option<Candidate> {
    if p.never_preempts {
        return None;
    }
    let nodes = cache.nodes();
    if nodes.is_empty() {
        return None;
    }
    let st = pre_filter(p, cache);
    let passes = |n: &NodeInfo| profile.filters.iter().all(|&f| filter(f, p, n, &st).is_ok());
    let budgets: Vec<&Budget> = cache.budgets().collect();
    let want = profile.preemption.candidates(nodes.len());
    let mut found: Vec<Candidate> = Vec::new();
    let mut lower: Vec<Arc<PodInfo>> = Vec::new();
    for k in 0..nodes.len() {
        let i = (offset + k) % nodes.len();
        let n = &nodes[i];
        lower.clear();
        let mut freed = Resources::default();
        for q in n.pods.iter().filter(|q| q.priority < p.priority && !q.deleting) {
            freed.add(&q.requests);
            lower.push(q.clone());
        }
        if lower.is_empty() || !room_after(n, &freed, &p.requests) {
            continue;
        }
        if profile.filters.iter().any(|&f| f.is_static() && filter(f, p, n, &st).is_err()) {
            continue;
        }
        let mut sim = n.clone();
        for q in &lower {
            sim.remove_pod(&q.uid);
        }
        if !passes(&sim) {
            continue;
        }
        // Most important first; of equal priority, the longest running first.
        lower.sort_by_key(|q| (Reverse(q.priority), q.start_time.unwrap_or(i64::MAX)));
        let (violating, fine) = split_by_budgets(&lower, &budgets);
        let mut victims = Vec::new();
        let mut violations = 0;
        for (group, counts) in [(violating, true), (fine, false)] {
            for q in group {
                sim.add_pod(q.clone());
                if !passes(&sim) {
                    sim.remove_pod(&q.uid);
                    violations += usize::from(counts);
                    victims.push(q);
                }
            }
        }
        victims.sort_by_key(|q| (Reverse(q.priority), q.start_time.unwrap_or(i64::MAX)));
        found.push(Candidate { node: i, victims, violations });
        if found.len() >= want {
            break;
        }
    }
    pick(found)
}

/// One pod tried against a cluster held in memory (the simulator's loop and
/// `scheduler-perf`'s): the cycle from `start`; if the pod fits nowhere and has a priority,
/// preemption, its victims taken out of `cache` at once (the live scheduler deletes them
/// through the API and waits), and the cycle again from `retry_start`. `offset` is where
/// preemption's search starts; it moves past each window searched. The victims, when
/// preemption chose a node.
#[allow(clippy::too_many_arguments)]
pub fn schedule_in_memory(profile: &Profile, p: &PodInfo, cache: &mut Cache, scratch: &mut crate::framework::Scratch, start: usize, retry_start: usize, offset: &mut usize, t: &mut crate::framework::Timings) -> (crate::framework::Outcome, Option<Vec<Arc<PodInfo>>>) {
    use crate::framework::{Outcome, schedule};
    let outcome = schedule(profile, p, cache, start, scratch, t);
    if !matches!(outcome, Outcome::Unschedulable { .. }) || p.priority <= 0 {
        return (outcome, None);
    }
    let tp = std::time::Instant::now();
    let got = preempt(profile, p, cache, *offset);
    t.preemption = Some(tp.elapsed());
    let Some(c) = got else { return (outcome, None) };
    *offset = offset.wrapping_add(profile.preemption.candidates(cache.nodes().len()));
    for v in &c.victims {
        cache.unplace(&v.uid);
    }
    (schedule(profile, p, cache, retry_start, scratch, t), Some(c.victims))
}

/// Whether `n` holds `want` once `freed` is released (cpu, memory, ephemeral storage, pod
/// count, extended resources).
fn room_after(n: &NodeInfo, freed: &Resources, want: &Resources) -> bool {
    let free = |alloc: i64, used: i64, f: i64| alloc - (used - f);
    if want.cpu > free(n.allocatable.cpu, n.requested.cpu, freed.cpu)
        || want.memory > free(n.allocatable.memory, n.requested.memory, freed.memory)
        || (want.ephemeral > 0 && want.ephemeral > free(n.allocatable.ephemeral, n.requested.ephemeral, freed.ephemeral))
        || want.pods > free(n.allocatable.pods, n.requested.pods, freed.pods)
    {
        return false;
    }
    want.scalar.iter().all(|(k, v)| *v <= free(n.allocatable.scalar(k), n.requested.scalar(k), freed.scalar(k)))
}

/// `pods` (most important first) split into those whose eviction would exceed a budget's
/// allowed disruptions and the rest, as kube-scheduler counts them: each covered pod takes one
/// from every budget covering it, in order.
fn split_by_budgets(pods: &[Arc<PodInfo>], budgets: &[&Budget]) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut left: Vec<i64> = budgets.iter().map(|b| b.allowed).collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for q in pods {
        let mut violates = false;
        for (b, l) in budgets.iter().zip(left.iter_mut()) {
            if b.covers(q) {
                *l -= 1;
                violates |= *l < 0;
            }
        }
        if violates { violating.push(q.clone()) } else { fine.push(q.clone()) }
    }
    (violating, fine)
}

/// kube-scheduler's choice among candidates (`pickOneNodeForPreemption`).
pub fn pick(mut found: Vec<Candidate>) -> Option<Candidate> {
    let top = |c: &Candidate| c.victims.first().map_or(i64::MIN, |v| i64::from(v.priority));
    let sum = |c: &Candidate| c.victims.iter().map(|v| i64::from(v.priority)).sum::<i64>();
    // The earliest start among the victims of the highest priority (later is better).
    let earliest_top = |c: &Candidate| {
        let t = top(c);
        c.victims.iter().filter(|v| i64::from(v.priority) == t).map(|v| v.start_time.unwrap_or(i64::MAX)).min().unwrap_or(i64::MAX)
    };
    let best = found.iter().enumerate().min_by_key(|(k, c)| (c.violations, top(c), sum(c), c.victims.len(), Reverse(earliest_top(c)), *k))?.0;
    Some(found.swap_remove(best))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn victim(name: &str, priority: i32, start: Option<i64>) -> Arc<PodInfo> {
        Arc::new(PodInfo { namespace: "default".into(), name: name.into(), uid: name.into(), priority, start_time: start, ..Default::default() })
    }

    fn cand(node: usize, victims: &[(i32, Option<i64>)], violations: usize) -> Candidate {
        Candidate { node, victims: victims.iter().enumerate().map(|(k, (p, s))| victim(&format!("v{node}-{k}"), *p, *s)).collect(), violations }
    }

    #[test]
    fn the_node_is_chosen_by_kube_schedulers_order() {
        let chosen = |c: Vec<Candidate>| pick(c).map(|c| c.node);
        // Fewest budget violations first, whatever the rest.
        assert_eq!(chosen(vec![cand(0, &[(1, None)], 1), cand(1, &[(9, None), (9, None)], 0)]), Some(1));
        // Then the lowest highest-priority victim.
        assert_eq!(chosen(vec![cand(0, &[(5, None)], 0), cand(1, &[(3, None), (3, None)], 0)]), Some(1));
        // Then the smallest sum of priorities.
        assert_eq!(chosen(vec![cand(0, &[(5, None), (4, None)], 0), cand(1, &[(5, None), (1, None)], 0)]), Some(1));
        // Then the fewest victims.
        assert_eq!(chosen(vec![cand(0, &[(5, None), (0, None)], 0), cand(1, &[(5, None)], 0)]), Some(1));
        // Then the latest start among the highest-priority victims.
        assert_eq!(chosen(vec![cand(0, &[(5, Some(100))], 0), cand(1, &[(5, Some(200))], 0)]), Some(1));
        // Then the first found.
        assert_eq!(chosen(vec![cand(3, &[(5, Some(100))], 0), cand(1, &[(5, Some(100))], 0)]), Some(3));
        assert_eq!(chosen(vec![]), None);
    }

    #[test]
    fn budgets_mark_the_victims_beyond_their_allowed_disruptions() {
        let sel = Selector::from_k8s(&serde_json::from_value(serde_json::json!({"matchLabels": {"app": "db"}})).unwrap());
        let b = Budget { namespace: "default".into(), selector: sel, allowed: 1 };
        let db = |n: &str| {
            let mut p = (*victim(n, 1, None)).clone();
            p.labels.insert("app".into(), "db".into());
            Arc::new(p)
        };
        let pods = vec![db("a"), victim("web", 1, None), db("b"), db("c")];
        let (violating, fine) = split_by_budgets(&pods, &[&b]);
        assert_eq!(violating.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(fine.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a", "web"]);
        // An empty selector covers nothing; another namespace's budget neither.
        let empty = Budget::from_json(&serde_json::json!({"metadata": {"namespace": "default"}, "spec": {"selector": {}}, "status": {"disruptionsAllowed": 0}})).unwrap();
        let other = Budget { namespace: "other".into(), ..b.clone() };
        assert_eq!(split_by_budgets(&pods, &[&empty, &other]).0.len(), 0);
    }

    /// Random clusters of nodes filled with pods of random priorities and sizes, and a random
    /// preemptor: a preemption never evicts a pod of equal or higher priority; the preemptor
    /// fits on the chosen node once its victims are gone, and would not with any one of them
    /// back; with every node a candidate, no preemption means no node could be freed for it.
    #[test]
    fn preemption_evicts_only_lower_priority_pods_and_makes_room() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let res = |cpu: i64| Resources { cpu: cpu * 1000, memory: cpu << 30, ephemeral: 0, pods: 1, scalar: vec![] };
        let (mut preempted, mut refused) = (0, 0);
        for trial in 0..1000 {
            let nodes: Vec<NodeInfo> = (0..1 + rnd(6))
                .map(|i| NodeInfo { name: format!("n{i}"), allocatable: Resources { pods: 110, ..res(4 + rnd(5) as i64) }, ..Default::default() })
                .collect();
            let mut cache = Cache::from_nodes(nodes);
            let mut k = 0;
            for i in 0..cache.nodes().len() {
                let name = cache.nodes()[i].name.clone();
                loop {
                    let cpu = 1 + rnd(3) as i64;
                    let n = &cache.nodes()[i];
                    if n.requested.cpu + cpu * 1000 > n.allocatable.cpu {
                        break;
                    }
                    k += 1;
                    let q = PodInfo { namespace: "default".into(), name: format!("q{k}"), uid: format!("q{k}"), priority: rnd(5) as i32, requests: res(cpu), start_time: Some(rnd(1000) as i64), ..Default::default() };
                    cache.place(Arc::new(q), &name, false);
                }
            }
            let p = PodInfo { namespace: "default".into(), name: "p".into(), uid: "p".into(), priority: rnd(6) as i32, requests: res(1 + rnd(4) as i64), ..Default::default() };
            let profile = Profile { preemption: PreemptionArgs { min_candidate_nodes_percentage: 100, min_candidate_nodes_absolute: 100 }, ..Default::default() };
            let fits = |cache: &Cache, node: usize| {
                let st = pre_filter(&p, cache);
                profile.filters.iter().all(|&f| filter(f, &p, &cache.nodes()[node], &st).is_ok())
            };
            // Preemption runs only for a pod that fits nowhere.
            if (0..cache.nodes().len()).any(|i| fits(&cache, i)) {
                continue;
            }
            match preempt(&profile, &p, &cache, trial) {
                Some(c) => {
                    preempted += 1;
                    assert!(!c.victims.is_empty(), "trial {trial}: a preemption without victims");
                    assert!(c.victims.iter().all(|v| v.priority < p.priority), "trial {trial}: a victim of priority >= {}", p.priority);
                    for v in &c.victims {
                        cache.unplace(&v.uid);
                    }
                    assert!(fits(&cache, c.node), "trial {trial}: no room after the victims left");
                    let name = cache.nodes()[c.node].name.clone();
                    for v in &c.victims {
                        cache.place(v.clone(), &name, false);
                        assert!(!fits(&cache, c.node), "trial {trial}: victim {} was not needed", v.name);
                        cache.unplace(&v.uid);
                    }
                }
                None => {
                    refused += 1;
                    for i in 0..cache.nodes().len() {
                        let lower: Vec<String> = cache.nodes()[i].pods.iter().filter(|q| q.priority < p.priority).map(|q| q.uid.clone()).collect();
                        let mut freed = Cache::from_nodes(cache.nodes().to_vec());
                        for uid in &lower {
                            freed.unplace(uid);
                        }
                        assert!(lower.is_empty() || !fits(&freed, i), "trial {trial}: node {i} could have been freed");
                    }
                }
            }
        }
        // Both outcomes were exercised.
        assert!(preempted > 50 && refused > 50, "{preempted} preempted, {refused} refused");
    }

    #[test]
    fn candidate_counts_follow_the_arguments_and_bad_ones_are_refused() {
        let d = PreemptionArgs::default();
        assert_eq!(d.candidates(5000), 500);
        assert_eq!(d.candidates(300), 100);
        assert_eq!(d.candidates(50), 50);
        assert_eq!(PreemptionArgs::new(0, 7).unwrap().candidates(5000), 7);
        assert!(PreemptionArgs::new(101, 1).unwrap_err().contains("minCandidateNodesPercentage"));
        assert!(PreemptionArgs::new(10, -1).unwrap_err().contains("minCandidateNodesAbsolute"));
        assert!(PreemptionArgs::new(0, 0).unwrap_err().contains("cannot be zero"));
    }
}
