//! NetworkPolicy on a real node: each of its pods with a network of its own gets, inside its
//! own network namespace, an nftables table that enforces the policies selecting it
//! ([`rules`]). Nothing is programmed on the host: a pod's rules live and die with its
//! namespace, and no host-wide setting (IP forwarding, bridge netfilter) is needed.
//!
//! The agent watches NetworkPolicies, pods and namespaces (cluster-wide, for peers: a
//! node's own identity may not list other nodes' pods, so it runs as
//! `system:capstan:network-policy-agent`, as a CNI's node agent has its own ServiceAccount),
//! and on a change (20 ms after the first of a burst) renders every local pod's table and
//! loads the ones that changed with `nft -f` in the pod's namespace, one transaction each.
//! A pod's rules are in place once its address is in its status (the peers' view of it
//! needs that too): a connection in the first milliseconds of a pod's life is not judged.
//! Without `nft` (nftables), the agent says once that policies are not enforced.

pub mod rules;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use client::obj::Obj;

use crate::client::Client;
use crate::client::informer::{Informer, Informers};

/// What the agent needs of the node.
pub struct Settings {
    pub node_name: String,
    /// `/run/netns/` names of pods' namespaces are this and the pod's uid.
    pub netns_prefix: String,
    /// The node's address on its bridge (pods' gateway).
    pub node_ip: std::net::Ipv4Addr,
    pub service_range: Option<String>,
}

/// What the agent last programmed from, for the node's Service proxy to judge Service
/// connections by the same policies (`rules::permits`): its connections to endpoints come
/// from the node, which the pods' own rules always let through. Empty (everything allowed)
/// where the agent does not enforce policies.
#[derive(Clone, Default)]
pub struct View(Arc<std::sync::RwLock<Option<Arc<Snapshot>>>>);

pub struct Snapshot {
    policies: Vec<Arc<Obj>>,
    pods: Vec<Arc<Obj>>,
    namespaces: HashMap<String, Obj>,
    node: std::net::Ipv4Addr,
    service_range: Option<String>,
}

impl View {
    /// Whether `src` may connect to `dst`'s `port` (`proto`: tcp, udp).
    pub fn permits(&self, src: std::net::IpAddr, dst: std::net::IpAddr, proto: &str, port: u16) -> bool {
        let Some(s) = self.0.read().unwrap().clone() else { return true };
        let (std::net::IpAddr::V4(src), std::net::IpAddr::V4(dst)) = (src, dst) else { return true };
        let w = rules::World { policies: &s.policies, pods: &s.pods, namespaces: &s.namespaces, node: s.node, service_range: s.service_range.clone() };
        rules::permits(&w, src, dst, proto, port)
    }
}

/// The running agent; dropping it stops it (the pods keep their last rules).
pub struct PolicyAgent {
    _informers: Informers,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether nftables' `nft` can be run here.
pub fn nft_available() -> Result<(), String> {
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("nft --version failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("nft (nftables) not found: {e}; apt-get install -y nftables")),
    }
}

impl PolicyAgent {
    pub fn start(client: Client, settings: Settings, view: View) -> PolicyAgent {
        let informers = Informers::new(client);
        let policies = informers.get("/apis/networking.k8s.io/v1/networkpolicies");
        let pods = informers.get("/api/v1/pods");
        let namespaces = informers.get("/api/v1/namespaces");
        let wake = Arc::new(tokio::sync::Notify::new());
        for inf in [&policies, &pods, &namespaces] {
            let w = wake.clone();
            inf.on_change(move |_| w.notify_one());
        }
        informers.start();
        let task = tokio::spawn(run(policies, pods, namespaces, wake, settings, view));
        PolicyAgent { _informers: informers, task }
    }
}

async fn run(policies: Arc<Informer>, pods: Arc<Informer>, namespaces: Arc<Informer>, wake: Arc<tokio::sync::Notify>, s: Settings, view: View) {
    if let Err(why) = nft_available() {
        tracing::warn!(reason = %why, "NetworkPolicies are NOT enforced on this node");
        return;
    }
    // What each local pod's namespace was last given.
    let mut loaded: HashMap<String, String> = HashMap::new();
    loop {
        wake.notified().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !policies.has_synced() || !pods.has_synced() || !namespaces.has_synced() {
            continue;
        }
        let all_pods = pods.list();
        let pols = policies.list();
        let ns: HashMap<String, Obj> = namespaces.list().iter().filter_map(|n| Some((n["metadata"]["name"].as_str()?.to_string(), n["metadata"]["labels"].clone()))).collect();
        *view.0.write().unwrap() = Some(Arc::new(Snapshot { policies: pols.clone(), pods: all_pods.clone(), namespaces: ns.clone(), node: s.node_ip, service_range: s.service_range.clone() }));
        let world = rules::World { policies: &pols, pods: &all_pods, namespaces: &ns, node: s.node_ip, service_range: s.service_range.clone() };
        let mut live = std::collections::HashSet::new();
        for p in all_pods.iter().filter(|p| p["spec"]["nodeName"] == s.node_name.as_str() && p["spec"]["hostNetwork"] != true) {
            let Some(uid) = p["metadata"]["uid"].as_str() else { continue };
            if p["status"]["podIP"].as_str().is_none_or(|i| i.is_empty()) {
                continue;
            }
            let netns = format!("{}{uid}", s.netns_prefix);
            if !PathBuf::from("/run/netns").join(&netns).exists() {
                continue;
            }
            live.insert(uid.to_string());
            let script = rules::render(p, &world);
            if loaded.get(uid) == Some(&script) {
                continue;
            }
            match load(&netns, &script).await {
                Ok(()) => {
                    loaded.insert(uid.to_string(), script);
                }
                Err(e) => tracing::warn!(pod = %p["metadata"]["name"].as_str().unwrap_or(""), error = %e, "programming the pod's NetworkPolicy rules failed; retried on the next change"),
            }
        }
        loaded.retain(|uid, _| live.contains(uid));
    }
}

/// `nft -f -` inside network namespace `netns`.
async fn load(netns: &str, script: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running ip netns exec ... nft: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin.write_all(script.as_bytes()).await.map_err(|e| e.to_string())?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim())) }
}
