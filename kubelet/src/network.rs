//! Pod networks on the real node: each pod (but `hostNetwork` ones) gets a network namespace
//! of its own, joined to the node's bridge by a veth pair, with an address from the node's
//! `podCIDR` (the bridge holds the first, the gateway), a loopback and a default route. Its
//! containers share it, as in Kubernetes. The host reaches pods at their addresses through
//! the bridge; pods reach each other through it.
//!
//! Every host object carries the node's identity (a hash of its name and data directory),
//! so several clusters on one host never touch each other's: the bridge `cb<id>`, host-side
//! veths `cv<id><pod>`, namespaces `cn<id>-<pod uid>` (under /run/netns, as `ip netns`
//! keeps them). Addresses are leased in files (`D/net/ips/<address>` holding the pod's uid),
//! so a restarted node knows them; at start it removes what belongs to pods that are gone.
//!
//! The links are made with iproute2's `ip` in batch mode: one process for the host side and
//! one inside the pod's namespace per pod (about 4 ms in all).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// An IPv4 network: address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, b) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (address/bits)"))?;
        let base: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let bits: u8 = b.parse().ok().filter(|b| *b <= 32).ok_or_else(|| format!("{b:?} is not a prefix length (0-32)"))?;
        let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
        if u32::from(base) & !mask != 0 {
            return Err(format!("{s}: the address has bits set past the prefix"));
        }
        Ok(Cidr { base, bits })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.bits)
    }
}

impl Cidr {
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.bits)
    }

    /// Host number `n` of the network.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base).wrapping_add(n))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.bits == 0 { 0 } else { u32::MAX << (32 - self.bits) };
        u32::from(ip) & mask == u32::from(self.base)
    }

    /// The `i`-th subnet of `bits` (a node's pod range in the cluster's).
    pub fn subnet(&self, bits: u8, i: u32) -> Option<Cidr> {
        if bits < self.bits || bits > 30 || (i as u64) >= (1u64 << (bits - self.bits)) {
            return None;
        }
        Some(Cidr { base: Ipv4Addr::from(u32::from(self.base) + (i << (32 - bits))), bits })
    }
}

/// A pod's place on the network.
#[derive(Clone, Debug)]
pub struct PodNet {
    pub ip: Ipv4Addr,
    /// The namespace's file (`/run/netns/...`): containers join it.
    pub netns: PathBuf,
}

/// The node's pod network.
pub struct NodeNetwork {
    id: String,
    pub pod_cidr: Cidr,
    pub gateway: Ipv4Addr,
    leases: PathBuf,
    /// The Service range, routed to nothing on the host (cluster IPs with endpoints are local
    /// addresses of the bridge: `proxy.rs`).
    pub service_cidr: Option<Cidr>,
}

/// A short, stable identity for this node's host objects.
pub fn identity(node: &str, data_dir: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in node.as_bytes().iter().chain(data_dir.as_os_str().as_encoded_bytes()) {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:05x}", h & 0xfffff)
}

