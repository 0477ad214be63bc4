//! A write load for the crash test (`storage/tests/crash.rs`): it writes until it is killed
//! and prints one line per acknowledged write, so the test knows exactly what was promised.
//!
//! Lines: `ACK <client> <seq> <revision>` for a put of `/c/<client>/<seq>`, and
//! `PAIR <client> <seq> <revision>` for a txn that put `/pair/<client>/<seq>/a` and `/b`
//! (on different shards in general) at one revision.
//!
//! Usage: `storage-crash-child DATA_DIR SHARDS CLIENTS [SNAPSHOT_EVERY]`. Failpoints come from
//! `CAPSTAN_FAILPOINTS` (debug builds).

use std::io::Write;

use bytes::Bytes;
use storage::{Config, PutRequest, Store, TxnOp, TxnRequest};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: storage-crash-child DATA_DIR SHARDS CLIENTS [SNAPSHOT_EVERY]");
        std::process::exit(2);
    }
    let mut cfg = Config::new(&args[1]);
    cfg.shards = args[2].parse().expect("shards");
    cfg.segment_bytes = 2 << 20;
    cfg.batch_bytes_max = 256 << 10;
    cfg.request_bytes_max = 256 << 10;
    cfg.pin_threads = false;
    let clients: u32 = args[3].parse().expect("clients");
    let snapshot_every: u64 = args.get(4).map_or(0, |s| s.parse().expect("snapshot_every"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let store = match Store::open(cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("open failed: {e}");
                std::process::exit(3);
            }
        };
        // Continue numbering after what a previous life wrote.
        let start = store.revision();
        println!("READY {start}");
        let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let store = store.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                let mut seq = start * 1000;
                loop {
                    seq += 1;
                    let line = if seq % 7 == 0 {
                        let put = |k: String| {
                            TxnOp::Put(PutRequest { key: Bytes::from(k), value: Bytes::from(format!("{c}:{seq}")), lease: 0, prev_kv: false })
                        };
                        let req = TxnRequest {
                            compare: vec![],
                            success: vec![put(format!("/pair/{c}/{seq}/a")), put(format!("/pair/{c}/{seq}/b"))],
                            failure: vec![],
                        };
                        match store.txn(req).await {
                            Ok(r) => format!("PAIR {c} {seq} {}\n", r.revision),
                            Err(e) => format!("ERR {e}\n"),
                        }
                    } else {
                        let value = Bytes::from(format!("{c}:{seq}:{}", "x".repeat(100)));
                        match store.put(format!("/c/{c}/{seq}"), value).await {
                            Ok(r) => format!("ACK {c} {seq} {}\n", r.revision),
                            Err(e) => format!("ERR {e}\n"),
                        }
                    };
                    let mut o = out.lock().unwrap();
                    o.write_all(line.as_bytes()).unwrap();
                    o.flush().unwrap();
                }
            }));
        }
        if snapshot_every > 0 {
            let store = store.clone();
            tokio::spawn(async move {
                let mut last = store.revision();
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    if store.revision() >= last + snapshot_every {
                        last = store.revision();
                        if let Err(e) = store.snapshot().await {
                            eprintln!("snapshot failed: {e}");
                        }
                    }
                }
            });
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
