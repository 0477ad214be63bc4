//! The raft log across restarts: what was flushed is there after reopening (entries, vote,
//! committed id, purge point, truncations), entries read back from disk are the ones written,
//! and a damaged log is cut at the damage (or refused).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{EntryPayload, LogId, RaftLogReader};
use raft::log_store::{Corruption, LogConfig, LogStore};
use raft::types::*;

fn lid(term: u64, index: u64) -> raft::types::LogId {
    LogId::new(LeaderId { term, node_id: 1 }, index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry { log_id: lid(term, index), payload: EntryPayload::Normal(Batch::new(Bytes::from(format!("payload {term}/{index} {}", "x".repeat(300))))) }
}

fn config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = 1 << 20;
    // Small enough that most entries are read back from disk.
    c.cache_bytes_max = 4 << 10;
    c
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), rx).await.expect("append flushed within 30 s").unwrap().unwrap();
}

async fn all(log: &mut LogStore) -> Vec<Entry> {
    log.get_log_reader().await.try_get_log_entries(..).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_flushed_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote { leader_id: LeaderId { term: 3, node_id: 2 }, committed: true };
    {
        let (mut log, opened) = LogStore::open(config(dir.path())).unwrap();
        assert_eq!(opened.entries, 0);
        append(&mut log, (1..=2000).map(|i| entry(1, i)).collect()).await;
        log.save_vote(&vote).await.unwrap();
        // A new leader replaces the tail: 1901.. of term 1 are gone, 1901..1950 of term 2 come.
        log.truncate_after(Some(lid(1, 1900))).await.unwrap();
        append(&mut log, (1901..=1950).map(|i| entry(2, i)).collect()).await;
        log.save_committed(Some(lid(2, 1940))).await.unwrap();
        log.purge(lid(1, 1200)).await.unwrap();
        // An append after the committed id makes the committed id durable with it.
        append(&mut log, vec![entry(2, 1951)]).await;
        assert!(log.frames_written() < 10, "appends were not group-committed: {} frames", log.frames_written());
    }
    let (mut log, opened) = LogStore::open(config(dir.path())).unwrap();
    assert_eq!(opened.entries, 751);
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(lid(1, 1200)));
    assert_eq!(st.last_log_id, Some(lid(2, 1951)));
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(lid(2, 1940)));
    let want: Vec<Entry> = (1201..=1900).map(|i| entry(1, i)).chain((1901..=1951).map(|i| entry(2, i))).collect();
    assert_eq!(all(&mut log).await, want);
    // Purged segments are gone from the disk.
    let segs = std::fs::read_dir(dir.path().join("log")).unwrap().count();
    assert!(segs <= 2, "{segs} segments remain after purging most of the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_is_cut_at_the_damage_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = LogStore::open(config(dir.path())).unwrap();
        for i in 1..=10 {
            append(&mut log, vec![entry(1, i)]).await;
        }
    }
    // Damage the fourth frame's payload: frames before it are intact, frames after it too.
    let seg = std::fs::read_dir(dir.path().join("log")).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "wal")).unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let needle = b"payload 1/4 ";
    let at = data.windows(needle.len()).position(|w| w == needle).unwrap();
    data[at] ^= 0xff;
    std::fs::write(&seg, &data).unwrap();
    let mut refuse = config(dir.path());
    refuse.on_corruption = Corruption::Refuse;
    let e = LogStore::open(refuse).err().expect("a corrupt log is refused under Corruption::Refuse");
    assert!(e.to_string().contains("corruption"), "{e}");
    let (mut log, opened) = LogStore::open(config(dir.path())).unwrap();
    assert!(opened.cut_at_corruption.is_some());
    assert_eq!(all(&mut log).await, (1..=3).map(|i| entry(1, i)).collect::<Vec<_>>());
    let aside: BTreeSet<String> = std::fs::read_dir(dir.path().join("log")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(aside.iter().any(|n| n.starts_with("corrupt-")), "the damaged segment was not kept aside: {aside:?}");
    // The cut log takes appends after its end and keeps them.
    append(&mut log, vec![entry(2, 4)]).await;
    drop(log);
    let (mut log, _) = LogStore::open(config(dir.path())).unwrap();
    assert_eq!(all(&mut log).await.last().unwrap(), &entry(2, 4));
}

/// Appends larger than a segment's worth (a follower catching up takes AppendEntries of many
/// big entries) are written as several frames, none larger than a segment holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_larger_than_a_segment_are_split_into_frames_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let big = |i: u64| Entry { log_id: lid(1, i), payload: EntryPayload::Normal(Batch::new(Bytes::from(vec![b'a' + (i % 26) as u8; 300_000]))) };
    {
        let (mut log, _) = LogStore::open(config(dir.path())).unwrap();
        append(&mut log, (1..=20).map(big).collect()).await;
    }
    let (mut log, opened) = LogStore::open(config(dir.path())).unwrap();
    assert_eq!(opened.entries, 20);
    assert_eq!(all(&mut log).await, (1..=20).map(big).collect::<Vec<_>>());
}
