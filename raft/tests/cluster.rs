//! Three replicas in one process over loopback HTTP/2: writes through any replica, the same
//! revisions and data everywhere, reads that see every acknowledged write, and a leader that
//! dies.

mod common;

use std::time::Duration;

use common::*;
use openraft::async_runtime::watch::WatchReceiver;
use storage::*;

async fn all(s: &Store) -> Vec<KeyValue> {
    s.range(RangeRequest::prefix("")).await.unwrap().kvs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_every_replica_reach_every_replica_with_the_same_revisions() {
    let mut c = Cluster::start(3, seed(), fast).await;
    let l = c.leader().await;
    let mut acked = Vec::new();
    for i in 0..60 {
        let s = &c.replica(i % 3).store;
        let r = within("a write", s.put(format!("/k/{i}"), format!("v{i}"))).await.unwrap();
        acked.push((format!("/k/{i}"), r.revision));
    }
    // A linearizable read on any replica sees every acknowledged write.
    for i in 0..3 {
        let kvs = within("a read", all(&c.replica(i).store)).await;
        for (k, rev) in &acked {
            let kv = kvs.iter().find(|kv| kv.key == k.as_bytes()).unwrap_or_else(|| panic!("replica {i} misses {k}"));
            assert_eq!(kv.mod_revision, *rev);
        }
    }
    let want = all(&c.replica(l).store).await;
    for i in 0..3 {
        assert_eq!(all(&c.replica(i).store).await, want);
    }
    assert!(c.replica((l + 1) % 3).forwarded() > 0, "a follower did not forward its writes");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_when_the_leader_dies_and_nothing_acknowledged_is_lost() {
    let mut c = Cluster::start(3, seed(), fast).await;
    let l = c.leader().await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let r = within("a write", c.replica(l).store.put(format!("/a/{i}"), "x")).await.unwrap();
        acked.push((format!("/a/{i}"), r.revision));
    }
    c.kill(l).await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let l2 = c.leader_among(&rest).await;
    assert_ne!(l2, l);
    let r = within("a write on the new leader", c.replica(rest[0]).store.put("/after", "y")).await.unwrap();
    assert!(r.revision > acked.last().unwrap().1);
    for i in &rest {
        let kvs = within("a read", all(&c.replica(*i).store)).await;
        for (k, rev) in &acked {
            assert!(kvs.iter().any(|kv| kv.key == k.as_bytes() && kv.mod_revision == *rev), "{k}@{rev} lost on replica {i}");
        }
    }
    // The old leader comes back as a follower and catches up.
    c.restart(l).await;
    within("the old leader to catch up", async {
        while c.replica(l).store.range_serializable(RangeRequest::key("/after")).await.unwrap().kvs.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    c.stop_all().await;
}

/// A write acknowledged through a follower is applied on that follower when it is answered:
/// its own serializable reads (and so its API server's watch cache) see it at once, as a
/// member's do in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_its_own_acknowledged_writes() {
    let mut c = Cluster::start(3, seed(), fast).await;
    let f = (c.leader().await + 1) % 3;
    for i in 0..100 {
        let key = format!("/own/{i}");
        let r = within("a write through a follower", c.replica(f).store.put(key.clone(), "v")).await.unwrap();
        let kvs = c.replica(f).store.range_serializable(RangeRequest::key(key.clone())).await.unwrap().kvs;
        assert_eq!(kvs.len(), 1, "{key}, acknowledged at revision {}, is not on the follower that acknowledged it", r.revision);
        assert_eq!(kvs[0].mod_revision, r.revision);
    }
    c.stop_all().await;
}

/// A replica cut off from the others answers promptly that it cannot serve — writes and reads
/// both — and never from its own, possibly stale, state; once healed it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_refuses_promptly_and_never_answers_stale() {
    let mut c = Cluster::start(3, seed(), |cfg| {
        cfg.write_timeout = Duration::from_secs(2);
        cfg.read_timeout = Duration::from_secs(1);
    })
    .await;
    let l = c.leader().await;
    let f = (l + 1) % 3;
    let ids = c.ids();
    within("a write", c.replica(f).store.put("/p", "before")).await.unwrap();
    c.faults.isolate(ids[f], &ids);
    // The majority goes on and changes the key.
    within("a write on the majority", c.replica(l).store.put("/p", "after")).await.unwrap();
    // The minority: a write is refused, not left hanging (the watchdog fails a hang; how soon
    // is the write timeout's business, not a test's).
    let e = within("a minority write to be refused", c.replica(f).store.put("/p", "minority")).await.unwrap_err();
    assert!(matches!(e, StoreError::NoQuorum(_) | StoreError::Unavailable(_)), "{e:?}");
    // A read is refused rather than answered from the stale "before".
    let e = within("a minority read to be refused", c.replica(f).store.get("/p")).await.unwrap_err();
    assert!(matches!(e, StoreError::NoQuorum(_)), "{e:?}");
    // A stale read is still possible when asked for explicitly (Kubernetes' resourceVersion=0).
    let stale = c.replica(f).store.range_serializable(RangeRequest::key("/p")).await.unwrap();
    assert_eq!(stale.kvs[0].value, "before");
    c.faults.heal();
    within("the minority to see the majority's write", async {
        loop {
            if let Ok(Some(kv)) = c.replica(f).store.get("/p").await
                && kv.value == "after"
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The old leader, isolated, cannot commit either: its writes come back as not done.
    let l = c.leader().await;
    c.faults.isolate(ids[l], &ids);
    let e = within("an isolated leader's write to fail", c.replica(l).store.put("/p", "lost")).await.unwrap_err();
    assert!(matches!(e, StoreError::NoQuorum(_) | StoreError::Unavailable(_)), "{e:?}");
    c.faults.heal();
    let l2 = c.leader().await;
    let kv = within("a read after healing", c.replica(l2).store.get("/p")).await.unwrap().unwrap();
    assert_ne!(kv.value, "minority");
    c.stop_all().await;
}

/// Leases survive a leader change: only the leader expires them, and a new leader restarts
/// every lease at its TTL plus the election timeout before expiring any. Keep-alives work
/// through any replica; without them the lease expires on the new leader and its keys go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_leader_change_and_expire_on_the_new_leader() {
    let mut c = Cluster::start(3, seed(), fast).await;
    let l = c.leader().await;
    let f = (l + 1) % 3;
    let lease = within("a lease grant through a follower", c.replica(f).store.lease_grant(0, 3)).await.unwrap();
    within("a put with the lease", c.replica(f).store.put_with(PutRequest { key: "/leased".into(), value: "v".into(), lease: lease.id, prev_kv: false }))
        .await
        .unwrap();
    // Kept alive through a follower (forwarded to the leader, where deadlines live).
    assert_eq!(within("a keep-alive", c.replica(f).store.lease_keep_alive(lease.id)).await.unwrap(), 3);
    c.kill(l).await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let l2 = c.leader_among(&rest).await;
    // Right after the change the key is there, and the new leader knows the lease afresh.
    assert!(within("a read", c.replica(l2).store.get("/leased")).await.unwrap().is_some());
    let (ttl, remaining) = within("time to live", c.replica(rest[0]).store.lease_time_to_live(lease.id)).await.unwrap();
    assert_eq!(ttl, 3);
    assert!(remaining >= 2, "a new leader must restart the lease's time, remaining {remaining}");
    // No more keep-alives: the new leader expires it, on every replica.
    within("the lease to expire on the new leader", async {
        while c.replica(l2).store.get("/leased").await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let other = rest.iter().copied().find(|i| *i != l2).unwrap();
    assert!(within("a read", c.replica(other).store.get("/leased")).await.unwrap().is_none());
    let e = within("a revoked lease", c.replica(other).store.lease_time_to_live(lease.id)).await.unwrap_err();
    assert_eq!(e, StoreError::LeaseNotFound(lease.id));
    c.stop_all().await;
}

/// A follower that missed more than the log keeps catches up from the leader's snapshot,
/// streamed in chunks, and ends with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_from_a_snapshot() {
    let mut c = Cluster::start(3, seed(), |cfg| cfg.snapshot_log_bytes = 256 << 10).await;
    let l = c.leader().await;
    let f = (l + 1) % 3;
    c.kill(f).await;
    let value = "x".repeat(1000);
    for i in 0..3000 {
        within("a write", c.replica(l).store.put(format!("/s/{i:05}"), value.clone())).await.unwrap();
    }
    // The leader snapshots and trims its log (the follower's missing entries are gone).
    within("the leader to purge its log", async {
        while c.replica(l).raft().metrics().borrow_watched().purged.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    c.restart(f).await;
    let want = c.replica(l).store.range(RangeRequest::prefix("/s/")).await.unwrap();
    within("the follower to catch up", async {
        loop {
            let got = c.replica(f).store.range_serializable(RangeRequest::prefix("/s/")).await.unwrap();
            if got.kvs == want.kvs {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let st = c.replica(f).status();
    assert!(st["snapshot"].as_u64().is_some(), "the follower caught up without a snapshot: {st}");
    c.stop_all().await;
}

/// A graceful stop of the leader hands leadership over: with elections by timeout turned
/// off everywhere, a new leader can only come from the transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stops_hands_over_leadership() {
    let mut c = Cluster::start(3, seed(), fast).await;
    let l = c.leader().await;
    for i in 0..3 {
        c.replica(i).raft().runtime_config().elect(false);
    }
    within("a write", c.replica(l).store.put("/t", "1")).await.unwrap();
    c.stop(l).await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let l2 = c.leader_among(&rest).await;
    within("a write on the new leader", c.replica(l2).store.put("/t", "2")).await.unwrap();
    c.stop_all().await;
}

/// A data directory is bound to one member of one cluster: another member's directory, a
/// different initial cluster, or a peer speaking another cluster's id is refused, and the
/// refusal names both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_mismatches_are_refused_naming_both_sides() {
    let mut c = Cluster::start(3, seed(), fast).await;
    c.leader().await;
    // A peer of another cluster.
    let wire = raft::network::Wire { cluster: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0xdead_beef)), me: 42, left_out_at: Default::default() };
    let client = raft::network::PeerClient::new(1, &c.nodes[0].url, wire, std::sync::Arc::new(raft::network::TcpConnector), None);
    let e = client.unary("/raft/read-index", bytes::Bytes::new(), Duration::from_secs(5)).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("00000000deadbeef") && msg.contains(&format!("{:016x}", c.replica(0).cluster_id())), "{msg}");
    c.stop_all().await;
    // Member m0's directory under another name.
    let mut cfg = c.config(0);
    cfg.name = "intruder".into();
    cfg.initial_cluster.push(("intruder".into(), "http://127.0.0.1:1".into()));
    cfg.peer_url = "http://127.0.0.1:1".into();
    cfg.initial_cluster.retain(|(n, _)| n != "m0");
    let e = raft::replica::Replica::start(cfg).await.err().expect("another member's directory is refused").to_string();
    assert!(e.contains("belongs to member m0") && e.contains("not to intruder"), "{e}");
    // m0's directory with another initial cluster (another token: another cluster id).
    let mut cfg = c.config(0);
    cfg.cluster_token = "another".into();
    cfg.peer_listen = "127.0.0.1:0".into();
    let e = raft::replica::Replica::start(cfg).await.err().expect("a mismatched --initial-cluster is refused").to_string();
    assert!(e.contains("belongs to cluster") && e.contains("describe cluster"), "{e}");
    // Its own name missing from --initial-cluster.
    let mut cfg = c.config(0);
    cfg.initial_cluster.retain(|(n, _)| n != "m0");
    cfg.peer_listen = "127.0.0.1:0".into();
    let e = raft::replica::Replica::start(cfg).await.err().unwrap().to_string();
    assert!(e.contains("is not in --initial-cluster"), "{e}");
}

/// Flips one byte of the first entry whose payload contains `needle` in `dir`'s raft log.
fn corrupt(dir: &std::path::Path, needle: &[u8]) -> bool {
    for e in std::fs::read_dir(dir.join("raft/log")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "wal") {
            continue;
        }
        let mut data = std::fs::read(&p).unwrap();
        if let Some(at) = data.windows(needle.len()).position(|w| w == needle) {
            data[at] ^= 0x20;
            std::fs::write(&p, data).unwrap();
            return true;
        }
    }
    false
}

/// A follower's log damaged at rest: at restart it is cut at the damage (the damaged segments
/// kept aside) and the follower catches up from the leader, ending with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_corrupt_log_catches_up_from_the_leader() {
    let mut c = Cluster::start(3, seed(), fast).await;
    let l = c.leader().await;
    let f = (l + 1) % 3;
    for i in 0..50 {
        within("a write", c.replica(l).store.put(format!("/c/{i:03}"), format!("value-{i:03}"))).await.unwrap();
    }
    within("the follower to have the writes", async {
        while c.replica(f).store.range_serializable(RangeRequest::prefix("/c/")).await.unwrap().kvs.len() < 50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    c.kill(f).await;
    assert!(corrupt(c.nodes[f].dir.path(), b"value-010"), "the entry to damage was not found in the follower's log");
    c.restart(f).await;
    let want = c.replica(l).store.range(RangeRequest::prefix("/c/")).await.unwrap().kvs;
    within("the follower to catch up after its log was cut", async {
        loop {
            let got = c.replica(f).store.range(RangeRequest::prefix("/c/")).await.map(|r| r.kvs).unwrap_or_default();
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let aside = std::fs::read_dir(c.nodes[f].dir.path().join("raft/log")).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("corrupt-"));
    assert!(aside, "the damaged log was not kept aside");
    c.stop_all().await;
}

/// A leader that reads a damaged entry back from its own log (to send to a follower that was
/// away) stops: it no longer serves, another replica leads, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_reading_a_corrupt_entry_steps_down() {
    let mut c = Cluster::start(3, seed(), |cfg| {
        cfg.segment_bytes = 8 << 20;
    })
    .await;
    let l = c.leader().await;
    let f = (l + 1) % 3;
    let ids = c.ids();
    c.faults.isolate(ids[f], &ids);
    // Enough writes that the leader's in-memory tail (32 MiB) no longer holds the first ones.
    let big = "z".repeat(60_000);
    for i in 0..700 {
        within("a write", c.replica(l).store.put(format!("/big/{i:04}"), format!("needle-{i:04}-{big}"))).await.unwrap();
    }
    assert!(corrupt(c.nodes[l].dir.path(), b"needle-0003-"), "the entry to damage was not found in the leader's log");
    c.faults.heal();
    within("the leader to stop on the damaged entry", async {
        while c.replica(l).failed().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let e = within("a write on the failed leader", c.replica(l).store.put("/x", "y")).await.unwrap_err();
    assert!(matches!(e, StoreError::NoQuorum(_)), "{e:?}");
    let other = (0..3).find(|i| *i != l && *i != f).unwrap();
    let l2 = c.leader_among(&[f, other]).await;
    assert_ne!(l2, l);
    // (The new leader first brings the follower that was away up to date: reads wait for it.)
    let kv = within("a read on the new leader", async {
        let mut n = 0;
        loop {
            match c.replica(l2).store.get("/big/0003").await {
                Ok(kv) => return kv,
                Err(e) => {
                    n += 1;
                    if n % 50 == 0 {
                        for i in 0..3 {
                            let st = c.replica(i).status();
                            eprintln!("{e}\n m{i}: {} {} applied {} committed {} failed {}", st["state"], st["lastLogIndex"], st["applied"], st["committed"], st["failed"]);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    assert!(kv.value.starts_with(b"needle-0003-"));
    c.kill(l).await;
    c.stop_all().await;
}
