//! The public handle: routing requests to shards, recovery at open, and watch streams that
//! merge the shards' events into revision order.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam::channel::{Sender, bounded, unbounded};
use tokio::sync::{mpsc, oneshot};

use crate::command::{Applied, Command};
use crate::coord::{CoordMsg, Coordinator, merge_ranges};
use crate::replicated::{NoLog, Replication, StateMachine};
use crate::error::{OpenError, StoreError, WatchError};
use crate::lease_deadlines::Deadlines;
use crate::mvcc::Mvcc;
use crate::shard::{ShardCore, ShardMsg, WatchItem, WatchRegistration, WatchShared};
use crate::shared::{NONE, Shared};
use crate::snapshot;
use crate::types::*;
use crate::wal::{self, Change, Position, Record, SEGMENT_HEADER_BYTES, WalWriter};

/// How a store is opened. Every limit has its unit last.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Shards (threads), one per core by default.
    pub shards: usize,
    /// `false` only with `--unsafe-no-fsync`: writes are acknowledged before they are durable.
    pub fsync: bool,
    /// Largest request (keys plus values), as etcd's `--max-request-bytes`.
    pub request_bytes_max: usize,
    pub segment_bytes: u64,
    /// A batch (one log frame, one sync) ends at this many requests or bytes.
    pub batch_requests_max: usize,
    pub batch_bytes_max: usize,
    /// Client requests queued per shard before callers wait.
    pub shard_queue_requests_max: usize,
    /// Events queued per watcher before it is closed as too slow.
    pub watch_queue_events_max: usize,
    /// Snapshot once the logs since the last one hold this many bytes, and at least
    /// `snapshot_log_ratio` times the last snapshot's size.
    pub snapshot_wal_bytes: u64,
    /// A snapshot writes the whole state (every live value and the history kept), so its cost
    /// grows with the state, not with the writes since the last one: with the log allowed to
    /// reach this multiple of the last snapshot's size, snapshots write at most 1/ratio of a
    /// byte per byte logged, whatever the state's size. The price is disk (the log, up to this
    /// multiple of the state) and the replay at open. 0 or 1: `snapshot_wal_bytes` alone.
    pub snapshot_log_ratio: u64,
    /// A snapshot's chunk file is sealed at this many bytes; a shard's flatbuffers builder
    /// holds 1.5 times this while the snapshot is written (3 times, if the entry that
    /// crosses the bound does not fit).
    pub snapshot_chunk_bytes: usize,
    /// Automatic compaction: keep this many revisions of history.
    pub compact_retention_revisions: Option<u64>,
    /// Automatic compaction: keep history this old.
    pub compact_retention_age: Option<Duration>,
    /// Automatic compaction: keep at most about this many bytes of history (values of
    /// overwritten and deleted revisions), whatever their age.
    pub compact_history_bytes_max: Option<u64>,
    /// Pin shard threads to cores.
    pub pin_threads: bool,
    /// How log frames reach the disk (tests put a disk that loses unsynced writes here).
    pub log_io: wal::LogIo,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            fsync: true,
            request_bytes_max: 3 << 19, // 1.5 MiB
            segment_bytes: 64 << 20,
            batch_requests_max: 1024,
            batch_bytes_max: 4 << 20,
            shard_queue_requests_max: 8192,
            watch_queue_events_max: 10_000,
            snapshot_wal_bytes: 512 << 20,
            snapshot_log_ratio: 2,
            snapshot_chunk_bytes: crate::snapshot::SNAPSHOT_CHUNK_BYTES,
            compact_retention_revisions: None,
            compact_retention_age: None,
            compact_history_bytes_max: None,
            pin_threads: true,
            log_io: wal::LogIo::Uring,
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// Held (flock) while the store is open: one process per data directory.
    _lock: std::fs::File,
    coord: Sender<CoordMsg>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (tx, rx) = bounded(self.shared.shards + 1);
        let _ = self.coord.send(CoordMsg::Shutdown { done: tx.clone() });
        let _ = rx.recv_timeout(Duration::from_secs(30));
        for inbox in &self.shared.inbox {
            let _ = inbox.send(ShardMsg::Shutdown { done: tx.clone() });
        }
        for h in self.threads.lock().unwrap().drain(..) {
            let _ = h.join();
        }
    }
}

