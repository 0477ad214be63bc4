//! Probes: exec, httpGet (HTTP, or HTTPS without verifying the certificate, as the kubelet
//! does), tcpSocket and grpc (the standard health service, over HTTP/2 without TLS, as the
//! kubelet's), each bounded by its `timeoutSeconds`. `Probe::of`
//! reads the timing fields with Kubernetes' defaults; `ProbeCounter` applies success and
//! failure thresholds (pure, tested as a table).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
    pub fn field(self) -> &'static str {
        match self {
            Kind::Startup => "startupProbe",
            Kind::Liveness => "livenessProbe",
            Kind::Readiness => "readinessProbe",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Action {
    Exec(Vec<String>),
    Http { port: u16, path: String, headers: Vec<(String, String)>, https: bool },
    Tcp { port: u16 },
    /// `grpc.health.v1.Health/Check` of `service` ("" for the server as a whole).
    Grpc { port: u16, service: String },
    /// A lifecycle hook's pause.
    Sleep(Duration),
    Unsupported(String),
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn secs(v: &Value, default: u64) -> Duration {
    Duration::from_secs(v.as_u64().filter(|s| *s > 0).unwrap_or(default).min(86_400))
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
fn port(v: &Value, container: &Value) -> Option<u16> {
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = v.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    container["ports"].as_array()?.iter().find(|p| p["name"] == name)?["containerPort"].as_u64().and_then(|n| u16::try_from(n).ok())
}

impl Action {
    /// A handler, as probes and lifecycle hooks have them: exec, httpGet, tcpSocket, grpc
    /// or sleep; ports may be named after the container's.
    pub fn of_handler(p: &Value, container: &Value) -> Action {
        if let Some(e) = p.get("exec") {
            Action::Exec(e["command"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect())
        } else if let Some(h) = p.get("httpGet") {
            match port(&h["port"], container) {
                Some(port) => Action::Http {
                    port,
                    path: h["path"].as_str().filter(|s| !s.is_empty()).unwrap_or("/").to_string(),
                    headers: h["httpHeaders"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| Some((x["name"].as_str()?.to_string(), x["value"].as_str().unwrap_or("").to_string())))
                        .collect(),
                    https: h["scheme"] == "HTTPS",
                },
                None => Action::Unsupported(format!("httpGet port {} is not a port of the container", h["port"])),
            }
        } else if let Some(t) = p.get("tcpSocket") {
            match port(&t["port"], container) {
                Some(port) => Action::Tcp { port },
                None => Action::Unsupported(format!("tcpSocket port {} is not a port of the container", t["port"])),
            }
        } else if let Some(g) = p.get("grpc") {
            // A number only: the API does not allow a named port here.
            match g["port"].as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) {
                Some(port) => Action::Grpc { port, service: g["service"].as_str().unwrap_or("").to_string() },
                None => Action::Unsupported(format!("grpc port {} is not a port number", g["port"])),
            }
        } else if let Some(sl) = p.get("sleep") {
            // Lifecycle hooks' `sleep` action (seconds, bounded by the hook's time anyway).
            Action::Sleep(Duration::from_secs(sl["seconds"].as_u64().unwrap_or(0).min(86_400)))
        } else {
            Action::Unsupported("the probe has no handler".into())
        }
    }
}

impl Probe {
    pub fn of(kind: Kind, container: &Value) -> Option<Probe> {
        let p = container.get(kind.field())?;
        if p.is_null() {
            return None;
        }
        let action = Action::of_handler(p, container);
        let success = p["successThreshold"].as_u64().filter(|n| *n > 0).unwrap_or(1).min(1000) as u32;
        Some(Probe {
            action,
            initial_delay: Duration::from_secs(p["initialDelaySeconds"].as_u64().unwrap_or(0).min(86_400)),
            period: secs(&p["periodSeconds"], 10),
            timeout: secs(&p["timeoutSeconds"], 1),
            // Liveness and startup probes must use 1 (the API validates it); keep it safe here.
            success_threshold: if kind == Kind::Readiness { success } else { 1 },
            failure_threshold: p["failureThreshold"].as_u64().filter(|n| *n > 0).unwrap_or(3).min(1000) as u32,
        })
    }
}

/// Runs a probe once. `Ok(())` is success; `Err` says why not, as the `Unhealthy` event does.
/// Runs one probe. An exec probe runs in the container's namespaces when `container` (its
/// main process) is given, in `cwd` (a path in the container).
pub async fn run(p: &Probe, host: &str, env: &[(String, String)], cwd: &std::path::Path, container: Option<(i32, Option<crate::privileges::Privileges>)>) -> Result<(), String> {
    match tokio::time::timeout(p.timeout, run_action(&p.action, host, env, cwd, container)).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {}s", p.timeout.as_secs())),
    }
}

/// Runs a lifecycle hook's handler, for at most `limit`.
pub async fn run_hook(a: &Action, limit: Duration, host: &str, env: &[(String, String)], cwd: &std::path::Path, container: Option<(i32, Option<crate::privileges::Privileges>)>) -> Result<(), String> {
    match tokio::time::timeout(limit, run_action(a, host, env, cwd, container)).await {
        Ok(r) => r,
        Err(_) => Err(format!("the hook did not finish within {}s", limit.as_secs())),
    }
}

async fn run_action(action: &Action, host: &str, env: &[(String, String)], cwd: &std::path::Path, container: Option<(i32, Option<crate::privileges::Privileges>)>) -> Result<(), String> {
    match action {
        Action::Exec(cmd) => {
            let Some((prog, args)) = cmd.split_first() else { return Err("exec probe without a command".into()) };
            let mut c = tokio::process::Command::new(prog);
            c.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(std::process::Stdio::null()).kill_on_drop(true);
            match container {
                // In the container: its namespaces, user and capabilities, its environment only.
                Some((pid, privileges)) => {
                    c.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
                    crate::sandbox::Join::of(pid, cwd).map_err(|e| format!("entering the container: {e}"))?.with_privileges(privileges).install(&mut c)
                }
                None => {
                    c.current_dir(cwd);
                }
            }
            let out = c
                .output()
                .await
                .map_err(|e| format!("exec {prog}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                let mut msg = String::from_utf8_lossy(&out.stdout).to_string();
                msg.push_str(&String::from_utf8_lossy(&out.stderr));
                msg.truncate(1024);
                Err(format!("command {cmd:?} exited with {}: {}", out.status.code().unwrap_or(-1), msg.trim()))
            }
        }
        Action::Http { port, path, headers, https } => {
            let scheme = if *https { "https" } else { "http" };
            let s = tokio::net::TcpStream::connect((host, *port)).await.map_err(|e| format!("Get \"{scheme}://{host}:{port}{path}\": {e}"))?;
            let code = if *https {
                let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
                let tls = tokio_rustls::TlsConnector::from(insecure_tls()).connect(name, s).await.map_err(|e| format!("Get \"https://{host}:{port}{path}\": {e}"))?;
                http_status(tls, host, *port, path, headers).await?
            } else {
                http_status(s, host, *port, path, headers).await?
            };
            if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
        }
        Action::Grpc { port, service } => grpc_check(host, *port, service).await,
        Action::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Action::Tcp { port } => {
            tokio::net::TcpStream::connect((host, *port)).await.map(|_| ()).map_err(|e| format!("dial tcp {host}:{port}: {e}"))
        }
        Action::Unsupported(why) => Err(why.clone()),
    }
}

/// One GET, answered by its status code.
async fn http_status<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<u16, String> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut head[n..]).await.map_err(|e| e.to_string())?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad HTTP response from {host}:{port}"))
}

/// TLS that accepts any server certificate: an HTTPS probe checks that the container answers,
/// not who it is (the kubelet sets InsecureSkipVerify).
fn insecure_tls() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    #[derive(Debug)]
    struct AnyCert(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    static CFG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CFG.get_or_init(|| {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("rustls' default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        std::sync::Arc::new(cfg)
    })
    .clone()
}

/// `HealthCheckRequest{service}` as a gRPC message: the 5-byte prefix (not compressed,
/// length), then field 1 (string) in protobuf.
pub fn grpc_request(service: &str) -> Vec<u8> {
    let mut pb = Vec::new();
    if !service.is_empty() {
        pb.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            pb.push((n as u8) | 0x80);
            n >>= 7;
        }
        pb.push(n as u8);
        pb.extend_from_slice(service.as_bytes());
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&(pb.len() as u32).to_be_bytes());
    out.extend_from_slice(&pb);
    out
}

/// The `status` of a gRPC-framed `HealthCheckResponse` (field 1, an enum; 0 when absent).
pub fn grpc_status(framed: &[u8]) -> Result<u64, String> {
    if framed.len() < 5 || framed[0] != 0 {
        return Err("not an uncompressed gRPC message".into());
    }
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    let pb = framed.get(5..5 + len).ok_or("a truncated gRPC message")?;
    let mut i = 0;
    let varint = |i: &mut usize| -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *pb.get(*i).ok_or("a truncated varint")?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint too long".into())
    };
    let mut status = 0;
    while i < pb.len() {
        let key = varint(&mut i)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut i)?,
            (_, 0) => {
                varint(&mut i)?;
            }
            (_, 2) => {
                let l = varint(&mut i)? as usize;
                i = i.checked_add(l).filter(|e| *e <= pb.len()).ok_or("a field past the end")?;
            }
            (_, 1) => i += 8,
            (_, 5) => i += 4,
            _ => return Err("an unknown wire type".into()),
        }
    }
    Ok(status)
}

