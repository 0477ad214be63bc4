//! etcd's gRPC errors: the codes and messages its clients test for (etcdctl prints the
//! message; clientv3 compares it), from capstan's narrow store errors.

use storage::StoreError;
use tonic::{Code, Status};

pub fn empty_key() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: key is not provided")
}

pub fn key_not_found() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: key not found")
}

pub fn value_provided() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: value is provided")
}

pub fn lease_provided() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: lease is provided")
}

pub fn too_many_ops() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: too many operations in txn request")
}

pub fn too_large() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: request is too large")
}

pub fn compacted() -> Status {
    Status::new(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
}

pub fn future_revision() -> Status {
    Status::new(Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
}

pub fn lease_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: requested lease not found")
}

pub fn lease_ttl_too_large() -> Status {
    Status::new(Code::OutOfRange, "etcdserver: too large lease TTL")
}

pub fn permission_denied() -> Status {
    Status::new(Code::PermissionDenied, "etcdserver: permission denied")
}

pub fn member_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: member not found")
}

/// What capstan does not do, named.
pub fn unsupported(what: &str) -> Status {
    Status::new(Code::InvalidArgument, format!("capstan: {what} is not supported"))
}

/// A store error as etcd would answer it.
pub fn store(e: StoreError) -> Status {
    match e {
        StoreError::TooLarge { .. } => too_large(),
        StoreError::Compacted { .. } => compacted(),
        StoreError::FutureRevision { .. } => future_revision(),
        StoreError::LeaseNotFound(_) => lease_not_found(),
        StoreError::LeaseExists(_) => Status::new(Code::FailedPrecondition, "etcdserver: lease already exists"),
        StoreError::Invalid(m) if m.contains("duplicate key") => Status::new(Code::InvalidArgument, "etcdserver: duplicate key given in txn request"),
        StoreError::Invalid(m) if m.contains("empty key") => empty_key(),
        StoreError::Invalid(m) => Status::new(Code::InvalidArgument, format!("etcdserver: {m}")),
        StoreError::NoSpace => Status::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
        StoreError::NoQuorum(_) => Status::new(Code::Unavailable, "etcdserver: no leader"),
        StoreError::Unavailable(_) => Status::new(Code::Unavailable, "etcdserver: request timed out"),
        StoreError::Shutdown => Status::new(Code::Unavailable, "etcdserver: server stopped"),
        StoreError::Io(m) | StoreError::Failed(m) => Status::new(Code::Internal, format!("etcdserver: {m}")),
    }
}
