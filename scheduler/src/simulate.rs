//! The scheduling simulator: a workload's pods scheduled against a cluster state in memory,
//! with the real cycle (`framework::schedule`, `preemption::preempt`) and no API server, and
//! a report of what happened: every placement, the unschedulable pods with kube-scheduler's
//! message, per-plugin latency, and the cluster's utilisation and spread afterwards.
//!
//! Deterministic: the cluster's nodes keep the order they were given in, pods are tried in
//! the order given, a preemptor again after one other attempt (the live scheduler goes on
//! while the victims' deletions travel; meanwhile its nomination holds the node), and the
//! cycle's choices depend only on that (no clock, no randomness, no threads: the cycle runs
//! sequentially). A live scheduler that
//! listed the same nodes in the same order and tried the same pods one at a time places
//! them alike.
//! Bad input is the caller's to refuse; this module takes parsed nodes and pods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::cache::Cache;
use crate::framework::{self, Outcome, Profile, Scratch, Timings};
use crate::preemption;
use crate::types::{NodeInfo, PodInfo};

/// What a simulation starts from: nodes (in order), the pods already bound to them, and the
/// pods to schedule (in order).
pub struct Input {
    pub nodes: Vec<NodeInfo>,
    pub bound: Vec<(Arc<PodInfo>, String)>,
    pub pods: Vec<PodInfo>,
}

/// One pod's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// `namespace/name`.
    pub pod: String,
    /// The node, or None when it fits nowhere.
    pub node: Option<String>,
    /// kube-scheduler's message when unschedulable.
    pub message: String,
    /// Pods preempted to make room (`namespace/name`).
    pub victims: Vec<String>,
}

/// A simulation's result.
pub struct Report {
    pub profile: String,
    pub placements: Vec<Placement>,
    /// Attempt latency (ns), and per plugin and phase (`filter/NodeResourcesFit`,
    /// `score/...`, `pre_filter`, `preemption`).
    pub attempts: Histogram<u64>,
    pub plugins: BTreeMap<String, Histogram<u64>>,
    /// The cluster after: requested over allocatable, and pods per zone.
    pub nodes: Vec<NodeInfo>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds")
}

/// How many other attempts run between a preemption and its preemptor's next attempt: the
/// live scheduler goes on with the queue while the victims' deletions travel through the API
/// and come back as events.
pub const RETRY_AFTER: usize = 1;
/// Attempts per pod at most (each failed one may preempt).
pub const MAX_ATTEMPTS: u32 = 3;

