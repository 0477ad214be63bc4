//! The coordinator: one thread for the rare work that spans shards (multi-shard txns and
//! range deletes, leases, compaction, snapshots). It freezes every shard (each finishes its
//! batch and then runs only the coordinator's closures), does the work at one revision, logs
//! it as one record in shard 0's log, and unfreezes. Single-shard requests never come here.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, bounded};
use tokio::sync::oneshot;

use crate::command::Command;
use crate::error::StoreError;
use crate::lease_deadlines::Deadlines;
use crate::mvcc::SnapshotCopy;
use crate::replicated::SnapshotInfo;
use crate::shard::{Ctrl, ShardCore, ShardMsg};
use crate::shared::{NONE, Shared};
use crate::snapshot;
use crate::txn::{self, KeySpace};
use crate::types::*;
use crate::wal::{Change, FrameBuilder, Record, WalError};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum CoordMsg {
    Txn { req: TxnRequest, reply: Reply<TxnResponse> },
    LeaseGrant { id: LeaseId, ttl: i64, reply: Reply<LeaseGrant> },
    LeaseKeepAlive { id: LeaseId, reply: Reply<i64> },
    LeaseRevoke { id: LeaseId, reply: Reply<Revision> },
    LeaseTimeToLive { id: LeaseId, reply: Reply<(i64, i64)> },
    LeaseList { reply: Reply<Vec<LeaseId>> },
    /// The keys attached to a lease, from every shard's lease index, in key order.
    LeaseKeys { id: LeaseId, reply: Reply<Vec<Bytes>> },
    /// Opens the files of the snapshot in force (nothing is removed or replaced meanwhile:
    /// snapshots are committed by this thread).
    OpenSnapshot { reply: Reply<(Revision, Vec<(String, std::fs::File, u64)>)> },
    Compact { revision: Revision, reply: Reply<()> },
    Snapshot { reply: Reply<Revision> },
    Shutdown { done: Sender<()> },
    // Replicated mode.
    /// The shard applied a lease grant (`Some(ttl)`) or revocation (`None`).
    LeaseApplied { id: LeaseId, ttl: Option<i64> },
    /// This replica became leader (decides expiry and compaction) or stopped being one.
    Lead { lead: bool, extend: Duration },
    SnapshotReplica { reply: Reply<SnapshotInfo> },
    CurrentSnapshot { reply: Reply<Option<SnapshotInfo>> },
    ReceiveDir { reply: Reply<(u64, PathBuf)> },
    Install { id: u64, dir: PathBuf, expected_meta: Option<Bytes>, reply: Reply<SnapshotInfo> },
}

pub struct Coordinator {
    pub shared: Arc<Shared>,
    pub data_dir: PathBuf,
    /// When each lease expires (`lease_deadlines.rs`).
    pub leases: Deadlines,
    pub snapshot_id: u64,
    pub snapshot_revision: Revision,
    /// (when, revision) samples for compaction by age, one per tick, bounded by the retention.
    pub history: std::collections::VecDeque<(Instant, Revision)>,
    /// Replicated mode: whether this replica is the leader, which alone expires leases and
    /// compacts (by proposing those through the log). A store that is its own log always leads.
    pub lead: bool,
    /// Replicated mode: where proposals of expiry and compaction are spawned.
    pub runtime: Option<tokio::runtime::Handle>,
    /// Replicated mode: the compaction last proposed (not proposed again while in flight).
    pub proposed_compact: Revision,
    /// When compaction by bytes last ran: it runs at most every `BYTES_COMPACTION_INTERVAL`.
    pub bytes_compacted_at: Option<Instant>,
}

/// Compaction by bytes keeps, for every key written since its target, the version live at
/// the target; when most keys are being rewritten what is left can still exceed the bound,
/// and without a pause it would compact (pausing every shard) at every tick.
const BYTES_COMPACTION_INTERVAL: Duration = Duration::from_secs(10);

/// All shards, frozen; unfrozen on drop.
struct Frozen {
    ctrl: Vec<Sender<Ctrl>>,
}

impl Frozen {
    fn new(shared: &Shared) -> Frozen {
        let mut ctrl = Vec::with_capacity(shared.shards);
        let mut acks = Vec::with_capacity(shared.shards);
        for inbox in &shared.inbox {
            let (ctx, crx) = bounded(64);
            let (atx, arx) = bounded(1);
            inbox.send(ShardMsg::Freeze { ctrl: crx, frozen: atx }).expect("shard alive");
            ctrl.push(ctx);
            acks.push(arx);
        }
        for a in acks {
            a.recv().expect("shard froze");
        }
        Frozen { ctrl }
    }

