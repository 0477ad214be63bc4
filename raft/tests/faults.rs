//! Linearizability under faults: clients write, compare-and-swap and read a few keys through
//! every replica while a nemesis kills leaders (and restarts them), partitions replicas, and
//! drops and delays messages. The recorded history is checked by `raft::lincheck`; a final
//! read of every key on every replica, after healing, is part of it, so an acknowledged write
//! that was lost fails the check too. Each round prints its seed (CAPSTAN_RAFT_SEED replays
//! the faults, not the exact interleaving).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rand::{Rng, SeedableRng};
use raft::faults::FaultRates;
use raft::lincheck::{self, Input, Op, Output};
use storage::*;

const KEYS: usize = 4;
const CLIENTS: usize = 6;

#[derive(Clone, Copy, Debug)]
enum Nemesis {
    KillLeader,
    Partition,
    DropsAndDelays,
}

type Stores = Arc<Mutex<Vec<Option<Store>>>>;

fn now(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

async fn client(c: usize, seed: u64, stores: Stores, history: Arc<Mutex<Vec<Op>>>, t0: Instant, until: Instant) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (c as u64 + 1) * 0x9e37_79b9);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let r = rng.random_range(0..3);
        let Some(store) = stores.lock().unwrap()[r].clone() else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let key = format!("/lin/{}", rng.random_range(0..KEYS));
        let value = format!("c{c}-{n}");
        let call = now(t0);
        let (input, output) = match rng.random_range(0..3) {
            0 => {
                let out = match store.put(key.clone(), value.clone()).await {
                    Ok(_) => Output::Ok,
                    // Certainly not applied: nothing to record.
                    Err(StoreError::NoQuorum(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(_) => Output::Unknown,
                };
                (Input::Put(value), out)
            }
            1 => match store.get(key.clone()).await {
                Ok(kv) => (Input::Get, Output::Value(kv.map(|kv| String::from_utf8(kv.value.to_vec()).unwrap()))),
                // A failed read changed nothing: it is left out.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ => {
                // Compare-and-swap against what this client read last of the key (or nothing).
                let expect = match store.get(key.clone()).await {
                    Ok(kv) => kv.map(|kv| String::from_utf8(kv.value.to_vec()).unwrap()),
                    Err(_) => continue,
                };
                let compare = match &expect {
                    Some(v) => Compare { key: Bytes::from(key.clone()), op: CompareOp::Equal, target: CompareTarget::Value(Bytes::from(v.clone())), range_end: None },
                    None => Compare { key: Bytes::from(key.clone()), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0), range_end: None },
                };
                let req = TxnRequest {
                    compare: vec![compare],
                    success: vec![TxnOp::Put(PutRequest { key: Bytes::from(key.clone()), value: Bytes::from(value.clone()), lease: 0, prev_kv: false })],
                    failure: vec![],
                };
                let call = now(t0);
                let out = match store.txn(req).await {
                    Ok(r) => Output::Swapped(r.succeeded),
                    Err(StoreError::NoQuorum(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(_) => Output::Unknown,
                };
                let ret = (out != Output::Unknown).then(|| now(t0));
                history.lock().unwrap().push(Op { client: c, key, input: Input::Cas { expect, new: value }, output: out, call, ret });
                continue;
            }
        };
        let ret = (output != Output::Unknown).then(|| now(t0));
        history.lock().unwrap().push(Op { client: c, key, input, output, call, ret });
    }
}

async fn round(seed: u64, nemesis: Nemesis, duration: Duration) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = within("starting a cluster", Cluster::start(3, seed, fast)).await;
    eprintln!("  started");
    c.leader().await;
    let stores: Stores = Arc::new(Mutex::new((0..3).map(|i| Some(c.replica(i).store.clone())).collect()));
    let history = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..CLIENTS).map(|i| tokio::spawn(client(i, seed, stores.clone(), history.clone(), t0, until))).collect();
    let ids = c.ids();
    let mut faults = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..400))).await;
        match nemesis {
            Nemesis::KillLeader => {
                let running = c.running();
                let Some(l) = running.iter().copied().find(|i| c.replica(*i).is_leader()) else { continue };
                stores.lock().unwrap()[l] = None;
                eprintln!("  {:?} killing leader m{l}", t0.elapsed());
                within("killing the leader", c.kill(l)).await;
                faults += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
                eprintln!("  {:?} restarting m{l}", t0.elapsed());
                within("restarting a killed replica", c.restart(l)).await;
                stores.lock().unwrap()[l] = Some(c.replica(l).store.clone());
            }
            Nemesis::Partition => {
                let victim = rng.random_range(0..3);
                c.faults.isolate(ids[victim], &ids);
                faults += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
                c.faults.heal();
            }
            Nemesis::DropsAndDelays => {
                c.faults.set_rates(FaultRates { drop_before: 0.05, drop_after: 0.05, delay: 0.3, delay_max: Duration::from_millis(30) });
                faults += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
                c.faults.set_rates(FaultRates::default());
            }
        }
    }
    eprintln!("  {:?} waiting for the clients", t0.elapsed());
    for t in tasks {
        within("a client finishing", t).await.unwrap();
    }
    eprintln!("  {:?} final reads", t0.elapsed());
    c.faults.heal();
    c.faults.set_rates(FaultRates::default());
    c.leader().await;
    // The final reads: every key on every replica.
    for i in 0..3 {
        for k in 0..KEYS {
            let key = format!("/lin/{k}");
            let call = now(t0);
            let kv = within("a final read", c.replica(i).store.get(key.clone())).await.expect("reads work once healed");
            history.lock().unwrap().push(Op {
                client: 100 + i,
                key,
                input: Input::Get,
                output: Output::Value(kv.map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())),
                call,
                ret: Some(now(t0)),
            });
        }
    }
    let h = history.lock().unwrap().clone();
    let acked = h.iter().filter(|o| o.ret.is_some()).count();
    eprintln!("seed {seed} {nemesis:?}: {} operations ({acked} answered), {faults} faults, {:?} messages dropped/delayed", h.len(), c.faults.counts());
    if let Err(v) = lincheck::check(&h) {
        panic!("seed {seed} ({nemesis:?}): {v}");
    }
    assert!(acked > 20, "seed {seed}: only {acked} operations were answered: the cluster made no progress");
    eprintln!("  {:?} stopping", t0.elapsed());
    within("stopping the cluster", c.stop_all()).await;
    eprintln!("  {:?} stopped", t0.elapsed());
    h.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_across_ten_leader_kills() {
    let s = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    for _ in 0..10 {
        round(rng.random(), Nemesis::KillLeader, Duration::from_millis(1500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_across_partitions() {
    let s = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    for _ in 0..3 {
        round(rng.random(), Nemesis::Partition, Duration::from_secs(3)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_with_dropped_and_delayed_messages() {
    let s = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    for _ in 0..3 {
        round(rng.random(), Nemesis::DropsAndDelays, Duration::from_secs(3)).await;
    }
}
