//! How a log's frames reach the disk: the seam a test (and the deterministic simulation) puts
//! a fake disk behind.
//!
//! A killed process keeps the page cache, so a crash test that kills processes cannot tell an
//! `fdatasync` from none. [`PowerLossDisk`] can: it keeps every write in memory until the file
//! is synced, and at a simulated power cut ([`PowerLossDisk::cut`]) it drops what was not
//! synced, or lets a random prefix of it reach the file (writes landing partly, in order, as a
//! device may persist them). The files on disk are then what a machine would find after power
//! returns, and the store is opened on them as after a reboot.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// The backend of a log's frame writes.
#[derive(Clone, Debug, Default)]
pub enum LogIo {
    /// io_uring: one linked write + fdatasync per frame (production).
    #[default]
    Uring,
    /// Writes held in memory until synced; lost at a simulated power cut (tests).
    PowerLoss(Arc<PowerLossDisk>),
}

struct Pending {
    file: Arc<File>,
    /// Identity of the file (device, inode), to sync only its own writes.
    ino: (u64, u64),
    offset: u64,
    data: Vec<u8>,
}

#[derive(Default)]
struct State {
    pending: Vec<Pending>,
    cut: bool,
    writes: u64,
    syncs: u64,
    /// Cut the power when this write arrives (after taking it, before its sync).
    cut_at_write: Option<(u64, u64)>,
    /// What the armed cut did: (kept, torn bytes, lost).
    outcome: Option<(usize, usize, usize)>,
}

/// A small deterministic generator for an armed cut (xorshift64*).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A disk that loses unsynced writes at a power cut (see the module's documentation).
#[derive(Default)]
pub struct PowerLossDisk {
    state: Mutex<State>,
}

impl std::fmt::Debug for PowerLossDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock().unwrap();
        write!(f, "PowerLossDisk {{ pending: {}, cut: {}, writes: {}, syncs: {} }}", s.pending.len(), s.cut, s.writes, s.syncs)
    }
}

fn ino(f: &File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

fn cut_locked(s: &mut State, mut choose: impl FnMut(usize) -> usize) -> (usize, usize, usize) {
    s.cut = true;
    let pending = std::mem::take(&mut s.pending);
    let n = pending.len();
    let keep = choose(n).min(n);
    let mut torn = 0;
    for (i, p) in pending.iter().enumerate() {
        if i < keep {
            let _ = p.file.write_all_at(&p.data, p.offset);
        } else if i == keep {
            torn = choose(p.data.len()).min(p.data.len());
            let _ = p.file.write_all_at(&p.data[..torn], p.offset);
        }
    }
    (keep, torn, n.saturating_sub(keep + 1))
}

fn powered_off() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EIO)
}

impl PowerLossDisk {
    pub fn new() -> Arc<PowerLossDisk> {
        Arc::new(PowerLossDisk::default())
    }

    /// Takes a write into memory (nothing reaches the file yet).
    pub fn write(&self, file: &File, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.cut {
            return Err(powered_off());
        }
        s.writes += 1;
        let pending = Pending { file: Arc::new(file.try_clone()?), ino: ino(file)?, offset, data: data.to_vec() };
        s.pending.push(pending);
        if let Some((at, seed)) = s.cut_at_write
            && s.writes == at
        {
            let mut seed = seed.max(1);
            let outcome = cut_locked(&mut s, |n| (next(&mut seed) % (n as u64 + 1)) as usize);
            s.outcome = Some(outcome);
        }
        Ok(())
    }

    /// Arms a power cut at the `n`th write (counting from 1), the moment after it is taken and
    /// before anything syncs it; `seed` decides what of the unsynced writes lands.
    pub fn cut_at_write(&self, n: u64, seed: u64) {
        self.state.lock().unwrap().cut_at_write = Some((n, seed));
    }

    /// Whether the power is out, and what the cut did (kept, torn bytes, lost).
    pub fn outcome(&self) -> Option<(usize, usize, usize)> {
        let s = self.state.lock().unwrap();
        if s.cut { Some(s.outcome.unwrap_or_default()) } else { None }
    }

    /// Makes every write to `file` so far durable: they reach the file, in order.
    pub fn sync(&self, file: &File) -> std::io::Result<()> {
        let id = ino(file)?;
        let mut s = self.state.lock().unwrap();
        if s.cut {
            return Err(powered_off());
        }
        s.syncs += 1;
        let (mine, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut s.pending).into_iter().partition(|p| p.ino == id);
        s.pending = rest;
        for p in mine {
            p.file.write_all_at(&p.data, p.offset)?;
        }
        Ok(())
    }

    /// The power goes out: of the unsynced writes, the first `keep` (a number `choose` picks
    /// from `0..=n`) reach their files, the next one only its first bytes (`choose` again, from
    /// `0..=len`), the rest are lost. Every later write or sync fails with EIO.
    /// Returns (writes kept whole, bytes of the torn one, writes lost).
    pub fn cut(&self, choose: impl FnMut(usize) -> usize) -> (usize, usize, usize) {
        let mut s = self.state.lock().unwrap();
        let outcome = cut_locked(&mut s, choose);
        s.outcome = Some(outcome);
        outcome
    }

    /// (writes taken, syncs done) so far: a test checks its store really wrote through here.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        (s.writes, s.syncs)
    }
}
