//! A shard: one pinned thread owning a partition of the keyspace, its index, its log and its
//! watchers. It takes requests as messages, evaluates a batch of them, makes the batch durable
//! with one log frame (group commit), then publishes and replies.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::command::{Applied, Command};
use crate::coord::CoordMsg;
use crate::error::{StoreError, WatchError};
use crate::mvcc::Mvcc;
use crate::shared::{NONE, Shared};
use crate::txn;
use crate::types::*;
use crate::replicated::ApplyBatch;
use crate::wal::{FrameBuilder, Log, Record, WalError};

/// What a watcher's channel carries: an event with its order within its revision, or the end.
#[derive(Debug)]
pub enum WatchItem {
    Event { sub: u32, event: Event },
    /// A shard's catch-up: its retained history in the watcher's range since the start
    /// revision, as `(sub, event)`. One message, so that catching up on a long history is not
    /// mistaken for a slow watcher; its size is bounded by compaction, as a range read's is.
    CatchUp(Vec<(u32, Event)>),
    /// A shard finished catching this watcher up (a wake-up; the count is in `WatchShared`).
    Registered,
    End(WatchError),
}

/// What a watcher's shards and its stream share.
#[derive(Debug)]
pub struct WatchShared {
    /// The lowest revision a shard failed to queue for this watcher (`NONE` if none).
    pub overflow: AtomicU64,
    /// Shards that have finished the catch-up of this watcher (successfully or not). Until all
    /// have, the stream releases nothing: a shard's catch-up may hold older revisions.
    pub registered: std::sync::atomic::AtomicUsize,
}

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum ShardMsg {
    /// A txn whose keys all live in this shard.
    Txn { req: TxnRequest, reply: Reply<TxnResponse>, permit: OwnedSemaphorePermit },
    /// A read at `revision` (already checked to be visible).
    Read { req: RangeRequest, revision: Revision, reply: Reply<RangeResponse>, permit: OwnedSemaphorePermit },
    Watch(WatchRegistration),
    Unwatch { id: u64 },
    /// Stop taking requests and run the coordinator's closures until it unfreezes this shard.
    Freeze { ctrl: Receiver<Ctrl>, frozen: Sender<()> },
    /// Replicated mode: committed raft entries to apply, in log order.
    Apply { batches: Vec<ApplyBatch>, reply: oneshot::Sender<Vec<Vec<Applied>>> },
    /// The visible revision advanced past a deferred reply of this shard.
    Tick,
    Stats { reply: Sender<ShardStats> },
    Shutdown { done: Sender<()> },
}

pub enum Ctrl {
    Run(Box<dyn FnOnce(&mut ShardCore) + Send>),
    Unfreeze,
}

pub struct WatchRegistration {
    pub id: u64,
    pub range: KeyRange,
    pub start: Revision,
    pub prev_kv: bool,
    pub tx: mpsc::Sender<WatchItem>,
    pub shared: Arc<WatchShared>,
}

#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub mvcc: crate::mvcc::MvccStats,
    pub watchers: u64,
    pub leases: u64,
}

struct Watcher {
    id: u64,
    range: KeyRange,
    prev_kv: bool,
    tx: mpsc::Sender<WatchItem>,
    shared: Arc<WatchShared>,
}

/// A reply that waits until the visible revision reaches `ack`.
struct Deferred {
    ack: Revision,
    reply: Reply<TxnResponse>,
    resp: TxnResponse,
    _permit: OwnedSemaphorePermit,
}

/// A txn evaluated in the current batch, waiting for the batch to be durable.
struct Staged {
    ack: Revision,
    reply: Reply<TxnResponse>,
    result: Result<TxnResponse, StoreError>,
    permit: OwnedSemaphorePermit,
}

pub struct ShardCore {
    pub id: u32,
    pub mvcc: Mvcc,
    pub wal: Box<dyn Log>,
    shared: Arc<Shared>,
    watchers: Vec<Watcher>,
    deferred: VecDeque<Deferred>,
    /// The newest revision applied to this shard's index (durable once its batch committed).
    applied: Revision,
    /// Replicated mode: the raft position of the last applied entry (a snapshot records it).
    pub raft_meta: Bytes,
    /// Replicated mode: `apply`'s events, kept between calls so the buffer is not grown anew
    /// (from empty, by doubling) for every applied batch.
    apply_events: Vec<(Revision, u32, Event)>,
}

