//! openraft's state machine for the simulation: the store's own MVCC index and transaction
//! evaluation (`storage::internals`: `Mvcc`, `txn::validate`, `txn::eval`, the code a shard
//! runs), applied in log order with revisions handed out at apply time, as in the replicated
//! store. A snapshot is the index's every retained revision, written durably to the simulated
//! disk; a restarted replica starts from it and re-applies the log after it.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use storage::internals::{Entry as Version, Mvcc, eval, validate};
use storage::lease_deadlines::Deadlines;
use storage::{Applied, Command, Event, EventKind, KeyRange, KeyValue, LeaseId, Revision, StoreError, TxnResponse};

use crate::disk::{Disk, Op};
use crate::log_store::sync_delay;
use crate::rt::{Cfg, LogId, Reply, SnapshotMeta, StoredMembership};
use crate::world::World;

const REQUEST_BYTES_MAX: usize = 1 << 20;

/// A snapshot's data: every key with its retained versions, oldest first, in key order.
#[derive(Clone, Debug)]
pub struct SnapData {
    pub keys: Arc<Vec<(Bytes, Vec<Version>)>>,
    /// The leases and their TTLs (their keys are in `keys`).
    pub leases: Arc<Vec<(LeaseId, i64)>>,
    pub revision: Revision,
}

pub type Snapshot = openraft::alias::SnapshotOf<Cfg, SnapData>;

pub struct State {
    pub mvcc: Mvcc,
    pub revision: Revision,
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    /// When each lease expires, as this replica sees it (`store_lease.rs`).
    pub deadlines: Deadlines,
}

impl State {
    /// `now`: the replica's clock for lease deadlines (`store_lease::now`).
    fn from_snapshot(s: Option<&(SnapshotMeta, SnapData)>, now: std::time::Instant) -> State {
        match s {
            None => State { mvcc: Mvcc::default(), revision: 0, applied: None, membership: Default::default(), deadlines: Deadlines::default() },
            Some((m, d)) => {
                let mut mvcc = Mvcc::from_sorted(d.keys.as_ref().clone());
                mvcc.leases = d.leases.iter().copied().collect();
                State {
                    mvcc,
                    revision: d.revision,
                    applied: m.last_log_id,
                    membership: m.last_membership.clone(),
                    deadlines: Deadlines::from_ttls(d.leases.iter().copied(), now),
                }
            }
        }
    }

    fn snapshot_data(&self) -> SnapData {
        let mut keys: Vec<(Bytes, Vec<Version>)> = Vec::new();
        self.mvcc.for_each_entry(|k, e| match keys.last_mut() {
            Some((last, h)) if last == k => h.push(e.clone()),
            _ => keys.push((k.clone(), vec![e.clone()])),
        });
        let mut leases: Vec<(LeaseId, i64)> = self.mvcc.leases.iter().map(|(a, b)| (*a, *b)).collect();
        leases.sort_unstable();
        SnapData { keys: Arc::new(keys), leases: Arc::new(leases), revision: self.revision }
    }

    /// Every event this replica holds from `from` on, in revision order.
    pub fn events_since(&self, from: Revision) -> Vec<Event> {
        self.mvcc.events_since(&KeyRange::Prefix(Bytes::new()), from.max(1), false)
    }

    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.mvcc.get_latest(key)
    }
}

/// A replica's state machine (one per incarnation; clones share it).
#[derive(Clone)]
pub struct Sm {
    pub id: u64,
    pub state: Arc<Mutex<State>>,
    generation: u64,
    disk: Arc<Disk>,
    world: Arc<World>,
    snapshots: Arc<std::sync::atomic::AtomicU64>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// What an event says, for comparing replicas and watchers: (key, value or none if deleted).
pub type Change = (Bytes, Option<Bytes>);

pub fn change_of(e: &Event) -> Change {
    (e.kv.key.clone(), (e.kind == EventKind::Put).then(|| e.kv.value.clone()))
}

impl Sm {
    pub fn open(id: u64, generation: u64, disk: Arc<Disk>, world: Arc<World>, snapshot: Option<&(SnapshotMeta, SnapData)>) -> Sm {
        let now = crate::store_lease::now(&world, id);
        Sm { id, state: Arc::new(Mutex::new(State::from_snapshot(snapshot, now))), generation, disk, world, snapshots: Default::default() }
    }

