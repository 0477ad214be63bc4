//! DNS queries per second against a server (the node's cluster DNS), over UDP: `--inflight`
//! askers, each with its own socket, each asking its next question when the last is
//! answered; answers per second and the latency percentiles (hdrhistogram), as dnsperf
//! reports them. A question unanswered in a second counts as lost and is asked again.
//!
//! `cargo run --release -p bench --bin dns-perf -- --server 10.96.0.10:53 --name web.default.svc.cluster.local`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The server, IP:PORT.
    #[arg(long)]
    server: SocketAddr,
    /// Names asked (A), in turn; `_port._proto.` names are asked as SRV. Repeatable.
    #[arg(long, required = true)]
    name: Vec<String>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Seconds asked before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
}

/// A query for `name` (A, or SRV for `_x._y.` names) with id 0, recursion desired.
fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    let qtype: u16 = if name.starts_with('_') { 33 } else { 1 };
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let queries: Arc<Vec<Vec<u8>>> = Arc::new(a.name.iter().map(|n| query(n)).collect());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, lost, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for i in 0..a.inflight {
        let (queries, measuring, stop, answered, lost, errors) = (queries.clone(), measuring.clone(), stop.clone(), answered.clone(), lost.clone(), errors.clone());
        let server = a.server;
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
            let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
            s.connect(server).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut id: u16 = (i as u16).wrapping_mul(7919);
            let mut k = i;
            while !stop.load(Ordering::Relaxed) {
                id = id.wrapping_add(1);
                let mut q = queries[k % queries.len()].clone();
                k += 1;
                q[..2].copy_from_slice(&id.to_be_bytes());
                let t = Instant::now();
                if s.send(&q).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let got = tokio::time::timeout(Duration::from_secs(1), async {
                    loop {
                        let n = s.recv(&mut buf).await.ok()?;
                        if n >= 12 && buf[..2] == id.to_be_bytes() {
                            return Some(buf[3] & 0x0f);
                        }
                    }
                })
                .await;
                let m = measuring.load(Ordering::Relaxed);
                match got {
                    Ok(Some(0)) if m => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    }
                    Ok(Some(_)) if m => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) | Ok(None) if m => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            hist
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    for t in tasks {
        hist.add(t.await?).ok();
    }
    let n = answered.load(Ordering::Relaxed);
    println!(
        "dns-perf: {} answered in {elapsed:.1} s = {:.0} queries/s; lost {}, errors {}; latency p50 {} us, p99 {} us, max {} us ({} in flight, {} names)",
        n,
        n as f64 / elapsed,
        lost.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
        a.inflight,
        a.name.len()
    );
    Ok(())
}