impl ShardCore {
    pub fn new(id: u32, mvcc: Mvcc, wal: Box<dyn Log>, shared: Arc<Shared>) -> Self {
        ShardCore { id, mvcc, wal, shared, watchers: Vec::new(), deferred: VecDeque::new(), applied: 0, raft_meta: Bytes::new(), apply_events: Vec::new() }
    }

    pub fn run(mut self, rx: Receiver<ShardMsg>) {
        let cfg = self.shared.cfg.clone();
        let mut frame = FrameBuilder::new();
        let mut staged: Vec<Staged> = Vec::with_capacity(cfg.batch_requests_max);
        let mut events: Vec<(Revision, u32, Event)> = Vec::new();
        loop {
            let first = if self.deferred.is_empty() {
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        self.flush_deferred();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            // Collect a batch of txns and reads; anything else ends the batch and is handled
            // after it, when the index holds only durable data.
            let mut batch_first_rev: Option<Revision> = None;
            let mut last_rev: Revision = self.applied;
            let mut next = Some(first);
            let mut after: Option<ShardMsg> = None;
            let mut n = 0;
            while let Some(msg) = next.take() {
                match msg {
                    ShardMsg::Txn { req, reply, permit } => {
                        n += 1;
                        let shared = &self.shared;
                        let mut alloc = || {
                            if batch_first_rev.is_none() {
                                shared.pending[self.id as usize].store(shared.counter.load(SeqCst) + 1, SeqCst);
                            }
                            let r = shared.counter.fetch_add(1, SeqCst) + 1;
                            batch_first_rev.get_or_insert(r);
                            r
                        };
                        let result = if let Some(why) = self.shared.failed.get() {
                            Err(StoreError::Failed(why.clone()))
                        } else {
                            let current = self.shared.visible.load(SeqCst);
                            let compacted = self.mvcc.compact_revision();
                            txn::eval(&mut self.mvcc, &req, &mut alloc, current, compacted)
                        };
                        let result = result.map(|o| {
                            if let Some(rev) = o.revision {
                                last_rev = rev;
                                frame.push(&Record { revision: rev, changes: o.changes, ..Default::default() });
                                for (i, e) in o.events.into_iter().enumerate() {
                                    events.push((rev, i as u32, e));
                                }
                            }
                            TxnResponse {
                                revision: o.revision.unwrap_or(last_rev.max(self.shared.visible.load(SeqCst))),
                                succeeded: o.succeeded,
                                responses: o.responses,
                            }
                        });
                        // A read-only txn may have seen this batch's staged writes: it is
                        // acknowledged with them.
                        staged.push(Staged { ack: last_rev, reply, result, permit });
                    }
                    ShardMsg::Read { req, revision, reply, permit } => {
                        let _ = reply.send(self.read(&req, revision));
                        drop(permit);
                    }
                    other => after = Some(other),
                }
                if after.is_some() || n >= cfg.batch_requests_max || frame.len() >= cfg.batch_bytes_max {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !staged.is_empty()
                && self.commit(&mut frame, &mut staged, &mut events, batch_first_rev) {
                    self.applied = last_rev;
                }
            if let Some(msg) = after
                && !self.handle_control(msg, &rx) {
                    return;
                }
        }
    }

    /// Replicated mode: evaluates committed commands in log order, handing out revisions as it
    /// goes (so every replica gives the same write the same revision), then publishes their
    /// events and makes them visible. Nothing is logged here: the raft log is the record.
    fn apply(&mut self, batches: Vec<ApplyBatch>) -> Vec<Vec<Applied>> {
        let me = self.id as usize;
        let mut events = std::mem::take(&mut self.apply_events);
        let mut out = Vec::with_capacity(batches.len());
        let mut first: Option<Revision> = None;
        let shared = self.shared.clone();
        for batch in batches {
            let mut results = Vec::with_capacity(batch.commands.len());
            for cmd in batch.commands {
                let mut alloc = || {
                    if first.is_none() {
                        shared.pending[me].store(shared.counter.load(SeqCst) + 1, SeqCst);
                    }
                    let r = shared.counter.fetch_add(1, SeqCst) + 1;
                    first.get_or_insert(r);
                    r
                };
                let current = self.shared.counter.load(SeqCst);
                let compacted = self.mvcc.compact_revision();
                results.push(match cmd {
                    Command::Txn(mut req) => Applied::Txn(
                        txn::validate(&req, self.shared.cfg.request_bytes_max)
                            .map(|()| own_puts(&mut req))
                            .and_then(|()| txn::eval(&mut self.mvcc, &req, &mut alloc, current, compacted))
                            .map(|o| {
                                let revision = match o.revision {
                                    Some(rev) => {
                                        for (i, e) in o.events.into_iter().enumerate() {
                                            events.push((rev, i as u32, e));
                                        }
                                        rev
                                    }
                                    None => current,
                                };
                                TxnResponse { revision, succeeded: o.succeeded, responses: o.responses }
                            }),
                    ),
                    Command::LeaseGrant { id, ttl_seconds } => Applied::LeaseGrant(self.mvcc.apply_lease_grant(id, ttl_seconds).inspect(|_| {
                        let _ = self.shared.coord.send(CoordMsg::LeaseApplied { id, ttl: Some(ttl_seconds) });
                    })),
                    Command::LeaseRevoke { id } => Applied::LeaseRevoke(self.mvcc.apply_lease_revoke(id, current, &mut alloc).map(|(rev, deleted)| {
                        for (i, e) in deleted.into_iter().enumerate() {
                            events.push((rev, i as u32, e));
                        }
                        let _ = self.shared.coord.send(CoordMsg::LeaseApplied { id, ttl: None });
                        rev
                    })),
                    Command::Compact { revision } => Applied::Compact(if revision > current {
                        Err(StoreError::FutureRevision { requested: revision, current })
                    } else if revision <= compacted {
                        Err(StoreError::Compacted { requested: revision, compact_revision: compacted })
                    } else {
                        self.mvcc.compact(revision);
                        self.shared.history_bytes[self.id as usize].store(self.mvcc.history_value_bytes(), SeqCst);
                        self.shared.compact_revision.store(revision, SeqCst);
                        Ok(())
                    }),
                });
            }
            self.raft_meta = batch.meta;
            out.push(results);
        }
        for (rev, sub, e) in events.drain(..) {
            self.publish(rev, sub, e);
        }
        // A revocation of a lease with many keys can grow it far: keep a normal batch's worth.
        events.shrink_to(1 << 12);
        self.apply_events = events;
        self.applied = self.shared.counter.load(SeqCst);
        *self.shared.raft_meta.lock().unwrap() = self.raft_meta.clone();
        self.shared.pending[me].store(NONE, SeqCst);
        self.shared.advance();
        out
    }

    fn read(&self, req: &RangeRequest, rev: Revision) -> Result<RangeResponse, StoreError> {
        let compacted = self.mvcc.compact_revision();
        if rev < compacted {
            return Err(StoreError::Compacted { requested: rev, compact_revision: compacted });
        }
        let r = self.mvcc.range_at(&req.range, rev, req.limit, req.keys_only, req.count_only);
        Ok(RangeResponse { revision: rev, more: req.more(r.count), kvs: r.kvs, count: r.count })
    }

    /// Makes the batch durable, then publishes its events and replies (or undoes it).
    fn commit(
        &mut self,
        frame: &mut FrameBuilder,
        staged: &mut Vec<Staged>,
        events: &mut Vec<(Revision, u32, Event)>,
        first_rev: Option<Revision>,
    ) -> bool {
        let me = self.id as usize;
        let result = if frame.is_empty() {
            Ok(())
        } else {
            let bytes = frame.finish();
            let len = bytes.len();
            let started = std::time::Instant::now();
            let r = self.wal.append(bytes);
            self.shared.io[me].record(len, started.elapsed());
            r
        };
        frame.clear();
        self.shared.wal_bytes[me].store(self.wal.bytes_since_snapshot(), SeqCst);
        self.shared.history_bytes[me].store(self.mvcc.history_value_bytes(), SeqCst);
        match result {
            Ok(()) => {
                crate::failpoint!("shard::after_sync_before_apply");
                for (rev, sub, e) in events.drain(..) {
                    self.publish(rev, sub, e);
                }
                self.shared.pending[me].store(NONE, SeqCst);
                let w = self.shared.advance();
                for s in staged.drain(..) {
                    match s.result {
                        Ok(resp) if s.ack > w => {
                            self.deferred.push_back(Deferred { ack: s.ack, reply: s.reply, resp, _permit: s.permit })
                        }
                        r => {
                            let _ = s.reply.send(r);
                        }
                    }
                }
                self.flush_deferred();
                true
            }
            Err(e) => {
                if let Some(first) = first_rev {
                    // Every change of the batch has an event, so the events name every key.
                    let touched: Vec<Bytes> = events.iter().map(|(_, _, e)| e.kv.key.clone()).collect();
                    self.mvcc.rollback(&touched, first);
                }
                events.clear();
                self.shared.pending[me].store(NONE, SeqCst);
                self.shared.advance();
                let err = match e {
                    WalError::NoSpace => StoreError::NoSpace,
                    WalError::Write(e) => StoreError::Io(e.to_string()),
                    WalError::Sync(e) => {
                        let why = format!("fdatasync of shard {me}'s log failed: {e}");
                        tracing::error!("{why}; the store accepts no more writes");
                        let _ = self.shared.failed.set(why.clone());
                        StoreError::Failed(why)
                    }
                };
                tracing::warn!(shard = me, error = %err, "write batch failed and was rolled back");
                for s in staged.drain(..) {
                    let _ = s.reply.send(s.result.and(Err(err.clone())));
                }
                false
            }
        }
    }

    /// Replies whose revision is now visible. Publishes `min_deferred` and re-checks after it,
    /// so a concurrent advance by another shard cannot be missed (see `Shared::advance`).
    fn flush_deferred(&mut self) {
        let me = self.id as usize;
        loop {
            let w = self.shared.visible.load(SeqCst);
            while self.deferred.front().is_some_and(|d| d.ack <= w) {
                let d = self.deferred.pop_front().unwrap();
                let _ = d.reply.send(Ok(d.resp));
            }
            let min = self.deferred.front().map_or(NONE, |d| d.ack);
            self.shared.min_deferred[me].store(min, SeqCst);
            if min == NONE || self.shared.advance() < min {
                return;
            }
        }
    }

    /// Queues an event for every watcher of this shard whose range holds its key.
    /// Notes a revision applied by the coordinator while this shard was frozen.
    pub fn note_applied(&mut self, rev: Revision) {
        self.applied = self.applied.max(rev);
    }

    pub fn publish(&mut self, rev: Revision, sub: u32, event: Event) {
        let mut i = 0;
        while i < self.watchers.len() {
            let w = &self.watchers[i];
            if !w.range.contains(&event.kv.key) {
                i += 1;
                continue;
            }
            if w.shared.overflow.load(SeqCst) != NONE {
                self.watchers.swap_remove(i);
                continue;
            }
            let mut e = event.clone();
            if !w.prev_kv {
                e.prev_kv = None;
            }
            match w.tx.try_send(WatchItem::Event { sub, event: e }) {
                Ok(()) => i += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.shared.overflow.fetch_min(rev, SeqCst);
                    self.watchers.swap_remove(i);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.watchers.swap_remove(i);
                }
            }
        }
    }

    fn handle_control(&mut self, msg: ShardMsg, _rx: &Receiver<ShardMsg>) -> bool {
        match msg {
            ShardMsg::Watch(reg) => self.register(reg),
            ShardMsg::Unwatch { id } => self.watchers.retain(|w| w.id != id),
            ShardMsg::Freeze { ctrl, frozen } => {
                let _ = frozen.send(());
                while let Ok(Ctrl::Run(f)) = ctrl.recv() {
                    f(self);
                }
                self.flush_deferred();
            }
            ShardMsg::Apply { batches, reply } => {
                let _ = reply.send(self.apply(batches));
            }
            ShardMsg::Tick => {
                self.shared.tick_queued[self.id as usize].store(false, SeqCst);
                self.flush_deferred();
            }
            ShardMsg::Stats { reply } => {
                let _ = reply.send(ShardStats {
                    mvcc: self.mvcc.stats(),
                    watchers: self.watchers.len() as u64,
                    leases: self.mvcc.leases.len() as u64,
                });
            }
            ShardMsg::Shutdown { done } => {
                for w in self.watchers.drain(..) {
                    let _ = w.tx.try_send(WatchItem::End(WatchError::Shutdown));
                }
                let _ = done.send(());
                return false;
            }
            ShardMsg::Txn { .. } | ShardMsg::Read { .. } => unreachable!("handled in the batch loop"),
        }
        true
    }

    /// Replicated mode: replaces this shard's state with an installed snapshot at `revision`.
    /// Every watcher has been sent everything up to the old visible revision; it is caught up
    /// from the snapshot's history on the rest (revisions are the same on every replica, so
    /// the history continues exactly where it left off), or ended with `Compacted` when the
    /// snapshot no longer holds where it is.
    pub fn install(&mut self, mvcc: Mvcc, meta: Bytes, revision: Revision) {
        let from = self.shared.visible.load(SeqCst) + 1;
        self.mvcc = mvcc;
        self.raft_meta = meta;
        self.applied = revision;
        let compacted = self.mvcc.compact_revision();
        let mut i = 0;
        while i < self.watchers.len() {
            let w = &self.watchers[i];
            if from < compacted {
                let _ = w.tx.try_send(WatchItem::End(WatchError::Compacted { requested: from, compact_revision: compacted }));
                self.watchers.swap_remove(i);
                continue;
            }
            let history = self.mvcc.events_since(&w.range, from, w.prev_kv);
            let mut last: Option<Revision> = None;
            let mut sub = 0;
            let mut keep = true;
            for e in history {
                let rev = e.kv.mod_revision;
                sub = if last == Some(rev) { sub + 1 } else { 0 };
                last = Some(rev);
                match w.tx.try_send(WatchItem::Event { sub, event: e }) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        w.shared.overflow.fetch_min(rev, SeqCst);
                        keep = false;
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        keep = false;
                        break;
                    }
                }
            }
            if keep {
                i += 1;
            } else {
                self.watchers.swap_remove(i);
            }
        }
    }

