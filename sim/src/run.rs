//! One seed, start to verdict: build the cluster, run the workload under the nemesis, stop the
//! faults, wait for convergence, check what can only be checked at the end.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use openraft_rt::WatchReceiver;

use crate::check::Violation;
use crate::cluster;
use crate::nemesis;
use crate::rt::{SimRt, spawn};
use crate::state_machine::change_of;
use crate::workload::{self, Written};
use crate::world::World;
use crate::Bug;

#[derive(Clone, Debug)]
pub struct Params {
    /// Replicas per cluster (none: the seed picks 3 or 5).
    pub replicas: Option<u64>,
    /// Simulated seconds of workload under faults.
    pub fault_secs: f64,
    /// Simulated seconds the cluster has to converge once faults stop.
    pub settle_secs: f64,
    pub clients: usize,
    /// Hollow nodes (none: the seed picks 10 to 50).
    pub nodes: Option<u64>,
    pub bug: Option<Bug>,
}

impl Default for Params {
    fn default() -> Self {
        Params { replicas: None, fault_secs: 20.0, settle_secs: 30.0, clients: 4, nodes: None, bug: None }
    }
}

pub struct SeedReport {
    pub seed: u64,
    pub replicas: u64,
    pub violation: Option<Violation>,
    /// The trace's digest: one seed on one build always gives the same.
    pub digest: u64,
    pub simulated: Duration,
    pub ops: usize,
    pub acked: usize,
    pub terms: usize,
    pub world: Arc<World>,
}

/// Runs one seed to its verdict.
pub fn run_seed(seed: u64, params: &Params) -> SeedReport {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("a current-thread runtime");
    let params = params.clone();
    let world = rt.block_on(async move { World::new(seed, params) });
    let budget = Duration::from_secs_f64(world.params.fault_secs + world.params.settle_secs + crate::kube::CONVERGE.as_secs_f64() + 40.0);
    let w = world.clone();
    let simulated_us = rt.block_on(SimRt::scope(seed, async move {
        if tokio::time::timeout(budget, drive(w.clone())).await.is_err() {
            w.violate("liveness", format!("the seed did not finish within its simulated-time budget of {budget:?}"));
        }
        w.now_us()
    }));
    let simulated = Duration::from_micros(simulated_us);
    drop(rt);
    // The replicas' handles hold the world (a cycle): let them go.
    let replicas = std::mem::take(&mut *world.replicas.lock().unwrap());
    let n = replicas.len() as u64;
    drop(replicas);
    let ops = world.checks.history.lock().unwrap().len();
    let acked = world.checks.acked.lock().unwrap().len();
    SeedReport {
        seed,
        replicas: n,
        violation: world.checks.violation(),
        digest: world.trace.digest(),
        simulated,
        ops,
        acked,
        terms: world.checks.terms(),
        world,
    }
}

