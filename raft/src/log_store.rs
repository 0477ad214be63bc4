//! The raft log on the project's own log (`storage::wal`): io_uring frames in preallocated
//! segments, group-committed by one writer thread.
//!
//! **Layout.** `DIR/log/<seq>.wal` holds frames (the store's segment format); a frame's items
//! are records: an entry (with its crc32c), the committed log id, or a truncation ("entries
//! after X are gone"). `DIR/META` holds the vote and the last purged log id, written whole
//! (temporary file, fsync, rename, fsync of the directory): both must survive segment removal.
//!
//! **Group commit.** `append` makes entries readable at once (they are kept in memory) and
//! hands them to the writer thread; the writer takes everything queued (appends, truncations,
//! the committed id), writes one frame and syncs it once, then reports every append in it as
//! flushed. A vote or a purge is written after the frames queued before it, in order, and
//! before anything queued after it (openraft requires log and vote I/O to be serialized).
//!
//! **Memory.** Every entry keeps its place on disk; the newest ones also stay in memory (up to
//! `cache_bytes_max`) for replication; older ones are read back with one `pread` and checked
//! against their checksum.
//!
//! **Recovery.** Frames are scanned as the store scans its log (a torn tail is cut; a valid
//! frame after an invalid one is corruption). Entries replay in order: an entry at an index the
//! log already has replaces it and everything after (a truncation that was not recorded before
//! a crash is implied by the entries that followed it). With `Corruption::Truncate` a corrupt
//! log is cut at the damage (the damaged segments are kept aside in `log/corrupt-<time>/`) and
//! the replica catches up from the leader; with `Corruption::Refuse` it does not start.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use storage::command::Reader;
use storage::wal::{self, FrameBuilder, LogIo, Position, WalError, WalWriter};

use crate::codec;
use crate::types::*;

const ITEM_ENTRY: u8 = 1;
const ITEM_COMMITTED: u8 = 2;
const ITEM_TRUNCATE: u8 = 3;
const META_MAGIC: &[u8; 8] = b"CAPRAFT1";
/// A frame is written once it holds this much (a long queue becomes several frames).
const FRAME_BYTES_MAX: usize = 8 << 20;

/// What to do with a log found damaged at open (a valid frame after an invalid one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    Refuse,
    /// Keep what is before the damage, set the rest aside, catch up from the leader.
    Truncate,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub fsync: bool,
    pub io: LogIo,
    /// Entries kept in memory for replication (beyond it they are read from disk).
    pub cache_bytes_max: usize,
    pub on_corruption: Corruption,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            fsync: true,
            io: LogIo::Uring,
            cache_bytes_max: 32 << 20,
            on_corruption: Corruption::Truncate,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
}

struct Slot {
    log_id: LogId,
    loc: Option<Loc>,
    cached: Option<Entry>,
    bytes: u32,
}

struct Index {
    /// Index of `slots[0]`.
    first: u64,
    slots: VecDeque<Slot>,
    purged: Option<LogId>,
    committed: Option<LogId>,
    vote: Option<Vote>,
    cached_bytes: usize,
    /// Bytes of entries in the log (since the last purge): the snapshot trigger.
    live_bytes: u64,
    /// Slots before this have no cached entry (the eviction cursor).
    evicted_to: u64,
    /// Set when the writer failed: the log takes no more writes.
    failed: Option<String>,
}

