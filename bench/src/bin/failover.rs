//! failover: how long a replicated capstan is without a leader when the leader's process dies.
//!
//!   cargo build --release && cargo run --release -p bench --bin failover -- --rounds 100 [--json]
//!
//! Three `capstan server` processes on loopback (the release binary next to this one, or
//! `--capstan PATH`) take a client load through the Kubernetes API (four clients: PUTs,
//! compare-and-swaps by resourceVersion and GETs of ConfigMaps, through every replica) while,
//! `--rounds` times, the leader's process is SIGKILLed: a probe then writes through the
//! survivors until one write is acknowledged, and the time from the SIGKILL to that
//! acknowledgement is the round's failover time. The killed replica is started again before the
//! next round. At the end every key is read on every replica, and the whole history is checked
//! for linearizability (`raft::lincheck`): lost acknowledged writes and stale reads show up there.
//! Reported: failover median, p90 and max (hdrhistogram), rounds, operations, violations.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use raft::lincheck::{self, Input, Op, Output};
use serde_json::json;

#[derive(Parser)]
#[command(name = "failover", about = "Leader failover time of a replicated capstan, under load, with the history checked")]
struct Args {
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// The capstan binary (default: the one next to this benchmark).
    #[arg(long)]
    capstan: Option<PathBuf>,
    /// Client threads writing and reading during the rounds.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Raft timing passed to the servers (milliseconds).
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = 300)]
    election_timeout_min_ms: u64,
    #[arg(long, default_value_t = 600)]
    election_timeout_max_ms: u64,
    #[arg(long)]
    json: bool,
}

const KEYS: usize = 4;

fn reserve_port() -> u16 {
    let mut n: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    loop {
        n ^= n << 13;
        n ^= n >> 7;
        n ^= n << 17;
        let p = 20_000 + (n % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// No connection could be made: the request was not sent (no effect).
const NOT_SENT: u16 = 0;

/// One HTTP/1.1 request with a deadline: (status, body), `(NOT_SENT, _)` if it could not even
/// connect, or `None` without an answer (its effect is unknown).
fn http(addr: &str, method: &str, path: &str, body: &[u8], timeout: Duration) -> Option<(u16, Vec<u8>)> {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)) else {
        return Some((NOT_SENT, Vec::new()));
    };
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_nodelay(true).ok()?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..head_end]).to_string();
    let code: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = resp[head_end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut b = &body[..];
        while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).ok()?.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
            b = &b[eol + 2 + n + 2..];
        }
        body = out;
    }
    Some((code, body))
}

fn path(k: usize) -> String {
    format!("/api/v1/namespaces/default/configmaps/fo-{k}")
}

fn cm(k: usize, value: &str, rv: Option<&str>) -> Vec<u8> {
    let mut v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("fo-{k}"), "namespace": "default"}, "data": {"v": value}});
    if let Some(rv) = rv {
        v["metadata"]["resourceVersion"] = json!(rv);
    }
    serde_json::to_vec(&v).unwrap()
}

fn value_of(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some((v["data"]["v"].as_str()?.to_string(), v["metadata"]["resourceVersion"].as_str()?.to_string()))
}

fn not_applied(code: u16, body: &[u8]) -> bool {
    code == NOT_SENT
        || (code == 503 && String::from_utf8_lossy(body).contains("nothing was applied"))
}

struct Server {
    name: String,
    api: String,
    peer: String,
    dir: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    exe: PathBuf,
    root: tempfile::TempDir,
    nodes: Vec<Server>,
    initial: String,
    timing: [String; 3],
}