    /// Catches a new watcher up on this shard's history since its start, then keeps it.
    fn register(&mut self, reg: WatchRegistration) {
        let done = |reg: &WatchRegistration| {
            reg.shared.registered.fetch_add(1, SeqCst);
            let _ = reg.tx.try_send(WatchItem::Registered);
        };
        let compacted = self.mvcc.compact_revision();
        if reg.start < compacted {
            let _ = reg.tx.try_send(WatchItem::End(WatchError::Compacted {
                requested: reg.start,
                compact_revision: compacted,
            }));
            done(&reg);
            return;
        }
        let history = self.mvcc.events_since(&reg.range, reg.start, reg.prev_kv);
        if !history.is_empty() {
            let mut last: Option<Revision> = None;
            let mut sub = 0;
            let first = history[0].kv.mod_revision;
            let items = history
                .into_iter()
                .map(|e| {
                    let rev = e.kv.mod_revision;
                    sub = if last == Some(rev) { sub + 1 } else { 0 };
                    last = Some(rev);
                    (sub, e)
                })
                .collect();
            if let Err(err) = reg.tx.try_send(WatchItem::CatchUp(items)) {
                if let mpsc::error::TrySendError::Full(_) = err {
                    reg.shared.overflow.fetch_min(first, SeqCst);
                }
                done(&reg);
                return;
            }
        }
        done(&reg);
        self.watchers.push(Watcher { id: reg.id, range: reg.range, prev_kv: reg.prev_kv, tx: reg.tx, shared: reg.shared });
    }
}

/// Gives the keys and values a txn may put their own buffers: decoded from a raft entry they
/// are slices of the whole entry, which the index would otherwise keep alive for as long as
/// any one of them lives.
fn own_puts(req: &mut TxnRequest) {
    for op in req.success.iter_mut().chain(req.failure.iter_mut()) {
        if let TxnOp::Put(p) = op {
            p.key = Bytes::copy_from_slice(&p.key);
            p.value = Bytes::copy_from_slice(&p.value);
        }
    }
}