impl Index {
    fn last(&self) -> Option<LogId> {
        self.slots.back().map(|s| s.log_id).or(self.purged)
    }
    fn next_index(&self) -> u64 {
        self.first + self.slots.len() as u64
    }
    fn slot(&self, index: u64) -> Option<&Slot> {
        index.checked_sub(self.first).and_then(|i| self.slots.get(i as usize))
    }
    fn truncate_after(&mut self, after: Option<u64>) {
        let keep = match after {
            Some(a) if a >= self.first => (a - self.first + 1) as usize,
            Some(_) | None => 0,
        };
        while self.slots.len() > keep {
            let s = self.slots.pop_back().unwrap();
            self.live_bytes -= s.bytes as u64;
            if s.cached.is_some() {
                self.cached_bytes -= s.bytes as usize;
            }
        }
        self.evicted_to = self.evicted_to.min(self.next_index());
    }
    fn purge_to(&mut self, upto: u64) {
        while self.slots.front().is_some_and(|s| s.log_id.index <= upto) {
            let s = self.slots.pop_front().unwrap();
            self.live_bytes -= s.bytes as u64;
            if s.cached.is_some() {
                self.cached_bytes -= s.bytes as usize;
            }
            self.first += 1;
        }
        if self.slots.is_empty() {
            self.first = self.first.max(upto + 1);
        }
        self.evicted_to = self.evicted_to.max(self.first);
    }
    fn evict(&mut self, max: usize) {
        while self.cached_bytes > max && self.evicted_to < self.next_index() {
            let i = (self.evicted_to - self.first) as usize;
            let s = &mut self.slots[i];
            if s.loc.is_none() {
                break; // not on disk yet: must stay
            }
            if s.cached.take().is_some() {
                self.cached_bytes -= s.bytes as usize;
            }
            self.evicted_to += 1;
        }
    }
}

struct Shared {
    dir: PathBuf,
    index: Mutex<Index>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    cache_bytes_max: usize,
    frames_written: AtomicU64,
}

impl Shared {
    fn file(&self, seq: u64) -> io::Result<Arc<File>> {
        let mut files = self.files.lock().unwrap();
        if let Some(f) = files.get(&seq) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(wal::segment_path(&self.dir.join("log"), seq))?);
        files.insert(seq, f.clone());
        Ok(f)
    }

    fn read_at(&self, loc: Loc, want: LogId) -> io::Result<Entry> {
        let f = self.file(loc.seq)?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset)?;
        let item = Bytes::from(buf);
        let corrupt = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raft log segment {} at offset {}: {why}", loc.seq, loc.offset),
            )
        };
        if item.first() != Some(&ITEM_ENTRY) {
            return Err(corrupt("not an entry".into()));
        }
        let e = codec::decode_entry(&item.slice(1..)).map_err(corrupt)?;
        if e.log_id != want {
            return Err(corrupt(format!("holds {} where {want} was written", e.log_id)));
        }
        Ok(e)
    }
}

enum WriteOp {
    Append { entries: Vec<Entry>, done: IOFlushed<TypeConfig> },
    Truncate { after: Option<LogId> },
    Committed(Option<LogId>),
    Vote { vote: Vote, done: tokio::sync::oneshot::Sender<io::Result<()>> },
    Purge { upto: LogId, done: tokio::sync::oneshot::Sender<io::Result<()>> },
}

/// The log store openraft writes through.
pub struct LogStore {
    shared: Arc<Shared>,
    tx: crossbeam::channel::Sender<WriteOp>,
}

/// Reads entries for replication and apply (cheap to clone).
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// What opening a log found, for the operator.
#[derive(Debug, Default)]
pub struct Opened {
    pub entries: u64,
    /// `Some(where)` when a damaged log was cut (`Corruption::Truncate`).
    pub cut_at_corruption: Option<String>,
}

/// One writer per log directory: an `flock` on `LOCK`, held by the writer thread. A log that
/// is closing (its writer finishing) is waited for, briefly.
fn lock(dir: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::other(format!("{} is in use by another process (its LOCK is held)", dir.display())));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn write_meta(dir: &Path, vote: &Option<Vote>, purged: &Option<LogId>) -> io::Result<()> {
    let mut b = BytesMut::new();
    b.put_slice(META_MAGIC);
    match vote {
        Some(v) => {
            b.put_u8(1);
            codec::vote(&mut b, v);
        }
        None => b.put_u8(0),
    }
    codec::opt_log_id(&mut b, purged);
    let crc = crc32c::crc32c(&b);
    b.put_u32_le(crc);
    let tmp = dir.join("META.tmp");
    {
        use std::io::Write;
        let mut f = File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("META"))?;
    wal::fsync_dir(dir)
}

