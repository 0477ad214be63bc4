//! The invariants, checked as the run goes (and once more at its end), each with a name and a
//! message that says what broke:
//!
//! - `replicas-diverge`: two replicas applied different changes under one revision (every
//!   replica must apply the same log in the same order);
//! - `leader-id-reused`: a replica led a term again after a restart without an election
//!   (openraft's leader ids are (term, node): several replicas may lead one term in turn,
//!   ordered by id, so "one leader per term" is "one process per leader id" here;
//!   sim/DESIGN.md);
//! - `pod-rebound`: a pod bound to a node was written bound to another, or unbound;
//! - `workloads-not-converged`: once faults stopped, a ReplicaSet did not get as many active,
//!   bound, Running pods as it asks for, or a Job did not finish, within `kube::CONVERGE`;
//! - `watch-gap`, `watch-order`, `watch-mismatch`: a watcher missed a revision, got one twice
//!   or out of order, or got changes other than what was applied;
//! - `acked-write-lost`: a write acknowledged to its client is not in the converged store;
//! - `linearizability`: the clients' recorded history has no linearization (`raft::lincheck`);
//! - `lease-two-holders`: two controller managers held the Lease at once (their clocks
//!   within `lease::SKEW_BOUND` of each other);
//! - `store-lease-expired-early`: a store lease was expired before the time its last
//!   acknowledged keep-alive promised (less the drift its leader's clock may have); `store-lease-never-expired`: once its holders stopped,
//!   a lease stayed (`store_lease.rs`);
//! - `pdb-violated`: an eviction (granted, or its pod gone) left fewer healthy pods, those
//!   already granted eviction not counted, than the PodDisruptionBudget's `minAvailable`
//!   (`disruption.rs`);
//! - `quota-exceeded`: a revision left more pods under the ResourceQuota than it allows
//!   (`quota.rs`);
//! - `watch-stalled`: once the cluster converged, a watcher did not catch up;
//! - `liveness`: once faults stopped, the cluster did not converge in the allotted time.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use raft::lincheck;
use storage::Revision;

use crate::state_machine::Change;
use crate::world::World;

#[derive(Clone, Debug)]
pub struct Violation {
    pub name: &'static str,
    pub message: String,
    pub at_us: u64,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] at {:.3} s simulated: {}", self.name, self.at_us as f64 / 1e6, self.message)
    }
}

/// An acknowledged write: the key, the revision it was answered with, the value it wrote (none:
/// a delete).
#[derive(Clone, Debug)]
pub struct Acked {
    pub key: Bytes,
    pub revision: Revision,
    pub value: Option<Bytes>,
}


#[derive(Default)]
pub struct Checks {
    violation: Mutex<Option<Violation>>,
    /// Each revision's changes, as the first replica to apply it applied them.
    pub truth: Mutex<BTreeMap<Revision, (u64, Vec<Change>)>>,
    /// Each leader id (term, node) and the process incarnation that held it.
    leaders: Mutex<BTreeMap<(u64, u64), u64>>,
    /// Which node each pod is bound to.
    bound: Mutex<BTreeMap<Bytes, Bytes>>,
    pub history: Mutex<Vec<lincheck::Op>>,
    /// Each delete's marker key, by (client, call time).
    pub delete_markers: Mutex<BTreeMap<(usize, u64), Bytes>>,
    /// The next revision each watcher waits for.
    pub watch_next: Mutex<BTreeMap<usize, Revision>>,
    /// Who holds the controller manager's Lease, in its own view, and since when (µs).
    holders: Mutex<BTreeMap<u64, u64>>,
    /// Leaderships of the Lease so far.
    pub lease_terms: std::sync::atomic::AtomicU64,
    pub acked: Mutex<Vec<Acked>>,
    /// Each store lease's last acknowledged keep-alive: (when, µs; until when it promised, µs;
    /// by which replica).
    store_leases: Mutex<BTreeMap<storage::LeaseId, (u64, u64, u64)>>,
    /// Leases their holders revoked.
    given_up: Mutex<std::collections::BTreeSet<storage::LeaseId>>,
    /// The disruption budget's pods and evictions, as applied (`disruption.rs`).
    budget: Mutex<Budget>,
    /// The quota's pods and its hard limit, as applied (`quota.rs`).
    quota: Mutex<Quota>,
}

/// What `quota-exceeded` follows: the quota's pods and its hard limit on pods.
#[derive(Default)]
struct Quota {
    pods: std::collections::BTreeSet<Bytes>,
    hard: Option<usize>,
}

impl Quota {
    /// Follows one revision's changes; says what broke if it leaves more pods than allowed.
    fn apply(&mut self, changes: &[Change], rev: Revision) -> Option<String> {
        let mut touched = false;
        for (k, v) in changes {
            if k.as_ref() == crate::quota::QUOTA_KEY.as_bytes() {
                let q: serde_json::Value = v.as_ref().and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
                self.hard = q["spec"]["hard"]["pods"].as_str().and_then(|h| h.parse().ok());
            } else if k.starts_with(crate::quota::POD_PREFIX.as_bytes()) {
                touched = true;
                match v {
                    Some(_) => self.pods.insert(k.clone()),
                    None => self.pods.remove(k),
                };
            }
        }
        let hard = self.hard?;
        (touched && self.pods.len() > hard).then(|| format!("revision {rev} leaves {} pods under a quota of {hard}", self.pods.len()))
    }
}

