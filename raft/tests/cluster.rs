//! Three replicas in one process over loopback HTTP/2: writes through any replica, the same
//! revisions and data everywhere, reads that see every acknowledged write, and a leader that
//! dies.

mod common;

use std::time::Duration;

use common::*;
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