/// A handle to the store. Cheap to clone; the store stops when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (recovering) or creates the store in `cfg.data_dir` and starts its threads.
    pub fn open(cfg: Config) -> Result<Store, OpenError> {
        Store::open_with(cfg, None)
    }

    /// Opens a replicated store (one shard, no log of its own: see `replicated.rs`) from its
    /// latest snapshot. Writes go to `replication`; committed entries come back through the
    /// returned [`StateMachine`]. Must be called from within a tokio runtime (the store spawns
    /// its own proposals of lease expiry and compaction on it).
    pub fn open_replica(cfg: Config, replication: Arc<dyn Replication>) -> Result<(Store, StateMachine), OpenError> {
        if cfg.shards != 1 {
            return Err(OpenError::Config(format!("a replicated store has one shard (apply is serial in log order), got {}", cfg.shards)));
        }
        let store = Store::open_with(cfg, Some(replication))?;
        let sm = StateMachine { shared: store.inner.shared.clone(), coord: store.inner.coord.clone() };
        Ok((store, sm))
    }

    fn open_with(cfg: Config, replication: Option<Arc<dyn Replication>>) -> Result<Store, OpenError> {
        if cfg.shards == 0 || cfg.shards > 256 {
            return Err(OpenError::Config(format!("shards must be 1..=256, got {}", cfg.shards)));
        }
        if cfg.batch_bytes_max + cfg.request_bytes_max + (1 << 16) > (cfg.segment_bytes - SEGMENT_HEADER_BYTES) as usize {
            return Err(OpenError::Config("segment_bytes must exceed batch_bytes_max + request_bytes_max".into()));
        }
        if !cfg.fsync {
            tracing::warn!(
                "!!! --unsafe-no-fsync: writes are acknowledged BEFORE they are durable; a crash or power loss loses acknowledged writes. Never use this for data you keep. !!!"
            );
        }
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| OpenError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let recovered = if replication.is_some() { recover_replica(&cfg)? } else { recover(&cfg)? };
        let n = cfg.shards;
        let mut inbox = Vec::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = unbounded();
            inbox.push(tx);
            rxs.push(rx);
        }
        let (coord_tx, coord_rx) = unbounded();
        let runtime = if replication.is_some() { tokio::runtime::Handle::try_current().ok() } else { None };
        let replicated = replication.is_some();
        let shared = Arc::new(Shared::new(cfg.clone(), recovered.revision, recovered.compact, inbox, coord_tx.clone(), replication));
        shared.snapshot_revision.store(recovered.snapshot_revision, SeqCst);
        shared.snapshot_bytes.store(recovered.snapshot_bytes, SeqCst);
        *shared.raft_meta.lock().unwrap() = recovered.raft_meta.clone();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::new();
        for ((s, (mvcc, writer)), rx) in recovered.shards.into_iter().enumerate().zip(rxs) {
            let mut core = ShardCore::new(s as u32, mvcc, writer, shared.clone());
            core.note_applied(recovered.revision);
            core.raft_meta = recovered.raft_meta.clone();
            let pin = if cfg.pin_threads && !cores.is_empty() { Some(cores[s % cores.len()]) } else { None };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{s}"))
                    .spawn(move || {
                        if let Some(c) = pin {
                            core_affinity::set_for_current(c);
                        }
                        core.run(rx)
                    })
                    .map_err(|e| OpenError::io(dir, e))?,
            );
        }
        let now = std::time::Instant::now();
        let coordinator = Coordinator {
            shared: shared.clone(),
            data_dir: dir.clone(),
            leases: Deadlines::from_ttls(recovered.leases.iter().copied(), now),
            snapshot_id: recovered.snapshot_id,
            snapshot_revision: recovered.snapshot_revision,
            history: VecDeque::new(),
            // A replica decides nothing until the raft layer says it leads.
            lead: !replicated,
            runtime,
            proposed_compact: 0,
            bytes_compacted_at: None,
        };
        threads.push(
            std::thread::Builder::new()
                .name("coordinator".into())
                .spawn(move || coordinator.run(coord_rx))
                .map_err(|e| OpenError::io(dir, e))?,
        );
        tracing::info!(
            revision = recovered.revision,
            shards = n,
            replayed_records = recovered.replayed,
            "store open"
        );
        Ok(Store { inner: Arc::new(Inner { shared, _lock: lock, coord: coord_tx, threads: Mutex::new(threads) }) })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The newest visible revision.
    pub fn revision(&self) -> Revision {
        self.shared().visible.load(SeqCst)
    }

    pub fn compact_revision(&self) -> Revision {
        self.shared().compact_revision.load(SeqCst)
    }

    pub fn shards(&self) -> usize {
        self.shared().shards
    }

    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<PutResponse, StoreError> {
        self.put_with(PutRequest { key: key.into(), value: value.into(), lease: 0, prev_kv: false }).await
    }

    pub async fn put_with(&self, req: PutRequest) -> Result<PutResponse, StoreError> {
        let resp = self.txn(TxnRequest { compare: vec![], success: vec![TxnOp::Put(req)], failure: vec![] }).await?;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Put(p)) => Ok(p),
            _ => unreachable!("a put txn answers a put"),
        }
    }

    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.range(RangeRequest::key(key)).await?.kvs.into_iter().next())
    }

    pub async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse, StoreError> {
        let resp = self.txn(TxnRequest { compare: vec![], success: vec![TxnOp::Delete(req)], failure: vec![] }).await?;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => Ok(d),
            _ => unreachable!("a delete txn answers a delete"),
        }
    }

    /// Reads a key, a prefix or a range at one revision, from every shard that may hold it.
    /// Linearizable: on a replica, a read at the newest revision (or at one this replica has
    /// not applied yet) first waits for a read index.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        if let Some(repl) = &self.shared().replication {
            let visible = self.revision();
            if req.revision.is_none_or(|r| r == 0 || r > visible) {
                repl.read_barrier().await?;
            }
        }
        self.range_serializable(req).await
    }

    /// A read of what this replica has applied, without asking the leader (etcd's
    /// serializable read; Kubernetes' `resourceVersion=0`). The same as `range` unreplicated.
    pub async fn range_serializable(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        let sh = self.shared();
        let visible = sh.visible.load(SeqCst);
        let rev = match req.revision {
            None | Some(0) => visible,
            Some(r) if r > visible => return Err(StoreError::FutureRevision { requested: r, current: visible }),
            Some(r) => r,
        };
        let compacted = sh.compact_revision.load(SeqCst);
        if rev < compacted {
            return Err(StoreError::Compacted { requested: rev, compact_revision: compacted });
        }
        let targets: Vec<usize> = match req.range.single_key() {
            Some(k) => vec![sh.shard_of(k)],
            None => (0..sh.shards).collect(),
        };
        let mut rxs = Vec::with_capacity(targets.len());
        for s in targets {
            let permit = sh.permits[s].clone().acquire_owned().await.map_err(|_| StoreError::Shutdown)?;
            let (tx, rx) = oneshot::channel();
            sh.inbox[s]
                .send(ShardMsg::Read { req: req.clone(), revision: rev, reply: tx, permit })
                .map_err(|_| StoreError::Shutdown)?;
            rxs.push(rx);
        }
        if rxs.len() == 1 {
            return rxs.pop().unwrap().await.map_err(|_| StoreError::Shutdown)?;
        }
        let mut parts = Vec::with_capacity(rxs.len());
        for rx in rxs {
            let r = rx.await.map_err(|_| StoreError::Shutdown)??;
            parts.push((r.kvs, r.count));
        }
        let (kvs, count) = merge_ranges(parts, req.limit);
        Ok(RangeResponse { revision: rev, more: req.more(count), kvs, count })
    }

    /// Runs a txn: on its shard when all its keys live in one, else through the coordinator.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, StoreError> {
        let sh = self.shared();
        crate::txn::validate(&req, sh.cfg.request_bytes_max)?;
        if let Some(repl) = &sh.replication {
            return match repl.propose(Command::Txn(req)).await? {
                Applied::Txn(r) => r,
                other => Err(StoreError::Io(format!("a txn was answered as {other:?}"))),
            };
        }
        if let Some(why) = sh.failed.get() {
            return Err(StoreError::Failed(why.clone()));
        }
        match self.home_shard(&req) {
            Some(s) => {
                let permit = sh.permits[s].clone().acquire_owned().await.map_err(|_| StoreError::Shutdown)?;
                let (tx, rx) = oneshot::channel();
                sh.inbox[s].send(ShardMsg::Txn { req, reply: tx, permit }).map_err(|_| StoreError::Shutdown)?;
                rx.await.map_err(|_| StoreError::Shutdown)?
            }
            None => self.coord(|reply| CoordMsg::Txn { req, reply }).await,
        }
    }

    /// The one shard a txn touches, if it touches one.
    fn home_shard(&self, req: &TxnRequest) -> Option<usize> {
        let sh = self.shared();
        if sh.shards == 1 {
            return Some(0);
        }
        let mut home = None;
        let mut visit = |key: &Bytes| -> bool {
            let s = sh.shard_of(key);
            *home.get_or_insert(s) == s
        };
        for c in &req.compare {
            // A compare over a range reads every shard.
            if c.range_end.is_some() || !visit(&c.key) {
                return None;
            }
        }
        for op in req.success.iter().chain(&req.failure) {
            let single = match op {
                TxnOp::Put(p) => Some(&p.key),
                TxnOp::Delete(d) => d.range.single_key(),
                TxnOp::Range(r) => r.range.single_key(),
                // A nested txn is run by the coordinator (over every shard, frozen).
                TxnOp::Txn(_) => None,
            };
            match single {
                Some(k) if visit(k) => {}
                _ => return None,
            }
        }
        Some(home.unwrap_or(0))
    }

    async fn coord<T>(&self, msg: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> CoordMsg) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner.coord.send(msg(tx)).map_err(|_| StoreError::Shutdown)?;
        rx.await.map_err(|_| StoreError::Shutdown)?
    }

    /// Grants a lease (`id` 0 picks one). Keys put with it are deleted when it expires.
    pub async fn lease_grant(&self, id: LeaseId, ttl_seconds: i64) -> Result<LeaseGrant, StoreError> {
        if let Some(repl) = &self.shared().replication {
            // The id enters the log, so it is chosen here, once, not by each replica.
            let id = if id == 0 { (rand_u64() >> 1).max(1) as LeaseId } else { id };
            return match repl.propose(Command::LeaseGrant { id, ttl_seconds }).await? {
                Applied::LeaseGrant(r) => r,
                other => Err(StoreError::Io(format!("a lease grant was answered as {other:?}"))),
            };
        }
        self.coord(|reply| CoordMsg::LeaseGrant { id, ttl: ttl_seconds, reply }).await
    }

    /// Renews a lease's TTL; returns it. (On a replica: on the leader, where deadlines live.)
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        match &self.shared().replication {
            Some(repl) => repl.lease_keep_alive(id).await,
            None => self.local_lease_keep_alive(id).await,
        }
    }

    /// `(granted TTL, remaining seconds)` of a lease. (On a replica: as the leader knows it.)
    pub async fn lease_time_to_live(&self, id: LeaseId) -> Result<(i64, i64), StoreError> {
        match &self.shared().replication {
            Some(repl) => repl.lease_time_to_live(id).await,
            None => self.local_lease_time_to_live(id).await,
        }
    }

    /// Renews a lease's deadline in this process's table (the replication layer calls it on
    /// the leader).
    pub async fn local_lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.coord(|reply| CoordMsg::LeaseKeepAlive { id, reply }).await
    }

    /// A lease's TTL and remaining time in this process's table.
    pub async fn local_lease_time_to_live(&self, id: LeaseId) -> Result<(i64, i64), StoreError> {
        self.coord(|reply| CoordMsg::LeaseTimeToLive { id, reply }).await
    }

    /// The leases alive in this process's table (every replica applies grants and
    /// revocations, so any replica's table is the cluster's), in id order.
    pub async fn lease_ids(&self) -> Result<Vec<LeaseId>, StoreError> {
        self.coord(|reply| CoordMsg::LeaseList { reply }).await
    }

    /// The keys attached to lease `id` in this process's state, in key order (what etcd's
    /// `LeaseTimeToLive` with keys lists).
    pub async fn lease_keys(&self, id: LeaseId) -> Result<Vec<Bytes>, StoreError> {
        self.coord(|reply| CoordMsg::LeaseKeys { id, reply }).await
    }

    /// Revokes a lease, deleting its keys at one revision.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, StoreError> {
        if let Some(repl) = &self.shared().replication {
            return match repl.propose(Command::LeaseRevoke { id }).await? {
                Applied::LeaseRevoke(r) => r,
                other => Err(StoreError::Io(format!("a lease revocation was answered as {other:?}"))),
            };
        }
        self.coord(|reply| CoordMsg::LeaseRevoke { id, reply }).await
    }

    /// Drops history before `revision`.
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        if let Some(repl) = &self.shared().replication {
            return match repl.propose(Command::Compact { revision }).await? {
                Applied::Compact(r) => r,
                other => Err(StoreError::Io(format!("a compaction was answered as {other:?}"))),
            };
        }
        self.coord(|reply| CoordMsg::Compact { revision, reply }).await
    }

    /// Writes a snapshot now; returns its revision.
    pub async fn snapshot(&self) -> Result<Revision, StoreError> {
        if let Some(repl) = &self.shared().replication {
            return repl.snapshot().await;
        }
        self.coord(|reply| CoordMsg::Snapshot { reply }).await
    }

    /// A backup: a snapshot taken now, as one file's bytes handed out in pieces
    /// (`backup::SnapshotStream`; read with `backup::status`, restored with
    /// `backup::restore`).
    pub async fn snapshot_stream(&self) -> Result<crate::backup::SnapshotStream, StoreError> {
        self.snapshot().await?;
        let (revision, files) = self.coord(|reply| CoordMsg::OpenSnapshot { reply }).await?;
        Ok(crate::backup::SnapshotStream::new(files, revision))
    }

    /// Whether writes go through a replication layer.
    pub fn is_replicated(&self) -> bool {
        self.shared().replication.is_some()
    }

    /// The revision a consistent read must see: on a replica, after a read index (everything
    /// committed before the call is applied here); otherwise the newest visible revision.
    pub async fn consistent_revision(&self) -> Result<Revision, StoreError> {
        if let Some(repl) = &self.shared().replication {
            repl.read_barrier().await?;
        }
        Ok(self.revision())
    }

    /// Each shard's log commits (count, bytes, append latency), read without asking the
    /// shards.
    pub fn shard_io(&self) -> Vec<crate::io_stats::ShardIoStats> {
        self.shared().io.iter().map(|s| s.stats()).collect()
    }

    pub async fn stats(&self) -> Stats {
        let sh = self.shared();
        let mut st = Stats {
            revision: sh.visible.load(SeqCst),
            compact_revision: sh.compact_revision.load(SeqCst),
            wal_bytes_since_snapshot: sh.wal_bytes.iter().map(|b| b.load(SeqCst)).sum(),
            snapshot_revision: sh.snapshot_revision.load(SeqCst),
            ..Default::default()
        };
        let mut rxs = Vec::new();
        for inbox in &sh.inbox {
            let (tx, rx) = bounded(1);
            if inbox.send(ShardMsg::Stats { reply: tx }).is_ok() {
                rxs.push(rx);
            }
        }
        for rx in rxs {
            let s = tokio::task::spawn_blocking(move || rx.recv()).await;
            if let Ok(Ok(s)) = s {
                st.live_keys += s.mvcc.live_keys;
                st.indexed_keys += s.mvcc.indexed_keys;
                st.retained_revisions += s.mvcc.retained_revisions;
                st.key_bytes += s.mvcc.key_bytes;
                st.value_bytes += s.mvcc.value_bytes;
                st.history_value_bytes += s.mvcc.history_value_bytes;
                st.index_overhead_bytes += s.mvcc.index_overhead_bytes;
                st.watchers += s.watchers;
                st.leases = s.leases;
            }
        }
        st
    }

    /// Watches a key, prefix or range from a revision. Events arrive in revision order, each
    /// exactly once, across all shards.
    pub fn watch(&self, req: WatchRequest) -> Watcher {
        let sh = &self.inner.shared;
        let visible = sh.visible.load(SeqCst);
        let start = match req.start_revision {
            None | Some(0) => visible + 1,
            Some(r) => r,
        };
        let id = sh.next_watch_id.fetch_add(1, SeqCst);
        let (tx, rx) = mpsc::channel(sh.cfg.watch_queue_events_max);
        let wshared = Arc::new(WatchShared { overflow: AtomicU64::new(NONE), registered: Default::default() });
        let targets: Vec<usize> = match req.range.single_key() {
            Some(k) => vec![sh.shard_of(k)],
            None => (0..sh.shards).collect(),
        };
        for &s in &targets {
            let _ = sh.inbox[s].send(ShardMsg::Watch(WatchRegistration {
                id,
                range: req.range.clone(),
                start,
                prev_kv: req.prev_kv,
                tx: tx.clone(),
                shared: wshared.clone(),
            }));
        }
        drop(tx);
        Watcher {
            inner: self.inner.clone(),
            id,
            targets,
            rx,
            visible: sh.visible_tx.subscribe(),
            shared: wshared,
            held: BTreeMap::new(),
            arrival: 0,
            next_revision: start,
            delivered: start.saturating_sub(1),
            reported: start.saturating_sub(1),
            ended: None,
        }
    }
}

