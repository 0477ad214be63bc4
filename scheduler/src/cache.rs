//! The scheduler's cache: nodes in a vector (a cycle walks memory in order) with the pods
//! placed on them, and the indexes a scheduling cycle reads instead of walking every placed
//! pod or every node:
//!
//! - **pod groups**: placed pods grouped by (namespace, labels), so the pods of one template
//!   are one group, each with its pod count per topology domain (every label key and value
//!   of the nodes they are on). Inter-pod affinity and topology spreading match a selector
//!   against groups (narrowed by a label index), never against pods.
//! - **anti-affinity terms** of placed pods (the symmetric half of InterPodAffinity): each
//!   distinct term once, with how many pods carry it per topology value, indexed by the
//!   labels its selector requires so that an incoming pod finds the terms it could match by
//!   its own labels.
//! - **topology**: how many nodes carry each label value (the domains of spreading).
//! - **free resources**: cpu, memory and pod slots left per node in ordered sets, so that
//!   "nodes with at least this much free" is a range.
//! - a **generation** bumped whenever something the static filters read changes (a node
//!   added or removed, its labels, taints or unschedulable flag), which tells the framework
//!   when its per-class filter results are stale.
//!
//! Every index is updated with the placement that changes it (`place`, `unplace`,
//! `upsert_node`, `remove_node`); nothing is rebuilt per cycle.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::types::{AffinityTerm, Labels, NodeInfo, Op, PodInfo, Selector};

/// The hasher of the maps a cycle reads per node (topology values are looked up for every
/// node visited): foldhash, several times SipHash's speed on short strings.
pub type Fast = foldhash::fast::RandomState;
/// Counts per topology value.
pub type Values = HashMap<String, u32, Fast>;
/// Counts per topology key, then value.
pub type Domains = HashMap<String, Values, Fast>;

/// Placed pods of one namespace with one label set.
#[derive(Debug, Default)]
pub struct Group {
    pub namespace: String,
    pub labels: Labels,
    pub pods: u32,
    pub domains: Domains,
}

/// A pod-affinity term carried by placed pods: a required anti-affinity term (the `anti`
/// index), or one that scores incoming pods it selects (the `scoring` index: preferred
/// affinity with its weight, preferred anti-affinity with its weight negated, required
/// affinity with kube-scheduler's hardPodAffinityWeight).
#[derive(Debug)]
pub struct AntiTerm {
    pub term: AffinityTerm,
    /// What each carrier adds to a node of its domain (0 in the `anti` index).
    pub weight: i32,
    pub pods: u32,
    /// Pods carrying the term per value of its topology key.
    pub domains: Values,
}

/// What a placed pod's required affinity term adds to the score of an incoming pod it selects
/// (kube-scheduler's `hardPodAffinityWeight` default).
pub const HARD_POD_AFFINITY_WEIGHT: i32 = 1;

/// Ids of entries by the labels their selectors require (`key -> value -> ids`).
type LabelIndex = HashMap<String, HashMap<String, Vec<usize>>>;

fn index_add(ix: &mut LabelIndex, k: &str, v: &str, id: usize) {
    let vals = match ix.get_mut(k) {
        Some(m) => m,
        None => ix.entry(k.to_string()).or_default(),
    };
    match vals.get_mut(v) {
        Some(ids) => ids.push(id),
        None => {
            vals.insert(v.to_string(), vec![id]);
        }
    }
}

fn index_remove(ix: &mut LabelIndex, k: &str, v: &str, id: usize) {
    if let Some(vals) = ix.get_mut(k) {
        if let Some(ids) = vals.get_mut(v) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                vals.remove(v);
            }
        }
        if vals.is_empty() {
            ix.remove(k);
        }
    }
}

fn count(values: &mut Values, v: &str, delta: i32) {
    match values.get_mut(v) {
        Some(c) => {
            *c = c.saturating_add_signed(delta);
            if *c == 0 {
                values.remove(v);
            }
        }
        None if delta > 0 => {
            values.insert(v.to_string(), delta as u32);
        }
        None => {}
    }
}

/// The first requirement of a selector that names exact values (`matchLabels`, `In`): the
/// index narrows candidates by it; other selectors look at everything.
fn narrowing(sel: &Selector) -> Option<(&str, &[String])> {
    sel.0.iter().find_map(|r| match &r.op {
        Op::In(vals) => Some((r.key.as_str(), vals.as_slice())),
        _ => None,
    })
}