impl Cluster {
    fn launch(&mut self, i: usize) -> Result<()> {
        let s = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.root.path().join(format!("{}.log", s.name)))?;
        let child = Command::new(&self.exe)
            .args(["server", "--name", &s.name, "--listen", &s.api, "--peer-listen", &s.peer, "--initial-cluster", &self.initial, "--no-scheduler", "--no-controllers", "--insecure-http"])
            .args(["--heartbeat-ms", &self.timing[0], "--election-timeout-min-ms", &self.timing[1], "--election-timeout-max-ms", &self.timing[2], "--data-dir"])
            .arg(&s.dir)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting capstan server")?;
        s.child = Some(child);
        Ok(())
    }

    fn ready(&self, i: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http(&self.nodes[i].api, "GET", "/readyz", b"", Duration::from_secs(5)).is_some_and(|(c, _)| c == 200) {
            if Instant::now() > deadline {
                bail!("{} not ready within 60 s (log: {})", self.nodes[i].name, self.root.path().join(format!("{}.log", self.nodes[i].name)).display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn leader(&self) -> Result<usize> {
        let endpoints = self.nodes.iter().map(|s| format!("http://{}", s.peer)).collect::<Vec<_>>().join(",");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(&self.exe).args(["member", "list", "--endpoints", &endpoints]).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(name) = text.lines().find(|l| l.contains(" yes ")).and_then(|l| l.split_whitespace().nth(1))
                && let Some(i) = self.nodes.iter().position(|s| s.name == name)
            {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no leader within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.nodes {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn client(c: usize, apis: Vec<String>, history: Arc<Mutex<Vec<Op>>>, t0: Instant, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    let mut r = 0x9e37_79b9_u64 + c as u64;
    let mut rnd = |m: usize| {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        (r % m as u64) as usize
    };
    let now = || t0.elapsed().as_nanos() as u64;
    let t = Duration::from_secs(8);
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let api = apis[rnd(apis.len())].clone();
        let k = rnd(KEYS);
        let key = format!("fo-{k}");
        let value = format!("c{c}-{n}");
        match rnd(3) {
            0 => {
                let call = now();
                let output = match http(&api, "PUT", &path(k), &cm(k, &value, None), t) {
                    Some((200, _)) => Output::Ok,
                    Some((code, b)) if not_applied(code, &b) => continue,
                    _ => Output::Unknown,
                };
                let ret = (output != Output::Unknown).then(now);
                history.lock().unwrap().push(Op { client: c, key, input: Input::Put(value), output, call, ret });
            }
            1 => {
                let call = now();
                if let Some((200, b)) = http(&api, "GET", &path(k), b"", t)
                    && let Some((v, _)) = value_of(&b)
                {
                    history.lock().unwrap().push(Op { client: c, key, input: Input::Get, output: Output::Value(Some(v)), call, ret: Some(now()) });
                }
            }
            _ => {
                let Some((200, b)) = http(&api, "GET", &path(k), b"", t) else { continue };
                let Some((expect, rv)) = value_of(&b) else { continue };
                let call = now();
                let output = match http(&api, "PUT", &path(k), &cm(k, &value, Some(&rv)), t) {
                    Some((200, _)) => Output::Swapped(true),
                    Some((409, _)) => Output::Swapped(false),
                    Some((code, b)) if not_applied(code, &b) => continue,
                    _ => Output::Unknown,
                };
                let ret = (output != Output::Unknown).then(now);
                history.lock().unwrap().push(Op { client: c, key, input: Input::Cas { expect: Some(expect), new: value }, output, call, ret });
            }
        }
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let exe = match &a.capstan {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.parent().context("the benchmark's directory")?.join("capstan"),
    };
    if !exe.exists() {
        bail!("{} not found: build it (cargo build --release) or pass --capstan", exe.display());
    }
    let root = tempfile::Builder::new().prefix("failover-").tempdir()?;
    let nodes: Vec<Server> = (0..3)
        .map(|i| Server { name: format!("f{i}"), api: format!("127.0.0.1:{}", reserve_port()), peer: format!("127.0.0.1:{}", reserve_port()), dir: root.path().join(format!("f{i}")), child: None })
        .collect();
    let initial = nodes.iter().map(|s| format!("{}=http://{}", s.name, s.peer)).collect::<Vec<_>>().join(",");
    let timing = [a.heartbeat_ms.to_string(), a.election_timeout_min_ms.to_string(), a.election_timeout_max_ms.to_string()];
    let mut c = Cluster { exe, root, nodes, initial, timing };
    for i in 0..3 {
        c.launch(i)?;
    }
    for i in 0..3 {
        c.ready(i)?;
    }
    let apis: Vec<String> = c.nodes.iter().map(|s| s.api.clone()).collect();
    let history = Arc::new(Mutex::new(Vec::new()));
    for k in 0..KEYS {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http(&apis[0], "POST", "/api/v1/namespaces/default/configmaps", &cm(k, "init", None), Duration::from_secs(5)).is_some_and(|(code, _)| code == 201 || code == 409) {
            if Instant::now() > deadline {
                bail!("could not create the ConfigMaps");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        history.lock().unwrap().push(Op { client: 999, key: format!("fo-{k}"), input: Input::Put("init".into()), output: Output::Ok, call: 0, ret: Some(0) });
    }
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..a.clients)
        .map(|i| {
            let (apis, h, stop) = (apis.clone(), history.clone(), stop.clone());
            std::thread::spawn(move || client(i, apis, h, t0, stop))
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut times = Vec::new();
    for round in 0..a.rounds {
        std::thread::sleep(Duration::from_millis(300));
        let l = c.leader()?;
        let survivors: Vec<String> = (0..3).filter(|i| *i != l).map(|i| apis[i].clone()).collect();
        let mut child = c.nodes[l].child.take().unwrap();
        let killed = Instant::now();
        child.kill()?;
        // The first write acknowledged after the kill, through the survivors.
        // (Probes write a ConfigMap of their own, created by the first acknowledged probe.)
        let mut n = 0;
        let probe_key = format!("probe-{round}");
        let took = loop {
            let api = &survivors[n % 2];
            n += 1;
            let v = format!("p{n}");
            let body = serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": probe_key}, "data": {"v": v}})).unwrap();
            let call = t0.elapsed().as_nanos() as u64;
            let create = Input::Cas { expect: None, new: v };
            match http(api, "POST", "/api/v1/namespaces/default/configmaps", &body, Duration::from_secs(2)) {
                Some((201, _)) => {
                    let took = killed.elapsed();
                    history.lock().unwrap().push(Op { client: 500, key: probe_key.clone(), input: create, output: Output::Swapped(true), call, ret: Some(t0.elapsed().as_nanos() as u64) });
                    break took;
                }
                // An earlier probe whose answer was lost did create it: that one counts.
                Some((409, _)) => break killed.elapsed(),
                Some((code, b)) if not_applied(code, &b) => {}
                _ => history.lock().unwrap().push(Op { client: 500, key: probe_key.clone(), input: create, output: Output::Unknown, call, ret: None }),
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("round {round}: no write acknowledged within 60 s of the leader's death");
            }
        };
        let _ = child.wait();
        hist.record(took.as_micros() as u64)?;
        times.push(took.as_secs_f64() * 1e3);
        if !a.json {
            eprintln!("round {round:>3}: leader {} killed; first write acknowledged after {:.0} ms", c.nodes[l].name, took.as_secs_f64() * 1e3);
        }
        c.launch(l)?;
        c.ready(l)?;
    }
    stop.store(true, Ordering::SeqCst);
    for cl in clients {
        let _ = cl.join();
    }
    for (i, api) in apis.iter().enumerate() {
        for k in 0..KEYS {
            let call = t0.elapsed().as_nanos() as u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            let v = loop {
                if let Some((200, b)) = http(api, "GET", &path(k), b"", Duration::from_secs(5))
                    && let Some((v, _)) = value_of(&b)
                {
                    break v;
                }
                if Instant::now() > deadline {
                    bail!("final read of fo-{k} on replica {i} failed");
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            history.lock().unwrap().push(Op { client: 100 + i, key: format!("fo-{k}"), input: Input::Get, output: Output::Value(Some(v)), call, ret: Some(t0.elapsed().as_nanos() as u64) });
        }
    }
    let h = history.lock().unwrap().clone();
    let answered = h.iter().filter(|o| o.ret.is_some()).count();
    let check = lincheck::check(&h);
    let violations = usize::from(check.is_err());
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    let out = json!({
        "rounds": a.rounds,
        "failover_median_ms": ms(0.5),
        "failover_p90_ms": ms(0.9),
        "failover_max_ms": hist.max() as f64 / 1e3,
        "failover_min_ms": hist.min() as f64 / 1e3,
        "operations": h.len(),
        "answered": answered,
        "linearizability_violations": violations,
        "heartbeat_ms": a.heartbeat_ms,
        "election_timeout_ms": [a.election_timeout_min_ms, a.election_timeout_max_ms],
        "times_ms": times,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("failover over {} rounds: median {:.0} ms, p90 {:.0} ms, max {:.0} ms (min {:.0} ms)", a.rounds, ms(0.5), ms(0.9), hist.max() as f64 / 1e3, hist.min() as f64 / 1e3);
        println!("history: {} operations ({answered} answered), linearizability violations: {violations}", h.len());
    }
    if let Err(v) = check {
        bail!("{v}");
    }
    Ok(())
}
