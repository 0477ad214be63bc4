//! Backups: a store streamed to one file while it serves, checked, and restored into a new
//! directory that opens at the same revision with the same keys; every damaged or truncated
//! variant of the file refused with its offset, and nothing restored from it.

mod common;

use common::*;
use storage::backup::{self, BackupError};
use storage::{DeleteRequest, KeyRange, PutRequest, RangeRequest};

async fn save(store: &storage::Store, path: &std::path::Path) -> u64 {
    let mut s = within("a snapshot", store.snapshot_stream()).await.unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    let mut n = 0;
    while let Some(p) = s.next_piece().unwrap() {
        std::io::Write::write_all(&mut f, &p).unwrap();
        n += p.len() as u64;
    }
    assert_eq!(n, s.len(), "the stream is as long as it said");
    n
}

async fn everything(store: &storage::Store) -> Vec<storage::KeyValue> {
    store.range(RangeRequest::new(KeyRange::Range { start: b("\0"), end: bytes::Bytes::new() })).await.unwrap().kvs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_the_same_keys_at_the_same_revision_and_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("a"), 2);
    for i in 0..2000 {
        store.put(format!("k/{i:04}"), vec![b'v'; 100 + i % 300]).await.unwrap();
    }
    for i in (0..2000).step_by(7) {
        store.delete(DeleteRequest { range: KeyRange::Key(format!("k/{i:04}").into()), prev_kv: false }).await.unwrap();
    }
    let lease = store.lease_grant(0, 600).await.unwrap().id;
    store.put_with(PutRequest { key: b("leased"), value: b("x"), lease, prev_kv: false }).await.unwrap();
    let revision = store.revision();
    let file = dir.path().join("backup.db");
    let len = save(&store, &file).await;
    assert_eq!(len % 512, 32, "etcd's framing: pages then a SHA-256");
    // Writes after the snapshot are not in it.
    store.put("later", "x").await.unwrap();
    let before = everything(&store).await.into_iter().filter(|kv| kv.key.as_ref() != b"later").collect::<Vec<_>>();
    let s = backup::status(&file).unwrap();
    assert_eq!((s.revision, s.shards, s.keys, s.bytes), (revision, 2, before.len() as u64, len));
    // Restored: the same keys at the same revisions, the lease kept, history compacted.
    let restored_dir = dir.path().join("restored");
    assert_eq!(backup::restore(&file, &restored_dir).unwrap(), s);
    let r = open(&restored_dir, 2);
    assert_eq!(r.revision(), revision);
    assert_eq!(everything(&r).await, before);
    assert!(r.lease_ids().await.unwrap().contains(&lease));
    assert!(r.range(RangeRequest::key(b("k/0001")).at(revision - 1)).await.is_err(), "older revisions are compacted away");
    r.put("after-restore", "y").await.unwrap();
    assert_eq!(r.revision(), revision + 1);
    drop(r);
    assert!(matches!(backup::restore(&file, &restored_dir), Err(BackupError::Refused(_))), "never over an existing store");
    // Damage anywhere is refused with where it is; a restore from it leaves nothing.
    let good = std::fs::read(&file).unwrap();
    let bad = dir.path().join("bad.db");
    for at in [0, 9, 20, good.len() / 3, good.len() / 2, good.len() - 40, good.len() - 33, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        match backup::status(&bad) {
            Err(BackupError::Corrupt { offset, reason, .. }) => assert!(offset <= at as u64, "flipped at {at}, refused at {offset}: {reason}"),
            other => panic!("a flipped byte at {at} was not refused: {other:?}"),
        }
        let target = dir.path().join(format!("from-bad-{at}"));
        assert!(backup::restore(&bad, &target).is_err());
        assert!(!target.exists(), "nothing restored in part");
    }
    for cut in [0, 7, 100, good.len() / 2, good.len() - 33, good.len() - 1] {
        std::fs::write(&bad, &good[..cut]).unwrap();
        match backup::status(&bad) {
            Err(BackupError::Corrupt { reason, .. }) => assert!(reason.contains("truncated") || reason.contains("expected") || reason.contains("header"), "cut at {cut}: {reason}"),
            other => panic!("a file cut at {cut} was not refused: {other:?}"),
        }
    }
    std::fs::write(&bad, [good.as_slice(), b"extra"].concat()).unwrap();
    assert!(backup::status(&bad).is_err(), "bytes after the end");
}
