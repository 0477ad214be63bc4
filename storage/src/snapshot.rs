//! Snapshots: each shard's retained history written as flatbuffers chunks, read back through
//! `memmap2` with values left in the mapping (zero-copy), so that recovery costs the snapshot
//! plus the log since it.
//!
//! Layout (see DESIGN.md): `snap/<id>/shard-<s>-<chunk>.fb` and `snap/<id>/MANIFEST`; the
//! data directory's `CURRENT` names the snapshot in force. A chunk file is the flatbuffer
//! followed by `[crc32c u32][b"CSNP"]` over the flatbuffer.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::OpenError;
use crate::mvcc::{Entry, Mvcc, SnapshotCopy};
use crate::snapshot_generated::capstan::snapshot as fb;
use crate::types::Revision;
use crate::wal::{Position, fsync_dir};

const CHUNK_MAGIC: &[u8; 4] = b"CSNP";
/// A chunk is sealed once its builder holds this many bytes (bounds the builder's memory,
/// which doubles as it grows: with 64 MiB chunks two shards' builders held 256 MB at the
/// peak of a 50,000-pod density run; bench/RESULTS.md). The default of
/// `Config::snapshot_chunk_bytes`.
pub const SNAPSHOT_CHUNK_BYTES: usize = 16 << 20;

/// What `MANIFEST` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub shards: u32,
    /// Every change with revision <= `revision` is in the snapshot.
    pub revision: Revision,
    pub compact_revision: Revision,
    /// Per shard: where its log continues after the snapshot.
    pub positions: Vec<Position>,
    /// Per shard: number of chunk files.
    pub chunks: Vec<u32>,
    /// Replicated mode: the raft position the snapshot covers (opaque; empty otherwise).
    pub meta: Bytes,
}

impl Manifest {
    pub fn encode(&self) -> String {
        let mut s = format!(
            "capstan-snapshot 1\nshards {}\nrevision {}\ncompact {}\n",
            self.shards, self.revision, self.compact_revision
        );
        for (i, (p, c)) in self.positions.iter().zip(&self.chunks).enumerate() {
            s += &format!("shard {i} {} {} {c}\n", p.seq, p.offset);
        }
        if !self.meta.is_empty() {
            s += "meta ";
            for b in self.meta.iter() {
                s += &format!("{b:02x}");
            }
            s += "\n";
        }
        let crc = crc32c::crc32c(s.as_bytes());
        s += &format!("crc {crc}\n");
        s
    }

    pub fn decode(text: &str) -> Result<Manifest, String> {
        let (body, crc_line) = text
            .trim_end_matches('\n')
            .rsplit_once('\n')
            .ok_or("manifest has no checksum line")?;
        let body = format!("{body}\n");
        let crc: u32 = crc_line
            .strip_prefix("crc ")
            .and_then(|c| c.parse().ok())
            .ok_or("manifest checksum line is malformed")?;
        if crc32c::crc32c(body.as_bytes()) != crc {
            return Err("manifest checksum mismatch".into());
        }
        let mut m = Manifest { shards: 0, revision: 0, compact_revision: 0, positions: vec![], chunks: vec![], meta: Bytes::new() };
        for line in body.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| -> Result<u64, String> {
                f.get(i).and_then(|v| v.parse().ok()).ok_or(format!("bad manifest line {line:?}"))
            };
            match f[0] {
                "capstan-snapshot" => {}
                "shards" => m.shards = num(1)? as u32,
                "revision" => m.revision = num(1)?,
                "compact" => m.compact_revision = num(1)?,
                "shard" => {
                    m.positions.push(Position { seq: num(2)?, offset: num(3)? });
                    m.chunks.push(num(4)? as u32);
                }
                "meta" => {
                    let hex = f.get(1).copied().unwrap_or("");
                    if hex.len() % 2 != 0 {
                        return Err(format!("bad manifest line {line:?}"));
                    }
                    let bytes: Result<Vec<u8>, _> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16)).collect();
                    m.meta = Bytes::from(bytes.map_err(|_| format!("bad manifest line {line:?}"))?);
                }
                _ => return Err(format!("unknown manifest line {line:?}")),
            }
        }
        if m.positions.len() != m.shards as usize {
            return Err("manifest lists the wrong number of shards".into());
        }
        Ok(m)
    }
}

pub fn snap_root(data_dir: &Path) -> PathBuf {
    data_dir.join("snap")
}

fn chunk_name(shard: u32, chunk: u32) -> String {
    format!("shard-{shard}-{chunk:04}.fb")
}

fn chunk_path(dir: &Path, shard: u32, chunk: u32) -> PathBuf {
    dir.join(chunk_name(shard, chunk))
}