    /// Runs `f` on shard `s` and waits for its result.
    fn run<R: Send + 'static>(&self, s: usize, f: impl FnOnce(&mut ShardCore) -> R + Send + 'static) -> R {
        let (tx, rx) = bounded(1);
        self.ctrl[s]
            .send(Ctrl::Run(Box::new(move |c| {
                let _ = tx.send(f(c));
            })))
            .expect("frozen shard alive");
        rx.recv().expect("frozen shard answered")
    }

    /// Runs `f` on every shard in parallel; results in shard order.
    fn run_all<R: Send + 'static>(&self, f: impl Fn(&mut ShardCore) -> R + Send + Sync + Clone + 'static) -> Vec<R> {
        let rxs: Vec<_> = self
            .ctrl
            .iter()
            .map(|c| {
                let (tx, rx) = bounded(1);
                let f = f.clone();
                c.send(Ctrl::Run(Box::new(move |core| {
                    let _ = tx.send(f(core));
                })))
                .expect("frozen shard alive");
                rx
            })
            .collect();
        rxs.into_iter().map(|rx| rx.recv().expect("frozen shard answered")).collect()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for c in &self.ctrl {
            let _ = c.send(Ctrl::Unfreeze);
        }
    }
}

/// The txn evaluator's view of all shards, frozen.
struct AllShards<'a> {
    f: &'a Frozen,
    shared: &'a Shared,
    /// Keys changed, per shard, for a rollback.
    touched: Vec<Vec<Bytes>>,
}

impl KeySpace for AllShards<'_> {
    fn get(&mut self, key: &Bytes) -> Option<KeyValue> {
        let k = key.clone();
        self.f.run(self.shared.shard_of(key), move |c| c.mvcc.get_latest(&k))
    }
    fn range(&mut self, range: &KeyRange, rev: Revision, limit: usize, keys_only: bool, count_only: bool) -> (Vec<KeyValue>, usize) {
        let r = range.clone();
        let parts = self.f.run_all(move |c| {
            let l = c.mvcc.range_at(&r, rev, limit, keys_only, count_only);
            (l.kvs, l.count)
        });
        merge_ranges(parts, limit)
    }
    fn put(&mut self, key: &Bytes, value: &Bytes, lease: LeaseId, rev: Revision) -> (KeyValue, Option<KeyValue>) {
        let s = self.shared.shard_of(key);
        self.touched[s].push(key.clone());
        let (k, v) = (key.clone(), value.clone());
        self.f.run(s, move |c| c.mvcc.put(k, v, lease, rev))
    }
    fn delete(&mut self, range: &KeyRange, rev: Revision) -> Vec<KeyValue> {
        let r = range.clone();
        let parts = self.f.run_all(move |c| {
            let keys = match &r {
                KeyRange::Key(k) => vec![k.clone()],
                other => c.mvcc.live_keys_in(other),
            };
            keys.iter().filter_map(|k| c.mvcc.delete(k, rev)).collect::<Vec<_>>()
        });
        let mut all: Vec<KeyValue> = Vec::new();
        for (s, p) in parts.into_iter().enumerate() {
            self.touched[s].extend(p.iter().map(|kv| kv.key.clone()));
            all.extend(p);
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }
    fn lease_exists(&mut self, id: LeaseId) -> bool {
        self.f.run(0, move |c| c.mvcc.leases.contains_key(&id))
    }
}

/// Compaction by bytes: with `history` bytes of history over the revisions (compacted,
/// current], the revision to compact to so that about half of `max` is left (half, so that
/// it does not run again at the next tick), taking bytes as spread evenly over revisions; 0
/// while the history is within `max`.
pub fn history_bytes_target(compacted: Revision, current: Revision, history: u64, max: u64) -> Revision {
    if history <= max || current <= compacted {
        return 0;
    }
    let span = current - compacted;
    let keep = (span as u128 * (max / 2) as u128 / history as u128) as u64;
    current - keep.min(span)
}

fn info_of(id: u64, dir: PathBuf, m: &snapshot::Manifest) -> SnapshotInfo {
    SnapshotInfo { id, dir, revision: m.revision, meta: m.meta.clone(), files: snapshot::file_names(m) }
}

