//! Leader election on a coordination.k8s.io Lease, as client-go's: a candidate takes the
//! lease when it is free or expired (a compare-and-swap update on its resourceVersion, so two
//! candidates cannot both win), renews it every `retry`, and gives up leadership — the process
//! exits, as kube-controller-manager does — when it has not renewed within `renew_deadline`.
//!
//! Why two holders cannot overlap: a leader's tenure is measured on its monotonic clock from
//! the *start* of its last successful attempt, before it read the wall clock for the
//! `renewTime` it wrote, and ends `renew_deadline` (10 s) later, whether or not an attempt is
//! still waiting for an answer. A competitor takes the lease only once its own wall clock is
//! past that `renewTime` plus `leaseDurationSeconds` (15 s). The 5 s between the two absorb
//! clock differences between the candidates of up to 5 s. (With the deadline equal to the
//! duration, as this file once had, any clock difference let two holders overlap: the
//! deterministic simulation's `lease-two-holders` check finds it, sim/FOUND.md.)
//!
//! The loop runs against the [`LeaseApi`] and [`WallClock`] seams: the API server and the
//! system clock in production, the simulated store and skewed clocks in `sim`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use client::{Client, ClientError};
use serde_json::{Value, json};

pub const DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RENEW: Duration = Duration::from_secs(2);

/// The election's timing (client-go's LeaseDuration, RenewDeadline and RetryPeriod).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { lease_duration: DURATION, renew_deadline: RENEW_DEADLINE, retry: RENEW }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the Lease lives. `update` and `create` answer `Ok(false)` on a conflict (another
/// writer got there first: 409), `Err` when the outcome is unknown or the call failed.
pub trait LeaseApi: Send + Sync {
    fn get(&self) -> BoxFuture<'_, Result<Option<Value>, String>>;
    fn create(&self, lease: Value) -> BoxFuture<'_, Result<bool, String>>;
    /// Replaces the lease; `lease.metadata.resourceVersion` is the one read.
    fn update(&self, lease: Value) -> BoxFuture<'_, Result<bool, String>>;
}

/// The wall clock a candidate writes `renewTime` with and judges expiry by.
pub trait WallClock: Send + Sync {
    fn now(&self) -> jiff::Timestamp;
}

pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

fn micro(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Whether the lease has expired at `now` (no parsable `renewTime`: it has).
pub fn expired(l: &Value, now: jiff::Timestamp, t: &Timing) -> bool {
    let Some(renewed) = l["spec"]["renewTime"].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) else { return true };
    let secs = l["spec"]["leaseDurationSeconds"].as_i64().unwrap_or(t.lease_duration.as_secs() as i64).clamp(0, 365 * 86_400);
    // A renewTime near the end of time does not expire (rather than overflow).
    renewed.checked_add(jiff::SignedDuration::from_secs(secs)).is_ok_and(|end| now > end)
}

/// A new lease held by `me`.
pub fn fresh(ns: &str, name: &str, me: &str, now: jiff::Timestamp, t: &Timing) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": ns},
        "spec": {"holderIdentity": me, "leaseDurationSeconds": t.lease_duration.as_secs(), "acquireTime": micro(now), "renewTime": micro(now), "leaseTransitions": 0}})
}

/// The lease `me` writes over `current` at `now`: renewed if `me` holds it, taken over if it
/// expired; `None` while another holder's lease runs.
pub fn claim(current: &Value, me: &str, now: jiff::Timestamp, t: &Timing) -> Option<Value> {
    let mut l = current.clone();
    let holder = l["spec"]["holderIdentity"].as_str().unwrap_or("").to_string();
    if holder != me && !holder.is_empty() && !expired(&l, now, t) {
        return None;
    }
    if holder != me {
        l["spec"]["acquireTime"] = json!(micro(now));
        l["spec"]["leaseTransitions"] = json!(l["spec"]["leaseTransitions"].as_i64().unwrap_or(0) + 1);
        l["spec"]["holderIdentity"] = json!(me);
    }
    l["spec"]["renewTime"] = json!(micro(now));
    l["spec"]["leaseDurationSeconds"] = json!(t.lease_duration.as_secs());
    Some(l)
}

/// One attempt: Ok(true) if `me` holds the lease afterwards.
pub async fn attempt(api: &dyn LeaseApi, clock: &dyn WallClock, ns: &str, name: &str, me: &str, t: &Timing) -> Result<bool, String> {
    let now = clock.now();
    match api.get().await? {
        None => api.create(fresh(ns, name, me, now, t)).await,
        Some(l) => match claim(&l, me, now, t) {
            None => Ok(false),
            Some(next) => api.update(next).await,
        },
    }
}

/// The Lease through the API server.
pub struct HttpLease {
    c: Client,
    ns: String,
    name: String,
}

impl HttpLease {
    pub fn new(c: Client, ns: &str, name: &str) -> HttpLease {
        HttpLease { c, ns: ns.into(), name: name.into() }
    }

    fn path(&self) -> String {
        format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases/{}", self.ns, self.name)
    }
}

