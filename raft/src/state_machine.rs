//! openraft's state machine: the store's shards (`storage::StateMachine`).
//!
//! Entries are applied in log order by the store's shard, which hands out revisions as it goes;
//! each entry's position (its log id and the membership in force) goes into the store with it,
//! so a snapshot of the store says exactly which entries it covers. A snapshot is the store's
//! own flatbuffers snapshot directory: its files are what the leader streams to a follower.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use storage::{ApplyBatch, SnapshotInfo};

use crate::codec;
use crate::types::*;

/// A snapshot as openraft hands it around: its position and its files.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFiles>;

/// A snapshot's files: a store snapshot directory, or one being received.
#[derive(Clone, Debug)]
pub struct SnapshotFiles {
    /// The store's id for the directory (a received one is installed under it).
    pub id: u64,
    pub dir: PathBuf,
    /// File names in the order to send them (the manifest last).
    pub files: Vec<String>,
    /// The store revision it holds.
    pub revision: u64,
}

impl SnapshotFiles {
    fn of(info: &SnapshotInfo) -> SnapshotFiles {
        SnapshotFiles { id: info.id, dir: info.dir.clone(), files: info.files.clone(), revision: info.revision }
    }
}

/// What applying cost so far (for the status page and benchmarks).
#[derive(Default, Debug)]
pub struct ApplyStats {
    pub calls: std::sync::atomic::AtomicU64,
    pub entries: std::sync::atomic::AtomicU64,
    /// Microseconds collecting and decoding entries, and waiting for the store to apply them.
    pub decode_us: std::sync::atomic::AtomicU64,
    pub store_us: std::sync::atomic::AtomicU64,
}

#[derive(Clone)]
pub struct StateMachineStore {
    sm: storage::StateMachine,
    pub stats: Arc<ApplyStats>,
    /// The last applied position, kept decoded (every entry's meta is built from it).
    applied: Arc<Mutex<(Option<LogId>, StoredMembership)>>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn snapshot_of(info: &SnapshotInfo) -> io::Result<Snapshot> {
    let (last_log_id, last_membership) = codec::read_applied_meta(&info.meta).map_err(io_err)?;
    Ok(Snapshot { meta: SnapshotMeta { last_log_id, last_membership }, snapshot: SnapshotFiles::of(info) })
}

impl StateMachineStore {
    pub fn new(sm: storage::StateMachine) -> io::Result<StateMachineStore> {
        let applied = codec::read_applied_meta(&sm.applied_meta()).map_err(|e| io_err(format!("the store's raft position: {e}")))?;
        Ok(StateMachineStore { sm, stats: Default::default(), applied: Arc::new(Mutex::new(applied)) })
    }

    pub fn store(&self) -> &storage::StateMachine {
        &self.sm
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.applied.lock().unwrap().0
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFiles;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let info = self.sm.snapshot().await.map_err(io_err)?;
        tracing::info!(revision = info.revision, dir = %info.dir.display(), "raft snapshot built");
        snapshot_of(&info)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFiles;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self.applied.lock().unwrap().clone())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let t0 = std::time::Instant::now();
        let (mut last, mut membership) = self.applied.lock().unwrap().clone();
        let mut batches = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            last = Some(entry.log_id);
            let commands = match entry.payload {
                EntryPayload::Normal(b) => storage::command::decode_batch(&b.bytes)
                    .map_err(|e| io_err(format!("committed entry {} does not decode: {e}", entry.log_id)))?,
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m);
                    vec![]
                }
                EntryPayload::Blank => vec![],
            };
            batches.push(ApplyBatch { meta: codec::applied_meta(&last, &membership), commands });
            responders.push(responder);
        }
        if batches.is_empty() {
            return Ok(());
        }
        let t1 = std::time::Instant::now();
        self.stats.calls.fetch_add(1, Relaxed);
        self.stats.entries.fetch_add(batches.len() as u64, Relaxed);
        let results = self.sm.apply(batches).await.map_err(io_err)?;
        self.stats.decode_us.fetch_add((t1 - t0).as_micros() as u64, Relaxed);
        self.stats.store_us.fetch_add(t1.elapsed().as_micros() as u64, Relaxed);
        *self.applied.lock().unwrap() = (last, membership);
        for (answers, responder) in results.into_iter().zip(responders) {
            if let Some(r) = responder {
                r.send(Answers(answers));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, mut snapshot: SnapshotFiles) -> Result<(), io::Error> {
        let received_here = snapshot.dir.parent() == Some(self.sm.snapshot_root().as_path())
            && snapshot.dir.extension().is_some_and(|e| e == "tmp");
        if !received_here {
            // Files from elsewhere (another store in this process): copy them in first.
            let (id, dir) = self.sm.receive_dir().await.map_err(io_err)?;
            for f in &snapshot.files {
                std::fs::copy(snapshot.dir.join(f), dir.join(f))?;
            }
            snapshot.id = id;
            snapshot.dir = dir;
        }
        let expected = codec::applied_meta(&meta.last_log_id, &meta.last_membership);
        let info = self.sm.install(snapshot.id, snapshot.dir.clone(), Some(expected)).await.map_err(io_err)?;
        let (last, membership) = codec::read_applied_meta(&info.meta).map_err(io_err)?;
        *self.applied.lock().unwrap() = (last, membership);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        match self.sm.current_snapshot().await.map_err(io_err)? {
            Some(info) => Ok(Some(snapshot_of(&info)?)),
            None => Ok(None),
        }
    }
}