/// A stream of events in revision order. `next` yields batches; after an error the stream
/// has ended (for `SlowWatcher`, watch again from its `resume_revision`).
pub struct Watcher {
    inner: Arc<Inner>,
    id: u64,
    targets: Vec<usize>,
    rx: mpsc::Receiver<WatchItem>,
    visible: tokio::sync::watch::Receiver<Revision>,
    shared: Arc<WatchShared>,
    /// Events received but not yet visible, by (revision, order within it, arrival).
    held: BTreeMap<(Revision, u32, u64), Event>,
    arrival: u64,
    /// Every event below this has been delivered.
    next_revision: Revision,
    /// Every event at or below this has been delivered (progress, even without events).
    delivered: Revision,
    /// `delivered` when the caller last heard of progress.
    reported: Revision,
    ended: Option<WatchError>,
}

impl Watcher {
    /// The revision from which a new watch would continue this one without a gap.
    pub fn resume_revision(&self) -> Revision {
        self.next_revision
    }

    /// Every event at or below this revision has been delivered by `next`: a watcher that
    /// has seen no events for a while still knows how current it is (etcd's progress notify).
    pub fn delivered_through(&self) -> Revision {
        self.delivered
    }

    /// The next batch of events, or the reason the watch ended. `None` after the end.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, WatchError>> {
        self.next_inner(false).await
    }

    /// As `next`, but also returns an empty batch when `delivered_through` advanced without
    /// events.
    pub async fn next_or_progress(&mut self) -> Option<Result<Vec<Event>, WatchError>> {
        self.next_inner(true).await
    }

    async fn next_inner(&mut self, progress: bool) -> Option<Result<Vec<Event>, WatchError>> {
        loop {
            if self.ended.is_some() && self.held.is_empty() {
                return self.ended.take().map(Err);
            }
            // Once every shard has caught this watcher up, everything at or below `w` has been
            // queued by now: drain, then release.
            let caught_up = self.shared.registered.load(SeqCst) == self.targets.len();
            let w = *self.visible.borrow_and_update();
            let mut closed = false;
            loop {
                match self.rx.try_recv() {
                    Ok(item) => self.accept(item),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if !caught_up && self.shared.registered.load(SeqCst) == self.targets.len() {
                // The last shard finished its catch-up during this pass: its wake-up message
                // may have been drained above, so look again now rather than sleep on it.
                continue;
            }
            let overflow = self.shared.overflow.load(SeqCst);
            let limit = if !caught_up {
                0
            } else if overflow != NONE {
                w.min(overflow - 1)
            } else {
                w
            };
            let mut out = Vec::new();
            while let Some(entry) = self.held.first_entry() {
                if entry.key().0 > limit {
                    break;
                }
                out.push(entry.remove());
            }
            if let Some(last) = out.last() {
                self.next_revision = last.kv.mod_revision + 1;
            }
            if caught_up && self.held.first_key_value().is_none_or(|((r, _, _), _)| *r > limit) {
                self.delivered = self.delivered.max(limit);
            }
            if caught_up && overflow != NONE && w >= overflow - 1 && self.ended.is_none() {
                self.next_revision = self.next_revision.max(overflow).min(overflow);
                self.held.clear();
                self.ended = Some(WatchError::SlowWatcher {
                    resume_revision: overflow,
                    queue_max: self.inner.shared.cfg.watch_queue_events_max,
                });
            }
            if !out.is_empty() {
                self.reported = self.delivered;
                return Some(Ok(out));
            }
            if self.ended.is_some() {
                // The watch is over and what is still held is above the visible revision (the
                // rest went out above): it was never delivered, and a new watch from
                // `resume_revision` gets it. Waiting for it to become visible could wait for
                // ever (the shards that would advance it have stopped) and looping on it spins.
                self.held.clear();
                continue;
            }
            if progress && self.delivered > self.reported {
                self.reported = self.delivered;
                return Some(Ok(out));
            }
            if closed {
                self.ended = Some(WatchError::Shutdown);
                continue;
            }
            tokio::select! {
                item = self.rx.recv() => if let Some(item) = item { self.accept(item) },
                r = self.visible.changed() => {
                    if r.is_err() {
                        self.ended = Some(WatchError::Shutdown);
                    }
                }
            }
        }
    }

    fn accept(&mut self, item: WatchItem) {
        match item {
            WatchItem::Event { sub, event } => {
                self.arrival += 1;
                self.held.insert((event.kv.mod_revision, sub, self.arrival), event);
            }
            WatchItem::CatchUp(items) => {
                for (sub, event) in items {
                    self.arrival += 1;
                    self.held.insert((event.kv.mod_revision, sub, self.arrival), event);
                }
            }
            WatchItem::Registered => {}
            WatchItem::End(e) => {
                if self.ended.is_none() {
                    self.held.clear();
                    self.ended = Some(e);
                }
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for &s in &self.targets {
            let _ = self.inner.shared.inbox[s].send(ShardMsg::Unwatch { id: self.id });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------------------------

struct Recovered {
    shards: Vec<(Mvcc, Box<dyn wal::Log>)>,
    revision: Revision,
    compact: Revision,
    leases: Vec<(LeaseId, i64)>,
    snapshot_id: u64,
    snapshot_revision: Revision,
    /// The size of the snapshot loaded (0 without one).
    snapshot_bytes: u64,
    replayed: usize,
    raft_meta: Bytes,
}

/// A random number for lease ids (no `rand` dependency in the store for one call).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, OpenError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| OpenError::io(&path, e))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(OpenError::Locked { path: dir.to_path_buf() });
    }
    Ok(f)
}

fn shard_dir(data_dir: &Path, s: usize) -> PathBuf {
    data_dir.join("wal").join(format!("shard-{s}"))
}

/// One shard's log after the snapshot: its records, and where writing continues.
struct ShardLog {
    records: Vec<Record>,
    file: std::fs::File,
    end: Position,
}

fn read_shard_log(dir: &Path, shard: u32, from: Position, cfg: &Config) -> Result<ShardLog, OpenError> {
    let log = wal::recover_log(dir, shard, from, cfg.segment_bytes)?;
    let mut records = Vec::new();
    for (pos, payload) in log.frames {
        let recs = wal::frame_records(&payload).map_err(|reason| OpenError::Corrupt {
            path: wal::segment_path(dir, pos.seq),
            offset: pos.offset,
            reason,
        })?;
        records.extend(recs);
    }
    Ok(ShardLog { records, file: log.file, end: log.end })
}

fn recover(cfg: &Config) -> Result<Recovered, OpenError> {
    let dir = &cfg.data_dir;
    let n = cfg.shards;
    let snap = snapshot::current(dir)?;
    if let Some((_, _, m)) = &snap {
        if m.shards as usize != n {
            return Err(OpenError::ShardCountMismatch { path: dir.clone(), found: m.shards, configured: n as u32 });
        }
    } else if let Ok(rd) = std::fs::read_dir(dir.join("wal")) {
        let found = rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("shard-")).count();
        if found != 0 && found != n {
            return Err(OpenError::ShardCountMismatch { path: dir.clone(), found: found as u32, configured: n as u32 });
        }
    }
    // Load snapshots and read logs, one thread per shard.
    let results: Vec<Result<(Mvcc, ShardLog), OpenError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|s| {
                let snap = &snap;
                scope.spawn(move || {
                    let (mvcc, from) = match snap {
                        Some((_, sdir, m)) => (snapshot::load_shard(sdir, s as u32, m)?, m.positions[s]),
                        None => (Mvcc::default(), Position { seq: 1, offset: SEGMENT_HEADER_BYTES }),
                    };
                    let log = read_shard_log(&shard_dir(dir, s), s as u32, from, cfg)?;
                    Ok((mvcc, log))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("recovery thread")).collect()
    });
    let mut mvccs = Vec::with_capacity(n);
    let mut logs = Vec::with_capacity(n);
    for r in results {
        let (m, l) = r?;
        mvccs.push(m);
        logs.push(l);
    }
    let (mut revision, mut compact) = snap.as_ref().map_or((0, 0), |(_, _, m)| (m.revision, m.compact_revision));
    // Replay every log's records in revision order (markers after their revision's changes).
    let mut all: Vec<Record> = logs.iter_mut().flat_map(|l| std::mem::take(&mut l.records)).collect();
    all.sort_by_key(|r| r.order_key());
    let replayed = all.len();
    let shard_of = |key: &[u8]| if n == 1 { 0 } else { crc32c::crc32c(key) as usize % n };
    for rec in all {
        revision = revision.max(rec.revision);
        for c in rec.changes {
            let s = shard_of(c.key());
            match c {
                Change::Put { key, value, lease } => {
                    mvccs[s].put(Bytes::copy_from_slice(&key), Bytes::copy_from_slice(&value), lease, rec.revision);
                }
                Change::Delete { key } => {
                    mvccs[s].delete(&key, rec.revision);
                }
            }
        }
        for (id, ttl) in &rec.lease_grants {
            for m in mvccs.iter_mut() {
                m.leases.insert(*id, *ttl);
            }
        }
        for id in &rec.lease_revokes {
            for m in mvccs.iter_mut() {
                m.leases.remove(id);
            }
        }
        if rec.compact > compact {
            compact = rec.compact;
            for m in mvccs.iter_mut() {
                m.compact(compact);
            }
        }
    }
    let leases: Vec<(LeaseId, i64)> = mvccs.first().map(|m| m.leases.iter().map(|(a, b)| (*a, *b)).collect()).unwrap_or_default();
    let mut shards = Vec::with_capacity(n);
    for (s, (mvcc, log)) in mvccs.into_iter().zip(logs).enumerate() {
        let sdir = shard_dir(dir, s);
        // Remove empty segments after the one we continue in, so the preparer's numbering holds.
        for (seq, path) in wal::list_segments(&sdir)? {
            if seq > log.end.seq {
                let _ = std::fs::remove_file(path);
            }
        }
        let writer = WalWriter::open(sdir.clone(), s as u32, log.file, log.end, cfg.segment_bytes, cfg.fsync, cfg.log_io.clone())
            .map_err(|e| OpenError::io(&sdir, e))?;
        shards.push((mvcc, Box::new(writer) as Box<dyn wal::Log>));
    }
    Ok(Recovered {
        shards,
        revision,
        compact,
        leases,
        snapshot_id: snap.as_ref().map_or(0, |(id, _, _)| *id),
        snapshot_revision: snap.as_ref().map_or(0, |(_, _, m)| m.revision),
        snapshot_bytes: snap.as_ref().map_or(0, |(_, sdir, _)| snapshot::bytes_on_disk(sdir)),
        replayed,
        raft_meta: Bytes::new(),
    })
}

/// A replicated store starts from its latest snapshot alone: the raft layer replays its log
/// after it (the snapshot's `meta` says from where).
fn recover_replica(cfg: &Config) -> Result<Recovered, OpenError> {
    let dir = &cfg.data_dir;
    if dir.join("wal").exists() {
        return Err(OpenError::Config(format!(
            "{} holds a single-replica store's log (wal/): a replica's store has no log of its own",
            dir.display()
        )));
    }
    let snap = snapshot::current(dir)?;
    let (mvcc, revision, compact, meta) = match &snap {
        Some((_, sdir, m)) => {
            if m.shards != 1 {
                return Err(OpenError::ShardCountMismatch { path: dir.clone(), found: m.shards, configured: 1 });
            }
            (snapshot::load_shard(sdir, 0, m)?, m.revision, m.compact_revision, m.meta.clone())
        }
        None => (Mvcc::default(), 0, 0, Bytes::new()),
    };
    let leases = mvcc.leases.iter().map(|(a, b)| (*a, *b)).collect();
    Ok(Recovered {
        shards: vec![(mvcc, Box::new(NoLog) as Box<dyn wal::Log>)],
        revision,
        compact,
        leases,
        snapshot_id: snap.as_ref().map_or(0, |(id, _, _)| *id),
        snapshot_revision: snap.as_ref().map_or(0, |(_, _, m)| m.revision),
        snapshot_bytes: snap.as_ref().map_or(0, |(_, sdir, _)| snapshot::bytes_on_disk(sdir)),
        replayed: 0,
        raft_meta: meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rev: Revision) -> Event {
        let kv = KeyValue {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        };
        Event {
            kind: EventKind::Put,
            kv,
            prev_kv: None,
        }
    }

    /// A watch whose shards went away while it held an event above the visible revision
    /// returns its end, and does not spin on the event that can never be released.
    #[test]
    fn a_watch_that_ends_with_events_still_invisible_returns_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let (_visible_tx, visible) = tokio::sync::watch::channel(3);
        let shared = Arc::new(WatchShared {
            overflow: AtomicU64::new(NONE),
            registered: std::sync::atomic::AtomicUsize::new(1),
        });
        let mut w = Watcher {
            inner: store.inner.clone(),
            id: u64::MAX,
            targets: vec![0],
            rx,
            visible,
            shared,
            held: BTreeMap::new(),
            arrival: 0,
            next_revision: 4,
            delivered: 3,
            reported: 3,
            ended: None,
        };
        // The shard queued an event above the visible revision, then went away without an
        // `End` (its queue was full when it stopped, or its thread ended).
        tx.try_send(WatchItem::Event {
            sub: 0,
            event: event(5),
        })
        .unwrap();
        drop(tx);
        // On a thread of its own: a spinning `next` never yields, so no timer could stop it.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(w.next());
            let _ = done_tx.send((r.map(|r| r.map(|e| e.len())), w.resume_revision()));
        });
        let (r, resume) = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the ended watch did not return its end within 20 s (it spins on an event above the visible revision)");
        assert_eq!(r, Some(Err(WatchError::Shutdown)));
        assert_eq!(
            resume, 4,
            "a new watch resumes before the event that was not delivered"
        );
    }
}
