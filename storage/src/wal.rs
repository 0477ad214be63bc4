//! The write-ahead log: record encoding and the recovery decision (pure), and one shard's
//! segment writer over io_uring (I/O). See `storage/DESIGN.md` for the layout and the crash
//! analysis.
//!
//! A shard writes one *frame* per group commit: `[len u32][crc32c u32][payload][pad to 8]`,
//! with one `write` and one `fdatasync` linked in a single io_uring submission. A frame is the
//! unit of atomicity: a crash mid-write leaves a frame whose checksum fails. Frames are written
//! one after another, each only after the previous one is durable, so a valid frame after an
//! invalid one can only be corruption of synced data, and recovery refuses to start.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use crossbeam::channel::{Receiver, RecvTimeoutError, bounded};

pub use crate::disk::LogIo;
use crate::error::OpenError;
use crate::types::{LeaseId, Revision};

pub const SEGMENT_MAGIC: &[u8; 8] = b"CAPWAL01";
/// Records start after this header.
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
const FRAME_HEADER_BYTES: usize = 8;
/// A frame longer than this is not a frame (recovery's sanity bound).
pub const FRAME_BYTES_MAX: usize = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put { key: Bytes, value: Bytes, lease: LeaseId },
    Delete { key: Bytes },
}

impl Change {
    pub fn key(&self) -> &Bytes {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }
}

/// One logical log record: the resolved effects of one write (never its compares, so replay is
/// deterministic), plus store-wide markers written by the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// The revision of `changes`; for a record without changes, the store's revision when it
    /// was written (it orders after the change record of that revision).
    pub revision: Revision,
    pub changes: Vec<Change>,
    pub lease_grants: Vec<(LeaseId, i64)>,
    pub lease_revokes: Vec<LeaseId>,
    /// Compaction to this revision (0 = none).
    pub compact: Revision,
}

impl Record {
    /// Replay order across shards' logs: by revision, markers after that revision's changes.
    pub fn order_key(&self) -> (Revision, bool) {
        (self.revision, self.changes.is_empty())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1u8);
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&(self.changes.len() as u32).to_le_bytes());
        for c in &self.changes {
            match c {
                Change::Put { key, value, lease } => {
                    out.push(1);
                    put_bytes(out, key);
                    put_bytes(out, value);
                    out.extend_from_slice(&lease.to_le_bytes());
                }
                Change::Delete { key } => {
                    out.push(2);
                    put_bytes(out, key);
                }
            }
        }
        out.extend_from_slice(&(self.lease_grants.len() as u32).to_le_bytes());
        for (id, ttl) in &self.lease_grants {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&ttl.to_le_bytes());
        }
        out.extend_from_slice(&(self.lease_revokes.len() as u32).to_le_bytes());
        for id in &self.lease_revokes {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend_from_slice(&self.compact.to_le_bytes());
    }

    pub fn encoded_len_hint(&self) -> usize {
        32 + self
            .changes
            .iter()
            .map(|c| match c {
                Change::Put { key, value, .. } => 17 + key.len() + value.len(),
                Change::Delete { key } => 5 + key.len(),
            })
            .sum::<usize>()
    }

    /// Decodes one record; values are slices of `buf` (no copy).
    pub fn decode(buf: &Bytes) -> Result<Record, String> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u8()?;
        if version != 1 {
            return Err(format!("unknown record version {version}"));
        }
        let revision = r.u64()?;
        let n = r.u32()? as usize;
        let mut changes = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            match r.u8()? {
                1 => {
                    let key = r.bytes()?;
                    let value = r.bytes()?;
                    let lease = r.u64()? as i64;
                    changes.push(Change::Put { key, value, lease });
                }
                2 => changes.push(Change::Delete { key: r.bytes()? }),
                t => return Err(format!("unknown change type {t}")),
            }
        }
        let n = r.u32()? as usize;
        let mut lease_grants = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            lease_grants.push((r.u64()? as i64, r.u64()? as i64));
        }
        let n = r.u32()? as usize;
        let mut lease_revokes = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            lease_revokes.push(r.u64()? as i64);
        }
        let compact = r.u64()?;
        if r.pos != buf.len() {
            return Err(format!("{} trailing bytes after record", buf.len() - r.pos));
        }
        Ok(Record { revision, changes, lease_grants, lease_revokes, compact })
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, String> {
        if self.buf.len() - self.pos < n {
            return Err(format!("record truncated at byte {}", self.pos));
        }
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.buf[self.take(1)?.start])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.buf[self.take(4)?].try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.buf[self.take(8)?].try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u32()? as usize;
        Ok(self.buf.slice(self.take(n)?))
    }
}

