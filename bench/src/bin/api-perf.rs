//! api-perf: the API server over HTTP, driven by N concurrent keep-alive connections.
//!
//!   cargo run --release -p bench --bin api-perf -- [--connections 64] [--pods 20000] \
//!       [--list-pods 3000] [--server URL | --kubeconfig F] [--shards N] [--unsafe-no-fsync] [--json]
//!
//! `--kubeconfig F` drives the server of a kubeconfig over TLS with its client certificate
//! (`capstan apiserver` with authentication, RBAC, audit and APF on); `--server http://...`
//! a plain-HTTP one (`--insecure-http`): the two make the security-on/off comparison.
//! By default it starts the store and the API server in this process on 127.0.0.1:0 and a
//! temporary directory (the clients share the machine's two cores with the server). Phases:
//! create `--pods` pods, get them, list a namespace of `--list-pods` pods, update each pod
//! once (PUT with its resourceVersion). Latencies per request in an hdrhistogram (µs).
//!
//! Estimate for a create: ~1 KB JSON in, parse + default + validate + encode (a few µs each),
//! one store txn (durable: group commit, one fdatasync per batch per shard), ~1.1 KB out.
//! At 64 connections the store's batches hold tens of requests, so the ceiling is the CPU
//! of HTTP + JSON on two cores shared with the clients: ~20-40 µs of CPU per create.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 20_000)]
    pods: usize,
    #[arg(long, default_value_t = 3_000)]
    list_pods: usize,
    /// Lists of the `--list-pods` namespace to run.
    #[arg(long, default_value_t = 200)]
    lists: usize,
    /// Drive an API server that is already running (http://host:port) instead of starting one.
    #[arg(long, conflicts_with = "kubeconfig")]
    server: Option<String>,
    /// Drive the server of this kubeconfig, over TLS with its credentials.
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// With `--kubeconfig`: present this bearer token (and the kubeconfig's CA only, so that
    /// the token and not the certificate names the user).
    #[arg(long, requires = "kubeconfig")]
    token: Option<String>,
    #[arg(long)]
    shards: Option<usize>,
    #[arg(long)]
    unsafe_no_fsync: bool,
    #[arg(long)]
    json: bool,
    /// Only: fill a namespace with this many pods, then list it once, measuring the list's
    /// latency and the process's peak extra RSS while it is served (embedded server only).
    #[arg(long)]
    big_list: Option<usize>,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok()))
        .map_or(0, |p| p * 4096)
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// `Authorization` of every request (`--token`).
static BEARER: std::sync::OnceLock<hyper::header::HeaderValue> = std::sync::OnceLock::new();

async fn call(c: &HttpClient, method: &str, url: &str, body: Option<Vec<u8>>) -> Result<(u16, Bytes)> {
    let mut req = hyper::Request::builder().method(method).uri(url).header("Accept", "application/json");
    if let Some(b) = BEARER.get() {
        req = req.header(hyper::header::AUTHORIZATION, b.clone());
    }
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = c.request(req).await?;
    let code = resp.status().as_u16();
    let b = resp.into_body().collect().await?.to_bytes();
    Ok((code, b))
}

fn pod(ns: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench", "shard": format!("s{}", name.len() % 7)}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]},
    }))
    .unwrap()
}

struct Phase {
    name: &'static str,
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
}

