//! openraft's own storage conformance suite, over the project's log (`LogStore`, the io_uring
//! WAL) and state machine (`StateMachineStore`, the store's shard).

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use raft::log_store::{LogConfig, LogStore};
use raft::state_machine::StateMachineStore;
use raft::types::TypeConfig;
use storage::replicated::BoxFuture;
use storage::{Applied, Command, LeaseId, Replication, Revision, Store, StoreError};

/// The suite drives the log and the state machine directly: nothing is proposed.
struct NoProposals;

impl Replication for NoProposals {
    fn propose(&self, _cmd: Command) -> BoxFuture<Result<Applied, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("not in the storage suite".into())) })
    }
    fn read_barrier(&self) -> BoxFuture<Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn lease_keep_alive(&self, _id: LeaseId) -> BoxFuture<Result<i64, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("not in the storage suite".into())) })
    }
    fn lease_time_to_live(&self, _id: LeaseId) -> BoxFuture<Result<(i64, i64), StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("not in the storage suite".into())) })
    }
    fn snapshot(&self) -> BoxFuture<Result<Revision, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("not in the storage suite".into())) })
    }
}

struct Builder;

fn err(e: impl std::fmt::Display) -> StorageError<TypeConfig> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, std::io::Error::other(e.to_string()))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, (tempfile::TempDir, Store)> for Builder {
    async fn build(&self) -> Result<((tempfile::TempDir, Store), LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(err)?;
        let mut lc = LogConfig::new(dir.path().join("raft"));
        lc.segment_bytes = 4 << 20;
        let (log, _) = LogStore::open(lc).map_err(err)?;
        let mut cfg = storage::Config::new(dir.path().join("store"));
        cfg.shards = 1;
        cfg.pin_threads = false;
        cfg.segment_bytes = 4 << 20;
        cfg.batch_bytes_max = 1 << 20;
        cfg.request_bytes_max = 1 << 20;
        let (store, sm) = Store::open_replica(cfg, Arc::new(NoProposals)).map_err(err)?;
        let sm = StateMachineStore::new(sm).map_err(err)?;
        Ok(((dir, store), log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_over_the_wal_and_the_store() {
    Suite::test_all(Builder).await.unwrap();
}
