//! The simulated runtime and openraft's types for the simulation.
//!
//! A seed runs on a current-thread tokio runtime whose clock is paused: time stands still while
//! any task can run, and jumps to the next timer when none can, so a run's schedule depends only
//! on what its tasks do. openraft's randomness (election timeouts) comes from its
//! `DeterministicRng` wrapper, which gives every spawned task a seed derived from its parent's;
//! the simulation's own choices come from the world's generator. Every task is spawned through
//! [`spawn`], so openraft's seed follows it.

use std::fmt;
use std::future::Future;

use std::time::Duration;

use openraft_rt::{AsyncRuntime, OptionalSend};

type Seeded = openraft_rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>;

/// openraft's seeded tokio runtime with a watch channel that wakes in a fixed order
/// (`crate::watch` says why).
#[derive(Debug)]
pub struct SimRt(Seeded);

impl SimRt {
    /// Runs `f` with openraft's seed lineage rooted at `seed`.
    pub fn scope<F: Future>(seed: u64, f: F) -> impl Future<Output = F::Output> {
        Seeded::scope(seed, f)
    }
}

impl AsyncRuntime for SimRt {
    type JoinError = <Seeded as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Seeded as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Seeded as AsyncRuntime>::Sleep;
    type Instant = <Seeded as AsyncRuntime>::Instant;
    type TimeoutError = <Seeded as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Seeded as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = <Seeded as AsyncRuntime>::ThreadLocalRng;
    type Mpsc = <Seeded as AsyncRuntime>::Mpsc;
    type Watch = crate::watch::SimWatch;
    type Oneshot = <Seeded as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Seeded as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Seeded::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Seeded::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Seeded::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        Seeded::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        Seeded::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Seeded::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        Seeded::thread_rng()
    }

    fn new(threads: usize) -> Self {
        SimRt(Seeded::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

/// A raft entry's payload: one store command (the sim proposes one per client request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd(pub storage::Command);

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What applying a command answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply(pub Option<storage::Applied>);

openraft::declare_raft_types!(
    /// The simulation's raft: capstan's node ids and store commands on the seeded runtime.
    pub Cfg:
        D = Cmd,
        R = Reply,
        NodeId = u64,
        Node = (),
        AsyncRuntime = SimRt,
);

pub type LogId = openraft::alias::LogIdOf<Cfg>;
pub type Vote = openraft::alias::VoteOf<Cfg>;
pub type Entry = openraft::alias::EntryOf<Cfg>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<Cfg>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<Cfg>;
pub type Raft = openraft::Raft<Cfg, crate::state_machine::Sm>;

/// Spawns a task that keeps openraft's seed lineage (every task of a run must be spawned here).
pub fn spawn<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    SimRt::spawn(f)
}

/// Simulated time since the runtime started, in microseconds.
pub fn now_us(t0: tokio::time::Instant) -> u64 {
    tokio::time::Instant::now().duration_since(t0).as_micros() as u64
}
