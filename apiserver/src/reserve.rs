//! What a create takes besides its own key: a charge on every ResourceQuota of its namespace
//! and, for a Service, a cluster IP (an `IPAddress` object named by the address, as
//! Kubernetes 1.33 allocates them) and node ports. All are reservations made in the create's
//! own txn: the txn puts the object only if its key is free AND every quota, address and port
//! key is at the revision the reservation was computed from (absent, for an address), and
//! puts them all together. So a create that fails (AlreadyExists, or a conflict on a quota)
//! leaves nothing charged and no address taken, two creates racing for the last unit of a
//! quota or for one address cannot both win, and an address a deleted Service released is
//! free again.
//!
//! The functions here are pure: the handler reads the quotas and the counter, these compute
//! the writes, and [`create_txn`] joins them into one request.

use std::net::Ipv4Addr;

use bytes::Bytes;
use serde_json::Value;
use storage::{Compare, CompareOp, CompareTarget, KeyValue, PutRequest, RangeRequest, TxnOp, TxnRequest};

use crate::object::{Stored, encode_stored, meta_mut};

/// A write the create makes with the object, valid only while `key` is at `mod_revision`
/// (0: the key does not exist).
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub key: Bytes,
    pub mod_revision: u64,
    pub value: Bytes,
}

/// Node ports taken: one key per port (`/registry/ranges/nodeports/30080`), holding the key
/// of the Service that took it; written in each create's txn, guarded by its revision.
pub const NODE_PORTS: &str = "/registry/ranges/nodeports/";

/// `networking.k8s.io/v1` IPAddress objects: one per Service cluster IP, named by it.
pub const IP_ADDRESSES: &str = "/registry/networking.k8s.io/ipaddresses/";
/// Host numbers in 10.96.0.0/12 (Kubernetes' default Service range).
const SERVICE_IP_RANGE: u32 = 1 << 20;

/// The Service range (`--service-cluster-ip-range`): base address and prefix length, set once
/// at start; 10.96.0.0/12 (Kubernetes' default) when not.
static RANGE: std::sync::OnceLock<(Ipv4Addr, u8)> = std::sync::OnceLock::new();

/// Sets the Service range (before the API serves). A range must hold at least 8 addresses.
pub fn configure_service_range(base: Ipv4Addr, bits: u8) -> Result<(), String> {
    if !(8..=29).contains(&bits) {
        return Err(format!("--service-cluster-ip-range: a /{bits} range: between /8 and /29"));
    }
    RANGE.set((base, bits)).map_err(|_| "the service range is set already".to_string())
}

/// The Service range in use.
pub fn service_range() -> (Ipv4Addr, u8) {
    *RANGE.get().unwrap_or(&(Ipv4Addr::new(10, 96, 0, 0), 12))
}

/// Charges `delta` (from `quota::usage`) on every quota in `quotas`, or the Forbidden
/// message of the first one it would exceed.
pub fn quota_charges(quotas: &[KeyValue], delta: &[(String, i64)], obj: &Value) -> Result<Vec<Reservation>, String> {
    let mut out = Vec::with_capacity(quotas.len());
    for kv in quotas {
        let q = Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision))?;
        // A quota with scopes charges only the pods in them.
        if !api::quota_scope::tracks(&q, obj["kind"] == "Pod", obj) {
            continue;
        }
        let mut next = crate::quota::charge(&q, delta, obj)?;
        meta_mut(&mut next).remove("resourceVersion");
        out.push(Reservation { key: kv.key.clone(), mod_revision: kv.mod_revision, value: encode_stored(&next) });
    }
    Ok(out)
}

/// The store key of the IPAddress object of `ip`.
pub fn ip_address_key(ip: Ipv4Addr) -> String {
    format!("{IP_ADDRESSES}{ip}")
}

/// The IPAddress object that holds `ip` for Service `ns/name`.
pub fn ip_address_object(ip: Ipv4Addr, ns: &str, name: &str) -> Value {
    serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "IPAddress",
        "metadata": {"name": ip.to_string(), "uid": crate::object::new_uid(), "creationTimestamp": crate::object::now_rfc3339(),
            "labels": {"ipaddress.kubernetes.io/ip-family": "IPv4", "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io"}},
        "spec": {"parentRef": {"group": "", "resource": "services", "namespace": ns, "name": name}}})
}

/// The reservation of `ip` for Service `ns/name`: its IPAddress object, written only if the
/// address is free.
pub fn ip_reservation(ip: Ipv4Addr, ns: &str, name: &str) -> Reservation {
    Reservation { key: Bytes::from(ip_address_key(ip)), mod_revision: 0, value: encode_stored(&ip_address_object(ip, ns, name)) }
}

/// The range's size in addresses.
fn range_size() -> u32 {
    let (_, bits) = service_range();
    if RANGE.get().is_some() { 1u32 << (32 - bits) } else { SERVICE_IP_RANGE }
}

/// Whether `ip` is an address of the Service range a Service may hold (not the range's
/// network or broadcast address).
pub fn in_range(ip: Ipv4Addr) -> bool {
    let (base, _) = service_range();
    let host = u32::from(ip).wrapping_sub(u32::from(base));
    u32::from(ip) >= u32::from(base) && host >= 1 && host < range_size() - 1
}

