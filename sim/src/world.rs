//! What every part of one seed's run shares: the seeded generator, the trace, the network's
//! state, the replicas' handles and disks, what the clients recorded, and the first violation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::{Checks, Violation};
use crate::disk::Disk;
use crate::rt::Raft;
use crate::state_machine::Sm;
use crate::trace::Trace;
use crate::{Bug, Params};

/// The network's fault rates in force.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetRates {
    /// Probability a message is lost before it arrives.
    pub drop: f64,
    /// Probability an answer is lost after the message was handled.
    pub drop_answer: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Probability a message is held back, by up to `delay_max_ms` (messages then overtake
    /// each other).
    pub delay: f64,
    pub delay_max_ms: u64,
}

/// One replica as the world sees it: its disk outlives its process.
pub struct Replica {
    pub disk: Arc<Disk>,
    /// The running process (none while crashed).
    pub up: Option<(Raft, Sm)>,
    /// Incremented at every start: tasks of an old incarnation stop.
    pub incarnation: u64,
    /// A start is under way (two must never run on one disk).
    pub starting: bool,
}

pub struct World {
    pub seed: u64,
    pub params: Params,
    pub t0: tokio::time::Instant,
    pub rng: Mutex<StdRng>,
    pub trace: Trace,
    pub net: Mutex<NetState>,
    pub replicas: Mutex<BTreeMap<u64, Replica>>,
    pub checks: Checks,
    /// The run's verdict is in: long-running tasks (watchers) stop.
    pub done: std::sync::atomic::AtomicBool,
    /// Each replica's wall clock minus true time, µs (within `lease::SKEW_BOUND` of each other).
    pub skew_us: Mutex<BTreeMap<u64, i64>>,
    /// Replicas the nemesis keeps alive for an aimed fault.
    pub protected: Mutex<BTreeSet<u64>>,
    /// Each replica's monotonic clock, where its rate last changed (none yet: since the start,
    /// at the rate `drift_ppm_for(id, 0)` gives it).
    pub mono: Mutex<BTreeMap<u64, MonoClock>>,
}

/// A process's monotonic clock: it never jumps, but runs `ppm` millionths fast (or slow, when
/// negative) against true time, within `store_lease::DRIFT_BOUND_PPM`.
#[derive(Clone, Copy, Debug)]
pub struct MonoClock {
    /// True time of the last change of rate, µs since the start.
    pub since_us: u64,
    /// The clock's reading then, µs since the start.
    pub reading_us: u64,
    pub ppm: i64,
}

impl MonoClock {
    fn reading_at(&self, now_us: u64) -> u64 {
        let elapsed = now_us.saturating_sub(self.since_us) as i128;
        self.reading_us + (elapsed * (1_000_000 + self.ppm as i128) / 1_000_000) as u64
    }
}

#[derive(Default)]
pub struct NetState {
    pub rates: NetRates,
    /// Pairs (a, b), a < b, that cannot talk.
    pub cut: BTreeSet<(u64, u64)>,
}

impl World {
    pub fn new(seed: u64, params: Params) -> Arc<World> {
        Arc::new(World {
            seed,
            params,
            t0: tokio::time::Instant::now(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            trace: Trace::default(),
            net: Mutex::new(NetState::default()),
            replicas: Mutex::new(BTreeMap::new()),
            checks: Checks::default(),
            done: Default::default(),
            skew_us: Mutex::new(BTreeMap::new()),
            protected: Mutex::new(BTreeSet::new()),
            mono: Mutex::new(BTreeMap::new()),
        })
    }

    /// Replica `id`'s monotonic clock now, as the `Instant` its code reads.
    pub fn mono_now(&self, id: u64) -> std::time::Instant {
        let now = self.now_us();
        let clock = if self.bug(crate::Bug::LeaseClockTooFast) {
            MonoClock { since_us: 0, reading_us: 0, ppm: 5 * crate::store_lease::DRIFT_BOUND_PPM }
        } else {
            self.mono_clock(id)
        };
        self.t0.into_std() + std::time::Duration::from_micros(clock.reading_at(now))
    }

    /// How fast replica `id`'s monotonic clock runs now, in millionths over true time.
    pub fn mono_rate_ppm(&self, id: u64) -> i64 {
        if self.bug(crate::Bug::LeaseClockTooFast) { 5 * crate::store_lease::DRIFT_BOUND_PPM } else { self.mono_clock(id).ppm }
    }

    /// Replica `id`'s monotonic clock runs at `ppm` from now on (its reading continues).
    pub fn set_drift(&self, id: u64, ppm: i64) {
        let now = self.now_us();
        let reading_us = self.mono_clock(id).reading_at(now);
        self.mono.lock().unwrap().insert(id, MonoClock { since_us: now, reading_us, ppm });
    }

    fn mono_clock(&self, id: u64) -> MonoClock {
        self.mono.lock().unwrap().get(&id).copied().unwrap_or(MonoClock { since_us: 0, reading_us: 0, ppm: self.drift_ppm_for(id, 0) })
    }

    /// A drift within the bound for replica `id`'s `n`th rate, from the seed alone (no draw
    /// from the world's generator, so adding clocks left every other choice of a seed as it was).
    pub fn drift_ppm_for(&self, id: u64, n: u64) -> i64 {
        let bound = crate::store_lease::DRIFT_BOUND_PPM;
        let mut z = self.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        // splitmix64's finaliser.
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % (2 * bound as u64 + 1)) as i64 - bound
    }

    pub fn now_us(&self) -> u64 {
        crate::rt::now_us(self.t0)
    }

    pub fn log(&self, component: &'static str, text: String) {
        self.trace.log(self.now_us(), component, text);
    }

    /// Whether `bug` is planted in this run (never, in a build without `sim-bugs`).
    pub fn bug(&self, bug: Bug) -> bool {
        cfg!(feature = "sim-bugs") && self.params.bug == Some(bug)
    }

    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap().random_bool(p.min(1.0))
    }

    pub fn range(&self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { self.rng.lock().unwrap().random_range(lo..hi) }
    }

    pub fn pick<T: Clone>(&self, items: &[T]) -> Option<T> {
        if items.is_empty() { None } else { Some(items[self.range(0, items.len() as u64) as usize].clone()) }
    }

    /// Records a broken invariant (the first one stops the seed).
    pub fn violate(&self, name: &'static str, message: String) {
        self.log("check", format!("VIOLATION {name}: {message}"));
        self.checks.violate(Violation { name, message, at_us: self.now_us() });
    }

    pub fn failed(&self) -> bool {
        self.checks.failed()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.replicas.lock().unwrap().keys().copied().collect()
    }

    /// The running replicas' handles.
    pub fn up(&self) -> Vec<(u64, Raft, Sm)> {
        self.replicas.lock().unwrap().iter().filter_map(|(id, r)| r.up.as_ref().map(|(raft, sm)| (*id, raft.clone(), sm.clone()))).collect()
    }

    pub fn handle(&self, id: u64) -> Option<(Raft, Sm)> {
        self.replicas.lock().unwrap().get(&id).and_then(|r| r.up.clone())
    }

    pub fn clock_skew_us(&self, id: u64) -> i64 {
        self.skew_us.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    /// Replica `id`'s process incarnation, if it runs.
    pub fn incarnation_if_up(&self, id: u64) -> Option<u64> {
        self.replicas.lock().unwrap().get(&id).and_then(|r| r.up.as_ref().map(|_| r.incarnation))
    }

    pub fn connected(&self, a: u64, b: u64) -> bool {
        !self.net.lock().unwrap().cut.contains(&(a.min(b), a.max(b)))
    }
}
