//! watch-fanout: the watch cache's fan-out, in process (store + one cache, no HTTP).
//!
//!   cargo run --release -p bench --bin watch-fanout -- [--nodes 10000] [--all-watchers 100] \
//!       [--pods 50000] [--rate 5000] [--seconds 10] [--per-watcher-encoding] [--json]
//!
//! One watcher per node (filtered by node name, like every kubelet) plus `--all-watchers`
//! watchers of every pod; `--pods` pods spread over the nodes, then updates at `--rate`/s for
//! `--seconds`. Each update carries its send time; each watcher takes the event's shared
//! encoding (or, with `--per-watcher-encoding`, encodes it itself, as a cache without shared
//! encoding would) and records send-to-delivery latency in an hdrhistogram.
//!
//! Estimate: 5,000 updates/s reach 100 all-pod watchers and one node watcher each: ~505,000
//! deliveries/s, each a bounded-channel send, a task wake and a receive (~1-2 µs): most of one
//! of the two cores; the node index keeps the 10,000 node watchers out of each event's path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;
use storage::KeyValue;
use watchcache::{Cache, Config, Decode, Filter, Meta, Object};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    #[arg(long, default_value_t = 100)]
    all_watchers: usize,
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    #[arg(long, default_value_t = 5_000)]
    rate: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Encode each event per watcher instead of sharing one encoding.
    #[arg(long)]
    per_watcher_encoding: bool,
    #[arg(long)]
    json: bool,
}

/// CPU seconds used by this process so far (user + system, from /proc, 100 Hz ticks).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Values are `<node>;<sent nanos>;<padding>`; the object's JSON carries them.
fn decode() -> Decode {
    Arc::new(|kv: &KeyValue| {
        let v = std::str::from_utf8(&kv.value).ok()?;
        let mut it = v.split(';');
        let node = it.next()?.to_string();
        let sent = it.next()?.to_string();
        let mut json = format!(
            "{{\"kind\":\"Pod\",\"metadata\":{{\"name\":\"{}\",\"resourceVersion\":\"{}\"}},\"spec\":{{\"nodeName\":\"{node}\"}},\"sent\":{sent},\"pad\":\"{}\"}}",
            String::from_utf8_lossy(&kv.key),
            kv.mod_revision,
            it.next().unwrap_or("")
        );
        json.shrink_to_fit(); // an exact allocation, as the API server's decoding makes
        let json = Bytes::from(json);
        Some(Object {
            key: kv.key.clone(),
            revision: kv.mod_revision,
            json,
            meta: Meta { namespace: Some(watchcache::intern("default")), name: "".into(), labels: Default::default(), node_name: Some(watchcache::intern(&node)) },
        })
    })
}