/// What `pdb-violated` follows, revision by revision: the guarded pods that are Ready and
/// active, the pods the budget records as granted eviction, and its `minAvailable`.
#[derive(Default)]
struct Budget {
    ready: std::collections::BTreeSet<String>,
    granted: std::collections::BTreeSet<String>,
    min_available: i64,
}

impl Budget {
    /// Healthy pods not already granted eviction: what the budget guarantees stays.
    fn kept(&self) -> i64 {
        self.ready.iter().filter(|p| !self.granted.contains(*p)).count() as i64
    }

    /// Follows one applied change; says what broke if an eviction (a grant, or an evicted
    /// pod going) leaves fewer than the budget allows.
    fn apply(&mut self, key: &[u8], value: Option<&Bytes>, rev: Revision) -> Option<String> {
        if key == crate::disruption::PDB_KEY.as_bytes() {
            let pdb: serde_json::Value = value.and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
            self.min_available = pdb["spec"]["minAvailable"].as_i64().unwrap_or(0);
            let now: std::collections::BTreeSet<String> =
                pdb["status"]["disruptedPods"].as_object().into_iter().flatten().filter(|(_, at)| !at.is_null()).map(|(p, _)| p.clone()).collect();
            let new: Vec<String> = now.difference(&self.granted).cloned().collect();
            self.granted = now;
            return new.first().and_then(|pod| {
                (self.kept() < self.min_available).then(|| format!("the eviction of {pod} was granted at revision {rev}, leaving {} healthy pods not being evicted ({:?} granted), and the budget needs {}", self.kept(), self.granted, self.min_available))
            });
        }
        let Some(pod) = key.strip_prefix(b"pods/").filter(|_| key.starts_with(crate::disruption::POD_PREFIX.as_bytes())) else { return None };
        let pod = String::from_utf8_lossy(pod).to_string();
        let p: Option<serde_json::Value> = value.and_then(|v| serde_json::from_slice(v).ok());
        let healthy = p.as_ref().is_some_and(|p| {
            let p = client::obj::Obj::from(p);
            controllers::podutil::is_active(&p) && controllers::podutil::is_ready(&p)
        });
        let was = self.ready.contains(&pod);
        if healthy {
            self.ready.insert(pod);
            return None;
        }
        self.ready.remove(&pod);
        (was && self.granted.contains(&pod) && self.kept() < self.min_available)
            .then(|| format!("evicted pod {pod} went at revision {rev}, leaving {} healthy pods not being evicted ({:?} granted), and the budget needs {}", self.kept(), self.granted, self.min_available))
    }
}

