//! Probes: exec, httpGet and tcpSocket, each bounded by its `timeoutSeconds`. `Probe::of`
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

impl Probe {
    pub fn of(kind: Kind, container: &Value) -> Option<Probe> {
        let p = container.get(kind.field())?;
        if p.is_null() {
            return None;
        }
        let action = if let Some(e) = p.get("exec") {
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
        } else if p.get("grpc").is_some() {
            Action::Unsupported("grpc probes are not supported by capstan's process runtime".into())
        } else {
            Action::Unsupported("the probe has no handler".into())
        };
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
    match tokio::time::timeout(p.timeout, run_inner(p, host, env, cwd, container)).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {}s", p.timeout.as_secs())),
    }
}

async fn run_inner(p: &Probe, host: &str, env: &[(String, String)], cwd: &std::path::Path, container: Option<(i32, Option<crate::privileges::Privileges>)>) -> Result<(), String> {
    match &p.action {
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
            if *https {
                return Err("HTTPS probes are not supported by capstan's process runtime".into());
            }
            let mut s = tokio::net::TcpStream::connect((host, *port)).await.map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
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
            let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad HTTP response from {host}:{port}"))?;
            if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
        }
        Action::Tcp { port } => {
            tokio::net::TcpStream::connect((host, *port)).await.map(|_| ()).map_err(|e| format!("dial tcp {host}:{port}: {e}"))
        }
        Action::Unsupported(why) => Err(why.clone()),
    }
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
}
