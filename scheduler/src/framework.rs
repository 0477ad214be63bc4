//! One scheduling cycle as a pure decision over the cache: PreFilter (per-pod state read off
//! the cache's indexes: topology counts for spreading, the domains holding pods that inter-pod
//! terms match), Filter (chunks of candidate nodes, plugin by plugin, stopping once enough
//! feasible nodes are found, as kube-scheduler's `percentageOfNodesToScore`), Score and
//! NormalizeScore, then the choice. No sockets, no clocks but the timings it reports, which
//! it measures per plugin and extension point.
//!
//! Beyond kube-scheduler:
//! - **Static filters once per class.** NodeUnschedulable, NodeName, TaintToleration and
//!   NodeAffinity read only the pod's spec and the nodes' specs, so their result is the same
//!   for every pod with the same tolerations, node selector, required node affinity and node
//!   name (the pods of one template, among others). It is kept per class in [`Scratch`] and
//!   reused until the cache's node generation changes: a class whose nodes all pass skips
//!   those filters; one that passes a few nodes visits only those.
//! - **Dynamic verdicts once per class and node state.** The other filters read what a node
//!   holds; for a pod whose verdict on a node depends on that node alone (no required
//!   affinity, no hard spreading, anti-affinity only over keys that name one node each, as
//!   hostname does), the verdict is kept per class of alike pods and node, and reused while
//!   the node has not changed since (the cache stamps every change to a node). Consecutive
//!   pods of one template scan nearly the same nodes, of which one changed: the one the last
//!   pod went to.
//! - **Free-resource search.** When a class's last scan visited many nodes to find few (a
//!   nearly full cluster), the candidates come from the cache's free-resource order instead:
//!   only nodes with enough free cpu, memory or pod slots are visited.
//! - **Parallel filter and score** on a persistent worker pool (rayon's, on crossbeam's
//!   deques) when a cycle has enough nodes to visit to pay for the hand-off; buffers live in
//!   [`Scratch`] and are reused, so a cycle allocates nothing per node.
//!
//! Plugins and their semantics follow kube-scheduler: NodeUnschedulable, NodeName,
//! TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit (LeastAllocated or
//! MostAllocated), BalancedAllocation, InterPodAffinity, PodTopologySpread.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::cache::{Cache, Fast, Values};
use crate::types::{Labels, NodeInfo, NodeTerm, PodInfo, SpreadConstraint, Taint, Toleration};

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
    VolumeBinding,
}

impl Plugin {
    pub const ALL: [Plugin; 10] = [
        Plugin::NodeUnschedulable,
        Plugin::NodeName,
        Plugin::TaintToleration,
        Plugin::NodeAffinity,
        Plugin::NodePorts,
        Plugin::NodeResourcesFit,
        Plugin::BalancedAllocation,
        Plugin::InterPodAffinity,
        Plugin::PodTopologySpread,
        Plugin::VolumeBinding,
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
            Plugin::VolumeBinding => "VolumeBinding",
        }
    }

    pub fn parse(s: &str) -> Option<Plugin> {
        Plugin::ALL.into_iter().find(|p| p.name() == s)
    }

    fn filters(self) -> bool {
        !matches!(self, Plugin::BalancedAllocation)
    }

    fn scores(self) -> bool {
        !matches!(self, Plugin::NodeUnschedulable | Plugin::NodeName | Plugin::NodePorts | Plugin::VolumeBinding)
    }

    /// Reads only the pod's and the node's specs, never what is placed on the node.
    pub(crate) fn is_static(self) -> bool {
        matches!(self, Plugin::NodeUnschedulable | Plugin::NodeName | Plugin::TaintToleration | Plugin::NodeAffinity)
    }
}

const PLUGINS: usize = Plugin::ALL.len();

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
    /// Filter-and-score workers (KubeSchedulerConfiguration's `parallelism`; the first
    /// profile's value sizes the one pool). Default: the machine's cores.
    pub parallelism: usize,
    /// DefaultPreemption's arguments.
    pub preemption: crate::preemption::PreemptionArgs,
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
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            preemption: Default::default(),
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


/// The domains holding pods a required (anti-)affinity term selects: the groups' maps as
/// the cache has them, or, past `MERGE_ABOVE` maps (a term over many namespaces), their keys
/// merged once per attempt so that each node costs one lookup.
enum Present<'a> {
    Maps(Vec<&'a Values>),
    Merged(std::collections::HashSet<&'a str, Fast>),
}

/// How many per-group maps a term reads per node before they are merged per attempt.
const MERGE_ABOVE: usize = 4;

impl<'a> Present<'a> {
    fn of(maps: Vec<&'a Values>) -> Present<'a> {
        if maps.len() <= MERGE_ABOVE {
            return Present::Maps(maps);
        }
        Present::Merged(maps.iter().flat_map(|m| m.keys().map(String::as_str)).collect())
    }

    fn contains(&self, v: &str) -> bool {
        match self {
            Present::Maps(maps) => maps.iter().any(|m| m.contains_key(v)),
            Present::Merged(set) => set.contains(v),
        }
    }
}

/// Domain counts of one spread constraint.
enum Counts<'a> {
    /// One group's counts (or none), borrowed from the cache.
    Borrowed(Option<&'a Values>),
    /// Several groups' counts summed.
    Owned(HashMap<&'a str, i64, Fast>),
}

impl Counts<'_> {
    fn get(&self, v: &str) -> i64 {
        match self {
            Counts::Borrowed(m) => m.and_then(|m| m.get(v)).map_or(0, |c| i64::from(*c)),
            Counts::Owned(m) => m.get(v).copied().unwrap_or(0),
        }
    }

    /// Domains holding at least one matching pod.
    fn len(&self) -> usize {
        match self {
            Counts::Borrowed(m) => m.map_or(0, |m| m.len()),
            Counts::Owned(m) => m.len(),
        }
    }

    fn min(&self) -> i64 {
        match self {
            Counts::Borrowed(m) => m.and_then(|m| m.values().min()).map_or(0, |c| i64::from(*c)),
            Counts::Owned(m) => m.values().copied().min().unwrap_or(0),
        }
    }

    fn contains(&self, v: &str) -> bool {
        match self {
            Counts::Borrowed(m) => m.is_some_and(|m| m.contains_key(v)),
            Counts::Owned(m) => m.contains_key(v),
        }
    }

    /// The smallest count among the listed domains other than `v`.
    fn min_except(&self, v: &str) -> Option<i64> {
        match self {
            Counts::Borrowed(m) => m.and_then(|m| m.iter().filter(|(d, _)| d.as_str() != v).map(|(_, c)| i64::from(*c)).min()),
            Counts::Owned(m) => m.iter().filter(|(d, _)| **d != v).map(|(_, c)| *c).min(),
        }
    }
}

struct Spread<'a> {
    counts: Counts<'a>,
    /// The smallest count over the eligible domains.
    min: i64,
    /// How many eligible domains there are (those without a listed count hold none).
    domains: usize,
    /// minDomains is not reached: the minimum is 0 whatever the counts.
    below_min_domains: bool,
}

impl Spread<'_> {
    /// The minimum once `extra` more matching pods are counted in domain `v`, which holds
    /// `here` (pods nominated to a node of it): it moves only when `v` alone held it.
    fn min_with(&self, v: &str, here: i64, extra: i64) -> i64 {
        if extra == 0 || self.below_min_domains || here > self.min {
            return self.min;
        }
        let unlisted_others = self.domains.saturating_sub(self.counts.len()).saturating_sub(usize::from(!self.counts.contains(v)));
        if unlisted_others > 0 {
            return self.min;
        }
        self.counts.min_except(v).map_or(here + extra, |m| m.min(here + extra))
    }
}

/// Per-pod state computed once before filtering, mostly borrowed from the cache's indexes.
#[derive(Default)]
pub(crate) struct PreState<'a> {
    spread_hard: Vec<Spread<'a>>,
    spread_soft: Vec<Spread<'a>>,
    /// Required affinity: per term, the domain counts of the groups it matches.
    affinity: Vec<Present<'a>>,
    /// No pod matches the required affinity anywhere and the pod matches its own terms (the
    /// first pod of a group may go anywhere).
    affinity_free: bool,
    anti: Vec<Present<'a>>,
    /// Placed pods' required anti-affinity terms that the incoming pod matches: (topology
    /// key, the values holding such pods).
    existing_anti: Vec<(&'a str, &'a Values)>,
    /// InterPodAffinity's score terms: (topology key, weight, pods per value of the key),
    /// read per scored node rather than merged per attempt (a hostname key has a value per
    /// node: merging copied thousands of entries for each pod).
    preferred: Vec<(&'a str, i64, &'a Values)>,
    /// The same, summed per key and value where a key has more than `MERGE_ABOVE` of them.
    preferred_merged: Vec<(&'a str, HashMap<&'a str, i64, Fast>)>,
    /// VolumeBinding: the node terms of the volumes the pod's bound claims hold (each must
    /// be met), or the index of a claim that does not exist.
    volume_terms: Vec<&'a [NodeTerm]>,
    missing_claim: Option<usize>,
    /// For the namespaces' labels when pods nominated to a node are weighed.
    cache: Option<&'a Cache>,
    /// Some pod is nominated to some node (most of the time none is: the per-node checks
    /// are skipped).
    nominees: bool,
}

/// Where a cycle's candidate nodes came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Candidates {
    /// Every node, rotated.
    #[default]
    All,
    /// The nodes that passed the static filters for this class of pods.
    StaticClass(usize),
    /// The nodes with enough free cpu, memory or pod slots.
    FreeIndex(usize),
    /// The nodes of the topology domains a hard spread constraint still allows.
    SpreadDomains(usize),
}

impl Candidates {
    /// Metric labels, in the order of [`Candidates::index`].
    pub const LABELS: [&'static str; 4] = ["all", "static_class", "free_index", "spread_domains"];

    pub fn index(self) -> usize {
        match self {
            Candidates::All => 0,
            Candidates::StaticClass(_) => 1,
            Candidates::FreeIndex(_) => 2,
            Candidates::SpreadDomains(_) => 3,
        }
    }
}

impl std::fmt::Display for Candidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Candidates::All => write!(f, "all nodes"),
            Candidates::StaticClass(n) => write!(f, "{n} nodes passing the static filters (class cache)"),
            Candidates::FreeIndex(n) => write!(f, "{n} nodes with room (free-resource index)"),
            Candidates::SpreadDomains(n) => write!(f, "{n} nodes of the topology domains spreading allows"),
        }
    }
}

