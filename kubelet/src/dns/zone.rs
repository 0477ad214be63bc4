//! The cluster's DNS zone (`cluster.local`), built from Services and EndpointSlices, and the
//! answer to one question about it. No I/O: [`super`] serves it.
//!
//! Names, as Kubernetes' DNS specification and CoreDNS's `kubernetes` plugin give them:
//! - `<svc>.<ns>.svc.<zone>`: A, the cluster IP; for a headless Service (`clusterIP: None`)
//!   one A per ready endpoint; for an ExternalName Service a CNAME to its name.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV for a named port, aimed at the Service's
//!   name (one per endpoint, at the endpoint's name, when headless); `<svc>.<ns>.svc.<zone>`
//!   SRV lists every named port.
//! - `<host>.<svc>.<ns>.svc.<zone>`: A for a headless Service's endpoint, by its `hostname`
//!   (StatefulSet pods) or its address with dashes (`10-244-0-5`).
//! - `<a-b-c-d>.<ns>.pod.<zone>`: A `a.b.c.d` for any address (CoreDNS's `pods insecure`,
//!   the mode kubeadm configures).
//! - `<d>.<c>.<b>.<a>.in-addr.arpa`: PTR to the Service whose cluster IP it is, and to
//!   `<host>.<svc>.<ns>.svc.<zone>` for each ready endpoint with that address (CoreDNS's
//!   reverse records); other addresses are forwarded (kubeadm's CoreDNS falls through).
//! A name in the zone that does not exist is NXDOMAIN; one that exists without the asked
//! type is an empty answer; both carry the zone's SOA, so resolvers cache the negative.
//! Names outside the zone are not this module's (`Answer::Elsewhere`: forwarded).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use client::obj::Obj;

/// Seconds a client may keep an answer (CoreDNS's default for the zone).
pub const TTL: u32 = 5;

/// One port of a Service or an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    /// Lowercased; empty when unnamed (no SRV record).
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
    pub port: u16,
}

#[derive(Clone, Debug)]
struct Endpoint {
    ip: Ipv4Addr,
    /// The label it is known by under its Service: its `hostname`, else its address dashed.
    label: String,
    ports: Arc<[Port]>,
}

#[derive(Clone, Debug, Default)]
struct Service {
    /// `None`: headless.
    ip: Option<Ipv4Addr>,
    external: Option<String>,
    ports: Vec<Port>,
    endpoints: Vec<Endpoint>,
}

/// What a question gets.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The name exists: its records of the asked type (none: an empty answer), and records
    /// for the additional section (the addresses of SRV targets).
    Found { answers: Vec<Record>, additionals: Vec<Record> },
    /// The name is in the zone and does not exist.
    NxDomain,
    /// Not a name of the zone: forward it.
    Elsewhere,
}

/// The zone at one moment; rebuilt whole when a Service or an EndpointSlice changes.
#[derive(Debug)]
pub struct Zone {
    /// `cluster.local`, lowercase, no trailing dot.
    domain: String,
    origin: Name,
    /// By (namespace, name).
    services: HashMap<(String, String), Service>,
    /// Namespaces with at least one Service (their `<ns>.svc.<zone>` exists).
    namespaces: std::collections::HashSet<String>,
    /// Reverse names: each address's names in the zone (with the trailing dot).
    reverse: HashMap<Ipv4Addr, Vec<String>>,
    serial: u32,
}

fn ports_of(v: &Obj) -> Vec<Port> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = p["port"].as_u64().filter(|n| (1..=65535).contains(n))? as u16;
            Some(Port { name: p["name"].as_str().unwrap_or("").to_ascii_lowercase(), proto: p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase(), port })
        })
        .collect()
}

