//! etcd's v3 gRPC API over capstan's store: what `etcdctl`, etcd's client libraries and a
//! stock kube-apiserver speak, served beside the Kubernetes API on the same store.
//!
//! **What it is for.** Operators know etcd through `etcdctl` and its gRPC API; serving it
//! makes the store usable on its own and lets anyone check "faster than etcd" with the same
//! client against both. Writes through it bypass Kubernetes admission, as writes to etcd do,
//! so with TLS on only client certificates of the cluster CA in `system:masters` are let in
//! (etcd's `--client-cert-auth`).
//!
//! **Where to start reading.** `serve` (the listener, TLS and the services), then one file per
//! service: `kv.rs`, `watch.rs`, `lease.rs`, `maintenance.rs`, `cluster.rs`, `auth.rs`. `errors.rs`
//! turns store errors into etcd's gRPC codes and messages. The wire contract is
//! `proto/etcd.proto`, etcd's field numbers written out for the calls served here.
//!
//! **Differences from etcd** (DESIGN.md has the reasons): authentication stays disabled
//! (`auth.rs`: access is by client certificate; enabling it, authenticating and managing
//! users and roles answer `FailedPrecondition`); `Hash` and `HashKV` hash the keyspace at a revision, not etcd's bbolt
//! pages, so they compare capstan replicas with each other, never with an etcd.

use std::sync::Arc;
use std::time::Duration;

use storage::Store;

pub mod pb {
    #![allow(clippy::all, non_snake_case)]
    tonic::include_proto!("etcdserverpb");
}

mod auth;
pub mod cluster;
mod errors;
mod kv;
mod lease;
mod maintenance;
mod serve;
mod watch;

pub use cluster::{Member, Membership, SingleMember};
pub use serve::{Listening, serve};
pub use tonic;
pub use tonic::Status;

/// The version `Status` reports. kube-apiserver turns features on by the etcd version it
/// reads there, so this names the etcd release whose API capstan serves.
pub const ETCD_VERSION: &str = "3.6.0";

/// Bounds on what a client may send, as etcd's flags name them.
#[derive(Clone, Debug)]
pub struct Limits {
    /// `--max-request-bytes` (etcd: 1.5 MiB): a larger put or txn is refused.
    pub request_bytes: usize,
    /// `--max-txn-ops` (etcd: 128).
    pub txn_ops: usize,
    /// How often a watch created with `progress_notify` hears the revision when nothing
    /// changed (etcd's `--experimental-watch-progress-notify-interval`, 10 minutes).
    pub progress_notify: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { request_bytes: 3 * 512 * 1024, txn_ops: 128, progress_notify: Duration::from_secs(600) }
    }
}

/// What every service shares: the store, who this member is, the bounds.
pub struct Ctx {
    pub store: Store,
    /// The store's data directory (its size is the "database size" `Status` reports).
    pub data_dir: std::path::PathBuf,
    pub membership: Arc<dyn Membership>,
    pub limits: Limits,
    /// Set when a write failed for want of disk (etcd's NOSPACE alarm); cleared by an
    /// alarm disarm.
    pub(crate) nospace: std::sync::atomic::AtomicBool,
}

impl Ctx {
    pub fn new(store: Store, data_dir: std::path::PathBuf, membership: Arc<dyn Membership>, limits: Limits) -> Arc<Ctx> {
        Arc::new(Ctx { store, data_dir, membership, limits, nospace: Default::default() })
    }

    /// The header of every response, at `revision`.
    pub(crate) fn header(&self, revision: u64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader { cluster_id: self.membership.cluster_id(), member_id: self.membership.member_id(), revision: revision as i64, raft_term: self.membership.raft_term() })
    }

    /// A write's error as etcd answers it; one for want of disk raises the NOSPACE alarm.
    pub(crate) fn noted(&self, e: storage::StoreError) -> tonic::Status {
        if matches!(e, storage::StoreError::NoSpace) {
            self.nospace.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        errors::store(e)
    }

    /// A request of `len` encoded bytes as etcd bounds it: past its gRPC limit (the request
    /// limit plus 512 KiB) `ResourceExhausted`, as grpc-go answers; past the request limit
    /// `request is too large`.
    pub(crate) fn check_size(&self, len: usize) -> Result<(), tonic::Status> {
        let grpc_max = self.limits.request_bytes + serve::GRPC_OVERHEAD;
        if len > grpc_max {
            return Err(tonic::Status::resource_exhausted(format!("grpc: received message larger than max ({len} vs. {grpc_max})")));
        }
        if len > self.limits.request_bytes {
            return Err(errors::too_large());
        }
        Ok(())
    }

    /// The header at the store's newest revision.
    pub(crate) fn header_now(&self) -> Option<pb::ResponseHeader> {
        self.header(self.store.revision())
    }
}

/// One store key-value in etcd's shape.
pub(crate) fn kv_out(kv: storage::KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key.to_vec(),
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        value: kv.value.to_vec(),
        lease: kv.lease,
    }
}

/// `key` and `range_end` as etcd reads them: no end is one key, `\0` is every key from `key`
/// on, an end that is `key` with its last byte incremented is a prefix.
pub(crate) fn key_range(key: &[u8], range_end: &[u8]) -> storage::KeyRange {
    use bytes::Bytes;
    if range_end.is_empty() {
        return storage::KeyRange::Key(Bytes::copy_from_slice(key));
    }
    if range_end == [0] {
        return storage::KeyRange::Range { start: Bytes::copy_from_slice(key), end: Bytes::new() };
    }
    storage::KeyRange::Range { start: Bytes::copy_from_slice(key), end: Bytes::copy_from_slice(range_end) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges_read_as_etcd_reads_them() {
        assert_eq!(key_range(b"a", b""), storage::KeyRange::Key("a".into()));
        let all = key_range(b"\0", b"\0");
        assert!(all.contains(b"anything") && all.contains(b"\0"));
        let from = key_range(b"m", b"\0");
        assert!(from.contains(b"m") && from.contains(b"zz") && !from.contains(b"l"));
        let prefix = key_range(b"foo", b"fop");
        assert!(prefix.contains(b"foo") && prefix.contains(b"foo/bar") && !prefix.contains(b"fop") && !prefix.contains(b"fo"));
    }
}
