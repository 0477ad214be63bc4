#![allow(dead_code)]
//! Starts the real `capstan up` on a free loopback port and a temporary data directory, and
//! runs real kubectl against it. Every wait has a deadline that says what it waited for.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(60);

pub const KUBECTL: &str = "/usr/bin/kubectl";

pub fn kubectl_version(minor: u32) -> String {
    format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}")
}

pub struct Cluster {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub addr: String,
    printed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The TLS client configuration (the kubeconfig's CA and admin certificate) of each server
/// address a test started; `http` speaks TLS to those.
static TLS: std::sync::Mutex<Vec<(String, std::sync::Arc<rustls::ClientConfig>)>> = std::sync::Mutex::new(Vec::new());

/// Makes `http` speak TLS to `addr`, with the credentials of `kubeconfig`.
pub fn use_tls(addr: &str, kubeconfig: &Path) {
    let kc = client::kubeconfig::load(kubeconfig, None).expect("read the kubeconfig");
    let creds = kc.credentials.expect("the kubeconfig has TLS credentials");
    let cfg = std::sync::Arc::new(client::tls::client_config(&creds).expect("TLS client configuration"));
    TLS.lock().unwrap().push((addr.to_string(), cfg));
}

pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A connection to `addr`: TLS if a test registered it (`use_tls`), else plain TCP.
pub fn connect(addr: &str) -> Box<dyn Stream> {
    let cfg = TLS.lock().unwrap().iter().rev().find(|(a, _)| a == addr).map(|(_, c)| c.clone());
    connect_with(addr, cfg)
}

fn connect_with(addr: &str, cfg: Option<std::sync::Arc<rustls::ClientConfig>>) -> Box<dyn Stream> {
    let s = std::net::TcpStream::connect(addr).expect("connect to capstan");
    s.set_read_timeout(Some(WAIT)).unwrap();
    match cfg {
        Some(cfg) => {
            let host = addr.rsplit_once(':').unwrap().0.to_string();
            let name = rustls::pki_types::ServerName::try_from(host).expect("server name");
            Box::new(rustls::StreamOwned::new(rustls::ClientConnection::new(cfg, name).expect("TLS client"), s))
        }
        None => Box::new(s),
    }
}

/// Reads until the server closes (a TLS server that closes without close_notify is a normal
/// end here: every request says `Connection: close`).
fn read_all(s: &mut dyn Stream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("reading from capstan: {e}"),
        }
    }
    out
}

/// A raw HTTP/1.1 request to the server (no client library needed): (status, body).
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    request(connect(addr), addr, method, path, headers, body)
}

/// A GET over TLS with the given client configuration (a test's own credentials).
pub fn https_get(addr: &str, cfg: std::sync::Arc<rustls::ClientConfig>, path: &str) -> (u16, Vec<u8>) {
    request(connect_with(addr, Some(cfg)), addr, "GET", path, &[], b"")
}

