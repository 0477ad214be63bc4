//! ui-perf: the dashboard at cluster scale. Fills a store with `--nodes` nodes and `--pods`
//! pods (written to the store directly, with status, as a running cluster has them), serves
//! the API in this process, then measures over HTTP on loopback:
//!
//! - each page's first load (it parses every pod's digest once) and then `--loads` loads of
//!   the cluster page, a filtered pod list (namespace + label selector + phase), the first
//!   page of all pods, and all pods of one phase; before every load one pod is written, so
//!   the cluster page's counts are walked again each time, as on a live cluster;
//! - what `--live-pages` open live pages (server-sent events; ten different addresses) cost
//!   the process's CPU over `--live-seconds` while `--churn` pods a second change, against
//!   the same churn with no page open.
//!
//!   cargo run --release -p bench --bin ui-perf -- [--nodes 5000] [--pods 150000] [--loads 100]
//!       [--live-seconds 60] [--baseline-seconds N] [--json]
//!
//! Estimate: the cluster page walks 150,000 pods in the watch cache's snapshot (a persistent
//! map: ~30-50 ns a step) and looks each digest up (a hash of a ~40-byte key, ~50-100 ns),
//! so ~15-25 ms per recount; a filtered list walks one namespace's keys (thousands) and the
//! label index fields, well under a millisecond; the first page of all pods still walks every
//! pod to count them (~5-10 ms).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    #[arg(long, default_value_t = 150_000)]
    pods: usize,
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    #[arg(long, default_value_t = 100)]
    loads: usize,
    #[arg(long, default_value_t = 10)]
    live_pages: usize,
    #[arg(long, default_value_t = 30)]
    live_seconds: u64,
    /// The window without pages (the CPU baseline); `--live-seconds` when not given.
    #[arg(long)]
    baseline_seconds: Option<u64>,
    /// Pod writes a second while the live pages are open (and in the baseline).
    #[arg(long, default_value_t = 50)]
    churn: u64,
    #[arg(long)]
    json: bool,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn get(c: &HttpClient, url: &str) -> Result<(u16, Bytes)> {
    let req = hyper::Request::builder().uri(url).body(Full::new(Bytes::new()))?;
    let resp = c.request(req).await?;
    let code = resp.status().as_u16();
    Ok((code, resp.into_body().collect().await?.to_bytes()))
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let t: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0) + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    t as f64 / 100.0
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm").ok().and_then(|s| s.split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok())).map_or(0, |p| p * 4096)
}

fn node(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("hollow-{i}"), "uid": format!("n-{i}"), "creationTimestamp": "2026-12-05T00:00:00Z",
            "labels": {"capstan.io/hollow": "true", "kubernetes.io/hostname": format!("hollow-{i}"), "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
        "spec": {"podCIDR": format!("10.{}.{}.0/24", 64 + i / 256, i % 256)},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastTransitionTime": "2026-12-05T00:00:00Z", "lastHeartbeatTime": "2026-12-05T00:00:00Z"}],
            "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", i / 256, i % 256)}]
        }
    })
}

fn pod(ns: &str, i: usize, nodes: usize, generation: usize) -> Value {
    let phase = if i % 50 == 0 { "Pending" } else { "Running" };
    let name = format!("web-{}-{i}", i % 100);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("p-{i}"), "creationTimestamp": "2026-12-05T00:00:00Z",
            "labels": {"app": format!("web-{}", i % 100), "pod-template-hash": "5d8f7c9b6"},
            "annotations": {"generation": generation.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("web-{}-5d8f7c9b6", i % 100), "uid": format!("rs-{}", i % 100), "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": if phase == "Pending" { Value::Null } else { json!(format!("hollow-{}", i % nodes)) },
            "schedulerName": "default-scheduler", "restartPolicy": "Always",
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}, "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": phase, "qosClass": "Burstable", "podIP": format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256), "startTime": "2026-12-05T00:00:01Z",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-05T00:00:01Z"},
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-12-05T00:00:01Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-12-05T00:00:02Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-05T00:00:02Z"}],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "registry.k8s.io/pause:3.9", "imageID": "", "started": true, "state": {"running": {"startedAt": "2026-12-05T00:00:02Z"}}}]}
    })
}

async fn put(store: &storage::Store, key: String, obj: &Value) -> Result<()> {
    let value = apiserver::encryption::seal(key.as_bytes(), apiserver::object::encode_stored(obj)).map_err(anyhow::Error::msg)?;
    store.put(Bytes::from(key), value).await?;
    Ok(())
}

