//! capstan's store: a thread-per-core MVCC key-value store with etcd v3 semantics and an
//! io_uring write-ahead log.
//!
//! **What it is for.** Every object of a capstan cluster lives here; the API server is its only
//! client. Keys and values are bytes; the store knows nothing of Kubernetes.
//!
//! **Invariants.**
//! - One global revision orders every change; it never goes backwards, across restarts too.
//! - A write is acknowledged only after it is durable (one `fdatasync` per batch) and visible
//!   (every earlier revision is durable too), unless the store was opened with `fsync: false`.
//! - Watchers see every change in their range exactly once, in revision order.
//! - A shard's data is touched only by its own thread; shards share atomics, never locks.
//!
//! **Where to start reading.** [`Store`] (the handle and recovery), then `shard.rs` (the batch
//! loop), `shared.rs` (how visibility is computed), `wal.rs` (the log and its recovery
//! decision), `coord.rs` (work that spans shards), `mvcc.rs` (the index). `DESIGN.md` beside
//! this crate has the on-disk layout and the crash analysis.

pub mod backup;
pub mod command;
mod coord;
pub mod disk;
pub mod error;
pub mod failpoint;
pub mod io_stats;
pub mod lease_deadlines;
mod mvcc;
mod paced;
pub mod replicated;
mod shard;
mod shared;
mod snapshot;
#[allow(clippy::all, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes)]
#[rustfmt::skip]
mod snapshot_generated;
mod store;
mod txn;
mod types;
pub mod wal;

pub use command::{Applied, Command};
pub use error::{OpenError, StoreError, WatchError};
pub use replicated::{ApplyBatch, Replication, SnapshotInfo, StateMachine};
pub use store::{Config, Store, Watcher};
pub use types::*;

/// The pure decision functions, exposed for tests and benchmarks.
pub mod internals {
    pub use crate::mvcc::{Entry, Mvcc};
    pub use crate::txn::{KeySpace, Outcome, eval, validate};
}