impl Zone {
    /// The zone of `domain` holding `services` and `slices` (API objects as the informers
    /// give them). `serial` goes into the SOA (a new one per rebuild).
    pub fn build(domain: &str, services: &[Arc<Obj>], slices: &[Arc<Obj>], serial: u32) -> Zone {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let origin = Name::from_ascii(format!("{domain}.")).unwrap_or_else(|_| Name::root());
        let mut map: HashMap<(String, String), Service> = HashMap::with_capacity(services.len());
        for s in services {
            let (Some(ns), Some(name)) = (s["metadata"]["namespace"].as_str(), s["metadata"]["name"].as_str()) else { continue };
            let spec = &s["spec"];
            let external = (spec["type"] == "ExternalName").then(|| spec["externalName"].as_str().map(|n| n.trim_end_matches('.').to_ascii_lowercase())).flatten();
            let ip = spec["clusterIP"].as_str().and_then(|i| i.parse().ok());
            map.insert((ns.to_string(), name.to_ascii_lowercase()), Service { ip, external, ports: ports_of(&spec["ports"]), endpoints: vec![] });
        }
        for sl in slices {
            let (Some(ns), Some(svc)) = (sl["metadata"]["namespace"].as_str(), sl["metadata"]["labels"]["kubernetes.io/service-name"].as_str()) else { continue };
            if sl["addressType"].as_str().is_some_and(|t| t != "IPv4") {
                continue;
            }
            let Some(s) = map.get_mut(&(ns.to_string(), svc.to_ascii_lowercase())) else { continue };
            let ports: Arc<[Port]> = ports_of(&sl["ports"]).into();
            for e in sl["endpoints"].as_array().into_iter().flatten() {
                // Ready only (absent means ready, as the API says).
                if e["conditions"]["ready"] == false {
                    continue;
                }
                let hostname = e["hostname"].as_str().filter(|h| !h.is_empty()).map(str::to_ascii_lowercase);
                for ip in e["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()?.parse::<Ipv4Addr>().ok()) {
                    let label = hostname.clone().unwrap_or_else(|| dashed(ip));
                    s.endpoints.push(Endpoint { ip, label, ports: ports.clone() });
                }
            }
        }
        for s in map.values_mut() {
            s.endpoints.sort_by(|a, b| a.ip.cmp(&b.ip));
            s.endpoints.dedup_by(|a, b| a.ip == b.ip && a.label == b.label);
        }
        let namespaces = map.keys().map(|(ns, _)| ns.clone()).collect();
        let mut reverse: HashMap<Ipv4Addr, Vec<String>> = HashMap::new();
        for ((ns, name), s) in &map {
            if let Some(ip) = s.ip {
                reverse.entry(ip).or_default().push(format!("{name}.{ns}.svc.{domain}."));
            }
            for e in &s.endpoints {
                reverse.entry(e.ip).or_default().push(format!("{}.{name}.{ns}.svc.{domain}.", e.label));
            }
        }
        for names in reverse.values_mut() {
            names.sort();
            names.dedup();
        }
        Zone { domain, origin, services: map, namespaces, reverse, serial }
    }

    /// The zone's SOA record (authority section of negative answers).
    pub fn soa(&self) -> Record {
        let ns = Name::from_ascii(format!("ns.dns.{}.", self.domain)).unwrap_or_else(|_| Name::root());
        let mbox = Name::from_ascii(format!("hostmaster.{}.", self.domain)).unwrap_or_else(|_| Name::root());
        Record::from_rdata(self.origin.clone(), TTL, RData::SOA(SOA::new(ns, mbox, self.serial, 7200, 1800, 86400, TTL)))
    }

