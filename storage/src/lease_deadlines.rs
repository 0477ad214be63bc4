//! When each lease expires: the deadlines a store keeps beside its index (which holds only
//! each lease's TTL and its keys). Time is passed in, so the coordinator runs this with the
//! machine's monotonic clock and the simulation with its own.
//!
//! Deadlines are in memory only: a store that starts (or a replica that becomes leader, the
//! one that expires leases) gives every lease its whole TTL again, as etcd does, so a lease
//! kept alive through another process is never cut short by a deadline this one did not see
//! renewed. A lease past its deadline is expiring: its revocation is on its way, and a
//! keep-alive then is refused (as etcd refuses one), never acknowledged for a lease about to go.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::types::LeaseId;

/// How long an expired lease whose revocation did not go through waits before it is tried again.
pub const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Clone)]
pub struct Deadlines {
    /// Each lease's TTL, deadline, and whether it expired (its revocation pending).
    leases: HashMap<LeaseId, (i64, Instant, bool)>,
}

fn after(now: Instant, ttl: i64) -> Instant {
    now + Duration::from_secs(ttl.max(0) as u64)
}

impl Deadlines {
    /// Every lease of `ttls` (a recovered or received index), each with its whole TTL from `now`.
    pub fn from_ttls(ttls: impl IntoIterator<Item = (LeaseId, i64)>, now: Instant) -> Deadlines {
        Deadlines { leases: ttls.into_iter().map(|(id, ttl)| (id, (ttl, after(now, ttl), false))).collect() }
    }

    /// A grant was applied (`Some(ttl)`: its deadline is its TTL from now) or a revocation (`None`).
    pub fn applied(&mut self, id: LeaseId, ttl: Option<i64>, now: Instant) {
        match ttl {
            Some(ttl) => {
                self.leases.insert(id, (ttl, after(now, ttl), false));
            }
            None => {
                self.leases.remove(&id);
            }
        }
    }

    pub fn contains(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// The leases, in id order.
    pub fn ids(&self) -> Vec<LeaseId> {
        let mut ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Renews a lease: its deadline is its TTL from now. Answers the TTL. An expiring lease
    /// is not renewed: it is as good as gone.
    pub fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<i64, StoreError> {
        match self.leases.get_mut(&id) {
            Some((ttl, deadline, false)) if *deadline > now => {
                *deadline = after(now, *ttl);
                Ok(*ttl)
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    /// A lease's TTL and its whole seconds left.
    pub fn time_to_live(&self, id: LeaseId, now: Instant) -> Result<(i64, i64), StoreError> {
        match self.leases.get(&id) {
            Some((ttl, deadline, _)) => Ok((*ttl, deadline.saturating_duration_since(now).as_secs() as i64)),
            None => Err(StoreError::LeaseNotFound(id)),
        }
    }

    /// On becoming the replica that expires leases: every lease's time restarts at its TTL
    /// plus `extend` (the time a new leader takes to be elected, during which keep-alives
    /// could reach no one). Deadlines seen on a follower were never renewed here.
    pub fn restart_all(&mut self, extend: Duration, now: Instant) {
        for (ttl, deadline, expiring) in self.leases.values_mut() {
            *deadline = after(now, *ttl) + extend;
            *expiring = false;
        }
    }

    /// The leases past their deadline, in id order, now expiring: each is given `RETRY` before
    /// it is returned again (its revocation removes it; one that fails is tried again then).
    pub fn expired(&mut self, now: Instant) -> Vec<LeaseId> {
        let mut out: Vec<LeaseId> = self.leases.iter().filter(|(_, (_, d, _))| *d <= now).map(|(id, _)| *id).collect();
        out.sort_unstable();
        for id in &out {
            if let Some((_, d, expiring)) = self.leases.get_mut(id) {
                *d = now + RETRY;
                *expiring = true;
            }
        }
        out
    }

    /// The earliest deadline, if any lease has one.
    pub fn next(&self) -> Option<Instant> {
        self.leases.values().map(|(_, d, _)| *d).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_renew_expire_retry_and_restart_on_leadership() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut d = Deadlines::default();
        d.applied(1, Some(5), t0);
        d.applied(2, Some(10), t0);
        assert_eq!(d.next(), Some(t0 + 5 * s));
        assert_eq!(d.expired(t0 + 4 * s), Vec::<LeaseId>::new());
        assert_eq!(d.keep_alive(1, t0 + 4 * s), Ok(5));
        assert_eq!(d.time_to_live(1, t0 + 4 * s), Ok((5, 5)));
        assert_eq!(d.expired(t0 + 8 * s), Vec::<LeaseId>::new(), "renewed at 4 s for 5 s");
        assert_eq!(d.expired(t0 + 10 * s), vec![1, 2]);
        assert_eq!(d.keep_alive(1, t0 + 10 * s), Err(StoreError::LeaseNotFound(1)), "an expiring lease is not renewed");
        assert_eq!(d.expired(t0 + 10 * s), Vec::<LeaseId>::new(), "each given a second before it is tried again");
        assert_eq!(d.expired(t0 + 11 * s), vec![1, 2]);
        d.applied(2, None, t0 + 11 * s);
        assert_eq!(d.ids(), vec![1]);
        // A new leader: the whole TTL again, plus the election's time.
        d.restart_all(2 * s, t0 + 20 * s);
        assert_eq!(d.keep_alive(1, t0 + 20 * s), Ok(5), "a new leader renews it again");
        d.restart_all(2 * s, t0 + 20 * s);
        assert_eq!(d.expired(t0 + 26 * s), Vec::<LeaseId>::new());
        assert_eq!(d.expired(t0 + 27 * s), vec![1]);
        assert_eq!(d.keep_alive(3, t0), Err(StoreError::LeaseNotFound(3)));
        let r = Deadlines::from_ttls([(7, 3)], t0);
        assert_eq!(r.time_to_live(7, t0 + s), Ok((3, 2)));
    }
}