/// The kubelet's gRPC probe: `grpc.health.v1.Health/Check` over HTTP/2 without TLS.
async fn grpc_check(host: &str, port: u16, service: &str) -> Result<(), String> {
    use http_body_util::BodyExt;
    let s = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| format!("timeout: failed to connect service \"{host}:{port}\" within the probe's time: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(s)).await.map_err(|e| format!("failed to connect service \"{host}:{port}\": {e}"))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{host}:{port}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.33")
        .body(http_body_util::Full::new(bytes::Bytes::from(grpc_request(service))))
        .map_err(|e| e.to_string())?;
    let result = async {
        let resp = send.send_request(req).await.map_err(|e| format!("health rpc failed: {e}"))?;
        let grpc_header = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_string);
        let collected = resp.into_body().collect().await.map_err(|e| format!("health rpc failed: {e}"))?;
        let code = collected.trailers().and_then(|t| t.get("grpc-status")).and_then(|v| v.to_str().ok()).map(str::to_string).or(grpc_header);
        if code.as_deref().is_some_and(|c| c != "0") {
            return Err(format!("health rpc probe failed: rpc error: code = {}", code.unwrap_or_default()));
        }
        match grpc_status(&collected.to_bytes())? {
            1 => Ok(()),
            s => Err(format!("service unhealthy (responded with \"{}\")", match s {
                0 => "UNKNOWN",
                2 => "NOT_SERVING",
                3 => "SERVICE_UNKNOWN",
                _ => "?",
            })),
        }
    }
    .await;
    driver.abort();
    result
}