/// A frame's payload: records, each prefixed by its length.
#[derive(Default)]
pub struct FrameBuilder {
    buf: Vec<u8>,
    records: usize,
}

impl FrameBuilder {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(64 << 10);
        buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        FrameBuilder { buf, records: 0 }
    }
    pub fn push(&mut self, record: &Record) {
        self.push_with(|buf| record.encode(buf));
    }
    /// Appends one item written by `f`; returns its offset in the frame (after its length).
    pub fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0u8; 4]);
        f(&mut self.buf);
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.records += 1;
        at + 4
    }
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
    /// Bytes the frame will take on disk.
    pub fn len(&self) -> usize {
        self.buf.len().next_multiple_of(8)
    }
    /// Seals the frame: header, checksum, padding. The buffer is ready to write.
    pub fn finish(&mut self) -> &[u8] {
        let payload_len = self.buf.len() - FRAME_HEADER_BYTES;
        let crc = crc32c::crc32c(&self.buf[FRAME_HEADER_BYTES..]);
        self.buf[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let padded = self.buf.len().next_multiple_of(8);
        self.buf.resize(padded, 0);
        &self.buf
    }
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        self.records = 0;
    }
}

/// Splits a valid frame payload into its items (each `[length u32][bytes]`), with each item's
/// offset in the payload. The store's items are `Record`s; other logs (raft's) put their own.
pub fn frame_items(payload: &Bytes) -> Result<Vec<(usize, Bytes)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < payload.len() {
        if payload.len() - pos < 4 {
            return Err("frame payload ends inside a record length".into());
        }
        let n = u32::from_le_bytes(payload[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 4;
        if payload.len() - pos < n {
            return Err("frame payload ends inside a record".into());
        }
        out.push((pos, payload.slice(pos..pos + n)));
        pos += n;
    }
    Ok(out)
}

/// Splits a valid frame payload into its records.
pub fn frame_records(payload: &Bytes) -> Result<Vec<Record>, String> {
    frame_items(payload)?.into_iter().map(|(_, item)| Record::decode(&item)).collect()
}

/// Where a frame's payload starts, relative to the frame.
pub const FRAME_PAYLOAD_OFFSET: u64 = FRAME_HEADER_BYTES as u64;

// ---------------------------------------------------------------------------------------------
// Recovery decision (pure)
// ---------------------------------------------------------------------------------------------

/// What the end of a segment's valid frames looks like.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// Valid frames, then zeros (or the end of the file).
    Clean,
    /// An invalid frame at `at` with no valid frame after it: an unsynced write cut by a crash.
    /// Its bytes extend at most to `garbage_end`.
    Torn { at: u64, garbage_end: u64 },
    /// A valid frame at `valid_at` after an invalid region starting at `at`: synced data was
    /// damaged.
    Corrupt { at: u64, valid_at: u64, reason: String },
}

#[derive(Debug)]
pub struct SegmentScan {
    /// (offset, payload) of each valid frame, in order.
    pub frames: Vec<(u64, Bytes)>,
    /// Offset after the last valid frame: where the next frame goes.
    pub end: u64,
    pub tail: Tail,
}

fn frame_at(data: &Bytes, off: usize) -> Result<Option<(Bytes, usize)>, String> {
    if data.len() - off < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap());
    if len == 0 && crc == 0 {
        return Ok(None);
    }
    if len == 0 || len > FRAME_BYTES_MAX || data.len() - off - FRAME_HEADER_BYTES < len {
        return Err(format!("frame length {len} is impossible"));
    }
    let payload = data.slice(off + FRAME_HEADER_BYTES..off + FRAME_HEADER_BYTES + len);
    if crc32c::crc32c(&payload) != crc {
        return Err("frame checksum mismatch".into());
    }
    frame_items(&payload)?;
    Ok(Some((payload, (FRAME_HEADER_BYTES + len).next_multiple_of(8))))
}

