//! storage-perf: throughput and latency of a `storage::Store`, driven by in-process clients.
//!
//!   cargo run --release -p bench --bin storage-perf -- --clients N --ops N --value-bytes N \
//!       [--shards N] [--json] [--workload put|get|range|cas|recovery] [--data-dir DIR] \
//!       [--unsafe-no-fsync] [--keys N] [--recover-from snapshot|log]
//!
//! Each client is a tokio task that awaits one request at a time (a closed loop), so the
//! offered load is exactly `--clients` requests in flight. Latencies are recorded per task in
//! an `hdrhistogram` (microseconds) and merged at the end.
//!
//! Back-of-the-envelope for durable puts (key ~18 B, value V B, S shards, C clients):
//! - Bytes per op in the log: a frame holds one record per put, each
//!   `len u32 + version u8 + revision u64 + count u32 + (type u8 + klen u32 + key + vlen u32 +
//!   value + lease i64) + grants u32 + revokes u32 + compact u64` = 50 + key + V bytes, plus
//!   8 B frame header and < 8 B padding per batch. For V = 1 KiB: ~1.1 KB/op, so even
//!   100k ops/s is only ~110 MB/s of sequential writes: bandwidth is not the limit.
//! - Syscalls per batch per shard: ONE `io_uring_enter` (submit_and_wait) carrying a linked
//!   `write` + `fdatasync` (IOSQE_IO_LINK), into a preallocated, zero-filled segment so
//!   `fdatasync` has no metadata to flush. Rollover to a new 64 MiB segment (every ~60k
//!   1 KiB puts) is a channel receive from the preparer thread, no syscall on the hot path.
//! - The limit is the device flush latency t_sync. Group commit makes a shard's batch
//!   everything that queued during the previous sync, so in a closed loop each shard batches
//!   ~C/S requests and throughput ~= C / (t_sync + t_cpu). Cloud block device, t_sync ~ 1 ms:
//!   16 clients -> ~16k puts/s, 256 clients -> ~100k+ (then CPU-bound at a few µs per put).
//!   A local NVMe with power-loss protection (t_sync ~ 50-100 µs) is ~10x that per client.
//! - p50 latency ~ 1-2 t_sync (a request that arrives mid-sync waits for that sync and then its
//!   own); with S > 1 a write is acknowledged only when every earlier revision on every shard is
//!   durable, so the slowest shard's sync sets the tail.
//! - cas on one key: every successful CAS needs its own batch (the others in that batch fail
//!   the compare), so successes/s ~= 1 / t_sync regardless of clients.

/// The allocator `capstan` runs with, so these figures are of the same code path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use storage::{
    Compare, CompareOp, CompareTarget, Config, PutRequest, RangeRequest, Stats, Store, TxnOp,
    TxnOpResponse, TxnRequest,
};
use tokio::runtime::Runtime;
use tokio::sync::Barrier;

