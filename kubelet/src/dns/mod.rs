//! Cluster DNS, served by every real node at the `kube-dns` Service's address.
//!
//! Kubernetes runs CoreDNS as pods behind `kube-system/kube-dns`; capstan's node answers at
//! that cluster IP itself (as NodeLocal DNSCache does on each node), from the same Service
//! and EndpointSlice informers as its Service proxy: nothing to schedule, no hop through the
//! proxy, and a pod's question never leaves its node. The address is a local address of the
//! node while the `kube-dns` Service exists (the proxy puts every cluster IP there); the
//! sockets are bound with `IP_FREEBIND`, so they serve as soon as it does.
//!
//! - [`zone`]: the records (no I/O); [`resolv`]: the pods' `/etc/resolv.conf`.
//! - Here: UDP and TCP on port 53, questions of the zone answered at once from the current
//!   zone (rebuilt whole on a change, 20 ms after the first of a burst), others forwarded to
//!   the host's resolvers (`--dns-upstream`, default its `/etc/resolv.conf`) as they came.
//!
//! Bounds: a UDP question is one datagram (at most 64 KiB read, answers cut to what the
//! asker takes: 512 bytes, or its EDNS size up to 4096, else truncated with TC so it asks
//! again over TCP); at most [`MAX_FORWARDS`] questions forwarded at once (more get
//! SERVFAIL), each waiting [`FORWARD_TIMEOUT`] per upstream; at most [`MAX_TCP`] TCP
//! connections, each closed after [`TCP_IDLE`] without a question. Malformed messages get
//! FORMERR when their header can be read, else nothing.

pub mod resolv;
pub mod zone;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use client::informer::Informer;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::DNSClass;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub use zone::Zone;

pub const MAX_FORWARDS: usize = 256;
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_TCP: usize = 128;
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest UDP answer sent, whatever EDNS size the asker offers.
const MAX_UDP_ANSWER: u16 = 4096;

/// What the node's DNS serves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `kube-dns` cluster IP and port 53 (tests may give another port).
    pub listen: SocketAddr,
    /// `cluster.local`.
    pub domain: String,
    /// Where other names are asked.
    pub upstream: Vec<SocketAddr>,
}

/// The host's resolvers from `/etc/resolv.conf`, except `own` (the cluster DNS itself).
pub fn host_upstreams(own: std::net::IpAddr) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    resolv::Resolv::parse(&text).nameservers.iter().filter_map(|n| n.parse::<std::net::IpAddr>().ok()).filter(|ip| *ip != own).map(|ip| SocketAddr::new(ip, 53)).collect()
}

/// The running server; dropping it stops it.
pub struct ClusterDns {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    zone: RwLock<Arc<Zone>>,
    upstream: Vec<SocketAddr>,
    forwards: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn zone(&self) -> Arc<Zone> {
        self.zone.read().unwrap().clone()
    }
}

/// Binds with `IP_FREEBIND`: the address may not be the node's yet.
fn bind(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), ty, None)?;
    if addr.is_ipv4() {
        s.set_freebind_v4(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

impl ClusterDns {
    /// Serves `settings.listen` from `services` and `slices`; `changed` is notified by
    /// their informers.
    pub fn start(services: Arc<Informer>, slices: Arc<Informer>, changed: Arc<tokio::sync::Notify>, settings: Settings) -> std::io::Result<ClusterDns> {
        let udp = UdpSocket::from_std(bind(settings.listen, socket2::Type::DGRAM)?.into())?;
        let tcp_socket = bind(settings.listen, socket2::Type::STREAM)?;
        tcp_socket.listen(128)?;
        let tcp = TcpListener::from_std(tcp_socket.into())?;
        let shared = Arc::new(Shared {
            zone: RwLock::new(Arc::new(Zone::build(&settings.domain, &services.list(), &slices.list(), 1))),
            upstream: settings.upstream.clone(),
            forwards: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS)),
        });
        let mut tasks = Vec::new();
        let sh = shared.clone();
        let domain = settings.domain.clone();
        tasks.push(tokio::spawn(async move {
            let mut serial = 1u32;
            loop {
                changed.notified().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                serial = serial.wrapping_add(1);
                let z = Zone::build(&domain, &services.list(), &slices.list(), serial);
                *sh.zone.write().unwrap() = Arc::new(z);
            }
        }));
        let udp = Arc::new(udp);
        // Two readers of the one socket: one answers while the other is in a syscall.
        for _ in 0..2 {
            tasks.push(tokio::spawn(serve_udp(udp.clone(), shared.clone())));
        }
        tasks.push(tokio::spawn(serve_tcp(tcp, shared)));
        tracing::info!(listen = %settings.listen, domain = %settings.domain, upstream = ?settings.upstream, "cluster DNS serving");
        Ok(ClusterDns { tasks })
    }
}

