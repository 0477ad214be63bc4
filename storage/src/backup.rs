//! Backups: a snapshot of the store as one file, written while the store serves (what etcd's
//! `Snapshot` call streams and `etcdctl snapshot save` keeps), checked, and restored into a new
//! data directory.
//!
//! The file is capstan's own format, not etcd's bbolt file:
//!
//! ```text
//! "CAPSNAP1"
//! per snapshot file, chunks first and MANIFEST last:
//!     name length u32 LE | name | length u64 LE | bytes | crc32c(all of the record before it) u32 LE
//! end: 0xFFFFFFFF u32 LE | crc32c of everything before these 4 bytes u32 LE
//! zeros to a multiple of 512 bytes, then the SHA-256 of everything before it (32 bytes)
//! ```
//!
//! The last part is etcd's: `etcdctl snapshot save` refuses a stream whose length is not a
//! multiple of 512 plus 32 ("sha256 checksum not found"), as etcd's snapshots are bbolt pages
//! followed by their SHA-256.
//!
//! Reading checks everything before trusting anything: every file's checksum, every chunk as
//! a flatbuffer (verified, not assumed), that each key sits in the shard its hash names, that
//! keys ascend, the manifest's checksum and that it names exactly the files present, and the
//! whole file's checksum. An error names the byte offset and the reason. A restore writes into
//! a directory beside the target and renames it into place only when all of it was checked and
//! synced, then opens it as the store would: nothing is ever restored in part.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::snapshot::{self, Manifest};
use crate::snapshot_generated::capstan::snapshot as fb;
use crate::types::Revision;
use crate::wal::{Position, SEGMENT_HEADER_BYTES, fsync_dir};

const MAGIC: &[u8; 8] = b"CAPSNAP1";
const END: u32 = u32::MAX;
/// Bytes of file data per piece the stream hands out.
const PIECE: usize = 1 << 20;
/// Longer names are not snapshot file names.
const NAME_MAX: usize = 64;
/// Larger files are not snapshot files (a chunk is sealed at 16 MiB by default; one holding a
/// single huge value is bounded by the store's request limit).
const FILE_MAX: u64 = 1 << 30;

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: at byte {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Refused(String),
}

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub revision: Revision,
    pub compact_revision: Revision,
    pub shards: u32,
    /// Keys that exist at `revision`.
    pub keys: u64,
    /// Keys with any history in the file (existing or deleted but not compacted).
    pub indexed_keys: u64,
    pub bytes: u64,
    /// crc32c of the whole file (its last four bytes).
    pub checksum: u32,
}

/// One snapshot's files, open, handed out as the backup file's bytes in pieces. The files
/// were opened before the store could replace the snapshot; an unlinked file stays readable.
pub struct SnapshotStream {
    files: VecDeque<(String, File, u64)>,
    revision: Revision,
    /// The bytes before the padding and the SHA-256.
    body: u64,
    total: u64,
    state: State,
    crc: u32,
    sha: ring::digest::Context,
}

/// Zeros after `body` bytes so that the SHA-256 starts at a multiple of 512.
fn padding(body: u64) -> u64 {
    (512 - body % 512) % 512
}

enum State {
    Start,
    /// Inside a file: bytes left, its crc so far.
    File { left: u64, crc: u32 },
    BetweenFiles,
    Done,
}

impl SnapshotStream {
    pub(crate) fn new(files: Vec<(String, File, u64)>, revision: Revision) -> SnapshotStream {
        let body = MAGIC.len() as u64 + files.iter().map(|(n, _, len)| 4 + n.len() as u64 + 8 + len + 4).sum::<u64>() + 8;
        let total = body + padding(body) + 32;
        SnapshotStream { files: files.into(), revision, body, total, state: State::Start, crc: 0, sha: ring::digest::Context::new(&ring::digest::SHA256) }
    }

