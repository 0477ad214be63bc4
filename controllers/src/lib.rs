//! capstan's controllers: reconciliation loops, each a client of the API server only,
//! turning declared state into pods. Every controller follows one shape: informers (shared
//! per process, `client::informer`) turn changes into keys on its work queue
//! (`client::workqueue`); workers take keys and reconcile the object's desired state with
//! what the informers show, acting through the API. Decisions are pure functions in their
//! modules (`replicaset.rs`, `deployment.rs`, `podutil.rs`), tested as tables.
//!
//! Running now: ReplicaSet, Deployment, garbage collection (ownerReferences, with
//! background, foreground and orphan propagation), node lifecycle (lease-based
//! `Ready=Unknown`, the unreachable taint, eviction after the toleration), ServiceAccount
//! (`default` in every namespace), Endpoints and EndpointSlices.

pub mod autoscale;
pub mod cron;
pub mod csr;
pub mod deployment;
pub mod identity;
pub mod ipam;
pub mod leader;
pub mod podutil;
pub mod replicaset;
pub mod run;
pub mod token_cleaner;
pub mod workloads;

pub use run::Controllers;