/// What a message gets.
#[derive(Debug, PartialEq)]
enum Reply {
    /// Answered here: the bytes to send.
    Local(Vec<u8>),
    /// Not the zone's: ask upstream (and send the header-only SERVFAIL if that fails).
    Forward { id: u16, servfail: Vec<u8> },
    /// Nothing to send (a response, or bytes that are not DNS).
    Drop,
}

/// The reply to the message `buf`; answers over UDP are cut to what the asker takes.
fn reply(zone: &Zone, buf: &[u8], udp: bool) -> Reply {
    let req = match Message::from_vec(buf) {
        Ok(m) => m,
        Err(_) => {
            // A header we can read (and not a response's) gets FORMERR.
            if buf.len() < 12 || buf[2] & 0x80 != 0 {
                return Reply::Drop;
            }
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            return Reply::Local(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().unwrap_or_default());
        }
    };
    let md = &req.metadata;
    if md.message_type != MessageType::Query {
        return Reply::Drop;
    }
    let error = |code: ResponseCode| {
        let mut m = Message::error_msg(md.id, md.op_code, code);
        m.metadata.recursion_desired = md.recursion_desired;
        m.add_queries(req.queries.iter().cloned());
        Reply::Local(m.to_vec().unwrap_or_default())
    };
    if md.op_code != OpCode::Query {
        return error(ResponseCode::NotImp);
    }
    let [q] = req.queries.as_slice() else { return error(ResponseCode::FormErr) };
    let answer = if q.query_class() == DNSClass::IN { zone.answer(q.name(), q.query_type()) } else { zone::Answer::Elsewhere };
    let mut m = Message::response(md.id, OpCode::Query);
    m.metadata.recursion_desired = md.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(q.clone());
    let limit = match &req.edns {
        Some(e) => {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_ANSWER);
            m.set_edns(edns);
            e.max_payload().clamp(512, MAX_UDP_ANSWER)
        }
        None => 512,
    };
    match answer {
        zone::Answer::Elsewhere => {
            m.metadata.response_code = ResponseCode::ServFail;
            return Reply::Forward { id: md.id, servfail: m.to_vec().unwrap_or_default() };
        }
        zone::Answer::NxDomain => {
            m.metadata.authoritative = true;
            m.metadata.response_code = ResponseCode::NXDomain;
            m.add_authority(zone.soa());
        }
        zone::Answer::Found { answers, additionals } => {
            m.metadata.authoritative = true;
            if answers.is_empty() {
                m.add_authority(zone.soa());
            }
            m.add_answers(answers);
            m.add_additionals(additionals);
        }
    }
    let bytes = m.to_vec().unwrap_or_default();
    if udp && bytes.len() > limit as usize {
        return Reply::Local(m.truncate().to_vec().unwrap_or_default());
    }
    Reply::Local(bytes)
}