/// Consecutive results against the thresholds: returns `Some(new state)` when the probe's
/// verdict flips.
#[derive(Debug)]
pub struct ProbeCounter {
    pub healthy: bool,
    successes: u32,
    failures: u32,
}

impl ProbeCounter {
    pub fn new(initially_healthy: bool) -> ProbeCounter {
        ProbeCounter { healthy: initially_healthy, successes: 0, failures: 0 }
    }

    pub fn observe(&mut self, ok: bool, p: &Probe) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if !self.healthy && self.successes >= p.success_threshold {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.healthy && self.failures >= p.failure_threshold || !self.healthy && self.failures == p.failure_threshold {
                self.healthy = false;
                self.failures = 0;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_named_ports() {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}], "livenessProbe": {"httpGet": {"port": "http"}}, "readinessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 2, "successThreshold": 2, "failureThreshold": 1}});
        let l = Probe::of(Kind::Liveness, &c).unwrap();
        assert!(matches!(&l.action, Action::Http { port: 8080, path, .. } if path == "/"));
        assert_eq!((l.period, l.timeout, l.success_threshold, l.failure_threshold), (Duration::from_secs(10), Duration::from_secs(1), 1, 3));
        let r = Probe::of(Kind::Readiness, &c).unwrap();
        assert_eq!((r.period, r.success_threshold, r.failure_threshold), (Duration::from_secs(2), 2, 1));
        assert!(Probe::of(Kind::Startup, &c).is_none());
        let bad = json!({"livenessProbe": {"httpGet": {"port": "nope"}}});
        assert!(matches!(Probe::of(Kind::Liveness, &bad).unwrap().action, Action::Unsupported(_)));
    }

