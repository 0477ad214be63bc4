//! Recovery's decision on a damaged log: a torn or corrupt *tail* is cut off; damage before
//! valid frames refuses to start, naming the file and offset.

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use storage::*;

/// The segment of shard 0 holding data, and the offsets of its frames.
fn frames_of_shard0(dir: &std::path::Path) -> (PathBuf, Vec<u64>, u64) {
    let sdir = dir.join("wal").join("shard-0");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&sdir).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    for p in segs.iter().rev() {
        let data = Bytes::from(std::fs::read(p).unwrap());
        let scan = storage::wal::scan_segment(&data);
        if !scan.frames.is_empty() {
            return (p.clone(), scan.frames.iter().map(|f| f.0).collect(), scan.end);
        }
    }
    panic!("no frames in shard 0's log");
}

async fn write_sequentially(dir: &std::path::Path, n: usize) {
    let store = open(dir, 1);
    for i in 0..n {
        within("put", store.put(format!("k{i:03}"), format!("v{i}"))).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_truncated_inside_its_last_frame_recovers_everything_before_it() {
    let dir = tempfile::tempdir().unwrap();
    write_sequentially(dir.path(), 20).await;
    let (seg, frames, end) = frames_of_shard0(dir.path());
    let last = *frames.last().unwrap();
    // Cut the file in the middle of the last frame (as a crash mid-write could).
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(last + (end - last) / 2).unwrap();
    let store = open(dir.path(), 1);
    let r = store.range(RangeRequest::prefix("k")).await.unwrap();
    assert_eq!(r.count, 19, "everything before the torn frame is there");
    assert_eq!(store.revision(), 19);
    store.put("after", "x").await.unwrap();
    drop(store);
    let store = open(dir.path(), 1);
    assert!(store.get("after").await.unwrap().is_some(), "writes after the cut survive the next restart");
    assert_eq!(store.range(RangeRequest::prefix("k")).await.unwrap().count, 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_last_frame_is_cut_off_as_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_sequentially(dir.path(), 20).await;
    let (seg, frames, end) = frames_of_shard0(dir.path());
    let last = *frames.last().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&vec![0xA5; (end - last - 8) as usize], last + 8).unwrap();
    // And garbage past the end, as a partly written next frame would leave.
    f.write_all_at(&[0x5A; 100], end + 64).unwrap();
    let store = open(dir.path(), 1);
    assert_eq!(store.range(RangeRequest::prefix("k")).await.unwrap().count, 19);
    store.put("after", "x").await.unwrap();
    drop(store);
    let store = open(dir.path(), 1);
    assert!(store.get("after").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_before_valid_frames_refuses_to_start_and_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_sequentially(dir.path(), 20).await;
    let (seg, frames, _) = frames_of_shard0(dir.path());
    let victim = frames[5];
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0xFF, 0xEE], victim + 10).unwrap();
    let err = Store::open(config(dir.path(), 1)).err().expect("a corrupt log must not open");
    match &err {
        OpenError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &seg);
            assert_eq!(*offset, victim);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&seg.display().to_string()) && msg.contains(&victim.to_string()), "{msg}");
}
