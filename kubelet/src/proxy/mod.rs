//! The Service proxy of the real node, in user space: Service cluster IPs route to ready
//! endpoints, from the host and from pods.
//!
//! Each cluster IP with ready endpoints is made a local address of the node (on its bridge
//! `cb<id>`), and a listener on each of its TCP ports hands every connection to an
//! endpoint (at random, or by client address with `sessionAffinity: ClientIP`), copying bytes
//! both ways; each UDP port relays datagrams per client session ([`udp`]). Pods reach cluster IPs through their default route: the packet arrives at the
//! node for a local address, so nothing is forwarded. A Service without ready endpoints has
//! no listener: a connection is refused at once, on the node. The Service range itself is
//! routed to nothing (a blackhole route, made with the node's network): an address not (yet)
//! programmed gives a local error, never a packet out of the default route. NodePort
//! Services also listen on the node's address at their node port.
//!
//! Why user space rather than nftables: the machines capstan is built on have no `nft`, and
//! DNAT for pod-to-pod Service traffic through the bridge needs IP forwarding and
//! br_netfilter, host-wide settings a node should not change. The cost is a copy through this
//! process per connection (kubelet/DESIGN.md). Headless Services (`clusterIP: None`) have
//! nothing here; `externalTrafficPolicy` is ignored (one node); SCTP ports are not served.

mod udp;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use client::obj::Obj;

use crate::client::Client;
use crate::client::informer::{Informer, Informers};

/// Where one Service port goes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backends {
    pub addrs: Vec<SocketAddr>,
    /// `sessionAffinity: ClientIP`: how long a client keeps its endpoint.
    pub affinity: Option<Duration>,
}

/// A Service port's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// The listeners the proxy wants: (transport, address and port) -> backends. Pure:
/// table-tested.
pub fn desired(services: &[Arc<Obj>], slices: &[Arc<Obj>], node_ip: Ipv4Addr) -> HashMap<(Proto, SocketAddr), Backends> {
    let mut out = HashMap::new();
    // Slices by (namespace, Service): one pass, not one per Service.
    let mut by_service: HashMap<(&str, &str), Vec<&Arc<Obj>>> = HashMap::new();
    for s in slices {
        if let (Some(ns), Some(name)) = (s["metadata"]["namespace"].as_str(), s["metadata"]["labels"]["kubernetes.io/service-name"].as_str()) {
            by_service.entry((ns, name)).or_default().push(s);
        }
    }
    for svc in services {
        let spec = &svc["spec"];
        let Some(ip) = spec["clusterIP"].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) else { continue };
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("");
        let name = svc["metadata"]["name"].as_str().unwrap_or("");
        let affinity = (spec["sessionAffinity"] == "ClientIP").then(|| Duration::from_secs(spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"].as_u64().unwrap_or(10800)));
        let mine: &[&Arc<Obj>] = by_service.get(&(ns, name)).map_or(&[], |v| v.as_slice());
        for p in spec["ports"].as_array().into_iter().flatten() {
            let proto = match p["protocol"].as_str().unwrap_or("TCP") {
                "TCP" => Proto::Tcp,
                "UDP" => Proto::Udp,
                _ => continue,
            };
            let proto_name = if proto == Proto::Tcp { "TCP" } else { "UDP" };
            let Some(port) = p["port"].as_u64().and_then(|x| u16::try_from(x).ok()) else { continue };
            let pname = p["name"].as_str().unwrap_or("");
            let mut addrs = Vec::new();
            for s in mine {
                let Some(target) = s["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|sp| sp["name"].as_str().unwrap_or("") == pname && sp["protocol"].as_str().unwrap_or("TCP") == proto_name)
                    .and_then(|sp| sp["port"].as_u64())
                    .and_then(|x| u16::try_from(x).ok())
                else {
                    continue;
                };
                for e in s["endpoints"].as_array().into_iter().flatten() {
                    if e["conditions"]["ready"] == false {
                        continue;
                    }
                    for a in e["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()?.parse::<Ipv4Addr>().ok()) {
                        addrs.push(SocketAddr::from((a, target)));
                    }
                }
            }
            addrs.sort();
            addrs.dedup();
            let b = Backends { addrs, affinity };
            if let Some(np) = p["nodePort"].as_u64().and_then(|x| u16::try_from(x).ok()).filter(|n| *n > 0) {
                out.insert((proto, SocketAddr::from((node_ip, np))), b.clone());
            }
            out.insert((proto, SocketAddr::from((ip, port))), b);
        }
    }
    out
}

struct Listener {
    backends: Arc<RwLock<Backends>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Dropping a task's handle does not stop it: a stopped proxy must stop serving.
        self.task.abort();
    }
}

/// The running proxy.
pub struct ServiceProxy {
    _informers: Informers,
    task: tokio::task::JoinHandle<()>,
    /// The node's cluster DNS (`dns`), on the same informers.
    _dns: Option<crate::dns::ClusterDns>,
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceProxy {
    /// Watches Services and EndpointSlices and keeps the listeners and addresses in step.
    /// `link` is the node's link for cluster IPs; `node_ip` its address (node ports).
    /// With `dns`, the node's cluster DNS is served too (its address is the `kube-dns`
    /// Service's cluster IP, which this proxy makes local).
    /// `policy`: the NetworkPolicy agent's view, which judges each connection to an endpoint.
    pub fn start(client: Client, link: String, service_cidr: crate::network::Cidr, node_ip: Ipv4Addr, dns: Option<crate::dns::Settings>, policy: crate::netpol::View) -> ServiceProxy {
        let informers = Informers::new(client);
        let services = informers.get("/api/v1/services");
        let slices = informers.get("/apis/discovery.k8s.io/v1/endpointslices");
        let wake = Arc::new(tokio::sync::Notify::new());
        let dns_wake = Arc::new(tokio::sync::Notify::new());
        for inf in [&services, &slices] {
            let (w, d) = (wake.clone(), dns_wake.clone());
            inf.on_change(move |_| {
                w.notify_one();
                d.notify_one();
            });
        }
        informers.start();
        let dns = dns.and_then(|settings| match crate::dns::ClusterDns::start(services.clone(), slices.clone(), dns_wake, settings.clone()) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(listen = %settings.listen, error = %e, "cluster DNS could not listen: pods' names will not resolve");
                None
            }
        });
        let task = tokio::spawn(run(services, slices, wake, link, service_cidr, node_ip, policy));
        ServiceProxy { _informers: informers, task, _dns: dns }
    }
}