/// Schedules `input.pods` in order against `input`'s cluster with `profile`. A pod that fits
/// only by preempting is nominated to the node chosen (holding it against pods of no higher
/// priority, as the live scheduler does), its victims are removed, and it is tried again
/// after `RETRY_AFTER` other attempts, when it goes to its nominated node if it fits there.
pub fn run(input: &Input, profile: &Profile) -> Report {
    let mut cache = Cache::from_nodes(input.nodes.iter().cloned().map(|mut n| {
        n.pods.clear();
        n.requested = Default::default();
        n.used_ports.clear();
        n
    }).collect());
    for (p, node) in &input.bound {
        cache.place(p.clone(), node, false);
    }
    let mut scratch = Scratch::sequential();
    let mut attempts = hist();
    let mut plugins: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut record = |name: String, ns: u128| {
        let _ = plugins.entry(name).or_insert_with(hist).record(ns.max(1) as u64);
    };
    let mut placements: Vec<Placement> = input.pods.iter().map(|p| Placement { pod: p.key(), node: None, message: String::new(), victims: Vec::new() }).collect();
    let pods: Vec<Arc<PodInfo>> = input.pods.iter().cloned().map(Arc::new).collect();
    let mut tries = vec![0u32; pods.len()];
    // Preemptors waiting for their victims to go: (the attempt from which they are due, pod).
    let mut waiting: std::collections::VecDeque<(usize, usize)> = Default::default();
    let (mut start, mut offset, mut done, mut next) = (0usize, 0usize, 0usize, 0usize);
    loop {
        let i = match waiting.front() {
            Some(&(due, i)) if due <= done || next == pods.len() => {
                waiting.pop_front();
                i
            }
            _ if next < pods.len() => {
                next += 1;
                next - 1
            }
            _ => break,
        };
        let p = &pods[i];
        tries[i] += 1;
        done += 1;
        let t0 = Instant::now();
        let n = cache.nodes().len().max(1);
        let mut t = Timings::default();
        // As the live scheduler: the search's starting node moves by one before each attempt.
        start = (start + 1) % n;
        let outcome = framework::schedule(profile, p, &cache, start, &mut scratch, &mut t);
        let mut preempting = false;
        if matches!(outcome, Outcome::Unschedulable { .. }) && p.priority > 0 && tries[i] < MAX_ATTEMPTS {
            let tp = Instant::now();
            let got = preemption::preempt(profile, p, &cache, offset);
            t.preemption = Some(tp.elapsed());
            if let Some(c) = got {
                offset = offset.wrapping_add(profile.preemption.candidates(cache.nodes().len()));
                let node = cache.nodes()[c.node].name.clone();
                // Pods of lower priority nominated there lose the node: they go anywhere.
                cache.nominate_preemptor(p, &node);
                for v in &c.victims {
                    cache.unplace(&v.uid);
                    placements[i].victims.push(v.key());
                }
                waiting.push_back((done + RETRY_AFTER, i));
                preempting = true;
            }
        }
        if let Some(d) = t.preemption {
            record("preemption".into(), d.as_nanos());
        }
        let _ = attempts.record(t0.elapsed().as_nanos().max(1) as u64);
        record("pre_filter".into(), t.pre_filter.as_nanos());
        for (pl, d) in &t.filter {
            record(format!("filter/{}", pl.name()), d.as_nanos());
        }
        for (pl, d) in &t.score {
            record(format!("score/{}", pl.name()), d.as_nanos());
        }
        if preempting {
            continue;
        }
        match outcome {
            Outcome::Scheduled { node, .. } => {
                let name = cache.nodes()[node].name.clone();
                cache.place(p.clone(), &name, false);
                cache.forget_nomination(&p.uid);
                placements[i].node = Some(name);
                placements[i].message.clear();
            }
            Outcome::Unschedulable { reasons, total } => {
                cache.forget_nomination(&p.uid);
                placements[i].message = framework::unschedulable_message(&reasons, total);
            }
        }
    }
    Report { profile: profile.scheduler_name.clone(), placements, attempts, plugins, nodes: cache.nodes().to_vec() }
}

/// The zone label kube-scheduler spreads over by default.
const ZONE: &str = "topology.kubernetes.io/zone";