#[derive(Default)]
struct Groups {
    list: Vec<Group>,
    free: Vec<usize>,
    by_key: HashMap<(String, Labels), usize>,
    by_label: LabelIndex,
}

impl Groups {
    fn acquire(&mut self, p: &PodInfo) -> usize {
        if let Some(&g) = self.by_key.get(&(p.namespace.clone(), p.labels.clone())) {
            return g;
        }
        let g = Group { namespace: p.namespace.clone(), labels: p.labels.clone(), pods: 0, domains: Domains::default() };
        let id = match self.free.pop() {
            Some(id) => {
                self.list[id] = g;
                id
            }
            None => {
                self.list.push(g);
                self.list.len() - 1
            }
        };
        for (k, v) in &p.labels {
            index_add(&mut self.by_label, k, v, id);
        }
        self.by_key.insert((p.namespace.clone(), p.labels.clone()), id);
        id
    }

    fn release_if_empty(&mut self, id: usize) {
        let g = &mut self.list[id];
        if g.pods > 0 {
            return;
        }
        let g = std::mem::take(g);
        for (k, v) in &g.labels {
            index_remove(&mut self.by_label, k, v, id);
        }
        self.by_key.remove(&(g.namespace, g.labels));
        self.free.push(id);
    }

    fn bump(&mut self, id: usize, node: &Labels, delta: i32) {
        let g = &mut self.list[id];
        g.pods = g.pods.saturating_add_signed(delta);
        for (k, v) in node {
            let values = match g.domains.get_mut(k) {
                Some(m) => m,
                None => g.domains.entry(k.clone()).or_default(),
            };
            count(values, v, delta);
        }
        g.domains.retain(|_, m| !m.is_empty());
    }
}

#[derive(Default)]
struct AntiTerms {
    list: Vec<Option<AntiTerm>>,
    free: Vec<usize>,
    by_term: HashMap<(AffinityTerm, i32), usize>,
    by_label: LabelIndex,
    /// Terms whose selectors name no exact value: checked against every incoming pod.
    general: Vec<usize>,
}

impl AntiTerms {
    fn bump(&mut self, t: &AffinityTerm, weight: i32, node: &Labels, delta: i32) {
        let key = (t.clone(), weight);
        let id = match self.by_term.get(&key) {
            Some(&id) => id,
            None if delta < 0 => return,
            None => {
                let id = self.free.pop().unwrap_or_else(|| {
                    self.list.push(None);
                    self.list.len() - 1
                });
                self.list[id] = Some(AntiTerm { term: t.clone(), weight, pods: 0, domains: Values::default() });
                match narrowing(&t.selector) {
                    Some((k, vals)) => vals.iter().for_each(|v| index_add(&mut self.by_label, k, v, id)),
                    None => self.general.push(id),
                }
                self.by_term.insert(key, id);
                id
            }
        };
        let Some(e) = self.list[id].as_mut() else { return };
        e.pods = e.pods.saturating_add_signed(delta);
        if let Some(v) = node.get(&t.topology_key) {
            count(&mut e.domains, v, delta);
        }
        if e.pods == 0 {
            let e = self.list[id].take().expect("present");
            match narrowing(&e.term.selector) {
                Some((k, vals)) => vals.iter().for_each(|v| index_remove(&mut self.by_label, k, v, id)),
                None => self.general.retain(|x| *x != id),
            }
            self.by_term.remove(&(e.term, e.weight));
            self.free.push(id);
        }
    }
}

/// Free cpu (millicores), memory (bytes) and pod slots per node, ordered.
#[derive(Default)]
struct FreeIndex {
    cpu: BTreeSet<(i64, u32)>,
    memory: BTreeSet<(i64, u32)>,
    pods: BTreeSet<(i64, u32)>,
}

impl FreeIndex {
    fn free(n: &NodeInfo) -> [i64; 3] {
        [n.allocatable.cpu - n.requested.cpu, n.allocatable.memory - n.requested.memory, n.allocatable.pods - n.requested.pods]
    }

    fn insert(&mut self, i: usize, n: &NodeInfo) {
        let [c, m, p] = Self::free(n);
        self.cpu.insert((c, i as u32));
        self.memory.insert((m, i as u32));
        self.pods.insert((p, i as u32));
    }

    fn remove(&mut self, i: usize, n: &NodeInfo) {
        let [c, m, p] = Self::free(n);
        self.cpu.remove(&(c, i as u32));
        self.memory.remove(&(m, i as u32));
        self.pods.remove(&(p, i as u32));
    }
}

