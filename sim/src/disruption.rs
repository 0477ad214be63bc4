//! A PodDisruptionBudget over one ReplicaSet's pods (`rs/guarded`, `pdbs/guarded`), the
//! disruption controller that keeps its status (capstan's `controllers::run::disruption_status`,
//! run by the controller manager holding the Lease), and three drains evicting its pods at once
//! with the API server's eviction rule (`api::disruption::grant_eviction`: spend one of the
//! budget's disruptions by a compare-and-swap on the budget, then delete the pod), as two
//! `kubectl drain`s would (the pods informer lagging the budget's by up to 200 ms).
//!
//! Checked (`pdb-violated`, in `check.rs`): an eviction never leaves fewer healthy pods, not
//! counting those already granted eviction, than the budget's `minAvailable`. Nothing else
//! disrupts these pods here (the driver leaves them alone and nodes do not fail), so every
//! fall below the budget is an eviction's. Every clock involved reads the simulation's true
//! time: the two-minute timeout of a granted eviction compares a time the API server wrote
//! with the controller's clock, and skew between them is a separate hazard.

use std::sync::Arc;
use std::time::Duration;

use client::obj::Obj;
use serde_json::{Value, json};

use crate::Bug;
use crate::kube::{PODS, RS, absent, delete, object, ok, put, unchanged};
use crate::workload::{list_from, write, write_from};
use crate::world::World;

pub const NAME: &str = "guarded";
pub const PDB_KEY: &str = "pdbs/guarded";
/// The guarded pods' keys begin so (the ReplicaSet controller names them after `rs/guarded`).
pub const POD_PREFIX: &str = "pods/guarded-";

/// Simulated time on the wall (true time, no skew), as RFC 3339 and as Unix seconds.
fn wall(world: &World) -> (String, i64) {
    let t = crate::lease::epoch() + jiff::SignedDuration::from_micros(world.now_us() as i64);
    (t.to_string(), t.as_second())
}

/// The ReplicaSet and its budget: `replicas` pods, at most two of them disrupted at a time
/// (`minAvailable: replicas - 2`: two evictions may be granted at once, as two drains ask).
/// Made with the store healthy, before faults.
pub async fn create(world: &World) -> bool {
    let replicas = world.range(4, 7) as i64;
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": NAME, "namespace": "default", "uid": format!("uid-{NAME}"), "generation": 1},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": NAME}},
            "template": {"metadata": {"labels": {"app": NAME}}, "spec": {"containers": [{"name": "c", "image": "pause"}]}}},
    });
    let pdb = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": NAME, "namespace": "default", "generation": 1},
        "spec": {"minAvailable": replicas - 2, "selector": {"matchLabels": {"app": NAME}}},
        "status": {"observedGeneration": 0, "disruptionsAllowed": 0},
    });
    let rs_key = format!("{RS}{NAME}");
    ok(&write(world, put(&rs_key, &rs, absent(&rs_key))).await) && ok(&write(world, put(PDB_KEY, &pdb, absent(PDB_KEY))).await)
}

/// One pass of the disruption controller, run by the controller manager of replica `home`:
/// the budget's status from its pods, written only over the budget it was computed from
/// (unless the planted bug writes it over whatever is there).
pub async fn sync(world: &World, home: u64) {
    let Some(pdbs) = list_from(world, Some(home), PDB_KEY).await else { return };
    // The pods are another informer's view, which lags the budget's by its own delay.
    tokio::time::sleep(Duration::from_millis(world.range(0, 200))).await;
    let (Some(pods), Some(rss)) = (list_from(world, Some(home), POD_PREFIX).await, list_from(world, Some(home), &format!("{RS}{NAME}")).await) else { return };
    let Some((key, rev, mut pdb)) = pdbs.iter().find_map(object) else { return };
    let pods: Vec<Arc<Obj>> = pods.iter().filter_map(object).map(|(_, _, p)| Arc::new(Obj::from(p))).filter(|p| controllers::podutil::is_active(p)).collect();
    let scale = rss.iter().find_map(object).and_then(|(_, _, rs)| rs["spec"]["replicas"].as_i64());
    let (now, now_s) = wall(world);
    let (mut status, _) = controllers::run::disruption_status(&Obj::from(&pdb), &pods, scale, now_s, &now);
    // What a merge patch does with the `null`s: the entries go.
    if let Some(m) = status["disruptedPods"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    let cur = &pdb["status"];
    if ["observedGeneration", "currentHealthy", "desiredHealthy", "disruptionsAllowed", "disruptedPods"].iter().all(|f| cur[*f] == status[*f]) {
        return;
    }
    pdb["status"] = status;
    let compare = if world.bug(Bug::PdbStatusWithoutCas) { vec![] } else { unchanged(&key, rev) };
    if ok(&write_from(world, Some(home), put(&key, &pdb, compare)).await) {
        world.log("kube", format!("cm-{home}: budget {NAME} allows {}", pdb["status"]["disruptionsAllowed"]));
    }
}

/// A drain: now and then evicts one of the guarded pods that runs, as the eviction
/// subresource does (the budget first, by compare-and-swap; the pod only if that succeeded),
/// until `until` (past the faults: pods start slowly while they run).
pub async fn drain(world: Arc<World>, me: usize, until: tokio::time::Instant) {
    while tokio::time::Instant::now() < until && !world.failed() {
        tokio::time::sleep(Duration::from_millis(world.range(100, 800))).await;
        let (Some(pdbs), Some(pods)) = (list_from(&world, None, PDB_KEY).await, list_from(&world, None, POD_PREFIX).await) else { continue };
        let Some((pkey, prev, pdb)) = pdbs.iter().find_map(object) else { continue };
        let running: Vec<(String, u64, Value)> =
            pods.iter().filter_map(object).filter(|(_, _, p)| {
                let p = Obj::from(p);
                controllers::podutil::is_active(&p) && controllers::podutil::is_ready(&p)
            }).collect();
        let Some((key, rev, _)) = world.pick(&running) else { continue };
        let pod = key[PODS.len()..].to_string();
        let (now, _) = wall(&world);
        let Ok(next) = api::disruption::grant_eviction(&pdb, &pod, &now) else { continue };
        // Two drains may have read the same budget.
        tokio::time::sleep(Duration::from_millis(world.range(0, 20))).await;
        if !ok(&write(&world, put(&pkey, &next, unchanged(&pkey, prev))).await) {
            continue;
        }
        if ok(&write(&world, delete(&key, unchanged(&key, rev))).await) {
            world.log("kube", format!("drain-{me}: evicted {pod}"));
        }
    }
}