/// Merges per-shard sorted range results (each already cut to `limit`), keeping `limit`
/// (0 = all) and summing counts. A k-way merge: the parts are sorted, so nothing is re-sorted.
pub fn merge_ranges(parts: Vec<(Vec<KeyValue>, usize)>, limit: usize) -> (Vec<KeyValue>, usize) {
    let count = parts.iter().map(|p| p.1).sum();
    let total: usize = parts.iter().map(|p| p.0.len()).sum();
    let want = if limit == 0 { total } else { total.min(limit) };
    let mut iters: Vec<std::vec::IntoIter<KeyValue>> = parts.into_iter().map(|p| p.0.into_iter()).collect();
    let mut heads: Vec<Option<KeyValue>> = iters.iter_mut().map(|it| it.next()).collect();
    let mut kvs = Vec::with_capacity(want);
    while kvs.len() < want {
        let mut best: Option<usize> = None;
        for (i, h) in heads.iter().enumerate() {
            if let Some(kv) = h
                && best.is_none_or(|b| kv.key < heads[b].as_ref().expect("best is a head").key) {
                    best = Some(i);
                }
        }
        let Some(b) = best else { break };
        kvs.push(heads[b].take().expect("best is a head"));
        heads[b] = iters[b].next();
    }
    (kvs, count)
}