/// The files of a snapshot, chunks first and the manifest last (the order a receiver can check
/// them in: the manifest names the chunks).
pub fn file_names(m: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    for (s, n) in m.chunks.iter().enumerate() {
        for c in 0..*n {
            out.push(chunk_name(s as u32, c));
        }
    }
    out.push("MANIFEST".into());
    out
}

/// Writes one shard's chunks, from its copy, into `dir` (a snapshot being built). Returns the
/// chunk count.
pub fn write_shard(dir: &Path, shard: u32, shards: u32, revision: Revision, copy: &SnapshotCopy, chunk_bytes: usize) -> std::io::Result<u32> {
    crate::failpoint!("snapshot::write_shard", Err);
    let mut chunk = 0u32;
    // Room for a whole chunk and the entry that crosses the bound, from the start: grown by
    // doubling from 1 MiB, the builder copied and zero-filled 62 MiB on the way to a 16 MiB
    // chunk (3 % of the density run's CPU, with the faults of the fresh pages). Zeroed
    // memory from the OS: only the pages written are touched.
    let mut b = flatbuffers::FlatBufferBuilder::with_capacity(chunk_bytes.saturating_add(chunk_bytes / 2).max(1 << 16));
    let mut entries = Vec::new();
    let mut first = true;
    let mut seal = |b: &mut flatbuffers::FlatBufferBuilder, entries: &mut Vec<_>, with_leases: bool| -> std::io::Result<()> {
        let ev = b.create_vector(entries);
        let leases: Vec<_> = if with_leases {
            copy.leases
                .iter()
                .map(|(id, ttl)| fb::Lease::create(b, &fb::LeaseArgs { id: *id, ttl_seconds: *ttl }))
                .collect()
        } else {
            vec![]
        };
        let lv = b.create_vector(&leases);
        let root = fb::Chunk::create(
            b,
            &fb::ChunkArgs {
                shard,
                shard_count: shards,
                revision,
                compact_revision: copy.compact_revision,
                chunk_index: chunk,
                entries: Some(ev),
                leases: Some(lv),
            },
        );
        b.finish(root, None);
        let data = b.finished_data();
        let mut f = File::create(chunk_path(dir, shard, chunk))?;
        // Paced, so that a 16 MiB chunk's sync does not stall the log's syncs meanwhile.
        crate::paced::write_all(&mut f, 0, data)?;
        f.write_all(&crc32c::crc32c(data).to_le_bytes())?;
        f.write_all(CHUNK_MAGIC)?;
        f.sync_all()?;
        crate::failpoint!("snapshot::during_write");
        chunk += 1;
        entries.clear();
        b.reset();
        Ok(())
    };
    for (k, e) in &copy.entries {
        let key = b.create_vector(k.as_ref());
        let value = e.value.as_ref().map(|v| b.create_vector(v.as_ref()));
        let off = fb::Entry::create(
            &mut b,
            &fb::EntryArgs {
                key: Some(key),
                value,
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
                version: e.version,
                lease: e.lease,
                tombstone: e.value.is_none(),
            },
        );
        entries.push(off);
        if b.unfinished_data().len() >= chunk_bytes {
            seal(&mut b, &mut entries, first)?;
            first = false;
        }
    }
    if first || !entries.is_empty() {
        seal(&mut b, &mut entries, first)?;
    }
    Ok(chunk)
}

/// The bytes a snapshot's directory holds (its chunks and manifest): what writing it cost,
/// and what the next one will cost about as much as.
pub fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