    /// The snapshot's revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The backup file's length in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.sha.update(bytes);
        out.extend_from_slice(bytes);
    }

    /// The next piece of the file (at most about 1 MiB), or `None` after the last.
    pub fn next_piece(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(PIECE + 64);
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Start => {
                    self.emit(&mut out, MAGIC);
                    self.state = State::BetweenFiles;
                }
                State::BetweenFiles => match self.files.front() {
                    Some((name, _, len)) => {
                        let (name, len) = (name.clone(), *len);
                        let mut header = Vec::with_capacity(12 + name.len());
                        header.extend_from_slice(&(name.len() as u32).to_le_bytes());
                        header.extend_from_slice(name.as_bytes());
                        header.extend_from_slice(&len.to_le_bytes());
                        self.emit(&mut out, &header);
                        self.state = State::File { left: len, crc: crc32c::crc32c(&header) };
                    }
                    None => {
                        self.emit(&mut out, &END.to_le_bytes());
                        let crc = self.crc.to_le_bytes();
                        self.sha.update(&crc);
                        out.extend_from_slice(&crc);
                        let pad = vec![0u8; padding(self.body) as usize];
                        self.sha.update(&pad);
                        out.extend_from_slice(&pad);
                        let sha = std::mem::replace(&mut self.sha, ring::digest::Context::new(&ring::digest::SHA256)).finish();
                        out.extend_from_slice(sha.as_ref());
                        return Ok(Some(out));
                    }
                },
                State::File { left: 0, crc } => {
                    self.emit(&mut out, &crc.to_le_bytes());
                    self.files.pop_front();
                    self.state = State::BetweenFiles;
                    if out.len() >= PIECE {
                        return Ok(Some(out));
                    }
                }
                State::File { left, crc } => {
                    let want = (left as usize).min(PIECE.saturating_sub(out.len()).max(1));
                    let start = out.len();
                    out.resize(start + want, 0);
                    let file = &mut self.files.front_mut().expect("a file is open").1;
                    file.read_exact(&mut out[start..])?;
                    let crc = crc32c::crc32c_append(crc, &out[start..]);
                    self.crc = crc32c::crc32c_append(self.crc, &out[start..]);
                    self.sha.update(&out[start..]);
                    self.state = State::File { left: left - want as u64, crc };
                    if out.len() >= PIECE {
                        return Ok(Some(out));
                    }
                }
                State::Done => return Ok(if out.is_empty() { None } else { Some(out) }),
            }
        }
    }
}

