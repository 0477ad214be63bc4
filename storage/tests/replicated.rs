//! The store in replicated mode, under a toy replication layer: one in-memory log applied, in
//! order, to several stores. Whatever the real raft layer does, these properties are the
//! store's: the same commands in the same order give the same revisions, answers and data on
//! every replica; a snapshot carries its raft position; a replica installing a snapshot ends
//! in the same state, and its open watches continue without a gap.

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use common::*;
use rand::{Rng, SeedableRng};
use storage::command::{decode_batch, encode_batch};
use storage::replicated::BoxFuture;
use storage::*;

/// A "log" that applies each proposal to every replica as soon as it is proposed.
#[derive(Default)]
struct ToyLog {
    replicas: OnceLock<Vec<StateMachine>>,
    /// Serializes proposals (one entry at a time, as a leader orders them).
    entries: tokio::sync::Mutex<Vec<Bytes>>,
    /// Replicas that have not applied anything yet (they catch up from a snapshot).
    offline: Mutex<Vec<bool>>,
}

impl ToyLog {
    async fn append(&self, cmds: Vec<Command>) -> Vec<Applied> {
        let mut log = self.entries.lock().await;
        let payload = encode_batch(&cmds);
        log.push(payload.clone());
        let meta = Bytes::from(format!("index {}", log.len()));
        let mut first = None;
        let offline = self.offline.lock().unwrap().clone();
        for (i, sm) in self.replicas.get().unwrap().iter().enumerate() {
            if offline.get(i).copied().unwrap_or(false) {
                continue;
            }
            let batch = ApplyBatch { meta: meta.clone(), commands: decode_batch(&payload).unwrap() };
            let mut r = sm.apply(vec![batch]).await.unwrap();
            first.get_or_insert(r.pop().unwrap());
        }
        first.unwrap()
    }
}

struct Handle(Arc<ToyLog>);

impl Replication for Handle {
    fn propose(&self, cmd: Command) -> BoxFuture<Result<Applied, StoreError>> {
        let log = self.0.clone();
        Box::pin(async move { Ok(log.append(vec![cmd]).await.pop().unwrap()) })
    }
    fn read_barrier(&self) -> BoxFuture<Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn lease_keep_alive(&self, _id: LeaseId) -> BoxFuture<Result<i64, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("not in this test".into())) })
    }
    fn lease_time_to_live(&self, _id: LeaseId) -> BoxFuture<Result<(i64, i64), StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("not in this test".into())) })
    }
    fn snapshot(&self) -> BoxFuture<Result<Revision, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("not in this test".into())) })
    }
}

fn replica_config(dir: &std::path::Path) -> Config {
    config(dir, 1)
}

fn open_replicas(log: &Arc<ToyLog>, dirs: &[tempfile::TempDir]) -> Vec<Store> {
    let mut stores = Vec::new();
    let mut sms = Vec::new();
    for d in dirs {
        let (s, sm) = Store::open_replica(replica_config(d.path()), Arc::new(Handle(log.clone()))).unwrap();
        stores.push(s);
        sms.push(sm);
    }
    log.replicas.set(sms).ok().unwrap();
    stores
}

fn cas(key: &str, rev: u64, value: String) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare { key: b(key), op: CompareOp::Equal, target: CompareTarget::ModRevision(rev), range_end: None }],
        success: vec![TxnOp::Put(PutRequest { key: b(key), value: Bytes::from(value), lease: 0, prev_kv: true })],
        failure: vec![TxnOp::Range(RangeRequest::key(b(key)))],
    }
}