async fn wait_leader(world: &World, within: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        for (id, raft, _) in world.up() {
            if raft.metrics().borrow_watched().state == ServerState::Leader {
                return Some(id);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn drive(world: Arc<World>) {
    let n = world.params.replicas.unwrap_or(if world.chance(0.5) { 3 } else { 5 });
    world.log("run", format!("seed {}: {n} replicas, {} s of faults, bug {:?}", world.seed, world.params.fault_secs, world.params.bug));
    cluster::create(&world, n);
    for id in 1..=n {
        let skew = nemesis::random_skew(&world);
        world.skew_us.lock().unwrap().insert(id, skew);
    }
    for id in 1..=n {
        cluster::start(&world, id).await;
    }
    cluster::initialize(&world).await;
    if wait_leader(&world, Duration::from_secs(10)).await.is_none() {
        world.violate("liveness", "no leader within 10 s of a fresh start without faults".into());
        return;
    }
    if !crate::kube::create_replicasets(&world).await || !crate::kube::create_jobs(&world).await || !crate::kube::create_deployments(&world).await || !crate::disruption::create(&world).await || !crate::quota::create(&world).await {
        world.violate("liveness", "the workloads could not be created without faults".into());
        return;
    }
    let nodes = world.params.nodes.unwrap_or_else(|| world.range(10, 51));
    world.log("run", format!("{nodes} hollow nodes"));
    for i in 0..nodes {
        spawn(crate::kube::kubelet(world.clone(), format!("node-{i}")));
    }
    let now = tokio::time::Instant::now();
    let faults_end = now + Duration::from_secs_f64(world.params.fault_secs);
    let mut tasks = Vec::new();
    for c in 0..world.params.clients {
        tasks.push(spawn(workload::kv_client(world.clone(), c, faults_end)));
    }
    for s in 0..2 {
        tasks.push(spawn(crate::kube::scheduler(world.clone(), s)));
    }
    tasks.push(spawn(crate::kube::driver(world.clone(), faults_end)));
    for c in 0..2 {
        tasks.push(spawn(crate::quota::creator(world.clone(), c, faults_end + Duration::from_secs(10))));
    }
    tasks.push(spawn(crate::quota::deleter(world.clone(), faults_end + Duration::from_secs(10))));
    for d in 0..3 {
        tasks.push(spawn(crate::disruption::drain(world.clone(), d, faults_end + Duration::from_secs(10))));
    }
    for id in 1..=n {
        spawn(crate::lease::candidate(world.clone(), id));
        spawn(crate::store_lease::expirer(world.clone(), id));
    }
    for h in 0..2 {
        tasks.push(spawn(crate::store_lease::holder(world.clone(), h, faults_end)));
    }
    let watchers: Vec<_> = (0..2).map(|w| spawn(workload::watcher(world.clone(), w))).collect();
    nemesis::run(world.clone(), faults_end).await;
    if world.failed() {
        return;
    }
    nemesis::heal(&world).await;
    let settle = Duration::from_secs_f64(world.params.settle_secs);
    if !converge(&world, settle).await {
        return;
    }
    if let Err(why) = crate::kube::converged(&world).await {
        if !world.failed() {
            world.violate("workloads-not-converged", format!("{:?} after the store converged: {why}", crate::kube::CONVERGE));
        }
        return;
    }
    // Every watcher catches up with the last revision.
    let last = world.checks.last_revision();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let behind: Vec<(usize, u64)> = world.checks.watch_next.lock().unwrap().iter().filter(|(_, n)| **n <= last).map(|(w, n)| (*w, *n)).collect();
        if behind.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline || world.failed() {
            world.violate("watch-stalled", format!("5 s after the cluster converged at revision {last}, watchers still wait for (watcher, revision) {behind:?}"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The lease holders stopped at the end of the faults: every lease goes.
    if let Err(why) = crate::store_lease::drained(&world, Duration::from_secs(20)).await {
        if !world.failed() {
            world.violate("store-lease-never-expired", why);
        }
        return;
    }
    // Everything stops writing; what was in flight lands; then the replicas are compared at
    // one point (seed 2746 compared them while a write was still being applied).
    world.done.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in watchers {
        let _ = w.await;
    }
    for t in tasks {
        let _ = t.await;
    }
    if world.failed() || !converge(&world, settle).await {
        return;
    }
    final_checks(&world);
}

/// Once faults stop: a leader, a write through it, every replica applied as far as it.
async fn converge(world: &Arc<World>, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut probed = false;
    while tokio::time::Instant::now() < deadline && !world.failed() {
        if !probed {
            let cmd = storage::Command::Txn(storage::TxnRequest::default());
            probed = matches!(workload::write(world, cmd).await, Written::Applied(_));
            continue;
        }
        let up = world.up();
        let applied: Vec<_> = up.iter().map(|(_, raft, _)| raft.metrics().borrow_watched().last_applied).collect();
        let leaders: Vec<_> = up.iter().map(|(_, raft, _)| raft.metrics().borrow_watched().current_leader).collect();
        if up.len() == world.ids().len() && leaders.iter().all(|l| l.is_some() && *l == leaders[0]) && applied.iter().all(|a| a.is_some() && *a == applied[0]) {
            world.log("run", format!("converged: leader n{}, applied {:?}", leaders[0].unwrap(), applied[0].map(|a| a.index)));
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if world.failed() {
        return false;
    }
    let state: Vec<String> = world
        .up()
        .iter()
        .map(|(id, raft, _)| {
            let m = raft.metrics().borrow_watched().clone();
            format!("n{id}: {:?} term {} leader {:?} applied {:?}", m.state, m.current_term, m.current_leader, m.last_applied.map(|l| l.index))
        })
        .collect();
    world.violate("liveness", format!("not converged {within:?} after faults stopped (probe write {}): {}", if probed { "done" } else { "never succeeded" }, state.join("; ")));
    false
}

fn final_checks(world: &World) {
    let mut up = world.up();
    // The replica furthest ahead first: every other one's history is a prefix of its history.
    up.sort_by_key(|(id, _, sm)| (std::cmp::Reverse(sm.state.lock().unwrap().revision), *id));
    let histories: Vec<(u64, Vec<(u64, crate::state_machine::Change)>)> = up
        .iter()
        .map(|(id, _, sm)| (*id, sm.state.lock().unwrap().events_since(1).iter().map(|e| (e.kv.mod_revision, change_of(e))).collect()))
        .collect();
    let (id0, h0) = &histories[0];
    for (id, h) in &histories[1..] {
        if h.len() > h0.len() || h[..] != h0[..h.len()] {
            let at = h.iter().zip(h0).position(|(a, b)| a != b).unwrap_or(h.len().min(h0.len()));
            world.violate("replicas-diverge", format!("n{id0} and n{id} hold different histories from event {at} ({} and {} events)", h0.len(), h.len()));
            return;
        }
    }
    // Every acknowledged write is there, at the revision it was answered with.
    let (_, _, sm) = &up[0];
    let st = sm.state.lock().unwrap();
    for a in world.checks.acked.lock().unwrap().iter() {
        let found = st.mvcc.get_at(&a.key, a.revision);
        let ok = match (&a.value, &found) {
            (Some(v), Some(kv)) => kv.value == *v && kv.mod_revision == a.revision,
            (None, None) => true,
            _ => false,
        };
        if !ok {
            world.violate(
                "acked-write-lost",
                format!(
                    "{} was acknowledged as {} at revision {}; the store has {} there",
                    String::from_utf8_lossy(&a.key),
                    a.value.as_ref().map_or("deleted".into(), |v| String::from_utf8_lossy(v).to_string()),
                    a.revision,
                    found.map_or("nothing".into(), |kv| format!("{} (written at {})", String::from_utf8_lossy(&kv.value), kv.mod_revision))
                ),
            );
            return;
        }
    }
    drop(st);
    let history = resolve_unknown(world, world.checks.history.lock().unwrap().clone());
    if let Err(v) = raft::lincheck::check(&history) {
        world.violate("linearizability", v.to_string());
    }
}

/// Settles what the clients could not know. A write whose answer was lost either took effect
/// or did not; once the cluster has converged, every write that will ever take effect has been
/// applied, and every value is unique: a put or compare-and-swap whose value was applied took
/// effect before now, one whose value never was never did (and is left out). A delete is
/// recognized by the marker key its transaction also wrote. Without this, a few dozen unknown
/// writes on one key make the checker's search explode.
fn resolve_unknown(world: &World, history: Vec<raft::lincheck::Op>) -> Vec<raft::lincheck::Op> {
    use raft::lincheck::{Input, Output};
    use std::collections::BTreeSet;
    let markers = world.checks.delete_markers.lock().unwrap().clone();
    let written: BTreeSet<(Vec<u8>, Vec<u8>)> = world
        .checks
        .truth
        .lock()
        .unwrap()
        .values()
        .flat_map(|(_, c)| c.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.to_vec(), v.to_vec()))).collect::<Vec<_>>())
        .collect();
    let now = world.now_us() * 1000;
    history
        .into_iter()
        .filter_map(|mut op| {
            if op.output != Output::Unknown {
                return Some(op);
            }
            let applied = match &op.input {
                Input::Put(v) | Input::Cas { new: v, .. } => written.contains(&(op.key.as_bytes().to_vec(), v.as_bytes().to_vec())),
                Input::Delete => match markers.get(&(op.client, op.call)) {
                    Some(m) => written.contains(&(m.to_vec(), op.key.as_bytes().to_vec())),
                    None => return Some(op),
                },
                Input::Get => return Some(op),
            };
            if !applied {
                return None;
            }
            op.output = if matches!(op.input, Input::Cas { .. }) { Output::Swapped(true) } else { Output::Ok };
            op.ret = Some(now);
            Some(op)
        })
        .collect()
}