/// Largest latency the histograms hold: one hour (recovery of a big store is one sample).
const HIST_MAX_US: u64 = 3_600_000_000;
/// Concurrent loaders for untimed preloads (and recovery's load phase): enough to fill
/// group-commit batches so preloading a million keys does not take minutes.
const LOAD_CLIENTS_MIN: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Durable puts of `--value-bytes` values to distinct keys.
    Put,
    /// Point gets of `--keys` preloaded keys, chosen at random.
    Get,
    /// One prefix range returning all `--keys` preloaded keys per op.
    Range,
    /// Compare-and-swap on one shared key; ops counts successes.
    Cas,
    /// Load `--keys` keys, close, and time reopening until a get succeeds: from a snapshot
    /// taken just before the close, or (`--recover-from log`) by replaying the whole log.
    Recovery,
    /// With `--replicas 3`: a follower is down while `--keys` keys are written and the leader
    /// snapshots and trims its log; time from the follower's restart until it has caught up
    /// (from the leader's snapshot).
    Catchup,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Range => "range",
            Workload::Cas => "cas",
            Workload::Recovery => "recovery",
            Workload::Catchup => "catchup",
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "storage-perf", about = "Throughput and latency of capstan's storage::Store")]
struct Args {
    /// Concurrent in-process clients, each awaiting one request at a time.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Operations in total over all clients (successful CASes for `cas`; unused by `recovery`).
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// Bytes per value written (puts, preloads, CAS values).
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Store shards (threads); default: the store's default (one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Print exactly one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// Data directory; default: a fresh temporary directory, removed at exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Open the store with fsync off: writes are acknowledged before they are durable.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Key space for get/range (preloaded) and recovery (written before the restart).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Run the store as a raft group of this many replicas in this process, talking over
    /// loopback TCP (HTTP/2), and drive the leader. 0: the single-replica store (no raft).
    #[arg(long, default_value_t = 0)]
    replicas: usize,
    /// Replicated: raft entries a leader keeps uncommitted (the proposer's pipeline depth).
    #[arg(long, default_value_t = 8)]
    entries_in_flight: usize,
    /// Recovery: what the reopen reads. `snapshot`: one taken just before the close, so only
    /// the snapshot loads; `log`: no snapshot at all (automatic ones off), so every record is
    /// replayed from the log.
    #[arg(long, value_enum, default_value_t = RecoverFrom::Snapshot)]
    recover_from: RecoverFrom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RecoverFrom {
    Snapshot,
    Log,
}

/// CPU seconds of each thread of this process, summed by thread name (from /proc).
fn thread_cpu() -> Value {
    let tick = 100.0; // USER_HZ
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for t in rd.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
            let (Some(a), Some(b)) = (stat.find('('), stat.rfind(')')) else { continue };
            let name = stat[a + 1..b].to_string();
            let f: Vec<&str> = stat[b + 2..].split(' ').collect();
            let cpu = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            *by.entry(name).or_default() += cpu / tick;
        }
    }
    json!(by)
}

/// A raft group of `n` replicas in this process, each in its own directory under `dir`.
fn replica_config(i: usize, dir: &Path, initial: &[(String, String)], fsync: bool, in_flight: usize) -> raft::replica::ReplicaConfig {
    let mut cfg = raft::replica::ReplicaConfig::new(&format!("r{i}"), dir.join(format!("r{i}")), initial.to_vec());
    cfg.peer_url = initial[i].1.clone();
    cfg.fsync = fsync;
    cfg.entries_in_flight = in_flight;
    cfg
}

async fn start_replicas(n: usize, dir: &Path, fsync: bool, in_flight: usize) -> Result<Vec<raft::replica::Replica>> {
    start_replicas_with(n, dir, fsync, in_flight, |_| {}).await
}

