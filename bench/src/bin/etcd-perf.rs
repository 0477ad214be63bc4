//! etcd-perf: an etcd v3 endpoint (capstan's or a real etcd's) driven through the `etcd-client`
//! crate, so that both stores are measured with the same client.
//!
//!   cargo run --release -p bench --bin etcd-perf -- --endpoints URL --clients 256 --ops 100000 \
//!       --value-bytes 1024 --workload put|range|txn-cas|watch|load [--conns 16] [--keys N] \
//!       [--watchers 1000] [--cacert F --cert F --key F] [--json]
//!
//! Workloads (latencies per operation in an hdrhistogram, µs):
//! - `put`: `--clients` tasks putting `--value-bytes` values to random keys of `--keys`.
//! - `range`: a 10,000-key prefix (loaded first if missing), each op a range of 100 keys from
//!   a random key of it.
//! - `txn-cas`: 1,000 keys; each op reads a key and writes it with a txn comparing its mod
//!   revision (a conflict answers `succeeded: false`, counted, as Kubernetes' updates do).
//! - `watch`: `--watchers` watches of one key over `--conns` streams, then `--ops` puts to it
//!   (one client, so the puts are sequential); latency is from each put's acknowledgement to
//!   each watcher's receipt of it (a receipt before the acknowledgement counts as 1 µs), and
//!   also from its sending (`from_send_p50_us`, `from_send_p99_us`).
//! - `load`: puts `--keys` keys of `--value-bytes` once (for snapshot figures).
//!
//! Output: `{"ops_per_sec","p50_us","p99_us",...}` with `--json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use etcd_client::{Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn, TxnOp, WatchOptions};
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    endpoints: String,
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Connections the clients share (etcd's benchmark: --conns).
    #[arg(long, default_value_t = 16)]
    conns: usize,
    #[arg(long, default_value_t = 100_000)]
    ops: usize,
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    #[arg(long, default_value = "put")]
    workload: String,
    /// Keys the puts spread over (`put`), or keys to load (`load`).
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    #[arg(long)]
    cert: Option<std::path::PathBuf>,
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
}

async fn connect(a: &Args) -> Result<Client> {
    let endpoints: Vec<&str> = a.endpoints.split(',').collect();
    let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
    if a.endpoints.starts_with("https://") {
        let read = |p: &std::path::PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        let mut tls = TlsOptions::new();
        if let Some(ca) = &a.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(c), Some(k)) = (&a.cert, &a.key) {
            tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
        }
        opts = opts.with_tls(tls);
    }
    Client::connect(endpoints, Some(opts)).await.context("connecting")
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// Cheap per-task randomness (xorshift), so key choice costs nothing measurable.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Runs `ops` operations over `clients` tasks sharing `conns` connections; each op is `f`.
async fn drive<F, Fut>(a: &Args, conns: &[Client], ops: usize, f: F) -> Result<(Histogram<u64>, Duration)>
where
    F: Fn(Client, usize, u64) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (client, next, f) = (conns[c % conns.len()].clone(), next.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1) * 0x2545_f491_4f6c_dd1d);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= ops {
                    break;
                }
                let t = Instant::now();
                f(client.clone(), i, rng.0).await?;
                rng.next(2);
                h.record(t.elapsed().as_micros().max(1) as u64).ok();
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut all = hist();
    for t in tasks {
        all.add(t.await??).ok();
    }
    Ok((all, start.elapsed()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Arc::new(Args::parse());
    let mut conns = Vec::new();
    for _ in 0..a.conns.max(1) {
        conns.push(connect(&a).await?);
    }
    let value = Arc::new(vec![b'v'; a.value_bytes]);
    let mut extra = serde_json::Map::new();
    let (h, took, ops) = match a.workload.as_str() {
        "put" | "load" => {
            let (keys, ops) = if a.workload == "load" { (a.keys, a.keys) } else { (a.keys, a.ops) };
            let load = a.workload == "load";
            let v = value.clone();
            let (h, took) = drive(&a, &conns, ops, move |mut c, i, r| {
                let v = v.clone();
                async move {
                    let k = if load { i } else { (r % keys as u64) as usize };
                    c.put(format!("bench/put/{k:08}"), v.as_slice(), None).await?;
                    Ok(())
                }
            })
            .await?;
            (h, took, ops)
        }
        "range" => {
            let mut c = conns[0].clone();
            let have = c.get("bench/range/", Some(GetOptions::new().with_prefix().with_count_only())).await?.count();
            if have < 10_000 {
                let v = value.clone();
                drive(&a, &conns, 10_000, move |mut c, i, _| {
                    let v = v.clone();
                    async move {
                        c.put(format!("bench/range/{i:05}"), v.as_slice(), None).await?;
                        Ok(())
                    }
                })
                .await?;
            }
            let (h, took) = drive(&a, &conns, a.ops, move |mut c, _, r| async move {
                let from = format!("bench/range/{:05}", r % 9_900);
                let got = c.get(from, Some(GetOptions::new().with_range("bench/range0").with_limit(100))).await?;
                if got.kvs().len() != 100 {
                    bail!("a range returned {} keys, not 100", got.kvs().len());
                }
                Ok(())
            })
            .await?;
            (h, took, a.ops)
        }
        "txn-cas" => {
            let conflicts = Arc::new(AtomicU64::new(0));
            let (v, cf) = (value.clone(), conflicts.clone());
            let (h, took) = drive(&a, &conns, a.ops, move |mut c, _, r| {
                let (v, cf) = (v.clone(), cf.clone());
                async move {
                    let key = format!("bench/cas/{:04}", r % 1000);
                    let cur = c.get(key.as_str(), None).await?;
                    let rev = cur.kvs().first().map_or(0, |kv| kv.mod_revision());
                    let t = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)]).and_then([TxnOp::put(key.as_str(), v.as_slice(), None)]);
                    if !c.txn(t).await?.succeeded() {
                        cf.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
            })
            .await?;
            extra.insert("conflicts".into(), conflicts.load(Ordering::Relaxed).into());
            (h, took, a.ops)
        }
        "watch" => watch(&a, &conns, &value, &mut extra).await?,
        w => bail!("unknown workload {w}: put, range, txn-cas, watch or load"),
    };
    let ops_per_sec = ops as f64 / took.as_secs_f64();
    let mut out = serde_json::json!({
        "workload": a.workload, "clients": a.clients, "conns": a.conns, "ops": ops, "value_bytes": a.value_bytes,
        "seconds": took.as_secs_f64(), "ops_per_sec": ops_per_sec,
        "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99), "max_us": h.max(),
    });
    for (k, v) in extra {
        out[k] = v;
    }
    if a.json {
        println!("{out}");
    } else {
        println!("{} {}: {ops_per_sec:.0} ops/s, p50 {} µs, p99 {} µs ({ops} ops in {:.2} s)", a.endpoints, a.workload, h.value_at_quantile(0.5), h.value_at_quantile(0.99), took.as_secs_f64());
    }
    Ok(())
}

