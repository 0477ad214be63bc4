//! The Services every Kubernetes cluster has: `default/kubernetes` (the API server, at the
//! first address of the Service range) and `kube-system/kube-dns` (the cluster DNS, at the
//! tenth, kubeadm's choice: what pods' resolv.conf names). Written straight to the store at
//! start, as the API server's own bootstrap writes them in Kubernetes.
//!
//! `kube-dns` has no selector and no endpoints: every real node answers at its address
//! itself (the kubelet's `dns` module). `kubernetes` has the API servers' addresses, in an
//! EndpointSlice (and an Endpoints) named after it, kept by the API servers themselves:
//! `capstan up` replaces the list with its own address at every start (its port may
//! change), each replica of `capstan server` adds its own. Replicas that are gone stay
//! listed (Kubernetes removes them by their leases; capstan does not yet), and one slice has
//! one port: replicas listening on different ports (several on one host) list only the last
//! one started.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{Value, json};
use storage::{Compare, CompareOp, CompareTarget, PutRequest, RangeRequest, Store, StoreError, TxnOp, TxnRequest};

use crate::object::{Stored, encode_stored, new_uid, now_rfc3339};

const KUBERNETES: &str = "/registry/core/services/default/kubernetes";
const KUBE_DNS: &str = "/registry/core/services/kube-system/kube-dns";
const SLICE: &str = "/registry/discovery.k8s.io/endpointslices/default/kubernetes";
const ENDPOINTS: &str = "/registry/core/endpoints/default/kubernetes";

/// Host number of the `kube-dns` address in the Service range (never handed out to others).
pub const DNS_HOST: u32 = 10;

/// The `kubernetes` Service's address and the `kube-dns` one, in the Service range.
pub fn addresses() -> (Ipv4Addr, Ipv4Addr) {
    let (base, _) = crate::reserve::service_range();
    (Ipv4Addr::from(u32::from(base) + 1), Ipv4Addr::from(u32::from(base) + DNS_HOST))
}

fn service(ns: &str, name: &str, ip: Ipv4Addr, ports: Value, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": new_uid(), "creationTimestamp": now_rfc3339(), "labels": labels},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()], "ports": ports, "sessionAffinity": "None",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}})
}

/// Reads `key` as (object, mod revision).
async fn read(store: &Store, key: &str) -> Result<Option<(Value, u64)>, StoreError> {
    let Some(kv) = store.get(key.to_string()).await? else { return Ok(None) };
    let v = Stored::from_kv(&kv).and_then(|s| s.value_at(kv.mod_revision)).map_err(StoreError::Invalid)?;
    Ok(Some((v, kv.mod_revision)))
}

/// Writes `obj` at `key` if its mod revision is still `rev` (0: absent). False: it moved.
pub(crate) async fn write_if(store: &Store, key: &str, rev: u64, obj: &Value) -> Result<bool, StoreError> {
    let key = bytes::Bytes::copy_from_slice(key.as_bytes());
    let value = crate::encryption::seal(&key, encode_stored(obj)).map_err(StoreError::Invalid)?;
    let target = if rev == 0 { CompareTarget::CreateRevision(0) } else { CompareTarget::ModRevision(rev) };
    let r = store
        .txn(TxnRequest { compare: vec![Compare { key: key.clone(), op: CompareOp::Equal, target, range_end: None }], success: vec![TxnOp::Put(PutRequest { key, value, lease: 0, prev_kv: false })], failure: vec![] })
        .await?;
    Ok(r.succeeded)
}

/// Deletes the IPAddress objects that hold `svc`'s cluster IPs for it.
pub async fn release_cluster_ips(store: &Store, svc: &Value) -> Result<(), StoreError> {
    let (ns, name) = (svc["metadata"]["namespace"].as_str().unwrap_or(""), svc["metadata"]["name"].as_str().unwrap_or(""));
    for ip in svc["spec"]["clusterIPs"].as_array().into_iter().flatten().filter_map(|i| i.as_str()?.parse::<Ipv4Addr>().ok()) {
        let key = crate::reserve::ip_address_key(ip);
        let Some((obj, rev)) = read(store, &key).await? else { continue };
        let parent = &obj["spec"]["parentRef"];
        if parent["resource"] == "services" && parent["namespace"] == ns && parent["name"] == name {
            delete_if(store, &key, rev).await?;
        }
    }
    Ok(())
}