/// Scans one segment's bytes (header included) and decides what its tail is.
pub fn scan_segment(data: &Bytes) -> SegmentScan {
    let mut frames = Vec::new();
    let mut off = SEGMENT_HEADER_BYTES as usize;
    loop {
        match frame_at(data, off) {
            Ok(Some((payload, len))) => {
                frames.push((off as u64, payload));
                off += len;
            }
            Ok(None) => {
                // Zeros here: anything non-zero after them is garbage or a lost-then-found frame.
                let tail = classify_after(data, off, off);
                return SegmentScan { frames, end: off as u64, tail };
            }
            Err(reason) => {
                let tail = match classify_after(data, off, off + 8) {
                    Tail::Clean => Tail::Torn { at: off as u64, garbage_end: last_nonzero(data, off) },
                    Tail::Torn { garbage_end, .. } => Tail::Torn { at: off as u64, garbage_end },
                    Tail::Corrupt { valid_at, .. } => {
                        Tail::Corrupt { at: off as u64, valid_at, reason }
                    }
                };
                return SegmentScan { frames, end: off as u64, tail };
            }
        }
    }
}

/// Looks for a valid frame at any 8-aligned offset from `from`; `at` is where trouble began.
fn classify_after(data: &Bytes, at: usize, from: usize) -> Tail {
    let mut off = from.next_multiple_of(8);
    let mut nonzero = false;
    while let Some(nz) = next_nonzero(data, off) {
        nonzero = true;
        let cand = nz & !7;
        if cand + FRAME_HEADER_BYTES <= data.len()
            && let Ok(Some(_)) = frame_at(data, cand) {
                return Tail::Corrupt {
                    at: at as u64,
                    valid_at: cand as u64,
                    reason: "invalid bytes before a valid frame".into(),
                };
            }
        off = cand + 8;
    }
    if nonzero {
        Tail::Torn { at: at as u64, garbage_end: last_nonzero(data, at) }
    } else {
        Tail::Clean
    }
}

/// The first non-zero byte at or after `from`. Whole zero blocks are skipped with one
/// comparison each (a preallocated segment is mostly zeros).
fn next_nonzero(data: &[u8], from: usize) -> Option<usize> {
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut off = from;
    while off < data.len() {
        let end = (off + BLOCK).min(data.len());
        if data[off..end] != ZEROS[..end - off] {
            return data[off..end].iter().position(|b| *b != 0).map(|p| off + p);
        }
        off = end;
    }
    None
}

fn last_nonzero(data: &[u8], from: usize) -> u64 {
    let mut last = from;
    let mut off = from;
    while let Some(nz) = next_nonzero(data, off) {
        let block_end = (nz / 4096 + 1) * 4096;
        let end = block_end.min(data.len());
        last = nz + data[nz..end].iter().rposition(|b| *b != 0).map_or(0, |p| p) + 1;
        off = end;
    }
    last as u64
}