async fn run(services: Arc<Informer>, slices: Arc<Informer>, wake: Arc<tokio::sync::Notify>, link: String, cidr: crate::network::Cidr, node_ip: Ipv4Addr, policy: crate::netpol::View) {
    let mut listeners: HashMap<(Proto, SocketAddr), Listener> = HashMap::new();
    let mut addresses: HashSet<Ipv4Addr> = HashSet::new();
    loop {
        let want = desired(&services.list(), &slices.list(), node_ip);
        // Listeners for ports with ready endpoints; none (connections refused) without.
        listeners.retain(|key, _| want.get(key).is_some_and(|b| !b.addrs.is_empty()));
        // Every cluster IP is a local address, with endpoints or not: without a listener, a
        // connection is refused at once by the node.
        let ips: HashSet<Ipv4Addr> = want.keys().map(|(_, a)| a).filter(|a| a.ip() != std::net::IpAddr::V4(node_ip)).filter_map(|a| match a.ip() {
            std::net::IpAddr::V4(v) if cidr.contains(v) => Some(v),
            _ => None,
        }).collect();
        let new: Vec<Ipv4Addr> = ips.difference(&addresses).copied().collect();
        let failed = crate::network::add_addresses(&link, &new);
        for (ip, e) in &failed {
            tracing::warn!(%ip, error = %e, "Service proxy: programming a cluster IP failed");
        }
        addresses.extend(new.into_iter().filter(|ip| !failed.iter().any(|(f, _)| f == ip)));
        let gone: Vec<Ipv4Addr> = addresses.difference(&ips).copied().collect();
        crate::network::del_addresses(&link, &gone);
        for ip in gone {
            addresses.remove(&ip);
        }
        for ((proto, addr), b) in want {
            if b.addrs.is_empty() {
                continue;
            }
            if let Some(l) = listeners.get(&(proto, addr)) {
                *l.backends.write().unwrap() = b;
                continue;
            }
            if let std::net::IpAddr::V4(v) = addr.ip()
                && v != node_ip
                && !addresses.contains(&v)
            {
                continue;
            }
            let backends = Arc::new(RwLock::new(b));
            let task = match proto {
                Proto::Tcp => tokio::net::TcpListener::bind(addr).await.map(|l| tokio::spawn(serve(l, backends.clone(), policy.clone()))),
                Proto::Udp => tokio::net::UdpSocket::bind(addr).await.map(|u| tokio::spawn(udp::serve(u, backends.clone(), Arc::new(Mutex::new(HashMap::new())), policy.clone()))),
            };
            match task {
                Ok(task) => {
                    listeners.insert((proto, addr), Listener { backends, task });
                }
                Err(e) => tracing::warn!(%addr, ?proto, error = %e, "Service proxy: listening failed"),
            }
        }
        wake.notified().await;
        // Changes come in bursts (a Service and its slices): take them together.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Picks an endpoint: the client's own under session affinity, else one at random.
pub(crate) fn pick(b: &Backends, client: std::net::IpAddr, sticky: &Mutex<HashMap<std::net::IpAddr, (SocketAddr, Instant)>>) -> Option<SocketAddr> {
    if b.addrs.is_empty() {
        return None;
    }
    if let Some(ttl) = b.affinity {
        let mut m = sticky.lock().unwrap();
        if let Some((a, at)) = m.get(&client)
            && at.elapsed() < ttl
            && b.addrs.contains(a)
        {
            let a = *a;
            m.insert(client, (a, Instant::now()));
            return Some(a);
        }
        let a = b.addrs[rand::random_range(0..b.addrs.len())];
        if m.len() > 65536 {
            m.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        m.insert(client, (a, Instant::now()));
        return Some(a);
    }
    Some(b.addrs[rand::random_range(0..b.addrs.len())])
}

async fn serve(l: tokio::net::TcpListener, backends: Arc<RwLock<Backends>>, policy: crate::netpol::View) {
    let sticky = Arc::new(Mutex::new(HashMap::new()));
    let slots = Arc::new(tokio::sync::Semaphore::new(4096));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((mut conn, peer)) = l.accept().await else { continue };
        let (backends, sticky, policy) = (backends.clone(), sticky.clone(), policy.clone());
        tokio::spawn(async move {
            let _permit = permit;
            for _ in 0..2 {
                let Some(to) = pick(&backends.read().unwrap().clone(), peer.ip(), &sticky) else { return };
                // The NetworkPolicies of the client pod and of the endpoint's pod, as if the
                // client had connected to the endpoint: a denied connection is reset.
                if !policy.permits(peer.ip(), to.ip(), "tcp", to.port()) {
                    let _ = conn.set_zero_linger();
                    return;
                }
                if let Ok(Ok(mut up)) = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_endpoints_of_each_port_by_name_and_node_ports() {
        let svc = Arc::new(Obj::from(json!({"metadata": {"namespace": "d", "name": "web"}, "spec": {"clusterIP": "10.96.0.9", "sessionAffinity": "ClientIP",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "udp", "port": 53, "protocol": "UDP"}]}})));
        let headless = Arc::new(Obj::from(json!({"metadata": {"namespace": "d", "name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})));
        let slice = Arc::new(Obj::from(json!({"metadata": {"namespace": "d", "labels": {"kubernetes.io/service-name": "web"}}, "ports": [{"name": "http", "port": 8080}, {"name": "udp", "port": 5353, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}}, {"addresses": ["10.244.0.6"], "conditions": {"ready": false}}]})));
        let other_ns = Arc::new(Obj::from(json!({"metadata": {"namespace": "e", "labels": {"kubernetes.io/service-name": "web"}}, "ports": [{"name": "http", "port": 1}], "endpoints": [{"addresses": ["10.244.0.7"]}]})));
        let d = desired(&[svc, headless], &[slice, other_ns], Ipv4Addr::LOCALHOST);
        let want = vec![SocketAddr::from(([10, 244, 0, 5], 8080))];
        let tcp = |a: [u8; 4], p: u16| (Proto::Tcp, SocketAddr::from((a, p)));
        assert_eq!(d[&tcp([10, 96, 0, 9], 80)].addrs, want, "ready endpoints of its own slices only");
        assert_eq!(d[&tcp([127, 0, 0, 1], 30080)].addrs, want);
        assert_eq!(d[&tcp([10, 96, 0, 9], 80)].affinity, Some(Duration::from_secs(10800)));
        assert_eq!(d[&(Proto::Udp, SocketAddr::from(([10, 96, 0, 9], 53)))].addrs, vec![SocketAddr::from(([10, 244, 0, 5], 5353))], "UDP, by its port of the slice");
        assert_eq!(d.len(), 3, "headless Services have no listeners: {d:?}");
    }

    #[test]
    fn session_affinity_keeps_a_client_on_its_endpoint() {
        let b = Backends { addrs: (1..=8).map(|i| SocketAddr::from(([10, 0, 0, i], 80))).collect(), affinity: Some(Duration::from_secs(60)) };
        let sticky = Mutex::new(HashMap::new());
        let c: std::net::IpAddr = "10.0.1.1".parse().unwrap();
        let first = pick(&b, c, &sticky).unwrap();
        for _ in 0..20 {
            assert_eq!(pick(&b, c, &sticky), Some(first));
        }
        assert_eq!(pick(&Backends::default(), c, &sticky), None);
    }
}
