//! The scheduling queue, as kube-scheduler's: an active heap ordered by priority then
//! arrival, a backoff heap (per-pod exponential backoff, 1 s doubling to 10 s), and the
//! unschedulable pods, which go back only on a cluster event that could help them (a node
//! added or changed, a pod deleted) or after `UNSCHEDULABLE_MAX` in any case.
//!
//! Pure: time comes in as arguments.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::types::PodInfo;

pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
pub const UNSCHEDULABLE_MAX: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    Active,
    Backoff,
    Unschedulable,
    InFlight,
}

pub struct Entry {
    pub pod: Arc<PodInfo>,
    pub attempts: u32,
    /// When the pod was first seen (for the end-to-end latency).
    pub first_seen: Instant,
    /// When it last entered the active queue (for the queue wait).
    pub queued_at: Instant,
    pub at: Where,
    seq: u64,
    backoff_until: Instant,
    unschedulable_since: Instant,
}

#[derive(Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    seq: u64,
    /// The last look for pods unschedulable longer than `UNSCHEDULABLE_MAX` (a walk over
    /// every entry, so at most once per `STALE_SCAN_EVERY`, not once per pop).
    stale_scanned: Option<Instant>,
}

const STALE_SCAN_EVERY: Duration = Duration::from_secs(1);

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a pod may be waiting in the active queue (O(1); the heap may hold stale
    /// entries, which `pop` skips).
    pub fn maybe_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// (active, backoff, unschedulable, in flight) counts: a walk over every entry.
    pub fn depths(&self) -> [usize; 4] {
        let mut d = [0; 4];
        for e in self.entries.values() {
            d[e.at as usize] += 1;
        }
        d
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    fn push_active(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(uid) {
            self.seq += 1;
            e.seq = self.seq;
            e.at = Where::Active;
            e.queued_at = now;
            self.active.push((e.pod.priority, Reverse(self.seq), uid.to_string()));
        }
    }

    /// A pending pod appeared or changed: queue it (an update of a queued pod replaces its
    /// object in place).
    pub fn add(&mut self, pod: Arc<PodInfo>, now: Instant) {
        let uid = pod.uid.clone();
        if let Some(e) = self.entries.get_mut(&uid) {
            e.pod = pod;
            if e.at == Where::Unschedulable {
                // An update to the pod itself may make it schedulable.
                self.push_active(&uid, now);
            }
            return;
        }
        self.entries.insert(
            uid.clone(),
            Entry { pod, attempts: 0, first_seen: now, queued_at: now, at: Where::Active, seq: 0, backoff_until: now, unschedulable_since: now },
        );
        self.push_active(&uid, now);
    }

    pub fn remove(&mut self, uid: &str) -> Option<Entry> {
        self.entries.remove(uid)
    }

    /// Moves backoff entries whose time has come to the active queue; returns when the next
    /// one is due.
    pub fn flush(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse((t, seq, uid))) = self.backoff.peek().cloned() {
            if t > now {
                return Some(t);
            }
            self.backoff.pop();
            if self.entries.get(&uid).is_some_and(|e| e.at == Where::Backoff && e.seq == seq) {
                self.push_active(&uid, now);
            }
        }
        if self.stale_scanned.is_some_and(|t| now.saturating_duration_since(t) < STALE_SCAN_EVERY) {
            return None;
        }
        self.stale_scanned = Some(now);
        let stale: Vec<String> = self.entries.iter().filter(|(_, e)| e.at == Where::Unschedulable && now.duration_since(e.unschedulable_since) >= UNSCHEDULABLE_MAX).map(|(u, _)| u.clone()).collect();
        for u in stale {
            self.push_active(&u, now);
        }
        None
    }

    /// The next pod to schedule (highest priority, then oldest), marked in flight.
    pub fn pop(&mut self, now: Instant) -> Option<&Entry> {
        self.flush(now);
        while let Some((_, Reverse(seq), uid)) = self.active.pop() {
            if let Some(e) = self.entries.get_mut(&uid)
                && e.at == Where::Active
                && e.seq == seq
            {
                e.at = Where::InFlight;
                e.attempts += 1;
                return self.entries.get(&uid);
            }
        }
        None
    }

    fn backoff_for(attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(16);
        (BACKOFF_INITIAL * (1u32 << shift)).min(BACKOFF_MAX)
    }

    /// The attempt found no node: wait for a cluster event.
    pub fn unschedulable(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(uid) {
            e.at = Where::Unschedulable;
            e.unschedulable_since = now;
            e.backoff_until = now + Queue::backoff_for(e.attempts);
        }
    }

    /// The attempt failed for another reason (a binding error): retry after backoff.
    pub fn backoff(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(uid) {
            self.seq += 1;
            e.seq = self.seq;
            e.at = Where::Backoff;
            e.backoff_until = now + Queue::backoff_for(e.attempts);
            self.backoff.push(Reverse((e.backoff_until, self.seq, uid.to_string())));
        }
    }

    /// A cluster event that may help: unschedulable pods go to backoff (or straight to
    /// active if their backoff is over).
    pub fn move_all_unschedulable(&mut self, now: Instant) {
        let uids: Vec<(String, Instant)> = self.entries.iter().filter(|(_, e)| e.at == Where::Unschedulable).map(|(u, e)| (u.clone(), e.backoff_until)).collect();
        for (uid, until) in uids {
            if until <= now {
                self.push_active(&uid, now);
            } else if let Some(e) = self.entries.get_mut(&uid) {
                self.seq += 1;
                e.seq = self.seq;
                e.at = Where::Backoff;
                self.backoff.push(Reverse((until, self.seq, uid)));
            }
        }
    }

    pub fn get(&self, uid: &str) -> Option<&Entry> {
        self.entries.get(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, prio: i32) -> Arc<PodInfo> {
        Arc::new(PodInfo { uid: uid.into(), name: uid.into(), priority: prio, ..Default::default() })
    }

    #[test]
    fn priority_then_arrival() {
        let t = Instant::now();
        let mut q = Queue::default();
        q.add(pod("a", 0), t);
        q.add(pod("b", 10), t);
        q.add(pod("c", 0), t);
        let order: Vec<String> = std::iter::from_fn(|| q.pop(t).map(|e| e.pod.uid.clone())).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_an_event_then_their_backoff() {
        let t = Instant::now();
        let mut q = Queue::default();
        q.add(pod("a", 0), t);
        assert!(q.pop(t).is_some());
        q.unschedulable("a", t);
        assert!(q.pop(t + Duration::from_secs(60)).is_none(), "no event: it stays");
        q.move_all_unschedulable(t + Duration::from_millis(100));
        assert!(q.pop(t + Duration::from_millis(500)).is_none(), "still backing off (1 s)");
        assert_eq!(q.pop(t + Duration::from_secs(1)).map(|e| e.attempts), Some(2));
        // Backoff doubles per attempt and is capped.
        assert_eq!(Queue::backoff_for(2), Duration::from_secs(2));
        assert_eq!(Queue::backoff_for(9), BACKOFF_MAX);
        // Without any event, an unschedulable pod is retried after UNSCHEDULABLE_MAX.
        q.unschedulable("a", t);
        assert!(q.pop(t + UNSCHEDULABLE_MAX).is_some());
    }

    #[test]
    fn a_binding_failure_retries_after_backoff() {
        let t = Instant::now();
        let mut q = Queue::default();
        q.add(pod("a", 0), t);
        q.pop(t);
        q.backoff("a", t);
        assert!(q.pop(t).is_none());
        assert!(q.pop(t + BACKOFF_INITIAL).is_some());
        assert_eq!(q.depths(), [0, 0, 0, 1]);
    }
}