#[derive(Debug)]
struct Placed {
    node: String,
    assumed: bool,
    group: usize,
    pod: Arc<PodInfo>,
}

fn prefers_no_schedule(n: &NodeInfo) -> bool {
    n.taints.iter().any(|t| t.effect == "PreferNoSchedule")
}

#[derive(Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    placed: HashMap<String, Placed>,
    groups: Groups,
    anti: AntiTerms,
    /// Placed pods' terms that score the pods they select (InterPodAffinity's symmetry).
    scoring: AntiTerms,
    topology: Domains,
    free: FreeIndex,
    generation: u64,
    /// Nodes with a PreferNoSchedule taint (none: TaintToleration scores every node alike).
    prefer_no_schedule: usize,
    volumes: VolumeIndex,
    /// PodDisruptionBudgets by `namespace/name` (preemption's victim choice).
    budgets: HashMap<String, crate::preemption::Budget>,
    /// Namespaces' labels (pod-affinity terms' namespaceSelector).
    namespaces: HashMap<String, Labels>,
    /// Pending pods nominated to a node: uid -> node.
    nominations: HashMap<String, String>,
    /// Per node (by position): the stamp of the last change to it or to what it holds (pods,
    /// nominations, allocatable, labels). Stamps are never reused, so a (position, stamp)
    /// pair names one state of one node.
    versions: Vec<u64>,
    stamp: u64,
    /// Bumped when what filters read beside nodes and pods changes: namespaces' labels,
    /// claims and volumes.
    meta: u64,
}

/// What VolumeBinding knows of PersistentVolumeClaims and PersistentVolumes.
#[derive(Default, Debug)]
pub struct VolumeIndex {
    /// `namespace/name` -> the volume it is bound to (empty while unbound).
    claims: HashMap<String, String>,
    /// Volume -> the node terms of its required node affinity (empty: any node).
    volumes: HashMap<String, Vec<crate::types::NodeTerm>>,
}

impl VolumeIndex {
    /// A claim's constraint: None when it does not exist; else the terms its volume puts on
    /// nodes (none while it is unbound, or bound to a volume not seen yet: the provisioner
    /// then makes one on the pod's node).
    pub fn claim(&self, ns: &str, name: &str) -> Option<Option<&[crate::types::NodeTerm]>> {
        let vol = self.claims.get(&format!("{ns}/{name}"))?;
        Some(self.volumes.get(vol).map(|t| t.as_slice()).filter(|t| !t.is_empty()))
    }

    /// A claim seen (its bound volume, empty while unbound) or gone (None); see
    /// [`Cache::set_claim`].
    fn set_claim(&mut self, key: String, volume: Option<String>) {
        match volume {
            Some(v) => {
                self.claims.insert(key, v);
            }
            None => {
                self.claims.remove(&key);
            }
        }
    }

    /// A volume seen (its node terms) or gone (None); see [`Cache::set_volume`].
    fn set_volume(&mut self, name: String, terms: Option<Vec<crate::types::NodeTerm>>) {
        match terms {
            Some(t) => {
                self.volumes.insert(name, t);
            }
            None => {
                self.volumes.remove(&name);
            }
        }
    }
}