/// Creates `snap/<id>.tmp`, for the shards to write into.
pub fn begin(data_dir: &Path, id: u64) -> std::io::Result<PathBuf> {
    let root = snap_root(data_dir);
    std::fs::create_dir_all(&root)?;
    let dir = root.join(format!("{id:016x}.tmp"));
    let _ = std::fs::remove_dir_all(&dir);
    // A crash between renaming a snapshot into place and pointing CURRENT at it leaves a
    // finished but unused snapshot under this id: it is not in force, drop it.
    let _ = std::fs::remove_dir_all(root.join(format!("{id:016x}")));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// Seals a snapshot whose chunks are written: manifest, rename, then `CURRENT` (the commit
/// point), then removes older snapshots.
pub fn commit(data_dir: &Path, tmp_dir: &Path, id: u64, manifest: &Manifest) -> std::io::Result<()> {
    let mut f = File::create(tmp_dir.join("MANIFEST"))?;
    f.write_all(manifest.encode().as_bytes())?;
    f.sync_all()?;
    fsync_dir(tmp_dir)?;
    let root = snap_root(data_dir);
    let name = format!("{id:016x}");
    std::fs::rename(tmp_dir, root.join(&name))?;
    fsync_dir(&root)?;
    crate::failpoint!("snapshot::before_current");
    let cur_tmp = data_dir.join("CURRENT.tmp");
    let mut f = File::create(&cur_tmp)?;
    f.write_all(format!("{name}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&cur_tmp, data_dir.join("CURRENT"))?;
    fsync_dir(data_dir)?;
    for ent in std::fs::read_dir(&root)? {
        let ent = ent?;
        if ent.file_name().to_string_lossy() != name.as_str() {
            let _ = std::fs::remove_dir_all(ent.path());
        }
    }
    Ok(())
}

/// The snapshot in force, if any: its directory and manifest. Removes unfinished ones.
pub fn current(data_dir: &Path) -> Result<Option<(u64, PathBuf, Manifest)>, OpenError> {
    let cur = data_dir.join("CURRENT");
    let name = match std::fs::read_to_string(&cur) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_dir_all(snap_root(data_dir));
            return Ok(None);
        }
        Err(e) => return Err(OpenError::io(cur, e)),
    };
    let id = u64::from_str_radix(&name, 16).map_err(|_| OpenError::Corrupt {
        path: cur.clone(),
        offset: 0,
        reason: format!("CURRENT names {name:?}, not a snapshot"),
    })?;
    let dir = snap_root(data_dir).join(&name);
    let mpath = dir.join("MANIFEST");
    let text = std::fs::read_to_string(&mpath).map_err(|e| OpenError::io(&mpath, e))?;
    let manifest = Manifest::decode(&text).map_err(|reason| OpenError::Corrupt { path: mpath, offset: 0, reason })?;
    if let Ok(rd) = std::fs::read_dir(snap_root(data_dir)) {
        for ent in rd.flatten() {
            if ent.file_name().to_string_lossy() != name.as_str() {
                let _ = std::fs::remove_dir_all(ent.path());
            }
        }
    }
    Ok(Some((id, dir, manifest)))
}

/// Reads one shard's chunks into a fresh index. Values stay in the file mappings.
pub fn load_shard(dir: &Path, shard: u32, manifest: &Manifest) -> Result<Mvcc, OpenError> {
    let mut keys: Vec<(Bytes, Vec<Entry>)> = Vec::new();
    let mut leases = Vec::new();
    for chunk in 0..manifest.chunks[shard as usize] {
        let path = chunk_path(dir, shard, chunk);
        let file = File::open(&path).map_err(|e| OpenError::io(&path, e))?;
        // SAFETY: snapshot files are never modified after they are written and synced; they are
        // only ever unlinked, which leaves existing mappings valid.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| OpenError::io(&path, e))?;
        let corrupt = |reason: &str| OpenError::Corrupt { path: path.clone(), offset: 0, reason: reason.into() };
        if map.len() < 8 || &map[map.len() - 4..] != CHUNK_MAGIC {
            return Err(corrupt("snapshot chunk has no trailer"));
        }
        let body_len = map.len() - 8;
        let crc = u32::from_le_bytes(map[body_len..body_len + 4].try_into().unwrap());
        if crc32c::crc32c(&map[..body_len]) != crc {
            return Err(corrupt("snapshot chunk checksum mismatch"));
        }
        let base = map.as_ptr() as usize;
        let bytes = Bytes::from_owner(map);
        // SAFETY: the checksum above proves these are the bytes this process's writer produced
        // with the flatbuffers builder, so the buffer is well formed.
        let root = unsafe { flatbuffers::root_unchecked::<fb::Chunk>(&bytes[..body_len]) };
        if root.shard() != shard || root.shard_count() != manifest.shards {
            return Err(corrupt("snapshot chunk belongs to another shard layout"));
        }
        if let Some(ls) = root.leases() {
            for l in ls {
                leases.push((l.id(), l.ttl_seconds()));
            }
        }
        let slice_of = |v: flatbuffers::Vector<'_, u8>| {
            let s = v.bytes();
            let off = s.as_ptr() as usize - base;
            bytes.slice(off..off + s.len())
        };
        for e in root.entries().into_iter().flatten() {
            let key_fb = e.key().map(|k| k.bytes()).unwrap_or_default();
            let entry = Entry {
                mod_revision: e.mod_revision(),
                create_revision: e.create_revision(),
                version: e.version(),
                lease: e.lease(),
                value: if e.tombstone() { None } else { Some(e.value().map(slice_of).unwrap_or_default()) },
            };
            match keys.last_mut() {
                Some((k, h)) if k.as_ref() == key_fb => h.push(entry),
                _ => keys.push((Bytes::copy_from_slice(key_fb), vec![entry])),
            }
        }
    }
    let mut mvcc = Mvcc::from_sorted(keys);
    mvcc.set_compact_revision(manifest.compact_revision);
    mvcc.leases.extend(leases);
    Ok(mvcc)
}