async fn start_replicas_with(n: usize, dir: &Path, fsync: bool, in_flight: usize, tune: impl Fn(&mut raft::replica::ReplicaConfig)) -> Result<Vec<raft::replica::Replica>> {
    let mut listeners = Vec::new();
    let mut initial = Vec::new();
    for i in 0..n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        initial.push((format!("r{i}"), format!("http://{}", l.local_addr()?)));
        listeners.push(l);
    }
    let mut out = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let mut cfg = replica_config(i, dir, &initial, fsync, in_flight);
        tune(&mut cfg);
        out.push(raft::replica::Replica::start_on(cfg, l).await.map_err(|e| anyhow!("starting replica r{i}: {e}"))?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out.iter().any(|r| r.is_leader()) {
        ensure!(Instant::now() < deadline, "no leader within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Keys: fixed-width keys packed in one buffer, handed out as zero-copy slices
// ---------------------------------------------------------------------------------------------

/// `count` keys `{prefix}{first + i:010}` in one allocation; `key(i)` is a refcounted slice,
/// so handing a key to the store allocates nothing.
#[derive(Clone)]
struct Keys {
    buf: Bytes,
    len: usize,
    count: usize,
}

impl Keys {
    fn new(prefix: &str, first: u64, count: u64) -> Keys {
        let len = prefix.len() + 10;
        let mut s = String::with_capacity(len * count as usize);
        for i in first..first + count {
            write!(s, "{prefix}{i:010}").expect("write to a String");
        }
        debug_assert_eq!(s.len(), len * count as usize);
        Keys { buf: Bytes::from(s), len, count: count as usize }
    }

    fn key(&self, i: usize) -> Bytes {
        self.buf.slice(i * self.len..(i + 1) * self.len)
    }
}

fn value_of(bytes: usize) -> Bytes {
    // Not all one byte, so a value is recognisable in a hex dump of the log.
    Bytes::from((0..bytes).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// xorshift64*: a per-client key chooser that allocates nothing.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// The closed-loop driver
// ---------------------------------------------------------------------------------------------

/// What one client task measured.
struct TaskOut {
    /// One sample per operation (per successful CAS, retries included).
    hist: Histogram<u64>,
    /// CAS only: requests sent, and one sample per request.
    attempts: u64,
    attempt_hist: Option<Histogram<u64>>,
}

struct RunOut {
    elapsed: Duration,
    hist: Histogram<u64>,
    attempts: u64,
    attempt_hist: Option<Histogram<u64>>,
}

/// Runs `clients` tasks; task `c` does its share of `ops`. All tasks start together (after any
/// per-task setup) and the clock runs from their release until the last one finishes.
async fn run_clients<F, Fut>(clients: usize, ops: u64, task: F) -> Result<RunOut>
where
    F: Fn(usize, u64, Arc<Barrier>) -> Fut,
    Fut: Future<Output = Result<TaskOut>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::with_capacity(clients);
    for c in 0..clients {
        let n = ops / clients as u64 + u64::from((c as u64) < ops % clients as u64);
        handles.push(tokio::spawn(task(c, n, barrier.clone())));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut hist = new_hist();
    let mut attempts = 0;
    let mut attempt_hist: Option<Histogram<u64>> = None;
    let mut first_err = None;
    for h in handles {
        match h.await.context("client task panicked")? {
            Ok(out) => {
                hist.add(&out.hist).map_err(|e| anyhow!("merging histograms: {e:?}"))?;
                attempts += out.attempts;
                if let Some(a) = out.attempt_hist {
                    match &mut attempt_hist {
                        Some(all) => all.add(&a).map_err(|e| anyhow!("merging histograms: {e:?}"))?,
                        None => attempt_hist = Some(a),
                    }
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(RunOut { elapsed, hist, attempts, attempt_hist })
}

/// Durable puts of `keys` (each client a contiguous block), timed per op.
async fn put_all(store: &Store, clients: usize, keys: &Keys, value: &Bytes) -> Result<RunOut> {
    let per = keys.count / clients;
    let extra = keys.count % clients;
    run_clients(clients, keys.count as u64, |c, n, barrier| {
        let store = store.clone();
        let keys = keys.clone();
        let value = value.clone();
        // Client c's block starts after the blocks of clients 0..c (the first `extra` get one more).
        let first = c * per + c.min(extra);
        async move {
            let mut hist = new_hist();
            barrier.wait().await;
            for i in first..first + n as usize {
                let key = keys.key(i);
                let t = Instant::now();
                store.put(key, value.clone()).await?;
                hist.saturating_record(micros(t.elapsed()));
            }
            Ok(TaskOut { hist, attempts: n, attempt_hist: None })
        }
    })
    .await
}

/// Untimed preload: `keys` with `value`, through enough concurrent loaders to batch well.
async fn preload(store: &Store, clients: usize, keys: &Keys, value: &Bytes, quiet: bool) -> Result<()> {
    let loaders = clients.max(LOAD_CLIENTS_MIN).min(keys.count.max(1));
    let t = Instant::now();
    let out = put_all(store, loaders, keys, value).await.context("preloading keys")?;
    if !quiet {
        eprintln!(
            "preloaded {} keys of {} B with {} loaders in {:.2} s ({:.0} puts/s)",
            keys.count,
            value.len(),
            loaders,
            t.elapsed().as_secs_f64(),
            keys.count as f64 / out.elapsed.as_secs_f64()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

/// Everything a run reports beyond the common fields.
struct Report {
    run: RunOut,
    /// Successful operations (the numerator of ops_per_sec).
    done: u64,
    /// Overrides ops / elapsed (recovery: keys / recovery seconds).
    ops_per_sec: Option<f64>,
    stats: Option<Stats>,
    extra: Vec<(&'static str, Value)>,
}

async fn workload_put(store: &Store, args: &Args) -> Result<Report> {
    let clients = args.clients;
    let value = value_of(args.value_bytes);
    // Each client writes a contiguous block of distinct keys.
    let keys = Keys::new("/p/", 0, args.ops);
    let run = put_all(store, clients, &keys, &value).await?;
    let stats = store.stats().await;
    Ok(Report { done: args.ops, run, ops_per_sec: None, stats: Some(stats), extra: vec![] })
}

async fn workload_get(store: &Store, args: &Args) -> Result<Report> {
    ensure!(args.keys > 0, "--keys must be at least 1 for get");
    let keys = Keys::new("/g/", 0, args.keys);
    preload(store, args.clients, &keys, &value_of(args.value_bytes), args.json).await?;
    let run = run_clients(args.clients, args.ops, |c, n, barrier| {
        let store = store.clone();
        let keys = keys.clone();
        async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
            let mut hist = new_hist();
            barrier.wait().await;
            for _ in 0..n {
                let key = keys.key(rng.below(keys.count));
                let t = Instant::now();
                let kv = store.get(key).await?;
                hist.saturating_record(micros(t.elapsed()));
                if kv.is_none() {
                    bail!("a preloaded key is missing");
                }
            }
            Ok(TaskOut { hist, attempts: n, attempt_hist: None })
        }
    })
    .await?;
    Ok(Report { done: args.ops, run, ops_per_sec: None, stats: None, extra: vec![("keys", json!(args.keys))] })
}

async fn workload_range(store: &Store, args: &Args) -> Result<Report> {
    ensure!(args.keys > 0, "--keys must be at least 1 for range");
    let keys = Keys::new("/r/", 0, args.keys);
    preload(store, args.clients, &keys, &value_of(args.value_bytes), args.json).await?;
    let expect = args.keys as usize;
    let run = run_clients(args.clients, args.ops, |_, n, barrier| {
        let store = store.clone();
        async move {
            let mut hist = new_hist();
            let prefix = Bytes::from_static(b"/r/");
            barrier.wait().await;
            for _ in 0..n {
                let t = Instant::now();
                let r = store.range(RangeRequest::prefix(prefix.clone())).await?;
                hist.saturating_record(micros(t.elapsed()));
                if r.count != expect || r.kvs.len() != expect {
                    bail!("range returned {} keys (count {}), expected {expect}", r.kvs.len(), r.count);
                }
            }
            Ok(TaskOut { hist, attempts: n, attempt_hist: None })
        }
    })
    .await?;
    let keys_per_sec = args.ops as f64 * args.keys as f64 / run.elapsed.as_secs_f64();
    let extra = vec![("keys", json!(args.keys)), ("keys_per_sec", json!(keys_per_sec))];
    Ok(Report { done: args.ops, run, ops_per_sec: None, stats: None, extra })
}

async fn workload_cas(store: &Store, args: &Args) -> Result<Report> {
    let key = Bytes::from_static(b"/cas/key");
    let value = value_of(args.value_bytes);
    store.put(key.clone(), value.clone()).await.context("creating the CAS key")?;
    let run = run_clients(args.clients, args.ops, |_, n, barrier| {
        let store = store.clone();
        let key = key.clone();
        let value = value.clone();
        async move {
            let mut hist = new_hist();
            let mut attempt_hist = new_hist();
            let mut attempts = 0u64;
            let mut rev = store.get(key.clone()).await?.map_or(0, |kv| kv.mod_revision);
            // `Store::txn` takes the request by value, so each attempt sends a clone of this
            // template with the compare's revision updated.
            let mut req = TxnRequest {
                compare: vec![Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(rev), range_end: None }],
                success: vec![TxnOp::Put(PutRequest { key: key.clone(), value, lease: 0, prev_kv: false })],
                failure: vec![TxnOp::Range(RangeRequest::key(key.clone()))],
            };
            barrier.wait().await;
            for _ in 0..n {
                let t0 = Instant::now();
                loop {
                    req.compare[0].target = CompareTarget::ModRevision(rev);
                    let t = Instant::now();
                    let resp = store.txn(req.clone()).await?;
                    attempt_hist.saturating_record(micros(t.elapsed()));
                    attempts += 1;
                    match resp.responses.first() {
                        Some(TxnOpResponse::Put(p)) if resp.succeeded => {
                            rev = p.revision;
                            break;
                        }
                        Some(TxnOpResponse::Range(r)) if !resp.succeeded => {
                            rev = r.kvs.first().map_or(0, |kv| kv.mod_revision);
                        }
                        other => bail!("unexpected CAS response (succeeded {}): {other:?}", resp.succeeded),
                    }
                }
                hist.saturating_record(micros(t0.elapsed()));
            }
            Ok(TaskOut { hist, attempts, attempt_hist: Some(attempt_hist) })
        }
    })
    .await?;
    let attempts = run.attempts;
    let secs = run.elapsed.as_secs_f64();
    let ah = run.attempt_hist.as_ref().expect("cas records attempts");
    let extra = vec![
        ("attempts", json!(attempts)),
        ("attempts_per_sec", json!(attempts as f64 / secs)),
        ("attempts_per_success", json!(attempts as f64 / args.ops.max(1) as f64)),
        ("attempt_p50_us", json!(ah.value_at_quantile(0.5) as f64)),
        ("attempt_p99_us", json!(ah.value_at_quantile(0.99) as f64)),
    ];
    Ok(Report { done: args.ops, run, ops_per_sec: None, stats: None, extra })
}

/// Loads `--keys` keys, snapshots, closes the store, and times reopening it until a get of a
/// known key succeeds. The single recovery time is the histogram's one sample.
fn workload_recovery(rt: &Runtime, cfg: &Config, args: &Args) -> Result<Report> {
    ensure!(args.keys > 0, "--keys must be at least 1 for recovery");
    let keys = Keys::new("/k/", 0, args.keys);
    let value = value_of(args.value_bytes);
    let known = keys.key(keys.count - 1);
    let loaders = args.clients.max(LOAD_CLIENTS_MIN).min(keys.count);

    let from_log = args.recover_from == RecoverFrom::Log;
    let mut cfg = cfg.clone();
    if from_log {
        cfg.snapshot_wal_bytes = u64::MAX;
    }
    let cfg = &cfg;
    let store = Store::open(cfg.clone()).with_context(|| format!("opening {}", cfg.data_dir.display()))?;
    let shards = store.shards();
    let (load, snapshot_revision, before) = rt.block_on(async {
        let load = put_all(&store, loaders, &keys, &value).await.context("loading keys")?;
        let t = Instant::now();
        let rev = if from_log { None } else { Some(store.snapshot().await.context("snapshot")?) };
        if !args.json {
            eprintln!(
                "loaded {} keys of {} B with {loaders} loaders in {:.2} s; {}",
                keys.count,
                value.len(),
                load.elapsed.as_secs_f64(),
                match rev {
                    Some(rev) => format!("snapshot at revision {rev} took {:.2} s", t.elapsed().as_secs_f64()),
                    None => "no snapshot: the reopen replays the log".into(),
                }
            );
        }
        anyhow::Ok((load, rev, store.stats().await))
    })?;
    let wal_bytes_to_replay = before.wal_bytes_since_snapshot;
    let t = Instant::now();
    drop(store); // joins the shard and coordinator threads
    let close = t.elapsed();

    let t = Instant::now();
    let store = Store::open(cfg.clone()).with_context(|| format!("reopening {}", cfg.data_dir.display()))?;
    let open = t.elapsed();
    let kv = rt.block_on(async {
        loop {
            if let Some(kv) = store.get(known.clone()).await? {
                return anyhow::Ok(kv);
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    })?;
    let recovery = t.elapsed();
    ensure!(kv.value == value, "recovered value of {:?} differs from what was written", known);
    let stats = rt.block_on(store.stats());
    ensure!(
        stats.live_keys >= keys.count as u64,
        "recovered {} live keys, wrote {}",
        stats.live_keys,
        keys.count
    );
    drop(store);

    let mut hist = new_hist();
    hist.saturating_record(micros(recovery));
    let secs = recovery.as_secs_f64();
    let extra = vec![
        ("keys", json!(args.keys)),
        ("recovery_ms", json!(secs * 1e3)),
        ("open_ms", json!(open.as_secs_f64() * 1e3)),
        ("close_ms", json!(close.as_secs_f64() * 1e3)),
        ("recovered_from", json!(if from_log { "log" } else { "snapshot" })),
        ("snapshot_revision", json!(snapshot_revision)),
        ("wal_bytes_to_replay", json!(wal_bytes_to_replay)),
        ("live_keys_before", json!(before.live_keys)),
        ("load_clients", json!(loaders)),
        ("load_ops_per_sec", json!(keys.count as f64 / load.elapsed.as_secs_f64())),
        ("load_p50_us", json!(load.hist.value_at_quantile(0.5) as f64)),
        ("load_p99_us", json!(load.hist.value_at_quantile(0.99) as f64)),
        ("shards_opened", json!(shards)),
    ];
    Ok(Report {
        run: RunOut { elapsed: recovery, hist, attempts: 1, attempt_hist: None },
        done: args.keys,
        ops_per_sec: Some(args.keys as f64 / secs),
        stats: Some(stats),
        extra,
    })
}

/// A follower misses `--keys` keys (and the log that held them); the time from its restart to
/// having applied everything the leader had is the catch-up time.
async fn workload_catchup(args: &Args, dir: &Path, fsync: bool) -> Result<Report> {
    use openraft::async_runtime::watch::WatchReceiver;
    ensure!(args.replicas >= 3, "--workload catchup needs --replicas 3 (or more)");
    let tune = |c: &mut raft::replica::ReplicaConfig| c.snapshot_log_bytes = 64 << 20;
    let mut replicas = start_replicas_with(args.replicas, dir, fsync, args.entries_in_flight, tune).await?;
    let li = replicas.iter().position(|r| r.is_leader()).expect("a leader");
    let fi = (li + 1) % replicas.len();
    let initial: Vec<(String, String)> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("r{i}"), format!("http://{}", r.peer_addr)))
        .collect();
    let follower_addr = replicas[fi].peer_addr;
    let follower = replicas.remove(fi);
    follower.kill().await;
    let li = if fi < li { li - 1 } else { li };
    let leader = &replicas[li];
    let keys = Keys::new("/k/", 0, args.keys);
    let value = value_of(args.value_bytes);
    let loaders = args.clients.max(LOAD_CLIENTS_MIN).min(keys.count);
    let t = Instant::now();
    let load = put_all(&leader.store, loaders, &keys, &value).await.context("loading keys")?;
    let load_s = t.elapsed().as_secs_f64();
    // The leader's log no longer holds the follower's next entries: a snapshot is the way back.
    leader.store.snapshot().await.context("the leader's snapshot")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while leader.raft().metrics().borrow_watched().purged.is_none() {
        ensure!(Instant::now() < deadline, "the leader did not trim its log within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let target = leader.raft().metrics().borrow_watched().last_log_index.unwrap_or(0);
    let want_rev = leader.store.revision();
    if !args.json {
        eprintln!("loaded {} keys of {} B in {load_s:.1} s; the leader trimmed its log; restarting the follower", keys.count, value.len());
    }
    let l = tokio::net::TcpListener::bind(follower_addr).await.context("rebinding the follower's peer port")?;
    let t = Instant::now();
    let f = raft::replica::Replica::start_on({
        let mut c = replica_config(fi, dir, &initial, fsync, args.entries_in_flight);
        tune(&mut c);
        c
    }, l)
    .await
    .map_err(|e| anyhow!("restarting the follower: {e}"))?;
    loop {
        let applied = f.raft().metrics().borrow_watched().last_applied.map_or(0, |l| l.index);
        if applied >= target && f.store.revision() >= want_rev {
            break;
        }
        ensure!(t.elapsed() < Duration::from_secs(600), "the follower did not catch up within 600 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let catchup = t.elapsed();
    let st = f.status();
    ensure!(st["snapshot"].as_u64().is_some(), "the follower caught up without installing a snapshot: {st}");
    let got = f.store.get(keys.key(keys.count - 1)).await?.context("the last key on the caught-up follower")?;
    ensure!(got.value == value, "the caught-up follower has another value");
    let stats = f.store.stats().await;
    f.shutdown().await;
    for r in replicas {
        r.shutdown().await;
    }
    let mut hist = new_hist();
    hist.saturating_record(micros(catchup));
    let extra = vec![
        ("keys", json!(args.keys)),
        ("catchup_ms", json!(catchup.as_secs_f64() * 1e3)),
        ("load_s", json!(load_s)),
        ("load_ops_per_sec", json!(keys.count as f64 / load.elapsed.as_secs_f64())),
        ("follower_revision", json!(stats.revision)),
        ("leader_revision", json!(want_rev)),
    ];
    Ok(Report {
        run: RunOut { elapsed: catchup, hist, attempts: 1, attempt_hist: None },
        done: args.keys,
        ops_per_sec: Some(args.keys as f64 / catchup.as_secs_f64()),
        stats: Some(stats),
        extra,
    })
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// The filesystem type holding `path` (from /proc/mounts), so a tmpfs "durable" figure is
/// recognisable for what it is.
fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, ty)| ty)
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "index_bytes_per_key": s.index_bytes_per_key(),
        "live_keys": s.live_keys,
        "indexed_keys": s.indexed_keys,
        "retained_revisions": s.retained_revisions,
        "key_bytes": s.key_bytes,
        "value_bytes": s.value_bytes,
        "index_overhead_bytes": s.index_overhead_bytes,
        "wal_bytes_since_snapshot": s.wal_bytes_since_snapshot,
        "snapshot_revision": s.snapshot_revision,
        "revision": s.revision,
    })
}

fn loud_no_fsync_warning() {
    let bar = "!".repeat(78);
    eprintln!("{bar}");
    eprintln!("!!! --unsafe-no-fsync: the store is opened with fsync OFF. Writes are         !!!");
    eprintln!("!!! acknowledged BEFORE they are durable; these are NOT durable-write figures. !!!");
    eprintln!("{bar}");
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.clients >= 1, "--clients must be at least 1");
    ensure!(args.workload == Workload::Recovery || args.ops >= 1, "--ops must be at least 1");
    ensure!(args.ops < 10_000_000_000 && args.keys < 10_000_000_000, "--ops and --keys must be below 10^10");
    if args.unsafe_no_fsync {
        loud_no_fsync_warning();
    }

    let tmp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("storage-perf-").tempdir().context("creating a temp dir")?;
            tmp.path().to_path_buf()
        }
    };
    let mut cfg = Config::new(&dir);
    if let Some(s) = args.shards {
        cfg.shards = s;
    }
    cfg.fsync = !args.unsafe_no_fsync;

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let report = if args.workload == Workload::Catchup {
        rt.block_on(workload_catchup(&args, &dir, cfg.fsync))?
    } else if args.replicas > 0 {
        ensure!(args.workload != Workload::Recovery, "--workload recovery is of the single-replica store");
        rt.block_on(async {
            let replicas = start_replicas(args.replicas, &dir, cfg.fsync, args.entries_in_flight).await?;
            let leader = replicas.iter().find(|r| r.is_leader()).expect("a leader");
            let store = leader.store.clone();
            let mut r = match args.workload {
                Workload::Put => workload_put(&store, &args).await,
                Workload::Get => workload_get(&store, &args).await,
                Workload::Range => workload_range(&store, &args).await,
                Workload::Cas => workload_cas(&store, &args).await,
                Workload::Recovery | Workload::Catchup => unreachable!(),
            }?;
            r.extra.push(("replicas", json!(args.replicas)));
            r.extra.push(("thread_cpu_s", thread_cpu()));
            if std::env::var_os("STORAGE_PERF_RAFT_STATS").is_some() {
                for rep in &replicas {
                    if let Ok(st) = rep.raft().runtime_stats().await {
                        eprintln!("== {} (leader: {})\n{}", rep.name(), rep.is_leader(), st.display());
                    }
                }
            }
            r.extra.push(("leader_status", leader.status()));
            drop(store);
            for rep in replicas {
                rep.shutdown().await;
            }
            anyhow::Ok(r)
        })?
    } else if args.workload == Workload::Recovery {
        workload_recovery(&rt, &cfg, &args)?
    } else {
        let store = Store::open(cfg.clone()).with_context(|| format!("opening {}", dir.display()))?;
        let r = rt.block_on(async {
            match args.workload {
                Workload::Put => workload_put(&store, &args).await,
                Workload::Get => workload_get(&store, &args).await,
                Workload::Range => workload_range(&store, &args).await,
                Workload::Cas => workload_cas(&store, &args).await,
                Workload::Recovery | Workload::Catchup => unreachable!(),
            }
        })?;
        drop(store);
        r
    };
    drop(rt);

    let secs = report.run.elapsed.as_secs_f64();
    let ops_per_sec = report.ops_per_sec.unwrap_or(report.done as f64 / secs);
    let h = &report.run.hist;
    let extra = report.extra;

    // In print order: the headline first.
    let mut out: Vec<(String, Value)> = vec![
        ("workload".into(), json!(args.workload.name())),
        ("ops_per_sec".into(), json!(ops_per_sec)),
        ("p50_us".into(), json!(h.value_at_quantile(0.5) as f64)),
        ("p99_us".into(), json!(h.value_at_quantile(0.99) as f64)),
        ("p999_us".into(), json!(h.value_at_quantile(0.999) as f64)),
        ("max_us".into(), json!(h.max() as f64)),
        ("mean_us".into(), json!(h.mean())),
        ("clients".into(), json!(args.clients)),
        ("ops".into(), json!(report.done)),
        ("shards".into(), json!(cfg.shards)),
        ("value_bytes".into(), json!(args.value_bytes)),
        ("fsync".into(), json!(cfg.fsync)),
        ("elapsed_s".into(), json!(secs)),
        ("data_dir".into(), json!(dir.display().to_string())),
        ("data_dir_fs".into(), json!(fs_type(&dir))),
        ("data_dir_temporary".into(), json!(args.data_dir.is_none())),
    ];
    out.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    if let Some(s) = &report.stats {
        out.push(("stats".into(), stats_json(s)));
    }

    if args.json {
        println!("{}", Value::Object(out.into_iter().collect()));
    } else {
        print_table(&out, args.workload);
    }
    Ok(())
}

fn print_table(out: &[(String, Value)], workload: Workload) {
    let fmt = |v: &Value| match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            if f.abs() >= 100.0 { format!("{f:.0}") } else { format!("{f:.2}") }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let title = match workload {
        Workload::Recovery => "recovery (p50/p99/p999 = the one recovery time; ops_per_sec = keys / recovery s)",
        Workload::Catchup => "catchup (p50 = the one catch-up time of a follower from the leader's snapshot)",
        Workload::Cas => "cas (ops = successful CASes; latency per success, retries included)",
        Workload::Put => "put (distinct keys)",
        Workload::Get => "get (random preloaded keys)",
        Workload::Range => "range (one prefix range returning every preloaded key)",
    };
    println!("storage-perf: {title}");
    for (k, v) in out {
        if k == "stats" {
            continue;
        }
        if k == "fsync" && v == &Value::Bool(false) {
            println!("  {k:<26} false  (UNSAFE: writes acknowledged before durable)");
            continue;
        }
        println!("  {k:<26} {}", fmt(v));
    }
    if let Some((_, Value::Object(s))) = out.iter().find(|(k, _)| k == "stats") {
        println!("store stats:");
        for (k, v) in s {
            println!("  {k:<26} {}", fmt(v));
        }
    }
}