    /// Answers `qtype` for `name`.
    pub fn answer(&self, name: &Name, qtype: RecordType) -> Answer {
        let full = name.to_lowercase().to_ascii();
        let full = full.trim_end_matches('.');
        if let Some(rev) = full.strip_suffix(".in-addr.arpa") {
            return self.pointer(name, rev, qtype);
        }
        let rest = if full == self.domain {
            ""
        } else {
            match full.strip_suffix(self.domain.as_str()).and_then(|r| r.strip_suffix('.')) {
                Some(r) => r,
                None => return Answer::Elsewhere,
            }
        };
        let found = |answers: Vec<Record>| Answer::Found { answers, additionals: vec![] };
        let labels: Vec<&str> = if rest.is_empty() { vec![] } else { rest.split('.').collect() };
        match labels.as_slice() {
            [] => found(if matches!(qtype, RecordType::SOA | RecordType::ANY) { vec![self.soa()] } else { vec![] }),
            ["svc"] | ["pod"] => found(vec![]),
            [ns, "svc"] => {
                if self.namespaces.contains(*ns) {
                    found(vec![])
                } else {
                    Answer::NxDomain
                }
            }
            [svc, ns, "svc"] => match self.services.get(&(ns.to_string(), svc.to_string())) {
                Some(s) => self.service(name, s, svc, ns, qtype),
                None => Answer::NxDomain,
            },
            [host, svc, ns, "svc"] if !host.starts_with('_') => {
                let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else { return Answer::NxDomain };
                let ips: Vec<Ipv4Addr> = if s.ip.is_none() { s.endpoints.iter().filter(|e| e.label == *host).map(|e| e.ip).collect() } else { vec![] };
                if ips.is_empty() {
                    return Answer::NxDomain;
                }
                found(if matches!(qtype, RecordType::A | RecordType::ANY) { ips.into_iter().map(|ip| a(name, ip)).collect() } else { vec![] })
            }
            [port, proto, svc, ns, "svc"] => {
                let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else { return Answer::NxDomain };
                let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else { return Answer::NxDomain };
                let want = |p: &Port| p.name == port && p.proto == proto;
                let exists = if s.ip.is_some() { s.ports.iter().any(want) } else { s.endpoints.iter().any(|e| e.ports.iter().any(want)) };
                if !exists {
                    return Answer::NxDomain;
                }
                if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    return found(vec![]);
                }
                self.srv(name, s, svc, ns, want)
            }
            [ip, _ns, "pod"] => match undashed(ip) {
                Some(ip) => found(if matches!(qtype, RecordType::A | RecordType::ANY) { vec![a(name, ip)] } else { vec![] }),
                None => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }

    /// A reverse name (`rev`: its labels before `in-addr.arpa`): PTR records for an address
    /// of the zone, else not ours.
    fn pointer(&self, name: &Name, rev: &str, qtype: RecordType) -> Answer {
        let octets: Vec<u8> = rev.split('.').filter_map(|l| if l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) { l.parse().ok() } else { None }).collect();
        let Ok([d, c, b, a]) = <[u8; 4]>::try_from(octets.as_slice()) else { return Answer::Elsewhere };
        if rev.split('.').count() != 4 {
            return Answer::Elsewhere;
        }
        let Some(names) = self.reverse.get(&Ipv4Addr::new(a, b, c, d)) else { return Answer::Elsewhere };
        let answers = if matches!(qtype, RecordType::PTR | RecordType::ANY) {
            names.iter().filter_map(|n| Name::from_ascii(n).ok()).map(|n| Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(n)))).collect()
        } else {
            vec![]
        };
        Answer::Found { answers, additionals: vec![] }
    }

    fn service(&self, name: &Name, s: &Service, svc: &str, ns: &str, qtype: RecordType) -> Answer {
        if let Some(ext) = &s.external {
            let Ok(target) = Name::from_ascii(format!("{ext}.")) else { return Answer::Found { answers: vec![], additionals: vec![] } };
            // The CNAME answers every type; the client's resolver follows it.
            return Answer::Found { answers: vec![Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target)))], additionals: vec![] };
        }
        match qtype {
            RecordType::A | RecordType::ANY => {
                let answers = match s.ip {
                    Some(ip) => vec![a(name, ip)],
                    None => {
                        let mut ips: Vec<Ipv4Addr> = s.endpoints.iter().map(|e| e.ip).collect();
                        ips.dedup();
                        ips.into_iter().map(|ip| a(name, ip)).collect()
                    }
                };
                Answer::Found { answers, additionals: vec![] }
            }
            RecordType::SRV => self.srv(name, s, svc, ns, |p| !p.name.is_empty()),
            _ => Answer::Found { answers: vec![], additionals: vec![] },
        }
    }

    /// SRV records for the ports `want` picks: at the Service's name, or at each endpoint's
    /// under a headless Service (with their addresses as additionals).
    fn srv(&self, name: &Name, s: &Service, svc: &str, ns: &str, want: impl Fn(&Port) -> bool) -> Answer {
        let base = format!("{svc}.{ns}.svc.{}.", self.domain);
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match s.ip {
            Some(ip) => {
                let Ok(target) = Name::from_ascii(&base) else { return Answer::NxDomain };
                let ports: Vec<&Port> = s.ports.iter().filter(|p| want(p)).collect();
                let weight = weight(ports.len());
                for p in &ports {
                    answers.push(Record::from_rdata(name.clone(), TTL, RData::SRV(SRV::new(0, weight, p.port, target.clone()))));
                }
                if !ports.is_empty() {
                    additionals.push(a(&target, ip));
                }
            }
            None => {
                let picked: Vec<(&Endpoint, &Port)> = s.endpoints.iter().flat_map(|e| e.ports.iter().filter(|p| want(p)).map(move |p| (e, p))).collect();
                let weight = weight(picked.len());
                for (e, p) in picked {
                    let Ok(target) = Name::from_ascii(format!("{}.{base}", e.label)) else { continue };
                    answers.push(Record::from_rdata(name.clone(), TTL, RData::SRV(SRV::new(0, weight, p.port, target.clone()))));
                    let addr = a(&target, e.ip);
                    if !additionals.contains(&addr) {
                        additionals.push(addr);
                    }
                }
            }
        }
        Answer::Found { answers, additionals }
    }
}