/// Reads a backup file, checking it all; each file is handed to `keep` once checked.
fn read(path: &Path, mut keep: impl FnMut(&str, &[u8]) -> std::io::Result<()>) -> Result<(Manifest, Summary), BackupError> {
    let io = |e: std::io::Error| BackupError::Io { path: path.to_path_buf(), source: e };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut crc = 0u32;
    let corrupt = |offset: u64, reason: String| BackupError::Corrupt { path: path.to_path_buf(), offset, reason };
    // Reads exactly `n` bytes, or says where the file ended.
    // Every byte before the SHA-256 is hashed as it is read (`take` may not be borrowed
    // across the digest's finish, so it lives in a cell).
    let sha = std::cell::RefCell::new(ring::digest::Context::new(&ring::digest::SHA256));
    let mut take = |n: usize, what: &str, offset: &mut u64, crc: &mut u32, count: bool| -> Result<Vec<u8>, BackupError> {
        let mut b = vec![0u8; n];
        r.read_exact(&mut b).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt(*offset, format!("the file ends inside {what} (it is {size} bytes): truncated")),
            _ => BackupError::Io { path: path.to_path_buf(), source: e },
        })?;
        if count {
            *crc = crc32c::crc32c_append(*crc, &b);
        }
        if what != "the SHA-256" {
            sha.borrow_mut().update(&b);
        }
        *offset += n as u64;
        Ok(b)
    };
    let magic = take(MAGIC.len(), "the header", &mut offset, &mut crc, true)?;
    if magic != MAGIC {
        return Err(corrupt(0, "not a capstan snapshot file (no CAPSNAP1 header; etcd's bbolt snapshots are not read)".into()));
    }
    let mut names = Vec::new();
    let mut manifest = None;
    let mut keys = Keys::default();
    loop {
        let at = offset;
        let n_bytes = take(4, "a file header", &mut offset, &mut crc, true)?;
        let n = u32::from_le_bytes(n_bytes.clone().try_into().unwrap());
        if n == END {
            let want = crc;
            let got = u32::from_le_bytes(take(4, "the checksum", &mut offset, &mut crc, false)?.try_into().unwrap());
            if got != want {
                return Err(corrupt(offset - 4, format!("the file's checksum is {got:08x}, its bytes give {want:08x}")));
            }
            let pad = padding(offset);
            if size != offset + pad + 32 {
                return Err(corrupt(offset, format!("the file is {size} bytes; its snapshot ends at {offset}, so {} were expected (padding and SHA-256)", offset + pad + 32)));
            }
            let zeros = take(pad as usize, "the padding", &mut offset, &mut crc, false)?;
            if zeros.iter().any(|b| *b != 0) {
                return Err(corrupt(offset - pad, "the padding before the SHA-256 is not zeros".into()));
            }
            let digest = sha.borrow_mut().clone().finish();
            let trailer = take(32, "the SHA-256", &mut offset, &mut crc, false)?;
            if trailer != digest.as_ref() {
                return Err(corrupt(offset - 32, "the SHA-256 does not match the file's bytes".into()));
            }
            let m: Manifest = manifest.ok_or_else(|| corrupt(at, "the file holds no MANIFEST".into()))?;
            if names != snapshot::file_names(&m) {
                return Err(corrupt(at, format!("the files present ({}) are not the ones the MANIFEST names", names.join(", "))));
            }
            let (keys, indexed_keys) = keys.finish();
            let summary = Summary { revision: m.revision, compact_revision: m.compact_revision, shards: m.shards, keys, indexed_keys, bytes: size, checksum: got };
            return Ok((m, summary));
        }
        if n as usize > NAME_MAX {
            return Err(corrupt(at, format!("a file name of {n} bytes")));
        }
        let name_bytes = take(n as usize, "a file name", &mut offset, &mut crc, true)?;
        let len_bytes = take(8, "a file header", &mut offset, &mut crc, true)?;
        let len = u64::from_le_bytes(len_bytes.clone().try_into().unwrap());
        if len > FILE_MAX {
            return Err(corrupt(at, format!("a file record claims {len} bytes")));
        }
        let body_at = offset;
        let body = take(len as usize, "a file", &mut offset, &mut crc, true)?;
        let file_crc = u32::from_le_bytes(take(4, "a file's checksum", &mut offset, &mut crc, true)?.try_into().unwrap());
        let mut record_crc = crc32c::crc32c(&n_bytes);
        for part in [&name_bytes, &len_bytes, &body] {
            record_crc = crc32c::crc32c_append(record_crc, part);
        }
        if record_crc != file_crc {
            return Err(corrupt(at, "a file record's checksum does not match its bytes".into()));
        }
        let name = String::from_utf8(name_bytes).map_err(|_| corrupt(at + 4, "a file name that is not UTF-8".into()))?;
        if manifest.is_some() {
            return Err(corrupt(at, format!("{name} follows the MANIFEST, which comes last")));
        }
        if name == "MANIFEST" {
            let text = std::str::from_utf8(&body).map_err(|_| corrupt(body_at, "the MANIFEST is not text".into()))?;
            let m = Manifest::decode(text).map_err(|e| corrupt(body_at, format!("the MANIFEST: {e}")))?;
            if m.shards == 0 || m.shards > 256 {
                return Err(corrupt(body_at, format!("the MANIFEST names {} shards", m.shards)));
            }
            keys.check_shards(m.shards).map_err(|e| corrupt(body_at, e))?;
            manifest = Some(m);
        } else {
            keys.chunk(&name, &body).map_err(|e| corrupt(body_at, format!("{name}: {e}")))?;
        }
        keep(&name, &body).map_err(io)?;
        names.push(name);
    }
}

/// Counting and checking keys chunk by chunk.
#[derive(Default)]
struct Keys {
    live: u64,
    indexed: u64,
    /// Per shard: the last key seen and whether its newest entry so far is live.
    last: std::collections::BTreeMap<u32, (Vec<u8>, bool)>,
    shard_count: Option<u32>,
}

