//! Narrow error types, one per kind of operation (see ARCHITECTURE.md, "Errors").

use std::path::PathBuf;

use crate::types::{LeaseId, Revision};

/// Why a read or write request failed. None of these leaves anything half-written.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("request of {bytes} bytes is over the store's limit of {max} bytes; nothing was written")]
    TooLarge { bytes: usize, max: usize },
    #[error("revision {requested} has been compacted (compacted up to {compact_revision})")]
    Compacted { requested: Revision, compact_revision: Revision },
    #[error("revision {requested} is in the future (current revision is {current})")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    #[error("lease {0} already exists")]
    LeaseExists(LeaseId),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the write-ahead log's disk is full: the write was not applied; retry when space is freed")]
    NoSpace,
    #[error("I/O error, nothing was applied: {0}")]
    Io(String),
    #[error("the store stopped accepting writes after a fatal I/O error ({0}); reads still work; restart to recover")]
    Failed(String),
    #[error("the store is shutting down")]
    Shutdown,
    /// A replicated store lost track of a write (the leader changed after taking it, or did
    /// not answer in time): it may or may not have been applied; retry.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A replicated store could not take the request (no leader, a partitioned minority, a
    /// removed member): it was not applied; retry.
    #[error("the store has no quorum: {0}; nothing was applied")]
    NoQuorum(String),
}

/// Why `Store::open` refused to start. A corrupt log is never silently truncated.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("corruption in {path} at byte offset {offset}: {reason}; refusing to start (this is not a torn tail: valid records follow it)")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("data directory {path} was written with {found} shards but the store was opened with {configured}")]
    ShardCountMismatch { path: PathBuf, found: u32, configured: u32 },
    #[error("data directory {path} is in use by another process (its LOCK is held)")]
    Locked { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl OpenError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        OpenError::Io { path: path.into(), source }
    }
}

/// Why a watch ended. After `SlowWatcher` a client re-watches from `resume_revision` and sees
/// no gap.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    #[error("watch start revision {requested} has been compacted (compacted up to {compact_revision})")]
    Compacted { requested: Revision, compact_revision: Revision },
    #[error("watcher fell more than {queue_max} events behind and was closed; resume from revision {resume_revision}")]
    SlowWatcher { resume_revision: Revision, queue_max: usize },
    #[error("the store is shutting down")]
    Shutdown,
}