/// Timings of one attempt, per extension point and plugin. With a parallel cycle, a
/// plugin's time is summed over the workers (CPU time, not wall time).
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub pre_filter: Duration,
    pub filter: Vec<(Plugin, Duration)>,
    pub score: Vec<(Plugin, Duration)>,
    /// The full pass over every node that words the reasons once no node was found.
    pub diagnose: Duration,
    pub total: Duration,
    pub candidates: Candidates,
    /// The static filters' result was reused from an earlier pod of the same class.
    pub static_reused: bool,
    /// How long PostFilter (preemption) took, when it ran (`preemption::schedule_in_memory`).
    pub preemption: Option<Duration>,
    /// Nodes the static filters were computed for (when not reused).
    pub static_checked: usize,
    /// Nodes whose dynamic verdict was kept from an earlier pod of the class.
    pub verdicts_kept: usize,
    pub parallel: bool,
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

/// Why a filter rejected a node; worded only when a message is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Unschedulable,
    NodeName,
    /// Index into the node's taints.
    Taint(usize),
    NodeAffinity,
    Ports,
    TooManyPods,
    Cpu,
    Memory,
    Ephemeral,
    /// Index into the pod's extended resource requests.
    Scalar(usize),
    ExistingAntiAffinity,
    Affinity,
    AntiAffinity,
    SpreadLabel,
    Spread,
    /// Index into the pod's claims.
    MissingClaim(usize),
    VolumeAffinity,
}

impl Reason {
    /// kube-scheduler's wording.
    pub fn message(self, p: &PodInfo, n: &NodeInfo) -> String {
        match self {
            Reason::Unschedulable => "node(s) were unschedulable".into(),
            Reason::NodeName => "node(s) didn't match the requested node name".into(),
            Reason::Taint(i) => {
                let t = &n.taints[i];
                if t.value.is_empty() { format!("node(s) had untolerated taint {{{}: }}", t.key) } else { format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value) }
            }
            Reason::NodeAffinity => "node(s) didn't match Pod's node affinity/selector".into(),
            Reason::Ports => "node(s) didn't have free ports for the requested pod ports".into(),
            Reason::TooManyPods => "Too many pods".into(),
            Reason::Cpu => "Insufficient cpu".into(),
            Reason::Memory => "Insufficient memory".into(),
            Reason::Ephemeral => "Insufficient ephemeral-storage".into(),
            Reason::Scalar(i) => format!("Insufficient {}", p.requests.scalar[i].0),
            Reason::ExistingAntiAffinity => "node(s) didn't satisfy existing pods anti-affinity rules".into(),
            Reason::Affinity => "node(s) didn't match pod affinity rules".into(),
            Reason::AntiAffinity => "node(s) didn't match pod anti-affinity rules".into(),
            Reason::SpreadLabel => "node(s) didn't match pod topology spread constraints (missing required label)".into(),
            Reason::Spread => "node(s) didn't match pod topology spread constraints".into(),
            Reason::MissingClaim(i) => format!("persistentvolumeclaim \"{}\" not found", p.claims[i]),
            Reason::VolumeAffinity => "node(s) had volume node affinity conflict".into(),
        }
    }
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

fn untolerated(p: &PodInfo, taints: &[Taint], effects: &[&str]) -> Option<usize> {
    taints.iter().position(|t| effects.contains(&t.effect.as_str()) && !p.tolerations.iter().any(|tol| tol.tolerates(t)))
}

/// The domain counts of one spread constraint over the nodes the pod may go to
/// (nodeAffinityPolicy Honor, nodeTaintsPolicy Ignore: kube-scheduler's defaults).
fn spread_counts<'a>(p: &PodInfo, c: &SpreadConstraint, cache: &'a Cache) -> Spread<'a> {
    let restricted = !p.node_selector.is_empty() || p.required_node_terms.is_some();
    if restricted {
        // Only some nodes are eligible: count their pods one node at a time.
        let mut counts: HashMap<&'a str, i64, Fast> = HashMap::default();
        for n in cache.nodes().iter().filter(|n| node_affinity_ok(p, n)) {
            let Some(v) = topology_value(n, &c.topology_key) else { continue };
            let k = n.pods.iter().filter(|q| q.namespace == p.namespace && !q.terminal && c.selector.matches(&q.labels)).count() as i64;
            *counts.entry(v.as_str()).or_default() += k;
        }
        let domains = counts.len();
        let mut min = counts.values().copied().min().unwrap_or(0);
        let below_min_domains = c.min_domains.is_some_and(|m| (domains as i64) < m);
        if below_min_domains {
            min = 0;
        }
        return Spread { counts: Counts::Owned(counts), min, domains, below_min_domains };
    }
    let mut maps: Vec<&'a Values> = Vec::new();
    cache.for_each_group(std::slice::from_ref(&p.namespace), &c.selector, |g| {
        if let Some(m) = g.domains.get(&c.topology_key) {
            maps.push(m);
        }
    });
    let counts = if maps.len() <= 1 {
        Counts::Borrowed(maps.first().copied())
    } else {
        let mut sum: HashMap<&'a str, i64, Fast> = HashMap::default();
        for m in maps {
            for (v, k) in m {
                *sum.entry(v.as_str()).or_default() += i64::from(*k);
            }
        }
        Counts::Owned(sum)
    };
    let domains = cache.topology(&c.topology_key).map_or(0, |t| t.len());
    // A domain without a matching pod makes the minimum 0.
    let mut min = if counts.len() < domains { 0 } else { counts.min() };
    let below_min_domains = c.min_domains.is_some_and(|m| (domains as i64) < m);
    if below_min_domains {
        min = 0;
    }
    Spread { counts, min, domains, below_min_domains }
}

pub(crate) fn pre_filter<'a>(p: &'a PodInfo, cache: &'a Cache) -> PreState<'a> {
    let mut st = PreState { cache: Some(cache), nominees: cache.any_nomination(), ..Default::default() };
    for (i, claim) in p.claims.iter().enumerate() {
        match cache.volumes().claim(&p.namespace, claim) {
            None => {
                st.missing_claim = Some(i);
                break;
            }
            Some(terms) => st.volume_terms.extend(terms),
        }
    }
    for c in &p.spread {
        let s = spread_counts(p, c, cache);
        if c.hard { st.spread_hard.push(s) } else { st.spread_soft.push(s) }
    }
    let mut any_affinity_match = false;
    for t in &p.affinity {
        let mut maps = Vec::new();
        cache.for_each_term_group(t, |g| {
            if let Some(m) = g.domains.get(&t.topology_key) {
                maps.push(m);
            }
        });
        any_affinity_match |= !maps.is_empty();
        st.affinity.push(Present::of(maps));
    }
    for t in &p.anti_affinity {
        let mut maps = Vec::new();
        cache.for_each_term_group(t, |g| {
            if let Some(m) = g.domains.get(&t.topology_key) {
                maps.push(m);
            }
        });
        st.anti.push(Present::of(maps));
    }
    for (w, t, sign) in p.preferred_affinity.iter().map(|(w, t)| (w, t, 1)).chain(p.preferred_anti_affinity.iter().map(|(w, t)| (w, t, -1))) {
        let mut add: Vec<&'a Values> = Vec::new();
        cache.for_each_term_group(t, |g| {
            if let Some(m) = g.domains.get(&t.topology_key) {
                add.push(m);
            }
        });
        for m in add {
            st.preferred.push((t.topology_key.as_str(), i64::from(*w) * sign, m));
        }
    }
    // Symmetry for scoring: placed pods' preferred (anti-)affinity and required affinity
    // terms that select this pod add (subtract) their weight on every node of their domain.
    cache.for_each_scoring_term(p, |t| {
        if !t.domains.is_empty() {
            st.preferred.push((t.term.topology_key.as_str(), i64::from(t.weight), &t.domains));
        }
    });
    // Many maps under one key (terms over many namespaces): summed once here rather than
    // looked up one by one for every scored node.
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for (k, _, _) in &st.preferred {
        *per_key.entry(*k).or_default() += 1;
    }
    for (key, n) in per_key {
        if n <= MERGE_ABOVE {
            continue;
        }
        let mut sum: HashMap<&'a str, i64, Fast> = HashMap::default();
        for (_, w, m) in st.preferred.iter().filter(|(k, _, _)| *k == key) {
            for (v, c) in m.iter() {
                *sum.entry(v.as_str()).or_default() += w * i64::from(*c);
            }
        }
        st.preferred.retain(|(k, _, _)| *k != key);
        st.preferred_merged.push((key, sum));
    }
    // Symmetry: placed pods' required anti-affinity that this pod matches.
    cache.for_each_anti_term(p, |t| {
        if !t.domains.is_empty() {
            st.existing_anti.push((t.term.topology_key.as_str(), &t.domains));
        }
    });
    st.affinity_free = !any_affinity_match && !p.affinity.is_empty() && p.affinity.iter().all(|t| t.matches_pod(p, cache.namespace_labels(&p.namespace)));
    st
}

const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// The pods nominated to `n` at `p`'s priority or above, other than `p`. kube-scheduler adds
/// them to the node before filtering, then filters once more without them; a pod must pass
/// both. Nominees only add to what a node holds, so every filter but required affinity is
/// stricter with them (they count here) and required affinity is stricter without them (a
/// nominee may never land, so it satisfies no affinity term: it does not count there).
fn nominees<'n>(p: &'n PodInfo, n: &'n NodeInfo) -> impl Iterator<Item = &'n PodInfo> {
    n.nominated.iter().filter(move |x| x.priority >= p.priority && x.uid != p.uid).map(|x| &**x)
}

/// How many of the pods nominated to `n` (see [`nominees`]) count for spread constraint `c`:
/// as kube-scheduler's PodTopologySpread adds a pod, those of `p`'s namespace that `c`
/// selects, on a node carrying every hard constraint's key and eligible by `p`'s node affinity.
fn nominated_spread(p: &PodInfo, n: &NodeInfo, c: &SpreadConstraint) -> i64 {
    if n.nominated.is_empty() {
        return 0;
    }
    let matching = nominees(p, n).filter(|x| x.namespace == p.namespace && !x.terminal && c.selector.matches(&x.labels)).count() as i64;
    if matching == 0 || !p.spread.iter().filter(|c| c.hard).all(|c| n.labels.contains_key(&c.topology_key)) || !node_affinity_ok(p, n) {
        return 0;
    }
    matching
}

