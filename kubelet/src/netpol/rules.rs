//! NetworkPolicy as nftables rules for one pod (no I/O): what [`super`] loads into the pod's
//! own network namespace.
//!
//! Kubernetes' semantics: a pod is isolated for ingress (egress) when a policy of its
//! namespace selects it with `Ingress` (`Egress`) among its `policyTypes` (Ingress always
//! when none are given, Egress when the policy has egress rules); an isolated pod accepts
//! only what some selecting policy's rules allow, the union of them. A rule allows from (to)
//! its peers — pods by `podSelector` in its own namespace, pods of the namespaces a
//! `namespaceSelector` picks (with a `podSelector`, those pods of them), `ipBlock` CIDRs
//! minus their `except` — on its ports (protocol, number or container port name, `endPort`);
//! no peers is every peer, no ports every port. Replies to allowed connections pass
//! (conntrack). Traffic with the pod's node is always allowed, as Kubernetes documents: the
//! node's address on the pod's bridge, and the Service range, whose addresses are the node's
//! (capstan's proxy terminates Service connections on the node, so Service traffic is
//! judged there, not by these rules). Denied connections are rejected (admin-prohibited), not
//! dropped: the peer learns at once.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use client::obj::Obj;

/// The nftables table in each pod's namespace.
pub const TABLE: &str = "capstan_policy";