/// Deletes `key` if its mod revision is still `rev`.
async fn delete_if(store: &Store, key: &str, rev: u64) -> Result<bool, StoreError> {
    let key = bytes::Bytes::copy_from_slice(key.as_bytes());
    let r = store
        .txn(TxnRequest {
            compare: vec![Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(rev), range_end: None }],
            success: vec![TxnOp::Delete(storage::DeleteRequest { range: storage::KeyRange::Key(key), prev_kv: false })],
            failure: vec![],
        })
        .await?;
    Ok(r.succeeded)
}

/// The allocator's state made whole at start (Kubernetes' repair loop, once): the default
/// ServiceCIDR `kubernetes` for the Service range; an IPAddress for every Service cluster IP
/// in the range that has none (Services made before addresses were objects, or created by a
/// bootstrap); and none for an address whose Service is gone.
pub async fn repair_ip_addresses(store: &Store) -> Result<(), StoreError> {
    let (base, bits) = crate::reserve::service_range();
    const CIDR: &str = "/registry/networking.k8s.io/servicecidrs/kubernetes";
    if store.get(CIDR).await?.is_none() {
        let cidr = json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
            "metadata": {"name": "kubernetes", "uid": new_uid(), "creationTimestamp": now_rfc3339()},
            "spec": {"cidrs": [format!("{base}/{bits}")]},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "", "message": "Kubernetes Service CIDR is ready", "lastTransitionTime": now_rfc3339()}]}});
        write_if(store, CIDR, 0, &cidr).await?;
    }
    let services = store.range(RangeRequest::prefix("/registry/core/services/")).await?;
    let mut wanted = std::collections::HashMap::new();
    for kv in &services.kvs {
        let Ok(svc) = Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision)) else { continue };
        let (ns, name) = (svc["metadata"]["namespace"].as_str().unwrap_or("").to_string(), svc["metadata"]["name"].as_str().unwrap_or("").to_string());
        for ip in svc["spec"]["clusterIPs"].as_array().into_iter().flatten().filter_map(|i| i.as_str()?.parse::<Ipv4Addr>().ok()) {
            wanted.insert(ip, (ns.clone(), name.clone()));
        }
    }
    // Both read at one revision: a Service created between two reads would leave its new
    // IPAddress looking orphaned.
    let held = store.range(RangeRequest { revision: Some(services.revision), ..RangeRequest::prefix(crate::reserve::IP_ADDRESSES) }).await?;
    for kv in &held.kvs {
        let ip = std::str::from_utf8(&kv.key[crate::reserve::IP_ADDRESSES.len()..]).ok().and_then(|s| s.parse::<Ipv4Addr>().ok());
        let Ok(obj) = Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision)) else { continue };
        let parent = (obj["spec"]["parentRef"]["namespace"].as_str().unwrap_or("").to_string(), obj["spec"]["parentRef"]["name"].as_str().unwrap_or("").to_string());
        match ip.and_then(|ip| wanted.remove(&ip)) {
            Some(p) if p == parent => {}
            _ => {
                tracing::info!(address = %String::from_utf8_lossy(&kv.key[crate::reserve::IP_ADDRESSES.len()..]), "an IPAddress without its Service: released");
                delete_if(store, std::str::from_utf8(&kv.key).unwrap_or(""), kv.mod_revision).await?;
            }
        }
    }
    for (ip, (ns, name)) in wanted {
        if crate::reserve::in_range(ip) {
            write_if(store, &crate::reserve::ip_address_key(ip), 0, &crate::reserve::ip_address_object(ip, &ns, &name)).await?;
        }
    }
    Ok(())
}

/// Creates `kube-system/kube-dns` when absent, unless another Service holds its address
/// (a data directory from before it existed): then pods' DNS is unreachable, and this says so.
pub async fn ensure_dns(store: &Store) -> Result<(), StoreError> {
    if store.get(KUBE_DNS).await?.is_some() {
        return Ok(());
    }
    let (_, dns) = addresses();
    let all = store.range(RangeRequest::prefix("/registry/core/services/")).await?;
    for kv in &all.kvs {
        if let Ok(v) = Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision))
            && v["spec"]["clusterIP"] == dns.to_string()
        {
            tracing::warn!(service = %String::from_utf8_lossy(&kv.key), address = %dns, "kube-dns cannot have its address: another Service holds it; cluster DNS will not be reachable");
            return Ok(());
        }
    }
    let ports = json!([
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
    ]);
    let labels = json!({"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"});
    if write_if(store, KUBE_DNS, 0, &service("kube-system", "kube-dns", dns, ports, labels)).await? && crate::reserve::in_range(dns) {
        write_if(store, &crate::reserve::ip_address_key(dns), 0, &crate::reserve::ip_address_object(dns, "kube-system", "kube-dns")).await?;
    }
    Ok(())
}