/// Runs `n` requests over `conns` concurrent tasks; `f(i)` makes request i.
async fn run<F, Fut>(name: &'static str, n: usize, conns: usize, f: F) -> Result<Phase>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let f = f.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                f(i).await?;
                h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        hist.add(t.await??).unwrap();
    }
    Ok(Phase { name, ops: n as u64, secs: start.elapsed().as_secs_f64(), hist })
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Plain HTTP, or TLS with a kubeconfig's CA and client certificate.
    let tls = match &args.kubeconfig {
        Some(k) => {
            let kc = client::kubeconfig::load(k, None).map_err(anyhow::Error::msg)?;
            args.server = Some(kc.server.clone());
            let mut creds = kc.credentials.context("the kubeconfig has no credentials")?;
            if let Some(t) = &args.token {
                BEARER.set(hyper::header::HeaderValue::from_str(&format!("Bearer {t}"))?).expect("set once");
                creds.cert_pem = None;
                creds.key_pem = None;
            }
            client::tls::client_config(&creds).map_err(anyhow::Error::msg)?
        }
        None => rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth(),
    };
    let connector = client::tls::connector_with(&tls);
    let _dir;
    let (base, _store) = match &args.server {
        Some(s) => (s.trim_end_matches('/').to_string(), None),
        None => {
            let dir = tempfile::tempdir()?;
            let mut cfg = storage::Config::new(dir.path().join("store"));
            if let Some(n) = args.shards {
                cfg.shards = n;
            }
            cfg.fsync = !args.unsafe_no_fsync;
            if args.unsafe_no_fsync {
                eprintln!("!!! --unsafe-no-fsync: writes are acknowledged before they are durable !!!");
            }
            let store = storage::Store::open(cfg).context("open store")?;
            let addr = rt.block_on(async {
                apiserver::bootstrap(&store).await?;
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = l.local_addr()?;
                let app = apiserver::router(store.clone());
                tokio::spawn(async move { axum::serve(l, app).await });
                Ok::<_, anyhow::Error>(addr)
            })?;
            _dir = dir;
            (format!("http://{addr}"), Some(store))
        }
    };
    if let Some(n) = args.big_list {
        let out = rt.block_on(async {
            let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(args.connections).build(connector.clone());
            let ns = format!("big-{}", std::process::id());
            call(&client, "POST", &format!("{base}/api/v1/namespaces"), Some(serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))?)).await?;
            let (c, b, nsc) = (client.clone(), base.clone(), ns.clone());
            let fill = run("fill", n, args.connections, move |i| {
                let (c, b, ns) = (c.clone(), b.clone(), nsc.clone());
                async move {
                    let (code, body) = call(&c, "POST", &format!("{b}/api/v1/namespaces/{ns}/pods"), Some(pod(&ns, &format!("b-{i}")))).await?;
                    if code != 201 {
                        bail!("create: {code} {}", String::from_utf8_lossy(&body));
                    }
                    Ok(())
                }
            })
            .await?;
            // Sample RSS every millisecond while the list is served and read.
            let before = rss_bytes();
            let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (p2, s2) = (peak.clone(), stop.clone());
            let sampler = std::thread::spawn(move || {
                while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                    p2.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            });
            let t = Instant::now();
            // Read the body in chunks and count it, as a streaming client would.
            let req = hyper::Request::builder().method("GET").uri(format!("{base}/api/v1/namespaces/{ns}/pods")).header("Accept", "application/json").body(Full::new(Bytes::new()))?;
            let resp = client.request(req).await?;
            let mut body = resp.into_body();
            let mut bytes = 0usize;
            let mut first_byte_ms = None;
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame?.into_data() {
                    first_byte_ms.get_or_insert(t.elapsed().as_secs_f64() * 1e3);
                    bytes += d.len();
                }
            }
            let took = t.elapsed();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            sampler.join().ok();
            Ok::<_, anyhow::Error>(json!({
                "pods": n, "fill_creates_per_sec": fill.ops as f64 / fill.secs, "list_ms": took.as_secs_f64() * 1e3,
                "first_byte_ms": first_byte_ms, "list_bytes": bytes,
                "peak_extra_rss_bytes": peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before),
            }))
        })?;
        println!("{out}");
        return Ok(());
    }
    let phases = rt.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(args.connections).build(connector.clone());
        let run_id = std::process::id();
        let ns = format!("bench-{run_id}");
        let list_ns = format!("bench-list-{run_id}");
        for n in [&ns, &list_ns] {
            let (code, body) = call(&client, "POST", &format!("{base}/api/v1/namespaces"), Some(serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))?)).await?;
            if code != 201 {
                bail!("creating namespace {n}: {code} {}", String::from_utf8_lossy(&body));
            }
        }
        let mut phases = Vec::new();
        let (c, b, nsc) = (client.clone(), base.clone(), ns.clone());
        phases.push(run("create", args.pods, args.connections, move |i| {
            let (c, b, ns) = (c.clone(), b.clone(), nsc.clone());
            async move {
                let (code, body) = call(&c, "POST", &format!("{b}/api/v1/namespaces/{ns}/pods"), Some(pod(&ns, &format!("p-{i}")))).await?;
                if code != 201 {
                    bail!("create: {code} {}", String::from_utf8_lossy(&body));
                }
                Ok(())
            }
        })
        .await?);
        let (c, b, nsc) = (client.clone(), base.clone(), ns.clone());
        phases.push(run("get", args.pods, args.connections, move |i| {
            let (c, b, ns) = (c.clone(), b.clone(), nsc.clone());
            async move {
                let (code, _) = call(&c, "GET", &format!("{b}/api/v1/namespaces/{ns}/pods/p-{i}"), None).await?;
                if code != 200 {
                    bail!("get: {code}");
                }
                Ok(())
            }
        })
        .await?);
        let (c, b, nsc) = (client.clone(), base.clone(), ns.clone());
        phases.push(run("update", args.pods, args.connections, move |i| {
            let (c, b, ns) = (c.clone(), b.clone(), nsc.clone());
            async move {
                let url = format!("{b}/api/v1/namespaces/{ns}/pods/p-{i}");
                let (_, body) = call(&c, "GET", &url, None).await?;
                let mut v: Value = serde_json::from_slice(&body)?;
                v["metadata"]["labels"]["updated"] = json!("yes");
                let (code, body) = call(&c, "PUT", &url, Some(serde_json::to_vec(&v)?)).await?;
                if code != 200 {
                    bail!("update: {code} {}", String::from_utf8_lossy(&body));
                }
                Ok(())
            }
        })
        .await?);
        // The list namespace, filled untimed.
        let (c, b, lns) = (client.clone(), base.clone(), list_ns.clone());
        run("fill", args.list_pods, args.connections, move |i| {
            let (c, b, ns) = (c.clone(), b.clone(), lns.clone());
            async move {
                call(&c, "POST", &format!("{b}/api/v1/namespaces/{ns}/pods"), Some(pod(&ns, &format!("l-{i}")))).await?;
                Ok(())
            }
        })
        .await?;
        let (c, b, lns) = (client.clone(), base.clone(), list_ns.clone());
        let want = args.list_pods;
        // Check the list once (parsing 3,000 pods costs the client more than the server).
        let (code, body) = call(&client, "GET", &format!("{base}/api/v1/namespaces/{list_ns}/pods"), None).await?;
        let v: Value = serde_json::from_slice(&body)?;
        let n = v["items"].as_array().map_or(0, |a| a.len());
        if code != 200 || n != want {
            bail!("list: {code}, {n} items, want {want}");
        }
        let expect_len = body.len();
        phases.push(run("list", args.lists, args.connections.min(8), move |_| {
            let (c, b, ns) = (c.clone(), b.clone(), lns.clone());
            async move {
                let (code, body) = call(&c, "GET", &format!("{b}/api/v1/namespaces/{ns}/pods"), None).await?;
                if code != 200 || body.len() != expect_len {
                    bail!("list: {code}, {} bytes, want {expect_len}", body.len());
                }
                Ok(())
            }
        })
        .await?);
        Ok::<_, anyhow::Error>(phases)
    })?;
    let out: Vec<Value> = phases
        .iter()
        .map(|p| {
            json!({
                "phase": p.name, "ops": p.ops, "ops_per_sec": p.ops as f64 / p.secs,
                "p50_us": p.hist.value_at_quantile(0.5), "p99_us": p.hist.value_at_quantile(0.99),
                "p999_us": p.hist.value_at_quantile(0.999), "max_us": p.hist.max(),
            })
        })
        .collect();
    if args.json {
        println!("{}", json!({"connections": args.connections, "pods": args.pods, "list_pods": args.list_pods, "fsync": !args.unsafe_no_fsync, "embedded": args.server.is_none(), "phases": out}));
    } else {
        println!("{:<8} {:>9} {:>12} {:>10} {:>10} {:>10}", "phase", "ops", "ops/s", "p50 µs", "p99 µs", "p999 µs");
        for p in &phases {
            println!(
                "{:<8} {:>9} {:>12.0} {:>10} {:>10} {:>10}",
                p.name,
                p.ops,
                p.ops as f64 / p.secs,
                p.hist.value_at_quantile(0.5),
                p.hist.value_at_quantile(0.99),
                p.hist.value_at_quantile(0.999)
            );
        }
    }
    Ok(())
}