/// `--watchers` watches of one key, then `--ops` sequential puts to it: for each put and each
/// watcher, the time from the put's acknowledgement to the watcher's receipt.
async fn watch(a: &Args, conns: &[Client], value: &Arc<Vec<u8>>, extra: &mut serde_json::Map<String, serde_json::Value>) -> Result<(Histogram<u64>, Duration, usize)> {
    let key = "bench/watch/key";
    let start = Instant::now();
    // acked[n]: when put n was acknowledged, in µs since `start` (0 until it is); sent[n]:
    // when it was sent.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..a.ops).map(|_| AtomicU64::new(0)).collect());
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..a.ops).map(|_| AtomicU64::new(0)).collect());
    let base = conns[0].clone().get(key, None).await?.header().map_or(0, |h| h.revision());
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for w in 0..a.watchers {
        let mut c = conns[w % conns.len()].clone();
        let (acked, sent, ops) = (acked.clone(), sent.clone(), a.ops);
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        tasks.push(tokio::spawn(async move {
            let mut s = c.watch(key, Some(WatchOptions::new().with_start_revision(base + 1))).await?;
            let _ = tx.send(());
            let (mut h, mut from_send) = (hist(), hist());
            let mut seen = 0usize;
            while seen < ops {
                let Some(r) = s.message().await? else { bail!("a watch ended") };
                let now = start.elapsed().as_micros() as u64;
                for ev in r.events() {
                    // The value's first 8 bytes say which put it was.
                    let v = ev.kv().map_or(&[][..], |kv| kv.value());
                    let n = v.get(..8).map_or(usize::MAX, |b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
                    // The put's acknowledgement may not be recorded yet (the watcher can be
                    // told before the writer): that is a latency of zero.
                    let at = acked.get(n).map_or(0, |a| a.load(Ordering::Acquire));
                    h.record(if at == 0 { 1 } else { now.saturating_sub(at).max(1) }).ok();
                    let s0 = sent.get(n).map_or(0, |a| a.load(Ordering::Acquire));
                    from_send.record(now.saturating_sub(s0).max(1)).ok();
                    seen += 1;
                }
            }
            Ok::<_, anyhow::Error>((h, from_send))
        }));
    }
    for r in ready {
        let _ = r.await;
    }
    let mut c = conns[0].clone();
    let t0 = Instant::now();
    let mut v = value.as_slice().to_vec();
    v.resize(v.len().max(8), 0);
    for n in 0..a.ops {
        v[..8].copy_from_slice(&(n as u64).to_le_bytes());
        sent[n].store(start.elapsed().as_micros().max(1) as u64, Ordering::Release);
        c.put(key, v.as_slice(), None).await?;
        acked[n].store(start.elapsed().as_micros() as u64, Ordering::Release);
    }
    let (mut all, mut all_send) = (hist(), hist());
    for t in tasks {
        let (h, f) = t.await??;
        all.add(h).ok();
        all_send.add(f).ok();
    }
    let took = t0.elapsed();
    // The same deliveries timed from each put's sending (etcd's benchmark's measure).
    extra.insert("from_send_p50_us".into(), all_send.value_at_quantile(0.5).into());
    extra.insert("from_send_p99_us".into(), all_send.value_at_quantile(0.99).into());
    extra.insert("watchers".into(), a.watchers.into());
    extra.insert("deliveries".into(), (a.watchers * a.ops).into());
    Ok((all, took, a.ops))
}