/// Runs `ip` with a batch of commands (one per line), optionally inside a namespace.
fn ip_batch(netns: Option<&str>, batch: &str) -> Result<(), String> {
    use std::io::Write;
    let mut cmd = std::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| format!("running ip (iproute2): {e}"))?;
    child.stdin.take().expect("piped").write_all(batch.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip_out(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("ip").args(args).output().map_err(|e| format!("running ip (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NodeNetwork {
    /// Makes (or takes over) the node's bridge for `pod_cidr`. Fails, saying why, when this
    /// host cannot (no iproute2, no permission, the range already routed elsewhere): the node
    /// then runs pods in the host's network.
    pub fn setup(node: &str, data_dir: &Path, pod_cidr: Cidr, service_cidr: Option<Cidr>) -> Result<NodeNetwork, String> {
        if pod_cidr.bits > 29 {
            return Err(format!("the pod range {pod_cidr} is too small"));
        }
        let id = identity(node, data_dir);
        let bridge = format!("cb{id}");
        let gateway = pod_cidr.nth(1);
        // The range must not be routed through anything but our bridge.
        let routes = ip_out(&["-o", "-4", "route", "show", "match", &pod_cidr.nth(1).to_string()])?;
        for r in routes.lines() {
            let dev = r.split_whitespace().skip_while(|w| *w != "dev").nth(1).unwrap_or("");
            let dst = r.split_whitespace().next().unwrap_or("");
            if dst != "default" && dev != bridge {
                return Err(format!("the pod range {pod_cidr} is already routed on this host ({r}); give this cluster another --cluster-cidr"));
            }
        }
        let exists = ip_out(&["-o", "link", "show", "dev", &bridge]).is_ok();
        let mut batch = String::new();
        if !exists {
            batch.push_str(&format!("link add {bridge} type bridge\n"));
        }
        batch.push_str(&format!("addr replace {gateway}/{} dev {bridge}\nlink set {bridge} up\n", pod_cidr.bits));
        if let Some(s) = service_cidr {
            // The Service range must not be a network this host reaches through a link.
            let routes = ip_out(&["-o", "-4", "route", "show", "match", &s.nth(1).to_string()])?;
            if let Some(r) = routes.lines().find(|r| !r.starts_with("default") && !r.starts_with("blackhole")) {
                return Err(format!("the Service range {s} is already routed on this host ({r}); give this cluster another --service-cluster-ip-range"));
            }
            batch.push_str(&format!("route replace blackhole {s}\n"));
        }
        if let Err(e) = ip_batch(None, &batch) {
            // Nothing half-made is left behind.
            if !exists {
                let _ = ip_out(&["link", "del", &bridge]);
            }
            return Err(e);
        }
        let leases = data_dir.join("net").join("ips");
        std::fs::create_dir_all(&leases).map_err(|e| format!("creating {}: {e}", leases.display()))?;
        Ok(NodeNetwork { id, pod_cidr, gateway, leases, service_cidr })
    }

    /// A pod's namespace name (its uid: unique).
    fn ns_name(&self, uid: &str) -> String {
        format!("cn{}-{uid}", self.id)
    }

    /// A pod's link on the host: named from its address's host number, unique while it holds
    /// the lease (a uid's prefix could be shared by two pods). Its peer is the pod's eth0.
    fn host_link(&self, ip: Ipv4Addr) -> String {
        let n = u32::from(ip).wrapping_sub(u32::from(self.pod_cidr.base));
        format!("cv{}{n:03x}", self.id)
    }

    /// The address leased to `uid`, if any.
    fn leased(&self, uid: &str) -> Option<Ipv4Addr> {
        std::fs::read_dir(&self.leases).ok()?.flatten().find(|e| std::fs::read_to_string(e.path()).is_ok_and(|o| o == uid)).and_then(|e| e.file_name().to_string_lossy().parse().ok())
    }

    /// The address leased to `uid`, leasing the lowest free one when it has none.
    fn lease(&self, uid: &str) -> Result<Ipv4Addr, String> {
        let mut taken = HashSet::new();
        for e in std::fs::read_dir(&self.leases).map_err(|e| e.to_string())?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if std::fs::read_to_string(e.path()).is_ok_and(|o| o == uid) {
                return name.parse().map_err(|_| format!("lease file {name:?}"));
            }
            taken.insert(name);
        }
        for n in 2..(self.pod_cidr.size() - 1) as u32 {
            let ip = self.pod_cidr.nth(n);
            let name = ip.to_string();
            if taken.contains(&name) {
                continue;
            }
            // create_new: two pods never take one address.
            match std::fs::OpenOptions::new().write(true).create_new(true).open(self.leases.join(&name)) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(uid.as_bytes()).map_err(|e| e.to_string())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("the node's pod range {} is exhausted", self.pod_cidr))
    }

    fn release(&self, uid: &str) {
        for e in std::fs::read_dir(&self.leases).into_iter().flatten().flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|o| o == uid) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Gives pod `uid` its namespace, link and address (again after a restart: what exists
    /// is kept).
    pub fn attach(&self, uid: &str) -> Result<PodNet, String> {
        let ip = self.lease(uid)?;
        let host_if = self.host_link(ip);
        let ns = self.ns_name(uid);
        let netns = PathBuf::from("/run/netns").join(&ns);
        if netns.exists() && ip_out(&["-o", "link", "show", "dev", &host_if]).is_ok() {
            return Ok(PodNet { ip, netns });
        }
        let made = (|| {
            // What a crash may have left half-made (one process less when nothing is).
            if netns.exists() || Path::new("/sys/class/net").join(&host_if).exists() {
                let _ = ip_batch(None, &format!("netns del {ns}\nlink del {host_if}\n"));
            }
            // The pod's end is made inside its namespace, as eth0: moving a link between
            // namespaces waits for an RCU grace period (about 17 ms here, and it serializes
            // pods started together).
            ip_batch(None, &format!("netns add {ns}\nlink add {host_if} type veth peer name eth0 netns {ns}\nlink set {host_if} master cb{} up\n", self.id))?;
            ip_batch(Some(&ns), &format!("link set lo up\naddr add {ip}/{} dev eth0\nlink set eth0 up\nroute add default via {}\n", self.pod_cidr.bits, self.gateway))
        })();
        if let Err(e) = made {
            self.detach(uid);
            return Err(e);
        }
        Ok(PodNet { ip, netns })
    }

    /// Removes pod `uid`'s namespace, link and lease.
    pub fn detach(&self, uid: &str) {
        if let Some(ip) = self.leased(uid) {
            let _ = ip_out(&["link", "del", &self.host_link(ip)]);
        }
        let _ = ip_out(&["netns", "del", &self.ns_name(uid)]);
        self.release(uid);
    }

    /// Removes what this node made for pods that are not in `live` (after a restart).
    pub fn reconcile(&self, live: &HashSet<String>) -> usize {
        let mut removed = 0;
        let prefix = format!("cn{}-", self.id);
        for name in ip_out(&["netns", "list"]).unwrap_or_default().lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(uid) = name.strip_prefix(&prefix)
                && !live.contains(uid)
            {
                self.detach(uid);
                removed += 1;
            }
        }
        // Leases of pods gone without a namespace.
        for e in std::fs::read_dir(&self.leases).into_iter().flatten().flatten() {
            if let Ok(owner) = std::fs::read_to_string(e.path())
                && !live.contains(&owner)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        removed
    }

    /// Removes every pod namespace and link of this node, and its bridge (the node stops;
    /// address leases stay for its next start).
    pub fn teardown(&self) {
        let prefix = format!("cn{}-", self.id);
        for name in ip_out(&["netns", "list"]).unwrap_or_default().lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(uid) = name.strip_prefix(&prefix) {
                if let Some(ip) = self.leased(uid) {
                    let _ = ip_out(&["link", "del", &self.host_link(ip)]);
                }
                let _ = ip_out(&["netns", "del", &self.ns_name(uid)]);
            }
        }
        let _ = ip_out(&["link", "del", &format!("cb{}", self.id)]);
        if let Some(s) = self.service_cidr {
            let _ = ip_out(&["route", "del", "blackhole", &s.to_string()]);
        }
    }

    /// The prefix of this node's pods' namespace names (`/run/netns/<prefix><uid>`).
    pub fn netns_prefix(&self) -> String {
        format!("cn{}-", self.id)
    }

    /// The link cluster IPs live on: the bridge (a dummy link would need a kernel module
    /// that not every host has).
    pub fn service_link(&self) -> String {
        format!("cb{}", self.id)
    }
}

/// Makes each of `ips` a local address of `link` (cluster IPs the proxy serves): one `ip`
/// process for all (a thousand Services are one batch, not a thousand processes). Returns
/// the addresses that could not be added, with why.
pub fn add_addresses(link: &str, ips: &[Ipv4Addr]) -> Vec<(Ipv4Addr, String)> {
    let batch: String = ips.iter().map(|ip| format!("addr replace {ip}/32 dev {link}\n")).collect();
    if ips.is_empty() || ip_batch(None, &batch).is_ok() {
        return vec![];
    }
    // The batch stops at its first failure: each alone says which.
    ips.iter().filter_map(|ip| ip_out(&["addr", "replace", &format!("{ip}/32"), "dev", link]).err().map(|e| (*ip, e))).collect()
}

/// Removes cluster IPs from `link` (one `ip` process; failures, addresses already gone, are
/// ignored: `-force` goes on past them).
pub fn del_addresses(link: &str, ips: &[Ipv4Addr]) {
    if ips.is_empty() {
        return;
    }
    let batch: String = ips.iter().map(|ip| format!("addr del {ip}/32 dev {link}\n")).collect();
    let _ = ip_batch_force(&batch);
}

/// `ip -force -batch`: every line is tried.
fn ip_batch_force(batch: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip").args(["-force", "-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| format!("running ip (iproute2): {e}"))?;
    child.stdin.take().expect("piped").write_all(batch.as_bytes()).map_err(|e| e.to_string())?;
    child.wait().map_err(|e| e.to_string()).map(|_| ())
}

/// Where pod `uid`'s namespace is, when the node gives pods their own.
pub fn netns_path(n: Option<&NodeNetwork>, uid: &str) -> Option<PathBuf> {
    n.map(|n| PathBuf::from("/run/netns").join(n.ns_name(uid)))
}

/// Connects to `addr` from inside the network namespace at `netns` (a thread of its own
/// enters it, connects and ends; the socket stays in that namespace).
pub async fn connect_in(netns: &Path, addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let ns = std::fs::File::open(netns)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only (it ends right after), with an open namespace file.
        let r = if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
        };
        let _ = tx.send(r);
    });
    let s = rx.await.map_err(|_| std::io::Error::other("the connecting thread ended"))??;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