fn read_meta(dir: &Path) -> io::Result<(Option<Vote>, Option<LogId>)> {
    let path = dir.join("META");
    let data = match std::fs::read(&path) {
        Ok(d) => Bytes::from(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
    if data.len() < 12 || &data[..8] != META_MAGIC {
        return Err(bad("not a raft META file"));
    }
    let body = data.slice(..data.len() - 4);
    let crc = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap());
    if crc32c::crc32c(&body) != crc {
        return Err(bad("checksum mismatch"));
    }
    let body = body.slice(8..);
    let mut r = Reader::new(&body);
    let vote = if r.bool().map_err(|e| bad(&e))? { Some(codec::read_vote(&mut r).map_err(|e| bad(&e))?) } else { None };
    let purged = codec::read_opt_log_id(&mut r).map_err(|e| bad(&e))?;
    Ok((vote, purged))
}

/// Sets a damaged log aside from the damage on: the segment is copied to `log/corrupt-<time>/`
/// and cut at `offset`; later segments are moved there.
fn quarantine(log_dir: &Path, path: &Path, offset: u64) -> io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let aside = log_dir.join(format!("corrupt-{stamp}"));
    std::fs::create_dir_all(&aside)?;
    let bad_seq = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| io_err(format!("{} is not a log segment", path.display())))?;
    for (seq, p) in wal::list_segments(log_dir).map_err(io_err)? {
        let name = p.file_name().unwrap().to_owned();
        if seq > bad_seq || (seq == bad_seq && offset < wal::SEGMENT_HEADER_BYTES) {
            std::fs::rename(&p, aside.join(name))?;
        } else if seq == bad_seq {
            std::fs::copy(&p, aside.join(name))?;
            let f = std::fs::OpenOptions::new().write(true).open(&p)?;
            let len = f.metadata()?.len();
            wal::zero_range(&f, offset, len)?;
        }
    }
    wal::fsync_dir(log_dir)?;
    Ok(aside)
}