fn summary(h: &Histogram<u64>) -> Value {
    json!({"loads": h.len(), "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0, "max_ms": h.max() as f64 / 1000.0})
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = storage::Config::new(dir.path().join("store"));
    // The fill is setup, not what is measured.
    cfg.fsync = false;
    // History compacted as `capstan up` and `capstan server` have it (else every churn write
    // stays in memory and the RSS figures measure the store's history, not the pages).
    cfg.compact_retention_age = Some(Duration::from_secs(300));
    let store = storage::Store::open(cfg).context("open store")?;
    apiserver::bootstrap(&store).await?;
    let t = Instant::now();
    let per_ns = args.pods.div_ceil(args.namespaces);
    let mut tasks = tokio::task::JoinSet::new();
    let mut issued = 0usize;
    let writes: Vec<(String, Value)> = (0..args.namespaces)
        .map(|n| (format!("/registry/core/namespaces/ns-{n}"), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n}"), "uid": format!("ns-{n}"), "creationTimestamp": "2026-12-05T00:00:00Z", "labels": {"kubernetes.io/metadata.name": format!("ns-{n}")}}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})))
        .collect();
    for (k, v) in writes {
        put(&store, k, &v).await?;
    }
    let total = args.nodes + args.pods;
    for i in 0..total {
        let s = store.clone();
        let (nodes, per_ns) = (args.nodes, per_ns);
        tasks.spawn(async move {
            if i < nodes {
                put(&s, format!("/registry/core/nodes/hollow-{i}"), &node(i)).await
            } else {
                let p = i - nodes;
                let ns = format!("ns-{}", p / per_ns);
                let v = pod(&ns, p, nodes, 0);
                put(&s, format!("/registry/core/pods/{ns}/{}", v["metadata"]["name"].as_str().unwrap()), &v).await
            }
        });
        issued += 1;
        if tasks.len() >= 256 {
            tasks.join_next().await.unwrap()??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    eprintln!("ui-perf: wrote {issued} nodes and pods in {:.1} s", t.elapsed().as_secs_f64());

    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let app = apiserver::router(store.clone());
    tokio::spawn(async move { axum::serve(l, app).await });
    let base = format!("http://{addr}");
    let c: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let t = Instant::now();
    loop {
        if get(&c, &format!("{base}/readyz")).await.is_ok_and(|r| r.0 == 200) {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("the watch caches never warmed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ui-perf: caches warm in {:.1} s", t.elapsed().as_secs_f64());
    // The first page opened starts the dashboard's pod model (every pod's digest parsed
    // once); until it is built the cluster page says it is counting.
    let t = Instant::now();
    loop {
        let (code, body) = get(&c, &format!("{base}/ui/")).await?;
        if code != 200 {
            bail!("/ui/: {code} {}", String::from_utf8_lossy(&body));
        }
        if !String::from_utf8_lossy(&body).contains("Counting the pods") {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("the dashboard's pod model was never built");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let model_s = t.elapsed().as_secs_f64();
    eprintln!("ui-perf: the dashboard's pod model built in {model_s:.2} s");

    // One pod written before each load: the counts are walked again every time.
    let churn_key = |g: usize| {
        let p = g % args.pods;
        let ns = format!("ns-{}", p / per_ns);
        let v = pod(&ns, p, args.nodes, g);
        (format!("/registry/core/pods/{ns}/{}", v["metadata"]["name"].as_str().unwrap()), v)
    };
    let pages = [
        ("cluster", "/ui/".to_string()),
        ("pods filtered (namespace, label, phase)", "/ui/pods?namespace=ns-7&labelSelector=app%3Dweb-3&phase=Running".to_string()),
        ("pods, first page of all", "/ui/pods".to_string()),
        ("pods of one phase (all namespaces)", "/ui/pods?phase=Pending".to_string()),
    ];
    let mut results = serde_json::Map::new();
    results.insert("model_build_s".into(), json!(model_s));
    let mut generation = 1usize;
    for (name, path) in &pages {
        let url = format!("{base}{path}");
        let t = Instant::now();
        let (code, body) = get(&c, &url).await?;
        let first_ms = t.elapsed().as_secs_f64() * 1000.0;
        if code != 200 {
            bail!("{path}: {code} {}", String::from_utf8_lossy(&body));
        }
        // What was measured shows what it should (the counts, the rows).
        let text = String::from_utf8_lossy(&body);
        if text.contains("Counting the pods") || (path.starts_with("/ui/pods") && !text.contains("pods match")) {
            bail!("{path} did not show its data: {}", &text[..text.len().min(2000)]);
        }
        let mut h = Histogram::<u64>::new(3)?;
        for _ in 0..args.loads {
            let (k, v) = churn_key(generation);
            generation += 1;
            put(&store, k, &v).await?;
            let t = Instant::now();
            let (code, _) = get(&c, &url).await?;
            h.record(t.elapsed().as_micros() as u64)?;
            if code != 200 {
                bail!("{path}: {code}");
            }
        }
        let mut s = summary(&h);
        s["first_load_ms"] = json!(first_ms);
        s["bytes"] = json!(body.len());
        eprintln!("ui-perf: {name:<42} first {first_ms:>7.1} ms, then p50 {:>6.2} ms p99 {:>6.2} ms max {:>6.2} ms ({} KiB)", s["p50_ms"], s["p99_ms"], s["max_ms"], body.len() / 1024);
        results.insert(name.to_string(), s);
    }

    // Live pages: CPU over a window with churn, with and without ten open streams.
    let churning = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (store, churning, nodes, pods, churn) = (store.clone(), churning.clone(), args.nodes, args.pods, args.churn);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / churn.max(1)));
            let mut g = 1_000_000usize;
            while churning.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let p = g % pods;
                let ns = format!("ns-{}", p / per_ns);
                let v = pod(&ns, p, nodes, g);
                let _ = put(&store, format!("/registry/core/pods/{ns}/{}", v["metadata"]["name"].as_str().unwrap()), &v).await;
                g += 1;
            }
        })
    };
    let window = Duration::from_secs(args.live_seconds);
    let baseline_window = Duration::from_secs(args.baseline_seconds.unwrap_or(args.live_seconds));
    let (c0, m0) = (cpu_seconds(), rss_bytes());
    tokio::time::sleep(baseline_window).await;
    let baseline = (cpu_seconds() - c0) * window.as_secs_f64() / baseline_window.as_secs_f64();
    let rss_growth_baseline = rss_bytes() as i64 - m0 as i64;
    let live_paths = [
        "/ui/", "/ui/pods", "/ui/pods?namespace=ns-3", "/ui/pods?namespace=ns-9&labelSelector=app%3Dweb-9", "/ui/pods?phase=Pending",
        "/ui/nodes", "/ui/store", "/ui/workloads", "/ui/pods/ns-1/web-1-3001", "/ui/scheduler",
    ];
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut streams = Vec::new();
    for i in 0..args.live_pages {
        let path = live_paths[i % live_paths.len()];
        let mut s = form_path(path);
        s.insert_str(0, &format!("{base}/ui/events?path="));
        let (c, received) = (c.clone(), received.clone());
        streams.push(tokio::spawn(async move {
            let req = hyper::Request::builder().uri(&s).body(Full::new(Bytes::new())).unwrap();
            if let Ok(resp) = c.request(req).await {
                let mut body = resp.into_body();
                while let Some(Ok(f)) = body.frame().await {
                    if let Some(d) = f.data_ref() {
                        received.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Let the streams open and send their first update, then measure a window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c1, r1, m1) = (cpu_seconds(), received.load(std::sync::atomic::Ordering::Relaxed), rss_bytes());
    // RSS every tenth of the window: a plateau, or growth that goes on.
    let mut rss_series = vec![m1 >> 20];
    for _ in 0..10 {
        tokio::time::sleep(window / 10).await;
        rss_series.push(rss_bytes() >> 20);
    }
    let with_pages = cpu_seconds() - c1;
    let rss_growth = rss_bytes() as i64 - m1 as i64;
    eprintln!("ui-perf: RSS (MiB) over the window with the pages open: {rss_series:?}");
    let bytes = received.load(std::sync::atomic::Ordering::Relaxed) - r1;
    churning.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.await;
    for s in streams {
        s.abort();
    }
    let secs = window.as_secs_f64();
    let cost = (with_pages - baseline) / secs * 100.0;
    eprintln!(
        "ui-perf: {} live pages with {} pod writes/s: {:.1}% of a core over {:.0} s ({:.1}% with them, {:.1}% without), {:.0} KiB/s of updates, RSS {:+.1} MiB over the window ({:+.1} MiB in the {:.0} s before, without them)",
        args.live_pages, args.churn, cost, secs, with_pages / secs * 100.0, baseline / secs * 100.0, bytes as f64 / secs / 1024.0, rss_growth as f64 / 1048576.0, rss_growth_baseline as f64 / 1048576.0, baseline_window.as_secs_f64()
    );
    results.insert("live_pages".into(), json!({"pages": args.live_pages, "churn_per_s": args.churn, "seconds": secs, "core_percent": cost, "with_percent": with_pages / secs * 100.0, "baseline_percent": baseline / secs * 100.0, "update_bytes_per_s": bytes as f64 / secs, "rss_growth_bytes": rss_growth, "rss_growth_baseline_bytes": rss_growth_baseline, "rss_mib_series": rss_series}));
    if args.json {
        println!("{}", Value::Object(results));
    }
    Ok(())
}

fn form_path(path: &str) -> String {
    let mut s = String::new();
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => s.push(b as char),
            _ => s.push_str(&format!("%{b:02X}")),
        }
    }
    s
}