async fn serve_udp(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "cluster DNS: receiving");
                continue;
            }
        };
        match reply(&shared.zone(), &buf[..n], true) {
            Reply::Local(out) => {
                let _ = sock.send_to(&out, from).await;
            }
            Reply::Drop => {}
            Reply::Forward { id, servfail } => {
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    let _ = sock.send_to(&servfail, from).await;
                    continue;
                };
                let (sock, sh, query) = (sock.clone(), shared.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    let out = forward_udp(&query, id, &sh.upstream).await.unwrap_or(servfail);
                    let _ = sock.send_to(&out, from).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Asks each upstream in turn over UDP; the first answer with the question's id wins.
async fn forward_udp(query: &[u8], id: u16, upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for u in upstream {
        let local: SocketAddr = if u.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let Ok(s) = UdpSocket::bind(local).await else { continue };
        if s.connect(u).await.is_err() || s.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65536];
        let got = tokio::time::timeout(FORWARD_TIMEOUT, async {
            loop {
                let n = s.recv(&mut buf).await.ok()?;
                if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    return Some(n);
                }
            }
        })
        .await;
        if let Ok(Some(n)) = got {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Asks each upstream in turn over TCP.
async fn forward_tcp(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for u in upstream {
        let attempt = tokio::time::timeout(FORWARD_TIMEOUT, async {
            let mut s = TcpStream::connect(u).await.ok()?;
            s.write_all(&(query.len() as u16).to_be_bytes()).await.ok()?;
            s.write_all(query).await.ok()?;
            read_framed(&mut s).await.ok()
        })
        .await;
        if let Ok(Some(out)) = attempt {
            return Some(out);
        }
    }
    None
}

/// One length-prefixed DNS message from a TCP stream.
async fn read_framed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let n = s.read_u16().await? as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn serve_tcp(l: TcpListener, shared: Arc<Shared>) {
    let conns = Arc::new(tokio::sync::Semaphore::new(MAX_TCP));
    loop {
        let Ok((mut s, _)) = l.accept().await else { continue };
        // At the bound a new connection is closed at once: the asker retries or gives up.
        let Ok(permit) = conns.clone().try_acquire_owned() else { continue };
        let sh = shared.clone();
        tokio::spawn(async move {
            while let Ok(Ok(q)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut s)).await {
                let out = match reply(&sh.zone(), &q, false) {
                    Reply::Local(out) => out,
                    Reply::Drop => break,
                    Reply::Forward { servfail, .. } => match sh.forwards.clone().try_acquire_owned() {
                        Ok(_p) => forward_tcp(&q, &sh.upstream).await.unwrap_or(servfail),
                        Err(_) => servfail,
                    },
                };
                if s.write_all(&(out.len() as u16).to_be_bytes()).await.is_err() || s.write_all(&out).await.is_err() {
                    break;
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};
    use client::obj::Obj;
    use serde_json::{Value, json};

    fn zone() -> Zone {
        let svc = |name: &str, ip: &str| Arc::new(Obj::from(json!({"metadata": {"namespace": "default", "name": name}, "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 1}]}})));
        let many: Vec<Value> = (0..120).map(|i| json!({"addresses": [format!("10.244.{}.{}", i / 250, i % 250 + 1)]})).collect();
        let slice = Arc::new(Obj::from(json!({"metadata": {"namespace": "default", "labels": {"kubernetes.io/service-name": "big"}}, "ports": [{"name": "p", "port": 1}], "endpoints": many})));
        Zone::build("cluster.local", &[svc("web", "10.96.0.20"), svc("big", "None")], &[slice], 3)
    }

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn local(r: Reply) -> Message {
        match r {
            Reply::Local(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zone_questions_are_answered_with_authority() {
        let z = zone();
        let m = local(reply(&z, &query("web.default.svc.cluster.local.", RecordType::A, None), true));
        assert_eq!((m.metadata.id, m.metadata.response_code, m.metadata.authoritative), (0x4242, ResponseCode::NoError, true));
        assert_eq!(m.answers.len(), 1);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        let nx = local(reply(&z, &query("gone.default.svc.cluster.local.", RecordType::A, None), true));
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities.len(), 1, "the SOA, for negative caching");
    }

    #[test]
    fn big_answers_are_truncated_over_udp_unless_edns_allows_them() {
        let z = zone();
        let q = query("big.default.svc.cluster.local.", RecordType::A, None);
        let cut = local(reply(&z, &q, true));
        assert!(cut.metadata.truncation && cut.answers.is_empty());
        let whole = local(reply(&z, &q, false));
        assert_eq!((whole.metadata.truncation, whole.answers.len()), (false, 120), "TCP takes all");
        let edns = local(reply(&z, &query("big.default.svc.cluster.local.", RecordType::A, Some(4096)), true));
        assert_eq!((edns.metadata.truncation, edns.answers.len()), (false, 120), "120 addresses fit in 4096 bytes");
        assert!(edns.edns.is_some());
    }

    #[test]
    fn other_names_are_forwarded_and_bad_input_is_refused_or_dropped() {
        let z = zone();
        assert!(matches!(reply(&z, &query("example.com.", RecordType::A, None), true), Reply::Forward { id: 0x4242, .. }));
        // Garbage with a readable header: FORMERR with its id. Shorter, or a response: nothing.
        let mut junk = query("web.default.svc.cluster.local.", RecordType::A, None);
        junk.truncate(20);
        let m = local(reply(&z, &junk, true));
        assert_eq!((m.metadata.id, m.metadata.response_code), (0x4242, ResponseCode::FormErr));
        assert_eq!(reply(&z, &junk[..5], true), Reply::Drop);
        let mut response = query("web.default.svc.cluster.local.", RecordType::A, None);
        response[2] |= 0x80;
        assert_eq!(reply(&z, &response, true), Reply::Drop);
        // Two questions: FORMERR; another opcode: NOTIMP.
        let mut two = Message::new(7, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("b.").unwrap(), RecordType::A));
        assert_eq!(local(reply(&z, &two.to_vec().unwrap(), true)).metadata.response_code, ResponseCode::FormErr);
        let notify = Message::new(8, MessageType::Query, OpCode::Notify);
        assert_eq!(local(reply(&z, &notify.to_vec().unwrap(), true)).metadata.response_code, ResponseCode::NotImp);
    }
}