/// Whether the segment's header is ours, and for which shard and sequence.
pub fn parse_header(data: &[u8]) -> Result<(u32, u64), String> {
    if data.len() < SEGMENT_HEADER_BYTES as usize {
        return Err(format!("segment is {} bytes, shorter than its header", data.len()));
    }
    if &data[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let shard = u32::from_le_bytes(data[8..12].try_into().unwrap());
    let seq = u64::from_le_bytes(data[12..20].try_into().unwrap());
    let crc = u32::from_le_bytes(data[20..24].try_into().unwrap());
    if crc32c::crc32c(&data[0..20]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    Ok((shard, seq))
}

fn header_bytes(shard: u32, seq: u64) -> Vec<u8> {
    let mut h = vec![0u8; SEGMENT_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&shard.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

// ---------------------------------------------------------------------------------------------
// Segment files (I/O)
// ---------------------------------------------------------------------------------------------

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// Lists `(seq, path)` of a shard's segments, ascending; removes leftover temporary files.
/// The log's segments, in sequence. A `.tmp` file is not one, and is left alone: while the
/// log runs it is the next segment being prepared (a snapshot's `remove_before` lists the
/// segments too, and once deleted the preparer's file under it, failing the rollover's
/// writes). `recover_log` removes the ones a crash left behind.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, OpenError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| OpenError::io(dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| OpenError::io(dir, e))?;
        let name = ent.file_name().to_string_lossy().to_string();
        if let Some(hex) = name.strip_suffix(".wal")
            && let Ok(seq) = u64::from_str_radix(hex, 16) {
                out.push((seq, ent.path()));
            }
    }
    out.sort();
    Ok(out)
}

pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A log's valid frames after a position, and where writing continues.
pub struct RecoveredLog {
    /// `(position of the frame, payload)` of every valid frame at or after `from`, in order.
    pub frames: Vec<(Position, Bytes)>,
    /// The segment writing continues in, open for writing.
    pub file: File,
    pub end: Position,
}

/// Reads a log directory at open: segments in sequence (a missing one is corruption), each
/// scanned by `scan_segment`; a torn tail is zeroed (an unacknowledged write cut by a crash),
/// corruption refuses to start naming the file and offset. Segments before `from` (covered by
/// a snapshot) are removed. Creates the first segment of an empty log.
pub fn recover_log(dir: &Path, shard: u32, from: Position, segment_bytes: u64) -> Result<RecoveredLog, OpenError> {
    std::fs::create_dir_all(dir).map_err(|e| OpenError::io(dir, e))?;
    // A segment a crash cut short while it was being prepared (no preparer runs yet).
    for ent in std::fs::read_dir(dir).map_err(|e| OpenError::io(dir, e))? {
        let ent = ent.map_err(|e| OpenError::io(dir, e))?;
        if ent.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = std::fs::remove_file(ent.path());
        }
    }
    let mut segs = list_segments(dir)?;
    // Segments before the snapshot's position are covered by it (removal may have been cut
    // short by a crash).
    for (seq, path) in segs.iter().filter(|(seq, _)| *seq < from.seq) {
        tracing::info!(seq, "removing a log segment covered by the snapshot");
        let _ = std::fs::remove_file(path);
    }
    segs.retain(|(seq, _)| *seq >= from.seq);
    if segs.is_empty() {
        let seq = from.seq.max(1);
        let file = prepare_segment(dir, shard, seq, segment_bytes).map_err(|e| OpenError::io(dir, e))?;
        return Ok(RecoveredLog { frames: vec![], file, end: Position { seq, offset: SEGMENT_HEADER_BYTES } });
    }
    let mut frames = Vec::new();
    let mut torn: Option<(PathBuf, u64)> = None;
    let mut to_zero: Option<(PathBuf, u64, u64)> = None;
    let mut last: Option<(PathBuf, u64, u64)> = None; // path, seq, end
    for (i, (seq, path)) in segs.iter().enumerate() {
        if *seq != from.seq.max(segs[0].0) + i as u64 {
            return Err(OpenError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!("log segment {} is missing before this one", from.seq.max(segs[0].0) + i as u64),
            });
        }
        let file = File::open(path).map_err(|e| OpenError::io(path, e))?;
        // SAFETY: segments are only written by this process's writer, which is not running yet.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| OpenError::io(path, e))?;
        let data = Bytes::from_owner(map);
        let (hshard, hseq) =
            parse_header(&data).map_err(|reason| OpenError::Corrupt { path: path.clone(), offset: 0, reason })?;
        if hshard != shard || hseq != *seq {
            return Err(OpenError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!("segment header says shard {hshard} seq {hseq}"),
            });
        }
        let scan = scan_segment(&data);
        if let Some((tpath, at)) = &torn
            && !scan.frames.is_empty()
        {
            return Err(OpenError::Corrupt {
                path: tpath.clone(),
                offset: *at,
                reason: format!("invalid frame, but a later segment {} holds valid frames", path.display()),
            });
        }
        match scan.tail {
            Tail::Clean => {}
            Tail::Torn { at, garbage_end: g } => {
                tracing::warn!(path = %path.display(), offset = at, "cutting off a torn log tail (an unacknowledged write cut by a crash)");
                torn = Some((path.clone(), at));
                to_zero = Some((path.clone(), at, g));
            }
            Tail::Corrupt { at, valid_at, reason } => {
                return Err(OpenError::Corrupt {
                    path: path.clone(),
                    offset: at,
                    reason: format!("{reason}; a valid frame follows at offset {valid_at}"),
                });
            }
        }
        for (off, payload) in scan.frames {
            let pos = Position { seq: *seq, offset: off };
            if pos < from {
                continue;
            }
            frames.push((pos, payload));
        }
        last = Some((path.clone(), *seq, scan.end));
    }
    let (path, seq, end) = last.expect("at least one segment");
    if let Some((tpath, from, to)) = to_zero {
        let f = OpenOptions::new().write(true).open(&tpath).map_err(|e| OpenError::io(&tpath, e))?;
        zero_range(&f, from, to).map_err(|e| OpenError::io(&tpath, e))?;
    }
    let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| OpenError::io(&path, e))?;
    Ok(RecoveredLog { frames, file, end: Position { seq, offset: end } })
}