pub(crate) fn filter(plugin: Plugin, p: &PodInfo, n: &NodeInfo, st: &PreState) -> Result<(), Reason> {
    match plugin {
        Plugin::NodeUnschedulable => {
            let tolerated = p.tolerations.iter().any(|t| (t.key.is_empty() && t.exists || t.key == UNSCHEDULABLE_TAINT && (t.exists || t.value.is_empty())) && (t.effect.is_empty() || t.effect == "NoSchedule"));
            if n.unschedulable && !tolerated { Err(Reason::Unschedulable) } else { Ok(()) }
        }
        Plugin::NodeName => {
            if p.node_name.is_empty() || p.node_name == n.name { Ok(()) } else { Err(Reason::NodeName) }
        }
        Plugin::TaintToleration => match untolerated(p, &n.taints, &["NoSchedule", "NoExecute"]) {
            Some(i) => Err(Reason::Taint(i)),
            None => Ok(()),
        },
        Plugin::NodeAffinity => {
            if node_affinity_ok(p, n) { Ok(()) } else { Err(Reason::NodeAffinity) }
        }
        Plugin::NodePorts => {
            let clash = |(proto, ip, port): &(String, String, i32), (p2, ip2, port2): &(String, String, i32)| {
                p2 == proto && port2 == port && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
            };
            // Pods nominated here at this pod's priority or above hold their ports too.
            let conflict = p.host_ports.iter().any(|hp| n.used_ports.iter().any(|u| clash(hp, u)) || nominees(p, n).any(|x| x.host_ports.iter().any(|u| clash(hp, u))));
            if conflict { Err(Reason::Ports) } else { Ok(()) }
        }
        Plugin::NodeResourcesFit => {
            let (a, q) = (&n.allocatable, &p.requests);
            // Pods nominated here at this pod's priority or above hold what they request.
            let held;
            let r = match n.nominated.is_empty() {
                true => &n.requested,
                false => match n.nominated_for(p.priority, &p.uid) {
                    None => &n.requested,
                    Some((mut h, count)) => {
                        h.add(&n.requested);
                        h.pods = n.requested.pods + count;
                        held = h;
                        &held
                    }
                },
            };
            if r.pods + 1 > a.pods {
                return Err(Reason::TooManyPods);
            }
            if q.cpu > 0 && r.cpu + q.cpu > a.cpu {
                return Err(Reason::Cpu);
            }
            if q.memory > 0 && r.memory + q.memory > a.memory {
                return Err(Reason::Memory);
            }
            if q.ephemeral > 0 && r.ephemeral + q.ephemeral > a.ephemeral {
                return Err(Reason::Ephemeral);
            }
            for (i, (name, v)) in q.scalar.iter().enumerate() {
                if *v > 0 && r.scalar(name) + v > a.scalar(name) {
                    return Err(Reason::Scalar(i));
                }
            }
            Ok(())
        }
        Plugin::InterPodAffinity => {
            for (k, values) in &st.existing_anti {
                if n.labels.get(*k).is_some_and(|v| values.contains_key(v)) {
                    return Err(Reason::ExistingAntiAffinity);
                }
            }
            if !st.affinity_free {
                for (t, maps) in p.affinity.iter().zip(&st.affinity) {
                    if !topology_value(n, &t.topology_key).is_some_and(|v| maps.contains(v)) {
                        return Err(Reason::Affinity);
                    }
                }
            }
            for (t, maps) in p.anti_affinity.iter().zip(&st.anti) {
                if topology_value(n, &t.topology_key).is_some_and(|v| maps.contains(v)) {
                    return Err(Reason::AntiAffinity);
                }
            }
            // Pods nominated here count as placed here for anti-affinity, both ways.
            if st.nominees && !n.nominated.is_empty() {
                let ns = |name: &str| st.cache.and_then(|c| c.namespace_labels(name));
                let here = |t: &crate::types::AffinityTerm| n.labels.contains_key(&t.topology_key);
                for x in nominees(p, n) {
                    if x.anti_affinity.iter().any(|t| here(t) && t.matches_pod(p, ns(&p.namespace))) {
                        return Err(Reason::ExistingAntiAffinity);
                    }
                    if p.anti_affinity.iter().any(|t| here(t) && t.matches_pod(x, ns(&x.namespace))) {
                        return Err(Reason::AntiAffinity);
                    }
                }
            }
            Ok(())
        }
        Plugin::PodTopologySpread => {
            for (c, s) in p.spread.iter().filter(|c| c.hard).zip(&st.spread_hard) {
                let Some(v) = topology_value(n, &c.topology_key) else {
                    return Err(Reason::SpreadLabel);
                };
                let self_match = i64::from(c.selector.matches(&p.labels));
                // Pods nominated here count in this node's domain (and may raise the minimum).
                let (here, extra) = (s.counts.get(v), if st.nominees { nominated_spread(p, n, c) } else { 0 });
                let min = if extra == 0 { s.min } else { s.min_with(v, here, extra) };
                if here + extra + self_match - min > c.max_skew {
                    return Err(Reason::Spread);
                }
            }
            Ok(())
        }
        Plugin::VolumeBinding => {
            if let Some(i) = st.missing_claim {
                return Err(Reason::MissingClaim(i));
            }
            if st.volume_terms.iter().all(|terms| terms.iter().any(|t| t.matches(n))) { Ok(()) } else { Err(Reason::VolumeAffinity) }
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
            st.preferred.iter().filter_map(|(k, w, m)| n.labels.get(*k).and_then(|v| m.get(v.as_str())).map(|c| w * i64::from(*c))).sum::<i64>()
                + st.preferred_merged.iter().filter_map(|(k, m)| n.labels.get(*k).and_then(|v| m.get(v.as_str()))).sum::<i64>()
        }
        Plugin::PodTopologySpread => p
            .spread
            .iter()
            .filter(|c| !c.hard)
            .zip(&st.spread_soft)
            .map(|(c, s)| topology_value(n, &c.topology_key).map_or(0, |v| s.counts.get(v)))
            .sum(),
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
/// How many classes of pods [`Scratch`] remembers before it forgets them all.
const MAX_CLASSES: usize = 4096;
/// Below this many nodes to visit, a cycle stays on the calling thread: on two cores a
/// hand-off to the pool costs more than it saves (bench/RESULTS.md, "Scheduler").
pub const PARALLEL_MIN_NODES: usize = 2048;

/// A class of pods alike for the static filters, with their result.
struct Class {
    tolerations: Vec<Toleration>,
    node_selector: Labels,
    required: Option<Vec<NodeTerm>>,
    node_name: String,
    generation: u64,
    /// The nodes passing the static filters; `None` when every node does.
    passing: Option<Vec<u32>>,
    /// The last scan visited many nodes to find few: look in the free-resource index first.
    sparse: bool,
}

impl Class {
    fn hash(p: &PodInfo) -> u64 {
        let mut h = std::hash::BuildHasher::build_hasher(&foldhash::fast::FixedState::with_seed(0));
        (&p.tolerations, &p.node_selector, &p.required_node_terms, &p.node_name).hash(&mut h);
        h.finish()
    }

    fn same(&self, p: &PodInfo) -> bool {
        self.tolerations == p.tolerations && self.node_selector == p.node_selector && self.required == p.required_node_terms && self.node_name == p.node_name
    }
}

#[derive(Default)]
struct Chunk {
    nodes: Vec<u32>,
    /// Nodes whose dynamic verdict was not known, then those of them that passed.
    misses: Vec<u32>,
    /// Nodes whose dynamic verdict was known.
    kept: usize,
    took: [Duration; PLUGINS],
}

/// How many classes' dynamic verdicts [`Scratch`] keeps before it forgets them all (each is
/// 8 bytes per node).
const MAX_MEMOS: usize = 16;
/// How many attempts back a class must have been seen to get a memo.
const RECENT: usize = 16;
/// Up to this many candidates are filtered afresh (hashing the pod would cost more).
pub const MEMO_MIN_CANDIDATES: usize = 64;

/// The dynamic filters' verdicts for one class of pods alike in everything those filters
/// read of a pod (`Memo::same`), per node position: `stamp << 1 | passed`, 0 when unknown.
/// A verdict holds while the node's stamp is the one it was written with.
struct Memo {
    like: PodInfo,
    meta: u64,
    verdicts: Vec<AtomicU64>,
}

impl Memo {
    fn hash(p: &PodInfo) -> u64 {
        let mut h = std::hash::BuildHasher::build_hasher(&foldhash::fast::FixedState::with_seed(0));
        (&p.tolerations, &p.node_selector, &p.required_node_terms, &p.node_name).hash(&mut h);
        (&p.requests, &p.host_ports, p.priority, &p.labels, &p.namespace, &p.anti_affinity, &p.claims).hash(&mut h);
        h.finish()
    }

    fn same(&self, p: &PodInfo) -> bool {
        let l = &self.like;
        l.tolerations == p.tolerations && l.node_selector == p.node_selector && l.required_node_terms == p.required_node_terms && l.node_name == p.node_name
            && l.requests == p.requests && l.host_ports == p.host_ports && l.priority == p.priority && l.labels == p.labels
            && l.namespace == p.namespace && l.anti_affinity == p.anti_affinity && l.claims == p.claims
    }
}

/// A class's verdicts with the cache's node stamps, for one attempt.
#[derive(Clone, Copy)]
struct Verdicts<'m> {
    memo: &'m [AtomicU64],
    versions: &'m [u64],
}

impl Verdicts<'_> {
    fn get(&self, i: u32) -> Option<bool> {
        let e = self.memo[i as usize].load(Ordering::Relaxed);
        (e != 0 && e >> 1 == self.versions[i as usize]).then_some(e & 1 == 1)
    }

    fn set(&self, i: u32, passed: bool) {
        self.memo[i as usize].store(self.versions[i as usize] << 1 | u64::from(passed), Ordering::Relaxed);
    }
}

/// Whether `p`'s dynamic verdict on a node depends on that node's own state alone: no
/// required affinity (whether any pod matches anywhere decides), no hard spreading (the
/// minimum over every domain does), and anti-affinity (its own terms and placed pods' terms
/// selecting it) only over keys whose every value names one node.
fn node_local(p: &PodInfo, st: &PreState, unique: &mut impl FnMut(&str) -> bool) -> bool {
    p.affinity.is_empty()
        && !p.spread.iter().any(|c| c.hard)
        && p.anti_affinity.iter().all(|t| unique(&t.topology_key))
        && st.existing_anti.iter().all(|(k, _)| unique(k))
}