/// Each of `n` SRV records' share of 100 (CoreDNS weighs them so).
fn weight(n: usize) -> u16 {
    if n == 0 { 0 } else { (100 / n).max(1) as u16 }
}

fn a(name: &Name, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name.clone(), TTL, RData::A(A(ip)))
}

/// `10.244.0.5` as a DNS label: `10-244-0-5`.
pub fn dashed(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}-{}-{}-{}", o[0], o[1], o[2], o[3])
}

fn undashed(label: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut o = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        o[i] = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zone() -> Zone {
        let services = vec![
            Arc::new(Obj::from(json!({"metadata": {"namespace": "default", "name": "web"}, "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 9000}]}}))),
            Arc::new(Obj::from(json!({"metadata": {"namespace": "db", "name": "pg"}, "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}}))),
            Arc::new(Obj::from(json!({"metadata": {"namespace": "default", "name": "out"}, "spec": {"type": "ExternalName", "externalName": "Example.COM."}}))),
        ];
        let slices = vec![
            Arc::new(Obj::from(json!({"metadata": {"namespace": "db", "labels": {"kubernetes.io/service-name": "pg"}}, "addressType": "IPv4", "ports": [{"name": "sql", "port": 5433, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.244.0.7"], "hostname": "pg-0", "conditions": {"ready": true}},
                    {"addresses": ["10.244.0.8"], "conditions": {}},
                    {"addresses": ["10.244.0.9"], "hostname": "pg-2", "conditions": {"ready": false}},
                ]}))),
            // Another namespace's slice for a Service of the same name is not this one's.
            Arc::new(Obj::from(json!({"metadata": {"namespace": "other", "labels": {"kubernetes.io/service-name": "pg"}}, "endpoints": [{"addresses": ["1.1.1.1"]}]}))),
        ];
        Zone::build("cluster.local", &services, &slices, 1)
    }

    fn ask(z: &Zone, name: &str, t: RecordType) -> Answer {
        z.answer(&Name::from_ascii(name).unwrap(), t)
    }

    fn rdata(a: &Answer) -> Vec<String> {
        match a {
            Answer::Found { answers, .. } => answers.iter().map(|r| r.data.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn addresses_of_the_zone_have_reverse_names_and_others_are_forwarded() {
        let z = zone();
        assert_eq!(rdata(&ask(&z, "20.0.96.10.in-addr.arpa.", RecordType::PTR)), ["web.default.svc.cluster.local."]);
        assert_eq!(rdata(&ask(&z, "7.0.244.10.IN-ADDR.ARPA", RecordType::PTR)), ["pg-0.pg.db.svc.cluster.local."]);
        assert_eq!(rdata(&ask(&z, "8.0.244.10.in-addr.arpa.", RecordType::PTR)), ["10-244-0-8.pg.db.svc.cluster.local."]);
        // The name exists; other types get an empty answer.
        assert_eq!(rdata(&ask(&z, "20.0.96.10.in-addr.arpa.", RecordType::A)), Vec::<String>::new());
        // Not ready, unknown, or not an address: not ours.
        for other in ["9.0.244.10.in-addr.arpa.", "1.1.1.1.in-addr.arpa.", "0.96.10.in-addr.arpa.", "x.20.0.96.10.in-addr.arpa.", "300.0.96.10.in-addr.arpa."] {
            assert_eq!(ask(&z, other, RecordType::PTR), Answer::Elsewhere, "{other}");
        }
    }

    #[test]
    fn services_answer_their_cluster_ip_or_their_ready_endpoints() {
        let z = zone();
        assert_eq!(rdata(&ask(&z, "web.default.svc.cluster.local.", RecordType::A)), ["10.96.0.20"]);
        // Case does not matter; a name without the trailing dot is the same name.
        assert_eq!(rdata(&ask(&z, "WEB.Default.SVC.cluster.local", RecordType::A)), ["10.96.0.20"]);
        assert_eq!(rdata(&ask(&z, "pg.db.svc.cluster.local.", RecordType::A)), ["10.244.0.7", "10.244.0.8"], "ready endpoints only");
        assert_eq!(rdata(&ask(&z, "pg-0.pg.db.svc.cluster.local.", RecordType::A)), ["10.244.0.7"]);
        assert_eq!(rdata(&ask(&z, "10-244-0-8.pg.db.svc.cluster.local.", RecordType::A)), ["10.244.0.8"]);
        assert_eq!(ask(&z, "pg-2.pg.db.svc.cluster.local.", RecordType::A), Answer::NxDomain, "not ready");
        assert_eq!(ask(&z, "web-0.web.default.svc.cluster.local.", RecordType::A), Answer::NxDomain, "endpoint names are headless Services'");
        assert_eq!(rdata(&ask(&z, "out.default.svc.cluster.local.", RecordType::A)), ["example.com."]);
        // Exists, another type: empty. Absent: NXDOMAIN.
        assert_eq!(rdata(&ask(&z, "web.default.svc.cluster.local.", RecordType::AAAA)), Vec::<String>::new());
        assert_eq!(ask(&z, "nope.default.svc.cluster.local.", RecordType::A), Answer::NxDomain);
        assert_eq!(ask(&z, "pg.other.svc.cluster.local.", RecordType::A), Answer::NxDomain);
        assert_eq!(rdata(&ask(&z, "default.svc.cluster.local.", RecordType::A)), Vec::<String>::new());
        assert_eq!(ask(&z, "nowhere.svc.cluster.local.", RecordType::A), Answer::NxDomain);
        assert_eq!(ask(&z, "a.b.c.d.e.svc.cluster.local.", RecordType::A), Answer::NxDomain);
        // Outside the zone: forwarded.
        assert_eq!(ask(&z, "example.com.", RecordType::A), Answer::Elsewhere);
        assert_eq!(ask(&z, "notcluster.local.", RecordType::A), Answer::Elsewhere);
    }

    #[test]
    fn named_ports_have_srv_records() {
        let z = zone();
        let web = ask(&z, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(rdata(&web), ["0 100 80 web.default.svc.cluster.local."]);
        let Answer::Found { additionals, .. } = &web else { unreachable!() };
        assert_eq!(additionals.iter().map(|r| r.data.to_string()).collect::<Vec<_>>(), ["10.96.0.20"]);
        assert_eq!(ask(&z, "_http._udp.web.default.svc.cluster.local.", RecordType::SRV), Answer::NxDomain);
        // Headless: one per ready endpoint, at its name, with the endpoints' port.
        assert_eq!(rdata(&ask(&z, "_sql._tcp.pg.db.svc.cluster.local.", RecordType::SRV)), ["0 50 5433 pg-0.pg.db.svc.cluster.local.", "0 50 5433 10-244-0-8.pg.db.svc.cluster.local."]);
        // The Service's own name lists its named ports.
        assert_eq!(rdata(&ask(&z, "web.default.svc.cluster.local.", RecordType::SRV)), ["0 100 80 web.default.svc.cluster.local."]);
    }

    #[test]
    fn pods_are_named_by_their_address() {
        let z = zone();
        assert_eq!(rdata(&ask(&z, "10-244-1-2.default.pod.cluster.local.", RecordType::A)), ["10.244.1.2"]);
        for bad in ["10-244-1.default.pod.cluster.local.", "10-244-1-256.default.pod.cluster.local.", "a-b-c-d.default.pod.cluster.local.", "10-244-1--2.x.pod.cluster.local."] {
            assert_eq!(ask(&z, bad, RecordType::A), Answer::NxDomain, "{bad}");
        }
    }

    #[test]
    fn the_apex_has_an_soa() {
        let z = zone();
        let soa = rdata(&ask(&z, "cluster.local.", RecordType::SOA));
        assert_eq!(soa.len(), 1);
        assert!(soa[0].starts_with("ns.dns.cluster.local. hostmaster.cluster.local. 1 "), "{soa:?}");
        assert_eq!(dashed(Ipv4Addr::new(10, 0, 0, 1)), "10-0-0-1");
    }
}
