//! A fault-injecting layer for the peer network, for in-process tests: messages dropped (before
//! they are sent, or after: the sender never learns the outcome), delayed (so that messages on
//! different connections overtake each other), and partitions between groups of replicas.
//!
//! Every decision comes from one random generator seeded by the test, which prints the seed;
//! the schedule of the tasks is not deterministic, so a seed replays the same fault
//! probabilities and partitions, not the exact interleaving (the simulation issue brings
//! that).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::types::NodeId;

#[derive(Clone, Copy, Debug, Default)]
pub struct FaultRates {
    /// Probability a message is dropped before it is sent.
    pub drop_before: f64,
    /// Probability a message's answer is dropped after the peer handled it.
    pub drop_after: f64,
    /// Probability a message is delayed, by up to `delay_max`.
    pub delay: f64,
    pub delay_max: Duration,
}

pub struct Faults {
    seed: u64,
    rng: Mutex<rand::rngs::StdRng>,
    rates: Mutex<FaultRates>,
    /// Pairs (a, b) with a < b that cannot talk.
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
    /// Bumped on every partition change: streams opened before it end.
    generation: AtomicU64,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    Deliver { delay: Option<Duration>, lose_answer: bool },
    Drop,
    Partitioned,
}

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults {
            seed,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            rates: Mutex::new(FaultRates::default()),
            cut: Mutex::new(HashSet::new()),
            generation: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn set_rates(&self, r: FaultRates) {
        *self.rates.lock().unwrap() = r;
    }

    /// Cuts every link between `a`'s members and `b`'s.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut cut = self.cut.lock().unwrap();
        for x in a {
            for y in b {
                if x != y {
                    cut.insert(((*x).min(*y), (*x).max(*y)));
                }
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Isolates `n` from everyone in `all`.
    pub fn isolate(&self, n: NodeId, all: &[NodeId]) {
        self.partition(&[n], all);
    }

    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        !self.cut.lock().unwrap().contains(&(a.min(b), a.max(b)))
    }

    /// Decides the fate of one message from `from` to `to`.
    pub fn decide(&self, from: NodeId, to: NodeId) -> Fate {
        if !self.connected(from, to) {
            return Fate::Partitioned;
        }
        let r = *self.rates.lock().unwrap();
        let mut rng = self.rng.lock().unwrap();
        if r.drop_before > 0.0 && rng.random_bool(r.drop_before) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Fate::Drop;
        }
        let delay = (r.delay > 0.0 && rng.random_bool(r.delay) && !r.delay_max.is_zero())
            .then(|| rng.random_range(Duration::ZERO..r.delay_max));
        if delay.is_some() {
            self.delayed.fetch_add(1, Ordering::Relaxed);
        }
        let lose_answer = r.drop_after > 0.0 && rng.random_bool(r.drop_after);
        if lose_answer {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Fate::Deliver { delay, lose_answer }
    }

    /// (messages dropped, messages delayed) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.dropped.load(Ordering::Relaxed), self.delayed.load(Ordering::Relaxed))
    }
}