async fn everything(s: &Store) -> Vec<KeyValue> {
    s.range_serializable(RangeRequest::prefix("")).await.unwrap().kvs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_log_gives_every_replica_the_same_revisions_answers_and_data() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let log = Arc::new(ToyLog::default());
    let stores = open_replicas(&log, &dirs);
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut answers = Vec::new();
    for i in 0..400 {
        let key = format!("/k/{}", rng.random_range(0..20));
        let r = match rng.random_range(0..4) {
            // Compare-and-swap against a revision that is right about half the time.
            0 | 1 => {
                let cur = stores[0].get(key.clone()).await.unwrap().map_or(0, |kv| kv.mod_revision);
                let guess = if rng.random_bool(0.5) { cur } else { cur + 1 };
                format!("{:?}", stores[rng.random_range(0..3)].txn(cas(&key, guess, format!("v{i}"))).await)
            }
            2 => format!("{:?}", stores[1].delete(DeleteRequest { range: KeyRange::Key(b(&key)), prev_kv: true }).await),
            _ => format!("{:?}", stores[2].put(key, format!("p{i}")).await),
        };
        answers.push(r);
    }
    let lease = stores[0].lease_grant(0, 60).await.unwrap();
    stores[1].put_with(PutRequest { key: b("/leased"), value: b("x"), lease: lease.id, prev_kv: false }).await.unwrap();
    let revoked_at = stores[2].lease_revoke(lease.id).await.unwrap();
    assert!(stores[0].get("/leased").await.unwrap().is_none());
    stores[0].compact(revoked_at - 5).await.unwrap();
    let want = everything(&stores[0]).await;
    assert!(!want.is_empty());
    for s in &stores[1..] {
        assert_eq!(s.revision(), stores[0].revision());
        assert_eq!(s.compact_revision(), stores[0].compact_revision());
        assert_eq!(everything(s).await, want, "replicas differ");
    }
    // A write that fails on one replica fails on all, the same way.
    let e = stores[1].lease_revoke(lease.id).await.unwrap_err();
    assert_eq!(e, StoreError::LeaseNotFound(lease.id));
    assert!(answers.iter().any(|a| a.contains("succeeded: false")), "some CAS must have failed");
    assert!(answers.iter().any(|a| a.contains("succeeded: true")), "some CAS must have succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_installs_a_snapshot_and_its_watch_continues_without_a_gap() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let log = Arc::new(ToyLog::default());
    let stores = open_replicas(&log, &dirs);
    for i in 0..50 {
        stores[0].put(format!("/a/{i}"), format!("v{i}")).await.unwrap();
    }
    // Replica 1 watches from where it is, then misses writes (it is "behind").
    let mut w = stores[1].watch(WatchRequest { range: KeyRange::Prefix(b("/a/")), start_revision: None, prev_kv: false });
    let behind_at = stores[1].revision();
    log.offline.lock().unwrap().extend([false, true]);
    for i in 50..120 {
        stores[0].put(format!("/a/{}", i % 60), format!("w{i}")).await.unwrap();
    }
    assert_eq!(stores[1].revision(), behind_at, "replica 1 was supposed to be behind");
    // The leader's snapshot, copied file by file as the raft layer streams it.
    let sm = &log.replicas.get().unwrap();
    let snap = sm[0].snapshot().await.unwrap();
    assert_eq!(snap.meta, Bytes::from(format!("index {}", log.entries.lock().await.len())));
    assert_eq!(snap.files.last().unwrap(), "MANIFEST");
    let (id, dir) = sm[1].receive_dir().await.unwrap();
    for f in &snap.files {
        std::fs::copy(snap.dir.join(f), dir.join(f)).unwrap();
    }
    let installed = sm[1].install(id, dir, Some(snap.meta.clone())).await.unwrap();
    assert_eq!(installed.revision, snap.revision);
    assert_eq!(sm[1].applied_meta(), snap.meta);
    assert_eq!(everything(&stores[1]).await, everything(&stores[0]).await);
    // The watch saw every change after the point it was at, in order, exactly once.
    let mut seen = Vec::new();
    while seen.len() < 70 {
        let evs = within("watch events after the install", w.next()).await.unwrap().unwrap();
        seen.extend(evs.into_iter().map(|e| e.kv.mod_revision));
    }
    let want: Vec<u64> = (behind_at + 1..=snap.revision).collect();
    assert_eq!(seen, want);
    // And it keeps going with new writes once the replica is back in the log.
    log.offline.lock().unwrap()[1] = false;
    let r = stores[0].put("/a/new", "n").await.unwrap().revision;
    let evs = within("a live event after the install", w.next()).await.unwrap().unwrap();
    assert_eq!(evs[0].kv.mod_revision, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarts_from_its_snapshot_with_its_raft_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(ToyLog::default());
    let stores = open_replicas(&log, std::slice::from_ref(&dir));
    for i in 0..10 {
        stores[0].put(format!("/r/{i}"), "v").await.unwrap();
    }
    let snap = log.replicas.get().unwrap()[0].snapshot().await.unwrap();
    let before = everything(&stores[0]).await;
    drop(stores);
    drop(log);
    let log = Arc::new(ToyLog::default());
    let (s, sm) = Store::open_replica(replica_config(dir.path()), Arc::new(Handle(log.clone()))).unwrap();
    assert_eq!(sm.applied_meta(), snap.meta);
    assert_eq!(s.revision(), snap.revision);
    assert_eq!(everything(&s).await, before);
}

#[test]
fn a_replica_refuses_more_than_one_shard_and_a_single_replica_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(ToyLog::default());
    let e = Store::open_replica(config(dir.path(), 2), Arc::new(Handle(log.clone()))).err().unwrap();
    assert!(e.to_string().contains("one shard"), "{e}");
    drop(open(dir.path(), 1));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _g = rt.enter();
    let e = Store::open_replica(config(dir.path(), 1), Arc::new(Handle(log))).err().unwrap();
    assert!(e.to_string().contains("single-replica store's log"), "{e}");
}
