//! A ResourceQuota (`quotas/q`, a hard limit on pods) over pods kept under `quota-pods/`,
//! created by clients through the API server's admission arithmetic
//! (`api::quota::usage` and `charge`: the quota's `status.used` charged in the create's own
//! transaction, conditional on the quota's revision, as capstan's `reserve.rs` writes it),
//! deleted by others (deletes do not touch the quota), and recounted by the resource-quota
//! controller in the Lease holder: a recount that lowers `used` is written only once a
//! recount `QUOTA_CONFIRM` later agrees (capstan's `lowering_gate`), every write conditional
//! on the quota's revision. The controller's pods view lags its quota view by up to 200 ms
//! (two informers), less than `QUOTA_CONFIRM`, the bound under which the gate is sound.
//!
//! Checked (`quota-exceeded`, in `check.rs`): after every revision, no more pods than the
//! quota allows.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use storage::{Command, TxnRequest};

use crate::Bug;
use crate::kube::{absent, delete, object, ok, put, put_op, unchanged};
use crate::workload::{list_from, write, write_from};
use crate::world::World;

pub const QUOTA_KEY: &str = "quotas/q";
pub const POD_PREFIX: &str = "quota-pods/";

/// The quota: 3 to 5 pods. Made with the store healthy, before faults.
pub async fn create(world: &World) -> bool {
    let hard = world.range(3, 6);
    let q = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "default"},
        "spec": {"hard": {"pods": hard.to_string()}}, "status": {"hard": {"pods": hard.to_string()}, "used": {"pods": "0"}}});
    ok(&write(world, put(QUOTA_KEY, &q, absent(QUOTA_KEY))).await)
}

/// A client creating pods: each create charges the quota in its own transaction, refused
/// (Forbidden, nothing written) when the quota is full.
pub async fn creator(world: Arc<World>, me: usize, until: tokio::time::Instant) {
    while tokio::time::Instant::now() < until && !world.failed() {
        tokio::time::sleep(Duration::from_millis(world.range(100, 600))).await;
        let Some(qs) = list_from(&world, None, QUOTA_KEY).await else { continue };
        let Some((qkey, rev, quota)) = qs.iter().find_map(object) else { continue };
        let name = format!("p-{:010x}", world.range(0, 1 << 40));
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "pause"}]}});
        let Ok(charged) = api::quota::charge(&quota, &api::quota::usage("", "pods", &pod), &pod) else { continue };
        let key = format!("{POD_PREFIX}{name}");
        let compare = [unchanged(&qkey, rev), absent(&key)].concat();
        let cmd = Command::Txn(TxnRequest { compare, success: vec![put_op(&key, &pod), put_op(&qkey, &charged)], failure: vec![] });
        if ok(&write(&world, cmd).await) {
            world.log("kube", format!("creator-{me}: created {name} (quota used {})", charged["status"]["used"]["pods"]));
        }
    }
}

/// A client deleting one of the quota's pods now and then.
pub async fn deleter(world: Arc<World>, until: tokio::time::Instant) {
    while tokio::time::Instant::now() < until && !world.failed() {
        tokio::time::sleep(Duration::from_millis(world.range(300, 1_500))).await;
        let Some(pods) = list_from(&world, None, POD_PREFIX).await else { continue };
        let Some((key, rev, _)) = world.pick(&pods.iter().filter_map(object).collect::<Vec<_>>()) else { continue };
        if ok(&write(&world, delete(&key, unchanged(&key, rev))).await) {
            world.log("kube", format!("deleter: deleted {}", &key[POD_PREFIX.len()..]));
        }
    }
}

/// What the resource-quota controller of one controller manager remembers: a lowering
/// waiting to be confirmed, and when it was computed.
#[derive(Default)]
pub struct Pending(Option<(Value, tokio::time::Instant)>);

/// One pass of the resource-quota controller, run by the controller manager of replica `home`.
pub async fn sync(world: &World, home: u64, pending: &mut Pending) {
    // The pods informer's view is older than the quota informer's: pods read first.
    let Some(pods) = list_from(world, Some(home), POD_PREFIX).await else { return };
    tokio::time::sleep(Duration::from_millis(world.range(0, 200))).await;
    let Some(qs) = list_from(world, Some(home), QUOTA_KEY).await else { return };
    let Some((key, rev, mut quota)) = qs.iter().find_map(object) else { return };
    let mut used = serde_json::Map::new();
    used.insert("pods".into(), json!((pods.len()).to_string()));
    let status = json!({"hard": quota["spec"]["hard"], "used": used});
    if quota["status"] == status {
        pending.0 = None;
        return;
    }
    if controllers::run::quota_lowers(&used, &client::obj::Obj::from(&quota["status"]["used"])) && !world.bug(Bug::QuotaLoweredAtOnce) {
        match controllers::run::lowering_gate(pending.0.as_ref().map(|(s, at)| (s, at.elapsed())), &status) {
            controllers::run::LoweringGate::Write => {}
            controllers::run::LoweringGate::Wait(_) => return,
            controllers::run::LoweringGate::Start => {
                pending.0 = Some((status, tokio::time::Instant::now()));
                return;
            }
        }
    }
    pending.0 = None;
    quota["status"] = status;
    if ok(&write_from(world, Some(home), put(&key, &quota, unchanged(&key, rev))).await) {
        world.log("kube", format!("cm-{home}: quota used {}", quota["status"]["used"]["pods"]));
    }
}
