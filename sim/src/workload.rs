//! What runs against the cluster: key-value clients whose history the linearizability checker
//! reads, and watchers that follow every change from revision 1, switching replica when theirs goes away
//! or at random, resuming from the last revision they were given.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::ReadPolicy;
use openraft_rt::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use raft::lincheck::{Input, Op, Output};
use storage::{Applied, Command, Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, KeyValue, PutRequest, Revision, TxnOp, TxnRequest};

use crate::Bug;
use crate::check::{Acked, Checks};
use crate::rt::{Cmd, Raft};
use crate::state_machine::{Change, Sm, change_of};
use crate::world::World;

/// How a write ended.
pub enum Written {
    Applied(Applied),
    /// Refused before it entered any log: it never happens.
    Refused,
    /// It may or may not have happened (the leader failed, or no answer in time).
    Unknown(String),
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const TRY_FOR: Duration = Duration::from_secs(3);

/// The replica a request goes to. A client of the whole cluster (`home` none) tries the leader
/// it last heard of, or any running replica. A client of one replica (`home`: a component
/// running in that replica's process, as capstan server's controllers do) reaches only it,
/// and through it the leader, when the two can talk.
fn target(world: &World, home: Option<u64>, hint: Option<u64>) -> Option<(u64, Raft, Sm)> {
    let Some(h) = home else {
        if let Some(h) = hint
            && let Some((raft, sm)) = world.handle(h)
        {
            return Some((h, raft, sm));
        }
        return world.pick(&world.up());
    };
    let (raft, sm) = world.handle(h)?;
    let leader = hint.or_else(|| raft.metrics().borrow_watched().current_leader)?;
    if leader == h {
        return Some((h, raft, sm));
    }
    if !world.connected(h, leader) {
        return None;
    }
    world.handle(leader).map(|(raft, sm)| (leader, raft, sm))
}

/// Replica `id` sent the request to `leader`: the replica to try next, after a wait (every
/// retry waits: simulated time only moves while every task waits, sim/FOUND.md, seed 0).
async fn redirected(id: u64, leader: Option<u64>) -> Option<u64> {
    let hint = leader.filter(|l| *l != id);
    tokio::time::sleep(Duration::from_millis(if hint.is_some() { 1 } else { 50 })).await;
    hint
}

/// Proposes `cmd` through the leader, following redirects until `TRY_FOR` has passed.
pub async fn write(world: &World, cmd: Command) -> Written {
    write_from(world, None, cmd).await
}

/// As [`write`], from a component that reaches the cluster through replica `home`.
pub async fn write_from(world: &World, home: Option<u64>, cmd: Command) -> Written {
    let deadline = tokio::time::Instant::now() + TRY_FOR;
    let mut hint = None;
    while tokio::time::Instant::now() < deadline {
        let Some((id, raft, _)) = target(world, home, hint) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(Cmd(cmd.clone()))).await {
            Ok(Ok(r)) => match r.data.0 {
                Some(a) => return Written::Applied(a),
                None => return Written::Unknown("an answer without a result".into()),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => hint = redirected(id, f.leader_id).await,
            Ok(Err(e)) => return Written::Unknown(format!("n{id}: {e}")),
            Err(_) => return Written::Unknown(format!("n{id}: no answer in {WRITE_TIMEOUT:?}")),
        }
    }
    Written::Refused
}

/// A linearizable read of `key` (a read index on the leader, then its state machine).
pub async fn read(world: &World, key: &Bytes) -> Option<Option<KeyValue>> {
    read_from(world, None, key).await
}

/// As [`read`], from a component that reaches the cluster through replica `home`.
pub async fn read_from(world: &World, home: Option<u64>, key: &Bytes) -> Option<Option<KeyValue>> {
    linearizable(world, home, |st| st.get(key)).await
}

/// The live keys under `prefix`, read linearizably (none: no read index in time).
pub async fn list_from(world: &World, home: Option<u64>, prefix: &str) -> Option<Vec<KeyValue>> {
    let range = KeyRange::Prefix(Bytes::from(prefix.to_string()));
    linearizable(world, home, |st| st.mvcc.range_at(&range, st.revision, 0, false, false).kvs).await
}

/// The leases the store holds, in id order, read linearizably (none: no read index in time).
pub async fn leases(world: &World) -> Option<Vec<storage::LeaseId>> {
    linearizable(world, None, |st| {
        let mut ids: Vec<storage::LeaseId> = st.mvcc.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    })
    .await
}

/// `f` over the leader's state once a read index confirms it is current.
async fn linearizable<T>(world: &World, home: Option<u64>, f: impl Fn(&crate::state_machine::State) -> T) -> Option<T> {
    let deadline = tokio::time::Instant::now() + TRY_FOR;
    let mut hint = None;
    while tokio::time::Instant::now() < deadline {
        let Some((id, raft, sm)) = target(world, home, hint) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match tokio::time::timeout(WRITE_TIMEOUT, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Ok(Ok(_)) => return Some(f(&sm.state.lock().unwrap())),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => hint = redirected(id, f.leader_id).await,
            _ => return None,
        }
    }
    None
}

fn put(key: &Bytes, value: &str) -> TxnOp {
    TxnOp::Put(PutRequest { key: key.clone(), value: Bytes::from(value.to_string()), lease: 0, prev_kv: false })
}

fn txn_revision(a: &Applied) -> Option<(bool, Revision)> {
    match a {
        Applied::Txn(Ok(r)) => Some((r.succeeded, r.revision)),
        _ => None,
    }
}

const KEYS: u64 = 5;

/// Where deletes leave their markers (not a key the clients' history is about).
pub const DELETE_MARKERS: &str = "deleted/";

/// A key-value client: puts, compare-and-swaps, deletes and reads on a few keys, every value
/// unique, every operation recorded with its simulated call and return times.
pub async fn kv_client(world: Arc<World>, client: usize, until: tokio::time::Instant) {
    let mut n = 0u64;
    let mut last_seen: Option<String> = None;
    while tokio::time::Instant::now() < until && !world.failed() {
        n += 1;
        let key = Bytes::from(format!("kv/{}", world.range(0, KEYS)));
        let key_s = String::from_utf8_lossy(&key).to_string();
        let value = format!("c{client}-{n}");
        let roll = world.range(0, 100);
        let call = world.now_us() * 1000;
        let (input, written) = if roll < 30 {
            match read(&world, &key).await {
                Some(kv) => {
                    let v = kv.map(|kv| String::from_utf8_lossy(&kv.value).to_string());
                    last_seen = v.clone();
                    let ret = world.now_us() * 1000 + 1;
                    world.checks.history.lock().unwrap().push(Op { client, key: key_s, input: Input::Get, output: Output::Value(v), call, ret: Some(ret) });
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(world.range(1, 30))).await;
            continue;
        } else if roll < 65 {
            let cmd = Command::Txn(TxnRequest { compare: vec![], success: vec![put(&key, &value)], failure: vec![] });
            (Input::Put(value.clone()), write(&world, cmd).await)
        } else if roll < 90 {
            let expect = last_seen.clone();
            let compare = match &expect {
                Some(v) => Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::Value(Bytes::from(v.clone())), range_end: None },
                None => Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::Version(0), range_end: None },
            };
            let cmd = Command::Txn(TxnRequest { compare: vec![compare], success: vec![put(&key, &value)], failure: vec![] });
            (Input::Cas { expect, new: value.clone() }, write(&world, cmd).await)
        } else {
            // The delete writes a marker in the same transaction, so that a delete whose answer
            // was lost can be told applied or not from what was applied (`run::resolve_unknown`).
            let marker = Bytes::from(format!("{DELETE_MARKERS}{value}"));
            world.checks.delete_markers.lock().unwrap().insert((client, call), marker.clone());
            let cmd = Command::Txn(TxnRequest {
                compare: vec![],
                success: vec![TxnOp::Delete(DeleteRequest { range: KeyRange::Key(key.clone()), prev_kv: false }), put(&marker, &key_s)],
                failure: vec![],
            });
            (Input::Delete, write(&world, cmd).await)
        };
        let ret = world.now_us() * 1000 + 1;
        let (output, ret) = match &written {
            Written::Refused => {
                tokio::time::sleep(Duration::from_millis(world.range(1, 30))).await;
                continue;
            }
            Written::Unknown(why) => {
                world.log("client", format!("c{client}: {input:?} on {key_s}: outcome unknown ({why})"));
                (Output::Unknown, None)
            }
            Written::Applied(a) => match txn_revision(a) {
                Some((ok, rev)) => {
                    let value = match &input {
                        Input::Put(v) => Some(Some(Bytes::from(v.clone()))),
                        Input::Cas { new, .. } if ok => Some(Some(Bytes::from(new.clone()))),
                        Input::Delete => Some(None),
                        _ => None,
                    };
                    if let Some(value) = value
                        && (value.is_some() || ok)
                    {
                        world.checks.acked.lock().unwrap().push(Acked { key: key.clone(), revision: rev, value });
                    }
                    world.log("client", format!("c{client}: {input:?} on {key_s}: {} at revision {rev}", if ok { "ok" } else { "compare failed" }));
                    (if matches!(input, Input::Cas { .. }) { Output::Swapped(ok) } else { Output::Ok }, Some(ret))
                }
                None => {
                    world.violate("store-error", format!("c{client}: {input:?} on {key_s} answered {a:?}"));
                    return;
                }
            },
        };
        if let Input::Cas { new, .. } = &input
            && output == Output::Swapped(true)
        {
            last_seen = Some(new.clone());
        }
        world.checks.history.lock().unwrap().push(Op { client, key: key_s, input, output, call, ret });
        tokio::time::sleep(Duration::from_millis(world.range(1, 30))).await;
    }
}