/// A label selector as the API gives it (matchLabels and matchExpressions); an empty one
/// selects everything, an absent one (null) nothing where that is how the field reads.
pub fn selects(sel: &Obj, labels: &Obj) -> bool {
    let get = |k: &str| labels.get(k).and_then(|v| v.as_str());
    for (k, v) in sel["matchLabels"].as_object().into_iter().flatten() {
        if get(k) != v.as_str() {
            return false;
        }
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        let ok = match e["operator"].as_str().unwrap_or("") {
            "In" => get(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => get(key).is_none_or(|v| !values.contains(&v)),
            "Exists" => get(key).is_some(),
            "DoesNotExist" => get(key).is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// What the rules need of the cluster.
pub struct World<'a> {
    pub policies: &'a [Arc<Obj>],
    pub pods: &'a [Arc<Obj>],
    /// Namespace name -> its labels.
    pub namespaces: &'a HashMap<String, Obj>,
    /// The node's address on the pod's bridge.
    pub node: Ipv4Addr,
    /// The Service range (`a.b.c.d/n`), the node's too.
    pub service_range: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Ingress,
    Egress,
}

fn types(p: &Obj) -> (bool, bool) {
    match p["spec"]["policyTypes"].as_array() {
        Some(t) => (t.iter().any(|x| x == "Ingress"), t.iter().any(|x| x == "Egress")),
        None => (true, p["spec"]["egress"].is_array()),
    }
}

/// One allow rule: peers (None: any) and port matches (empty: any).
#[derive(Debug, PartialEq)]
struct Allow {
    peers: Option<Peers>,
    ports: Vec<PortMatch>,
}

/// A rule's port: every port of a protocol, one, a range (`endPort`), or the numbers a named
/// port has.
#[derive(Debug, PartialEq)]
enum PortMatch {
    Any(String),
    One(String, u64),
    Range(String, u64, u64),
    Named(String, BTreeSet<u64>),
}

impl PortMatch {
    /// As an nftables match.
    fn nft(&self) -> String {
        match self {
            PortMatch::Any(p) => format!("meta l4proto {p}"),
            PortMatch::One(p, n) => format!("{p} dport {n}"),
            PortMatch::Range(p, a, b) => format!("{p} dport {a}-{b}"),
            PortMatch::Named(p, set) => format!("{p} dport {{ {} }}", set.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }

    fn holds(&self, proto: &str, port: u16) -> bool {
        let port = port as u64;
        match self {
            PortMatch::Any(p) => p == proto,
            PortMatch::One(p, n) => p == proto && *n == port,
            PortMatch::Range(p, a, b) => p == proto && (*a..=*b).contains(&port),
            PortMatch::Named(p, set) => p == proto && set.contains(&port),
        }
    }
}

/// A rule's peers: pod addresses, and IP blocks each with its exceptions.
#[derive(Debug, PartialEq, Default)]
struct Peers {
    pods: BTreeSet<String>,
    blocks: Vec<(String, Vec<String>)>,
}

impl Peers {
    fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.blocks.is_empty()
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        self.pods.contains(&ip.to_string())
    }

    /// Whether `ip` is among the peers: one of the pods, or in a block but not its exceptions.
    fn admits(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) || self.blocks.iter().any(|(cidr, except)| in_cidr(ip, cidr) && !except.iter().any(|e| in_cidr(ip, e)))
    }
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let (Ok(net), Ok(bits)) = (net.parse::<Ipv4Addr>(), bits.parse::<u32>()) else { return false };
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits.min(32)) };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn pod_ip(p: &Obj) -> Option<Ipv4Addr> {
    p["status"]["podIP"].as_str()?.parse().ok()
}

/// What `peers` name, seen from a policy in namespace `ns`.
fn peer_set(peers: &[Obj], ns: &str, w: &World) -> Peers {
    let mut out = Peers::default();
    for peer in peers {
        if let Some(b) = peer.get("ipBlock") {
            let Some(cidr) = b["cidr"].as_str().filter(|c| valid_cidr(c)) else { continue };
            let except = b["except"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).filter(|c| valid_cidr(c)).map(String::from).collect();
            out.blocks.push((cidr.to_string(), except));
            continue;
        }
        let pod_sel = peer.get("podSelector");
        let ns_sel = peer.get("namespaceSelector");
        for p in w.pods {
            let Some(ip) = pod_ip(p) else { continue };
            if p["spec"]["hostNetwork"] == true {
                continue;
            }
            let pns = p["metadata"]["namespace"].as_str().unwrap_or("");
            let ns_ok = match ns_sel {
                Some(s) => w.namespaces.get(pns).is_some_and(|labels| selects(s, labels)),
                None => pns == ns,
            };
            let pod_ok = pod_sel.is_none_or(|s| selects(s, &p["metadata"]["labels"]));
            if ns_ok && pod_ok {
                out.pods.insert(ip.to_string());
            }
        }
    }
    out
}

fn valid_cidr(c: &str) -> bool {
    let (ip, bits) = c.split_once('/').unwrap_or((c, "32"));
    ip.parse::<Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32)
}

/// The port matches of a rule's `ports`; named ports resolve against `named` (container
/// ports of the pods they apply to). None: the rule names only ports that do not exist
/// (it allows nothing).
fn port_matches(ports: &Obj, named: &dyn Fn(&str, &str) -> Vec<u64>) -> Option<Vec<PortMatch>> {
    let Some(list) = ports.as_array().filter(|l| !l.is_empty()) else { return Some(vec![]) };
    let mut out = Vec::new();
    for p in list {
        let proto = p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            continue;
        }
        match &p["port"] {
            Obj::Null => out.push(PortMatch::Any(proto)),
            Obj::Number(n) => {
                let Some(n) = n.as_u64().filter(|n| (1..=65535).contains(n)) else { continue };
                match p["endPort"].as_u64().filter(|e| *e >= n && *e <= 65535) {
                    Some(e) => out.push(PortMatch::Range(proto, n, e)),
                    None => out.push(PortMatch::One(proto, n)),
                }
            }
            Obj::String(name) => {
                if let Ok(n) = name.parse::<u64>() {
                    out.push(PortMatch::One(proto, n));
                    continue;
                }
                let ns: BTreeSet<u64> = named(name, &proto).into_iter().collect();
                if !ns.is_empty() {
                    out.push(PortMatch::Named(proto, ns));
                }
            }
            _ => {}
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

fn container_ports(p: &Obj, name: &str, proto: &str) -> Vec<u64> {
    p["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter(|cp| cp["name"] == name && cp["protocol"].as_str().unwrap_or("TCP").eq_ignore_ascii_case(proto))
        .filter_map(|cp| cp["containerPort"].as_u64())
        .collect()
}

/// The allow lines for `pod` in direction `dir`, or None when it is not isolated that way.
fn allows(pod: &Obj, dir: Dir, w: &World) -> Option<Vec<Allow>> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let mut isolated = false;
    let mut out = Vec::new();
    for pol in w.policies.iter().filter(|p| p["metadata"]["namespace"] == ns) {
        if !selects(&pol["spec"]["podSelector"], &pod["metadata"]["labels"]) {
            continue;
        }
        let (ing, eg) = types(pol);
        let (applies, rules, peers_key) = match dir {
            Dir::Ingress => (ing, &pol["spec"]["ingress"], "from"),
            Dir::Egress => (eg, &pol["spec"]["egress"], "to"),
        };
        if !applies {
            continue;
        }
        isolated = true;
        for r in rules.as_array().into_iter().flatten() {
            let peers = match r[peers_key].as_array().filter(|p| !p.is_empty()) {
                None => None,
                Some(list) => {
                    let set = peer_set(list, ns, w);
                    if set.is_empty() {
                        continue;
                    }
                    Some(set)
                }
            };
            // Named ports: of this pod (ingress), of the peer pods (egress).
            let named = |name: &str, proto: &str| -> Vec<u64> {
                match dir {
                    Dir::Ingress => container_ports(pod, name, proto),
                    Dir::Egress => w.pods.iter().filter(|p| peers.as_ref().is_none_or(|s| pod_ip(p).is_some_and(|ip| s.contains(ip)))).flat_map(|p| container_ports(p, name, proto)).collect(),
                }
            };
            let Some(ports) = port_matches(&r["ports"], &named) else { continue };
            out.push(Allow { peers, ports });
        }
    }
    isolated.then_some(out)
}

/// Whether a connection from `src` to `dst` on `port` (`proto`: tcp, udp) is allowed when it
/// comes from a pod: by the destination pod's ingress policies and the source pod's egress
/// policies, as the pods' own rules would judge it. What the node's Service proxy asks
/// before it connects a pod to an endpoint: its connection comes from the node, which the
/// pods' rules always let through. A source that is not a pod (the node, a host-network pod)
/// is always allowed, as node traffic is.
pub fn permits(w: &World, src: Ipv4Addr, dst: Ipv4Addr, proto: &str, port: u16) -> bool {
    let pod_at = |ip: Ipv4Addr| w.pods.iter().find(|p| pod_ip(p) == Some(ip) && p["spec"]["hostNetwork"] != true);
    let Some(from) = pod_at(src) else { return true };
    let ok = |rules: Option<Vec<Allow>>, peer: Ipv4Addr| {
        rules.is_none_or(|rules| rules.iter().any(|a| a.peers.as_ref().is_none_or(|s| s.admits(peer)) && (a.ports.is_empty() || a.ports.iter().any(|m| m.holds(proto, port)))))
    };
    ok(allows(from, Dir::Egress, w), dst) && pod_at(dst).is_none_or(|to| ok(allows(to, Dir::Ingress, w), src))
}

/// The nftables script that makes `pod`'s namespace enforce the policies (an empty table
/// when none isolates it). Loaded with `nft -f`: it replaces the table in one transaction.
pub fn render(pod: &Obj, w: &World) -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    for dir in [Dir::Ingress, Dir::Egress] {
        let Some(allow) = allows(pod, dir, w) else { continue };
        let (hook, addr, iface) = match dir {
            Dir::Ingress => ("input", "saddr", "iifname"),
            Dir::Egress => ("output", "daddr", "oifname"),
        };
        s.push_str(&format!("  chain {hook} {{\n    type filter hook {hook} priority 0; policy accept;\n"));
        s.push_str("    ct state established,related accept\n");
        s.push_str(&format!("    {iface} \"lo\" accept\n"));
        s.push_str(&format!("    ip {addr} {} accept\n", w.node));
        if let Some(r) = &w.service_range
            && dir == Dir::Egress
        {
            s.push_str(&format!("    ip daddr {r} accept\n"));
        }
        for a in &allow {
            let ports: Vec<String> = if a.ports.is_empty() { vec![String::new()] } else { a.ports.iter().map(PortMatch::nft).collect() };
            match &a.peers {
                None => {
                    for p in &ports {
                        s.push_str(&format!("    {p} accept\n").replace("     accept", "    accept"));
                    }
                }
                Some(peers) => {
                    let mut lines: Vec<String> = Vec::new();
                    if !peers.pods.is_empty() {
                        lines.push(format!("ip {addr} {{ {} }}", peers.pods.iter().map(String::as_str).collect::<Vec<_>>().join(", ")));
                    }
                    // An IP block's exceptions guard its own line only.
                    for (cidr, except) in &peers.blocks {
                        let guard = if except.is_empty() { String::new() } else { format!("ip {addr} != {{ {} }} ", except.join(", ")) };
                        lines.push(format!("{guard}ip {addr} {cidr}"));
                    }
                    for l in &lines {
                        for p in &ports {
                            s.push_str(&format!("    {l} {p} accept\n").replace("  accept", " accept"));
                        }
                    }
                }
            }
        }
        s.push_str("    reject with icmpx type admin-prohibited\n  }\n");
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(ns: &str, name: &str, labels: Value, ip: &str) -> Arc<Obj> {
        Arc::new(Obj::from(json!({"metadata": {"namespace": ns, "name": name, "labels": labels}, "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}, "status": {"podIP": ip}})))
    }

    fn world<'a>(policies: &'a [Arc<Obj>], pods: &'a [Arc<Obj>], namespaces: &'a HashMap<String, Obj>) -> World<'a> {
        World { policies, pods, namespaces, node: Ipv4Addr::new(10, 1, 0, 1), service_range: Some("10.96.0.0/12".into()) }
    }

    fn fixture() -> (Vec<Arc<Obj>>, HashMap<String, Obj>) {
        let pods = vec![
            pod("default", "db", json!({"app": "db"}), "10.1.0.2"),
            pod("default", "front", json!({"role": "frontend"}), "10.1.0.3"),
            pod("default", "other", json!({}), "10.1.0.4"),
            pod("team", "t", json!({"role": "frontend"}), "10.1.0.5"),
        ];
        let mut ns = HashMap::new();
        ns.insert("default".to_string(), Obj::from(json!({"kubernetes.io/metadata.name": "default"})));
        ns.insert("team".to_string(), Obj::from(json!({"kubernetes.io/metadata.name": "team", "team": "a"})));
        (pods, ns)
    }

    #[test]
    fn unselected_pods_are_open_and_selected_ones_allow_only_their_rules() {
        let (pods, ns) = fixture();
        let policies = vec![Arc::new(Obj::from(json!({"metadata": {"namespace": "default", "name": "db"}, "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}, {"namespaceSelector": {"matchLabels": {"team": "a"}}}], "ports": [{"port": "http"}]}]}})))];
        let w = world(&policies, &pods, &ns);
        assert_eq!(render(&pods[1], &w), format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n}}\n"), "not selected: nothing");
        let db = render(&pods[0], &w);
        assert!(db.contains("chain input") && !db.contains("chain output"), "{db}");
        assert!(db.contains("ip saddr { 10.1.0.3, 10.1.0.5 } tcp dport { 8080 } accept"), "frontends of its namespace and every pod of team's, on the named port: {db}");
        assert!(db.contains("ip saddr 10.1.0.1 accept"), "the node always");
        assert!(db.trim_end().ends_with("reject with icmpx type admin-prohibited\n  }\n}"), "{db}");
    }

    #[test]
    fn egress_deny_all_still_reaches_the_node_and_services_and_ip_blocks_except() {
        let (pods, ns) = fixture();
        let policies = vec![
            Arc::new(Obj::from(json!({"metadata": {"namespace": "default", "name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}))),
            Arc::new(Obj::from(json!({"metadata": {"namespace": "default", "name": "out"}, "spec": {"podSelector": {"matchLabels": {"role": "frontend"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}], "ports": [{"protocol": "UDP", "port": 53, "endPort": 60}]}]}}))),
        ];
        let w = world(&policies, &pods, &ns);
        let other = render(&pods[2], &w);
        assert!(other.contains("chain output") && !other.contains("chain input"), "{other}");
        assert!(other.contains("ip daddr 10.96.0.0/12 accept") && other.contains("ip daddr 10.1.0.1 accept"));
        assert_eq!(other.matches(" accept\n").count(), 4, "established, lo, node, services, nothing else: {other}");
        let front = render(&pods[1], &w);
        assert!(front.contains("ip daddr != { 192.168.1.0/24 } ip daddr 192.168.0.0/16 udp dport 53-60 accept"), "{front}");
    }

    #[test]
    fn rules_without_peers_or_ports_allow_everything_and_unknown_named_ports_nothing() {
        let (pods, ns) = fixture();
        let policies = vec![Arc::new(Obj::from(json!({"metadata": {"namespace": "default", "name": "p"}, "spec": {"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{}, {"ports": [{"port": "nope"}]}, {"from": [{"podSelector": {"matchLabels": {"x": "none"}}}]}]}})))];
        let w = world(&policies, &pods, &ns);
        let db = render(&pods[0], &w);
        assert!(db.contains("\n    accept\n"), "an empty rule allows all: {db}");
        assert!(!db.contains("nope") && !db.contains("{  }"), "{db}");
        assert!(selects(&Obj::from(json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]})), &Obj::from(json!({}))));
        assert!(!selects(&Obj::from(json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]})), &Obj::from(json!({}))));
    }

    #[test]
    fn the_service_proxy_asks_what_the_pods_rules_would_say() {
        let (pods, ns) = fixture();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let policies = vec![
            // db takes frontends on its named port (8080).
            Arc::new(Obj::from(json!({"metadata": {"namespace": "default", "name": "db"}, "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}], "ports": [{"port": "http"}]}]}}))),
            // team's pods may reach only 10.1.0.0/24 but 10.1.0.4, on TCP 8000-9000.
            Arc::new(Obj::from(json!({"metadata": {"namespace": "team", "name": "out"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.1.0.0/24", "except": ["10.1.0.4/32"]}}], "ports": [{"port": 8000, "endPort": 9000}]}]}}))),
        ];
        let w = world(&policies, &pods, &ns);
        assert!(permits(&w, ip("10.1.0.3"), ip("10.1.0.2"), "tcp", 8080), "a frontend to db's named port");
        assert!(!permits(&w, ip("10.1.0.3"), ip("10.1.0.2"), "tcp", 5432), "another port of db");
        assert!(!permits(&w, ip("10.1.0.3"), ip("10.1.0.2"), "udp", 8080), "another protocol");
        assert!(!permits(&w, ip("10.1.0.4"), ip("10.1.0.2"), "tcp", 8080), "not a frontend");
        assert!(permits(&w, ip("10.1.0.4"), ip("10.1.0.3"), "tcp", 1), "an unselected pod is open");
        assert!(permits(&w, ip("10.1.0.1"), ip("10.1.0.2"), "tcp", 5432), "the node is not a pod: always allowed");
        assert!(permits(&w, ip("10.1.0.5"), ip("10.1.0.3"), "tcp", 8500), "team's egress: in the block and the range");
        assert!(!permits(&w, ip("10.1.0.5"), ip("10.1.0.3"), "tcp", 80), "team's egress: outside the range");
        assert!(!permits(&w, ip("10.1.0.5"), ip("10.1.0.4"), "tcp", 8500), "team's egress: the block's exception (an open pod)");
        assert!(!permits(&w, ip("10.1.0.5"), ip("192.168.0.1"), "tcp", 8500), "team's egress: outside the block");
    }
}