impl Cache {
    /// Namespace `name`'s labels, if known.
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name)
    }

    /// A claim seen (its bound volume, empty while unbound) or gone (None).
    pub fn set_claim(&mut self, key: String, volume: Option<String>) {
        self.meta += 1;
        self.volumes.set_claim(key, volume);
    }

    /// A volume seen (its node terms) or gone (None).
    pub fn set_volume(&mut self, name: String, terms: Option<Vec<crate::types::NodeTerm>>) {
        self.meta += 1;
        self.volumes.set_volume(name, terms);
    }

    /// Bumped by every change to namespaces, claims or volumes.
    pub fn meta(&self) -> u64 {
        self.meta
    }

    /// Each node's last-change stamp, by position (see the field).
    pub fn versions(&self) -> &[u64] {
        &self.versions
    }

    fn touch(&mut self, i: usize) {
        self.stamp += 1;
        self.versions[i] = self.stamp;
    }

    /// A namespace as it now is (its labels); None: deleted.
    pub fn set_namespace(&mut self, name: String, labels: Option<Labels>) {
        self.meta += 1;
        match labels {
            Some(l) => {
                self.namespaces.insert(name, l);
            }
            None => {
                self.namespaces.remove(&name);
            }
        }
    }

    pub fn budgets(&self) -> impl Iterator<Item = &crate::preemption::Budget> {
        self.budgets.values()
    }

    /// A PodDisruptionBudget (`namespace/name`) as it now is; None: deleted.
    pub fn set_budget(&mut self, key: String, b: Option<crate::preemption::Budget>) {
        match b {
            Some(b) => {
                self.budgets.insert(key, b);
            }
            None => {
                self.budgets.remove(&key);
            }
        }
    }

    pub fn volumes(&self) -> &VolumeIndex {
        &self.volumes
    }

    /// A cache holding `nodes` and the pods already on them (tests and benchmarks).
    pub fn from_nodes(nodes: Vec<NodeInfo>) -> Cache {
        let mut c = Cache::default();
        for mut n in nodes {
            let pods = std::mem::take(&mut n.pods);
            n.requested = Default::default();
            n.used_ports.clear();
            let name = n.name.clone();
            c.upsert_node(n);
            for p in pods {
                c.place(p, &name, false);
            }
        }
        c
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The position of node `name` in [`Cache::nodes`].
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Bumped whenever a node is added or removed or its labels, taints or unschedulable
    /// flag change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn index_pod(&mut self, node: usize, p: &PodInfo, group: usize, delta: i32) {
        if p.terminal {
            return;
        }
        let labels = &self.nodes[node].labels;
        self.groups.bump(group, labels, delta);
        for t in &p.anti_affinity {
            self.anti.bump(t, 0, labels, delta);
        }
        for (w, t) in &p.preferred_affinity {
            self.scoring.bump(t, *w, labels, delta);
        }
        for (w, t) in &p.preferred_anti_affinity {
            self.scoring.bump(t, -*w, labels, delta);
        }
        for t in &p.affinity {
            self.scoring.bump(t, HARD_POD_AFFINITY_WEIGHT, labels, delta);
        }
    }

    fn topology_bump(&mut self, labels: &Labels, delta: i32) {
        for (k, v) in labels {
            let values = match self.topology.get_mut(k) {
                Some(m) => m,
                None => self.topology.entry(k.clone()).or_default(),
            };
            count(values, v, delta);
        }
        self.topology.retain(|_, m| !m.is_empty());
    }

    pub fn upsert_node(&mut self, mut n: NodeInfo) {
        match self.index.get(&n.name).copied() {
            Some(i) => {
                let old = &self.nodes[i];
                let relabel = old.labels != n.labels;
                if relabel || old.taints != n.taints || old.unschedulable != n.unschedulable {
                    self.generation += 1;
                }
                if relabel {
                    let pods = old.pods.clone();
                    for p in &pods {
                        let g = self.placed.get(&p.uid).map(|x| x.group);
                        if let Some(g) = g {
                            self.index_pod(i, p, g, -1);
                        }
                    }
                    let old_labels = self.nodes[i].labels.clone();
                    self.topology_bump(&old_labels, -1);
                    self.topology_bump(&n.labels, 1);
                    self.nodes[i].labels = n.labels.clone();
                    for p in &pods {
                        let g = self.placed.get(&p.uid).map(|x| x.group);
                        if let Some(g) = g {
                            self.index_pod(i, p, g, 1);
                        }
                    }
                }
                self.touch(i);
                self.free.remove(i, &self.nodes[i]);
                self.prefer_no_schedule = self.prefer_no_schedule + usize::from(prefers_no_schedule(&n)) - usize::from(prefers_no_schedule(&self.nodes[i]));
                let old = &mut self.nodes[i];
                n.pods = std::mem::take(&mut old.pods);
                n.requested = old.requested.clone();
                n.used_ports = std::mem::take(&mut old.used_ports);
                n.nominated = std::mem::take(&mut old.nominated);
                *old = n;
                self.free.insert(i, &self.nodes[i]);
            }
            None => {
                self.generation += 1;
                let i = self.nodes.len();
                self.index.insert(n.name.clone(), i);
                self.topology_bump(&n.labels, 1);
                self.free.insert(i, &n);
                self.prefer_no_schedule += usize::from(prefers_no_schedule(&n));
                self.nodes.push(n);
                self.stamp += 1;
                self.versions.push(self.stamp);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else { return };
        let pods: Vec<_> = self.nodes[i].pods.iter().map(|p| p.uid.clone()).collect();
        for uid in pods {
            self.unplace(&uid);
        }
        self.generation += 1;
        self.index.remove(name);
        self.free.remove(i, &self.nodes[i]);
        self.prefer_no_schedule -= usize::from(prefers_no_schedule(&self.nodes[i]));
        let labels = self.nodes[i].labels.clone();
        self.topology_bump(&labels, -1);
        let last = self.nodes.len() - 1;
        if i != last {
            self.free.remove(last, &self.nodes[last]);
        }
        self.nodes.swap_remove(i);
        self.versions.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
            self.free.insert(i, &self.nodes[i]);
        }
    }

    /// Places a pod on a node (assumed = by this scheduler, ahead of the API). False when the
    /// node is unknown.
    /// Placing a pod again on its node with other labels, anti-affinity or deletion state
    /// replaces what the cache and its indexes know of it.
    pub fn place(&mut self, p: Arc<PodInfo>, node: &str, assumed: bool) -> bool {
        if let Some(x) = self.placed.get_mut(&p.uid)
            && x.node == node
            && x.pod.labels == p.labels
            && x.pod.anti_affinity == p.anti_affinity
            && x.pod.deleting == p.deleting
        {
            x.assumed = x.assumed && assumed;
            return true;
        }
        self.unplace(&p.uid);
        self.forget_nomination(&p.uid);
        let Some(&i) = self.index.get(node) else { return false };
        let group = self.groups.acquire(&p);
        self.placed.insert(p.uid.clone(), Placed { node: node.to_string(), assumed, group, pod: p.clone() });
        self.index_pod(i, &p, group, 1);
        self.touch(i);
        self.free.remove(i, &self.nodes[i]);
        self.nodes[i].add_pod(p);
        self.free.insert(i, &self.nodes[i]);
        true
    }

    /// Records that a pending pod is nominated to `node` (None, or an empty name: it is not
    /// any more, being bound, deleted or no longer nominated). The resources it requests are
    /// held there for it against pods of no higher priority.
    pub fn nominate(&mut self, p: &Arc<PodInfo>, node: Option<&str>) {
        if let Some(old) = self.nominations.remove(&p.uid)
            && let Some(&i) = self.index.get(&old)
        {
            self.nodes[i].nominated.retain(|x| x.uid != p.uid);
            self.touch(i);
        }
        if let Some(node) = node.filter(|n| !n.is_empty())
            && let Some(&i) = self.index.get(node)
        {
            self.nodes[i].nominated.push(p.clone());
            self.touch(i);
            self.nominations.insert(p.uid.clone(), node.to_string());
        }
    }

    /// Nominates a preemptor to `node` and, as kube-scheduler does, takes the node back from
    /// the pods of lower priority nominated to it (they may no longer fit there once the
    /// preemptor is placed): returns them, for their `nominatedNodeName` to be cleared.
    pub fn nominate_preemptor(&mut self, p: &Arc<PodInfo>, node: &str) -> Vec<Arc<PodInfo>> {
        let lower: Vec<Arc<PodInfo>> = self.node(node).map(|n| n.nominated.iter().filter(|x| x.priority < p.priority && x.uid != p.uid).cloned().collect()).unwrap_or_default();
        for x in &lower {
            self.forget_nomination(&x.uid);
        }
        self.nominate(p, Some(node));
        lower
    }

    /// The node a pending pod is nominated to, if any.
    pub fn nomination(&self, uid: &str) -> Option<&str> {
        if self.nominations.is_empty() {
            return None;
        }
        self.nominations.get(uid).map(String::as_str)
    }

    /// Whether any pending pod is nominated to a node.
    pub fn any_nomination(&self) -> bool {
        !self.nominations.is_empty()
    }

    /// Forgets a pod's nomination (by uid).
    pub fn forget_nomination(&mut self, uid: &str) {
        if let Some(old) = self.nominations.remove(uid)
            && let Some(&i) = self.index.get(&old)
        {
            self.nodes[i].nominated.retain(|x| x.uid != uid);
            self.touch(i);
        }
    }

    pub fn unplace(&mut self, uid: &str) {
        let Some(x) = self.placed.remove(uid) else { return };
        if let Some(&i) = self.index.get(&x.node) {
            self.touch(i);
            self.free.remove(i, &self.nodes[i]);
            if let Some(p) = self.nodes[i].remove_pod(uid) {
                self.index_pod(i, &p, x.group, -1);
            }
            self.free.insert(i, &self.nodes[i]);
        }
        self.groups.release_if_empty(x.group);
    }

    /// Calls `f` with every group of placed pods in one of `namespaces` whose labels match
    /// `sel`.
    pub fn for_each_group<'a>(&'a self, namespaces: &[String], sel: &Selector, f: impl FnMut(&'a Group)) {
        self.groups_where(|ns| namespaces.iter().any(|n| n == ns), sel, f)
    }

    /// Calls `f` with every group of placed pods that term `t` selects (its namespaces, by
    /// name or by their labels, and its label selector).
    pub fn for_each_term_group<'a>(&'a self, t: &AffinityTerm, f: impl FnMut(&'a Group)) {
        self.groups_where(|ns| t.covers(ns, self.namespaces.get(ns)), &t.selector, f)
    }

    fn groups_where<'a>(&'a self, ns_ok: impl Fn(&str) -> bool, sel: &Selector, mut f: impl FnMut(&'a Group)) {
        let mut visit = |g: &'a Group| {
            if g.pods > 0 && ns_ok(&g.namespace) && sel.matches(&g.labels) {
                f(g);
            }
        };
        match narrowing(sel) {
            Some((k, vals)) => {
                let Some(by_value) = self.groups.by_label.get(k) else { return };
                for v in vals {
                    for &id in by_value.get(v).into_iter().flatten() {
                        visit(&self.groups.list[id]);
                    }
                }
            }
            None => self.groups.list.iter().for_each(visit),
        }
    }

    /// Calls `f` with every anti-affinity term of placed pods that `p` matches.
    pub fn for_each_anti_term<'a>(&'a self, p: &PodInfo, f: impl FnMut(&'a AntiTerm)) {
        Self::matching(&self.anti, p, self.namespaces.get(&p.namespace), f)
    }

    /// Calls `f` with every placed pods' scoring term (preferred affinity and anti-affinity,
    /// required affinity) that selects `p`.
    pub fn for_each_scoring_term<'a>(&'a self, p: &PodInfo, f: impl FnMut(&'a AntiTerm)) {
        Self::matching(&self.scoring, p, self.namespaces.get(&p.namespace), f)
    }

    fn matching<'a>(terms: &'a AntiTerms, p: &PodInfo, ns_labels: Option<&Labels>, mut f: impl FnMut(&'a AntiTerm)) {
        let mut visit = |id: usize| {
            if let Some(t) = &terms.list[id]
                && t.term.matches_pod(p, ns_labels)
            {
                f(t);
            }
        };
        for (k, v) in &p.labels {
            if let Some(ids) = terms.by_label.get(k).and_then(|m| m.get(v)) {
                ids.iter().for_each(|&id| visit(id));
            }
        }
        terms.general.iter().for_each(|&id| visit(id));
    }

    /// How many nodes carry each value of a label key.
    pub fn topology(&self, key: &str) -> Option<&Values> {
        self.topology.get(key)
    }

    /// Nodes with at least the free cpu, memory and pod slots `p` asks for, searched in the
    /// most selective of the three orders, when that finds at most `limit` of them: a
    /// superset of the nodes where `p` fits (extended resources and ports are not indexed).
    pub fn nodes_with_room(&self, p: &PodInfo, limit: usize, out: &mut Vec<u32>) -> bool {
        let r = &p.requests;
        let sets = [(&self.free.cpu, r.cpu), (&self.free.memory, r.memory), (&self.free.pods, r.pods.max(1))];
        let mut best: Option<(usize, &BTreeSet<(i64, u32)>, i64)> = None;
        for (set, need) in sets {
            if need <= 0 {
                continue;
            }
            let n = set.range((need, 0)..).take(limit + 1).count();
            if n <= limit && best.is_none_or(|(b, _, _)| n < b) {
                best = Some((n, set, need));
            }
        }
        let Some((_, set, need)) = best else { return false };
        out.clear();
        out.extend(set.range((need, 0)..).map(|(_, i)| *i));
        true
    }

    /// Whether any node has a PreferNoSchedule taint.
    pub fn any_prefer_no_schedule(&self) -> bool {
        self.prefer_no_schedule > 0
    }

    /// A watched update of a placed pod that changes nothing the scheduler reads (same node,
    /// labels and deletion state: a kubelet's status update) confirms the placement without
    /// the pod being parsed again. False when the update needs the full path.
    pub fn confirm_unchanged(&mut self, uid: &str, node: &str, labels: Option<&Labels>, deleting: bool) -> bool {
        let Some(x) = self.placed.get_mut(uid) else { return false };
        let same_labels = labels.map_or(x.pod.labels.is_empty(), |l| *l == x.pod.labels);
        if x.node != node || x.pod.deleting != deleting || !same_labels {
            return false;
        }
        x.assumed = false;
        true
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.placed.get(uid).is_some_and(|x| x.assumed)
    }

    /// Checks every index against a rebuild from the nodes' pods (tests).
    #[doc(hidden)]
    pub fn check_indexes(&self) -> Result<(), String> {
        let fresh = Cache::from_nodes(self.nodes.clone());
        let groups = |c: &Cache| {
            let mut v: Vec<_> = c.groups.list.iter().filter(|g| g.pods > 0).map(|g| format!("{}/{:?}/{}/{:?}", g.namespace, g.labels, g.pods, sorted(&g.domains))).collect();
            v.sort();
            v
        };
        if groups(self) != groups(&fresh) {
            return Err(format!("groups differ:\n{:?}\n{:?}", groups(self), groups(&fresh)));
        }
        let terms = |ts: &AntiTerms| {
            let mut v: Vec<_> = ts.list.iter().flatten().map(|t| format!("{:?}/{}/{}/{:?}", t.term, t.weight, t.pods, t.domains.iter().collect::<std::collections::BTreeMap<_, _>>())).collect();
            v.sort();
            v
        };
        if terms(&self.anti) != terms(&fresh.anti) {
            return Err(format!("anti-affinity terms differ:\n{:?}\n{:?}", terms(&self.anti), terms(&fresh.anti)));
        }
        if terms(&self.scoring) != terms(&fresh.scoring) {
            return Err(format!("scoring terms differ:\n{:?}\n{:?}", terms(&self.scoring), terms(&fresh.scoring)));
        }
        if sorted(&self.topology) != sorted(&fresh.topology) {
            return Err("topology differs".into());
        }
        let free = |c: &Cache| (c.free.cpu.iter().map(|(f, i)| (*f, c.nodes[*i as usize].name.clone())).collect::<BTreeSet<_>>(), c.free.pods.len(), c.free.memory.len());
        if free(self) != free(&fresh) {
            return Err("free-resource index differs".into());
        }
        Ok(())
    }
}