fn conflict(r: Result<Value, ClientError>) -> Result<bool, String> {
    match r {
        Ok(_) => Ok(true),
        Err(ClientError::Status { code: 409, .. }) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

impl LeaseApi for HttpLease {
    fn get(&self) -> BoxFuture<'_, Result<Option<Value>, String>> {
        Box::pin(async move {
            match self.c.get(&self.path()).await {
                Ok(l) => Ok(Some(l)),
                Err(ClientError::Status { code: 404, .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn create(&self, lease: Value) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move { conflict(self.c.post(&format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", self.ns), &lease).await) })
    }

    fn update(&self, lease: Value) -> BoxFuture<'_, Result<bool, String>> {
        // The update carries the resourceVersion read: a competitor's write makes it 409.
        Box::pin(async move { conflict(self.c.put(&self.path(), &lease).await) })
    }
}

/// Leadership held: renewed in the background until it cannot be within the renew deadline.
pub struct Leading {
    lost: tokio::sync::watch::Receiver<bool>,
    renew: tokio::task::JoinHandle<()>,
}

impl Leading {
    /// Resolves when leadership is lost (the lease was not renewed within the renew deadline).
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// Waits until `me` holds the lease `ns/name` in `api`, then keeps renewing it in the
/// background (a task spawned with `spawn`, so the simulation can run it on its executor).
pub async fn campaign_with(
    api: Arc<dyn LeaseApi>,
    clock: Arc<dyn WallClock>,
    ns: &str,
    name: &str,
    me: &str,
    t: Timing,
    spawn: impl FnOnce(BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()>,
) -> Leading {
    let mut renewed_at;
    loop {
        // The tenure starts before the wall clock is read for renewTime (module docs).
        renewed_at = tokio::time::Instant::now();
        match attempt(api.as_ref(), clock.as_ref(), ns, name, me, &t).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: trying to acquire the lease failed"),
        }
        tokio::time::sleep(t.retry).await;
    }
    tracing::info!(identity = me, lease = name, "leader election: acquired");
    let (tx, lost) = tokio::sync::watch::channel(false);
    let (ns, name, me) = (ns.to_string(), name.to_string(), me.to_string());
    let renew = spawn(Box::pin(async move {
        loop {
            let deadline = renewed_at + t.renew_deadline;
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + t.retry)).await;
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let started = tokio::time::Instant::now();
            match tokio::time::timeout_at(deadline, attempt(api.as_ref(), clock.as_ref(), &ns, &name, &me, &t)).await {
                Ok(Ok(true)) => renewed_at = started,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        tracing::warn!(lease = %name, "leader election: the lease was not renewed within {:?}; leadership lost", t.renew_deadline);
        let _ = tx.send(true);
    }));
    Leading { lost, renew }
}

/// Waits until `me` holds the lease `ns/name`, then keeps renewing it in the background.
pub async fn campaign(c: Client, ns: &str, name: &str, me: &str) -> Leading {
    let api: Arc<dyn LeaseApi> = Arc::new(HttpLease::new(c, ns, name));
    campaign_with(api, Arc::new(SystemClock), ns, name, me, Timing::default(), tokio::spawn).await
}

/// Waits until `me` leads, then keeps renewing in the background; exits the process when
/// leadership is lost (as kube-controller-manager does).
pub async fn lead(c: Client, ns: &str, name: &str, me: &str) {
    let mut leading = campaign(c, ns, name, me).await;
    let (ns, name) = (ns.to_string(), name.to_string());
    tokio::spawn(async move {
        leading.lost().await;
        eprintln!("leader election lost: the lease {ns}/{name} could not be renewed within {:?}; exiting", RENEW_DEADLINE);
        std::process::exit(1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_running_lease_is_not_taken_and_an_expired_one_is() {
        let t = Timing::default();
        let l = fresh("kube-system", "x", "a", at("2026-01-01T00:00:00Z"), &t);
        assert_eq!(claim(&l, "b", at("2026-01-01T00:00:15Z"), &t), None, "exactly at the end it still runs");
        let taken = claim(&l, "b", at("2026-01-01T00:00:15.000001Z"), &t).expect("expired a microsecond later");
        assert_eq!(taken["spec"]["holderIdentity"], "b");
        assert_eq!(taken["spec"]["leaseTransitions"], 1);
        assert_eq!(taken["spec"]["renewTime"], "2026-01-01T00:00:15.000001Z");
        let renewed = claim(&l, "a", at("2026-01-01T00:00:03Z"), &t).expect("the holder renews");
        assert_eq!(renewed["spec"]["leaseTransitions"], 0);
        assert_eq!(renewed["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z");
    }

    #[test]
    fn an_unreadable_renew_time_counts_as_expired() {
        let t = Timing::default();
        let mut l = fresh("ns", "x", "a", at("2026-01-01T00:00:00Z"), &t);
        l["spec"]["renewTime"] = json!("yesterday");
        assert!(claim(&l, "b", at("2026-01-01T00:00:01Z"), &t).is_some());
        l["spec"]["renewTime"] = json!(7);
        assert!(expired(&l, at("2026-01-01T00:00:01Z"), &t));
    }

    #[test]
    fn the_renew_deadline_leaves_room_for_clock_differences() {
        let t = Timing::default();
        assert!(t.renew_deadline + Duration::from_secs(5) <= t.lease_duration);
    }
}