/// A free address for a new Service: from host number `start`, the first whose IPAddress is
/// not in `taken`, never the `kubernetes` Service's (the first) or `kube-dns`'s (the tenth).
pub fn pick_cluster_ip(taken: &std::collections::HashSet<Ipv4Addr>, start: u32) -> Option<Ipv4Addr> {
    let (base, _) = service_range();
    let hosts = range_size().saturating_sub(2);
    (0..hosts)
        .map(|k| 1 + (start % hosts.max(1) + k) % hosts.max(1))
        .filter(|h| *h != 1 && *h != crate::system_services::DNS_HOST)
        .map(|h| Ipv4Addr::from(u32::from(base) + h))
        .find(|ip| !taken.contains(ip))
}

/// The one txn of a create: `key` must not exist and every reservation must still hold; then
/// all are written. On failure it reads `key`, so the caller can tell "exists" (AlreadyExists)
/// from "a reservation moved" (compute them again). Values are sealed for the store
/// (`encryption`) here.
pub fn create_txn(key: Bytes, value: Bytes, reservations: &[Reservation]) -> Result<TxnRequest, String> {
    let value = crate::encryption::seal(&key, value)?;
    let mut compare = Vec::with_capacity(1 + reservations.len());
    let mut success = Vec::with_capacity(1 + reservations.len());
    compare.push(Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0), range_end: None });
    success.push(TxnOp::Put(PutRequest { key: key.clone(), value, lease: 0, prev_kv: false }));
    for r in reservations {
        compare.push(Compare { key: r.key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(r.mod_revision), range_end: None });
        success.push(TxnOp::Put(PutRequest { key: r.key.clone(), value: crate::encryption::seal(&r.key, r.value.clone())?, lease: 0, prev_kv: false }));
    }
    let failure = if reservations.is_empty() { vec![] } else { vec![TxnOp::Range(RangeRequest { count_only: true, ..RangeRequest::key(key) })] };
    Ok(TxnRequest { compare, success, failure })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(key: &str, rev: u64, value: Bytes) -> KeyValue {
        KeyValue { key: Bytes::copy_from_slice(key.as_bytes()), create_revision: 1, mod_revision: rev, version: 1, value, lease: 0 }
    }

    #[test]
    fn cluster_ips_are_free_addresses_of_the_range_but_the_two_system_ones() {
        use std::collections::HashSet;
        // The default range, 10.96.0.0/12: from the start asked for, the first free one.
        let mut taken = HashSet::new();
        assert_eq!(pick_cluster_ip(&taken, 0), Some(Ipv4Addr::new(10, 96, 0, 2)), "host 1 is the kubernetes Service's");
        assert_eq!(pick_cluster_ip(&taken, 8), Some(Ipv4Addr::new(10, 96, 0, 9)));
        assert_eq!(pick_cluster_ip(&taken, 9), Some(Ipv4Addr::new(10, 96, 0, 11)), "the tenth is kube-dns's");
        taken.insert(Ipv4Addr::new(10, 96, 0, 11));
        assert_eq!(pick_cluster_ip(&taken, 9), Some(Ipv4Addr::new(10, 96, 0, 12)));
        // The last host number wraps around to the first.
        assert_eq!(pick_cluster_ip(&taken, (1 << 20) - 3), Some(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(in_range(Ipv4Addr::new(10, 96, 0, 1)) && in_range(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!in_range(Ipv4Addr::new(10, 96, 0, 0)) && !in_range(Ipv4Addr::new(10, 111, 255, 255)) && !in_range(Ipv4Addr::new(10, 112, 0, 1)) && !in_range(Ipv4Addr::new(10, 95, 255, 1)));
        let r = ip_reservation(Ipv4Addr::new(10, 96, 0, 7), "ns", "web");
        assert_eq!((&r.key[..], r.mod_revision), (&b"/registry/networking.k8s.io/ipaddresses/10.96.0.7"[..], 0));
        let v = Stored::parse(&r.value).and_then(|s| s.value_at(1)).unwrap();
        assert_eq!(v["spec"]["parentRef"], json!({"group": "", "resource": "services", "namespace": "ns", "name": "web"}));
    }

    #[test]
    fn quota_charges_raise_used_or_name_the_exceeded_limit() {
        let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "ns"},
            "spec": {"hard": {"pods": "1"}}, "status": {"hard": {"pods": "1"}, "used": {"pods": "0"}}});
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        let delta = crate::quota::usage("", "pods", &pod);
        let stored = kv("/registry/core/resourcequotas/ns/q", 5, encode_stored(&quota));
        let charges = quota_charges(std::slice::from_ref(&stored), &delta, &pod).unwrap();
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0].mod_revision, 5);
        let charged = Stored::parse(&charges[0].value).unwrap().value_at(6).unwrap();
        assert_eq!(charged["status"]["used"]["pods"], "1");
        // Full: the next create is refused.
        let full = kv("/registry/core/resourcequotas/ns/q", 6, charges[0].value.clone());
        let err = quota_charges(&[full], &delta, &pod).unwrap_err();
        assert!(err.contains("exceeded quota: q"), "{err}");
    }

    #[test]
    fn the_create_txn_guards_every_reservation() {
        let r = Reservation { key: Bytes::from_static(b"/q"), mod_revision: 9, value: Bytes::from_static(b"v") };
        let t = create_txn(Bytes::from_static(b"/o"), Bytes::from_static(b"obj"), std::slice::from_ref(&r)).unwrap();
        assert_eq!(t.compare.len(), 2);
        assert_eq!(t.success.len(), 2);
        assert!(matches!(t.compare[1].target, CompareTarget::ModRevision(9)));
        assert_eq!(t.failure.len(), 1);
        // Without reservations the failure branch reads nothing (a plain create).
        assert!(create_txn(Bytes::from_static(b"/o"), Bytes::new(), &[]).unwrap().failure.is_empty());
    }
}