impl LogStore {
    /// Opens (recovering) or creates the log in `cfg.dir`, and starts its writer thread.
    pub fn open(cfg: LogConfig) -> io::Result<(LogStore, Opened)> {
        let log_dir = cfg.dir.join("log");
        std::fs::create_dir_all(&log_dir)?;
        let lock = lock(&cfg.dir)?;
        let mut opened = Opened::default();
        let start = Position { seq: 0, offset: 0 };
        let recovered = loop {
            match wal::recover_log(&log_dir, 0, start, cfg.segment_bytes) {
                Ok(r) => break r,
                Err(storage::OpenError::Corrupt { path, offset, reason }) if cfg.on_corruption == Corruption::Truncate && opened.cut_at_corruption.is_none() => {
                    let aside = quarantine(&log_dir, &path, offset)?;
                    let what = format!("{} at offset {offset}: {reason}", path.display());
                    tracing::error!(
                        damage = %what,
                        set_aside = %aside.display(),
                        "the raft log is corrupt: cut at the damage; this replica catches up from the leader"
                    );
                    opened.cut_at_corruption = Some(what);
                }
                Err(e) => return Err(io_err(e)),
            }
        };
        let (vote, purged) = read_meta(&cfg.dir)?;
        let mut index = Index {
            first: purged.map_or(1, |p| p.index + 1),
            slots: VecDeque::new(),
            purged,
            committed: None,
            vote,
            cached_bytes: 0,
            live_bytes: 0,
            evicted_to: 0,
            failed: None,
        };
        let mut seg_max: BTreeMap<u64, u64> = BTreeMap::new();
        for (pos, payload) in &recovered.frames {
            let items = wal::frame_items(payload).map_err(io_err)?;
            for (off, item) in items {
                let corrupt = |why: String| io_err(format!("raft log segment {} frame at {}: {why}", pos.seq, pos.offset));
                let mut r = Reader::new(&item);
                match r.u8().map_err(corrupt)? {
                    ITEM_ENTRY => {
                        let e = codec::decode_entry(&item.slice(1..)).map_err(corrupt)?;
                        let idx = e.log_id.index;
                        let m = seg_max.entry(pos.seq).or_default();
                        *m = (*m).max(idx);
                        if purged.is_some_and(|p| idx <= p.index) {
                            continue;
                        }
                        if idx < index.next_index() {
                            index.truncate_after(idx.checked_sub(1));
                        }
                        if index.slots.is_empty() && purged.is_none() {
                            index.first = idx;
                        }
                        if idx != index.next_index() {
                            return Err(corrupt(format!("entry {idx} follows entry {} (a hole in the log)", index.next_index() - 1)));
                        }
                        let bytes = codec::payload_len(&e) as u32;
                        let loc = Loc { seq: pos.seq, offset: pos.offset + wal::FRAME_PAYLOAD_OFFSET + off as u64, len: item.len() as u32 };
                        index.live_bytes += bytes as u64;
                        index.slots.push_back(Slot { log_id: e.log_id, loc: Some(loc), cached: None, bytes });
                    }
                    ITEM_COMMITTED => index.committed = codec::read_opt_log_id(&mut r).map_err(corrupt)?,
                    ITEM_TRUNCATE => {
                        let after = codec::read_opt_log_id(&mut r).map_err(corrupt)?;
                        index.truncate_after(after.map(|a| a.index));
                    }
                    t => return Err(corrupt(format!("unknown raft log record {t}"))),
                }
            }
        }
        index.evicted_to = index.next_index();
        // A committed id beyond the (possibly cut) log is not a promise this log can keep.
        if let (Some(c), Some(last)) = (index.committed, index.last())
            && c.index > last.index
        {
            index.committed = Some(last);
        }
        opened.entries = index.slots.len() as u64;
        for (seq, path) in wal::list_segments(&log_dir).map_err(io_err)? {
            if seq > recovered.end.seq {
                let _ = std::fs::remove_file(path);
            }
        }
        let writer = WalWriter::open(log_dir.clone(), 0, recovered.file, recovered.end, cfg.segment_bytes, cfg.fsync, cfg.io.clone())?;
        let shared = Arc::new(Shared {
            dir: cfg.dir.clone(),
            index: Mutex::new(index),
            files: Mutex::new(HashMap::new()),
            cache_bytes_max: cfg.cache_bytes_max,
            frames_written: AtomicU64::new(0),
        });
        let (tx, rx) = crossbeam::channel::unbounded();
        let s2 = shared.clone();
        let segment_bytes = cfg.segment_bytes;
        std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || {
                let frame_max = FRAME_BYTES_MAX.min((segment_bytes - wal::SEGMENT_HEADER_BYTES) as usize / 2);
                Writer { shared: s2, wal: writer, seg_max, log_dir, frame_max }.run(rx);
                // The directory is free once the writer is done with it.
                drop(lock);
            })?;
        Ok((LogStore { shared, tx }, opened))
    }

    /// Frames written (each one sync): appends per sync tell how well group commit works.
    pub fn frames_written(&self) -> u64 {
        self.shared.frames_written.load(Ordering::Relaxed)
    }

    /// Bytes of entries in the log since the last purge.
    pub fn live_bytes(&self) -> u64 {
        self.shared.index.lock().unwrap().live_bytes
    }

    pub fn reader(&self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }

    fn send(&self, op: WriteOp) -> io::Result<()> {
        self.tx.send(op).map_err(|_| io_err("the raft log's writer has stopped"))
    }
}

struct Writer {
    shared: Arc<Shared>,
    wal: WalWriter,
    /// Per segment, the highest entry index written to it (what a purge may remove).
    seg_max: BTreeMap<u64, u64>,
    log_dir: PathBuf,
    /// A frame is written before it would grow past this (at most half a segment).
    frame_max: usize,
}

struct Pending {
    frame: FrameBuilder,
    /// (log id, offset of the item in the frame, its length) of each entry in the frame.
    placed: Vec<(LogId, usize, u32)>,
    done: Vec<IOFlushed<TypeConfig>>,
    committed: Option<Option<LogId>>,
}