/// Relays TCP connections from `listen` to `to` (pods reach the API server, which listens
/// on the node's loopback, at their gateway). At most 1,024 at once; more wait in the
/// listener's backlog.
pub async fn relay(listen: std::net::SocketAddr, to: std::net::SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(1024));
    Ok(tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let Ok((mut a, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                drop(permit);
            });
        }
    }))
}

/// The /etc/hosts of a pod with its own network, as the kubelet writes it.
pub fn hosts_file(ip: Ipv4Addr, hostname: &str, fqdn: Option<&str>, aliases: &serde_json::Value) -> String {
    let mut s = String::from("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
    match fqdn {
        Some(f) => s.push_str(&format!("{ip}\t{f}\t{hostname}\n")),
        None => s.push_str(&format!("{ip}\t{hostname}\n")),
    }
    let mut extra = String::new();
    for a in aliases.as_array().into_iter().flatten() {
        let names: Vec<&str> = a["hostnames"].as_array().into_iter().flatten().filter_map(|h| h.as_str()).collect();
        if let Some(i) = a["ip"].as_str()
            && !names.is_empty()
        {
            extra.push_str(&format!("{i}\t{}\n", names.join("\t")));
        }
    }
    if !extra.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        s.push_str(&extra);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_split() {
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.244.3.0/24");
        assert!(c.subnet(24, 256).is_none());
        assert!("10.244.0.1/16".parse::<Cidr>().is_err(), "host bits set");
        assert!("10.244.0.0".parse::<Cidr>().is_err());
        assert!("10.244.0.0/33".parse::<Cidr>().is_err());
        let n: Cidr = "10.244.3.0/24".parse().unwrap();
        assert_eq!(n.nth(1), Ipv4Addr::new(10, 244, 3, 1));
        assert!(n.contains(Ipv4Addr::new(10, 244, 3, 200)) && !n.contains(Ipv4Addr::new(10, 244, 4, 1)));
    }

    #[test]
    fn identities_differ_by_node_and_directory() {
        let a = identity("node-a", Path::new("/tmp/x"));
        assert_eq!(a.len(), 5);
        assert_ne!(a, identity("node-a", Path::new("/tmp/y")));
        assert_ne!(a, identity("node-b", Path::new("/tmp/x")));
        // Link names fit the kernel's 15 bytes (a /20 range's host numbers included).
        assert!(format!("cv{a}{:03x}", 4094).len() <= 15);
    }

    #[test]
    fn the_hosts_file_names_the_pod_and_its_aliases() {
        let h = hosts_file(Ipv4Addr::new(10, 244, 0, 5), "web", Some("web.sub.ns.svc.cluster.local"), &serde_json::json!([{"ip": "1.2.3.4", "hostnames": ["a", "b"]}]));
        assert!(h.contains("10.244.0.5\tweb.sub.ns.svc.cluster.local\tweb\n"));
        assert!(h.contains("1.2.3.4\ta\tb\n"));
    }
}
