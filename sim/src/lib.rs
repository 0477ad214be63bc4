//! capstan's deterministic simulation (sim/DESIGN.md): raft replicas of the store, their disks
//! and network, clients and a nemesis, all on one thread under one seed and simulated time, with
//! invariants checked as the run goes. A failing seed replays exactly.
//!
//! The pieces: `rt` (the seeded runtime and openraft's types), `disk` (a disk that loses
//! unsynced writes), `log_store` and `state_machine` (openraft's storage over it and over the
//! store's real MVCC and transaction code), `net` (the faulty network), `cluster` (starting,
//! crashing and restarting replicas), `workload` (key-value clients and watchers), `kube`
//! (Deployments, ReplicaSets, Jobs, schedulers, hollow kubelets), `disruption` (a
//! PodDisruptionBudget, its controller and drains), `quota` (a ResourceQuota, its admission
//! and controller), `lease` (leader election with
//! capstan's code and skewed clocks), `check` (the invariants), `nemesis` (the faults) and
//! `run` (one seed, start to verdict).

pub mod check;
pub mod cluster;
pub mod lease;
pub mod disk;
pub mod disruption;
pub mod kube;
pub mod log_store;
pub mod nemesis;
pub mod quota;
pub mod net;
pub mod rt;
pub mod run;
pub mod state_machine;
pub mod store_lease;
pub mod trace;
pub mod watch;
pub mod workload;
pub mod world;

pub use check::Violation;
pub use run::{Params, SeedReport, run_seed};

/// A known bug the simulated components can be built with (`sim-bugs`), to show the checker
/// catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The log store tells raft an append is durable before its fdatasync.
    AckBeforeFsync,
    /// A replica serving a watch leaves out an event.
    SkipWatchEvent,
    /// A scheduler binds a pod without comparing its revision (a blind write).
    BindWithoutCas,
    /// A restarted leader takes up its old term without an election (openraft's
    /// `enable_leader_restore`, which capstan turns off: raft/DESIGN.md, "No leader restore").
    LeaderRestore,
    /// Leader election's renew deadline equal to the lease's duration: no room left for
    /// clock differences (capstan's election had this until the simulation found it).
    LeaseDeadlineTooLong,
    /// A replica that becomes leader keeps the lease deadlines it saw as a follower instead of
    /// giving every lease its whole TTL again: keep-alives renewed them on the old leader.
    LeaseNotExtended,
    /// Every replica's monotonic clock runs 5 % fast, five times the drift the store's leases
    /// are designed for (`store_lease::DRIFT_BOUND_PPM`): a lease's TTL ends early in true time.
    LeaseClockTooFast,
    /// The disruption controller writes a budget's status over whatever the budget is now, not
    /// only over the one it computed from (capstan's controller did, until the simulation
    /// found it): an eviction granted meanwhile is forgotten and its disruption spent twice.
    PdbStatusWithoutCas,
    /// The resource-quota controller writes a recount that lowers a quota's usage at once,
    /// without waiting for a later recount to agree: a recount from a pods view older than the
    /// quota's lets admission over-commit.
    QuotaLoweredAtOnce,
}

impl Bug {
    pub const ALL: [Bug; 9] = [
        Bug::AckBeforeFsync,
        Bug::SkipWatchEvent,
        Bug::BindWithoutCas,
        Bug::LeaderRestore,
        Bug::LeaseDeadlineTooLong,
        Bug::LeaseNotExtended,
        Bug::LeaseClockTooFast,
        Bug::PdbStatusWithoutCas,
        Bug::QuotaLoweredAtOnce,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::SkipWatchEvent => "skip-watch-event",
            Bug::BindWithoutCas => "bind-without-cas",
            Bug::LeaderRestore => "leader-restore",
            Bug::LeaseDeadlineTooLong => "lease-deadline-too-long",
            Bug::LeaseNotExtended => "lease-not-extended",
            Bug::LeaseClockTooFast => "lease-clock-too-fast",
            Bug::PdbStatusWithoutCas => "pdb-status-without-cas",
            Bug::QuotaLoweredAtOnce => "quota-lowered-at-once",
        }
    }

    /// Parses a bug's name; refused unless this build has the bugs planted.
    pub fn parse(s: &str) -> Result<Bug, String> {
        let b = Bug::ALL.into_iter().find(|b| b.name() == s).ok_or_else(|| {
            format!("unknown bug {s:?} (known: {})", Bug::ALL.map(|b| b.name()).join(", "))
        })?;
        if cfg!(feature = "sim-bugs") {
            Ok(b)
        } else {
            Err(format!("bug {s:?} is not planted in this build: build with `--features sim-bugs`"))
        }
    }
}
