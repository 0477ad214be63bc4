//! Replicated mode: the store as a raft state machine.
//!
//! A replicated store has no log of its own. Its writes (txns, lease grants and revocations,
//! compactions) are *proposed* through [`Replication`] (the `raft` crate), and come back, on
//! every replica, through [`StateMachine::apply`] in log order. The shard evaluates them there
//! and hands out revisions as it goes, so every replica assigns the same revision to the same
//! write and answers it the same way. Durability is the raft log's: the store's own state is
//! its in-memory index plus snapshots, which carry the raft position they cover (an opaque
//! `meta` blob the raft layer writes and reads back).
//!
//! One shard only: apply is serial in log order (as in etcd). Splitting one entry's writes
//! across shard threads would need each write's revision before evaluating it; see DESIGN.md.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::command::{Applied, Command};
use crate::coord::CoordMsg;
use crate::error::StoreError;
use crate::shard::ShardMsg;
use crate::shared::Shared;
use crate::types::{LeaseId, Revision};
use crate::wal::{Log, Position, WalError};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a replicated store needs from its replication layer.
pub trait Replication: Send + Sync + 'static {
    /// Puts `cmd` in the replicated log (through the leader) and resolves with what applying
    /// it answered. `Unavailable` when no quorum could be reached in time: the command may or
    /// may not have been applied.
    fn propose(&self, cmd: Command) -> BoxFuture<Result<Applied, StoreError>>;
    /// Resolves once this replica has applied everything committed before the call (a read
    /// index): a read after it is linearizable.
    fn read_barrier(&self) -> BoxFuture<Result<(), StoreError>>;
    /// Lease deadlines live on the leader: renew there.
    fn lease_keep_alive(&self, id: LeaseId) -> BoxFuture<Result<i64, StoreError>>;
    /// `(granted TTL, remaining seconds)`, as the leader knows it.
    fn lease_time_to_live(&self, id: LeaseId) -> BoxFuture<Result<(i64, i64), StoreError>>;
    /// Takes a snapshot now (through the raft layer, which then trims its log).
    fn snapshot(&self) -> BoxFuture<Result<Revision, StoreError>>;
}

/// The raft log is the durable record of a replicated store: its shard writes no log.
pub(crate) struct NoLog;

impl Log for NoLog {
    fn append(&mut self, _frame: &[u8]) -> Result<(), WalError> {
        Ok(())
    }
    fn position(&self) -> Position {
        Position { seq: 0, offset: 0 }
    }
    fn bytes_since_snapshot(&self) -> u64 {
        0
    }
    fn truncate_before(&mut self, _pos: Position) -> std::io::Result<usize> {
        Ok(0)
    }
}

/// One committed raft entry's worth of commands, with the raft position (opaque to the store)
/// that is current once they are applied.
#[derive(Clone, Debug)]
pub struct ApplyBatch {
    pub meta: Bytes,
    pub commands: Vec<Command>,
}

/// A snapshot of a replicated store on disk: its files (manifest and chunks) and what it covers.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    /// The store's local snapshot id (directory name).
    pub id: u64,
    pub dir: PathBuf,
    pub revision: Revision,
    /// The raft position the snapshot covers (what `ApplyBatch::meta` said last).
    pub meta: Bytes,
    /// File names in `dir`, manifest last: the order to send them in.
    pub files: Vec<String>,
}

/// The raft layer's handle on a replicated store: apply, snapshot, install.
#[derive(Clone)]
pub struct StateMachine {
    pub(crate) shared: Arc<Shared>,
    pub(crate) coord: crossbeam::channel::Sender<CoordMsg>,
}

impl StateMachine {
    /// Applies committed entries in order; resolves with each entry's answers once all of them
    /// are applied and visible.
    pub async fn apply(&self, batches: Vec<ApplyBatch>) -> Result<Vec<Vec<Applied>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.shared.inbox[0].send(ShardMsg::Apply { batches, reply: tx }).map_err(|_| StoreError::Shutdown)?;
        rx.await.map_err(|_| StoreError::Shutdown)
    }

    /// The raft position of the last applied entry (empty before the first).
    pub fn applied_meta(&self) -> Bytes {
        self.shared.raft_meta.lock().unwrap().clone()
    }

    /// Where this store keeps snapshots (a received one must be in a `receive_dir` under it).
    pub fn snapshot_root(&self) -> PathBuf {
        self.shared.cfg.data_dir.join("snap")
    }

    /// The store's revision: everything applied so far.
    pub fn revision(&self) -> Revision {
        self.shared.visible.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn coord<T>(&self, msg: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> CoordMsg) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.coord.send(msg(tx)).map_err(|_| StoreError::Shutdown)?;
        rx.await.map_err(|_| StoreError::Shutdown)?
    }

    /// Writes a snapshot of the applied state (and the raft position it covers).
    pub async fn snapshot(&self) -> Result<SnapshotInfo, StoreError> {
        self.coord(|reply| CoordMsg::SnapshotReplica { reply }).await
    }

    /// The snapshot in force, if any.
    pub async fn current_snapshot(&self) -> Result<Option<SnapshotInfo>, StoreError> {
        self.coord(|reply| CoordMsg::CurrentSnapshot { reply }).await
    }

    /// A fresh directory to receive a snapshot's files into (then `install`).
    pub async fn receive_dir(&self) -> Result<(u64, PathBuf), StoreError> {
        self.coord(|reply| CoordMsg::ReceiveDir { reply }).await
    }

    /// Checks the received snapshot in `dir` (checksums, layout, and that it covers
    /// `expected_meta` when given), makes it the one in force, and replaces the store's state
    /// with it. Open watches are caught up from the snapshot's history (or ended with
    /// `Compacted` if it no longer holds where they are).
    pub async fn install(&self, id: u64, dir: PathBuf, expected_meta: Option<Bytes>) -> Result<SnapshotInfo, StoreError> {
        self.coord(|reply| CoordMsg::Install { id, dir, expected_meta, reply }).await
    }

    /// Whether this replica decides lease expiry and automatic compaction (the leader does).
    /// On becoming leader every lease's remaining time restarts at its TTL plus `extend`
    /// (the election timeout), as etcd does on promotion, before any may expire.
    pub fn set_leader(&self, lead: bool, extend: std::time::Duration) {
        let _ = self.coord.send(CoordMsg::Lead { lead, extend });
    }
}