impl Writer {
    fn run(mut self, rx: crossbeam::channel::Receiver<WriteOp>) {
        let mut p = Pending { frame: FrameBuilder::new(), placed: Vec::new(), done: Vec::new(), committed: None };
        let mut scratch = BytesMut::new();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    WriteOp::Append { entries, done } => {
                        for e in &entries {
                            let (head, payload) = codec::entry_parts(e);
                            let item = 5 + head.len() + payload.as_ref().map_or(0, |p| p.len());
                            if !p.frame.is_empty() && p.frame.len() + item > self.frame_max {
                                self.flush(&mut p);
                            }
                            let mut len = 0;
                            let at = p.frame.push_with(|b| {
                                let start = b.len();
                                b.push(ITEM_ENTRY);
                                b.extend_from_slice(&head);
                                if let Some(pl) = &payload {
                                    b.extend_from_slice(pl);
                                }
                                len = b.len() - start;
                            });
                            p.placed.push((e.log_id, at, len as u32));
                        }
                        p.done.push(done);
                    }
                    WriteOp::Truncate { after } => {
                        scratch.clear();
                        scratch.put_u8(ITEM_TRUNCATE);
                        codec::opt_log_id(&mut scratch, &after);
                        p.frame.push_with(|b| b.extend_from_slice(&scratch));
                    }
                    WriteOp::Committed(c) => p.committed = Some(c),
                    WriteOp::Vote { vote, done } => {
                        self.flush(&mut p);
                        let r = self.failed().and_then(|()| {
                            let purged = self.shared.index.lock().unwrap().purged;
                            write_meta(&self.shared.dir, &Some(vote), &purged)
                        });
                        if r.is_ok() {
                            self.shared.index.lock().unwrap().vote = Some(vote);
                        }
                        let _ = done.send(r);
                    }
                    WriteOp::Purge { upto, done } => {
                        self.flush(&mut p);
                        let _ = done.send(self.failed().and_then(|()| self.purge(upto)));
                    }
                }
                if p.frame.len() >= self.frame_max {
                    break;
                }
                next = rx.try_recv().ok();
            }
            self.flush(&mut p);
        }
    }

    fn failed(&self) -> io::Result<()> {
        match &self.shared.index.lock().unwrap().failed {
            Some(why) => Err(io_err(why)),
            None => Ok(()),
        }
    }

    /// Writes and syncs the pending frame; reports its appends flushed (or failed).
    fn flush(&mut self, p: &mut Pending) {
        if let Some(c) = p.committed.take() {
            let mut b = BytesMut::new();
            b.put_u8(ITEM_COMMITTED);
            codec::opt_log_id(&mut b, &c);
            p.frame.push_with(|buf| buf.extend_from_slice(&b));
        }
        if p.frame.is_empty() {
            for d in p.done.drain(..) {
                d.io_completed(self.failed());
            }
            return;
        }
        let result = match self.failed() {
            Err(e) => Err(e),
            Ok(()) => self.wal.append_at(p.frame.finish()).map_err(|e| {
                let why = format!("raft log write failed: {e}");
                if matches!(e, WalError::Sync(_)) {
                    // After a failed fdatasync the page cache may have dropped the data: this
                    // log must not be written again by this process.
                    self.shared.index.lock().unwrap().failed = Some(why.clone());
                }
                io::Error::other(why)
            }),
        };
        p.frame.clear();
        match result {
            Ok(at) => {
                self.shared.frames_written.fetch_add(1, Ordering::Relaxed);
                let mut ix = self.shared.index.lock().unwrap();
                for (id, off, len) in p.placed.drain(..) {
                    let m = self.seg_max.entry(at.seq).or_default();
                    *m = (*m).max(id.index);
                    let loc = Loc { seq: at.seq, offset: at.offset + off as u64, len };
                    if let Some(i) = id.index.checked_sub(ix.first)
                        && let Some(s) = ix.slots.get_mut(i as usize)
                        && s.log_id == id
                    {
                        s.loc = Some(loc);
                    }
                }
                let max = self.shared.cache_bytes_max;
                ix.evict(max);
                drop(ix);
                for d in p.done.drain(..) {
                    d.io_completed(Ok(()));
                }
            }
            Err(e) => {
                p.placed.clear();
                for d in p.done.drain(..) {
                    d.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }

    fn purge(&mut self, upto: LogId) -> io::Result<()> {
        let vote = self.shared.index.lock().unwrap().vote;
        write_meta(&self.shared.dir, &vote, &Some(upto))?;
        let current = self.wal.segment();
        let removable: Vec<u64> = self.seg_max.iter().filter(|(seq, max)| **seq < current && **max <= upto.index).map(|(s, _)| *s).collect();
        let mut removed = 0;
        for seq in removable {
            self.seg_max.remove(&seq);
            self.shared.files.lock().unwrap().remove(&seq);
            match std::fs::remove_file(wal::segment_path(&self.log_dir, seq)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Segments before the first one still needed (or written before this process, whose
        // entries were all purged earlier) go too, keeping the sequence contiguous.
        let first_kept = self.seg_max.keys().next().copied().unwrap_or(current);
        for (seq, path) in wal::list_segments(&self.log_dir).map_err(io_err)? {
            if seq < first_kept {
                self.shared.files.lock().unwrap().remove(&seq);
                std::fs::remove_file(path)?;
                removed += 1;
            }
        }
        if removed > 0 {
            wal::fsync_dir(&self.log_dir)?;
        }
        Ok(())
    }
}

impl LogReader {
    /// Bytes of entries in the log since the last purge.
    pub fn live_bytes(&self) -> u64 {
        self.shared.index.lock().unwrap().live_bytes
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, io::Error> {
        use std::ops::Bound;
        let mut out: Vec<Result<Entry, (Loc, LogId)>> = Vec::new();
        {
            let ix = self.shared.index.lock().unwrap();
            let start = match range.start_bound() {
                Bound::Included(s) => *s,
                Bound::Excluded(s) => s + 1,
                Bound::Unbounded => ix.first,
            }
            .max(ix.first);
            let end = match range.end_bound() {
                Bound::Included(e) => e + 1,
                Bound::Excluded(e) => *e,
                Bound::Unbounded => ix.next_index(),
            }
            .min(ix.next_index());
            for i in start..end {
                let s = ix.slot(i).expect("index within the log");
                match (&s.cached, s.loc) {
                    (Some(e), _) => out.push(Ok(e.clone())),
                    (None, Some(loc)) => out.push(Err((loc, s.log_id))),
                    (None, None) => return Err(io_err(format!("entry {i} is neither in memory nor on disk"))),
                }
            }
        }
        out.into_iter()
            .map(|r| match r {
                Ok(e) => Ok(e),
                Err((loc, id)) => self.shared.read_at(loc, id),
            })
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.index.lock().unwrap().vote)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, io::Error> {
        self.reader().try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.index.lock().unwrap().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let ix = self.shared.index.lock().unwrap();
        Ok(LogState { last_purged_log_id: ix.purged, last_log_id: ix.last() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Vote { vote: *vote, done: tx })?;
        rx.await.map_err(|_| io_err("the raft log's writer stopped while saving the vote"))?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.shared.index.lock().unwrap().committed = committed;
        self.send(WriteOp::Committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.index.lock().unwrap().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut ix = self.shared.index.lock().unwrap();
            if let Some(why) = &ix.failed {
                return Err(io_err(why));
            }
            for e in &entries {
                let idx = e.log_id.index;
                if idx < ix.next_index() {
                    ix.truncate_after(idx.checked_sub(1));
                }
                if ix.slots.is_empty() {
                    ix.first = idx;
                    ix.evicted_to = idx;
                }
                if idx != ix.next_index() {
                    return Err(io_err(format!("append of entry {idx} after entry {} would leave a hole", ix.next_index() - 1)));
                }
                let bytes = codec::payload_len(e) as u32;
                ix.live_bytes += bytes as u64;
                ix.cached_bytes += bytes as usize;
                ix.slots.push_back(Slot { log_id: e.log_id, loc: None, cached: Some(e.clone()), bytes });
            }
        }
        self.send(WriteOp::Append { entries, done: callback })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.shared.index.lock().unwrap().truncate_after(last_log_id.map(|l| l.index));
        self.send(WriteOp::Truncate { after: last_log_id })
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut ix = self.shared.index.lock().unwrap();
            ix.purge_to(log_id.index);
            ix.purged = Some(log_id);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Purge { upto: log_id, done: tx })?;
        rx.await.map_err(|_| io_err("the raft log's writer stopped while purging"))?
    }
}
