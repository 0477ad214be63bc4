//! Leader election as capstan's replicas run it: on every replica a controller manager
//! campaigns for the `kube-system/kube-controller-manager` Lease with capstan's own election
//! code (`controllers::leader::campaign_with`), reaching the store only through its own
//! replica (as `capstan server`'s components reach their replica's API server), judging
//! expiry by its own wall clock, which differs from true time by a skew within
//! `SKEW_BOUND` and jumps within it. A replica's process dying takes its controller manager
//! with it. The check: never two holders at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controllers::leader::{self, BoxFuture, LeaseApi, Timing, WallClock};
use serde_json::Value;
use storage::Compare;

use crate::{Bug, kube};
use crate::rt::spawn;
use crate::workload::{Written, read_from, write_from};
use crate::world::World;

/// The largest difference between two candidates' wall clocks.
pub const SKEW_BOUND: Duration = Duration::from_millis(1000);

const KEY: &str = "lease/kube-system/kube-controller-manager";

/// The Lease in the simulated store: JSON under one key, its resourceVersion the key's
/// modification revision, an update a compare-and-swap on it.
struct SimLease {
    world: Arc<World>,
    home: u64,
}

fn answer(w: Written) -> Result<bool, String> {
    match w {
        Written::Applied(storage::Applied::Txn(Ok(r))) => Ok(r.succeeded),
        Written::Applied(other) => Err(format!("{other:?}")),
        Written::Refused => Err("no leader reachable".into()),
        Written::Unknown(why) => Err(why),
    }
}

impl SimLease {
    fn put(&self, compare: Vec<Compare>, lease: Value) -> BoxFuture<'_, Result<bool, String>> {
        let cmd = kube::put(KEY, &lease, compare);
        Box::pin(async move { answer(write_from(&self.world, Some(self.home), cmd).await) })
    }
}

impl LeaseApi for SimLease {
    fn get(&self) -> BoxFuture<'_, Result<Option<Value>, String>> {
        Box::pin(async move {
            match read_from(&self.world, Some(self.home), &Bytes::from(KEY)).await {
                None => Err("no read index".into()),
                Some(None) => Ok(None),
                Some(Some(kv)) => {
                    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
                    v["metadata"]["resourceVersion"] = Value::String(kv.mod_revision.to_string());
                    Ok(Some(v))
                }
            }
        })
    }

    fn create(&self, lease: Value) -> BoxFuture<'_, Result<bool, String>> {
        self.put(kube::absent(KEY), lease)
    }

    fn update(&self, lease: Value) -> BoxFuture<'_, Result<bool, String>> {
        let Some(rv) = lease["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()) else {
            return Box::pin(async { Err("an update without a resourceVersion".to_string()) });
        };
        self.put(kube::unchanged(KEY, rv), lease)
    }
}

/// A candidate's wall clock: true (simulated) time plus its skew.
struct SkewedClock {
    world: Arc<World>,
    me: u64,
}

/// Simulated time 0 on the wall.
pub(crate) fn epoch() -> jiff::Timestamp {
    "2026-12-05T00:00:00Z".parse().expect("a timestamp")
}

impl WallClock for SkewedClock {
    fn now(&self) -> jiff::Timestamp {
        let skew = self.world.clock_skew_us(self.me);
        epoch() + jiff::SignedDuration::from_micros(self.world.now_us() as i64 + skew)
    }
}

/// The controller manager of replica `me`: campaigns while its replica runs, leads until it
/// loses the lease or its process dies, and campaigns again.
pub async fn candidate(world: Arc<World>, me: u64) {
    let timing = if world.bug(Bug::LeaseDeadlineTooLong) {
        // Planted: the deadline equal to the lease's duration (as capstan's election once had).
        Timing { renew_deadline: leader::DURATION, ..Timing::default() }
    } else {
        Timing::default()
    };
    let done = || world.done.load(std::sync::atomic::Ordering::SeqCst) || world.failed();
    while !done() {
        let Some(incarnation) = world.incarnation_if_up(me) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let api: Arc<dyn LeaseApi> = Arc::new(SimLease { world: world.clone(), home: me });
        let clock: Arc<dyn WallClock> = Arc::new(SkewedClock { world: world.clone(), me });
        let name = format!("cm-{me}");
        let campaign = leader::campaign_with(api, clock, "kube-system", "kube-controller-manager", &name, timing, |f| spawn(f));
        // The campaign ends with the process too.
        let mut leading = tokio::select! {
            biased;
            l = campaign => l,
            _ = process_ends(&world, me, incarnation) => continue,
        };
        world.checks.lease_acquired(&world, me);
        // What the holder runs: the controllers (Deployment, ReplicaSet, Job, disruption, quota).
        let workloads = async {
            loop {
                crate::kube::sync_deployments(&world, me).await;
                crate::kube::sync_replicasets(&world, me).await;
                crate::kube::sync_jobs(&world, me).await;
                tokio::time::sleep(Duration::from_millis(world.range(200, 800))).await;
            }
        };
        // The disruption and resource-quota controllers sync on every change of their
        // objects' pods: more often.
        let budgets = async {
            let mut pending = crate::quota::Pending::default();
            loop {
                crate::disruption::sync(&world, me).await;
                crate::quota::sync(&world, me, &mut pending).await;
                tokio::time::sleep(Duration::from_millis(world.range(50, 200))).await;
            }
        };
        let controllers = async {
            tokio::join!(workloads, budgets);
        };
        let why = tokio::select! {
            biased;
            _ = leading.lost() => "lost the lease (not renewed within the deadline)",
            _ = process_ends(&world, me, incarnation) => "its process died",
            _ = controllers => unreachable!("the controllers run until stopped"),
        };
        drop(leading);
        world.checks.lease_released(&world, me, why);
    }
}

/// Resolves when replica `me`'s process `incarnation` stops (or the run ends).
async fn process_ends(world: &World, me: u64, incarnation: u64) {
    while world.incarnation_if_up(me) == Some(incarnation) && !world.done.load(std::sync::atomic::Ordering::SeqCst) && !world.failed() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