fn sent_of(json: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(json).ok()?;
    let i = s.find("\"sent\":")? + 7;
    let end = s[i..].find(',')? + i;
    s[i..end].parse().ok()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let mut cfg = storage::Config::new(dir.path());
    cfg.fsync = false; // the cache's fan-out is what is measured, not the disk
    let store = storage::Store::open(cfg)?;
    let epoch = Instant::now();
    let pad = "x".repeat(600);
    let out = rt.block_on(async {
        // Pods first (untimed), then the cache: the RSS it adds is the cache's.
        let mut tasks = Vec::new();
        for w in 0..64 {
            let (store, pad) = (store.clone(), pad.clone());
            let (pods, nodes) = (a.pods, a.nodes);
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < pods {
                    store.put(format!("/registry/core/pods/default/p{i}"), format!("n{};0;{pad}", i % nodes)).await.unwrap();
                    i += 64;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let rss0 = rss_bytes();
        let cache = Cache::start(store.clone(), Bytes::from_static(b"/registry/core/pods/"), decode(), Config::default()).await?;
        let rss1 = rss_bytes();
        let (_, snap) = cache.snapshot();
        let json_bytes: usize = snap.values().map(|o| o.json.len()).sum();
        let per_watcher = a.per_watcher_encoding;
        let deadline = Duration::from_secs(a.seconds + 5);
        let mut receivers = Vec::new();
        let mut start_watch = |filter: Filter| {
            let mut w = cache.watch(None, filter).unwrap();
            receivers.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut bytes = 0usize;
                while let Ok(Some(Ok(e))) = tokio::time::timeout(deadline, w.next()).await {
                    let line = if per_watcher { watchcache::encode_line(e.kind.as_str(), &e.object.json) } else { e.json_line() };
                    bytes += line.len();
                    if let Some(sent) = sent_of(&e.object.json) {
                        let now = epoch.elapsed().as_micros() as u64;
                        h.record(now.saturating_sub(sent / 1000).max(1)).ok();
                    }
                }
                (h, bytes)
            }));
        };
        for n in 0..a.nodes {
            start_watch(Filter::new(None, Some(format!("n{n}")), Some(Arc::from("")), Arc::new(|_| true)));
        }
        for _ in 0..a.all_watchers {
            start_watch(Filter::everything());
        }
        let enc0 = watchcache::metrics().encodings.load(std::sync::atomic::Ordering::SeqCst);
        let in0 = watchcache::metrics().events_in.load(std::sync::atomic::Ordering::SeqCst);
        // Updates at the target rate, in 10 ms ticks.
        let total = a.rate * a.seconds as usize;
        let per_tick = (a.rate / 100).max(1);
        let started = Instant::now();
        let cpu0 = cpu_seconds();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut sent = 0usize;
        let mut next_pod = 0usize;
        while sent < total {
            tick.tick().await;
            let mut batch = Vec::with_capacity(per_tick);
            for _ in 0..per_tick.min(total - sent) {
                let i = next_pod % a.pods;
                next_pod += 7919; // spread over pods (and so nodes)
                let (store, pad) = (store.clone(), pad.clone());
                let node = i % a.nodes;
                batch.push(tokio::spawn(async move {
                    let ts = epoch.elapsed().as_nanos() as u64;
                    store.put(format!("/registry/core/pods/default/p{i}"), format!("n{node};{ts};{pad}")).await.unwrap();
                }));
                sent += 1;
            }
            for t in batch {
                t.await?;
            }
        }
        let achieved = total as f64 / started.elapsed().as_secs_f64();
        cache.wait_consistent(Duration::from_secs(30)).await?;
        let enc = watchcache::metrics().encodings.load(std::sync::atomic::Ordering::SeqCst) - enc0;
        let events = watchcache::metrics().events_in.load(std::sync::atomic::Ordering::SeqCst) - in0;
        drop(cache); // ends the watches once their queues drain
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut bytes = 0usize;
        for r in receivers {
            let (rh, b) = r.await?;
            h.add(rh).ok();
            bytes += b;
        }
        let cpu = cpu_seconds() - cpu0;
        Ok::<_, anyhow::Error>(json!({
            "nodes": a.nodes, "all_watchers": a.all_watchers, "pods": a.pods, "rate_target": a.rate, "rate_achieved": achieved,
            "per_watcher_encoding": per_watcher, "cpu_seconds_update_phase": cpu,
            "deliveries": h.len(), "bytes_delivered": bytes,
            "latency_p50_us": h.value_at_quantile(0.5), "latency_p99_us": h.value_at_quantile(0.99), "latency_p999_us": h.value_at_quantile(0.999), "latency_max_us": h.max(),
            "events": events, "encodings": enc, "encodings_per_event": if events > 0 { enc as f64 / events as f64 } else { 0.0 },
            "cached_pods": a.pods, "cached_json_bytes": json_bytes,
            "cache_rss_bytes_per_pod": (rss1.saturating_sub(rss0)) as f64 / a.pods as f64,
            "json_bytes_per_pod": json_bytes as f64 / a.pods as f64,
        }))
    })?;
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
