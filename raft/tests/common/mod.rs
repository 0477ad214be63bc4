#![allow(dead_code)]
//! An in-process cluster of replicas on loopback, each in its own temporary directory, with
//! the fault-injecting layer between them. Every wait has a deadline that says what it waited
//! for.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use raft::faults::Faults;
use raft::replica::{Replica, ReplicaConfig};
use raft::types::NodeId;

pub const WAIT: Duration = Duration::from_secs(60);

pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("watchdog: {what} did not happen within {WAIT:?}"),
    }
}

/// A loopback port outside the kernel's ephemeral range (32768..), so that one released by a
/// stopped replica is not taken by anyone else before the replica comes back on it.
pub fn reserve_port() -> std::net::TcpListener {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l;
        }
    }
}

pub struct Node {
    pub name: String,
    pub url: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub replica: Option<Replica>,
    listener: Option<std::net::TcpListener>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub faults: Arc<Faults>,
    pub tune: fn(&mut ReplicaConfig),
}

pub fn fast(_c: &mut ReplicaConfig) {}

impl Cluster {
    pub async fn start(n: usize, seed: u64, tune: fn(&mut ReplicaConfig)) -> Cluster {
        let faults = Arc::new(Faults::new(seed));
        let mut nodes = Vec::new();
        for i in 0..n {
            let l = reserve_port();
            let port = l.local_addr().unwrap().port();
            nodes.push(Node { name: format!("m{i}"), url: format!("http://127.0.0.1:{port}"), port, dir: tempfile::tempdir().unwrap(), replica: None, listener: Some(l) });
        }
        let mut c = Cluster { nodes, faults, tune };
        for i in 0..n {
            c.restart(i).await;
        }
        c
    }

    pub fn initial(&self) -> Vec<(String, String)> {
        self.nodes.iter().map(|n| (n.name.clone(), n.url.clone())).collect()
    }

    pub fn config(&self, i: usize) -> ReplicaConfig {
        let n = &self.nodes[i];
        let mut cfg = ReplicaConfig::new(&n.name, n.dir.path(), self.initial());
        cfg.peer_url = n.url.clone();
        cfg.faults = Some(self.faults.clone());
        cfg.segment_bytes = 8 << 20;
        cfg.store.segment_bytes = 8 << 20;
        cfg.store.pin_threads = false;
        cfg.store.batch_bytes_max = 1 << 20;
        cfg.store.request_bytes_max = 1 << 20;
        (self.tune)(&mut cfg);
        cfg
    }

    /// Starts (or starts again, on its directory and port) replica `i`.
    pub async fn restart(&mut self, i: usize) {
        let cfg = self.config(i);
        self.start_with(i, cfg).await;
    }

    pub async fn start_with(&mut self, i: usize, cfg: ReplicaConfig) {
        let n = &mut self.nodes[i];
        assert!(n.replica.is_none(), "{} is running", n.name);
        let std_l = match n.listener.take() {
            Some(l) => l,
            None => std::net::TcpListener::bind(("127.0.0.1", n.port)).unwrap_or_else(|e| panic!("rebinding {}'s port {}: {e}", n.name, n.port)),
        };
        std_l.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(std_l).unwrap();
        // A store a killed replica's last in-flight request still holds is released when
        // that request ends: wait for its lock, briefly.
        let mut l = Some(l);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let r = loop {
            let lis = match l.take() {
                Some(x) => x,
                None => tokio::net::TcpListener::bind(("127.0.0.1", n.port)).await.unwrap(),
            };
            match Replica::start_on(cfg.clone(), lis).await {
                Ok(r) => break r,
                Err(e) if e.to_string().contains("LOCK") && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("starting {}: {e}", n.name),
            }
        };
        n.replica = Some(r);
    }

    pub fn replica(&self, i: usize) -> &Replica {
        self.nodes[i].replica.as_ref().unwrap_or_else(|| panic!("{} is not running", self.nodes[i].name))
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| raft::cluster::member_id(&n.name)).collect()
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].replica.is_some()).collect()
    }

    /// The index of the leader that every running replica (or those in `among`) agrees on.
    pub async fn leader_among(&self, among: &[usize]) -> usize {
        let ids = self.ids();
        within("a leader every replica agrees on", async {
            loop {
                let leaders: Vec<Option<NodeId>> = among.iter().map(|i| self.replica(*i).leader()).collect();
                if let Some(Some(l)) = leaders.first()
                    && leaders.iter().all(|x| *x == Some(*l))
                    && let Some(idx) = ids.iter().position(|id| id == l)
                    && among.contains(&idx)
                    && self.replica(idx).is_leader()
                {
                    return idx;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    pub async fn leader(&self) -> usize {
        self.leader_among(&self.running()).await
    }

    /// Stops replica `i` as a crash would.
    pub async fn kill(&mut self, i: usize) {
        if let Some(r) = self.nodes[i].replica.take() {
            r.kill().await;
        }
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(r) = self.nodes[i].replica.take() {
            r.shutdown().await;
        }
    }

    pub async fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// Logs to the test's output when `RUST_LOG` asks.
pub fn logs() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
}

pub fn seed() -> u64 {
    logs();
    let s = std::env::var("CAPSTAN_RAFT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("raft test seed {s} (CAPSTAN_RAFT_SEED={s} to replay)");
    s
}