fn sorted(d: &Domains) -> std::collections::BTreeMap<&String, std::collections::BTreeMap<&String, &u32>> {
    d.iter().map(|(k, m)| (k, m.iter().collect())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, zone: &str) -> NodeInfo {
        NodeInfo::from_json(&json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": zone}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"}}}))
        .unwrap()
    }

    fn pod(uid: &str, app: &str, anti: bool) -> Arc<PodInfo> {
        let mut v = json!({"metadata": {"name": uid, "namespace": "d", "uid": uid, "labels": {"app": app}}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}});
        if anti {
            v["spec"]["affinity"] = json!({
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "zone"}],
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "a0"}}, "topologyKey": "kubernetes.io/hostname"}}]},
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 3, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "zone"}}]},
            });
        }
        Arc::new(PodInfo::from_json(&v).unwrap())
    }

    #[test]
    fn a_node_update_keeps_its_pods_and_their_counts() {
        let mut c = Cache::default();
        let n = |taint: bool| {
            let mut v = json!({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"}}});
            if taint {
                v["spec"] = json!({"taints": [{"key": "k", "effect": "NoSchedule"}]});
            }
            NodeInfo::from_json(&v).unwrap()
        };
        c.upsert_node(n(false));
        let g0 = c.generation();
        assert!(c.place(pod("u", "a", true), "n", true));
        c.upsert_node(n(true));
        assert!(c.generation() > g0, "a taint change is a static change");
        let node = c.node("n").unwrap();
        assert_eq!((node.pods.len(), node.requested.cpu, node.taints.len()), (1, 1000, 1));
        assert!(c.is_assumed("u"));
        assert!(!c.confirm_unchanged("u", "n", Some(&Labels::from([("app".to_string(), "b".to_string())])), false), "labels changed");
        assert!(!c.confirm_unchanged("u", "other", Some(&Labels::from([("app".to_string(), "a".to_string())])), false), "another node");
        assert!(!c.confirm_unchanged("u", "n", Some(&Labels::from([("app".to_string(), "a".to_string())])), true), "being deleted");
        assert!(!c.confirm_unchanged("u", "n", None, false), "labels removed");
        assert!(c.confirm_unchanged("u", "n", Some(&Labels::from([("app".to_string(), "a".to_string())])), false));
        assert!(!c.is_assumed("u"), "the watch confirmed the assumption");
        c.unplace("u");
        let node = c.node("n").unwrap();
        assert_eq!((node.pods.len(), node.requested.cpu), (0, 0));
        c.check_indexes().unwrap();
        assert!(!c.any_prefer_no_schedule());
        let mut v = json!({"metadata": {"name": "m"}, "spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}, "status": {"allocatable": {"cpu": "1", "pods": "1"}}});
        c.upsert_node(NodeInfo::from_json(&v).unwrap());
        assert!(c.any_prefer_no_schedule());
        v["spec"] = json!({});
        c.upsert_node(NodeInfo::from_json(&v).unwrap());
        assert!(!c.any_prefer_no_schedule());
        c.upsert_node(NodeInfo::from_json(&json!({"metadata": {"name": "m2"}, "spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}})).unwrap());
        c.remove_node("m2");
        assert!(!c.any_prefer_no_schedule());
    }

    /// Model-based: random placements, removals, relabels and node removals, with every
    /// index checked against a rebuild after each step.
    #[test]
    fn indexes_match_a_rebuild_after_any_sequence() {
        let mut c = Cache::default();
        let mut seed = 7u64;
        let mut rnd = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for i in 0..6 {
            c.upsert_node(node(&format!("n{i}"), &format!("z{}", i % 2)));
        }
        for step in 0..600 {
            match rnd(10) {
                0..=4 => {
                    let uid = format!("p{}", rnd(40));
                    let app = format!("a{}", rnd(3));
                    c.place(pod(&uid, &app, rnd(2) == 0), &format!("n{}", rnd(7)), rnd(2) == 0);
                }
                5..=7 => c.unplace(&format!("p{}", rnd(40))),
                8 => {
                    let name = format!("n{}", rnd(6));
                    c.upsert_node(node(&name, &format!("z{}", rnd(3))));
                }
                _ => {
                    let name = format!("n{}", rnd(6));
                    c.remove_node(&name);
                    if rnd(2) == 0 {
                        c.upsert_node(node(&name, "z0"));
                    }
                }
            }
            if let Err(e) = c.check_indexes() {
                panic!("after step {step}: {e}");
            }
        }
    }

    #[test]
    fn a_placed_pod_relabelled_or_being_deleted_is_replaced_on_its_node() {
        let mut c = Cache::default();
        c.upsert_node(node("a", "z1"));
        c.place(pod("1", "web", true), "a", false);
        let mut changed = (*pod("1", "db", false)).clone();
        changed.deleting = true;
        assert!(c.place(Arc::new(changed), "a", false));
        let n = c.node("a").unwrap();
        assert_eq!(n.pods.len(), 1);
        assert!(n.pods[0].deleting, "preemption waits on victims it sees deleting");
        assert_eq!(n.pods[0].labels["app"], "db");
        c.check_indexes().unwrap();
        c.for_each_anti_term(&pod("x", "web", false), |_| panic!("the anti-affinity term left with the update"));
    }

    #[test]
    fn groups_and_terms_are_found_by_label() {
        let mut c = Cache::default();
        c.upsert_node(node("a", "z1"));
        c.upsert_node(node("b", "z2"));
        c.place(pod("1", "web", true), "a", false);
        c.place(pod("2", "web", true), "b", false);
        c.place(pod("3", "db", false), "b", false);
        let sel = Selector(vec![crate::types::Requirement { key: "app".into(), op: Op::In(vec!["web".into()]) }]);
        let mut zones = Vec::new();
        c.for_each_group(&["d".to_string()], &sel, |g| zones.extend(g.domains["zone"].keys().cloned()));
        zones.sort();
        assert_eq!(zones, ["z1", "z2"]);
        let mut found = 0;
        c.for_each_anti_term(&pod("x", "web", false), |t| found += t.pods);
        assert_eq!(found, 2);
        c.for_each_anti_term(&pod("y", "db", false), |_| panic!("no term matches app=db"));
        let mut room = Vec::new();
        assert!(c.nodes_with_room(&pod("z", "x", false), 10, &mut room));
        assert_eq!(room.len(), 2, "both nodes have a free cpu");
        c.unplace("1");
        c.unplace("2");
        c.unplace("3");
        assert_eq!(c.groups.by_key.len(), 0, "empty groups are released");
        assert!(c.anti.by_term.is_empty());
    }
}