impl Keys {
    fn chunk(&mut self, name: &str, body: &[u8]) -> Result<(), String> {
        let shard: u32 = name.strip_prefix("shard-").and_then(|r| r.split('-').next()).and_then(|s| s.parse().ok()).ok_or("not a snapshot chunk name")?;
        if body.len() < 8 || &body[body.len() - 4..] != b"CSNP" {
            return Err("no chunk trailer".into());
        }
        let fbody = &body[..body.len() - 8];
        if crc32c::crc32c(fbody) != u32::from_le_bytes(body[body.len() - 8..body.len() - 4].try_into().unwrap()) {
            return Err("chunk checksum mismatch".into());
        }
        let opts = flatbuffers::VerifierOptions { max_tables: 1 << 30, max_apparent_size: 1 << 31, ..Default::default() };
        let root = fb::root_as_chunk_with_opts(&opts, fbody).map_err(|e| format!("not a well-formed chunk: {e}"))?;
        if root.shard() != shard {
            return Err(format!("holds shard {}, its name says {shard}", root.shard()));
        }
        match self.shard_count {
            Some(n) if n != root.shard_count() => return Err("chunks of different shard layouts".into()),
            _ => self.shard_count = Some(root.shard_count()),
        }
        let shards = root.shard_count().max(1);
        for e in root.entries().into_iter().flatten() {
            let key = e.key().map(|k| k.bytes()).unwrap_or_default();
            if key.is_empty() {
                return Err("an empty key".into());
            }
            if shards > 1 && crc32c::crc32c(key) % shards != shard {
                return Err(format!("key {:?} does not belong in shard {shard}", String::from_utf8_lossy(key)));
            }
            let live = !e.tombstone();
            match self.last.get_mut(&shard) {
                Some((k, l)) if k.as_slice() == key => *l = live,
                Some((k, l)) => {
                    if key < k.as_slice() {
                        return Err("keys out of order".into());
                    }
                    self.live += *l as u64;
                    self.indexed += 1;
                    *k = key.to_vec();
                    *l = live;
                }
                None => {
                    self.last.insert(shard, (key.to_vec(), live));
                }
            }
        }
        Ok(())
    }

    fn check_shards(&self, manifest_shards: u32) -> Result<(), String> {
        match self.shard_count {
            Some(n) if n != manifest_shards => Err(format!("the chunks are of {n} shards, the MANIFEST says {manifest_shards}")),
            _ => Ok(()),
        }
    }

    fn finish(self) -> (u64, u64) {
        let (mut live, mut indexed) = (self.live, self.indexed);
        for (_, (_, l)) in self.last {
            live += l as u64;
            indexed += 1;
        }
        (live, indexed)
    }
}

/// Rewrites the snapshot in `from` (per `m`) as `shards` shards in `to`; each shard's chunk
/// count.
fn reshard(from: &Path, to: &Path, m: &Manifest, shards: u32) -> Result<Vec<u32>, String> {
    use crate::mvcc::{Entry, Mvcc};
    let mut keys: Vec<(bytes::Bytes, Vec<Entry>)> = Vec::new();
    let mut leases = std::collections::HashMap::new();
    for s in 0..m.shards {
        let mv = snapshot::load_shard(from, s, m).map_err(|e| e.to_string())?;
        leases.extend(mv.leases.iter().map(|(k, v)| (*k, *v)));
        mv.for_each_entry(|k, e| match keys.last_mut() {
            Some((last, h)) if last == k => h.push(e.clone()),
            _ => keys.push((k.clone(), vec![e.clone()])),
        });
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    let mut per: Vec<Vec<(bytes::Bytes, Vec<Entry>)>> = (0..shards).map(|_| Vec::new()).collect();
    for (k, h) in keys {
        let s = if shards == 1 { 0 } else { (crc32c::crc32c(&k) % shards) as usize };
        per[s].push((k, h));
    }
    let mut chunks = Vec::new();
    for (s, part) in per.into_iter().enumerate() {
        let mut mv = Mvcc::from_sorted(part);
        mv.set_compact_revision(m.revision);
        mv.leases = leases.clone();
        chunks.push(snapshot::write_shard(to, s as u32, shards, m.revision, &mv.snapshot_copy(), snapshot::SNAPSHOT_CHUNK_BYTES).map_err(|e| e.to_string())?);
    }
    Ok(chunks)
}

/// Checks a backup file through and says what it holds.
pub fn status(path: &Path) -> Result<Summary, BackupError> {
    read(path, |_, _| Ok(())).map(|(_, s)| s)
}

/// What a restored store is to be: its shard count (the snapshot's when `None`) and, for a
/// replica, the raft position its snapshot covers (`Manifest::meta`; empty for a store that is
/// its own log). A replica opens through raft, not here.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub shards: Option<u32>,
    pub meta: bytes::Bytes,
}