/// What a scheduler keeps between cycles: the worker pool, reusable buffers, and the static
/// filters' results per class of pods. One per profile.
pub struct Scratch {
    pool: Option<Arc<rayon::ThreadPool>>,
    /// Nodes to visit from which a cycle goes parallel.
    pub parallel_min_nodes: usize,
    chunks: Vec<Mutex<Chunk>>,
    one: Chunk,
    feasible: Vec<u32>,
    room: Vec<u32>,
    raw: Vec<i64>,
    totals: Vec<i64>,
    classes: HashMap<u64, Class>,
    /// Nodes by their value of a topology key, per key, for one node generation.
    domains: HashMap<String, DomainNodes>,
    allowed: Vec<u32>,
    /// Dynamic verdicts per class (see [`Memo`]); off when false (to measure without them).
    pub memo: bool,
    /// Candidates above which a class's verdicts are kept.
    pub memo_min_candidates: usize,
    memos: HashMap<u64, Memo>,
    /// The classes of the last attempts with node-local verdicts: a class gets a memo when
    /// it comes again among them (one seen once, such as each of a thousand groups in turn,
    /// would cost a memo per attempt and never reuse it).
    recent: [u64; RECENT],
    recent_at: usize,
    /// Per node generation: whether each topology key asked about has one node per value.
    unique_keys: (u64, HashMap<String, bool>),
}

/// The nodes of each value of one topology key (values sorted, nodes in cache order: the
/// same cache gives the same candidates), valid while the node generation does not move.
#[derive(Default)]
struct DomainNodes {
    generation: u64,
    values: Vec<(String, Vec<u32>)>,
}

impl DomainNodes {
    fn build(key: &str, nodes: &[NodeInfo], generation: u64) -> DomainNodes {
        let mut by: std::collections::BTreeMap<&str, Vec<u32>> = std::collections::BTreeMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if let Some(v) = n.labels.get(key) {
                by.entry(v.as_str()).or_default().push(i as u32);
            }
        }
        DomainNodes { generation, values: by.into_iter().map(|(v, l)| (v.to_string(), l)).collect() }
    }
}

/// A persistent pool of `parallelism` filter-and-score workers; `None` for 1 (or 0).
pub fn worker_pool(parallelism: usize) -> Option<Arc<rayon::ThreadPool>> {
    if parallelism <= 1 {
        return None;
    }
    rayon::ThreadPoolBuilder::new().num_threads(parallelism).thread_name(|i| format!("sched-worker-{i}")).build().ok().map(Arc::new)
}

impl Scratch {
    pub fn new(pool: Option<Arc<rayon::ThreadPool>>) -> Scratch {
        Scratch {
            pool,
            parallel_min_nodes: PARALLEL_MIN_NODES,
            chunks: Vec::new(),
            one: Chunk::default(),
            feasible: Vec::new(),
            room: Vec::new(),
            raw: Vec::new(),
            totals: Vec::new(),
            classes: HashMap::new(),
            domains: HashMap::new(),
            allowed: Vec::new(),
            memo: true,
            memo_min_candidates: MEMO_MIN_CANDIDATES,
            memos: HashMap::new(),
            recent: [0; RECENT],
            recent_at: 0,
            unique_keys: (u64::MAX, HashMap::new()),
        }
    }

    pub fn sequential() -> Scratch {
        Scratch::new(None)
    }
}

/// Candidate positions: every node rotated, or a list of node indexes rotated.
#[derive(Clone, Copy)]
enum Source<'s> {
    All(usize),
    List(&'s [u32]),
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::All(n) => *n,
            Source::List(l) => l.len(),
        }
    }

    fn at(&self, k: usize, start: usize) -> u32 {
        match self {
            Source::All(n) => ((k + start) % n) as u32,
            Source::List(l) => l[(k + start) % l.len()],
        }
    }
}

/// Filters one chunk of candidate positions: `out.nodes` keeps those passing every plugin.
/// With `memo`, the dynamic filters run only on nodes whose verdict is not known, and their
/// verdicts are kept. Pods nominated to a node count for every pod of a class but the
/// nominee itself, which is fine: the nominee tries its node first with every filter run
/// afresh (evaluateNominatedNode) and goes there if it passes; if not, the verdict of its
/// class there, with the nominee counted, is a failure too.
#[allow(clippy::too_many_arguments)]
fn filter_chunk(filters: &[Plugin], p: &PodInfo, nodes: &[NodeInfo], st: &PreState, src: Source, start: usize, range: std::ops::Range<usize>, out: &mut Chunk, memo: Option<Verdicts>) {
    out.nodes.clear();
    out.nodes.extend(range.map(|k| src.at(k, start)));
    let Some(memo) = memo else {
        for &plugin in filters {
            let tp = Instant::now();
            out.nodes.retain(|&i| filter(plugin, p, &nodes[i as usize], st).is_ok());
            out.took[plugin as usize] += tp.elapsed();
            if out.nodes.is_empty() {
                break;
            }
        }
        return;
    };
    for &plugin in filters.iter().filter(|f| f.is_static()) {
        let tp = Instant::now();
        out.nodes.retain(|&i| filter(plugin, p, &nodes[i as usize], st).is_ok());
        out.took[plugin as usize] += tp.elapsed();
    }
    out.misses.clear();
    out.misses.extend(out.nodes.iter().copied().filter(|&i| memo.get(i).is_none()));
    out.kept += out.nodes.len() - out.misses.len();
    for &plugin in filters.iter().filter(|f| !f.is_static()) {
        if out.misses.is_empty() {
            break;
        }
        let tp = Instant::now();
        out.misses.retain(|&i| filter(plugin, p, &nodes[i as usize], st).is_ok());
        out.took[plugin as usize] += tp.elapsed();
    }
    // The survivors are in candidate order: a subsequence of the nodes.
    let mut next = 0;
    let survivors = &out.misses;
    out.nodes.retain(|&i| match memo.get(i) {
        Some(passed) => passed,
        None => {
            let passed = survivors.get(next) == Some(&i);
            next += usize::from(passed);
            memo.set(i, passed);
            passed
        }
    });
}

/// The nodes a pod's required node affinity names, when every term requires
/// `metadata.name In [...]` (None: it may go elsewhere too).
fn named_nodes(p: &PodInfo) -> Option<Vec<&str>> {
    let terms = p.required_node_terms.as_ref()?;
    let mut out = Vec::new();
    for t in terms {
        let names = t.names.iter().find_map(|r| match &r.op {
            crate::types::Op::In(v) if r.key == "metadata.name" => Some(v),
            _ => None,
        })?;
        out.extend(names.iter().map(String::as_str));
    }
    (!terms.is_empty()).then_some(out)
}

