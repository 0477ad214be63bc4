//! Power loss, not only process death: the store writes through a disk that keeps unsynced
//! writes in memory (`storage::disk::PowerLossDisk`); at a random moment the power is cut (the
//! unsynced writes are dropped, or a random prefix of them lands, the last one torn), and the
//! store is reopened from what the files hold, as after a reboot. Every acknowledged write
//! must be there at its acknowledged revision, and two-key txns all or nothing.
//!
//! A killed process keeps the page cache, so `tests/crash.rs` cannot tell a sync from none;
//! this test can, and shows it: a store opened without syncs loses acknowledged writes here.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use rand::{Rng, SeedableRng};
use storage::disk::{LogIo, PowerLossDisk};
use storage::*;

type Acks = Arc<Mutex<BTreeMap<String, u64>>>;

/// How the power goes out.
#[derive(Clone, Copy)]
enum Cut {
    /// At the `n`th write the disk takes, before its sync (the window a sync closes).
    AtWrite(u64),
    /// Once this many writes are acknowledged, from the test.
    AfterAcks(usize),
}

/// One life: writes until the power cut, reopens, checks. `Err` lists what an acknowledged
/// write lost.
async fn round(seed: u64, fsync: bool, cut: Cut) -> Result<usize, String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let disk = PowerLossDisk::new();
    let mut cfg = config(dir.path(), 2);
    cfg.segment_bytes = 2 << 20;
    cfg.batch_bytes_max = 256 << 10;
    cfg.request_bytes_max = 256 << 10;
    cfg.fsync = fsync;
    cfg.log_io = LogIo::PowerLoss(disk.clone());
    if let Cut::AtWrite(n) = cut {
        disk.cut_at_write(n, seed);
    }
    let store = Store::open(cfg).unwrap();
    let acks: Acks = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let (store, acks, stop) = (store.clone(), acks.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                let val = |k: &str| Bytes::from(format!("{k}={c}:{seq}"));
                if seq % 5 == 0 {
                    let (a, b) = (format!("/pair/{c}/{seq}/a"), format!("/pair/{c}/{seq}/b"));
                    let put = |k: &String| TxnOp::Put(PutRequest { key: Bytes::from(k.clone()), value: val(k), lease: 0, prev_kv: false });
                    let req = TxnRequest { compare: vec![], success: vec![put(&a), put(&b)], failure: vec![] };
                    match store.txn(req).await {
                        Ok(r) => {
                            let mut m = acks.lock().unwrap();
                            m.insert(a, r.revision);
                            m.insert(b, r.revision);
                        }
                        Err(_) => return,
                    }
                } else {
                    let k = format!("/c/{c}/{seq}");
                    match store.put(k.clone(), val(&k)).await {
                        Ok(r) => {
                            acks.lock().unwrap().insert(k, r.revision);
                        }
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    match cut {
        Cut::AfterAcks(n) => {
            within("the writers' acknowledgements before the power cut", async {
                while acks.lock().unwrap().len() < n {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            disk.cut(|n| rng.random_range(0..=n));
        }
        Cut::AtWrite(n) => {
            within(&format!("the power cut armed at write {n}"), async {
                while disk.outcome().is_none() {
                    tokio::task::yield_now().await;
                }
            })
            .await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        within("a writer stopping after the power cut", t).await.unwrap();
    }
    // Every write a writer saw acknowledged was acknowledged before the cut (after it, every
    // write and sync fails): all of them must survive.
    let promised = acks.lock().unwrap().clone();
    let (kept, torn, lost) = disk.outcome().unwrap();
    drop(store);
    eprintln!("seed {seed}: {} acknowledged, cut kept {kept} unsynced writes, tore one at {torn} bytes, lost {lost}", promised.len());
    let (writes, syncs) = disk.counts();
    assert!(writes > 0 && (syncs > 0) == fsync, "the store did not write through the test disk ({writes} writes, {syncs} syncs)");
    // Power is back: the files hold what reached them.
    let store = Store::open(config_reopen(dir.path())).map_err(|e| format!("recovery after the power cut failed: {e}"))?;
    let all = within("range of everything", store.range(RangeRequest::prefix(""))).await.unwrap();
    let present: BTreeMap<String, &KeyValue> = all.kvs.iter().map(|kv| (String::from_utf8(kv.key.to_vec()).unwrap(), kv)).collect();
    let mut missing = Vec::new();
    for (key, rev) in &promised {
        match present.get(key) {
            None => missing.push(format!("{key}@{rev} lost")),
            Some(kv) if kv.mod_revision != *rev => missing.push(format!("{key}@{rev} has revision {}", kv.mod_revision)),
            Some(_) => {}
        }
    }
    for key in present.keys() {
        if let Some(base) = key.strip_suffix("/a") {
            assert!(present.contains_key(&format!("{base}/b")), "half a txn: {key} without its /b");
        }
        if let Some(base) = key.strip_suffix("/b") {
            assert!(present.contains_key(&format!("{base}/a")), "half a txn: {key} without its /a");
        }
    }
    if missing.is_empty() {
        Ok(promised.len())
    } else {
        Err(format!("{} of {} acknowledged writes: {}", missing.len(), promised.len(), missing[..missing.len().min(5)].join(", ")))
    }
}

fn config_reopen(dir: &std::path::Path) -> Config {
    let mut cfg = config(dir, 2);
    cfg.segment_bytes = 2 << 20;
    cfg.batch_bytes_max = 256 << 10;
    cfg.request_bytes_max = 256 << 10;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_power_cut() {
    let rounds: u64 = std::env::var("CAPSTAN_POWER_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let seed: u64 = std::env::var("CAPSTAN_POWER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("power loss test seed {seed} (CAPSTAN_POWER_SEED to replay), {rounds} rounds");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..rounds {
        let s = rng.random();
        let cut = if i % 3 == 2 { Cut::AfterAcks(rng.random_range(20..600)) } else { Cut::AtWrite(rng.random_range(5..300)) };
        if let Err(e) = round(s, true, cut).await {
            panic!("seed {s}: acknowledged writes lost at a power cut: {e}");
        }
    }
}

/// The test can fail: without fdatasync, the same power cut loses acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_sync_loses_acknowledged_writes_at_a_power_cut() {
    let mut lost_somewhere = false;
    for s in 0..5 {
        if round(s, false, Cut::AfterAcks(300)).await.is_err() {
            lost_somewhere = true;
            break;
        }
    }
    assert!(lost_somewhere, "a store without syncs lost nothing at a power cut: the test cannot tell a sync from none");
}
