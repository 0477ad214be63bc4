//! Who the controllers are to the API server, as kube-controller-manager with
//! `--use-service-account-credentials`: the shared informers, the event recorder and the
//! leader election go as the controller manager itself (`system:kube-controller-manager`,
//! its client certificate); each controller's writes go as its own ServiceAccount in
//! `kube-system` (`system:serviceaccount:kube-system:replicaset-controller`, ...), so RBAC
//! grants each only its `system:controller:<name>` role. The manager creates the
//! ServiceAccounts when missing and asks for their tokens (TokenRequest, one hour), and
//! renews each token when four fifths of its life have passed; a renewal that fails is
//! retried every ten seconds while the old token still works.

use std::time::Duration;

use client::{Bearer, Client, ClientError};
use serde_json::json;

/// The controllers that write, by the ServiceAccount Kubernetes gives each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctl {
    ReplicaSet,
    Deployment,
    GarbageCollector,
    ServiceAccount,
    Endpoint,
    EndpointSlice,
    Node,
    Job,
    TtlAfterFinished,
    DaemonSet,
    StatefulSet,
    Namespace,
    Disruption,
    HorizontalPodAutoscaler,
    CronJob,
    ResourceQuota,
    TokenCleaner,
    Certificate,
    PersistentVolumeBinder,
    ReplicationController,
    RootCaCertPublisher,
}

impl Ctl {
    pub const ALL: [Ctl; 21] = [
        Ctl::ReplicaSet,
        Ctl::Deployment,
        Ctl::GarbageCollector,
        Ctl::ServiceAccount,
        Ctl::Endpoint,
        Ctl::EndpointSlice,
        Ctl::Node,
        Ctl::Job,
        Ctl::TtlAfterFinished,
        Ctl::DaemonSet,
        Ctl::StatefulSet,
        Ctl::Namespace,
        Ctl::Disruption,
        Ctl::HorizontalPodAutoscaler,
        Ctl::CronJob,
        Ctl::ResourceQuota,
        Ctl::TokenCleaner,
        Ctl::Certificate,
        Ctl::PersistentVolumeBinder,
        Ctl::ReplicationController,
        Ctl::RootCaCertPublisher,
    ];

    /// Its ServiceAccount in `kube-system` (Kubernetes' names; the role is
    /// `system:controller:` and this name).
    pub fn service_account(self) -> &'static str {
        match self {
            Ctl::ReplicaSet => "replicaset-controller",
            Ctl::Deployment => "deployment-controller",
            Ctl::GarbageCollector => "generic-garbage-collector",
            Ctl::ServiceAccount => "service-account-controller",
            Ctl::Endpoint => "endpoint-controller",
            Ctl::EndpointSlice => "endpointslice-controller",
            Ctl::Node => "node-controller",
            Ctl::Job => "job-controller",
            Ctl::TtlAfterFinished => "ttl-after-finished-controller",
            Ctl::DaemonSet => "daemon-set-controller",
            Ctl::StatefulSet => "statefulset-controller",
            Ctl::Namespace => "namespace-controller",
            Ctl::Disruption => "disruption-controller",
            Ctl::HorizontalPodAutoscaler => "horizontal-pod-autoscaler",
            Ctl::CronJob => "cronjob-controller",
            Ctl::ResourceQuota => "resourcequota-controller",
            Ctl::TokenCleaner => "token-cleaner",
            Ctl::Certificate => "certificate-controller",
            Ctl::PersistentVolumeBinder => "persistent-volume-binder",
            Ctl::ReplicationController => "replication-controller",
            Ctl::RootCaCertPublisher => "root-ca-cert-publisher",
        }
    }
}

pub const NAMESPACE: &str = "kube-system";
/// The life asked for each token (Kubernetes' controller manager asks for one hour too).
const TOKEN_SECONDS: u64 = 3600;
const RETRY: Duration = Duration::from_secs(10);

/// A client per controller (all the same one when the controllers share an identity).
pub struct Clients {
    each: Vec<Client>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Clients {
    fn drop(&mut self) {
        if let Some(t) = &self.renewer {
            t.abort();
        }
    }
}

impl Clients {
    /// Every controller writes through `c`.
    pub fn shared(c: &Client) -> Clients {
        Clients { each: Ctl::ALL.iter().map(|_| c.clone()).collect(), renewer: None }
    }

    /// One ServiceAccount per controller: created through `manager` when missing, its token
    /// requested through `manager`, and presented by a clone of `tokens` (a client that
    /// presents no certificate of its own, or the token would be ignored). Fails when a
    /// ServiceAccount or a token cannot be had (the caller retries).
    pub async fn service_accounts(manager: &Client, tokens: &Client) -> Result<Clients, ClientError> {
        let mut each = Vec::new();
        let mut bearers = Vec::new();
        for ctl in Ctl::ALL {
            let (token, lifetime) = token_for(manager, ctl).await?;
            let bearer = Bearer::new(&token).map_err(ClientError::Transport)?;
            each.push(tokens.with_bearer(bearer.clone()));
            bearers.push((ctl, bearer, lifetime));
        }
        let m = manager.clone();
        let renewer = tokio::spawn(async move {
            // Renew each at four fifths of its life; all were issued together, so one
            // timer serves them.
            let mut wait = bearers.iter().map(|b| b.2).min().unwrap_or(Duration::from_secs(TOKEN_SECONDS)) * 4 / 5;
            loop {
                tokio::time::sleep(wait).await;
                wait = Duration::from_secs(TOKEN_SECONDS) * 4 / 5;
                for (ctl, bearer, _) in &bearers {
                    match token_for(&m, *ctl).await {
                        Ok((t, life)) if bearer.set(&t).is_ok() => wait = wait.min(life * 4 / 5),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(controller = ctl.service_account(), error = %e, "renewing a controller's token failed; retrying");
                            wait = RETRY;
                        }
                    }
                }
            }
        });
        Ok(Clients { each, renewer: Some(renewer) })
    }

    pub fn of(&self, ctl: Ctl) -> &Client {
        &self.each[Ctl::ALL.iter().position(|c| *c == ctl).expect("every controller is in ALL")]
    }
}

/// A token for `ctl`'s ServiceAccount (created first when missing) and how long it lives.
async fn token_for(manager: &Client, ctl: Ctl) -> Result<(String, Duration), ClientError> {
    let sa = ctl.service_account();
    match manager.post(&format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts"), &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": NAMESPACE}})).await {
        Ok(_) | Err(ClientError::Status { code: 409, .. }) => {}
        Err(e) => return Err(e),
    }
    let req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": TOKEN_SECONDS}});
    let got = manager.post(&format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{sa}/token"), &req).await?;
    let token = got["status"]["token"].as_str().filter(|t| !t.is_empty()).ok_or_else(|| ClientError::Decode(format!("the TokenRequest for {sa} returned no token")))?;
    let expires = got["status"]["expirationTimestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let life = expires.map(|t| (t.as_second() - jiff::Timestamp::now().as_second()).max(60) as u64).unwrap_or(TOKEN_SECONDS);
    Ok((token.to_string(), Duration::from_secs(life)))
}