    #[test]
    fn thresholds() {
        let p = Probe { action: Action::Tcp { port: 1 }, initial_delay: Duration::ZERO, period: Duration::ZERO, timeout: Duration::ZERO, success_threshold: 2, failure_threshold: 3 };
        let mut c = ProbeCounter::new(false);
        assert_eq!(c.observe(true, &p), None);
        assert_eq!(c.observe(true, &p), Some(true));
        assert_eq!(c.observe(false, &p), None);
        assert_eq!(c.observe(false, &p), None);
        assert_eq!(c.observe(true, &p), None, "a success resets the failure count");
        assert_eq!(c.observe(false, &p), None);
        assert_eq!(c.observe(false, &p), None);
        assert_eq!(c.observe(false, &p), Some(false));
        // Still failing: a liveness probe reports again after another full threshold.
        assert_eq!(c.observe(false, &p), None);
        assert_eq!(c.observe(false, &p), None);
        assert_eq!(c.observe(false, &p), Some(false));
    }

    #[tokio::test]
    async fn probes_run_against_loopback() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                let n = s.read(&mut b).await.unwrap();
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let code = if req.starts_with("GET /ok ") { "200 OK" } else { "503 Service Unavailable" };
                let _ = s.write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let mk = |action| Probe { action, initial_delay: Duration::ZERO, period: Duration::ZERO, timeout: Duration::from_secs(5), success_threshold: 1, failure_threshold: 1 };
        let cwd = std::env::temp_dir();
        let http = |path: &str| mk(Action::Http { port, path: path.into(), headers: vec![], https: false });
        assert_eq!(run(&http("/ok"), "127.0.0.1", &[], &cwd, None).await, Ok(()));
        assert_eq!(run(&http("/bad"), "127.0.0.1", &[], &cwd, None).await, Err("HTTP probe failed with statuscode: 503".into()));
        assert_eq!(run(&mk(Action::Tcp { port }), "127.0.0.1", &[], &cwd, None).await, Ok(()));
        assert_eq!(run(&mk(Action::Exec(vec!["true".into()])), "127.0.0.1", &[], &cwd, None).await, Ok(()));
        let env = vec![("CODE".to_string(), "3".to_string())];
        let e = run(&mk(Action::Exec(vec!["sh".into(), "-c".into(), "echo nope; exit $CODE".into()])), "127.0.0.1", &env, &cwd, None).await.unwrap_err();
        assert!(e.contains("exited with 3") && e.contains("nope"), "{e}");
    }

    #[test]
    fn health_messages_encode_and_decode_as_protobuf() {
        assert_eq!(grpc_request(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(grpc_request("db"), vec![0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
        let long = "x".repeat(200);
        assert_eq!(&grpc_request(&long)[5..8], &[0x0a, 0xc8, 0x01]);
        assert_eq!(grpc_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(grpc_status(&[0, 0, 0, 0, 0]), Ok(0), "an empty message is UNKNOWN");
        // Unknown fields are skipped; the status still found.
        assert_eq!(grpc_status(&[0, 0, 0, 0, 6, 0x12, 2, b'h', b'i', 0x08, 2]), Ok(2));
        assert!(grpc_status(&[0, 0, 0, 0, 9, 0x08]).is_err(), "truncated");
        assert!(grpc_status(&[1, 0, 0, 0, 0]).is_err(), "compressed");
    }

    fn probe(action: Action) -> Probe {
        Probe { action, initial_delay: Duration::ZERO, period: Duration::ZERO, timeout: Duration::from_secs(5), success_threshold: 1, failure_threshold: 1 }
    }

    #[tokio::test]
    async fn https_probes_skip_certificate_checks_and_read_the_status() {
        let (cert, key) = crate::secure::self_signed("probe-test").unwrap();
        let cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert], key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let Ok(mut s) = acceptor.accept(s).await else { continue };
                let mut b = [0u8; 512];
                let n = s.read(&mut b).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let code = if req.starts_with("GET /ok ") && req.contains("X-Probe: yes") { "200 OK" } else { "500 Internal Server Error" };
                let _ = s.write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        let cwd = std::env::temp_dir();
        let https = |path: &str| probe(Action::Http { port, path: path.into(), headers: vec![("X-Probe".into(), "yes".into())], https: true });
        assert_eq!(run(&https("/ok"), "127.0.0.1", &[], &cwd, None).await, Ok(()));
        assert_eq!(run(&https("/bad"), "127.0.0.1", &[], &cwd, None).await, Err("HTTP probe failed with statuscode: 500".into()));
        // Plain HTTP to a TLS port is not an answer.
        assert!(run(&probe(Action::Http { port, path: "/ok".into(), headers: vec![], https: false }), "127.0.0.1", &[], &cwd, None).await.is_err());
        assert!(matches!(Probe::of(Kind::Liveness, &json!({"livenessProbe": {"httpGet": {"port": 443, "scheme": "HTTPS"}}})).unwrap().action, Action::Http { https: true, .. }));
    }

    #[tokio::test]
    async fn grpc_probes_ask_the_health_service() {
        use http_body_util::{BodyExt, StreamBody};
        use hyper::body::Frame;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    // The service asked: "" serving, "db" not serving, anything else unknown to it.
                    let (status, code) = match (path.as_str(), &body[..]) {
                        ("/grpc.health.v1.Health/Check", [0, 0, 0, 0, 0]) => (Some(1u8), "0"),
                        ("/grpc.health.v1.Health/Check", [0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']) => (Some(2), "0"),
                        _ => (None, "5"),
                    };
                    let mut frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = Vec::new();
                    if let Some(st) = status {
                        frames.push(Ok(Frame::data(bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, st]))));
                    }
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", code.parse().unwrap());
                    frames.push(Ok(Frame::trailers(trailers)));
                    let resp = hyper::Response::builder().header("content-type", "application/grpc").body(StreamBody::new(futures_util::stream::iter(frames))).unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(hyper_util::rt::TokioIo::new(s), svc));
            }
        });
        let cwd = std::env::temp_dir();
        let grpc = |service: &str| probe(Action::Grpc { port, service: service.into() });
        assert_eq!(run(&grpc(""), "127.0.0.1", &[], &cwd, None).await, Ok(()));
        assert_eq!(run(&grpc("db"), "127.0.0.1", &[], &cwd, None).await, Err("service unhealthy (responded with \"NOT_SERVING\")".into()));
        let e = run(&grpc("other"), "127.0.0.1", &[], &cwd, None).await.unwrap_err();
        assert!(e.contains("code = 5"), "{e}");
        assert!(run(&grpc(""), "127.0.0.1", &[], &cwd, None).await.is_ok());
        let parsed = Probe::of(Kind::Readiness, &json!({"readinessProbe": {"grpc": {"port": 9000, "service": "db"}}})).unwrap();
        assert!(matches!(parsed.action, Action::Grpc { port: 9000, ref service } if service == "db"));
        assert!(matches!(Probe::of(Kind::Readiness, &json!({"readinessProbe": {"grpc": {"port": "x"}}})).unwrap().action, Action::Unsupported(_)));
    }
}
