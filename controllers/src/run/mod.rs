//! The controllers' runtime: shared informers, one work queue and a few workers per
//! controller, each wired to its reconcile function (in `apps.rs`, `batch_and_sets.rs`,
//! `lifecycle.rs` and `policy.rs`), which acts through the API.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::meta::now_rfc3339;
use client::events::Recorder;
use client::informer::{Change, Informer, Informers, controller_of, key_of};
use client::obj::Obj;
use client::workqueue::WorkQueue;
use client::{Client, ClientError};
use serde_json::{Value, json};

use crate::autoscale;
use crate::cron::Cron;
use crate::deployment::{self as dep, HASH_LABEL, REVISION, Rs};
use crate::identity::{Clients, Ctl};
use crate::podutil::{self, is_active, selector_matches};
use crate::replicaset::{self as rsc, Expectations};

mod adopt;
mod apps;
mod batch_and_sets;
mod ipam;
mod lifecycle;
mod policy;
mod volumes;

use apps::*;
use batch_and_sets::*;
use lifecycle::*;
use policy::*;
pub use lifecycle::{LoweringGate, QUOTA_CONFIRM, lowering_gate, quota_lowers};
pub use policy::{budget, disruption_status};

type Res = Result<Option<Duration>, String>;

/// Settings a cluster operator may change.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A node whose lease is older than this is unreachable (Kubernetes: 40 s).
    pub node_monitor_grace: Duration,
    /// How long pods without their own toleration stay on an unreachable node (300 s, the
    /// DefaultTolerationSeconds admission plugin's value).
    pub default_toleration: Duration,
    /// How often each HorizontalPodAutoscaler is evaluated (Kubernetes: 15 s).
    pub hpa_sync: Duration,
    /// The controller manager's own client credentials (`system:kube-controller-manager`):
    /// with them, each controller writes as its own ServiceAccount (`identity.rs`); without,
    /// everything goes with the process's default credentials.
    pub credentials: Option<client::tls::Credentials>,
    /// The cluster CA, for the certificate signer (`csr.rs`); requests stay unsigned without.
    pub signer: Option<crate::csr::Signer>,
    /// The cluster's pod range and each node's share of it (kube-controller-manager's
    /// `--allocate-node-cidrs --cluster-cidr --node-cidr-mask-size`): nodes without a
    /// `spec.podCIDR` get one. None: no allocation.
    pub node_ranges: Option<crate::ipam::Ranges>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { node_monitor_grace: Duration::from_secs(40), default_toleration: Duration::from_secs(300), hpa_sync: Duration::from_secs(15), credentials: None, signer: None, node_ranges: None }
    }
}

struct Ctx {
    /// Each controller's client, for its writes (the informers and the event recorder
    /// have the manager's).
    clients: Clients,
    pods: Arc<Informer>,
    rs: Arc<Informer>,
    rcs: Arc<Informer>,
    deploy: Arc<Informer>,
    nodes: Arc<Informer>,
    leases: Arc<Informer>,
    namespaces: Arc<Informer>,
    sas: Arc<Informer>,
    services: Arc<Informer>,
    endpoints: Arc<Informer>,
    slices: Arc<Informer>,
    jobs: Arc<Informer>,
    daemonsets: Arc<Informer>,
    statefulsets: Arc<Informer>,
    pdbs: Arc<Informer>,
    hpas: Arc<Informer>,
    cronjobs: Arc<Informer>,
    quotas: Arc<Informer>,
    csrs: Arc<Informer>,
    pvcs: Arc<Informer>,
    pvs: Arc<Informer>,
    classes: Arc<Informer>,
    hpa_history: Mutex<std::collections::HashMap<String, autoscale::History>>,
    /// Quotas whose recomputed `used` came out lower than their status, with that proposal and
    /// when it was first made: written only when a recount at least a second later agrees
    /// (see `sync_quota`).
    quota_lowering: Mutex<std::collections::HashMap<String, (Value, Instant)>>,
    /// Pod ranges the node IPAM controller gave and has not yet seen on their nodes.
    ipam_given: Mutex<std::collections::HashMap<String, crate::ipam::Net>>,
    exp: Expectations,
    events: Recorder,
    settings: Settings,
    work: Mutex<BTreeMap<&'static str, hdrhistogram::Histogram<u64>>>,
}

