//! A pod's `/etc/resolv.conf`, as the kubelet writes it from `dnsPolicy` and `dnsConfig`.

use serde_json::Value;

/// The cluster's DNS as a node knows it (kubelet's `--cluster-dns` and `--cluster-domain`).
#[derive(Clone, Debug)]
pub struct ClusterDnsConfig {
    pub server: std::net::Ipv4Addr,
    pub domain: String,
}

/// The host's resolver settings (its `/etc/resolv.conf`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolv {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Kubernetes' limits: 3 name servers (glibc reads no more), 32 search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

impl Resolv {
    /// Reads a resolv.conf's `nameserver`, `search` (`domain`) and `options` lines.
    pub fn parse(text: &str) -> Resolv {
        let mut r = Resolv::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match w.next() {
                Some("nameserver") => r.nameservers.extend(w.next().map(str::to_string)),
                Some("search" | "domain") => r.searches = w.map(str::to_string).collect(),
                Some("options") => r.options.extend(w.map(str::to_string)),
                _ => {}
            }
        }
        r
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for n in &self.nameservers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }
}

/// The resolv.conf of `pod` on a node whose own is `host`: `None` keeps the host's file
/// (`dnsPolicy: Default`, or a cluster without DNS). `Err` is a `dnsPolicy` the pod
/// cannot have (a `None` policy without `dnsConfig` is refused at admission; here too).
pub fn for_pod(pod: &Value, host: &Resolv, cluster: Option<&ClusterDnsConfig>) -> Result<Option<Resolv>, String> {
    let spec = &pod["spec"];
    let host_network = spec["hostNetwork"] == true;
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut r = match (policy, cluster) {
        // ClusterFirst in the host's network behaves as Default (as in Kubernetes).
        ("ClusterFirst", Some(c)) if !host_network => cluster_first(ns, host, c),
        ("ClusterFirstWithHostNet", Some(c)) => cluster_first(ns, host, c),
        ("ClusterFirst" | "ClusterFirstWithHostNet" | "Default", _) => host.clone(),
        ("None", _) => Resolv::default(),
        (other, _) => return Err(format!("unsupported dnsPolicy {other:?}")),
    };
    let cfg = &spec["dnsConfig"];
    if policy == "None" && !cfg.is_object() {
        return Err("dnsPolicy None needs dnsConfig".into());
    }
    for n in cfg["nameservers"].as_array().into_iter().flatten().filter_map(|n| n.as_str()) {
        if !r.nameservers.iter().any(|x| x == n) {
            r.nameservers.push(n.to_string());
        }
    }
    for s in cfg["searches"].as_array().into_iter().flatten().filter_map(|n| n.as_str()) {
        if !r.searches.iter().any(|x| x == s) {
            r.searches.push(s.to_string());
        }
    }
    // An option given in dnsConfig replaces the one of the same name.
    for o in cfg["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else { continue };
        r.options.retain(|x| x.split(':').next() != Some(name));
        r.options.push(match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        });
    }
    r.nameservers.truncate(MAX_NAMESERVERS);
    r.searches.truncate(MAX_SEARCHES);
    if policy == "Default" && cfg.is_null() {
        return Ok(None);
    }
    Ok(Some(r))
}

fn cluster_first(ns: &str, host: &Resolv, c: &ClusterDnsConfig) -> Resolv {
    let d = &c.domain;
    let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
    searches.extend(host.searches.iter().filter(|s| !searches.contains(s)).cloned().collect::<Vec<_>>());
    Resolv { nameservers: vec![c.server.to_string()], searches, options: vec!["ndots:5".into()] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host() -> Resolv {
        Resolv::parse("# comment\nnameserver 127.0.0.53\nsearch corp.example\noptions edns0 trust-ad\n")
    }

    fn cluster() -> ClusterDnsConfig {
        ClusterDnsConfig { server: "10.96.0.10".parse().unwrap(), domain: "cluster.local".into() }
    }

    #[test]
    fn cluster_first_searches_the_namespace_then_the_host() {
        let pod = json!({"metadata": {"namespace": "team"}, "spec": {}});
        let r = for_pod(&pod, &host(), Some(&cluster())).unwrap().unwrap();
        assert_eq!(r.render(), "search team.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.96.0.10\noptions ndots:5\n");
    }

    #[test]
    fn host_network_and_default_keep_the_host_s_file() {
        let hn = json!({"metadata": {"namespace": "a"}, "spec": {"hostNetwork": true}});
        assert_eq!(for_pod(&hn, &host(), Some(&cluster())).unwrap().unwrap(), host());
        let hn2 = json!({"metadata": {"namespace": "a"}, "spec": {"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}});
        assert_eq!(for_pod(&hn2, &host(), Some(&cluster())).unwrap().unwrap().nameservers, ["10.96.0.10"]);
        let d = json!({"metadata": {"namespace": "a"}, "spec": {"dnsPolicy": "Default"}});
        assert_eq!(for_pod(&d, &host(), Some(&cluster())).unwrap(), None);
        // A node without cluster DNS: ClusterFirst falls back to the host's.
        assert_eq!(for_pod(&json!({"spec": {}}), &host(), None).unwrap().unwrap(), host());
    }

    #[test]
    fn dns_config_adds_and_overrides() {
        let pod = json!({"metadata": {"namespace": "a"}, "spec": {"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1", "1.1.1.1", "8.8.8.8", "9.9.9.9", "4.4.4.4"], "searches": ["x.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}});
        let r = for_pod(&pod, &host(), Some(&cluster())).unwrap().unwrap();
        assert_eq!(r.render(), "search x.example\nnameserver 1.1.1.1\nnameserver 8.8.8.8\nnameserver 9.9.9.9\noptions ndots:2 edns0\n");
        let over = json!({"metadata": {"namespace": "a"}, "spec": {"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}});
        assert_eq!(for_pod(&over, &host(), Some(&cluster())).unwrap().unwrap().options, ["ndots:1"]);
        assert!(for_pod(&json!({"spec": {"dnsPolicy": "None"}}), &host(), None).is_err());
        assert!(for_pod(&json!({"spec": {"dnsPolicy": "Sideways"}}), &host(), None).is_err());
    }
}
