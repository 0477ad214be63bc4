//! A replica's simulated disk: what its process has written (the page cache) and what would
//! survive a power cut (what was synced).
//!
//! Writes go to the page cache at once and become durable at the next sync. A killed process
//! keeps the page cache (the kernel writes it back), so a process crash loses nothing written;
//! a power cut keeps what was synced and, of what was not, a random prefix of the writes in
//! order, the last of them possibly torn (a torn append keeps only its first entries: the
//! checksum of each entry stops recovery at the first damaged one, as `raft::log_store` does).
//! A failed sync leaves it unknown what reached the platter: the process must stop, and the
//! disk is then what a power cut would leave.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use crate::rt::{Entry, LogId, SnapshotMeta, Vote};
use crate::state_machine::SnapData;

/// The log's state as it would be read back from the disk.
#[derive(Clone, Default)]
pub struct Image {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub entries: BTreeMap<u64, Entry>,
    pub purged: Option<LogId>,
    pub snapshot: Option<(SnapshotMeta, SnapData)>,
}

/// One write to the disk.
#[derive(Clone)]
pub enum Op {
    Append(Vec<Entry>),
    /// Keep the entries up to this index (none: remove all).
    TruncateAfter(Option<u64>),
    Purge(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
    Snapshot(SnapshotMeta, SnapData),
}

impl Image {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(es) => {
                if let Some(first) = es.first() {
                    let _ = self.entries.split_off(&first.log_id.index);
                }
                for e in es {
                    self.entries.insert(e.log_id.index, e.clone());
                }
            }
            Op::TruncateAfter(keep) => {
                let _ = self.entries.split_off(&keep.map_or(0, |k| k + 1));
            }
            Op::Purge(id) => {
                self.entries = self.entries.split_off(&(id.index + 1));
                self.purged = Some(*id);
            }
            Op::Vote(v) => self.vote = Some(*v),
            Op::Committed(c) => self.committed = *c,
            Op::Snapshot(m, d) => self.snapshot = Some((m.clone(), d.clone())),
        }
    }
}

/// Faults the nemesis arms on a disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskFaults {
    /// Syncs take 20-200 ms instead of 0.1-2 ms.
    pub slow: bool,
    /// The next sync fails.
    pub fail_sync: bool,
    /// Writes fail with ENOSPC (nothing written).
    pub full: bool,
}

struct State {
    generation: u64,
    durable: Image,
    visible: Image,
    pending: Vec<Op>,
    faults: DiskFaults,
    /// A sync failed: the process must not go on with this disk.
    broken: bool,
    syncs: u64,
}

pub struct Disk {
    state: Mutex<State>,
}

fn stale() -> io::Error {
    io::Error::other("disk handle of a crashed incarnation")
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            state: Mutex::new(State {
                generation: 0,
                durable: Image::default(),
                visible: Image::default(),
                pending: Vec::new(),
                faults: DiskFaults::default(),
                broken: false,
                syncs: 0,
            }),
        }
    }
}

impl Disk {
    /// Opens the disk for a new incarnation: its generation and what it reads back.
    pub fn open(&self) -> (u64, Image) {
        let s = self.state.lock().unwrap();
        (s.generation, s.visible.clone())
    }

    /// Reads the page cache's view (what the running process sees).
    pub fn read<T>(&self, generation: u64, f: impl FnOnce(&Image) -> T) -> io::Result<T> {
        let s = self.state.lock().unwrap();
        if s.generation != generation {
            return Err(stale());
        }
        Ok(f(&s.visible))
    }

    /// Writes to the page cache.
    pub fn write(&self, generation: u64, op: Op) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.generation != generation || s.broken {
            return Err(stale());
        }
        if s.faults.full && matches!(op, Op::Append(_) | Op::Snapshot(..)) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device (simulated)"));
        }
        s.visible.apply(&op);
        s.pending.push(op);
        Ok(())
    }

    /// How long the next sync takes: its latency is drawn by the caller from this range (µs).
    pub fn sync_latency_us(&self) -> (u64, u64) {
        if self.state.lock().unwrap().faults.slow { (20_000, 200_000) } else { (100, 2_000) }
    }

    /// Makes everything written so far durable, or fails (and the disk is then broken).
    pub fn sync(&self, generation: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.generation != generation || s.broken {
            return Err(stale());
        }
        if s.faults.fail_sync {
            s.faults.fail_sync = false;
            s.broken = true;
            return Err(io::Error::other("fdatasync failed: EIO (simulated)"));
        }
        let pending = std::mem::take(&mut s.pending);
        for op in &pending {
            s.durable.apply(op);
        }
        s.syncs += 1;
        Ok(())
    }

    pub fn set_faults(&self, f: DiskFaults) {
        self.state.lock().unwrap().faults = f;
    }

    pub fn faults(&self) -> DiskFaults {
        self.state.lock().unwrap().faults
    }

    pub fn broken(&self) -> bool {
        self.state.lock().unwrap().broken
    }

    /// The process was killed: what it wrote stays (the page cache), nothing more happens.
    pub fn crash(&self) -> String {
        let mut s = self.state.lock().unwrap();
        if s.broken {
            drop(s);
            return self.power_cut(&mut |n| n / 2) + " (after a failed sync)";
        }
        s.generation += 1;
        let pending = std::mem::take(&mut s.pending);
        for op in &pending {
            s.durable.apply(op);
        }
        s.visible = s.durable.clone();
        format!("process killed: {} unsynced writes kept by the page cache", pending.len())
    }

    /// The power went out: synced writes stay; of the rest a prefix of `choose(n)` writes
    /// reaches the disk, the last of them torn when `choose` says so (see the module's
    /// documentation). `choose(n)` picks a number in `0..=n`; it is called again, with the
    /// entries of a torn append, to pick how many of them survive.
    pub fn power_cut(&self, choose: &mut dyn FnMut(usize) -> usize) -> String {
        let mut s = self.state.lock().unwrap();
        s.generation += 1;
        s.broken = false;
        s.faults.fail_sync = false;
        let pending = std::mem::take(&mut s.pending);
        let n = pending.len();
        let keep = choose(n).min(n);
        let mut torn = String::new();
        for op in &pending[..keep] {
            s.durable.apply(op);
        }
        if keep < n
            && let Op::Append(es) = &pending[keep]
            && es.len() > 1
        {
            let part = choose(es.len() - 1).min(es.len() - 1);
            if part > 0 {
                s.durable.apply(&Op::Append(es[..part].to_vec()));
                torn = format!(", and {part} of {} entries of the next append (torn)", es.len());
            }
        }
        s.visible = s.durable.clone();
        format!("power cut: {keep} of {n} unsynced writes reached the disk{torn}")
    }
}
