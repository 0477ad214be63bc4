//! A Service's UDP port: datagrams to the cluster IP are relayed to an endpoint chosen per
//! client (a session: the client's address, its endpoint and a socket connected to it), and
//! the endpoint's answers go back to the client from the cluster IP, as kube-proxy's
//! userspace mode did. A session ends after [`IDLE`] without traffic either way; at most
//! [`MAX_SESSIONS`] at once per port (datagrams of new clients are dropped beyond, as a full
//! conntrack table drops them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::Backends;

pub const IDLE: Duration = Duration::from_secs(30);
pub const MAX_SESSIONS: usize = 1024;
const DATAGRAM_MAX: usize = 65536;

struct Session {
    upstream: Arc<UdpSocket>,
    backend: SocketAddr,
    last: Arc<Mutex<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `sock` (bound to the cluster IP and port) until aborted.
pub async fn serve(sock: UdpSocket, backends: Arc<RwLock<Backends>>, sticky: Arc<Mutex<HashMap<std::net::IpAddr, (SocketAddr, Instant)>>>, policy: crate::netpol::View) {
    let sock = Arc::new(sock);
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    let mut swept = Instant::now();
    loop {
        let Ok((n, client)) = sock.recv_from(&mut buf).await else { continue };
        let now = Instant::now();
        if now.duration_since(swept) > Duration::from_secs(1) {
            sessions.retain(|_, s| !s.task.is_finished());
            swept = now;
        }
        // A session whose endpoint is no longer ready is ended: the client's next datagram
        // goes to a ready one.
        let stale = sessions.get(&client).is_some_and(|s| s.task.is_finished() || !backends.read().unwrap().addrs.contains(&s.backend));
        if stale {
            sessions.remove(&client);
        }
        if !sessions.contains_key(&client) {
            if sessions.len() >= MAX_SESSIONS {
                continue;
            }
            let Some(backend) = super::pick(&backends.read().unwrap(), client.ip(), &sticky) else { continue };
            // NetworkPolicy, as for TCP: a client the policies deny gets no session.
            if !policy.permits(client.ip(), backend.ip(), "udp", backend.port()) {
                continue;
            }
            let local: SocketAddr = if backend.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
            let Ok(up) = UdpSocket::bind(local).await else { continue };
            if up.connect(backend).await.is_err() {
                continue;
            }
            let up = Arc::new(up);
            let last = Arc::new(Mutex::new(now));
            let task = tokio::spawn(answers(up.clone(), sock.clone(), client, last.clone()));
            sessions.insert(client, Session { upstream: up, backend, last, task });
        }
        let s = &sessions[&client];
        *s.last.lock().unwrap() = now;
        let _ = s.upstream.send(&buf[..n]).await;
    }
}

/// Relays the endpoint's datagrams back to `client` until the session is idle.
async fn answers(up: Arc<UdpSocket>, sock: Arc<UdpSocket>, client: SocketAddr, last: Arc<Mutex<Instant>>) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let idle_for = last.lock().unwrap().elapsed();
        if idle_for >= IDLE {
            return;
        }
        match tokio::time::timeout(IDLE - idle_for, up.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                *last.lock().unwrap() = Instant::now();
                let _ = sock.send_to(&buf[..n], client).await;
            }
            // The endpoint refused (ICMP port unreachable): the session ends, and the client's
            // next datagram picks an endpoint again.
            Ok(Err(_)) => return,
            Err(_) => {}
        }
    }
}
