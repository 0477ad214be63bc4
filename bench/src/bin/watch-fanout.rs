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
//! Objects look like the density run's pods: Deployment-made names, the namespace, three
//! labels (app, pod-template-hash, loadgen), a container with requests, and a Running status,
//! so the cache's memory per pod is what a real pod costs it. The run checks itself: every
//! update must reach its node's watcher and every all-pods watcher (`deliveries_expected`),
//! and no watcher may be evicted for falling behind; `complete` is false (and the process exits
//! 1) otherwise.
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

/// The name of pod `i`: the 100 replicas of Deployment `d-{i / 100}`, as its ReplicaSet names
/// them (`<deployment>-<template hash>-<5 random characters>`).
fn pod_name(i: usize) -> (String, String, String) {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let app = format!("d-{}", i / 100);
    let hash = format!("{:x}", 0x5d8f7c6b9u64 + (i / 100) as u64);
    let mut suffix = String::new();
    let mut x = i.wrapping_mul(2_654_435_761);
    for _ in 0..5 {
        suffix.push(ALPHABET[x % ALPHABET.len()] as char);
        x /= ALPHABET.len();
    }
    (format!("{app}-{hash}-{suffix}"), app, hash)
}

/// Values are `<pod index>;<node>;<sent nanos>`; decoding builds the pod's JSON around them
/// (the API server's decoding makes one exact allocation per object, as here).
fn decode() -> Decode {
    Arc::new(|kv: &KeyValue| {
        let v = std::str::from_utf8(&kv.value).ok()?;
        let mut it = v.split(';');
        let i: usize = it.next()?.parse().ok()?;
        let node = it.next()?.to_string();
        let sent: u64 = it.next()?.parse().ok()?;
        let (name, app, hash) = pod_name(i);
        let pod = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "generateName": format!("{app}-{hash}-"), "namespace": "density", "uid": format!("7c1e2a4b-0d3f-4e5a-9b6c-{i:012}"),
                "resourceVersion": kv.mod_revision.to_string(), "creationTimestamp": "2026-12-03T22:50:00Z",
                "labels": {"app": app, "pod-template-hash": hash, "loadgen": "true"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{hash}"), "uid": "0b7d9c3e-5f2a-4c1b-8e6d-3a9f0c2b1d4e", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler", "priority": 0,
                "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority", "securityContext": {}},
            "status": {"phase": "Running", "podIP": "10.64.3.17", "hostIP": "10.0.0.1", "startTime": "2026-12-03T22:50:01Z", "qosClass": "Burstable",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-03T22:50:00Z"}, {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-03T22:50:01Z"}],
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "registry.k8s.io/pause:3.9", "imageID": "", "started": true, "state": {"running": {"startedAt": "2026-12-03T22:50:01Z"}}}]},
            "sent": sent,
        });
        let json = Bytes::from(serde_json::to_vec(&pod).ok()?);
        let labels = [("app", app.as_str()), ("pod-template-hash", hash.as_str()), ("loadgen", "true")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Some(Object::new(kv.key.clone(), kv.mod_revision, json, Meta { namespace: Some(watchcache::intern("density")), name: name.into(), labels, node_name: Some(watchcache::intern(&node)) }))
    })
}

fn sent_of(json: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(json).ok()?;
    let i = s.find("\"sent\":")? + 7;
    let end = s[i..].find([',', '}'])? + i;
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
    let out = rt.block_on(async {
        // Pods first (untimed), then the cache: the RSS it adds is the cache's.
        let mut tasks = Vec::new();
        for w in 0..64 {
            let store = store.clone();
            let (pods, nodes) = (a.pods, a.nodes);
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < pods {
                    store.put(format!("/registry/core/pods/density/{}", pod_name(i).0), format!("{i};n{};0", i % nodes)).await.unwrap();
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
        let json_bytes: usize = snap.values().map(|o| o.json_len()).sum();
        let per_watcher = a.per_watcher_encoding;
        let deadline = Duration::from_secs(a.seconds + 5);
        let mut receivers = Vec::new();
        let mut start_watch = |filter: Filter| {
            let mut w = cache.watch(None, filter).unwrap();
            receivers.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut bytes = 0usize;
                let mut evicted = false;
                loop {
                    let e = match tokio::time::timeout(deadline, w.next()).await {
                        Ok(Some(Ok(e))) => e,
                        Ok(Some(Err(_))) => {
                            evicted = true;
                            break;
                        }
                        _ => break,
                    };
                    let line = if per_watcher { watchcache::encode_object_line(e.kind.as_str(), &e.object) } else { e.json_line() };
                    bytes += line.len();
                    if let Some(sent) = sent_of(&e.object.json()) {
                        let now = epoch.elapsed().as_micros() as u64;
                        h.record(now.saturating_sub(sent / 1000).max(1)).ok();
                    }
                }
                (h, bytes, evicted)
            }));
        };
        for n in 0..a.nodes {
            start_watch(Filter::new(None, Some(format!("n{n}")), Some(Arc::from("")), Arc::new(|_| true)));
        }
        for _ in 0..a.all_watchers {
            start_watch(Filter::everything());
        }
        let enc0 = watchcache::metrics().encodings.load(std::sync::atomic::Ordering::SeqCst);
        let evictions0 = watchcache::metrics().evictions.load(std::sync::atomic::Ordering::SeqCst);
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
                let store = store.clone();
                let node = i % a.nodes;
                batch.push(tokio::spawn(async move {
                    let ts = epoch.elapsed().as_nanos() as u64;
                    store.put(format!("/registry/core/pods/density/{}", pod_name(i).0), format!("{i};n{node};{ts}")).await.unwrap();
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
        let mut evicted_watchers = 0u64;
        for r in receivers {
            let (rh, b, evicted) = r.await?;
            h.add(rh).ok();
            bytes += b;
            evicted_watchers += evicted as u64;
        }
        let evictions = watchcache::metrics().evictions.load(std::sync::atomic::Ordering::SeqCst) - evictions0;
        // Each update reaches its node's watcher and every all-pods watcher.
        let expected = (total * (1 + a.all_watchers)) as u64;
        let cpu = cpu_seconds() - cpu0;
        Ok::<_, anyhow::Error>(json!({
            "nodes": a.nodes, "all_watchers": a.all_watchers, "pods": a.pods, "rate_target": a.rate, "rate_achieved": achieved,
            "per_watcher_encoding": per_watcher, "cpu_seconds_update_phase": cpu,
            "deliveries": h.len(), "deliveries_expected": expected, "evicted_watchers": evicted_watchers, "evictions_counted_by_cache": evictions,
            "complete": h.len() == expected && evicted_watchers == 0 && evictions == 0, "bytes_delivered": bytes,
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
    if out["complete"] != true {
        eprintln!("watch-fanout: {} of {} deliveries, {} watchers evicted: the fan-out lost events", out["deliveries"], out["deliveries_expected"], out["evicted_watchers"]);
        std::process::exit(1);
    }
    Ok(())
}
