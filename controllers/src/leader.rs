//! Leader election on a coordination.k8s.io Lease, as client-go's: a candidate takes the
//! lease when it is free or expired (a compare-and-swap update on its resourceVersion, so two
//! candidates cannot both win), renews it every `RENEW`, and gives up leadership — the
//! process exits, as kube-controller-manager does — when it cannot renew for `DURATION`.

use std::time::Duration;

use client::{Client, ClientError};
use serde_json::{Value, json};
use api::meta::now_micro;

pub const DURATION: Duration = Duration::from_secs(15);
pub const RENEW: Duration = Duration::from_secs(2);

fn expired(l: &Value) -> bool {
    let Some(t) = l["spec"]["renewTime"].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) else { return true };
    let d = l["spec"]["leaseDurationSeconds"].as_i64().unwrap_or(DURATION.as_secs() as i64);
    jiff::Timestamp::now().as_second() > t.as_second() + d
}

/// One attempt: Ok(true) if `me` holds the lease afterwards.
pub async fn try_acquire(c: &Client, ns: &str, name: &str, me: &str) -> Result<bool, ClientError> {
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}");
    match c.get(&path).await {
        Err(ClientError::Status { code: 404, .. }) => {
            let l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": ns},
                "spec": {"holderIdentity": me, "leaseDurationSeconds": DURATION.as_secs(), "acquireTime": now_micro(), "renewTime": now_micro(), "leaseTransitions": 0}});
            match c.post(&format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"), &l).await {
                Ok(_) => Ok(true),
                Err(ClientError::Status { code: 409, .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
        Ok(mut l) => {
            let holder = l["spec"]["holderIdentity"].as_str().unwrap_or("").to_string();
            if holder != me && !expired(&l) {
                return Ok(false);
            }
            if holder != me {
                l["spec"]["acquireTime"] = json!(now_micro());
                l["spec"]["leaseTransitions"] = json!(l["spec"]["leaseTransitions"].as_i64().unwrap_or(0) + 1);
                l["spec"]["holderIdentity"] = json!(me);
            }
            l["spec"]["renewTime"] = json!(now_micro());
            l["spec"]["leaseDurationSeconds"] = json!(DURATION.as_secs());
            // The update carries the resourceVersion read: a competitor's write makes it 409.
            match c.put(&path, &l).await {
                Ok(_) => Ok(true),
                Err(ClientError::Status { code: 409, .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Leadership held: renewed in the background until it cannot be for `DURATION`.
pub struct Leading {
    lost: tokio::sync::watch::Receiver<bool>,
    renew: tokio::task::JoinHandle<()>,
}

impl Leading {
    /// Resolves when leadership is lost (the lease could not be renewed for `DURATION`).
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// Waits until `me` holds the lease `ns/name`, then keeps renewing it in the background.
pub async fn campaign(c: Client, ns: &str, name: &str, me: &str) -> Leading {
    loop {
        match try_acquire(&c, ns, name, me).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: trying to acquire the lease failed"),
        }
        tokio::time::sleep(RENEW).await;
    }
    tracing::info!(identity = me, lease = name, "leader election: acquired");
    let (tx, lost) = tokio::sync::watch::channel(false);
    let (ns, name, me) = (ns.to_string(), name.to_string(), me.to_string());
    let renew = tokio::spawn(async move {
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            match try_acquire(&c, &ns, &name, &me).await {
                Ok(true) => last_ok = std::time::Instant::now(),
                _ if last_ok.elapsed() < DURATION => {}
                _ => {
                    tracing::warn!(lease = %name, "leader election: the lease could not be renewed for {}s; leadership lost", DURATION.as_secs());
                    let _ = tx.send(true);
                    return;
                }
            }
        }
    });
    Leading { lost, renew }
}

/// Waits until `me` leads, then keeps renewing in the background; exits the process when
/// leadership is lost (as kube-controller-manager does).
pub async fn lead(c: Client, ns: &str, name: &str, me: &str) {
    let mut leading = campaign(c, ns, name, me).await;
    let (ns, name) = (ns.to_string(), name.to_string());
    tokio::spawn(async move {
        leading.lost().await;
        eprintln!("leader election lost: the lease {ns}/{name} could not be renewed for {}s; exiting", DURATION.as_secs());
        std::process::exit(1);
    });
}
