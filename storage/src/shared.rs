//! The little state every shard can see: the revision counter and the visibility watermark.
//! Atomics only, each on its own cache line; no lock is taken per request.
//!
//! **Visibility.** Revisions are handed out by one atomic counter, so two shards commit them
//! out of order. A revision `R` is *visible* when every revision `<= R` is either durable and
//! applied, or abandoned (its batch failed). Before a shard takes its first revision of a
//! batch it stores in `pending[shard]` a lower bound of what it will get (`counter + 1`), and it
//! clears it (`NONE`) after the batch is applied and its events queued. Then
//! `visible = min(counter, min(pending) - 1)`, computed by `advance`. All accesses are SeqCst:
//! a reader that sees the counter past `R` also sees the pending mark of whoever took `R`.
//! Reads without a revision read at `visible`; a write is acknowledged once `visible` reaches
//! its revision, so an acknowledged write is seen by every later read (linearizable).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crossbeam::channel::Sender;
use crossbeam::utils::CachePadded;
use tokio::sync::Semaphore;

use crate::Config;
use crate::coord::CoordMsg;
use crate::replicated::Replication;
use crate::shard::ShardMsg;
use crate::types::Revision;

/// "No revision": an idle pending slot, no deferred reply, no overflow.
pub const NONE: u64 = u64::MAX;

pub struct Shared {
    pub cfg: Config,
    pub shards: usize,
    /// The last revision handed out.
    pub counter: CachePadded<AtomicU64>,
    /// Per shard, plus one slot for the coordinator (index `shards`).
    pub pending: Box<[CachePadded<AtomicU64>]>,
    /// Per shard: the lowest revision a reply of it waits for.
    pub min_deferred: Box<[CachePadded<AtomicU64>]>,
    pub tick_queued: Box<[CachePadded<AtomicBool>]>,
    pub visible: CachePadded<AtomicU64>,
    pub visible_tx: tokio::sync::watch::Sender<Revision>,
    pub compact_revision: AtomicU64,
    pub inbox: Vec<Sender<ShardMsg>>,
    /// Bounds each shard's queue of client requests (`shard_queue_requests_max`).
    pub permits: Vec<Arc<Semaphore>>,
    /// Set once when a log sync fails: the store then refuses writes.
    pub failed: OnceLock<String>,
    pub wal_bytes: Box<[AtomicU64]>,
    /// Each shard's log commits: count, bytes, append latency.
    pub io: Box<[crate::io_stats::ShardIo]>,
    /// Each shard's `Mvcc::history_value_bytes`, published after every batch and compaction
    /// (what compaction by bytes reads).
    pub history_bytes: Box<[AtomicU64]>,
    pub next_watch_id: AtomicU64,
    pub snapshot_revision: AtomicU64,
    /// The size of the snapshot in force (0 before the first): the next waits for the log to
    /// reach `snapshot_log_ratio` times it.
    pub snapshot_bytes: AtomicU64,
    pub coord: Sender<CoordMsg>,
    /// Replicated mode: where writes go (`None`: this store is its own log).
    pub replication: Option<Arc<dyn Replication>>,
    /// Replicated mode: the raft position of the last applied entry (opaque to the store).
    pub raft_meta: Mutex<Bytes>,
}

impl Shared {
    pub fn new(
        cfg: Config,
        revision: Revision,
        compact: Revision,
        inbox: Vec<Sender<ShardMsg>>,
        coord: Sender<CoordMsg>,
        replication: Option<Arc<dyn Replication>>,
    ) -> Shared {
        let n = inbox.len();
        let pad = |v: u64, k: usize| (0..k).map(|_| CachePadded::new(AtomicU64::new(v))).collect();
        let (visible_tx, _) = tokio::sync::watch::channel(revision);
        Shared {
            shards: n,
            counter: CachePadded::new(AtomicU64::new(revision)),
            pending: pad(NONE, n + 1),
            min_deferred: pad(NONE, n),
            tick_queued: (0..n).map(|_| CachePadded::new(AtomicBool::new(false))).collect(),
            visible: CachePadded::new(AtomicU64::new(revision)),
            visible_tx,
            compact_revision: AtomicU64::new(compact),
            inbox,
            permits: (0..n).map(|_| Arc::new(Semaphore::new(cfg.shard_queue_requests_max))).collect(),
            failed: OnceLock::new(),
            wal_bytes: (0..n).map(|_| AtomicU64::new(0)).collect(),
            io: (0..n).map(|_| Default::default()).collect(),
            history_bytes: (0..n).map(|_| AtomicU64::new(0)).collect(),
            next_watch_id: AtomicU64::new(1),
            snapshot_revision: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
            coord,
            replication,
            raft_meta: Mutex::new(Bytes::new()),
            cfg,
        }
    }

    /// Recomputes the visible revision, publishes it, and wakes shards whose deferred replies it
    /// releases. Returns the visible revision.
    pub fn advance(&self) -> Revision {
        let mut w = self.counter.load(SeqCst);
        for p in self.pending.iter() {
            let v = p.load(SeqCst);
            if v != NONE {
                w = w.min(v - 1);
            }
        }
        let prev = self.visible.fetch_max(w, SeqCst);
        if w > prev {
            self.visible_tx.send_if_modified(|v| {
                if w > *v {
                    *v = w;
                    true
                } else {
                    false
                }
            });
        }
        let w = w.max(prev);
        for s in 0..self.shards {
            if self.min_deferred[s].load(SeqCst) <= w && !self.tick_queued[s].swap(true, SeqCst) {
                let _ = self.inbox[s].send(ShardMsg::Tick);
            }
        }
        w
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        if self.shards == 1 { 0 } else { (crc32c::crc32c(key) as usize) % self.shards }
    }
}