fn show(c: &[Change]) -> String {
    c.iter()
        .map(|(k, v)| match v {
            Some(v) => format!("put {}={}", String::from_utf8_lossy(k), String::from_utf8_lossy(v)),
            None => format!("delete {}", String::from_utf8_lossy(k)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Checks {
    pub fn violate(&self, v: Violation) {
        let mut slot = self.violation.lock().unwrap();
        if slot.is_none() {
            *slot = Some(v);
        }
    }

    pub fn failed(&self) -> bool {
        self.violation.lock().unwrap().is_some()
    }

    pub fn violation(&self) -> Option<Violation> {
        self.violation.lock().unwrap().clone()
    }

    /// Replica `node` applied `changes` under `rev`.
    pub fn applied(&self, world: &World, node: u64, rev: Revision, mut changes: Vec<Change>) {
        // One revision's changes in key order (as the index's history gives them to watchers).
        changes.sort();
        let mut truth = self.truth.lock().unwrap();
        if let Some((first, known)) = truth.get(&rev) {
            if *known != changes {
                let msg = format!("revision {rev}: n{first} applied [{}], n{node} applied [{}]", show(known), show(&changes));
                drop(truth);
                world.violate("replicas-diverge", msg);
            }
            return;
        }
        let over = self.quota.lock().unwrap().apply(&changes, rev);
        if let Some(msg) = over {
            world.violate("quota-exceeded", msg);
        }
        for (k, v) in &changes {
            let broken = self.budget.lock().unwrap().apply(k, v.as_ref(), rev);
            if let Some(msg) = broken {
                world.violate("pdb-violated", msg);
            }
            if !k.starts_with(crate::kube::PODS.as_bytes()) {
                continue;
            }
            let mut bound = self.bound.lock().unwrap();
            let Some(v) = v else {
                bound.remove(k);
                continue;
            };
            let node = serde_json::from_slice::<serde_json::Value>(v).ok().and_then(|p| p["spec"]["nodeName"].as_str().map(|n| Bytes::from(n.to_string())));
            match (bound.get(k), node) {
                (Some(was), now) if now.as_ref() != Some(was) => {
                    let msg = format!(
                        "{} was bound to {} and is written {} at revision {rev}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(was),
                        now.map_or("unbound".to_string(), |n| format!("bound to {}", String::from_utf8_lossy(&n)))
                    );
                    drop(bound);
                    world.violate("pod-rebound", msg);
                    break;
                }
                (None, Some(now)) => {
                    bound.insert(k.clone(), now);
                }
                _ => {}
            }
        }
        truth.insert(rev, (node, changes));
    }

    /// `node`, in its process incarnation `incarnation`, leads in `term`.
    pub fn leader(&self, world: &World, term: u64, node: u64, incarnation: u64) {
        let mut l = self.leaders.lock().unwrap();
        match l.get(&(term, node)) {
            Some(other) if *other != incarnation => {
                let msg = format!("n{node} led term {term} in its incarnation {other} and again, without an election, after restarting (incarnation {incarnation})");
                drop(l);
                world.violate("leader-id-reused", msg);
            }
            Some(_) => {}
            None => {
                l.insert((term, node), incarnation);
                drop(l);
                world.log("raft", format!("n{node} leads term {term}"));
            }
        }
    }

    pub fn terms(&self) -> usize {
        self.leaders.lock().unwrap().len()
    }

    /// The changes of revisions in `from..to`, as applied.
    pub fn truth_between(&self, from: Revision, to: Revision) -> Vec<(Revision, Vec<Change>)> {
        if from >= to {
            return Vec::new();
        }
        self.truth.lock().unwrap().range(from..to).map(|(r, (_, c))| (*r, c.clone())).collect()
    }

    /// Replica `me`'s controller manager now believes it holds the Lease.
    pub fn lease_acquired(&self, world: &World, me: u64) {
        let now = world.now_us();
        let mut h = self.holders.lock().unwrap();
        if let Some((other, since)) = h.iter().find(|(id, _)| **id != me).map(|(a, b)| (*a, *b)) {
            drop(h);
            world.violate(
                "lease-two-holders",
                format!("cm-{me} acquired the controller manager's Lease while cm-{other} held it (since {:.3} s); clocks differ by at most {:?}", since as f64 / 1e6, crate::lease::SKEW_BOUND),
            );
            return;
        }
        h.insert(me, now);
        self.lease_terms.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(h);
        world.log("lease", format!("cm-{me} holds the Lease"));
    }

    /// Whose controller manager holds the Lease now (the lowest, if the check has failed).
    pub fn lease_holder(&self) -> Option<u64> {
        self.holders.lock().unwrap().keys().next().copied()
    }

    pub fn lease_released(&self, world: &World, me: u64, why: &str) {
        self.holders.lock().unwrap().remove(&me);
        world.log("lease", format!("cm-{me} stopped leading: {why}"));
    }

    /// The newest revision applied anywhere.
    /// Replica `by` renewed `lease` at `at_us` for `ttl` seconds and said so to its holder.
    pub fn store_lease_kept(&self, lease: storage::LeaseId, at_us: u64, ttl: i64, by: u64) {
        // The leader counts the TTL on its monotonic clock, which may run up to the drift bound
        // fast: in true time the TTL may end that much sooner, and no sooner.
        let bound = crate::store_lease::DRIFT_BOUND_PPM as u64;
        let until = at_us + ttl.max(0) as u64 * 1_000_000 * 1_000_000 / (1_000_000 + bound);
        let mut m = self.store_leases.lock().unwrap();
        let e = m.entry(lease).or_insert((at_us, until, by));
        if until >= e.1 {
            *e = (at_us, until, by);
        }
    }

    /// `lease`'s holder revokes it: its revocation is no expiry.
    pub fn store_lease_given_up(&self, lease: storage::LeaseId) {
        self.given_up.lock().unwrap().insert(lease);
    }

    /// Replica `node` applied `lease`'s revocation now.
    pub fn store_lease_revoked(&self, world: &World, lease: storage::LeaseId, node: u64) {
        if self.given_up.lock().unwrap().contains(&lease) {
            return;
        }
        let now = world.now_us();
        let promised = self.store_leases.lock().unwrap().get(&lease).copied();
        if let Some((at, until, by)) = promised
            && now < until
        {
            world.violate(
                "store-lease-expired-early",
                format!("n{node} applied the expiry of lease {lease} at {:.3} s, though n{by} renewed it at {:.3} s until {:.3} s", now as f64 / 1e6, at as f64 / 1e6, until as f64 / 1e6),
            );
        }
    }

    pub fn last_revision(&self) -> Revision {
        self.truth.lock().unwrap().keys().next_back().copied().unwrap_or(0)
    }

    pub fn truth_at(&self, rev: Revision) -> Option<Vec<Change>> {
        self.truth.lock().unwrap().get(&rev).map(|(_, c)| c.clone())
    }

    pub fn show(c: &[Change]) -> String {
        show(c)
    }
}
