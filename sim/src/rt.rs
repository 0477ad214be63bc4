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
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft_rt::{AsyncRuntime, OptionalSend};

use crate::world::World;

type Seeded = openraft_rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>;

tokio::task_local! {
    /// The simulated process a task belongs to (none: the simulator's own tasks).
    static PROCESS: Process;
}

/// A replica's process, as its tasks know it: openraft's timers read its monotonic clock
/// (`World::mono_now`, drifting within `store_lease::DRIFT_BOUND_PPM`), not true time.
#[derive(Clone)]
struct Process {
    id: u64,
    /// Weak: the world holds the replicas whose tasks hold this.
    world: Weak<World>,
}

/// Runs `f`, and every task it spawns through [`spawn`] (openraft's too), as replica `id`'s
/// process.
pub fn in_process<F: Future>(world: &Arc<World>, id: u64, f: F) -> impl Future<Output = F::Output> {
    PROCESS.scope(Process { id, world: Arc::downgrade(world) }, f)
}

fn process() -> Option<(u64, Arc<World>)> {
    PROCESS.try_with(|p| p.world.upgrade().map(|w| (p.id, w))).ok().flatten()
}

/// A reading of the current process's monotonic clock: what openraft's timers (election,
/// heartbeat, leader lease) measure with. Outside a process it is true simulated time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SimInstant(tokio::time::Instant);

impl SimInstant {
    /// The true time at which this process's clock will read `self` (at its current rate).
    fn when(self) -> tokio::time::Instant {
        let Some((id, world)) = process() else { return self.0 };
        let left = self.0.saturating_duration_since(tokio::time::Instant::from_std(world.mono_now(id)));
        tokio::time::Instant::now() + true_duration(&world, id, left)
    }
}

/// How much true time passes while process `id`'s clock advances `d`.
fn true_duration(world: &World, id: u64, d: Duration) -> Duration {
    let ppm = world.mono_rate_ppm(id) as i128;
    // Saturating: a sleep "for ever" stays one, not a short one wrapped around.
    Duration::from_nanos(u64::try_from(d.as_nanos() as i128 * 1_000_000 / (1_000_000 + ppm)).unwrap_or(u64::MAX))
}

/// `d` of the current process's clock, in true time.
fn in_true_time(d: Duration) -> Duration {
    match process() {
        Some((id, world)) => true_duration(&world, id, d),
        None => d,
    }
}

impl openraft_rt::Instant for SimInstant {
    fn now() -> Self {
        match process() {
            Some((id, world)) => SimInstant(tokio::time::Instant::from_std(world.mono_now(id))),
            None => SimInstant(tokio::time::Instant::now()),
        }
    }
}

impl Add<Duration> for SimInstant {
    type Output = SimInstant;
    fn add(self, d: Duration) -> SimInstant {
        SimInstant(self.0 + d)
    }
}

impl AddAssign<Duration> for SimInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl Sub<Duration> for SimInstant {
    type Output = SimInstant;
    fn sub(self, d: Duration) -> SimInstant {
        SimInstant(self.0 - d)
    }
}

impl SubAssign<Duration> for SimInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d;
    }
}

impl Sub<SimInstant> for SimInstant {
    type Output = Duration;
    fn sub(self, earlier: SimInstant) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }
}

/// openraft's seeded tokio runtime with a watch channel that wakes in a fixed order
/// (`crate::watch` says why), whose timers run on each process's own clock.
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
    type Instant = SimInstant;
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
        // A task spawned by a process's task belongs to that process.
        match PROCESS.try_with(|p| p.clone()) {
            Ok(p) => Seeded::spawn(PROCESS.scope(p, future)),
            Err(_) => Seeded::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(in_true_time(duration))
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline.when())
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(in_true_time(duration), future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline.when(), future)
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft_rt::Instant as _;

    /// openraft's timers in a replica's process run on that replica's clock: a sleep of one
    /// second on a clock 1 % fast is over in 1/1.01 s of true time, one on a clock 1 % slow in
    /// 1/0.99 s, and the tasks a process spawns keep its clock. Outside a process: true time.
    #[test]
    fn a_process_timers_run_on_its_own_drifting_clock() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(SimRt::scope(1, async {
            let world = World::new(1, crate::run::Params::default());
            world.set_drift(1, 10_000);
            world.set_drift(2, -10_000);
            let took = |id: Option<u64>, by_deadline: bool| {
                let world = world.clone();
                async move {
                    let t0 = tokio::time::Instant::now();
                    let nap = async move {
                        // In a task the process spawns, as openraft's are.
                        spawn(async move {
                            if by_deadline {
                                SimRt::sleep_until(SimInstant::now() + Duration::from_secs(1)).await;
                            } else {
                                SimRt::sleep(Duration::from_secs(1)).await;
                            }
                        })
                        .await
                        .unwrap();
                    };
                    match id {
                        Some(id) => in_process(&world, id, nap).await,
                        None => nap.await,
                    }
                    t0.elapsed().as_micros()
                }
            };
            // Milliseconds, as tokio's timer rounds them up.
            for by_deadline in [false, true] {
                let fast = took(Some(1), by_deadline).await / 1000;
                assert!((990..=991).contains(&fast), "1 % fast (deadline: {by_deadline}): {fast} ms");
                let slow = took(Some(2), by_deadline).await / 1000;
                assert!((1010..=1011).contains(&slow), "1 % slow (deadline: {by_deadline}): {slow} ms");
                let outside = took(None, by_deadline).await / 1000;
                assert!((1000..=1001).contains(&outside), "true time outside a process: {outside} ms");
            }
            // A sleep of centuries converts without wrapping around.
            assert!(true_duration(&world, 2, Duration::from_secs(1 << 40)) > Duration::from_secs(1 << 34));
            // The clock openraft reads is the one the process's store leases read.
            let reading = in_process(&world, 2, async { SimInstant::now() }).await;
            assert_eq!(reading.0, tokio::time::Instant::from_std(world.mono_now(2)));
        }));
    }
}