/// The API server at `api` in `default/kubernetes`: the Service (port 443 to the API's
/// port) and its endpoints. `replace`: the list becomes this one address (one API server);
/// else it is added to the others (replicas).
pub async fn publish_api(store: &Store, api: SocketAddr, replace: bool) -> Result<(), StoreError> {
    let ip = match api.ip() {
        std::net::IpAddr::V4(v) if !v.is_unspecified() => v,
        // Listening everywhere: the nodes of this host reach it on loopback.
        _ => Ipv4Addr::LOCALHOST,
    };
    let port = api.port();
    let (kubernetes, _) = addresses();
    for _ in 0..16 {
        // The Service: created once; its target port follows the API's.
        let want_ports = json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]);
        let ok = match read(store, KUBERNETES).await? {
            None => {
                let labels = json!({"component": "apiserver", "provider": "kubernetes"});
                let made = write_if(store, KUBERNETES, 0, &service("default", "kubernetes", kubernetes, want_ports, labels)).await?;
                if made {
                    write_if(store, &crate::reserve::ip_address_key(kubernetes), 0, &crate::reserve::ip_address_object(kubernetes, "default", "kubernetes")).await?;
                }
                made
            }
            Some((mut s, rev)) if replace && s["spec"]["ports"] != want_ports => {
                s["spec"]["ports"] = want_ports;
                write_if(store, KUBERNETES, rev, &s).await?
            }
            Some(_) => true,
        };
        if !ok {
            continue;
        }
        let (svc, _) = read(store, KUBERNETES).await?.ok_or_else(|| StoreError::Invalid("the kubernetes Service vanished".into()))?;
        let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": "kubernetes", "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]);
        // The slice: addresses (with the port of the first).
        let cur = read(store, SLICE).await?;
        let mut addrs: Vec<String> = match (&cur, replace) {
            (Some((s, _)), false) if s["ports"][0]["port"] == port => s["endpoints"].as_array().into_iter().flatten().filter_map(|e| e["addresses"][0].as_str().map(String::from)).collect(),
            _ => vec![],
        };
        if !addrs.contains(&ip.to_string()) {
            addrs.push(ip.to_string());
        }
        let endpoints: Vec<Value> = addrs.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false}})).collect();
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default", "uid": cur.as_ref().map(|(s, _)| s["metadata"]["uid"].clone()).unwrap_or(json!(new_uid())),
                "creationTimestamp": cur.as_ref().map(|(s, _)| s["metadata"]["creationTimestamp"].clone()).unwrap_or(json!(now_rfc3339())),
                "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"},
                "ownerReferences": owner},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
        let same = cur.as_ref().is_some_and(|(s, _)| s["endpoints"] == slice["endpoints"] && s["ports"] == slice["ports"]);
        if !same && !write_if(store, SLICE, cur.as_ref().map_or(0, |(_, r)| *r), &slice).await? {
            continue;
        }
        // The Endpoints kubectl shows (`kubectl get endpoints kubernetes`).
        let ep_cur = read(store, ENDPOINTS).await?;
        let subsets = json!([{"addresses": addrs.iter().map(|a| json!({"ip": a})).collect::<Vec<_>>(), "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]);
        if ep_cur.as_ref().is_some_and(|(e, _)| e["subsets"] == subsets) {
            return Ok(());
        }
        let ep = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default", "uid": ep_cur.as_ref().map(|(e, _)| e["metadata"]["uid"].clone()).unwrap_or(json!(new_uid())),
                "creationTimestamp": now_rfc3339(), "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": subsets});
        if write_if(store, ENDPOINTS, ep_cur.as_ref().map_or(0, |(_, r)| *r), &ep).await? {
            return Ok(());
        }
    }
    Err(StoreError::Invalid("publishing the API server's endpoints: the objects kept changing".into()))
}