/// Makes `store_dir` (which must not exist) a store recovered from the backup at `path`:
/// the same keys at the same revisions, everything before the snapshot's revision compacted,
/// the log starting empty. Checked, written beside `store_dir`, synced and renamed into place,
/// then opened once as the store opens it.
pub fn restore(path: &Path, store_dir: &Path) -> Result<Summary, BackupError> {
    restore_as(path, store_dir, &Target::default())
}

/// `restore`, into a store of `target`'s shape: re-sharded when the count differs (every key
/// to the shard its hash names, the leases in every shard, as the store keeps them).
pub fn restore_as(path: &Path, store_dir: &Path, target: &Target) -> Result<Summary, BackupError> {
    if store_dir.exists() {
        return Err(BackupError::Refused(format!("{} exists: a restore makes a new store, it never writes over one", store_dir.display())));
    }
    let parent = store_dir.parent().unwrap_or(Path::new("."));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| BackupError::Io { path: p, source: e }
    };
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(".{}.restoring", store_dir.file_name().and_then(|n| n.to_str()).unwrap_or("store")));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        let id: u64 = 1;
        let snap = snapshot::snap_root(&tmp).join(format!("{id:016x}"));
        std::fs::create_dir_all(&snap).map_err(io(&snap))?;
        let (mut m, summary) = read(path, |name, body| {
            if name == "MANIFEST" {
                return Ok(());
            }
            let mut f = File::create(snap.join(name))?;
            f.write_all(body)?;
            f.sync_all()
        })?;
        // The new store's log starts empty: every shard continues at the first segment, and
        // nothing older than the snapshot can be read or watched (410 Gone to Kubernetes).
        m.compact_revision = m.revision;
        let mut id = id;
        let mut snap = snap;
        if let Some(n) = target.shards.filter(|n| *n != m.shards) {
            // Written as a second snapshot beside the first (whose files stay mapped while
            // their entries are read), which is then dropped.
            let next = snapshot::snap_root(&tmp).join(format!("{:016x}", id + 1));
            std::fs::create_dir_all(&next).map_err(io(&next))?;
            m.chunks = reshard(&snap, &next, &m, n).map_err(|e| BackupError::Refused(format!("re-sharding the snapshot into {n} shards: {e}")))?;
            m.shards = n;
            std::fs::remove_dir_all(&snap).map_err(io(&snap))?;
            snap = next;
            id += 1;
        }
        m.positions = vec![Position { seq: 1, offset: SEGMENT_HEADER_BYTES }; m.shards as usize];
        m.meta = target.meta.clone();
        let mut f = File::create(snap.join("MANIFEST")).map_err(io(&snap))?;
        f.write_all(m.encode().as_bytes()).and_then(|_| f.sync_all()).map_err(io(&snap))?;
        fsync_dir(&snap).map_err(io(&snap))?;
        fsync_dir(&snapshot::snap_root(&tmp)).map_err(io(&tmp))?;
        let mut f = File::create(tmp.join("CURRENT")).map_err(io(&tmp))?;
        f.write_all(format!("{id:016x}\n").as_bytes()).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
        // A store that is its own log gets its (empty) shard logs; a replica's log is raft's.
        for s in (0..m.shards).filter(|_| target.meta.is_empty()) {
            let d = tmp.join("wal").join(format!("shard-{s}"));
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        fsync_dir(&tmp).map_err(io(&tmp))?;
        Ok::<_, BackupError>((m, summary))
    })();
    let (m, summary) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if !target.meta.is_empty() {
        // A replica's store opens under raft (`Store::open_replica`); it was checked above.
        std::fs::rename(&tmp, store_dir).map_err(io(store_dir))?;
        fsync_dir(parent).map_err(io(parent))?;
        return Ok(summary);
    }
    // Opened once, as the store will be: what it recovers must be what the file said.
    let mut cfg = crate::Config::new(&tmp);
    cfg.shards = m.shards as usize;
    cfg.fsync = true;
    cfg.pin_threads = false;
    let opened = crate::Store::open(cfg).map(|s| (s.revision(), s.compact_revision()));
    match opened {
        Ok((rev, _)) if rev == m.revision => {}
        Ok((rev, _)) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(BackupError::Refused(format!("the restored store opened at revision {rev}, the snapshot is at {}", m.revision)));
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(BackupError::Refused(format!("the restored store does not open: {e}")));
        }
    }
    std::fs::rename(&tmp, store_dir).map_err(io(store_dir))?;
    fsync_dir(parent).map_err(io(parent))?;
    Ok(summary)
}
