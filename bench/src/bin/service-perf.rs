//! Service routing on a real node: how long the node's proxy takes to program many
//! Services, and to follow an endpoint change.
//!
//!   service-perf --server http://127.0.0.1:PORT [--services 1000] [--endpoints 10] [--changes 100]
//!
//! Against `capstan up --insecure-http` with a real node (root: cluster IPs are addresses
//! of the node). Phase 1 creates `--services` selectorless Services and one EndpointSlice
//! each with `--endpoints` ready endpoints (addresses that need not exist), then connects to
//! every cluster IP until each accepts: the time from the last slice's write to the last
//! Service accepting is the programming time. Phase 2 points one Service at one of two
//! backends this process serves (127.0.0.1 and 127.0.0.2, same port, each answering its
//! letter), switches it `--changes` times, and after each switch measures how long until a
//! new connection reaches the new backend (percentiles, hdrhistogram).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use client::Client;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    server: String,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value_t = 100)]
    changes: usize,
    #[arg(long, default_value = "svcperf")]
    namespace: String,
}

/// Whether `addr` accepts a connection now.
fn accepts(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The letter the backend at `addr` answers, if one answers.
fn letter(addr: SocketAddr) -> Option<u8> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).ok()?;
    Some(b[0])
}

/// A backend answering `c` to every connection, on `ip`:`port`.
fn backend(ip: Ipv4Addr, port: u16, c: u8) -> Result<()> {
    let l = std::net::TcpListener::bind((ip, port)).with_context(|| format!("listening on {ip}:{port}"))?;
    std::thread::spawn(move || {
        use std::io::Write;
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(&[c]);
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let c = Arc::new(Client::new(&a.server));
    let ns = a.namespace.clone();
    match c.post("/api/v1/namespaces", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await {
        Ok(_) | Err(client::ClientError::Status { code: 409, .. }) => {}
        Err(e) => bail!("creating namespace {ns}: {e}"),
    }
    // Phase 1: many Services at once.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..a.services {
        let (c, ns, sem) = (c.clone(), ns.clone(), sem.clone());
        let endpoints = a.endpoints;
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("s{i}")}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
            let made = c.post(&format!("/api/v1/namespaces/{ns}/services"), &svc).await?;
            let ip: Ipv4Addr = made["spec"]["clusterIP"].as_str().unwrap_or("").parse().context("a cluster IP")?;
            let eps: Vec<_> = (0..endpoints).map(|k| json!({"addresses": [format!("10.250.{}.{}", i % 250, k + 1)], "conditions": {"ready": true}})).collect();
            let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": format!("s{i}"), "labels": {"kubernetes.io/service-name": format!("s{i}")}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps});
            c.post(&format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"), &slice).await?;
            anyhow::Ok((ip, Instant::now()))
        }));
    }
    let mut ips = Vec::new();
    let mut last_write = t0;
    for t in tasks {
        let (ip, at) = t.await??;
        ips.push(ip);
        last_write = last_write.max(at);
    }
    let written = last_write - t0;
    let mut pending: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::from((*ip, 80))).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        pending.retain(|a| !accepts(*a));
        if Instant::now() > deadline {
            bail!("{} Services still not programmed after 120 s", pending.len());
        }
    }
    let programmed = last_write.elapsed();
    println!(
        "service-perf: {} Services x {} endpoints written in {:.2} s; all accepting {:.3} s after the last EndpointSlice write",
        a.services,
        a.endpoints,
        written.as_secs_f64(),
        programmed.as_secs_f64()
    );
    // Phase 2: endpoint changes.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    backend(Ipv4Addr::new(127, 0, 0, 1), port, b'A')?;
    backend(Ipv4Addr::new(127, 0, 0, 2), port, b'B')?;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "switch"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]}});
    let made = c.post(&format!("/api/v1/namespaces/{ns}/services"), &svc).await?;
    let ip: Ipv4Addr = made["spec"]["clusterIP"].as_str().unwrap_or("").parse()?;
    let addr = SocketAddr::from((ip, 80));
    let eps = |ip: &str| json!([{"addresses": [ip], "conditions": {"ready": true}}]);
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "switch", "labels": {"kubernetes.io/service-name": "switch"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}], "endpoints": eps("127.0.0.1")});
    c.post(&format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"), &slice).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while letter(addr) != Some(b'A') {
        if Instant::now() > deadline {
            bail!("the switch Service never reached its first backend");
        }
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for k in 0..a.changes {
        let (to, want) = if k % 2 == 0 { ("127.0.0.2", b'B') } else { ("127.0.0.1", b'A') };
        let path = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/switch");
        let t = Instant::now();
        c.merge_patch(&path, &json!({"endpoints": eps(to)})).await?;
        while letter(addr) != Some(want) {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("change {k} not reflected in 30 s");
            }
        }
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    println!(
        "service-perf: endpoint change reflected (from sending the PATCH to the first new connection reaching the new endpoint), {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        a.changes,
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.max() as f64 / 1e3
    );
    Ok(())
}