pub struct Controllers {
    _informers: Arc<Informers>,
    queues: Vec<Arc<WorkQueue>>,
    ctx: Arc<Ctx>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for q in &self.queues {
            q.shutdown();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

fn err(e: ClientError) -> String {
    e.to_string()
}

/// The key of an object's controller owner of `kind`, in the object's namespace.
fn owner_key(v: &Obj, kind: &str) -> Option<String> {
    let o = controller_of(v)?;
    if o["kind"] != kind {
        return None;
    }
    Some(format!("{}/{}", v["metadata"]["namespace"].as_str().unwrap_or(""), o["name"].as_str()?))
}

/// How long a ReplicaSet's (or ReplicationController's) reconcile waits for more changes of
/// its pods after the first (`WorkQueue::add_gathered`): at the density run's 2,000 pods a
/// second, each set's pods change about fifteen times a second for tens of seconds, and each
/// reconcile walks all of them. Changes of the set itself are not delayed.
const POD_CHANGES_GATHERED: Duration = Duration::from_millis(100);

fn spawn_workers<F, Fut>(ctx: &Arc<Ctx>, q: &Arc<WorkQueue>, workers: usize, tasks: &mut Vec<tokio::task::JoinHandle<()>>, f: F)
where
    F: Fn(Arc<Ctx>, String) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Res> + Send,
{
    for _ in 0..workers {
        let (ctx, q, f) = (ctx.clone(), q.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(key) = q.get().await {
                let t = Instant::now();
                let r = f(ctx.clone(), key.clone()).await;
                let _ = ctx.work.lock().unwrap().entry(q.name()).or_insert_with(|| hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()).record(t.elapsed().as_micros().max(1) as u64);
                match r {
                    Ok(again) => {
                        q.forget(&key);
                        if let Some(d) = again {
                            q.add_after(key.clone(), d);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(controller = q.name(), key, error = e, "reconcile failed; retrying with backoff");
                        q.add_rate_limited(key.clone());
                    }
                }
                q.done(&key);
            }
        }));
    }
}

impl Ctx {
    /// The client `ctl` writes with.
    fn c(&self, ctl: Ctl) -> &Client {
        self.clients.of(ctl)
    }
}

/// The manager's client and one per controller, as `settings.credentials` says; with
/// credentials, waits (retrying, saying why) until every controller has its token.
async fn clients(base: &str, settings: &Settings) -> (Client, Clients) {
    const AGENT: &str = "capstan-controllers/0.1";
    let Some(creds) = &settings.credentials else {
        let c = Client::with_agent(base, AGENT);
        let each = Clients::shared(&c);
        return (c, each);
    };
    let made = Client::with_credentials(base, AGENT, creds).and_then(|m| {
        let ca_only = client::tls::Credentials { ca_pem: creds.ca_pem.clone(), cert_pem: None, key_pem: None };
        Ok((m, Client::with_credentials(base, AGENT, &ca_only)?))
    });
    let (manager, tokens) = match made {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "the controller manager's credentials are unusable; the controllers use the process's");
            let c = Client::with_agent(base, AGENT);
            let each = Clients::shared(&c);
            return (c, each);
        }
    };
    let mut delay = Duration::from_millis(100);
    let started = Instant::now();
    loop {
        match Clients::service_accounts(&manager, &tokens).await {
            Ok(each) => return (manager, each),
            // A server just started may not have compiled its RBAC defaults yet: quiet for
            // the first seconds.
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                tracing::debug!(error = %e, "getting the controllers' ServiceAccount tokens failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "getting the controllers' ServiceAccount tokens failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Controllers {
    /// Starts every controller against the API server at `base`.
    pub async fn start(base: &str, settings: Settings) -> Controllers {
        let (c, each) = clients(base, &settings).await;
        let inf = Arc::new(Informers::new(c.clone()));
        let ctx = Arc::new(Ctx {
            clients: each,
            pods: inf.get("/api/v1/pods"),
            rs: inf.get("/apis/apps/v1/replicasets"),
            rcs: inf.get("/api/v1/replicationcontrollers"),
            deploy: inf.get("/apis/apps/v1/deployments"),
            nodes: inf.get("/api/v1/nodes"),
            leases: inf.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"),
            namespaces: inf.get("/api/v1/namespaces"),
            sas: inf.get("/api/v1/serviceaccounts"),
            services: inf.get("/api/v1/services"),
            endpoints: inf.get("/api/v1/endpoints"),
            slices: inf.get("/apis/discovery.k8s.io/v1/endpointslices"),
            jobs: inf.get("/apis/batch/v1/jobs"),
            daemonsets: inf.get("/apis/apps/v1/daemonsets"),
            statefulsets: inf.get("/apis/apps/v1/statefulsets"),
            pdbs: inf.get("/apis/policy/v1/poddisruptionbudgets"),
            hpas: inf.get("/apis/autoscaling/v2/horizontalpodautoscalers"),
            cronjobs: inf.get("/apis/batch/v1/cronjobs"),
            quotas: inf.get("/api/v1/resourcequotas"),
            csrs: inf.get("/apis/certificates.k8s.io/v1/certificatesigningrequests"),
            pvcs: inf.get("/api/v1/persistentvolumeclaims"),
            pvs: inf.get("/api/v1/persistentvolumes"),
            classes: inf.get("/apis/storage.k8s.io/v1/storageclasses"),
            hpa_history: Default::default(),
            quota_lowering: Default::default(),
            ipam_given: Default::default(),
            exp: Expectations::default(),
            events: Recorder::start(c.clone(), "controller-manager", String::new()),
            settings,
            work: Default::default(),
        });
        let rsq = WorkQueue::new("replicaset");
        let rcq = WorkQueue::new("replicationcontroller");
        let caq = WorkQueue::new("root-ca-cert-publisher");
        {
            let q = caq.clone();
            ctx.namespaces.on_change(move |ch| {
                if let Change::Added(v) | Change::Modified { new: v, .. } = ch {
                    q.add(key_of(v));
                }
            });
        }
        let dq = WorkQueue::new("deployment");
        let gcq = WorkQueue::new("garbagecollector");
        let saq = WorkQueue::new("serviceaccount");
        let epq = WorkQueue::new("endpoints");
        let jobq = WorkQueue::new("job");
        let dsq = WorkQueue::new("daemonset");
        let stsq = WorkQueue::new("statefulset");
        let nsq = WorkQueue::new("namespace");
        let pdbq = WorkQueue::new("disruption");
        let hpaq = WorkQueue::new("horizontalpodautoscaler");
        let cjq = WorkQueue::new("cronjob");
        let rqq = WorkQueue::new("resourcequota");
        let csrq = WorkQueue::new("certificate");
        let pvcq = WorkQueue::new("persistentvolumeclaim");
        let pvq = WorkQueue::new("persistentvolume");
        let ipamq = WorkQueue::new("node-ipam");
        if ctx.settings.node_ranges.is_some() {
            let (q, x) = (ipamq.clone(), Arc::downgrade(&ctx));
            ctx.nodes.on_change(move |ch| {
                let Some(ctx) = x.upgrade() else { return };
                match ch {
                    Change::Added(v) | Change::Modified { new: v, .. } => {
                        if crate::ipam::wants_range(v) {
                            q.add(key_of(v));
                        }
                    }
                    // A range freed: the nodes still waiting for one may have it.
                    Change::Deleted(v) => {
                        q.add(key_of(v));
                        for n in ctx.nodes.list() {
                            if crate::ipam::wants_range(&n) {
                                q.add(key_of(&n));
                            }
                        }
                    }
                }
            });
        }
        // Volumes: claims, volumes, and the pods that wait for a claim's first consumer.
        {
            let q = pvcq.clone();
            ctx.pvcs.on_change(move |ch| {
                if let Change::Added(v) | Change::Modified { new: v, .. } = ch {
                    q.add(key_of(v));
                }
            });
            let (q, cq) = (pvq.clone(), pvcq.clone());
            ctx.pvs.on_change(move |ch| {
                let v = ch.object();
                q.add(key_of(v));
                let r = &v["spec"]["claimRef"];
                if let (Some(ns), Some(n)) = (r["namespace"].as_str(), r["name"].as_str()) {
                    cq.add(format!("{ns}/{n}"));
                }
            });
            let (q, x) = (pvq.clone(), Arc::downgrade(&ctx));
            ctx.pvcs.on_change(move |ch| {
                let Some(ctx) = x.upgrade() else { return };
                // A claim deleted releases its volume.
                if let Change::Deleted(v) = ch
                    && let Some(vol) = v["spec"]["volumeName"].as_str()
                    && ctx.pvs.get(vol).is_some()
                {
                    q.add(vol.to_string());
                }
            });
            let q = pvcq.clone();
            ctx.pods.on_change(move |ch| {
                if let Change::Added(p) | Change::Modified { new: p, .. } = ch
                    && p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())
                {
                    let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
                    for v in p["spec"]["volumes"].as_array().into_iter().flatten() {
                        if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                            q.add(format!("{ns}/{claim}"));
                        }
                    }
                }
            });
        }
        {
            let q = csrq.clone();
            ctx.csrs.on_change(move |ch| {
                if let Change::Added(v) | Change::Modified { new: v, .. } = ch {
                    q.add(key_of(v));
                }
            });
        }
        {
            let q = rqq.clone();
            ctx.quotas.on_change(move |ch| {
                if let Change::Added(v) | Change::Modified { new: v, .. } = ch {
                    q.add(key_of(v));
                }
            });
            let (q, x) = (rqq.clone(), Arc::downgrade(&ctx));
            ctx.pods.on_change(move |ch| {
                let Some(ctx) = x.upgrade() else { return };
                // A create was charged by admission already: only releases need a recount
                // (as Kubernetes' quota controller replenishes on deletes and terminal phases).
                let v = match ch {
                    Change::Added(_) => return,
                    Change::Deleted(v) => v,
                    Change::Modified { old, new } => {
                        if old["status"]["phase"] == new["status"]["phase"] {
                            return;
                        }
                        new
                    }
                };
                for r in ctx.quotas.list() {
                    if r["metadata"]["namespace"] == v["metadata"]["namespace"] {
                        q.add(key_of(&r));
                    }
                }
            });
        }
        for (inf_, q) in [(ctx.hpas.clone(), hpaq.clone()), (ctx.cronjobs.clone(), cjq.clone())] {
            inf_.on_change(move |ch| {
                if let Change::Added(v) | Change::Modified { new: v, .. } = ch {
                    q.add(key_of(v));
                }
            });
        }
        {
            let q = cjq.clone();
            ctx.jobs.on_change(move |ch| {
                let v = ch.object();
                if let Some(k) = owner_key(v, "CronJob") {
                    q.add(k);
                }
            });
        }
        {
            let q = pdbq.clone();
            ctx.pdbs.on_change(move |ch| {
                if let Change::Added(v) | Change::Modified { new: v, .. } = ch {
                    q.add(key_of(v));
                }
            });
            let (q, x) = (pdbq.clone(), Arc::downgrade(&ctx));
            ctx.pods.on_change(move |ch| {
                let Some(ctx) = x.upgrade() else { return };
                let v = ch.object();
                for b in ctx.pdbs.list() {
                    if b["metadata"]["namespace"] == v["metadata"]["namespace"] && selector_matches(&b["spec"]["selector"], &v["metadata"]["labels"]) {
                        q.add(key_of(&b));
                    }
                }
            });
        }
        {
            let q = nsq.clone();
            ctx.namespaces.on_change(move |ch| {
                if let Change::Added(v) | Change::Modified { new: v, .. } = ch
                    && v["metadata"].get("deletionTimestamp").is_some()
                {
                    q.add(key_of(v));
                }
            });
        }
        for (inf_, q, kind) in [(ctx.jobs.clone(), jobq.clone(), "Job"), (ctx.daemonsets.clone(), dsq.clone(), "DaemonSet"), (ctx.statefulsets.clone(), stsq.clone(), "StatefulSet")] {
            let q1 = q.clone();
            inf_.on_change(move |ch| {
                let v = ch.object();
                q1.add(key_of(v));
            });
            ctx.pods.on_change(move |ch| {
                let v = ch.object();
                if let Some(k) = owner_key(v, kind) {
                    q.add(k);
                }
            });
        }
        {
            let (q, x) = (dsq.clone(), Arc::downgrade(&ctx));
            ctx.nodes.on_change(move |ch| {
                let Some(ctx) = x.upgrade() else { return };
                if matches!(ch, Change::Added(_) | Change::Deleted(_) | Change::Modified { .. }) {
                    for d in ctx.daemonsets.list() {
                        q.add(key_of(&d));
                    }
                }
            });
        }
        // ReplicaSets and ReplicationControllers: their own changes and their pods'.
        for (which, inf_, q) in [(Replicas::Set, ctx.rs.clone(), rsq.clone()), (Replicas::Controller, ctx.rcs.clone(), rcq.clone())] {
            let q1 = q.clone();
            inf_.on_change(move |ch| {
                let v = ch.object();
                q1.add(key_of(v));
            });
            let x = Arc::downgrade(&ctx);
            let (_, kind) = which.kind();
            ctx.pods.on_change(move |ch| {
                let Some(ctx) = x.upgrade() else { return };
                // An orphan (or a pod whose labels changed) may be adopted by any set whose
                // selector matches it.
                if let Change::Added(p) | Change::Modified { new: p, .. } = ch
                    && controller_of(p).is_none()
                    && p["metadata"].get("deletionTimestamp").is_none()
                {
                    for r in which.informer(&ctx).list() {
                        if r["metadata"]["namespace"] == p["metadata"]["namespace"] && selector_matches(&which.selector(&r), &p["metadata"]["labels"]) {
                            q.add(key_of(&r));
                        }
                    }
                }
                // The set's own reconcile is gathered over POD_CHANGES_GATHERED: its pods
                // change in bursts (created, bound, started), each change of them a reconcile
                // of the whole set otherwise. The expectations count every change at once.
                match ch {
                    Change::Added(p) => {
                        if let Some(k) = owner_key(p, kind) {
                            ctx.exp.observed_add(&which.exp_key(&k));
                            q.add_gathered(k, POD_CHANGES_GATHERED);
                        }
                    }
                    Change::Modified { old, new } => {
                        if let Some(k) = owner_key(new, kind) {
                            if old["metadata"].get("deletionTimestamp").is_none() && new["metadata"].get("deletionTimestamp").is_some() {
                                ctx.exp.observed_delete(&which.exp_key(&k), new["metadata"]["name"].as_str().unwrap_or(""));
                            }
                            q.add_gathered(k, POD_CHANGES_GATHERED);
                        }
                    }
                    Change::Deleted(p) => {
                        if let Some(k) = owner_key(p, kind) {
                            ctx.exp.observed_delete(&which.exp_key(&k), p["metadata"]["name"].as_str().unwrap_or(""));
                            q.add_gathered(k, POD_CHANGES_GATHERED);
                        }
                    }
                }
            });
        }
        // Deployment: its own changes and its ReplicaSets'.
        {
            let q = dq.clone();
            ctx.deploy.on_change(move |ch| {
                let v = ch.object();
                q.add(key_of(v));
            });
            let (q, x) = (dq.clone(), Arc::downgrade(&ctx));
            ctx.rs.on_change(move |ch| {
                let v = ch.object();
                if let Some(k) = owner_key(v, "Deployment") {
                    q.add(k);
                } else if let Some(ctx) = x.upgrade()
                    && controller_of(v).is_none()
                {
                    for d in ctx.deploy.list() {
                        if d["metadata"]["namespace"] == v["metadata"]["namespace"] && selector_matches(&d["spec"]["selector"], &v["metadata"]["labels"]) {
                            q.add(key_of(&d));
                        }
                    }
                }
            });
        }
        // Garbage collection: dependents whose owners may be gone, owners being deleted
        // with a propagation finalizer.
        for (kind, inf_) in [
            ("Pod", ctx.pods.clone()),
            ("ReplicaSet", ctx.rs.clone()),
            ("ReplicationController", ctx.rcs.clone()),
            ("Deployment", ctx.deploy.clone()),
            ("Job", ctx.jobs.clone()),
            ("DaemonSet", ctx.daemonsets.clone()),
            ("StatefulSet", ctx.statefulsets.clone()),
            ("CronJob", ctx.cronjobs.clone()),
            ("PersistentVolumeClaim", ctx.pvcs.clone()),
        ] {
            let q = gcq.clone();
            let x = Arc::downgrade(&ctx);
            inf_.on_change(move |ch| {
                let Some(ctx) = x.upgrade() else { return };
                match ch {
                    Change::Added(v) | Change::Modified { new: v, .. } => {
                        if v["metadata"]["ownerReferences"].as_array().is_some_and(|a| !a.is_empty()) {
                            q.add(format!("dep|{kind}|{}", key_of(v)));
                        }
                        let fin = v["metadata"]["finalizers"].as_array().is_some_and(|a| a.iter().any(|f| f == "orphan" || f == "foregroundDeletion"));
                        if fin && v["metadata"].get("deletionTimestamp").is_some() {
                            q.add(format!("own|{kind}|{}", key_of(v)));
                        }
                        // A dependent going away may finish an owner's foreground deletion.
                        if v["metadata"].get("deletionTimestamp").is_some() {
                            for o in client::informer::owners(v) {
                                for (ok, oinf) in ctx.owner_informers() {
                                    if let Some(owner) = oinf.get_by_uid(o) {
                                        q.add(format!("own|{ok}|{}", key_of(&owner)));
                                    }
                                }
                            }
                        }
                    }
                    Change::Deleted(v) => {
                        let uid = v["metadata"]["uid"].as_str().unwrap_or("");
                        for (dk, dinf) in ctx.dependent_informers() {
                            for d in dinf.owned_by(uid) {
                                q.add(format!("dep|{dk}|{}", key_of(&d)));
                            }
                        }
                        for o in client::informer::owners(v) {
                            for (ok, oinf) in ctx.owner_informers() {
                                if let Some(owner) = oinf.get_by_uid(o) {
                                    q.add(format!("own|{ok}|{}", key_of(&owner)));
                                }
                            }
                        }
                    }
                }
            });
        }
        // ServiceAccount: a `default` in every namespace.
        {
            let q = saq.clone();
            ctx.namespaces.on_change(move |ch| {
                if let Change::Added(v) | Change::Modified { new: v, .. } = ch {
                    q.add(key_of(v));
                }
            });
            let q = saq.clone();
            ctx.sas.on_change(move |ch| {
                if let Change::Deleted(v) = ch {
                    q.add(v["metadata"]["namespace"].as_str().unwrap_or("").to_string());
                }
            });
        }
        // Endpoints: services and the pods they select.
        {
            let q = epq.clone();
            ctx.services.on_change(move |ch| {
                let v = ch.object();
                q.add(key_of(v));
            });
            let (q, x) = (epq.clone(), Arc::downgrade(&ctx));
            ctx.pods.on_change(move |ch| {
                let Some(ctx) = x.upgrade() else { return };
                let v = ch.object();
                let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
                for s in ctx.services.list() {
                    if s["metadata"]["namespace"] == ns && selector_matches(&json!({"matchLabels": s["spec"]["selector"]}), &v["metadata"]["labels"]) && s["spec"]["selector"].is_object() {
                        q.add(key_of(&s));
                    }
                }
            });
        }
        inf.start();
        let mut tasks = Vec::new();
        spawn_workers(&ctx, &rsq, 4, &mut tasks, |ctx, key| async move { sync_replicas(&ctx, &key, Replicas::Set).await });
        spawn_workers(&ctx, &caq, 1, &mut tasks, |ctx, key| async move { sync_root_ca(&ctx, &key).await });
        spawn_workers(&ctx, &rcq, 2, &mut tasks, |ctx, key| async move { sync_replicas(&ctx, &key, Replicas::Controller).await });
        spawn_workers(&ctx, &dq, 4, &mut tasks, |ctx, key| async move { sync_deployment(&ctx, &key).await });
        spawn_workers(&ctx, &gcq, 2, &mut tasks, |ctx, key| async move { sync_gc(&ctx, &key).await });
        spawn_workers(&ctx, &saq, 1, &mut tasks, |ctx, key| async move { sync_serviceaccount(&ctx, &key).await });
        spawn_workers(&ctx, &epq, 2, &mut tasks, |ctx, key| async move { sync_endpoints(&ctx, &key).await });
        spawn_workers(&ctx, &rqq, 1, &mut tasks, |ctx, key| async move { sync_quota(&ctx, &key).await });
        spawn_workers(&ctx, &csrq, 1, &mut tasks, |ctx, key| async move {
            let Some(csr) = ctx.csrs.get(&key) else { return Ok(None) };
            crate::csr::sync(ctx.c(Ctl::Certificate), &csr, ctx.settings.signer.as_ref()).await
        });
        spawn_workers(&ctx, &hpaq, 2, &mut tasks, |ctx, key| async move { sync_hpa(&ctx, &key).await });
        spawn_workers(&ctx, &cjq, 1, &mut tasks, |ctx, key| async move { sync_cronjob(&ctx, &key).await });
        spawn_workers(&ctx, &pdbq, 2, &mut tasks, |ctx, key| async move { sync_disruption(&ctx, &key).await });
        spawn_workers(&ctx, &nsq, 2, &mut tasks, |ctx, key| async move { sync_namespace(&ctx, &key).await });
        spawn_workers(&ctx, &jobq, 2, &mut tasks, |ctx, key| async move { sync_job(&ctx, &key).await });
        spawn_workers(&ctx, &dsq, 2, &mut tasks, |ctx, key| async move { sync_daemonset(&ctx, &key).await });
        spawn_workers(&ctx, &stsq, 2, &mut tasks, |ctx, key| async move { sync_statefulset(&ctx, &key).await });
        spawn_workers(&ctx, &pvcq, 2, &mut tasks, |ctx, key| async move { volumes::sync_claim(&ctx, &key).await });
        spawn_workers(&ctx, &pvq, 1, &mut tasks, |ctx, key| async move { volumes::sync_volume(&ctx, &key).await });
        // One worker: two nodes are never given one range.
        spawn_workers(&ctx, &ipamq, 1, &mut tasks, |ctx, key| async move { ipam::sync_node_cidr(&ctx, &key).await });
        let x = ctx.clone();
        tasks.push(tokio::spawn(async move { node_lifecycle(x).await }));
        tasks.push(tokio::spawn(crate::token_cleaner::run(ctx.c(Ctl::TokenCleaner).clone())));
        Controllers { _informers: inf, queues: vec![rsq, rcq, caq, dq, gcq, saq, epq, jobq, dsq, stsq, nsq, pdbq, hpaq, cjq, rqq, csrq, pvcq, pvq, ipamq], ctx, tasks }
    }

    /// Queue depth, adds, retries and work duration per controller, for `/metrics`.
    pub fn metrics_text(&self) -> String {
        let mut out = String::from("# HELP workqueue_depth Keys waiting, per controller.\n# TYPE workqueue_depth gauge\n");
        let stats: Vec<(&str, (usize, u64, u64))> = self.queues.iter().map(|q| (q.name(), q.stats())).collect();
        for (n, (d, _, _)) in &stats {
            out.push_str(&format!("workqueue_depth{{name=\"{n}\"}} {d}\n"));
        }
        out.push_str("# HELP workqueue_adds_total Keys added, per controller.\n# TYPE workqueue_adds_total counter\n");
        for (n, (_, a, _)) in &stats {
            out.push_str(&format!("workqueue_adds_total{{name=\"{n}\"}} {a}\n"));
        }
        out.push_str("# HELP workqueue_retries_total Keys retried after a failed reconcile, per controller.\n# TYPE workqueue_retries_total counter\n");
        for (n, (_, _, r)) in &stats {
            out.push_str(&format!("workqueue_retries_total{{name=\"{n}\"}} {r}\n"));
        }
        out.push_str("# HELP workqueue_work_duration_seconds Reconcile time per key (quantiles from an hdrhistogram).\n# TYPE workqueue_work_duration_seconds summary\n");
        for (n, h) in self.ctx.work.lock().unwrap().iter() {
            for q in [0.5, 0.9, 0.99] {
                out.push_str(&format!("workqueue_work_duration_seconds{{name=\"{n}\",quantile=\"{q}\"}} {}\n", h.value_at_quantile(q) as f64 / 1e6));
            }
            out.push_str(&format!("workqueue_work_duration_seconds_count{{name=\"{n}\"}} {}\n", h.len()));
        }
        out
    }
}
