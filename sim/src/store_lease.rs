//! The store's TTL leases (etcd's leases, granted through the etcd API), as capstan's
//! replicated store keeps them: grants and revocations go through the log and every replica
//! applies them (`Mvcc::apply_lease_grant`, `apply_lease_revoke`); deadlines live beside the
//! index (`storage::lease_deadlines::Deadlines`, the coordinator's own table); only the leader
//! expires leases, by proposing their revocation; a keep-alive renews at the replica that
//! believes it leads, forwarded there by the one asked (`raft::replica`'s `lease_call`); and a
//! replica that becomes leader gives every lease its whole TTL again plus an election's time
//! (`raft::replica`'s `monitor`, which follows leadership from the raft metrics).
//!
//! The check, `store-lease-expired-early`: no lease is revoked (but by its holder) before
//! the time its last acknowledged keep-alive promised (the renewal's time plus the TTL).

use std::sync::Arc;
use std::time::Duration;

use openraft::{ReadPolicy, ServerState};
use openraft_rt::WatchReceiver;
use storage::{Applied, Command, LeaseId, PutRequest, TxnOp, TxnRequest};

use crate::Bug;
use crate::rt::{Cmd, spawn};
use crate::workload::{Written, write};
use crate::world::World;

/// What a new leader adds to every lease's TTL: the longest election timeout, as capstan
/// passes its own (`election_timeout.1`).
pub const EXTEND: Duration = Duration::from_millis(600);

/// How often a replica looks at its leadership and its deadlines (capstan's monitor follows
/// the metrics as they change; the coordinator wakes at the next deadline).
const LOOK: Duration = Duration::from_millis(50);

/// How far a replica's monotonic clock may run fast or slow against true time, in millionths:
/// 1 %, fifty times what a computer's crystal drifts, so the simulation's leases feel it.
pub const DRIFT_BOUND_PPM: i64 = 10_000;

/// Replica `me`'s clock for lease deadlines: its monotonic clock, as capstan's coordinator
/// keeps them (`std::time::Instant`), which drifts against true time (`World::mono_now`).
pub(crate) fn now(world: &World, me: u64) -> std::time::Instant {
    world.mono_now(me)
}

fn done(world: &World) -> bool {
    world.done.load(std::sync::atomic::Ordering::SeqCst) || world.failed()
}

/// Replica `me`'s lease expiry, across its process's incarnations.
pub async fn expirer(world: Arc<World>, me: u64) {
    let mut seen: Option<u64> = None;
    let mut was_leader = false;
    while !done(&world) {
        tokio::time::sleep(LOOK).await;
        let (Some(incarnation), Some((raft, sm))) = (world.incarnation_if_up(me), world.handle(me)) else { continue };
        if seen != Some(incarnation) {
            // A new process starts as a follower.
            seen = Some(incarnation);
            was_leader = false;
        }
        let leader = raft.metrics().borrow_watched().state == ServerState::Leader;
        if leader != was_leader {
            // Planted: the new leader keeps the deadlines it saw as a follower, which no
            // keep-alive renewed.
            if leader && !world.bug(Bug::LeaseNotExtended) {
                sm.state.lock().unwrap().deadlines.restart_all(EXTEND, now(&world, me));
            }
            was_leader = leader;
        }
        if !leader {
            continue;
        }
        let expired = sm.state.lock().unwrap().deadlines.expired(now(&world, me));
        for id in expired {
            world.log("lease", format!("n{me}: lease {id} expired; revoking it"));
            let raft = raft.clone();
            spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), raft.client_write(Cmd(Command::LeaseRevoke { id }))).await;
            });
        }
    }
}

/// A keep-alive: the replica asked renews if it believes it leads, or hands the call to the
/// leader it knows when it can reach it. `None`: the lease is gone, or no leader in time.
async fn keep_alive(world: &World, lease: LeaseId) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let Some((asked, raft, _)) = world.pick(&world.up()) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let known = raft.metrics().borrow_watched().current_leader;
        let at = match known {
            Some(l) if l == asked || world.connected(asked, l) => l,
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((leader, sm)) = world.handle(at) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // As capstan's replicas: renewed only by a leader a quorum still follows.
        let confirmed = tokio::time::timeout(Duration::from_secs(2), leader.ensure_linearizable(ReadPolicy::ReadIndex)).await;
        if !matches!(confirmed, Ok(Ok(_))) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let renewed = sm.state.lock().unwrap().deadlines.keep_alive(lease, now(world, at));
        return match renewed {
            Ok(ttl) => {
                world.checks.store_lease_kept(lease, world.now_us(), ttl, at);
                Some(ttl)
            }
            Err(_) => None,
        };
    }
    None
}

/// A client holding leases in turn, each with a key on it: granted, kept alive a few times
/// (now and then too late), then revoked or left to expire, until `until`.
pub async fn holder(world: Arc<World>, c: usize, until: tokio::time::Instant) {
    let mut n: i64 = 0;
    while tokio::time::Instant::now() < until && !done(&world) {
        n += 1;
        let id: LeaseId = (c as i64 + 1) * 1_000_000 + n;
        let ttl = world.range(2, 6) as i64;
        if !matches!(write(&world, Command::LeaseGrant { id, ttl_seconds: ttl }).await, Written::Applied(Applied::LeaseGrant(Ok(_)))) {
            // Refused, or it may have been granted: left alone, it expires.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let put = TxnOp::Put(PutRequest { key: format!("slease/{c}/{n}").into(), value: id.to_string().into(), lease: id, prev_kv: false });
        let _ = write(&world, Command::Txn(TxnRequest { compare: vec![], success: vec![put], failure: vec![] })).await;
        for _ in 0..world.range(2, 12) {
            // Now and then a keep-alive comes late, about when the lease expires: it must
            // then be refused, not acknowledged for a lease whose revocation is on its way.
            let late = world.chance(0.15);
            tokio::time::sleep(Duration::from_millis(if late { ttl as u64 * 1000 + world.range(0, 600) } else { ttl as u64 * 1000 / 3 })).await;
            if keep_alive(&world, id).await.is_none() {
                break;
            }
        }
        if world.chance(0.5) {
            world.checks.store_lease_given_up(id);
            let _ = write(&world, Command::LeaseRevoke { id }).await;
        }
    }
}

/// Once the holders stopped: every lease is revoked or expires (the longest TTL, an
/// election's extension and a retry) on the converged cluster.
pub async fn drained(world: &World, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = crate::workload::leases(world).await;
        match left {
            Some(l) if l.is_empty() => return Ok(()),
            _ if tokio::time::Instant::now() >= deadline => return Err(format!("{within:?} after the holders stopped, the store still holds leases {left:?}")),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