fn request(mut s: Box<dyn Stream>, addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    let resp = read_all(&mut *s);
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP response head");
    let head = String::from_utf8_lossy(&resp[..head_end]).to_string();
    let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = resp[head_end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (code, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { break };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_in(tempfile::tempdir().unwrap())
    }

    pub fn start_in(dir: tempfile::TempDir) -> Cluster {
        Cluster::start_with(dir, &[])
    }

    /// `capstan up` with extra arguments (e.g. `--hollow-nodes 3`).
    pub fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Cluster {
        // etcd's port is one per machine: a test that wants the etcd API asks for a free one.
        let etcd: &[&str] = if extra.contains(&"--etcd-listen") { &[] } else { &["--etcd-listen", "none"] };
        // Each cluster its own pod and Service ranges, so clusters on one host never share a
        // subnet; a cluster started again on the same data keeps them (as an operator
        // restarts with the same flags), so what its previous run left is its own to reclaim.
        let remembered = dir.path().join(".test-ranges");
        let (pods, services) = match std::fs::read_to_string(&remembered).ok().and_then(|s| s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string()))) {
            Some(r) => r,
            None => {
                let r = (pod_range(), service_range());
                let _ = std::fs::write(&remembered, format!("{} {}", r.0, r.1));
                r
            }
        };
        let mut cidr = if extra.contains(&"--cluster-cidr") { vec![] } else { vec!["--cluster-cidr".to_string(), pods] };
        if !extra.contains(&"--service-cluster-ip-range") {
            cidr.extend(["--service-cluster-ip-range".to_string(), services]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["up", "--listen", "127.0.0.1:0", "--log-level", "warn"])
            .args(etcd)
            .args(&cidr)
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start capstan up");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("capstan up printed its address").unwrap();
        let tls = first.contains("https://");
        let addr = first.rsplit("://").next().expect("address in the first line").trim().to_string();
        // Keep draining stdout so the child never blocks on a full pipe; keep what it said.
        let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = printed.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                keep.lock().unwrap().push(l);
            }
        });
        let kubeconfig = dir.path().join("kubeconfig");
        // Made before waiting, so that a start that never becomes ready is still stopped
        // (by Drop, as the assertion unwinds) instead of outliving the test.
        let c = Cluster { child: Some(child), dir, kubeconfig, addr, printed };
        let deadline = Instant::now() + WAIT;
        let mut registered = !tls;
        loop {
            if !registered && c.kubeconfig.exists() {
                use_tls(&c.addr, &c.kubeconfig);
                registered = true;
            }
            if registered && std::net::TcpStream::connect(&c.addr).is_ok() && http(&c.addr, "GET", "/readyz", &[], b"").0 == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "capstan up at {} never became ready", c.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    /// The first line `capstan up` printed that contains `needle` (waiting for it).
    pub fn printed(&self, needle: &str) -> String {
        let mut found = None;
        wait_until(&format!("capstan up to print {needle:?}"), || {
            found = self.printed.lock().unwrap().iter().find(|l| l.contains(needle)).cloned();
            found.is_some()
        });
        found.unwrap()
    }

    pub fn kubectl_with(&self, bin: &str, args: &[&str]) -> Output {
        Command::new(bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {bin}: {e}"))
    }

    /// Starts a long-running kubectl (e.g. `get -w`) and returns it with its stdout lines.
    pub fn kubectl_spawn(&self, args: &[&str]) -> (std::process::Child, Lines) {
        let mut child = Command::new(KUBECTL)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, Lines(rx))
    }

    /// Runs kubectl and returns stdout, failing the test with stderr if it failed.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(KUBECTL, args)
    }

    pub fn ok_with(&self, bin: &str, args: &[&str]) -> String {
        let out = self.kubectl_with(bin, args);
        assert!(
            out.status.success(),
            "{bin} {} failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl_with(KUBECTL, args);
        assert!(!out.status.success(), "kubectl {} should have failed: {}", args.join(" "), String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Stops the server (SIGTERM) and waits for it; returns the data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.terminate();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Kills the server (SIGKILL: nothing it runs gets to clean up) and waits for it; returns
    /// the data directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc_kill(c.id() as i32, 15) };
            let deadline = Instant::now() + WAIT;
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("capstan did not stop within {WAIT:?} of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM first, so that the local node stops its pods' processes; SIGKILL if it
        // does not stop.
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc_kill(c.id() as i32, 15) };
            let deadline = Instant::now() + WAIT;
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The stdout lines of a spawned kubectl, read on a thread so that a line that never comes fails
/// the test after `WAIT` instead of hanging it.
pub struct Lines(std::sync::mpsc::Receiver<std::io::Result<String>>);

impl Lines {
    /// The next line, failing the test with `what` if none comes within `WAIT`.
    pub fn next(&mut self, what: &str) -> String {
        match self.0.recv_timeout(WAIT) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => panic!("reading kubectl's output while waiting for {what}: {e}"),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("timed out after {WAIT:?} waiting for {what}"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("kubectl's output ended while waiting for {what}"),
        }
    }
}

/// Polls `check` until it holds, failing the test with `what` after `WAIT`.
/// kubectl against `c` with bearer `token` and the cluster CA, and no client certificate
/// (one would authenticate first and the token would be ignored).
pub fn with_token(c: &Cluster, token: &str, args: &[&str]) -> std::process::Output {
    let ca = c.dir.path().join("pki").join("ca.crt");
    Command::new(KUBECTL)
        .env("KUBECONFIG", "/dev/null")
        .args(["--server", &format!("https://{}", c.addr), "--certificate-authority", path_str(&ca), "--token", token])
        .args(args)
        .output()
        .unwrap()
}

/// A /16 pod range of its own for each cluster a test starts (the process id spreads
/// concurrent test processes, a counter the clusters of one).
pub fn pod_range() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("10.{}.0.0/16", 10 + (std::process::id().wrapping_mul(7).wrapping_add(n * 37)) % 240)
}

/// A /24 Service range of its own for each cluster a test starts (out of the pod ranges).
pub fn service_range() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let k = std::process::id().wrapping_mul(13).wrapping_add(n * 41) % 4096;
    format!("172.{}.{}.0/24", 16 + k / 256, k % 256)
}

pub fn wait_until(what: &str, check: impl FnMut() -> bool) {
    wait_until_within(WAIT, what, check)
}

/// `wait_until` with its own deadline, for work that scales with the test's size.
pub fn wait_until_within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The checkout the tests run in, asked at run time: cargo sets `CARGO_MANIFEST_DIR` for the
/// test process, while the compile-time value is wherever the (possibly shared, reused) build
/// was made.
pub fn source_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The first line a child printed on its piped stdout; the rest is drained by a thread, so
/// the child's later lines never meet a closed pipe.
pub fn first_line(child: &mut Child) -> String {
    let mut r = BufReader::new(child.stdout.take().expect("a piped stdout"));
    let mut line = String::new();
    r.read_line(&mut line).expect("read the child's first line");
    std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
    line
}