/// The events a replica serves a watch from `from` with (its index's history, as the store's
/// watch catch-up reads it).
fn serve_watch(world: &World, sm: &Sm, from: Revision) -> Vec<(Revision, Change)> {
    let events = sm.state.lock().unwrap().events_since(from);
    let mut out: Vec<(Revision, Change)> = events.iter().map(|e| (e.kv.mod_revision, change_of(e))).collect();
    if world.bug(Bug::SkipWatchEvent) {
        out.retain(|(rev, _)| rev % 13 != 0);
    }
    out
}

/// A watcher of every key from revision 1: checks each revision it is given against what was
/// applied (nothing missed, nothing twice, nothing out of order, nothing different).
pub async fn watcher(world: Arc<World>, me: usize) {
    let mut next: Revision = 1;
    let mut on: Option<u64> = None;
    let mut delivered = 0u64;
    world.checks.watch_next.lock().unwrap().insert(me, next);
    while !world.failed() && !world.done.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(world.range(10, 100))).await;
        if on.is_none() || world.chance(0.05) {
            let pick = world.pick(&world.up()).map(|(id, _, _)| id);
            if pick != on {
                world.log("watch", format!("w{me}: resuming from revision {next} on {}", pick.map_or("nothing".into(), |p| format!("n{p}"))));
            }
            on = pick;
        }
        let Some(id) = on else { continue };
        let Some((_, sm)) = world.handle(id) else {
            on = None;
            continue;
        };
        let events = serve_watch(&world, &sm, next);
        let mut i = 0;
        while i < events.len() {
            let rev = events[i].0;
            let mut changes = Vec::new();
            while i < events.len() && events[i].0 == rev {
                changes.push(events[i].1.clone());
                i += 1;
            }
            changes.sort();
            if let Err((name, msg)) = check_delivery(&world.checks, next, rev, &changes) {
                world.violate(name, format!("watcher w{me} on n{id}: {msg}"));
                return;
            }
            delivered += 1;
            next = rev + 1;
        }
        world.checks.watch_next.lock().unwrap().insert(me, next);
    }
    world.log("watch", format!("w{me}: {delivered} revisions delivered, next {next}"));
}

/// Whether delivering `changes` at `rev` to a watcher expecting `next` keeps the watch
/// guarantees.
pub fn check_delivery(checks: &Checks, next: Revision, rev: Revision, changes: &[Change]) -> Result<(), (&'static str, String)> {
    if rev < next {
        return Err(("watch-order", format!("revision {rev} delivered after revision {}", next - 1)));
    }
    if let Some((missed, c)) = checks.truth_between(next, rev).into_iter().next() {
        return Err(("watch-gap", format!("revision {missed} [{}] was never delivered (next was {rev})", Checks::show(&c))));
    }
    match checks.truth_at(rev) {
        Some(t) if t == changes => Ok(()),
        Some(t) => Err(("watch-mismatch", format!("revision {rev} delivered as [{}], applied as [{}]", Checks::show(changes), Checks::show(&t)))),
        None => Err(("watch-mismatch", format!("revision {rev} delivered but never applied"))),
    }
}