    fn apply_one(&self, st: &mut State, cmd: Command, applied: &mut BTreeMap<Revision, Vec<Change>>) -> Applied {
        let current = st.revision;
        let compacted = st.mvcc.compact_revision();
        match cmd {
            Command::Txn(req) => {
                let mut next = current;
                let mut alloc = || {
                    next += 1;
                    next
                };
                let r = validate(&req, REQUEST_BYTES_MAX).and_then(|()| eval(&mut st.mvcc, &req, &mut alloc, current, compacted));
                Applied::Txn(r.map(|o| {
                    let revision = match o.revision {
                        Some(rev) => {
                            st.revision = rev;
                            applied.insert(rev, o.events.iter().map(change_of).collect());
                            rev
                        }
                        None => current,
                    };
                    TxnResponse { revision, succeeded: o.succeeded, responses: o.responses }
                }))
            }
            Command::LeaseGrant { id, ttl_seconds } => Applied::LeaseGrant(st.mvcc.apply_lease_grant(id, ttl_seconds).inspect(|_| {
                st.deadlines.applied(id, Some(ttl_seconds), crate::store_lease::now(&self.world, self.id));
            })),
            Command::LeaseRevoke { id } => Applied::LeaseRevoke(st.mvcc.apply_lease_revoke(id, current, || current + 1).map(|(rev, deleted)| {
                if rev > current {
                    st.revision = rev;
                    applied.insert(rev, deleted.iter().map(change_of).collect());
                }
                st.deadlines.applied(id, None, crate::store_lease::now(&self.world, self.id));
                self.world.checks.store_lease_revoked(&self.world, id, self.id);
                rev
            })),
            other => Applied::Txn(Err(StoreError::Invalid(format!("the simulation proposes only txns and leases, got {other:?}")))),
        }
    }
}

impl RaftSnapshotBuilder<Cfg> for Sm {
    type SnapshotData = SnapData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = {
            let st = self.state.lock().unwrap();
            (SnapshotMeta { last_log_id: st.applied, last_membership: st.membership.clone() }, st.snapshot_data())
        };
        self.disk.write(self.generation, Op::Snapshot(meta.clone(), data.clone()))?;
        sync_delay(&self.world, &self.disk).await;
        self.disk.sync(self.generation)?;
        self.snapshots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.world.log("sm", format!("n{}: snapshot at log {:?}, revision {}", self.id, meta.last_log_id.map(|l| l.index), data.revision));
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<Cfg> for Sm {
    type SnapshotData = SnapData;
    type SnapshotBuilder = Sm;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let st = self.state.lock().unwrap();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<Cfg>, io::Error>> + Unpin + OptionalSend,
    {
        let mut changes = BTreeMap::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let reply = {
                let mut st = self.state.lock().unwrap();
                st.applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Normal(cmd) => Reply(Some(self.apply_one(&mut st, cmd.0, &mut changes))),
                    EntryPayload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(entry.log_id), m);
                        Reply(None)
                    }
                    EntryPayload::Blank => Reply(None),
                }
            };
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        for (rev, c) in changes {
            self.world.checks.applied(&self.world, self.id, rev, c);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapData) -> Result<(), io::Error> {
        self.disk.write(self.generation, Op::Snapshot(meta.clone(), snapshot.clone())).map_err(io_err)?;
        sync_delay(&self.world, &self.disk).await;
        self.disk.sync(self.generation)?;
        let st = State::from_snapshot(Some(&(meta.clone(), snapshot)), crate::store_lease::now(&self.world, self.id));
        self.world.log("sm", format!("n{}: installed snapshot at log {:?}, revision {}", self.id, meta.last_log_id.map(|l| l.index), st.revision));
        *self.state.lock().unwrap() = st;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        self.disk.read(self.generation, |i| i.snapshot.clone().map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}
