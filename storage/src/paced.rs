//! Writing a large file without stalling the log's syncs. Written through the page cache and
//! flushed by one sync at the end, tens of MiB of dirty pages queue at the disk ahead of every
//! fdatasync the log makes meanwhile, which then waits for all of them (12-31 ms for 64 MiB on
//! this machine's disk; bench/RESULTS.md, "The stall removed"). Sent to the disk a step at a
//! time as they are written, at most one step stands ahead of a sync. The pages stay cached.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

/// Bytes written before they are sent to the disk.
pub const STEP: usize = 256 << 10;

/// Writes `data` at the file's current position, `at` bytes from its start, a step at a
/// time, each sent to the disk and waited for. Returns the position after it. Durability is
/// still the caller's sync: this only paces the writeback.
pub fn write_all(f: &mut File, mut at: u64, data: &[u8]) -> std::io::Result<u64> {
    for step in data.chunks(STEP) {
        f.write_all(step)?;
        write_out(f, at, step.len() as u64);
        at += step.len() as u64;
    }
    Ok(at)
}

/// Starts writeback of `len` bytes at `offset` and waits for it. Where the call is not
/// supported the final sync does all of it, as it would without pacing.
fn write_out(f: &File, offset: u64, len: u64) {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain syscall on an open descriptor; no memory is shared with the kernel.
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_every_byte_in_order_across_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        let data: Vec<u8> = (0..super::STEP * 2 + 123).map(|i| (i % 251) as u8).collect();
        let at = super::write_all(&mut f, 0, b"head").unwrap();
        assert_eq!(super::write_all(&mut f, at, &data).unwrap(), 4 + data.len() as u64);
        f.sync_all().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[..4], b"head");
        assert!(back[4..] == data[..], "the bytes read back differ");
    }
}
