//! What a create takes besides its own key: a charge on every ResourceQuota of its namespace
//! and, for a Service, a cluster IP. Both are reservations made in the create's own txn: the
//! txn puts the object only if its key is free AND every quota and the IP counter are at the
//! revision the reservation was computed from, and puts them all together. So a create that
//! fails (AlreadyExists, or a conflict on a quota) leaves nothing charged and no address
//! taken, and two creates racing for the last unit of a quota cannot both win.
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

/// Where the Service IP counter lives: the last host number handed out in the range.
pub const SERVICE_IP_COUNTER: &str = "/registry/ranges/serviceips";
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

/// The next Service cluster IP after the counter's value (absent: `.1` is the `kubernetes`
/// Service's, so the first is `.2`; `.10` is `kube-dns`'s and skipped), and the counter's
/// write. Addresses are not reused after a Service is deleted (2^20 of them).
pub fn next_cluster_ip(counter: Option<&KeyValue>) -> Result<(Ipv4Addr, Reservation), String> {
    let (next, rev) = match counter {
        Some(kv) => {
            let last = std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse::<u32>().ok()).ok_or_else(|| "the service IP counter is corrupt".to_string())?;
            (last + 1, kv.mod_revision)
        }
        None => (2, 0),
    };
    let next = if next == crate::system_services::DNS_HOST { next + 1 } else { next };
    let (base, bits) = service_range();
    let size = if RANGE.get().is_some() { 1u32 << (32 - bits) } else { SERVICE_IP_RANGE };
    if next >= size - 1 {
        return Err(format!("the service cluster IP range {base}/{bits} is exhausted"));
    }
    let ip = Ipv4Addr::from(u32::from(base) + next);
    Ok((ip, Reservation { key: Bytes::from_static(SERVICE_IP_COUNTER.as_bytes()), mod_revision: rev, value: Bytes::from(next.to_string()) }))
}

/// The one txn of a create: `key` must not exist and every reservation must still hold; then
/// all are written. On failure it reads `key`, so the caller can tell "exists" (AlreadyExists)
/// from "a reservation moved" (compute them again). Values are sealed for the store
/// (`encryption`) here.
pub fn create_txn(key: Bytes, value: Bytes, reservations: &[Reservation]) -> Result<TxnRequest, String> {
    let value = crate::encryption::seal(&key, value)?;
    let mut compare = Vec::with_capacity(1 + reservations.len());
    let mut success = Vec::with_capacity(1 + reservations.len());
    compare.push(Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) });
    success.push(TxnOp::Put(PutRequest { key: key.clone(), value, lease: 0, prev_kv: false }));
    for r in reservations {
        compare.push(Compare { key: r.key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(r.mod_revision) });
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
    fn cluster_ips_follow_the_counter_and_stop_at_the_end_of_the_range() {
        let (ip, r) = next_cluster_ip(None).unwrap();
        assert_eq!((ip, r.mod_revision, &r.value[..]), (Ipv4Addr::new(10, 96, 0, 2), 0, &b"2"[..]));
        let (ip, _) = next_cluster_ip(Some(&kv(SERVICE_IP_COUNTER, 7, Bytes::from_static(b"9")))).unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 96, 0, 11), "the tenth is kube-dns's");
        let (ip, r) = next_cluster_ip(Some(&kv(SERVICE_IP_COUNTER, 7, Bytes::from_static(b"300")))).unwrap();
        assert_eq!((ip, r.mod_revision, &r.value[..]), (Ipv4Addr::new(10, 96, 1, 45), 7, &b"301"[..]));
        assert!(next_cluster_ip(Some(&kv(SERVICE_IP_COUNTER, 7, Bytes::from((SERVICE_IP_RANGE - 2).to_string())))).is_err());
        assert!(next_cluster_ip(Some(&kv(SERVICE_IP_COUNTER, 7, Bytes::from_static(b"x")))).is_err());
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