fn quantiles(h: &Histogram<u64>) -> Value {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({"count": h.len(), "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "max_us": h.max() as f64 / 1000.0})
}

impl Report {
    pub fn scheduled(&self) -> usize {
        self.placements.iter().filter(|p| p.node.is_some()).count()
    }

    /// Requested over allocatable, cluster-wide and per node (min, median, max), for cpu,
    /// memory and pods; and the placed pods per zone.
    pub fn utilisation(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (name, get) in [("cpu", (|n: &NodeInfo| (n.requested.cpu, n.allocatable.cpu)) as fn(&NodeInfo) -> (i64, i64)), ("memory", |n| (n.requested.memory, n.allocatable.memory)), ("pods", |n| (n.requested.pods, n.allocatable.pods))] {
            let (req, alloc) = self.nodes.iter().map(get).fold((0i64, 0i64), |a, b| (a.0 + b.0, a.1 + b.1));
            let mut per: Vec<f64> = self.nodes.iter().map(get).filter(|(_, a)| *a > 0).map(|(r, a)| r as f64 / a as f64).collect();
            per.sort_by(f64::total_cmp);
            let at = |q: f64| per.get(((per.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
            out.insert(name.into(), json!({"cluster": if alloc > 0 { req as f64 / alloc as f64 } else { 0.0 }, "node_min": at(0.0), "node_median": at(0.5), "node_max": at(1.0)}));
        }
        let mut zones: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &self.nodes {
            *zones.entry(n.labels.get(ZONE).map_or("(none)", String::as_str)).or_default() += n.pods.len();
        }
        out.insert("pods_per_zone".into(), json!(zones));
        Value::Object(out)
    }

    pub fn to_json(&self) -> Value {
        let unschedulable: Vec<Value> = self.placements.iter().filter(|p| p.node.is_none()).map(|p| json!({"pod": p.pod, "message": p.message})).collect();
        json!({
            "profile": self.profile,
            "pods": self.placements.len(),
            "scheduled": self.scheduled(),
            "unschedulable": unschedulable,
            "preempted": self.placements.iter().map(|p| p.victims.len()).sum::<usize>(),
            "placements": self.placements.iter().map(|p| json!({"pod": p.pod, "node": p.node, "victims": p.victims})).collect::<Vec<_>>(),
            "attempt": quantiles(&self.attempts),
            "plugins": self.plugins.iter().map(|(k, h)| (k.clone(), quantiles(h))).collect::<serde_json::Map<_, _>>(),
            "utilisation": self.utilisation(),
        })
    }
}

/// Where two reports of the same input differ: pods placed on different nodes (or placed by
/// one and not the other).
pub fn differences(a: &Report, b: &Report) -> Vec<(String, Option<String>, Option<String>)> {
    a.placements.iter().zip(&b.placements).filter(|(x, y)| x.node != y.node).map(|(x, y)| (x.pod.clone(), x.node.clone(), y.node.clone())).collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A self-contained HTML page (no script, nothing fetched) of one report, or of two side by
/// side with the placements where they differ.
pub fn html(reports: &[&Report]) -> String {
    let mut s = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>capstan scheduler simulation</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#eee}td.l{text-align:left}</style></head><body><h1>Scheduler simulation</h1>");
    s.push_str("<table><tr><th>profile</th><th>pods</th><th>scheduled</th><th>unschedulable</th><th>victims</th><th>attempt p50 µs</th><th>p99 µs</th><th>cpu used</th><th>memory used</th></tr>");
    for r in reports {
        let j = r.to_json();
        s.push_str(&format!(
            "<tr><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}%</td><td>{:.1}%</td></tr>",
            esc(&r.profile), r.placements.len(), r.scheduled(), r.placements.len() - r.scheduled(), j["preempted"],
            j["attempt"]["p50_us"].as_f64().unwrap_or(0.0), j["attempt"]["p99_us"].as_f64().unwrap_or(0.0),
            j["utilisation"]["cpu"]["cluster"].as_f64().unwrap_or(0.0) * 100.0, j["utilisation"]["memory"]["cluster"].as_f64().unwrap_or(0.0) * 100.0
        ));
    }
    s.push_str("</table>");
    for r in reports {
        s.push_str(&format!("<h2>{}: time per plugin</h2><table><tr><th>phase/plugin</th><th>calls</th><th>p50 µs</th><th>p99 µs</th><th>max µs</th></tr>", esc(&r.profile)));
        for (k, h) in &r.plugins {
            s.push_str(&format!("<tr><td class=l>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>", esc(k), h.len(), h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0, h.max() as f64 / 1000.0));
        }
        s.push_str("</table>");
        let un: Vec<&Placement> = r.placements.iter().filter(|p| p.node.is_none()).collect();
        if !un.is_empty() {
            s.push_str(&format!("<h2>{}: unschedulable ({})</h2><table><tr><th>pod</th><th>why</th></tr>", esc(&r.profile), un.len()));
            for p in un.iter().take(1000) {
                s.push_str(&format!("<tr><td class=l>{}</td><td class=l>{}</td></tr>", esc(&p.pod), esc(&p.message)));
            }
            s.push_str("</table>");
        }
    }
    if let [a, b] = reports {
        let d = differences(a, b);
        s.push_str(&format!("<h2>Placements that differ: {} of {}</h2><table><tr><th>pod</th><th>{}</th><th>{}</th></tr>", d.len(), a.placements.len(), esc(&a.profile), esc(&b.profile)));
        for (pod, x, y) in d.iter().take(1000) {
            s.push_str(&format!("<tr><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td></tr>", esc(pod), esc(x.as_deref().unwrap_or("-")), esc(y.as_deref().unwrap_or("-"))));
        }
        s.push_str("</table>");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize, cpu: i64) -> NodeInfo {
        let mut n = NodeInfo { name: format!("n{i}"), ..Default::default() };
        n.labels.insert("kubernetes.io/hostname".into(), n.name.clone());
        n.labels.insert(ZONE.into(), format!("z{}", i % 3));
        n.allocatable = crate::types::Resources { cpu: cpu * 1000, memory: cpu << 30, ephemeral: 0, pods: 110, scalar: vec![] };
        n
    }

    fn pod(i: usize, cpu: i64, priority: i32) -> PodInfo {
        PodInfo {
            namespace: "sim".into(),
            name: format!("p{i}"),
            uid: format!("p{i}"),
            priority,
            requests: crate::types::Resources { cpu: cpu * 1000, memory: cpu << 30, ephemeral: 0, pods: 1, scalar: vec![] },
            ..Default::default()
        }
    }

    fn input() -> Input {
        let nodes: Vec<NodeInfo> = (0..12).map(|i| node(i, 4 + (i as i64 % 3))).collect();
        let bound = (0..6).map(|i| (Arc::new(pod(1000 + i, 2, 0)), format!("n{}", i * 2))).collect();
        let pods = (0..60).map(|i| pod(i, 1 + (i as i64 % 2), if i >= 50 { 10 } else { 0 })).collect();
        Input { nodes, bound, pods }
    }

    #[test]
    fn the_same_input_gives_the_same_placements() {
        let (a, b) = (run(&input(), &Profile::default()), run(&input(), &Profile::default()));
        assert_eq!(a.placements, b.placements);
        assert!(differences(&a, &b).is_empty());
        // Full, then preempting: some of the 60 fit only by evicting the priority-0 pods.
        assert!(a.scheduled() < 60 && a.placements.iter().any(|p| !p.victims.is_empty()), "{:?}", a.to_json()["unschedulable"]);
        let j = a.to_json();
        assert_eq!(j["pods"], 60);
        assert!(j["unschedulable"][0]["message"].as_str().unwrap().starts_with("0/12 nodes are available"), "{}", j["unschedulable"]);
        assert!(j["plugins"]["filter/NodeResourcesFit"]["count"].as_u64().unwrap() >= 60);
        // Nothing over its allocatable.
        assert!(a.nodes.iter().all(|n| n.requested.cpu <= n.allocatable.cpu));
    }

    #[test]
    fn a_preemptor_holds_its_node_while_its_victims_go_and_then_lands_there() {
        let nodes = vec![node(0, 2), node(1, 2)];
        let bound = vec![(Arc::new(pod(100, 2, 0)), "n0".to_string()), (Arc::new(pod(101, 2, 5)), "n1".to_string())];
        // p0 preempts p100 on n0 (p101 is of higher priority); p1, next, finds n0's room
        // held for p0; p0's retry lands on n0.
        let pods = vec![pod(0, 2, 10), pod(1, 1, 0), pod(2, 1, 0)];
        let r = run(&Input { nodes, bound, pods }, &Profile::default());
        let at = |name: &str| r.placements.iter().find(|p| p.pod == format!("sim/{name}")).unwrap();
        assert_eq!(at("p0").node.as_deref(), Some("n0"));
        assert_eq!(at("p0").victims, ["sim/p100"]);
        assert_eq!(at("p1").node, None, "n0 was held for the preemptor: {:?}", r.to_json()["placements"]);
        assert!(at("p1").message.starts_with("0/2 nodes are available"), "{}", at("p1").message);
        assert_eq!(at("p2").node, None);
        // Placements keep the input's order.
        assert_eq!(r.placements.iter().map(|p| p.pod.as_str()).collect::<Vec<_>>(), ["sim/p0", "sim/p1", "sim/p2"]);

        // A pod of higher priority arriving meanwhile is not held back: it takes n0, and the
        // preemptor, no longer fitting there, preempts again on n1.
        let nodes = vec![node(0, 2), node(1, 2)];
        let bound = vec![(Arc::new(pod(100, 2, 0)), "n0".to_string()), (Arc::new(pod(101, 2, 5)), "n1".to_string())];
        let r = run(&Input { nodes, bound, pods: vec![pod(0, 2, 10), pod(1, 1, 20)] }, &Profile::default());
        let at = |name: &str| r.placements.iter().find(|p| p.pod == format!("sim/{name}")).unwrap();
        assert_eq!(at("p1").node.as_deref(), Some("n0"), "{:?}", r.to_json()["placements"]);
        assert!(at("p1").victims.is_empty());
        assert_eq!(at("p0").node.as_deref(), Some("n1"));
        assert_eq!(at("p0").victims, ["sim/p100", "sim/p101"]);
    }

    #[test]
    fn two_profiles_are_compared_on_the_same_input() {
        let most = Profile { strategy: crate::framework::Strategy::MostAllocated, scheduler_name: "most-allocated".into(), ..Default::default() };
        let (a, b) = (run(&input(), &Profile::default()), run(&input(), &most));
        let d = differences(&a, &b);
        assert!(!d.is_empty(), "packing and spreading place differently");
        let page = html(&[&a, &b]);
        assert!(page.contains("Placements that differ") && page.contains("most-allocated") && !page.contains("<script"));
    }
}