/// Creates a segment whose every block is written (zeros) and synced, so that later frames
/// overwrite allocated blocks and `fdatasync` has no metadata to commit (about 10x cheaper per
/// sync on this disk than appending). Written under a temporary name, renamed when complete.
///
/// The zeros go to the disk a step at a time as they are written (`paced`), not all at the
/// final sync, which stalled the active segment's fdatasyncs 12-31 ms. The pages stay cached,
/// so the frames written over them later need no read of the block first, as they would
/// after O_DIRECT writes.
pub fn prepare_segment(dir: &Path, shard: u32, seq: u64, bytes: u64) -> std::io::Result<File> {
    crate::failpoint!("wal::prepare", Err);
    let path = segment_path(dir, seq);
    let tmp = path.with_extension("wal.tmp");
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).read(true).open(&tmp)?;
    let zeros = vec![0u8; crate::paced::STEP];
    let mut at = crate::paced::write_all(&mut f, 0, &header_bytes(shard, seq))?;
    while at < bytes {
        let n = (bytes - at).min(zeros.len() as u64) as usize;
        at = crate::paced::write_all(&mut f, at, &zeros[..n])?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    fsync_dir(dir)?;
    Ok(f)
}

/// Prepares the next segment in the background, once the active one is half full, so a
/// rollover does not wait for it (and an idle store does not hold a spare segment).
struct Preparer {
    request: crossbeam::channel::Sender<()>,
    requested: bool,
    rx: Receiver<std::io::Result<(u64, File)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A closed log waits for a segment being prepared: nothing of it is written after its store
/// is closed (a directory removed just after would otherwise get the segment back, or fail).
impl Drop for Preparer {
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.request, bounded(1).0));
        drop(std::mem::replace(&mut self.rx, crossbeam::channel::never()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Segment preparer threads of this process not yet finished: counted before the thread is
/// spawned and until its last statement, so a joined preparer is never counted (its name in
/// /proc appears late and goes late, and cannot tell a test either).
static PREPARERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many logs' segment preparers are running in this process (tests: nothing outlives a
/// closed store).
pub fn preparers_running() -> usize {
    PREPARERS.load(std::sync::atomic::Ordering::SeqCst)
}

struct Counted;

impl Drop for Counted {
    fn drop(&mut self) {
        PREPARERS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Preparer {
    fn start(dir: PathBuf, shard: u32, first_seq: u64, bytes: u64) -> Preparer {
        let (request, requests) = bounded::<()>(1);
        let (tx, rx) = bounded(1);
        PREPARERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let counted = Counted;
        let thread = std::thread::Builder::new()
            .name(format!("wal-prep-{shard}"))
            .spawn(move || {
                let _counted = counted;
                let mut seq = first_seq;
                while requests.recv().is_ok() {
                    let mut backoff = Duration::from_millis(50);
                    loop {
                        let r = prepare_segment(&dir, shard, seq, bytes);
                        let ok = r.is_ok();
                        if let Err(e) = &r {
                            tracing::warn!(shard, seq, error = %e, "preparing a WAL segment failed; will retry");
                            let _ = std::fs::remove_file(segment_path(&dir, seq).with_extension("wal.tmp"));
                        }
                        // Blocks until the writer takes it (at its rollover).
                        if tx.send(r.map(|f| (seq, f))).is_err() {
                            return;
                        }
                        if ok {
                            seq += 1;
                            break;
                        }
                        // The pause before a retry ends at once when the log closes (its
                        // request sender goes), so a close never waits out a backoff.
                        if let Err(crossbeam::channel::RecvTimeoutError::Disconnected) = requests.recv_timeout(backoff) {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            })
            .expect("spawn wal preparer");
        Preparer { request, requested: false, rx, thread: Some(thread) }
    }

    fn ask(&mut self) {
        if !self.requested {
            let _ = self.request.try_send(());
            self.requested = true;
        }
    }
}

/// Why a frame could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("disk full")]
    NoSpace,
    /// Nothing of the frame is durable and the log can take the next frame at the same place.
    #[error("write failed: {0}")]
    Write(std::io::Error),
    /// The sync failed: whether the frame is durable is unknown (the page cache may have dropped
    /// it). The log must not be written again by this process.
    #[error("fdatasync failed: {0}")]
    Sync(std::io::Error),
}

fn write_error(e: std::io::Error) -> WalError {
    if e.raw_os_error() == Some(libc::ENOSPC) { WalError::NoSpace } else { WalError::Write(e) }
}

/// The log as the engine sees it. The shard loop and the coordinator use only this, so a
/// later issue can put replication underneath (openraft's log storage: a frame becomes an
/// entry, `append` returns once the entry is committed by a quorum) without touching them.
pub trait Log: Send {
    /// Makes one sealed frame durable, or fails leaving nothing of it to replay.
    fn append(&mut self, frame: &[u8]) -> Result<(), WalError>;
    /// Where the next frame goes: a snapshot records it as the point replay starts from.
    fn position(&self) -> Position;
    /// Bytes appended since the last snapshot (the automatic snapshot trigger).
    fn bytes_since_snapshot(&self) -> u64;
    /// A snapshot now covers everything before `pos`: drop it. Returns segments removed.
    fn truncate_before(&mut self, pos: Position) -> std::io::Result<usize>;
}

impl Log for WalWriter {
    fn append(&mut self, frame: &[u8]) -> Result<(), WalError> {
        WalWriter::append(self, frame)
    }
    fn position(&self) -> Position {
        self.pos
    }
    fn bytes_since_snapshot(&self) -> u64 {
        self.bytes_since_snapshot
    }
    fn truncate_before(&mut self, pos: Position) -> std::io::Result<usize> {
        self.bytes_since_snapshot = 0;
        WalWriter::remove_before(&self.dir, pos)
    }
}

/// Where the log stands: the next frame goes to `offset` of segment `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

/// One shard's log writer. Owns its io_uring.
pub struct WalWriter {
    dir: PathBuf,
    ring: io_uring::IoUring,
    file: File,
    pos: Position,
    segment_bytes: u64,
    fsync: bool,
    io: LogIo,
    preparer: Preparer,
    bytes_since_snapshot: u64,
}

impl WalWriter {
    /// Opens the writer at `pos` (the end of the recovered log) in segment `file`.
    pub fn open(
        dir: PathBuf,
        shard: u32,
        file: File,
        pos: Position,
        segment_bytes: u64,
        fsync: bool,
        io: LogIo,
    ) -> std::io::Result<WalWriter> {
        let ring = io_uring::IoUring::new(8)?;
        let preparer = Preparer::start(dir.clone(), shard, pos.seq + 1, segment_bytes);
        Ok(WalWriter { dir, ring, file, pos, segment_bytes, fsync, io, preparer, bytes_since_snapshot: 0 })
    }

    /// Writes one sealed frame and makes it durable (one linked write + fdatasync).
    pub fn append(&mut self, frame: &[u8]) -> Result<(), WalError> {
        self.append_at(frame).map(|_| ())
    }

    /// As `append`; returns where the frame was written (a rollover may move it to the start
    /// of the next segment), so a log can find its records again.
    pub fn append_at(&mut self, frame: &[u8]) -> Result<Position, WalError> {
        debug_assert_eq!(frame.len() % 8, 0);
        if frame.len() as u64 > self.segment_bytes - SEGMENT_HEADER_BYTES {
            return Err(WalError::Write(std::io::Error::other("frame larger than a segment")));
        }
        if self.pos.offset + frame.len() as u64 > self.segment_bytes {
            self.rollover()?;
        }
        crate::failpoint!("wal::write", |e| Err(write_error(e)));
        let at = self.pos;
        self.write_and_sync(frame)?;
        self.pos.offset += frame.len() as u64;
        if self.pos.offset > self.segment_bytes / 2 {
            self.preparer.ask();
        }
        self.bytes_since_snapshot += frame.len() as u64;
        Ok(at)
    }

    /// The segment being written.
    pub fn segment(&self) -> u64 {
        self.pos.seq
    }

    fn rollover(&mut self) -> Result<(), WalError> {
        self.preparer.ask();
        match self.preparer.rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok((seq, file))) => {
                self.preparer.requested = false;
                debug_assert_eq!(seq, self.pos.seq + 1);
                self.file = file;
                self.pos = Position { seq, offset: SEGMENT_HEADER_BYTES };
                Ok(())
            }
            Ok(Err(e)) => Err(write_error(e)),
            Err(RecvTimeoutError::Timeout) => {
                Err(WalError::Write(std::io::Error::other("no WAL segment ready after 10 s")))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(WalError::Write(std::io::Error::other("WAL segment preparer stopped")))
            }
        }
    }

    fn write_and_sync(&mut self, frame: &[u8]) -> Result<(), WalError> {
        if let LogIo::PowerLoss(disk) = &self.io {
            disk.write(&self.file, self.pos.offset, frame).map_err(write_error)?;
            crate::failpoint!("wal::after_write_before_sync");
            crate::failpoint!("wal::sync", |e| Err(WalError::Sync(e)));
            if self.fsync {
                disk.sync(&self.file).map_err(WalError::Sync)?;
            }
            return Ok(());
        }
        // `wal::after_write_before_sync` names the point between the write and its sync; the
        // linked submission has no such point, so when that failpoint is armed (debug builds,
        // tests) the write and the sync are submitted one after the other.
        if self.fsync && crate::failpoint::armed("wal::after_write_before_sync") {
            self.uring_write(frame, false)?;
            crate::failpoint!("wal::after_write_before_sync");
            crate::failpoint!("wal::sync", |e| Err(WalError::Sync(e)));
            return self.file.sync_data().map_err(WalError::Sync);
        }
        self.uring_write(frame, self.fsync)
    }

    /// One io_uring submission: the write, linked to an fdatasync when `sync`.
    fn uring_write(&mut self, frame: &[u8], sync: bool) -> Result<(), WalError> {
        use io_uring::{opcode, squeue, types};
        let fd = types::Fd(self.file.as_raw_fd());
        let write = opcode::Write::new(fd, frame.as_ptr(), frame.len() as u32)
            .offset(self.pos.offset)
            .build()
            .user_data(1);
        let n = if sync {
            let write = write.flags(squeue::Flags::IO_LINK);
            let sync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(2);
            // SAFETY: `frame` outlives the submission: we wait for both completions below.
            unsafe {
                let mut sq = self.ring.submission();
                sq.push(&write).expect("ring has room");
                sq.push(&sync).expect("ring has room");
            }
            2
        } else {
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&write).expect("ring has room") };
            1
        };
        let mut seen = 0;
        let mut write_res = None;
        let mut sync_res = None;
        while seen < n {
            self.ring.submit_and_wait(n - seen).map_err(WalError::Write)?;
            for cqe in self.ring.completion() {
                seen += 1;
                match cqe.user_data() {
                    1 => write_res = Some(cqe.result()),
                    _ => sync_res = Some(cqe.result()),
                }
            }
        }
        let w = write_res.expect("write completion");
        if w < 0 {
            return Err(write_error(std::io::Error::from_raw_os_error(-w)));
        }
        if (w as usize) < frame.len() {
            // A short write (disk full on a sparse file, say): finish it synchronously.
            self.file
                .write_all_at(&frame[w as usize..], self.pos.offset + w as u64)
                .map_err(write_error)?;
            if sync {
                self.file.sync_data().map_err(WalError::Sync)?;
            }
            return Ok(());
        }
        if sync {
            crate::failpoint!("wal::sync", |e| Err(WalError::Sync(e)));
        }
        if let Some(s) = sync_res {
            if s == -libc::ECANCELED {
                // The linked sync was cancelled because the write came up short; handled above.
                self.file.sync_data().map_err(WalError::Sync)?;
            } else if s < 0 {
                return Err(WalError::Sync(std::io::Error::from_raw_os_error(-s)));
            }
        }
        Ok(())
    }

    /// Removes segments wholly before `pos` (covered by a snapshot).
    fn remove_before(dir: &Path, pos: Position) -> std::io::Result<usize> {
        let mut removed = 0;
        for (seq, path) in list_segments(dir).map_err(|e| std::io::Error::other(e.to_string()))? {
            if seq < pos.seq {
                crate::failpoint!("snapshot::during_segment_removal");
                std::fs::remove_file(path)?;
                removed += 1;
            }
        }
        if removed > 0 {
            fsync_dir(dir)?;
        }
        Ok(removed)
    }
}

/// Zeroes `[from, to)` of a segment and syncs it: cutting off a torn tail.
pub fn zero_range(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let zeros = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rev: u64, key: &str) -> Record {
        Record {
            revision: rev,
            changes: vec![Change::Put {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from_static(b"v"),
                lease: 0,
            }],
            ..Default::default()
        }
    }

    fn segment(frames: &[Vec<Record>], size: usize) -> Vec<u8> {
        let mut data = header_bytes(0, 1);
        for recs in frames {
            let mut fb = FrameBuilder::new();
            for r in recs {
                fb.push(r);
            }
            data.extend_from_slice(fb.finish());
        }
        data.resize(size, 0);
        data
    }

    /// A snapshot truncating the log while the next segment is being prepared (its `.tmp`
    /// file half written) removes the covered segments and nothing else; reopening after a
    /// crash removes the half-prepared file.
    #[test]
    fn truncating_the_log_leaves_a_segment_being_prepared_alone() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        drop(prepare_segment(dir, 0, 1, 4096).unwrap());
        drop(prepare_segment(dir, 0, 2, 4096).unwrap());
        let preparing = segment_path(dir, 3).with_extension("wal.tmp");
        std::fs::write(&preparing, header_bytes(0, 3)).unwrap();
        let removed = WalWriter::remove_before(dir, Position { seq: 2, offset: SEGMENT_HEADER_BYTES }).unwrap();
        assert_eq!(removed, 1);
        assert!(!segment_path(dir, 1).exists() && segment_path(dir, 2).exists());
        assert!(preparing.exists(), "the segment being prepared was deleted under its preparer");
        let log = recover_log(dir, 0, Position { seq: 2, offset: SEGMENT_HEADER_BYTES }, 4096).unwrap();
        assert_eq!(log.end.seq, 2);
        assert!(!preparing.exists(), "a crash's half-prepared segment is left after reopening");
    }

    #[test]
    fn records_round_trip_through_encoding() {
        let r = Record {
            revision: 9,
            changes: vec![
                Change::Put { key: "k".into(), value: "v".into(), lease: 3 },
                Change::Delete { key: "d".into() },
            ],
            lease_grants: vec![(3, 10)],
            lease_revokes: vec![4],
            compact: 2,
        };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(Record::decode(&Bytes::from(buf)).unwrap(), r);
    }

    #[test]
    fn a_clean_segment_scans_to_its_end() {
        let data = Bytes::from(segment(&[vec![rec(1, "a")], vec![rec(2, "b"), rec(3, "c")]], 16384));
        let s = scan_segment(&data);
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.tail, Tail::Clean);
    }

    #[test]
    fn a_torn_last_frame_is_a_torn_tail() {
        let mut data = segment(&[vec![rec(1, "a")], vec![rec(2, "b")]], 16384);
        let s = scan_segment(&Bytes::from(data.clone()));
        let second = s.frames[1].0 as usize;
        data[second + 12] ^= 0xff;
        let s = scan_segment(&Bytes::from(data));
        assert_eq!(s.frames.len(), 1);
        assert!(matches!(s.tail, Tail::Torn { at, .. } if at == second as u64), "{:?}", s.tail);
    }

    #[test]
    fn a_damaged_frame_before_a_valid_one_is_corruption() {
        let mut data = segment(&[vec![rec(1, "a")], vec![rec(2, "b")]], 16384);
        data[SEGMENT_HEADER_BYTES as usize + 12] ^= 0xff;
        let s = scan_segment(&Bytes::from(data));
        assert!(s.frames.is_empty());
        assert!(matches!(s.tail, Tail::Corrupt { at, .. } if at == SEGMENT_HEADER_BYTES), "{:?}", s.tail);
    }

    #[test]
    fn a_zeroed_frame_header_before_a_valid_frame_is_corruption() {
        let mut data = segment(&[vec![rec(1, "a")], vec![rec(2, "b")]], 16384);
        let h = SEGMENT_HEADER_BYTES as usize;
        data[h..h + 8].fill(0);
        let s = scan_segment(&Bytes::from(data));
        assert!(matches!(s.tail, Tail::Corrupt { .. }), "{:?}", s.tail);
    }

    #[test]
    fn header_checks_magic_and_checksum() {
        let h = header_bytes(3, 42);
        assert_eq!(parse_header(&h).unwrap(), (3, 42));
        let mut bad = h.clone();
        bad[13] ^= 1;
        assert!(parse_header(&bad).is_err());
    }
}