/// Schedules one pod over the cache's nodes, starting the search at `start` (rotated by the
/// caller so that early stops do not always favour the same nodes).
pub fn schedule(profile: &Profile, p: &PodInfo, cache: &Cache, start: usize, scratch: &mut Scratch, t: &mut Timings) -> Outcome {
    let t0 = Instant::now();
    let st = pre_filter(p, cache);
    t.pre_filter += t0.elapsed();
    let nodes = cache.nodes();
    let total = nodes.len();
    let want = profile.nodes_to_find(total).max(1);

    // A pod nominated to a node (it preempted there) goes there if it now fits, before any
    // other node is looked at: kube-scheduler's evaluateNominatedNode. The cache's nomination
    // is the current one (set from `status.nominatedNodeName`, taken back at once when a
    // preemptor displaces it).
    if let Some(i) = cache.nomination(&p.uid).and_then(|name| cache.node_index(name)) {
        let fits = profile.filters.iter().all(|&f| {
            let tf = Instant::now();
            let ok = filter(f, p, &nodes[i], &st).is_ok();
            Timings::add(&mut t.filter, f, tf.elapsed());
            ok
        });
        if fits {
            t.total = t0.elapsed();
            return Outcome::Scheduled { node: i, feasible: 1, evaluated: 1 };
        }
    }

    // The static filters' result for this pod's class, computed once per node generation.
    let hash = Class::hash(p);
    let generation = cache.generation();
    let mut class = match scratch.classes.remove(&hash) {
        Some(c) if c.same(p) && c.generation == generation => {
            t.static_reused = true;
            c
        }
        other => {
            // A pod bound to named nodes (a DaemonSet's: matchFields metadata.name In [...])
            // looks at those only, as kube-scheduler's NodeAffinity PreFilter narrows them.
            let mut passing: Vec<u32> = match named_nodes(p) {
                Some(names) => {
                    let mut l: Vec<u32> = names.iter().filter_map(|n| cache.node_index(n)).map(|i| i as u32).collect();
                    l.sort_unstable();
                    l.dedup();
                    l
                }
                None => (0..total as u32).collect(),
            };
            t.static_checked = passing.len();
            for &f in profile.filters.iter().filter(|f| f.is_static()) {
                let tp = Instant::now();
                passing.retain(|&i| filter(f, p, &nodes[i as usize], &st).is_ok());
                Timings::add(&mut t.filter, f, tp.elapsed());
            }
            Class {
                tolerations: p.tolerations.clone(),
                node_selector: p.node_selector.clone(),
                required: p.required_node_terms.clone(),
                node_name: p.node_name.clone(),
                generation,
                passing: if passing.len() == total { None } else { Some(passing) },
                sparse: other.is_some_and(|c| c.same(p) && c.sparse),
            }
        }
    };
    let static_list = class.passing.take();
    let mut src = match &static_list {
        None => Source::All(total),
        Some(l) => Source::List(l),
    };
    t.candidates = match &static_list {
        None => Candidates::All,
        Some(l) => Candidates::StaticClass(l.len()),
    };
    // Which filters run per node: the static ones only if the candidates have not passed them.
    let mut filters = [Plugin::NodeName; PLUGINS];
    let mut nf = 0;
    let mut room = std::mem::take(&mut scratch.room);
    let from_room = class.sparse && src.len() > 0 && cache.nodes_with_room(p, src.len() / 4, &mut room);
    if class.sparse && !from_room {
        class.sparse = false;
    }
    if from_room {
        src = Source::List(&room);
        t.candidates = Candidates::FreeIndex(room.len());
    }
    // A hard spread constraint over every node allows only the domains whose count is within
    // the skew: visit only their nodes (the filter still judges each). With maxSkew 1 over
    // ten zones, as often as not most zones are full for the round, and a scan of all nodes
    // would pass over most of them to find enough feasible ones.
    let mut allowed = std::mem::take(&mut scratch.allowed);
    if static_list.is_none() && !from_room && p.node_selector.is_empty() && p.required_node_terms.is_none()
        && let Some((c, sp)) = p.spread.iter().filter(|c| c.hard).zip(&st.spread_hard).next()
    {
        // Looked up by &str: the key is cloned only when its index is first built.
        if scratch.domains.get(&c.topology_key).is_none_or(|d| d.generation != generation || d.values.is_empty()) {
            scratch.domains.insert(c.topology_key.clone(), DomainNodes::build(&c.topology_key, nodes, generation));
        }
        let d = &scratch.domains[&c.topology_key];
        let self_match = i64::from(c.selector.matches(&p.labels));
        allowed.clear();
        for (value, list) in &d.values {
            if sp.counts.get(value) + self_match - sp.min <= c.max_skew {
                allowed.extend_from_slice(list);
            }
        }
        src = Source::List(&allowed);
        t.candidates = Candidates::SpreadDomains(allowed.len());
    }
    for &f in &profile.filters {
        if !f.is_static() || (from_room && static_list.is_some()) {
            filters[nf] = f;
            nf += 1;
        }
    }
    let filters = &filters[..nf];

    // This class's dynamic verdicts, when they depend on each node alone (and there are
    // enough candidates for a memo to pay: a DaemonSet's pod has one).
    let mut memo = None;
    if scratch.memo && src.len() > scratch.memo_min_candidates {
        if scratch.unique_keys.0 != generation {
            scratch.unique_keys = (generation, HashMap::new());
        }
        let keys = &mut scratch.unique_keys.1;
        let mut unique = |k: &str| match keys.get(k) {
            Some(&u) => u,
            None => {
                let u = cache.topology(k).is_none_or(|vals| vals.values().all(|&c| c == 1));
                keys.insert(k.to_string(), u);
                u
            }
        };
        if node_local(p, &st, &mut unique) {
            let key = Memo::hash(p);
            let recurs = scratch.recent.contains(&key);
            scratch.recent[scratch.recent_at] = key;
            scratch.recent_at = (scratch.recent_at + 1) % RECENT;
            let kept = match scratch.memos.remove(&key) {
                Some(m) if m.same(p) && m.meta == cache.meta() => Some(m),
                _ if recurs => Some(Memo { like: p.clone(), meta: cache.meta(), verdicts: Vec::new() }),
                _ => None,
            };
            if let Some(mut m) = kept {
                m.verdicts.resize_with(total, || AtomicU64::new(0));
                memo = Some((key, m));
            }
        }
    }
    let verdicts = memo.as_ref().map(|(_, m)| Verdicts { memo: &m.verdicts, versions: cache.versions() });

    let len = src.len();
    let expected = if class.sparse { len } else { len.min(want) };
    let pool = scratch.pool.clone().filter(|_| expected >= scratch.parallel_min_nodes);
    t.parallel = pool.is_some();
    let mut feasible = std::mem::take(&mut scratch.feasible);
    feasible.clear();
    let mut took = [Duration::ZERO; PLUGINS];
    let evaluated = match &pool {
        None => {
            let mut pos = 0;
            let one = &mut scratch.one;
            one.took = [Duration::ZERO; PLUGINS];
            one.kept = 0;
            while pos < len && feasible.len() < want {
                let end = (pos + CHUNK).min(len);
                filter_chunk(filters, p, nodes, &st, src, start, pos..end, one, verdicts);
                feasible.extend_from_slice(&one.nodes);
                pos = end;
            }
            took = one.took;
            t.verdicts_kept += one.kept;
            pos
        }
        Some(pool) => {
            let nchunks = len.div_ceil(CHUNK);
            while scratch.chunks.len() < nchunks {
                scratch.chunks.push(Mutex::new(Chunk::default()));
            }
            let (next, found) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let chunks = &scratch.chunks;
            let st = &st;
            pool.broadcast(|_| {
                loop {
                    if found.load(Ordering::Relaxed) >= want {
                        break;
                    }
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= nchunks {
                        break;
                    }
                    let mut ch = chunks[c].lock().unwrap_or_else(|e| e.into_inner());
                    ch.took = [Duration::ZERO; PLUGINS];
                    ch.kept = 0;
                    filter_chunk(filters, p, nodes, st, src, start, c * CHUNK..((c + 1) * CHUNK).min(len), &mut ch, verdicts);
                    found.fetch_add(ch.nodes.len(), Ordering::Relaxed);
                }
            });
            let done = next.load(Ordering::Relaxed).min(nchunks);
            for ch in &mut scratch.chunks[..done] {
                let ch = ch.get_mut().unwrap_or_else(|e| e.into_inner());
                if feasible.len() < want {
                    feasible.extend_from_slice(&ch.nodes);
                }
                for (a, b) in took.iter_mut().zip(ch.took) {
                    *a += b;
                }
                t.verdicts_kept += ch.kept;
            }
            (done * CHUNK).min(len)
        }
    };
    for (f, d) in Plugin::ALL.into_iter().zip(took) {
        if filters.contains(&f) {
            Timings::add(&mut t.filter, f, d);
        }
    }
    feasible.truncate(want);
    // Next time, look among nodes with room first if this scan visited many to find few.
    if !from_room && evaluated >= 4 * feasible.len().max(1) && evaluated > want {
        class.sparse = true;
    }
    class.passing = static_list;
    scratch.room = room;
    scratch.allowed = allowed;
    if scratch.classes.len() >= MAX_CLASSES {
        scratch.classes.clear();
    }
    scratch.classes.insert(hash, class);
    if let Some((key, m)) = memo {
        if scratch.memos.len() >= MAX_MEMOS {
            scratch.memos.clear();
        }
        scratch.memos.insert(key, m);
    }

    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    if feasible.is_empty() {
        // Every node once with every filter, for kube-scheduler's message (it counts all).
        let td = Instant::now();
        for (i, n) in nodes.iter().enumerate() {
            match profile.filters.iter().find_map(|&f| filter(f, p, n, &st).err()) {
                Some(r) => *reasons.entry(r.message(p, n)).or_default() += 1,
                None => feasible.push(i as u32),
            }
        }
        t.diagnose = td.elapsed();
        debug_assert!(feasible.is_empty(), "the candidates missed a feasible node");
        feasible.truncate(want);
        if feasible.is_empty() {
            scratch.feasible = feasible;
            t.total = t0.elapsed();
            return Outcome::Unschedulable { reasons, total };
        }
    }
    if feasible.len() == 1 {
        let node = feasible[0] as usize;
        scratch.feasible = feasible;
        t.total = t0.elapsed();
        return Outcome::Scheduled { node, feasible: 1, evaluated };
    }
    let n = feasible.len();
    let (mut totals, mut raw) = (std::mem::take(&mut scratch.totals), std::mem::take(&mut scratch.raw));
    totals.clear();
    totals.resize(n, 0);
    raw.clear();
    raw.resize(n, 0);
    let score_pool = scratch.pool.clone().filter(|_| n >= scratch.parallel_min_nodes);
    for &(plugin, weight) in &profile.scores {
        if !plugin.scores() || weight == 0 {
            continue;
        }
        // A plugin that scores every node alike adds a constant: the choice is the same
        // without it, so it is not run.
        let constant = match plugin {
            Plugin::TaintToleration => !cache.any_prefer_no_schedule(),
            Plugin::NodeAffinity => p.preferred_node_terms.is_empty(),
            Plugin::InterPodAffinity => st.preferred.is_empty() && st.preferred_merged.is_empty(),
            Plugin::PodTopologySpread => !p.spread.iter().any(|c| !c.hard),
            _ => false,
        };
        if constant {
            continue;
        }
        let tp = Instant::now();
        match &score_pool {
            Some(pool) => pool.install(|| {
                raw.par_chunks_mut(CHUNK).zip(feasible.par_chunks(CHUNK)).for_each(|(r, f)| {
                    for (x, &i) in r.iter_mut().zip(f) {
                        *x = score(plugin, profile.strategy, p, &nodes[i as usize], &st);
                    }
                })
            }),
            None => {
                for (x, &i) in raw.iter_mut().zip(&feasible) {
                    *x = score(plugin, profile.strategy, p, &nodes[i as usize], &st);
                }
            }
        }
        match plugin {
            Plugin::TaintToleration | Plugin::PodTopologySpread => normalize(&mut raw, true),
            Plugin::NodeAffinity | Plugin::InterPodAffinity => normalize(&mut raw, false),
            _ => {}
        }
        for (total, s) in totals.iter_mut().zip(&raw) {
            *total += s * weight;
        }
        Timings::add(&mut t.score, plugin, tp.elapsed());
    }
    let best = (0..n).max_by_key(|&k| (totals[k], std::cmp::Reverse(k))).unwrap_or(0);
    let node = feasible[best] as usize;
    (scratch.totals, scratch.raw, scratch.feasible) = (totals, raw, feasible);
    t.total = t0.elapsed();
    Outcome::Scheduled { node, feasible: n, evaluated }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preemption::preempt;
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

    fn sized(name: &str, priority: i32, cpu: &str) -> PodInfo {
        pod(name, json!({"spec": {"priority": priority, "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]}}))
    }

    fn fits(cache: &Cache, p: &PodInfo) -> bool {
        matches!(schedule(&Profile::default(), p, cache, 0, &mut Scratch::sequential(), &mut Timings::default()), Outcome::Scheduled { .. })
    }

    #[test]
    fn pods_nominated_to_a_node_hold_their_requests_against_pods_of_no_higher_priority() {
        let mut cache = Cache::from_nodes(vec![node("n1", "1", "a", json!({}))]);
        let nominee = Arc::new(sized("nominee", 10, "800m"));
        cache.nominate(&nominee, Some("n1"));
        // As kube-scheduler adds nominated pods of equal or higher priority before filtering.
        assert!(!fits(&cache, &sized("low", 5, "500m")));
        assert!(!fits(&cache, &sized("equal", 10, "500m")));
        assert!(fits(&cache, &sized("high", 20, "500m")));
        assert!(fits(&cache, &sized("small", 5, "200m")));
        // The nominee is not held back by its own nomination.
        assert!(fits(&cache, &nominee));
        // Bound, it holds nothing more than its own requests.
        cache.place(nominee.clone(), "n1", false);
        assert!(cache.node("n1").unwrap().nominated.is_empty());
        assert!(!fits(&cache, &sized("low", 5, "500m")));
        cache.unplace("nominee");
        assert!(fits(&cache, &sized("low", 5, "500m")));
        // A nomination cleared (or its pod deleted) holds nothing; one moved holds elsewhere.
        cache.nominate(&nominee, Some("n1"));
        cache.nominate(&nominee, Some(""));
        assert!(fits(&cache, &sized("low", 5, "500m")));
        cache.nominate(&nominee, Some("n1"));
        cache.forget_nomination("nominee");
        assert!(fits(&cache, &sized("low", 5, "500m")));
        // A node update keeps what is nominated to it.
        cache.nominate(&nominee, Some("n1"));
        cache.upsert_node(node("n1", "1", "b", json!({})));
        assert!(!fits(&cache, &sized("low", 5, "500m")));
        // A preemptor nominated there takes the node from nominees of lower priority only.
        let higher = Arc::new(sized("higher", 50, "100m"));
        cache.nominate(&higher, Some("n1"));
        let preemptor = Arc::new(sized("preemptor", 20, "100m"));
        let displaced = cache.nominate_preemptor(&preemptor, "n1");
        assert_eq!(displaced.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["nominee"]);
        let held: Vec<&str> = cache.node("n1").unwrap().nominated.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(held, ["higher", "preemptor"]);
    }

    #[test]
    fn pods_nominated_to_a_node_hold_their_host_ports_against_pods_of_no_higher_priority() {
        let with_port = |name: &str, priority: i32, port: i32| {
            pod(name, json!({"spec": {"priority": priority, "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": port}]}]}}))
        };
        let mut cache = Cache::from_nodes(vec![node("n1", "4", "a", json!({}))]);
        let nominee = Arc::new(with_port("nominee", 10, 8080));
        cache.nominate(&nominee, Some("n1"));
        assert!(!fits(&cache, &with_port("low", 5, 8080)), "the nominee's port is held");
        assert!(!fits(&cache, &with_port("equal", 10, 8080)));
        assert!(fits(&cache, &with_port("high", 20, 8080)), "a higher priority is not held back");
        assert!(fits(&cache, &with_port("other-port", 5, 9090)));
        assert!(fits(&cache, &nominee), "not held back by its own nomination");
        cache.forget_nomination("nominee");
        assert!(fits(&cache, &with_port("low", 5, 8080)));
    }

    /// Whether `plugin` passes `p` on node `name` of `cache`.
    fn passes(cache: &Cache, p: &PodInfo, name: &str, plugin: Plugin) -> bool {
        let st = pre_filter(p, cache);
        filter(plugin, p, cache.node(name).unwrap(), &st).is_ok()
    }

    #[test]
    fn pods_nominated_to_a_node_count_there_for_anti_affinity_both_ways() {
        let labelled = |name: &str, priority: i32, app: &str, extra: Value| {
            let mut v = json!({"metadata": {"labels": {"app": app}}, "spec": {"priority": priority}});
            merge(&mut v, extra);
            pod(name, v)
        };
        let anti = |app: &str, key: &str| json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}}}});
        let mut cache = Cache::from_nodes(vec![node("n1", "4", "a", json!({})), node("n2", "4", "a", json!({}))]);
        // The incoming pod's anti-affinity against a nominee (hostname: n1 only).
        cache.nominate(&Arc::new(labelled("web-nominee", 10, "web", json!({}))), Some("n1"));
        let avoid_web = |priority| labelled("p", priority, "other", anti("web", "kubernetes.io/hostname"));
        assert!(!passes(&cache, &avoid_web(5), "n1", Plugin::InterPodAffinity), "the nominee counts as on n1");
        assert!(!passes(&cache, &avoid_web(10), "n1", Plugin::InterPodAffinity), "and at equal priority");
        assert!(passes(&cache, &avoid_web(20), "n1", Plugin::InterPodAffinity), "not against a higher priority");
        assert!(passes(&cache, &avoid_web(5), "n2", Plugin::InterPodAffinity), "only on its own node");
        // A key the node lacks puts it in no domain.
        assert!(passes(&cache, &labelled("p", 5, "other", anti("web", "rack")), "n1", Plugin::InterPodAffinity));
        // A nominee's anti-affinity against the incoming pod.
        cache.nominate(&Arc::new(labelled("db-hater", 10, "x", anti("db", "kubernetes.io/hostname"))), Some("n2"));
        assert!(!passes(&cache, &labelled("db", 5, "db", json!({})), "n2", Plugin::InterPodAffinity));
        assert!(passes(&cache, &labelled("db", 5, "db", json!({})), "n1", Plugin::InterPodAffinity));
        assert!(passes(&cache, &labelled("db", 50, "db", json!({})), "n2", Plugin::InterPodAffinity));
        // Required affinity is not satisfied by a nominee (it may never land).
        let near_web = labelled("p", 5, "other", json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}));
        assert!(!passes(&cache, &near_web, "n1", Plugin::InterPodAffinity));
        // Placed, the nominee is an ordinary pod.
        let web = Arc::new(labelled("web-nominee", 10, "web", json!({})));
        cache.place(web, "n1", false);
        assert!(passes(&cache, &near_web, "n1", Plugin::InterPodAffinity));
        assert!(!passes(&cache, &avoid_web(20), "n1", Plugin::InterPodAffinity));
    }

    #[test]
    fn pods_nominated_to_a_node_count_in_its_spread_domain() {
        let web = |name: &str, priority: i32| {
            pod(name, json!({"metadata": {"labels": {"app": "web"}}, "spec": {"priority": priority,
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}}))
        };
        let mut cache = Cache::from_nodes(vec![node("n1", "4", "a", json!({})), node("n2", "4", "b", json!({}))]);
        // Zone a holds a nominee, zone b nothing: on n1 the pod would make a 2 against 0.
        cache.nominate(&Arc::new(web("nominee-1", 10)), Some("n1"));
        assert!(!passes(&cache, &web("p", 5), "n1", Plugin::PodTopologySpread));
        assert!(passes(&cache, &web("p", 5), "n2", Plugin::PodTopologySpread));
        assert!(passes(&cache, &web("p", 20), "n1", Plugin::PodTopologySpread), "a higher priority ignores it");
        // With one pod placed in zone b, a second nominee in zone a raises the minimum it
        // alone held: a = 2, b = 1, so n1 makes 3 against 1.
        cache.place(Arc::new(web("placed-b", 0)), "n2", false);
        assert!(passes(&cache, &web("p", 5), "n1", Plugin::PodTopologySpread), "a = 1, b = 1: 2 against 1");
        cache.nominate(&Arc::new(web("nominee-2", 10)), Some("n1"));
        assert!(!passes(&cache, &web("p", 5), "n1", Plugin::PodTopologySpread));
        // Pods of another namespace or another app do not count.
        let mut other_ns = web("nominee-3", 10);
        other_ns.namespace = "elsewhere".into();
        let mut cache = Cache::from_nodes(vec![node("n1", "4", "a", json!({})), node("n2", "4", "b", json!({}))]);
        cache.nominate(&Arc::new(other_ns), Some("n1"));
        cache.nominate(&Arc::new(pod("db", json!({"metadata": {"labels": {"app": "db"}}, "spec": {"priority": 10}}))), Some("n1"));
        assert!(passes(&cache, &web("p", 5), "n1", Plugin::PodTopologySpread));
    }

    #[test]
    fn the_spread_minimum_moves_only_when_its_domain_held_it_alone() {
        let min_at = |s: &Spread, v: &str, extra: i64| s.min_with(v, s.counts.get(v), extra);
        let map: Values = [("a".to_string(), 1u32), ("b".to_string(), 1), ("c".to_string(), 3)].into_iter().collect();
        let s = |domains, below| Spread { counts: Counts::Borrowed(Some(&map)), min: if domains > 3 { 0 } else { 1 }, domains, below_min_domains: below };
        assert_eq!(min_at(&s(3, false), "a", 1), 1, "b still holds 1");
        assert_eq!(min_at(&s(3, false), "c", 5), 1, "c was above the minimum");
        assert_eq!(min_at(&s(4, false), "a", 1), 0, "an empty fourth domain holds 0");
        assert_eq!(min_at(&s(3, true), "a", 1), 1, "below minDomains the minimum stays");
        let one: Values = [("a".to_string(), 1u32), ("c".to_string(), 3)].into_iter().collect();
        let s = Spread { counts: Counts::Borrowed(Some(&one)), min: 1, domains: 2, below_min_domains: false };
        assert_eq!(min_at(&s, "a", 1), 2);
        assert_eq!(min_at(&s, "a", 5), 3, "up to the next domain's count");
        assert_eq!(min_at(&s, "a", 0), 1);
        let s = Spread { counts: Counts::Borrowed(Some(&one)), min: 0, domains: 3, below_min_domains: false };
        assert_eq!(min_at(&s, "b", 1), 1, "b, unlisted, alone held 0");
        assert_eq!(min_at(&s, "a", 1), 0, "b still holds 0");
    }

    #[test]
    fn a_nominated_pod_goes_to_its_node_when_it_fits_there() {
        let mut cache = Cache::from_nodes(vec![node("n1", "4", "a", json!({})), node("n2", "4", "a", json!({}))]);
        cache.place(Arc::new(sized("busy", 0, "2")), "n2", false);
        let p = Arc::new(sized("p", 10, "1"));
        let chosen = |cache: &Cache, p: &PodInfo| match schedule(&Profile::default(), p, cache, 0, &mut Scratch::sequential(), &mut Timings::default()) {
            Outcome::Scheduled { node, .. } => cache.nodes()[node].name.clone(),
            o => panic!("{o:?}"),
        };
        assert_eq!(chosen(&cache, &p), "n1", "the emptier node scores best");
        // Nominated to n2 (kube-scheduler's evaluateNominatedNode).
        cache.nominate(&p, Some("n2"));
        assert_eq!(chosen(&cache, &p), "n2");
        // Where it no longer fits, the others are searched as usual.
        cache.place(Arc::new(sized("filler", 0, "2")), "n2", false);
        assert_eq!(chosen(&cache, &p), "n1");
        // A nomination taken back holds nothing.
        cache.unplace("filler");
        cache.forget_nomination("p");
        assert_eq!(chosen(&cache, &p), "n1");
    }

    #[test]
    fn preemption_counts_pods_nominated_at_or_above_the_preemptors_priority() {
        let mut cache = Cache::from_nodes(vec![node("n1", "1", "a", json!({})), node("n2", "1", "a", json!({}))]);
        for n in ["n1", "n2"] {
            cache.place(Arc::new(sized(&format!("victim-{n}"), 1, "1")), n, false);
        }
        // n1 is held for a pod of higher priority than the preemptor: evicting its victim
        // would not make room there.
        cache.nominate(&Arc::new(sized("nominee", 100, "1")), Some("n1"));
        let preemptor = sized("preemptor", 50, "1");
        let c = preempt(&Profile::default(), &preemptor, &cache, 0).expect("a candidate");
        assert_eq!(cache.nodes()[c.node].name, "n2");
        assert_eq!(c.victims.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["victim-n2"]);
        // A nominee of lower priority than the preemptor does not hold n1 against it.
        cache.nominate(&Arc::new(sized("nominee", 10, "1")), Some("n1"));
        let c = preempt(&Profile::default(), &preemptor, &cache, 0).expect("a candidate");
        assert_eq!(cache.nodes()[c.node].name, "n1");
    }

    fn run(p: &PodInfo, nodes: &[NodeInfo]) -> Result<String, String> {
        run_with(&Profile::default(), p, nodes)
    }

    fn run_with(profile: &Profile, p: &PodInfo, nodes: &[NodeInfo]) -> Result<String, String> {
        let cache = Cache::from_nodes(nodes.to_vec());
        match schedule(profile, p, &cache, 0, &mut Scratch::sequential(), &mut Timings::default()) {
            Outcome::Scheduled { node, .. } => Ok(cache.nodes()[node].name.clone()),
            Outcome::Unschedulable { reasons, total } => Err(unschedulable_message(&reasons, total)),
        }
    }

    #[test]
    fn volume_binding_keeps_a_pod_on_its_volume_s_node_and_waits_for_missing_claims() {
        let nodes = vec![node("a", "4", "z1", json!({})), node("b", "4", "z1", json!({})), node("c", "4", "z1", json!({}))];
        let mut cache = Cache::from_nodes(nodes);
        let on_b = json!([{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]);
        let terms: Vec<k8s_openapi::api::core::v1::NodeSelectorTerm> = serde_json::from_value(on_b).unwrap();
        cache.set_volume("pv-b".into(), Some(terms.iter().map(NodeTerm::from_k8s).collect()));
        cache.set_claim("ns/data".into(), Some("pv-b".into()));
        cache.set_claim("ns/fresh".into(), Some(String::new()));
        let with = |claim: &str| pod("p", json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}}));
        let go = |p: &PodInfo, cache: &Cache| match schedule(&Profile::default(), p, cache, 0, &mut Scratch::sequential(), &mut Timings::default()) {
            Outcome::Scheduled { node, .. } => Ok(cache.nodes()[node].name.clone()),
            Outcome::Unschedulable { reasons, total } => Err(unschedulable_message(&reasons, total)),
        };
        for _ in 0..5 {
            assert_eq!(go(&with("data"), &cache).unwrap(), "b", "the bound volume's node");
        }
        assert!(go(&with("fresh"), &cache).is_ok(), "an unbound claim: any node (its volume is made on the pod's)");
        assert_eq!(go(&with("nope"), &cache).unwrap_err(), "0/3 nodes are available: 3 persistentvolumeclaim \"nope\" not found.");
        // The volume's node gone: nowhere.
        let off = json!([{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["gone"]}]}]);
        let terms: Vec<k8s_openapi::api::core::v1::NodeSelectorTerm> = serde_json::from_value(off).unwrap();
        cache.set_volume("pv-b".into(), Some(terms.iter().map(NodeTerm::from_k8s).collect()));
        assert_eq!(go(&with("data"), &cache).unwrap_err(), "0/3 nodes are available: 3 node(s) had volume node affinity conflict.");
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
    fn hard_spreading_visits_only_the_nodes_of_allowed_domains() {
        let nodes: Vec<NodeInfo> = (0..30).map(|i| node(&format!("n{i}"), "8", &format!("z{}", i % 3), json!({}))).collect();
        let mut cache = Cache::from_nodes(nodes);
        let mut scratch = Scratch::sequential();
        let spread = |i: usize| {
            pod(&format!("p{i}"), json!({"metadata": {"labels": {"app": "s"}}, "spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "s"}}}]}}))
        };
        let zone = |c: &Cache, node: usize| c.nodes()[node].labels["zone"][1..].parse::<usize>().unwrap();
        let mut per_zone = [0usize; 3];
        for i in 0..45 {
            let p = spread(i);
            let mut t = Timings::default();
            let min = *per_zone.iter().min().unwrap();
            let allowed = (0..3).filter(|&z| per_zone[z] + 1 - min <= 1).count();
            let Outcome::Scheduled { node, .. } = schedule(&Profile::default(), &p, &cache, i, &mut scratch, &mut t) else { panic!("pod {i} unschedulable") };
            assert_eq!(t.candidates, Candidates::SpreadDomains(allowed * 10), "pod {i}: the nodes of the {allowed} zone(s) at the minimum");
            per_zone[zone(&cache, node)] += 1;
            assert!(per_zone.iter().max().unwrap() - per_zone.iter().min().unwrap() <= 1, "pod {i}: skew {per_zone:?}");
            let name = cache.nodes()[node].name.clone();
            cache.place(Arc::new(p), &name, true);
        }
        // A node in a new zone: the index follows the new generation.
        cache.upsert_node(node("n30", "8", "z9", json!({})));
        let mut t = Timings::default();
        let Outcome::Scheduled { node: n, .. } = schedule(&Profile::default(), &spread(99), &cache, 0, &mut scratch, &mut t) else { panic!("unschedulable") };
        assert_eq!(cache.nodes()[n].labels["zone"], "z9", "the new zone has no pod: the only one allowed");
        assert_eq!(t.candidates, Candidates::SpreadDomains(1));
    }

    #[test]
    fn a_pod_bound_to_named_nodes_looks_at_those_only() {
        let nodes: Vec<NodeInfo> = (0..20).map(|i| node(&format!("n{i}"), "4", "z1", json!({}))).collect();
        let cache = Cache::from_nodes(nodes);
        let on = |names: Value| pod("ds", json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": names}]}]}}}}}));
        let go = |p: &PodInfo| {
            let mut t = Timings::default();
            let o = schedule(&Profile::default(), p, &cache, 3, &mut Scratch::sequential(), &mut t);
            (o, t.candidates)
        };
        let (o, c) = go(&on(json!(["n7"])));
        assert!(matches!(o, Outcome::Scheduled { node, .. } if cache.nodes()[node].name == "n7"));
        assert_eq!(c, Candidates::StaticClass(1));
        let mut t = Timings::default();
        let _ = schedule(&Profile::default(), &on(json!(["n7"])), &cache, 3, &mut Scratch::sequential(), &mut t);
        assert_eq!(t.static_checked, 1, "the static filters looked at the named node only");
        let (o, c) = go(&on(json!(["n2", "gone", "n5"])));
        assert!(matches!(o, Outcome::Scheduled { node, .. } if ["n2", "n5"].contains(&cache.nodes()[node].name.as_str())));
        assert_eq!(c, Candidates::StaticClass(2));
        let (o, _) = go(&on(json!(["gone"])));
        let Outcome::Unschedulable { reasons, total } = o else { panic!("scheduled on no node") };
        assert_eq!(unschedulable_message(&reasons, total), "0/20 nodes are available: 20 node(s) didn't match Pod's node affinity/selector.");
    }

    #[test]
    fn namespace_selectors_pick_namespaces_by_their_labels() {
        // A pod labelled color=green in namespace "a" on node x.
        let green = |name: &str, ns: &str, aff: Value| pod(name, json!({"metadata": {"namespace": ns, "labels": {"color": "green"}}, "spec": {"affinity": aff}}));
        let anti = |sel: Value| json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"color": "green"}}, "topologyKey": "kubernetes.io/hostname", "namespaceSelector": sel}]}});
        let nodes = vec![with_pod(node("x", "4", "z1", json!({})), green("placed", "a", json!({}))), node("y", "4", "z1", json!({}))];
        let mut cache = Cache::from_nodes(nodes);
        let labelled = |team: &str| Some([("team".to_string(), team.to_string())].into_iter().collect());
        cache.set_namespace("a".into(), labelled("devops"));
        cache.set_namespace("b".into(), labelled("web"));
        let go = |p: &PodInfo, cache: &Cache| match schedule(&Profile::default(), p, cache, 0, &mut Scratch::sequential(), &mut Timings::default()) {
            Outcome::Scheduled { node, .. } => cache.nodes()[node].name.clone(),
            Outcome::Unschedulable { .. } => "none".into(),
        };
        // Selecting team=devops: the pod in "a" counts, so x is refused (every time).
        for _ in 0..3 {
            assert_eq!(go(&green("new", "b", anti(json!({"matchLabels": {"team": "devops"}}))), &cache), "y");
        }
        // {} selects every namespace.
        assert_eq!(go(&green("new", "b", anti(json!({}))), &cache), "y");
        // With x alone: a selector that does not cover "a" lets the pod there.
        let mut only_x = Cache::from_nodes(vec![cache.node("x").unwrap().clone()]);
        only_x.set_namespace("a".into(), labelled("devops"));
        assert_eq!(go(&green("new", "b", anti(json!({"matchLabels": {"team": "web"}}))), &only_x), "x");
        assert_eq!(go(&green("new", "b", anti(json!({"matchLabels": {"team": "devops"}}))), &only_x), "none");
        // The namespace relabelled: the term follows.
        only_x.set_namespace("a".into(), labelled("web"));
        assert_eq!(go(&green("new", "b", anti(json!({"matchLabels": {"team": "devops"}}))), &only_x), "x");
    }

    #[test]
    fn terms_over_many_namespaces_see_every_one_of_them() {
        // Six namespaces, a green pod of each on its own node; two empty nodes.
        let green = |name: &str, ns: &str| pod(name, json!({"metadata": {"namespace": ns, "labels": {"color": "green"}}}));
        let mut nodes: Vec<NodeInfo> = (0..6).map(|i| with_pod(node(&format!("n{i}"), "4", "z1", json!({})), green(&format!("g{i}"), &format!("ns-{i}")))).collect();
        nodes.push(node("n6", "4", "z1", json!({})));
        nodes.push(node("n7", "4", "z1", json!({})));
        let cache = Cache::from_nodes(nodes);
        let term = json!({"labelSelector": {"matchLabels": {"color": "green"}}, "topologyKey": "kubernetes.io/hostname", "namespaceSelector": {}});
        let required = pod("r", json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}));
        let preferred = pod("s", json!({"spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]}}}}));
        for start in 0..8 {
            for p in [&required, &preferred] {
                let Outcome::Scheduled { node, .. } = schedule(&Profile::default(), p, &cache, start, &mut Scratch::sequential(), &mut Timings::default()) else { panic!("{} unschedulable", p.name) };
                assert!(["n6", "n7"].contains(&cache.nodes()[node].name.as_str()), "{} from {start}: {}", p.name, cache.nodes()[node].name);
            }
        }
    }

    #[test]
    fn placed_pods_terms_score_the_pods_they_select() {
        // b is a little emptier: without the placed pod's terms it wins.
        let holder = |aff: Value| pod("holder", json!({"metadata": {"labels": {"app": "db"}}, "spec": {"affinity": aff, "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}]}}));
        let nodes = |aff: Value| vec![with_pod(node("a", "4", "z1", json!({})), holder(aff)), node("b", "4", "z2", json!({}))];
        let web = pod("web", json!({"metadata": {"labels": {"app": "web"}}}));
        let term = json!({"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"});
        assert_eq!(run(&web, &nodes(json!({}))).unwrap(), "b", "no terms: the emptier node");
        assert_eq!(run(&web, &nodes(json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]}}))).unwrap(), "a", "preferred affinity of the placed pod");
        assert_eq!(run(&web, &nodes(json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}))).unwrap(), "a", "required affinity of the placed pod, at weight 1");
        let toward_a = json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]}, "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]}});
        assert_eq!(run(&web, &nodes(toward_a)).unwrap(), "b", "preferred anti-affinity cancels the affinity");
        // A term selecting other pods does not count.
        let other = json!({"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"});
        assert_eq!(run(&web, &nodes(json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": other}]}}))).unwrap(), "b");
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
        let cache = Cache::from_nodes(nodes.clone());
        let got = preempt(&Profile::default(), &high, &cache, 0).unwrap();
        // One victim of priority 1 on b beats one of priority 10 on a; c is unschedulable.
        assert_eq!(nodes[got.node].name, "b");
        assert_eq!(got.victims.len(), 1);
        assert_eq!(got.victims[0].priority, 1);
        let low = at("low", "2", 0);
        assert!(preempt(&Profile::default(), &low, &cache, 0).is_none(), "nothing has lower priority");
        let mut never = high.clone();
        never.never_preempts = true;
        assert!(preempt(&Profile::default(), &never, &cache, 0).is_none());
    }

    fn many(n: usize) -> Vec<NodeInfo> {
        (0..n)
            .map(|i| {
                let extra = if i % 50 == 0 { json!({"metadata": {"labels": {"pool": "special"}}}) } else { json!({}) };
                let extra = if i % 7 == 3 { merge_into(extra, json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}})) } else { extra };
                node(&format!("n{i}"), if i % 3 == 0 { "2" } else { "4" }, &format!("z{}", i % 5), extra)
            })
            .collect()
    }

    fn merge_into(mut a: Value, b: Value) -> Value {
        merge(&mut a, b);
        a
    }

    /// The pods of a mixed stream: plain, with a node selector, with anti-affinity, spread.
    fn stream(i: usize) -> PodInfo {
        let base = json!({"metadata": {"labels": {"app": format!("a{}", i % 4)}}, "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "500m"}}}]}});
        let extra = match i % 4 {
            0 => json!({}),
            1 => json!({"spec": {"nodeSelector": {"pool": "special"}}}),
            2 => json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "a2"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
            _ => json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "a3"}}}]}}),
        };
        pod(&format!("p{i}"), merge_into(base, extra))
    }

    fn place_all(scratch: &mut Scratch, n: usize) -> (Vec<Option<String>>, Vec<Timings>) {
        let mut cache = Cache::from_nodes(many(600));
        let (mut out, mut ts) = (Vec::new(), Vec::new());
        for i in 0..n {
            let p = Arc::new(stream(i));
            let mut t = Timings::default();
            match schedule(&Profile::default(), &p, &cache, i * 13, scratch, &mut t) {
                Outcome::Scheduled { node, .. } => {
                    let name = cache.nodes()[node].name.clone();
                    assert!(cache.place(p, &name, true));
                    out.push(Some(name));
                }
                Outcome::Unschedulable { .. } => out.push(None),
            }
            ts.push(t);
        }
        cache.check_indexes().unwrap();
        (out, ts)
    }

    #[test]
    fn kept_verdicts_decide_exactly_as_filters_run_afresh() {
        // A random stream of attempts and changes (placements, removals, nominations, node
        // updates, namespace relabels) over one cache, decided by schedulers with and without
        // kept verdicts (one of them parallel): every decision must be the same.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let zone = |i: usize| ["a", "b", "c", "d", "e", "f", "g", "h"][i % 8];
        let mut cache = Cache::from_nodes((0..40).map(|i| node(&format!("n{i}"), ["2", "3", "4"][i % 3], zone(i), json!({}))).collect());
        let template = |k: u64, i: usize| -> PodInfo {
            let cpu = ["500m", "1", "250m"][k as usize % 3];
            let base = json!({"metadata": {"labels": {"app": format!("t{k}")}}, "spec": {"priority": (k % 3) as i32,
                "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]}});
            let extra = match k {
                0 => json!({}),
                1 => json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "t1"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
                2 => json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}],
                    "resources": {"requests": {"cpu": "250m"}}}]}}),
                // Anti-affinity over zones, its own and placed pods' (a node's verdict
                // depends on its zone's other nodes: never kept).
                3 => json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "t5"}}, "topologyKey": "zone"}]}}}}),
                5 => json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "t2"}}, "topologyKey": "zone"}]}}}}),
                6 => json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]}}),
                _ => json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "t0"}}, "topologyKey": "kubernetes.io/hostname",
                     "namespaceSelector": {"matchLabels": {"team": "x"}}}]}}}}),
            };
            let mut v = base;
            merge(&mut v, extra);
            pod(&format!("t{k}-{i}"), v)
        };
        let (mut fresh, mut kept) = (Scratch::sequential(), Scratch::sequential());
        fresh.memo = false;
        kept.memo_min_candidates = 0;
        let mut par = Scratch::new(worker_pool(2));
        par.parallel_min_nodes = 1;
        par.memo_min_candidates = 0;
        let (mut placed, mut hits): (Vec<String>, usize) = (Vec::new(), 0);
        for i in 0..3000 {
            match rnd(20) {
                0 if !placed.is_empty() => {
                    let uid = placed.swap_remove(rnd(placed.len() as u64) as usize);
                    cache.unplace(&uid);
                }
                1 => {
                    let nominee = Arc::new(template(rnd(7), 100_000 + i));
                    cache.nominate(&nominee, Some(&format!("n{}", rnd(40))));
                }
                2 => {
                    let n = rnd(40) as usize;
                    cache.upsert_node(node(&format!("n{n}"), ["1", "2", "3", "4"][rnd(4) as usize], zone(n), json!({})));
                }
                3 => cache.set_namespace("ns".into(), Some([("team".to_string(), ["x", "y"][rnd(2) as usize].to_string())].into())),
                // The claim moves between volumes of two zones.
                4 => {
                    let on = json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": [zone(rnd(8) as usize)]}]}]);
                    let terms: Vec<k8s_openapi::api::core::v1::NodeSelectorTerm> = serde_json::from_value(on).unwrap();
                    let pv = format!("pv-{}", rnd(2));
                    cache.set_volume(pv.clone(), Some(terms.iter().map(NodeTerm::from_k8s).collect()));
                    cache.set_claim("ns/data".into(), Some(pv));
                }
                _ => {
                    let p = template(rnd(7), i);
                    let start = rnd(40) as usize;
                    let mut t = Timings::default();
                    let a = schedule(&Profile::default(), &p, &cache, start, &mut fresh, &mut Timings::default());
                    let b = schedule(&Profile::default(), &p, &cache, start, &mut kept, &mut t);
                    let c = schedule(&Profile::default(), &p, &cache, start, &mut par, &mut Timings::default());
                    let key = |o: &Outcome| format!("{o:?}");
                    assert_eq!(key(&a), key(&b), "attempt {i} of {}", p.name);
                    assert_eq!(key(&a), key(&c), "attempt {i} of {} (parallel)", p.name);
                    hits += t.verdicts_kept;
                    if let Outcome::Scheduled { node, .. } = a {
                        let name = cache.nodes()[node].name.clone();
                        cache.place(Arc::new(p.clone()), &name, false);
                        placed.push(p.uid.clone());
                    }
                }
            }
        }
        assert!(!kept.memos.is_empty(), "some classes kept verdicts");
        assert!(hits > 10_000, "verdicts kept: {hits}");
    }

    #[test]
    fn the_worker_pool_decides_exactly_as_one_thread() {
        let (seq, _) = place_all(&mut Scratch::sequential(), 400);
        let mut par = Scratch::new(worker_pool(2));
        par.parallel_min_nodes = 1;
        let (got, ts) = place_all(&mut par, 400);
        assert!(ts.iter().all(|t| t.parallel));
        assert_eq!(seq, got);
        assert!(seq.iter().filter(|x| x.is_none()).count() > 0, "the stream includes pods that do not fit");
    }

    #[test]
    fn static_results_are_reused_per_class_and_narrow_the_candidates() {
        let (placed, ts) = place_all(&mut Scratch::sequential(), 40);
        // Pods with the node selector look only at the 10 untainted special nodes.
        for (i, t) in ts.iter().enumerate().filter(|(i, _)| i % 4 == 1) {
            assert_eq!(t.candidates, Candidates::StaticClass(10), "pod {i}");
            assert_eq!(t.static_reused, i > 1, "pod {i}");
            let n: usize = placed[i].as_ref().unwrap()[1..].parse().unwrap();
            assert!(n % 50 == 0 && n % 7 != 3, "pod {i} on n{n}");
        }
        // Tainted nodes exist, so the other classes' candidates are the untainted nodes.
        assert!(matches!(ts[4].candidates, Candidates::StaticClass(n) if n < 600 && n > 500));
        let mut c = Cache::from_nodes(many(600));
        let before = c.generation();
        c.upsert_node(node("n1", "4", "z1", json!({"spec": {"unschedulable": true}})));
        assert!(c.generation() > before, "cordoning is a static change");
    }

    #[test]
    fn a_nearly_full_cluster_is_searched_by_free_resources() {
        let mut nodes: Vec<NodeInfo> = (0..400).map(|i| node(&format!("n{i}"), "1", "z", json!({}))).collect();
        for (i, n) in nodes.iter_mut().enumerate() {
            if i % 40 != 0 {
                n.add_pod(Arc::new(pod(&format!("f{i}"), cpu("1"))));
            }
        }
        let mut cache = Cache::from_nodes(nodes);
        let mut s = Scratch::sequential();
        let mut seen = Vec::new();
        for i in 0..20 {
            let p = Arc::new(pod(&format!("p{i}"), cpu("100m")));
            let mut t = Timings::default();
            let Outcome::Scheduled { node, evaluated, .. } = schedule(&Profile::default(), &p, &cache, i, &mut s, &mut t) else { panic!("pod {i} fits") };
            seen.push((t.candidates, evaluated));
            let name = cache.nodes()[node].name.clone();
            cache.place(p, &name, true);
        }
        assert_eq!(seen[0], (Candidates::All, 400), "the first scan visits every node");
        assert!(seen[1..].iter().all(|(c, e)| *c == Candidates::FreeIndex(10) && *e == 10), "{seen:?}");
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