impl Coordinator {
    pub fn run(mut self, rx: Receiver<CoordMsg>) {
        let tick = Duration::from_millis(500);
        let mut next_tick = Instant::now() + tick;
        loop {
            let timeout = self.next_deadline().min(next_tick).saturating_duration_since(Instant::now());
            match rx.recv_timeout(timeout) {
                Ok(CoordMsg::Shutdown { done }) => {
                    let _ = done.send(());
                    return;
                }
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.expire_leases();
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + tick;
                self.maintenance();
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        self.leases.next().unwrap_or(Instant::now() + Duration::from_secs(3600))
    }

    fn handle(&mut self, msg: CoordMsg) {
        match msg {
            CoordMsg::Txn { req, reply } => {
                let _ = reply.send(self.txn(&req));
            }
            CoordMsg::LeaseGrant { id, ttl, reply } => {
                let _ = reply.send(self.lease_grant(id, ttl));
            }
            CoordMsg::LeaseKeepAlive { id, reply } => {
                let _ = reply.send(self.leases.keep_alive(id, Instant::now()));
            }
            CoordMsg::LeaseTimeToLive { id, reply } => {
                let _ = reply.send(self.leases.time_to_live(id, Instant::now()));
            }
            CoordMsg::OpenSnapshot { reply } => {
                let _ = reply.send(self.open_snapshot());
            }
            CoordMsg::LeaseKeys { id, reply } => {
                let r = if self.leases.contains(id) {
                    let f = Frozen::new(&self.shared);
                    let mut keys: Vec<Bytes> = f.run_all(move |c| c.mvcc.keys_of_lease(id)).into_iter().flatten().collect();
                    keys.sort();
                    Ok(keys)
                } else {
                    Err(StoreError::LeaseNotFound(id))
                };
                let _ = reply.send(r);
            }
            CoordMsg::LeaseList { reply } => {
                let _ = reply.send(Ok(self.leases.ids()));
            }
            CoordMsg::LeaseRevoke { id, reply } => {
                let _ = reply.send(self.lease_revoke(id));
            }
            CoordMsg::Compact { revision, reply } => {
                let _ = reply.send(self.compact(revision));
            }
            CoordMsg::Snapshot { reply } => {
                let _ = reply.send(self.snapshot().map_err(|e| StoreError::Io(format!("snapshot: {e}"))));
            }
            CoordMsg::LeaseApplied { id, ttl } => self.leases.applied(id, ttl, Instant::now()),
            CoordMsg::Lead { lead, extend } => {
                if lead && !self.lead {
                    self.leases.restart_all(extend, Instant::now());
                }
                self.lead = lead;
                self.proposed_compact = 0;
            }
            CoordMsg::SnapshotReplica { reply } => {
                let _ = reply.send(self.snapshot_replica().map_err(|e| StoreError::Io(format!("snapshot: {e}"))));
            }
            CoordMsg::CurrentSnapshot { reply } => {
                let r = snapshot::current(&self.data_dir)
                    .map(|c| c.map(|(id, dir, m)| info_of(id, dir, &m)))
                    .map_err(|e| StoreError::Io(e.to_string()));
                let _ = reply.send(r);
            }
            CoordMsg::ReceiveDir { reply } => {
                let id = self.snapshot_id + 1;
                self.snapshot_id = id;
                let r = snapshot::begin(&self.data_dir, id).map(|d| (id, d)).map_err(|e| StoreError::Io(format!("snapshot: {e}")));
                let _ = reply.send(r);
            }
            CoordMsg::Install { id, dir, expected_meta, reply } => {
                let _ = reply.send(self.install(id, &dir, expected_meta));
            }
            CoordMsg::Shutdown { .. } => unreachable!(),
        }
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match self.shared.failed.get() {
            Some(why) => Err(StoreError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Takes a revision for a cross-shard write (shards are frozen, so none is pending).
    fn take_revision(&self) -> Revision {
        let slot = &self.shared.pending[self.shared.shards];
        slot.store(self.shared.counter.load(SeqCst) + 1, SeqCst);
        self.shared.counter.fetch_add(1, SeqCst) + 1
    }

    fn release_revision(&self) -> Revision {
        self.shared.pending[self.shared.shards].store(NONE, SeqCst);
        self.shared.advance()
    }

    /// Logs `record` in shard 0's log; on failure undoes the changes in every shard.
    fn log(&self, f: &Frozen, record: Record, touched: Vec<Vec<Bytes>>) -> Result<(), StoreError> {
        let result = f.run(0, move |c| {
            let mut fb = FrameBuilder::new();
            fb.push(&record);
            let r = c.wal.append(fb.finish());
            (r, c.wal.bytes_since_snapshot())
        });
        self.shared.wal_bytes[0].store(result.1, SeqCst);
        match result.0 {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = match e {
                    WalError::NoSpace => StoreError::NoSpace,
                    WalError::Write(e) => StoreError::Io(e.to_string()),
                    WalError::Sync(e) => {
                        let why = format!("fdatasync of shard 0's log failed: {e}");
                        let _ = self.shared.failed.set(why.clone());
                        StoreError::Failed(why)
                    }
                };
                Err(err)
            }
        }
        .inspect_err(|_| {
            let counter = self.shared.counter.load(SeqCst);
            for (s, keys) in touched.into_iter().enumerate() {
                if !keys.is_empty() {
                    // Everything this op changed has the newest revision of its key.
                    f.run(s, move |c| c.mvcc.rollback(&keys, counter));
                }
            }
        })
    }

    /// Queues each event on the shard that owns its key (its watchers live there).
    fn publish(&self, f: &Frozen, rev: Revision, events: Vec<Event>) {
        let mut per: Vec<Vec<(u32, Event)>> = vec![Vec::new(); self.shared.shards];
        for (i, e) in events.into_iter().enumerate() {
            per[self.shared.shard_of(&e.kv.key)].push((i as u32, e));
        }
        for (s, evs) in per.into_iter().enumerate() {
            f.run(s, move |c| {
                c.note_applied(rev);
                for (sub, e) in evs {
                    c.publish(rev, sub, e);
                }
            });
        }
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, StoreError> {
        self.check_failed()?;
        let f = Frozen::new(&self.shared);
        let current = self.shared.visible.load(SeqCst);
        let mut ks = AllShards { f: &f, shared: &self.shared, touched: vec![Vec::new(); self.shared.shards] };
        let mut taken = None;
        let mut alloc = || *taken.get_or_insert_with(|| self.take_revision());
        let compacted = self.shared.compact_revision.load(SeqCst);
        let outcome = txn::eval(&mut ks, req, &mut alloc, current, compacted);
        let touched = std::mem::take(&mut ks.touched);
        let result = match outcome {
            Ok(o) => match o.revision {
                Some(rev) => {
                    let record = Record { revision: rev, changes: o.changes, ..Default::default() };
                    self.log(&f, record, touched).map(|()| {
                        self.publish(&f, rev, o.events);
                        TxnResponse { revision: rev, succeeded: o.succeeded, responses: o.responses }
                    })
                }
                None => Ok(TxnResponse { revision: current, succeeded: o.succeeded, responses: o.responses }),
            },
            Err(e) => Err(e),
        };
        drop(f);
        if taken.is_some() {
            self.release_revision();
        }
        result
    }

    fn lease_grant(&mut self, id: LeaseId, ttl: i64) -> Result<LeaseGrant, StoreError> {
        self.check_failed()?;
        if ttl <= 0 {
            return Err(StoreError::Invalid(format!("lease TTL must be positive, got {ttl}")));
        }
        let id = if id == 0 { self.fresh_lease_id() } else { id };
        if id < 0 {
            return Err(StoreError::Invalid("lease IDs are positive".into()));
        }
        if self.leases.contains(id) {
            return Err(StoreError::LeaseExists(id));
        }
        let f = Frozen::new(&self.shared);
        let record = Record {
            revision: self.shared.counter.load(SeqCst),
            lease_grants: vec![(id, ttl)],
            ..Default::default()
        };
        self.log(&f, record, vec![])?;
        f.run_all(move |c| c.mvcc.leases.insert(id, ttl));
        drop(f);
        self.leases.applied(id, Some(ttl), Instant::now());
        Ok(LeaseGrant { id, ttl_seconds: ttl })
    }

    fn fresh_lease_id(&self) -> LeaseId {
        let mut id = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64)
            .abs()
            .max(1);
        while self.leases.contains(id) {
            id += 1;
        }
        id
    }

    fn lease_revoke(&mut self, id: LeaseId) -> Result<Revision, StoreError> {
        self.check_failed()?;
        if !self.leases.contains(id) {
            return Err(StoreError::LeaseNotFound(id));
        }
        let f = Frozen::new(&self.shared);
        let mut keys: Vec<Bytes> = f.run_all(move |c| c.mvcc.keys_of_lease(id)).into_iter().flatten().collect();
        keys.sort();
        let mut rev = None;
        let mut events = Vec::new();
        let mut touched = vec![Vec::new(); self.shared.shards];
        if !keys.is_empty() {
            let r = self.take_revision();
            rev = Some(r);
            for k in &keys {
                let s = self.shared.shard_of(k);
                touched[s].push(k.clone());
                let k2 = k.clone();
                if let Some(prev) = f.run(s, move |c| c.mvcc.delete(&k2, r)) {
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue { key: k.clone(), value: Bytes::new(), create_revision: 0, mod_revision: r, version: 0, lease: 0 },
                        prev_kv: Some(prev),
                    });
                }
            }
        }
        let record = Record {
            revision: rev.unwrap_or_else(|| self.shared.counter.load(SeqCst)),
            changes: keys.iter().map(|k| Change::Delete { key: k.clone() }).collect(),
            lease_revokes: vec![id],
            ..Default::default()
        };
        let result = self.log(&f, record, touched);
        if result.is_ok() {
            if let Some(r) = rev {
                self.publish(&f, r, events);
            }
            f.run_all(move |c| c.mvcc.leases.remove(&id));
            self.leases.applied(id, None, Instant::now());
        }
        drop(f);
        let visible = if rev.is_some() { self.release_revision() } else { self.shared.visible.load(SeqCst) };
        result.map(|()| rev.unwrap_or(visible))
    }

    fn expire_leases(&mut self) {
        if !self.lead {
            return;
        }
        // Each expired lease is looked at again in a second unless its revocation removes it.
        let expired = self.leases.expired(Instant::now());
        if self.shared.replication.is_some() {
            // The revocation goes through the log; the lease leaves this table when it is
            // applied.
            for id in expired {
                self.propose(Command::LeaseRevoke { id });
            }
            return;
        }
        for id in expired {
            match self.lease_revoke(id) {
                Ok(_) => tracing::debug!(lease = id, "lease expired and was revoked"),
                Err(e) => {
                    tracing::warn!(lease = id, error = %e, "revoking an expired lease failed; retrying later");
                }
            }
        }
    }

    pub fn compact(&mut self, revision: Revision) -> Result<(), StoreError> {
        self.check_failed()?;
        let visible = self.shared.visible.load(SeqCst);
        if revision > visible {
            return Err(StoreError::FutureRevision { requested: revision, current: visible });
        }
        let compacted = self.shared.compact_revision.load(SeqCst);
        if revision <= compacted {
            return Err(StoreError::Compacted { requested: revision, compact_revision: compacted });
        }
        let f = Frozen::new(&self.shared);
        let record = Record { revision: self.shared.counter.load(SeqCst), compact: revision, ..Default::default() };
        self.log(&f, record, vec![])?;
        self.shared.compact_revision.store(revision, SeqCst);
        let shared = self.shared.clone();
        f.run_all(move |c| {
            c.mvcc.compact(revision);
            shared.history_bytes[c.id as usize].store(c.mvcc.history_value_bytes(), SeqCst);
        });
        Ok(())
    }

    /// The snapshot in force, its files open. Read-only: unlike `snapshot::current` nothing
    /// unfinished is cleaned up (a snapshot being received may be in `snap/`).
    fn open_snapshot(&self) -> Result<(Revision, Vec<(String, std::fs::File, u64)>), StoreError> {
        let io = |what: &str, e: std::io::Error| StoreError::Io(format!("{what}: {e}"));
        let name = std::fs::read_to_string(self.data_dir.join("CURRENT")).map_err(|e| io("no snapshot in force", e))?;
        let dir = snapshot::snap_root(&self.data_dir).join(name.trim());
        let text = std::fs::read_to_string(dir.join("MANIFEST")).map_err(|e| io("the snapshot's MANIFEST", e))?;
        let m = snapshot::Manifest::decode(&text).map_err(|e| StoreError::Io(format!("the snapshot's MANIFEST: {e}")))?;
        let mut files = Vec::new();
        for n in snapshot::file_names(&m) {
            let f = std::fs::File::open(dir.join(&n)).map_err(|e| io(&n, e))?;
            let len = f.metadata().map_err(|e| io(&n, e))?.len();
            files.push((n, f, len));
        }
        Ok((m.revision, files))
    }

    /// Writes a snapshot of every shard at one revision, then drops the log it covers.
    pub fn snapshot(&mut self) -> std::io::Result<Revision> {
        let id = self.snapshot_id + 1;
        self.snapshot_id = id; // never reused, even if this attempt fails
        let dir = snapshot::begin(&self.data_dir, id)?;
        let shards = self.shared.shards as u32;
        let (revision, copies) = self.copy_shards(|c| c.wal.position());
        let written = write_shards(&dir, shards, revision, &copies, self.shared.cfg.snapshot_chunk_bytes);
        let positions: Vec<crate::wal::Position> = copies.into_iter().map(|(_, pos)| pos).collect();
        let chunks = written?;
        let manifest = snapshot::Manifest {
            shards,
            revision,
            compact_revision: self.shared.compact_revision.load(SeqCst),
            positions: positions.clone(),
            chunks,
            meta: Bytes::new(),
        };
        snapshot::commit(&self.data_dir, &dir, id, &manifest)?;
        self.snapshot_revision = revision;
        self.note_snapshot_size(id);
        self.shared.snapshot_revision.store(revision, SeqCst);
        let removed = Frozen::new(&self.shared).run_all(move |c| {
            c.wal.truncate_before(positions[c.id as usize])
        });
        for (s, r) in removed.into_iter().enumerate() {
            self.shared.wal_bytes[s].store(0, SeqCst);
            if let Err(e) = r {
                tracing::warn!(shard = s, error = %e, "removing log segments covered by the snapshot failed; recovery skips them");
            }
        }
        Ok(revision)
    }

    /// Publishes the size of snapshot `id`, now in force, for the snapshot policy.
    fn note_snapshot_size(&self, id: u64) {
        let dir = snapshot::snap_root(&self.data_dir).join(format!("{id:016x}"));
        self.shared.snapshot_bytes.store(snapshot::bytes_on_disk(&dir), SeqCst);
    }

    /// Every shard's index copied at one revision, with what `also` reads of each shard at that
    /// point (its log position, its raft position). Shards stand still only while they copy
    /// (about a tenth of writing the snapshot); the files are written after they go on.
    fn copy_shards<T: Send + 'static>(&self, also: impl Fn(&mut ShardCore) -> T + Send + Sync + Clone + 'static) -> (Revision, Vec<(SnapshotCopy, T)>) {
        let f = Frozen::new(&self.shared);
        let revision = self.shared.counter.load(SeqCst);
        let copies = f.run_all(move |c| (c.mvcc.snapshot_copy(), also(c)));
        (revision, copies)
    }

    /// Replicated mode: proposes a command the store itself decided (an expiry, a compaction).
    fn propose(&self, cmd: Command) {
        let (Some(rt), Some(repl)) = (&self.runtime, &self.shared.replication) else { return };
        let fut = repl.propose(cmd.clone());
        rt.spawn(async move {
            match fut.await {
                Ok(a) => {
                    if let Some(e) = a.error() {
                        tracing::debug!(command = ?cmd, error = %e, "a proposal of the store's own was refused");
                    }
                }
                Err(e) => tracing::warn!(command = ?cmd, error = %e, "a proposal of the store's own failed; retrying later"),
            }
        });
    }

    /// Replicated mode: snapshots the applied state with the raft position it covers. The log
    /// is the raft layer's: nothing is truncated here.
    fn snapshot_replica(&mut self) -> std::io::Result<SnapshotInfo> {
        let id = self.snapshot_id + 1;
        self.snapshot_id = id;
        let dir = snapshot::begin(&self.data_dir, id)?;
        let shards = self.shared.shards as u32;
        let (revision, copies) = self.copy_shards(|c| c.raft_meta.clone());
        let chunks = write_shards(&dir, shards, revision, &copies, self.shared.cfg.snapshot_chunk_bytes)?;
        let meta = copies.into_iter().last().map(|(_, m)| m).unwrap_or_default();
        let manifest = snapshot::Manifest {
            shards,
            revision,
            compact_revision: self.shared.compact_revision.load(SeqCst),
            positions: vec![crate::wal::Position { seq: 0, offset: 0 }; shards as usize],
            chunks,
            meta,
        };
        snapshot::commit(&self.data_dir, &dir, id, &manifest)?;
        self.snapshot_revision = revision;
        self.note_snapshot_size(id);
        self.shared.snapshot_revision.store(revision, SeqCst);
        Ok(info_of(id, snapshot::snap_root(&self.data_dir).join(format!("{id:016x}")), &manifest))
    }

    /// Replicated mode: installs a snapshot received into `dir` (see `StateMachine::install`).
    fn install(&mut self, id: u64, dir: &std::path::Path, expected_meta: Option<Bytes>) -> Result<SnapshotInfo, StoreError> {
        let bad = |why: String| StoreError::Invalid(format!("received snapshot in {}: {why}", dir.display()));
        let text = std::fs::read_to_string(dir.join("MANIFEST")).map_err(|e| bad(format!("reading MANIFEST: {e}")))?;
        let manifest = snapshot::Manifest::decode(&text).map_err(bad)?;
        if manifest.shards as usize != self.shared.shards {
            return Err(bad(format!("it has {} shards, this store {}", manifest.shards, self.shared.shards)));
        }
        if let Some(want) = expected_meta
            && want != manifest.meta
        {
            return Err(bad("its manifest covers another raft position than the one it was sent for".into()));
        }
        let visible = self.shared.visible.load(SeqCst);
        if manifest.revision < visible {
            return Err(bad(format!("its revision {} is older than this store's {visible}", manifest.revision)));
        }
        let mut mvccs = Vec::new();
        for s in 0..manifest.shards {
            mvccs.push(snapshot::load_shard(dir, s, &manifest).map_err(|e| bad(e.to_string()))?);
        }
        snapshot::commit(&self.data_dir, dir, id, &manifest).map_err(|e| StoreError::Io(format!("installing a snapshot: {e}")))?;
        let leases: Vec<(LeaseId, i64)> = mvccs.first().map(|m| m.leases.iter().map(|(a, b)| (*a, *b)).collect()).unwrap_or_default();
        let f = Frozen::new(&self.shared);
        let (revision, meta) = (manifest.revision, manifest.meta.clone());
        for (s, m) in mvccs.into_iter().enumerate() {
            let meta = meta.clone();
            f.run(s, move |c| c.install(m, meta, revision));
        }
        self.shared.counter.fetch_max(revision, SeqCst);
        self.shared.compact_revision.store(manifest.compact_revision, SeqCst);
        *self.shared.raft_meta.lock().unwrap() = meta;
        self.shared.advance();
        drop(f);
        self.leases = Deadlines::from_ttls(leases, Instant::now());
        self.snapshot_revision = revision;
        self.note_snapshot_size(id);
        self.shared.snapshot_revision.store(revision, SeqCst);
        tracing::info!(revision, "installed a snapshot received from the leader");
        Ok(info_of(id, snapshot::snap_root(&self.data_dir).join(format!("{id:016x}")), &manifest))
    }

    /// Automatic compaction and snapshots, checked on the coordinator's tick.
    fn maintenance(&mut self) {
        let cfg = self.shared.cfg.clone();
        let rev = self.shared.visible.load(SeqCst);
        let now = Instant::now();
        self.history.push_back((now, rev));
        let mut target = 0;
        if let Some(age) = cfg.compact_retention_age {
            while self.history.len() > 1 && now.duration_since(self.history[1].0) >= age {
                self.history.pop_front();
            }
            if let Some((t, r)) = self.history.front()
                && now.duration_since(*t) >= age {
                    target = *r;
                }
        } else {
            self.history.clear();
        }
        if let Some(keep) = cfg.compact_retention_revisions {
            target = target.max(rev.saturating_sub(keep));
        }
        if let Some(max) = cfg.compact_history_bytes_max
            && self.bytes_compacted_at.is_none_or(|t| now.duration_since(t) >= BYTES_COMPACTION_INTERVAL)
        {
            let history: u64 = self.shared.history_bytes.iter().map(|b| b.load(SeqCst)).sum();
            let by_bytes = history_bytes_target(self.shared.compact_revision.load(SeqCst), rev, history, max);
            if by_bytes > target {
                target = by_bytes;
                self.bytes_compacted_at = Some(now);
            }
        }
        if self.shared.replication.is_some() {
            // The leader proposes compactions; a proposal in flight is not repeated.
            if self.lead && target > self.shared.compact_revision.load(SeqCst) && target > self.proposed_compact {
                self.proposed_compact = target;
                self.propose(Command::Compact { revision: target });
            }
            return;
        }
        if target > self.shared.compact_revision.load(SeqCst)
            && let Err(e) = self.compact(target) {
                tracing::warn!(error = %e, "automatic compaction failed");
            }
        let wal: u64 = self.shared.wal_bytes.iter().map(|b| b.load(SeqCst)).sum();
        if snapshot_due(wal, self.shared.snapshot_bytes.load(SeqCst), cfg.snapshot_wal_bytes, cfg.snapshot_log_ratio) && self.shared.failed.get().is_none()
            && let Err(e) = self.snapshot() {
                tracing::warn!(error = %e, "automatic snapshot failed; the log keeps growing until one succeeds");
            }
    }
}

/// Whether the logs since the last snapshot (`log` bytes) call for another: at `floor` bytes,
/// and not before they are `ratio` times the last snapshot (`last` bytes), whose cost the next
/// one will repeat.
pub fn snapshot_due(log: u64, last: u64, floor: u64, ratio: u64) -> bool {
    log >= floor.max(last.saturating_mul(ratio))
}

/// Writes every shard's copy into the snapshot being built in `dir`, one thread per shard (as
/// when the shards wrote their own). Returns the chunk count of each.
fn write_shards<T: Sync>(dir: &std::path::Path, shards: u32, revision: Revision, copies: &[(SnapshotCopy, T)], chunk_bytes: usize) -> std::io::Result<Vec<u32>> {
    std::thread::scope(|scope| {
        let writers: Vec<_> = copies
            .iter()
            .enumerate()
            .map(|(s, (copy, _))| scope.spawn(move || snapshot::write_shard(dir, s as u32, shards, revision, copy, chunk_bytes)))
            .collect();
        // Every writer joined before the first error is taken: a scope whose panicked thread
        // was left unjoined panics itself, which took the coordinator down with it.
        let joined: Vec<_> = writers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(std::io::Error::other("a snapshot writer panicked")))).collect();
        joined.into_iter().collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_the_floor_and_for_ratio_times_the_last() {
        let (mib, floor) = (1u64 << 20, 512u64 << 20);
        assert!(!snapshot_due(floor - 1, 0, floor, 2), "below the floor, without a snapshot yet");
        assert!(snapshot_due(floor, 0, floor, 2), "at the floor, without a snapshot yet");
        assert!(snapshot_due(floor, 100 * mib, floor, 2), "a small state: the floor decides");
        assert!(!snapshot_due(floor, 1024 * mib, floor, 2), "a 1 GiB state: 2 GiB of log first");
        assert!(!snapshot_due(2048 * mib - 1, 1024 * mib, floor, 2));
        assert!(snapshot_due(2048 * mib, 1024 * mib, floor, 2));
        assert!(snapshot_due(floor, 1024 * mib, floor, 0), "ratio 0: the floor alone");
        assert!(!snapshot_due(floor, u64::MAX, floor, 1) && !snapshot_due(u64::MAX - 1, u64::MAX, floor, 2), "no overflow");
    }

    #[test]
    fn compaction_by_bytes_keeps_about_half_the_bound() {
        assert_eq!(history_bytes_target(100, 1100, 1 << 20, 1 << 20), 0, "within the bound");
        // Twice the bound over 1,000 revisions: keep a quarter of them (half the bound).
        assert_eq!(history_bytes_target(100, 1100, 2 << 20, 1 << 20), 850);
        assert_eq!(history_bytes_target(100, 100, 2 << 20, 1 << 20), 0, "nothing to compact");
        // A bound of 0 compacts everything.
        assert_eq!(history_bytes_target(100, 1100, 1, 0), 1100);
    }

    fn kv(k: &str) -> KeyValue {
        KeyValue { key: Bytes::copy_from_slice(k.as_bytes()), value: Bytes::new(), create_revision: 1, mod_revision: 1, version: 1, lease: 0 }
    }

    #[test]
    fn merging_shard_ranges_keeps_key_order_limit_and_total_count() {
        let parts = vec![(vec![kv("a"), kv("d"), kv("e")], 3), (vec![kv("b"), kv("c")], 7), (vec![], 0)];
        let (kvs, count) = merge_ranges(parts.clone(), 0);
        let keys: Vec<_> = kvs.iter().map(|k| k.key.clone()).collect();
        assert_eq!(keys, vec!["a", "b", "c", "d", "e"]);
        assert_eq!(count, 10);
        let (kvs, _) = merge_ranges(parts, 2);
        assert_eq!(kvs.len(), 2);
        assert_eq!(kvs[1].key, "b");
    }
}

