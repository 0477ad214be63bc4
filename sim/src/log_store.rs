//! openraft's log storage over the simulated disk, group-committed as `raft::log_store` is:
//! appends go to the page cache at once, one writer task syncs whatever has accumulated and
//! then tells raft those appends are durable. Votes are synced before `save_vote` returns.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Duration;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use tokio::sync::mpsc;

use crate::Bug;
use crate::disk::{Disk, Op};
use crate::rt::{Cfg, Entry, LogId, Vote, spawn};
use crate::world::World;

#[derive(Clone)]
pub struct LogStore {
    id: u64,
    generation: u64,
    disk: Arc<Disk>,
    world: Arc<World>,
    /// To the writer: an append's callback (none: sync only).
    writer: mpsc::UnboundedSender<Option<IOFlushed<Cfg>>>,
}

/// Sleeps for a sync's simulated latency.
pub async fn sync_delay(world: &World, disk: &Disk) {
    let (lo, hi) = disk.sync_latency_us();
    tokio::time::sleep(Duration::from_micros(world.range(lo, hi))).await;
}

impl LogStore {
    pub fn open(id: u64, generation: u64, disk: Arc<Disk>, world: Arc<World>) -> LogStore {
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<IOFlushed<Cfg>>>();
        let (d, w) = (disk.clone(), world.clone());
        spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut done = vec![first];
                while let Ok(more) = rx.try_recv() {
                    done.push(more);
                }
                sync_delay(&w, &d).await;
                let r = d.sync(generation);
                if let Err(e) = &r {
                    w.log("disk", format!("n{id}: sync failed: {e}"));
                }
                for cb in done.into_iter().flatten() {
                    cb.io_completed(r.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string())));
                }
                if r.is_err() {
                    return;
                }
            }
        });
        LogStore { id, generation, disk, world, writer: tx }
    }

    fn write(&self, op: Op) -> io::Result<()> {
        self.disk.write(self.generation, op)
    }

    /// Syncs now (for what must be durable before the call returns).
    async fn sync_now(&self) -> io::Result<()> {
        sync_delay(&self.world, &self.disk).await;
        self.disk.sync(self.generation)
    }
}

impl RaftLogReader<Cfg> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, io::Error> {
        self.disk.read(self.generation, |i| i.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.disk.read(self.generation, |i| i.vote)
    }
}

impl RaftLogStorage<Cfg> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Cfg>, io::Error> {
        self.disk.read(self.generation, |i| {
            let last = i.entries.values().next_back().map(|e| e.log_id).or(i.purged);
            LogState { last_purged_log_id: i.purged, last_log_id: last }
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write(Op::Vote(*vote))?;
        self.sync_now().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.write(Op::Committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.disk.read(self.generation, |i| i.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Cfg>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(a), Some(b)) = (entries.first(), entries.last()) {
            self.world.log("disk", format!("n{}: append {}..={}", self.id, a.log_id.index, b.log_id.index));
        }
        self.write(Op::Append(entries))?;
        if self.world.bug(Bug::AckBeforeFsync) {
            // Planted: durable "now", synced later.
            callback.io_completed(Ok(()));
            let _ = self.writer.send(None);
            return Ok(());
        }
        self.writer.send(Some(callback)).map_err(|_| io::Error::other("log writer stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.world.log("disk", format!("n{}: truncate after {:?}", self.id, last_log_id.map(|l| l.index)));
        self.write(Op::TruncateAfter(last_log_id.map(|l| l.index)))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.world.log("disk", format!("n{}: purge through {}", self.id, log_id.index));
        self.write(Op::Purge(log_id))
    }
}
