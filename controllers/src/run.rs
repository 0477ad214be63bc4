//! The controllers' runtime: shared informers, one work queue and a few workers per
//! controller, and the reconcile functions that act through the API.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::events::Recorder;
use client::informer::{Change, Informer, Informers, controller_of, key_of};
use client::workqueue::WorkQueue;
use client::{Client, ClientError};
use serde_json::{Value, json};

use crate::deployment::{self as dep, HASH_LABEL, REVISION, Rs};
use crate::identity::{Clients, Ctl};
use crate::podutil::{self, is_active, selector_matches};
use crate::replicaset::{self as rsc, Expectations};

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
}

impl Default for Settings {
    fn default() -> Self {
        Settings { node_monitor_grace: Duration::from_secs(40), default_toleration: Duration::from_secs(300), hpa_sync: Duration::from_secs(15), credentials: None, signer: None }
    }
}

struct Ctx {
    /// Each controller's client, for its writes (the informers and the event recorder
    /// have the manager's).
    clients: Clients,
    pods: Arc<Informer>,
    rs: Arc<Informer>,
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
    hpa_history: Mutex<std::collections::HashMap<String, std::collections::VecDeque<(i64, i64)>>>,
    /// Quotas whose recomputed `used` came out lower than their status, with that proposal and
    /// when it was first made: written only when a recount at least a second later agrees
    /// (see `sync_quota`).
    quota_lowering: Mutex<std::collections::HashMap<String, (Value, Instant)>>,
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
fn owner_key(v: &Value, kind: &str) -> Option<String> {
    let o = controller_of(v)?;
    if o["kind"] != kind {
        return None;
    }
    Some(format!("{}/{}", v["metadata"]["namespace"].as_str().unwrap_or(""), o["name"].as_str()?))
}

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
            hpa_history: Default::default(),
            quota_lowering: Default::default(),
            exp: Expectations::default(),
            events: Recorder::start(c.clone(), "controller-manager", String::new()),
            settings,
            work: Default::default(),
        });
        let rsq = WorkQueue::new("replicaset");
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
        // ReplicaSet: its own changes and its pods'.
        {
            let q = rsq.clone();
            ctx.rs.on_change(move |ch| {
                let v = ch.object();
                q.add(key_of(v));
            });
            let (q, x) = (rsq.clone(), Arc::downgrade(&ctx));
            ctx.pods.on_change(move |ch| {
                let Some(ctx) = x.upgrade() else { return };
                match ch {
                    Change::Added(p) => {
                        if let Some(k) = owner_key(p, "ReplicaSet") {
                            ctx.exp.observed_add(&k);
                            q.add(k);
                        }
                    }
                    Change::Modified { old, new } => {
                        if let Some(k) = owner_key(new, "ReplicaSet") {
                            if old["metadata"].get("deletionTimestamp").is_none() && new["metadata"].get("deletionTimestamp").is_some() {
                                ctx.exp.observed_delete(&k, new["metadata"]["name"].as_str().unwrap_or(""));
                            }
                            q.add(k);
                        }
                    }
                    Change::Deleted(p) => {
                        if let Some(k) = owner_key(p, "ReplicaSet") {
                            ctx.exp.observed_delete(&k, p["metadata"]["name"].as_str().unwrap_or(""));
                            q.add(k);
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
            let q = dq.clone();
            ctx.rs.on_change(move |ch| {
                let v = ch.object();
                if let Some(k) = owner_key(v, "Deployment") {
                    q.add(k);
                }
            });
        }
        // Garbage collection: dependents whose owners may be gone, owners being deleted
        // with a propagation finalizer.
        for (kind, inf_) in [
            ("Pod", ctx.pods.clone()),
            ("ReplicaSet", ctx.rs.clone()),
            ("Deployment", ctx.deploy.clone()),
            ("Job", ctx.jobs.clone()),
            ("DaemonSet", ctx.daemonsets.clone()),
            ("StatefulSet", ctx.statefulsets.clone()),
            ("CronJob", ctx.cronjobs.clone()),
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
        spawn_workers(&ctx, &rsq, 4, &mut tasks, |ctx, key| async move { sync_replicaset(&ctx, &key).await });
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
        let x = ctx.clone();
        tasks.push(tokio::spawn(async move { node_lifecycle(x).await }));
        tasks.push(tokio::spawn(crate::token_cleaner::run(ctx.c(Ctl::TokenCleaner).clone())));
        Controllers { _informers: inf, queues: vec![rsq, dq, gcq, saq, epq, jobq, dsq, stsq, nsq, pdbq, hpaq, cjq, rqq, csrq], ctx, tasks }
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

// ---------------------------------------------------------------- ReplicaSet

async fn sync_replicaset(ctx: &Ctx, key: &str) -> Res {
    let Some(rs) = ctx.rs.get(key) else {
        ctx.exp.forget(key);
        return Ok(None);
    };
    if rs["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    let uid = rs["metadata"]["uid"].as_str().unwrap_or("");
    let pods: Vec<Arc<Value>> = ctx.pods.owned_by(uid).into_iter().filter(|p| controller_of(p).is_some_and(|o| o["uid"] == uid)).collect();
    let active: Vec<Arc<Value>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    let (ns, _) = split(key);
    if ctx.exp.satisfied(key) {
        let d = rsc::decide(rs["spec"]["replicas"].as_i64().unwrap_or(1), &active);
        if d.create > 0 || !d.delete.is_empty() {
            ctx.exp.expect(key, d.create as i64, &d.delete);
        }
        if d.create > 0 {
            let pod = rsc::pod_from_template(&rs);
            let path = format!("/api/v1/namespaces/{ns}/pods");
            let mut created = 0;
            for b in rsc::batches(d.create) {
                let results = futures_util::future::join_all((0..b).map(|_| ctx.c(Ctl::ReplicaSet).post(&path, &pod))).await;
                let failed = results.iter().filter(|r| r.is_err()).count();
                created += b - failed;
                if failed > 0 {
                    // Not coming: stop expecting them, and retry with backoff.
                    for _ in 0..(d.create - created) {
                        ctx.exp.observed_add(key);
                    }
                    let e = results.into_iter().find_map(|r| r.err()).map(err).unwrap_or_default();
                    ctx.events.pod(&rs, None, true, "FailedCreate", format!("Error creating: {e}"));
                    return Err(e);
                }
            }
            ctx.events.pod(&rs, None, false, "SuccessfulCreate", format!("Created {created} pod(s)"));
        }
        if !d.delete.is_empty() {
            for name in &d.delete {
                match ctx.c(Ctl::ReplicaSet).delete(&format!("/api/v1/namespaces/{ns}/pods/{name}"), &json!({})).await {
                    Ok(_) => {}
                    Err(ClientError::Status { code: 404, .. }) => ctx.exp.observed_delete(key, name),
                    Err(e) => return Err(err(e)),
                }
            }
            ctx.events.pod(&rs, None, false, "SuccessfulDelete", format!("Deleted pod(s): {}", d.delete.join(", ")));
        }
    }
    let status = rsc::status(&rs, &pods, now_unix());
    let cur = &rs["status"];
    let changed = ["replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas", "observedGeneration"].iter().any(|f| cur[*f].as_i64().unwrap_or(0) != status[*f].as_i64().unwrap_or(0));
    if changed {
        let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets/{}/status", rs["metadata"]["name"].as_str().unwrap_or(""));
        match ctx.c(Ctl::ReplicaSet).merge_patch_quiet(&path, &json!({"status": status})).await {
            Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    // Ready pods waiting out minReadySeconds become available later.
    let min_ready = rs["spec"]["minReadySeconds"].as_u64().unwrap_or(0);
    let waiting = status["readyReplicas"].as_i64() != status["availableReplicas"].as_i64();
    Ok((min_ready > 0 && waiting).then(|| Duration::from_secs(min_ready.min(3600))))
}

// ---------------------------------------------------------------- Deployment

fn rs_view(r: &Value) -> Rs {
    Rs {
        name: r["metadata"]["name"].as_str().unwrap_or("").to_string(),
        spec: r["spec"]["replicas"].as_i64().unwrap_or(0),
        available: r["status"]["availableReplicas"].as_i64().unwrap_or(0),
        created: podutil::ts(&r["metadata"]["creationTimestamp"]).unwrap_or(0),
    }
}

fn revision(r: &Value) -> i64 {
    r["metadata"]["annotations"][REVISION].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn scale_rs(ctx: &Ctx, ns: &str, name: &str, replicas: i64, d: &Value) -> Result<(), String> {
    let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}");
    let patch = json!({"metadata": {"annotations": {"deployment.kubernetes.io/desired-replicas": d["spec"]["replicas"].as_i64().unwrap_or(1).to_string()}}, "spec": {"replicas": replicas}});
    ctx.c(Ctl::Deployment).merge_patch_quiet(&path, &patch).await.map_err(err)?;
    ctx.events.pod(d, None, false, "ScalingReplicaSet", format!("Scaled replica set {name} to {replicas}"));
    Ok(())
}

async fn sync_deployment(ctx: &Ctx, key: &str) -> Res {
    let Some(d) = ctx.deploy.get(key) else { return Ok(None) };
    if d["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    let (ns, name) = split(key);
    let uid = d["metadata"]["uid"].as_str().unwrap_or("");
    let rss: Vec<Arc<Value>> = ctx.rs.owned_by(uid).into_iter().filter(|r| controller_of(r).is_some_and(|o| o["uid"] == uid) && r["metadata"].get("deletionTimestamp").is_none()).collect();
    let template = &d["spec"]["template"];
    let hash = dep::template_hash(template);
    // The new set is the one whose template, without the hash label, is the deployment's
    // (so a rollback to an old template reuses its set, as Kubernetes' EqualIgnoreHash).
    let same_template = |r: &Value| {
        let mut t = r["spec"]["template"].clone();
        if let Some(l) = t["metadata"]["labels"].as_object_mut() {
            l.remove(HASH_LABEL);
        }
        let mut want = template.clone();
        if let Some(l) = want["metadata"]["labels"].as_object_mut() {
            l.remove(HASH_LABEL);
        }
        dep::normalize(&t) == dep::normalize(&want)
    };
    let new = rss.iter().find(|r| same_template(r)).or_else(|| rss.iter().find(|r| r["metadata"]["labels"][HASH_LABEL] == hash.as_str())).cloned();
    let new_uid = new.as_ref().map(|n| n["metadata"]["uid"].clone());
    let olds: Vec<Arc<Value>> = rss.iter().filter(|r| Some(&r["metadata"]["uid"]) != new_uid.as_ref()).cloned().collect();
    let max_old_rev = olds.iter().map(|r| revision(r)).max().unwrap_or(0);
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let paused = d["spec"]["paused"].as_bool() == Some(true);
    let recreate = d["spec"]["strategy"]["type"] == "Recreate";
    let (surge, unavailable) = dep::surge_unavailable(&d);
    let Some(new) = new else {
        if paused {
            return Ok(None);
        }
        let old_views: Vec<Rs> = olds.iter().map(|r| rs_view(r)).collect();
        let old_total: i64 = old_views.iter().map(|r| r.spec).sum::<i64>() + olds.iter().map(|r| r["status"]["replicas"].as_i64().unwrap_or(0)).sum::<i64>();
        let start = if old_total == 0 {
            replicas
        } else if recreate {
            0
        } else {
            let probe = Rs { name: String::new(), spec: 0, available: 0, created: 0 };
            dep::new_rs_replicas(replicas, surge, &old_views, &probe)
        };
        let mut labels = template["metadata"]["labels"].clone();
        labels[HASH_LABEL] = json!(hash);
        let mut tmpl = template.clone();
        tmpl["metadata"]["labels"] = labels.clone();
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("{name}-{hash}"), "namespace": ns, "labels": labels,
                "annotations": {REVISION: (max_old_rev + 1).to_string(), "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                    "deployment.kubernetes.io/max-replicas": (replicas + surge).to_string()},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"replicas": start, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0), "selector": selector, "template": tmpl},
        });
        match ctx.c(Ctl::Deployment).post(&format!("/apis/apps/v1/namespaces/{ns}/replicasets"), &rs).await {
            Ok(_) => {
                ctx.events.pod(&d, None, false, "ScalingReplicaSet", format!("Scaled up replica set {name}-{hash} to {start}"));
                return Ok(None);
            }
            Err(e) => return Err(err(e)),
        }
    };
    let new_name = new["metadata"]["name"].as_str().unwrap_or("").to_string();
    // The new set carries the highest revision (a rollback makes an old one new again).
    let rev = revision(&new);
    let want_rev = if rev > max_old_rev { rev } else { max_old_rev + 1 };
    if rev != want_rev {
        let p = json!({"metadata": {"annotations": {REVISION: want_rev.to_string()}}});
        ctx.c(Ctl::Deployment).merge_patch_quiet(&format!("/apis/apps/v1/namespaces/{ns}/replicasets/{new_name}"), &p).await.map_err(err)?;
    }
    if d["metadata"]["annotations"][REVISION] != want_rev.to_string().as_str() {
        let mut ann = json!({REVISION: want_rev.to_string()});
        if let Some(cause) = d["metadata"]["annotations"]["kubernetes.io/change-cause"].as_str() {
            ann["kubernetes.io/change-cause"] = json!(cause);
        }
        ctx.c(Ctl::Deployment).merge_patch_quiet(&format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"), &json!({"metadata": {"annotations": ann}})).await.map_err(err)?;
    }
    if !paused {
        let new_v = rs_view(&new);
        let old_v: Vec<Rs> = olds.iter().map(|r| rs_view(r)).collect();
        let old_pods: i64 = olds.iter().map(|r| r["status"]["replicas"].as_i64().unwrap_or(0)).sum();
        if recreate {
            for o in old_v.iter().filter(|o| o.spec > 0) {
                scale_rs(ctx, ns, &o.name, 0, &d).await?;
            }
            if old_pods == 0 && new_v.spec != replicas {
                scale_rs(ctx, ns, &new_name, replicas, &d).await?;
            }
        } else if old_v.iter().all(|o| o.spec == 0) {
            if new_v.spec != replicas {
                scale_rs(ctx, ns, &new_name, replicas, &d).await?;
            }
        } else {
            let all: Vec<Rs> = old_v.iter().cloned().chain([new_v.clone()]).collect();
            let target = dep::new_rs_replicas(replicas, surge, &all, &new_v);
            if target != new_v.spec {
                scale_rs(ctx, ns, &new_name, target, &d).await?;
            }
            for (oname, n) in dep::scale_down_old(replicas, unavailable, &new_v, &old_v) {
                if old_v.iter().any(|o| o.name == oname && o.spec != n) {
                    scale_rs(ctx, ns, &oname, n, &d).await?;
                }
            }
        }
        // revisionHistoryLimit: old sets scaled to nothing beyond the limit go.
        let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
        let mut idle: Vec<&Arc<Value>> = olds.iter().filter(|r| r["spec"]["replicas"].as_i64() == Some(0) && r["status"]["replicas"].as_i64().unwrap_or(0) == 0).collect();
        if idle.len() > limit {
            idle.sort_by_key(|r| revision(r));
            for r in &idle[..idle.len() - limit] {
                let n = r["metadata"]["name"].as_str().unwrap_or("");
                let _ = ctx.c(Ctl::Deployment).delete(&format!("/apis/apps/v1/namespaces/{ns}/replicasets/{n}"), &json!({"propagationPolicy": "Background"})).await;
            }
        }
    }
    // Status, with the progress deadline.
    let all: Vec<&Value> = rss.iter().map(|r| &**r).collect();
    let deadline = Duration::from_secs(d["spec"]["progressDeadlineSeconds"].as_u64().unwrap_or(600));
    let progressing = d["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == "Progressing")).cloned();
    let since = progressing.as_ref().and_then(|c| podutil::ts(&c["lastUpdateTime"])).unwrap_or(now_unix());
    let passed = now_unix() - since > deadline.as_secs() as i64;
    let status = dep::status(&d, Some(&new), &all, &d["status"], &now_rfc3339(), passed);
    let same = |a: &Value, b: &Value| {
        let strip = |v: &Value| {
            let mut v = v.clone();
            for c in v["conditions"].as_array_mut().into_iter().flatten() {
                c.as_object_mut().map(|m| m.remove("lastUpdateTime"));
            }
            v
        };
        strip(a) == strip(b)
    };
    if !same(&status, &d["status"]) {
        match ctx.c(Ctl::Deployment).merge_patch_quiet(&format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}/status"), &json!({"status": status})).await {
            Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    let complete = status["conditions"][1]["reason"] == "NewReplicaSetAvailable";
    Ok((!complete && !paused).then(|| Duration::from_secs(5)))
}

// ---------------------------------------------------------------- garbage collection

impl Ctx {
    fn owner_informers(&self) -> [(&'static str, &Arc<Informer>); 6] {
        [("ReplicaSet", &self.rs), ("Deployment", &self.deploy), ("Job", &self.jobs), ("DaemonSet", &self.daemonsets), ("StatefulSet", &self.statefulsets), ("CronJob", &self.cronjobs)]
    }

    fn dependent_informers(&self) -> [(&'static str, &Arc<Informer>); 3] {
        [("Pod", &self.pods), ("ReplicaSet", &self.rs), ("Job", &self.jobs)]
    }
}

fn informer_for<'a>(ctx: &'a Ctx, kind: &str) -> Option<&'a Arc<Informer>> {
    match kind {
        "Pod" => Some(&ctx.pods),
        "ReplicaSet" => Some(&ctx.rs),
        "Deployment" => Some(&ctx.deploy),
        "Job" => Some(&ctx.jobs),
        "DaemonSet" => Some(&ctx.daemonsets),
        "StatefulSet" => Some(&ctx.statefulsets),
        "CronJob" => Some(&ctx.cronjobs),
        _ => None,
    }
}

fn api_path(kind: &str, ns: &str, name: &str) -> String {
    match kind {
        "Pod" => format!("/api/v1/namespaces/{ns}/pods/{name}"),
        "Job" => format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}"),
        "ReplicaSet" => format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}"),
        "DaemonSet" => format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}"),
        "StatefulSet" => format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{name}"),
        "CronJob" => format!("/apis/batch/v1/namespaces/{ns}/cronjobs/{name}"),
        _ => format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
    }
}

async fn sync_gc(ctx: &Ctx, key: &str) -> Res {
    let mut parts = key.splitn(3, '|');
    let (what, kind, okey) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(inf) = informer_for(ctx, kind) else { return Ok(None) };
    let Some(obj) = inf.get(okey) else { return Ok(None) };
    let (ns, name) = split(okey);
    // Owners of kinds this collector does not watch are assumed to exist.
    for i in [&ctx.pods, &ctx.rs, &ctx.deploy, &ctx.jobs, &ctx.daemonsets, &ctx.statefulsets, &ctx.cronjobs] {
        if !i.has_synced() {
            return Ok(Some(Duration::from_secs(1)));
        }
    }
    if what == "dep" {
        let refs = obj["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        if refs.is_empty() || obj["metadata"].get("deletionTimestamp").is_some() {
            return Ok(None);
        }
        let absent = refs.iter().all(|r| {
            let uid = r["uid"].as_str().unwrap_or("");
            match informer_for(ctx, r["kind"].as_str().unwrap_or("")) {
                Some(oi) => oi.get_by_uid(uid).is_none(),
                None => false,
            }
        });
        // A Foreground-deleted owner takes its blocking dependents first.
        let foreground_owner = refs.iter().any(|r| {
            informer_for(ctx, r["kind"].as_str().unwrap_or(""))
                .and_then(|oi| oi.get_by_uid(r["uid"].as_str().unwrap_or("")))
                .is_some_and(|o| o["metadata"].get("deletionTimestamp").is_some() && o["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion")))
        });
        if absent || foreground_owner {
            let policy = if foreground_owner { "Foreground" } else { "Background" };
            let opts = json!({"propagationPolicy": policy, "preconditions": {"uid": obj["metadata"]["uid"]}});
            match ctx.c(Ctl::GarbageCollector).delete(&api_path(kind, ns, name), &opts).await {
                Ok(_) | Err(ClientError::Status { code: 404 | 409, .. }) => {}
                Err(e) => return Err(err(e)),
            }
        }
        return Ok(None);
    }
    // An owner being deleted with a propagation finalizer.
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let finalizers: Vec<String> = obj["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(String::from)).collect();
    let deps: Vec<(&str, Arc<Value>)> = ctx.dependent_informers().iter().flat_map(|(k, i)| i.owned_by(&uid).into_iter().map(move |d| (*k, d))).collect();
    let mut remaining = finalizers.clone();
    if finalizers.iter().any(|f| f == "orphan") {
        for (k, dv) in &deps {
            let refs: Vec<Value> = dv["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter(|r| r["uid"] != uid.as_str()).cloned().collect();
            let (dns, dn) = (dv["metadata"]["namespace"].as_str().unwrap_or(""), dv["metadata"]["name"].as_str().unwrap_or(""));
            let refs = if refs.is_empty() { Value::Null } else { json!(refs) };
            match ctx.c(Ctl::GarbageCollector).merge_patch_quiet(&api_path(k, dns, dn), &json!({"metadata": {"ownerReferences": refs}})).await {
                Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
                Err(e) => return Err(err(e)),
            }
        }
        remaining.retain(|f| f != "orphan");
    }
    if finalizers.iter().any(|f| f == "foregroundDeletion") {
        let live: Vec<&(&str, Arc<Value>)> = deps.iter().collect();
        if !live.is_empty() {
            for (k, dv) in live.iter().filter(|(_, d)| d["metadata"].get("deletionTimestamp").is_none()) {
                let (dns, dn) = (dv["metadata"]["namespace"].as_str().unwrap_or(""), dv["metadata"]["name"].as_str().unwrap_or(""));
                match ctx.c(Ctl::GarbageCollector).delete(&api_path(k, dns, dn), &json!({"propagationPolicy": "Foreground"})).await {
                    Ok(_) | Err(ClientError::Status { code: 404, .. }) => {}
                    Err(e) => return Err(err(e)),
                }
            }
            return Ok(Some(Duration::from_secs(1)));
        }
        remaining.retain(|f| f != "foregroundDeletion");
    }
    if remaining != finalizers {
        match ctx.c(Ctl::GarbageCollector).merge_patch_quiet(&api_path(kind, ns, name), &json!({"metadata": {"finalizers": remaining}})).await {
            Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------- ServiceAccount

async fn sync_serviceaccount(ctx: &Ctx, ns: &str) -> Res {
    let Some(n) = ctx.namespaces.get(ns) else { return Ok(None) };
    if n["metadata"].get("deletionTimestamp").is_some() || ctx.sas.get(&format!("{ns}/default")).is_some() {
        return Ok(None);
    }
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
    match ctx.c(Ctl::ServiceAccount).post(&format!("/api/v1/namespaces/{ns}/serviceaccounts"), &sa).await {
        Ok(_) | Err(ClientError::Status { code: 409 | 404, .. }) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

// ---------------------------------------------------------------- Endpoints

fn target_port(port: &Value, pod: &Value) -> Option<i64> {
    let tp = if port["targetPort"].is_null() { &port["port"] } else { &port["targetPort"] };
    if let Some(n) = tp.as_i64() {
        return Some(n);
    }
    let name = tp.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    pod["spec"]["containers"].as_array()?.iter().flat_map(|c| c["ports"].as_array().into_iter().flatten()).find(|p| p["name"] == name)?["containerPort"].as_i64()
}

async fn sync_endpoints(ctx: &Ctx, key: &str) -> Res {
    let (ns, name) = split(key);
    let Some(svc) = ctx.services.get(key) else { return Ok(None) };
    let Some(sel) = svc["spec"]["selector"].as_object().filter(|m| !m.is_empty()) else { return Ok(None) };
    let selector = json!({"matchLabels": sel});
    let mut pods: Vec<Arc<Value>> = ctx
        .pods
        .list()
        .into_iter()
        .filter(|p| p["metadata"]["namespace"] == ns && selector_matches(&selector, &p["metadata"]["labels"]) && p["status"]["podIP"].as_str().is_some_and(|i| !i.is_empty()))
        .collect();
    pods.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    let ports: Vec<&Value> = svc["spec"]["ports"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let addr = |p: &Value| json!({"ip": p["status"]["podIP"], "nodeName": p["spec"]["nodeName"], "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]}});
    let first = pods.first().cloned();
    let eports: Vec<Value> = ports
        .iter()
        .map(|sp| json!({"name": sp["name"].as_str().unwrap_or(""), "port": first.as_ref().and_then(|p| target_port(sp, p)).unwrap_or(0), "protocol": sp["protocol"].as_str().unwrap_or("TCP")}))
        .collect();
    let ready: Vec<Value> = pods.iter().filter(|p| podutil::is_ready(p) && is_active(p)).map(|p| addr(p)).collect();
    let not_ready: Vec<Value> = pods.iter().filter(|p| !(podutil::is_ready(p) && is_active(p))).map(|p| addr(p)).collect();
    let mut subset = json!({"ports": eports});
    if !ready.is_empty() {
        subset["addresses"] = json!(ready);
    }
    if !not_ready.is_empty() {
        subset["notReadyAddresses"] = json!(not_ready);
    }
    let subsets = if pods.is_empty() { json!([]) } else { json!([subset]) };
    let ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "labels": svc["metadata"]["labels"]}, "subsets": subsets});
    let cur = ctx.endpoints.get(key);
    let cur_subsets = cur.as_ref().map(|e| if e["subsets"].is_null() { json!([]) } else { e["subsets"].clone() });
    if cur_subsets.as_ref() != Some(&subsets) {
        let r = match cur {
            None => ctx.c(Ctl::Endpoint).post(&format!("/api/v1/namespaces/{ns}/endpoints"), &ep).await.map(|_| ()),
            Some(_) => ctx.c(Ctl::Endpoint).merge_patch_quiet(&format!("/api/v1/namespaces/{ns}/endpoints/{name}"), &json!({"subsets": subsets})).await,
        };
        r.map_err(err)?;
    }
    // One EndpointSlice per service, named after it.
    let slice_eps: Vec<Value> = pods
        .iter()
        .map(|p| {
            let ready = podutil::is_ready(p) && is_active(p);
            json!({"addresses": [p["status"]["podIP"]], "conditions": {"ready": ready, "serving": podutil::is_ready(p), "terminating": p["metadata"].get("deletionTimestamp").is_some()},
                "nodeName": p["spec"]["nodeName"], "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]}})
        })
        .collect();
    let slice_ports: Vec<Value> = eports.iter().map(|p| json!({"name": p["name"], "port": p["port"], "protocol": p["protocol"]})).collect();
    let sname = format!("{name}-capstan");
    let skey = format!("{ns}/{sname}");
    let cur = ctx.slices.get(&skey);
    if cur.as_ref().map(|s| (&s["endpoints"], &s["ports"])) != Some((&json!(slice_eps), &json!(slice_ports))) {
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": sname, "namespace": ns, "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]},
            "addressType": "IPv4", "endpoints": slice_eps, "ports": slice_ports});
        let r = match cur {
            None => ctx.c(Ctl::EndpointSlice).post(&format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"), &slice).await.map(|_| ()),
            Some(_) => ctx.c(Ctl::EndpointSlice).merge_patch_quiet(&format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{sname}"), &json!({"endpoints": slice_eps, "ports": slice_ports})).await,
        };
        r.map_err(err)?;
    }
    Ok(None)
}

// ---------------------------------------------------------------- node lifecycle

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

fn micro_ts(v: &Value) -> Option<f64> {
    v.as_str()?.parse::<jiff::Timestamp>().ok().map(|t| t.as_nanosecond() as f64 / 1e9)
}

/// Every 5 s: nodes whose lease is older than the grace period become `Ready=Unknown` and
/// get the unreachable taints; their pods are evicted once their toleration runs out; nodes
/// whose lease is fresh again lose the taints (the kubelet reports Ready again).
async fn node_lifecycle(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5).min(ctx.settings.node_monitor_grace / 4).max(Duration::from_millis(200)));
    // A node that never had a lease or a heartbeat counts from when it was first seen.
    let mut first_seen: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    loop {
        tick.tick().await;
        if !ctx.nodes.has_synced() || !ctx.leases.has_synced() {
            continue;
        }
        let now = jiff::Timestamp::now().as_nanosecond() as f64 / 1e9;
        for n in ctx.nodes.list() {
            let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
            let renewed = ctx.leases.get(&format!("kube-node-lease/{name}")).and_then(|l| micro_ts(&l["spec"]["renewTime"]));
            let ready = n["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == "Ready")).cloned().unwrap_or(Value::Null);
            let seen = *first_seen.entry(name.clone()).or_insert(now);
            let heartbeat = renewed.or_else(|| micro_ts(&ready["lastHeartbeatTime"])).unwrap_or(seen);
            let stale = now - heartbeat > ctx.settings.node_monitor_grace.as_secs_f64();
            let taints: Vec<Value> = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
            let tainted = taints.iter().any(|t| t["key"] == UNREACHABLE);
            if stale {
                if ready["status"] != "Unknown" {
                    let t = now_rfc3339();
                    let conds: Vec<Value> = n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let mut c = c.clone();
                            c["status"] = json!("Unknown");
                            c["reason"] = json!("NodeStatusUnknown");
                            c["message"] = json!("Kubelet stopped posting node status.");
                            c["lastTransitionTime"] = json!(t);
                            c
                        })
                        .collect();
                    let _ = ctx.c(Ctl::Node).merge_patch_quiet(&format!("/api/v1/nodes/{name}/status"), &json!({"status": {"conditions": conds}})).await;
                }
                if !tainted {
                    let mut t = taints.clone();
                    let added = now_rfc3339();
                    t.push(json!({"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": added}));
                    t.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": added}));
                    let _ = ctx.c(Ctl::Node).merge_patch_quiet(&format!("/api/v1/nodes/{name}"), &json!({"spec": {"taints": t}})).await;
                }
            } else if tainted {
                let t: Vec<Value> = taints.into_iter().filter(|t| t["key"] != UNREACHABLE).collect();
                let _ = ctx.c(Ctl::Node).merge_patch_quiet(&format!("/api/v1/nodes/{name}"), &json!({"spec": {"taints": if t.is_empty() { Value::Null } else { json!(t) }}})).await;
            }
            // Eviction of pods on a node with the NoExecute taint, after their toleration.
            let Some(added) = n["spec"]["taints"].as_array().and_then(|a| a.iter().find(|t| t["key"] == UNREACHABLE && t["effect"] == "NoExecute")).and_then(|t| micro_ts(&t["timeAdded"])) else {
                continue;
            };
            for p in ctx.pods.list().into_iter().filter(|p| p["spec"]["nodeName"] == name.as_str() && p["metadata"].get("deletionTimestamp").is_none()) {
                let tol = p["spec"]["tolerations"].as_array().and_then(|a| {
                    a.iter()
                        .find(|t| (t["key"] == UNREACHABLE || (t["key"].is_null() && t["operator"] == "Exists")) && (t["effect"].is_null() || t["effect"] == "NoExecute"))
                        .cloned()
                });
                let secs = match &tol {
                    Some(t) => match t["tolerationSeconds"].as_i64() {
                        Some(s) => s.max(0) as f64,
                        None => continue, // tolerates forever
                    },
                    None => ctx.settings.default_toleration.as_secs_f64(),
                };
                if now >= added + secs {
                    let (ns, pn) = (p["metadata"]["namespace"].as_str().unwrap_or(""), p["metadata"]["name"].as_str().unwrap_or(""));
                    ctx.events.pod(&p, None, false, "TaintManagerEviction", format!("Marking for deletion Pod {ns}/{pn}"));
                    let _ = ctx.c(Ctl::Node).delete(&format!("/api/v1/namespaces/{ns}/pods/{pn}"), &json!({})).await;
                }
            }
        }
    }
}


// ---------------------------------------------------------------- Job, DaemonSet, StatefulSet

use crate::workloads::{self, JobStep, SetStep};

fn owned_pods(ctx: &Ctx, uid: &str) -> Vec<Arc<Value>> {
    ctx.pods.owned_by(uid).into_iter().filter(|p| controller_of(p).is_some_and(|o| o["uid"] == uid)).collect()
}

fn pod_for(owner: &Value, api_version: &str, kind: &str, name: Option<String>) -> Value {
    let t = &owner["spec"]["template"];
    let mut meta = if t["metadata"].is_object() { t["metadata"].clone() } else { json!({}) };
    let oname = owner["metadata"]["name"].as_str().unwrap_or("");
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(format!("{oname}-")),
    }
    meta["namespace"] = owner["metadata"]["namespace"].clone();
    meta["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind, "name": oname, "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("creationTimestamp");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"]})
}

async fn create_pods(ctx: &Ctx, ctl: Ctl, ns: &str, pods: Vec<Value>) -> Result<(), String> {
    let path = format!("/api/v1/namespaces/{ns}/pods");
    for r in futures_util::future::join_all(pods.iter().map(|p| ctx.c(ctl).post(&path, p))).await {
        match r {
            Ok(_) | Err(ClientError::Status { code: 409, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

async fn patch_status(ctx: &Ctx, ctl: Ctl, path: String, cur: &Value, status: Value) -> Result<(), String> {
    let changed = status.as_object().into_iter().flatten().any(|(k, v)| cur[k] != *v);
    if !changed {
        return Ok(());
    }
    match ctx.c(ctl).merge_patch_quiet(&path, &json!({"status": status})).await {
        Ok(()) | Err(ClientError::Status { code: 404, .. }) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

async fn sync_job(ctx: &Ctx, key: &str) -> Res {
    let Some(job) = ctx.jobs.get(key) else { return Ok(None) };
    let (ns, name) = split(key);
    let path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}");
    let finished_at = job["status"]["conditions"].as_array().into_iter().flatten().find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True").and_then(|c| podutil::ts(&c["lastTransitionTime"]));
    if let Some(done) = finished_at {
        // ttlSecondsAfterFinished: the Job (and through GC its pods) goes when it expires.
        if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() {
            let left = done + ttl - now_unix();
            if left <= 0 {
                let _ = ctx.c(Ctl::TtlAfterFinished).delete(&path, &json!({"propagationPolicy": "Background"})).await;
                return Ok(None);
            }
            return Ok(Some(Duration::from_secs(left as u64)));
        }
        return Ok(None);
    }
    if job["metadata"].get("deletionTimestamp").is_some() || job["spec"]["suspend"].as_bool() == Some(true) {
        return Ok(None);
    }
    let pods = owned_pods(ctx, job["metadata"]["uid"].as_str().unwrap_or(""));
    let start = podutil::ts(&job["status"]["startTime"]).unwrap_or(now_unix());
    let step = workloads::job_step(&job, &pods, now_unix() - start);
    let (active, succeeded, failed) = workloads::job_counts(&pods);
    let mut status = json!({
        "active": active, "succeeded": succeeded, "failed": failed,
        "ready": pods.iter().filter(|p| is_active(p) && podutil::is_ready(p)).count(),
        "startTime": job["status"]["startTime"].as_str().map(String::from).unwrap_or_else(now_rfc3339),
    });
    match step {
        JobStep::Create(n) => {
            let mut pod = pod_for(&job, "batch/v1", "Job", None);
            pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] = json!(name);
            pod["metadata"]["labels"]["job-name"] = json!(name);
            create_pods(ctx, Ctl::Job, ns, vec![pod; n]).await?;
            status["active"] = json!(active + n as i64);
        }
        JobStep::Finish { complete, reason, message } => {
            for p in pods.iter().filter(|p| is_active(p)) {
                let _ = ctx.c(Ctl::Job).delete(&format!("/api/v1/namespaces/{ns}/pods/{}", p["metadata"]["name"].as_str().unwrap_or("")), &json!({})).await;
            }
            let t = now_rfc3339();
            let ty = if complete { "Complete" } else { "Failed" };
            let mut conds = vec![json!({"type": if complete { "SuccessCriteriaMet" } else { "FailureTarget" }, "status": "True", "reason": reason, "message": message, "lastProbeTime": t, "lastTransitionTime": t})];
            conds.push(json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastProbeTime": t, "lastTransitionTime": t}));
            status["conditions"] = json!(conds);
            status["active"] = json!(0);
            if complete {
                status["completionTime"] = json!(t);
            }
            ctx.events.pod(&job, None, !complete, if complete { "Completed" } else { reason }, format!("Job {}", if complete { "completed" } else { "failed" }));
            patch_status(ctx, Ctl::Job, format!("{path}/status"), &job["status"], status).await?;
            return Ok(job["spec"]["ttlSecondsAfterFinished"].as_i64().map(|t| Duration::from_secs(t.max(0) as u64)));
        }
        JobStep::Wait => {}
    }
    patch_status(ctx, Ctl::Job, format!("{path}/status"), &job["status"], status).await?;
    Ok(job["spec"]["activeDeadlineSeconds"].as_i64().map(|d| Duration::from_secs((start + d - now_unix()).max(1) as u64)))
}

async fn sync_daemonset(ctx: &Ctx, key: &str) -> Res {
    let Some(ds) = ctx.daemonsets.get(key) else { return Ok(None) };
    if ds["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    let (ns, name) = split(key);
    let hash = dep::template_hash(&ds["spec"]["template"]);
    let pods: Vec<Arc<Value>> = owned_pods(ctx, ds["metadata"]["uid"].as_str().unwrap_or("")).into_iter().filter(|p| is_active(p)).collect();
    let node_of = |p: &Value| -> String {
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
            .as_str()
            .or(p["spec"]["nodeName"].as_str())
            .unwrap_or("")
            .to_string()
    };
    let nodes = ctx.nodes.list();
    let eligible: Vec<String> = nodes.iter().filter(|n| workloads::daemon_fits(&ds["spec"]["template"], n)).filter_map(|n| n["metadata"]["name"].as_str().map(String::from)).collect();
    let mut create = Vec::new();
    for n in &eligible {
        if !pods.iter().any(|p| node_of(p) == *n) {
            let mut pod = pod_for(&ds, "apps/v1", "DaemonSet", None);
            pod["metadata"]["labels"]["controller-revision-hash"] = json!(hash);
            pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n]}]}]});
            let mut tol = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
            for k in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
                tol.push(json!({"key": k, "operator": "Exists", "effect": "NoExecute"}));
            }
            tol.push(json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}));
            pod["spec"]["tolerations"] = json!(tol);
            create.push(pod);
        }
    }
    create_pods(ctx, Ctl::DaemonSet, ns, create).await?;
    // Pods on nodes that no longer fit, and (RollingUpdate, one at a time) old-template pods.
    let mut delete: Vec<&Arc<Value>> = pods.iter().filter(|p| !eligible.contains(&node_of(p))).collect();
    let rolling = ds["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
    let outdated: Vec<&Arc<Value>> = pods.iter().filter(|p| p["metadata"]["labels"]["controller-revision-hash"] != hash.as_str()).collect();
    let unavailable = pods.iter().filter(|p| !podutil::is_ready(p)).count();
    if rolling && unavailable == 0
        && let Some(p) = outdated.first()
    {
        delete.push(p);
    }
    for p in delete {
        let _ = ctx.c(Ctl::DaemonSet).delete(&format!("/api/v1/namespaces/{ns}/pods/{}", p["metadata"]["name"].as_str().unwrap_or("")), &json!({})).await;
    }
    let on_eligible: Vec<&Arc<Value>> = pods.iter().filter(|p| eligible.contains(&node_of(p))).collect();
    let status = json!({
        "desiredNumberScheduled": eligible.len(),
        "currentNumberScheduled": on_eligible.len(),
        "numberMisscheduled": pods.len() - on_eligible.len(),
        "numberReady": on_eligible.iter().filter(|p| podutil::is_ready(p)).count(),
        "numberAvailable": on_eligible.iter().filter(|p| podutil::is_ready(p)).count(),
        "numberUnavailable": eligible.len().saturating_sub(on_eligible.iter().filter(|p| podutil::is_ready(p)).count()),
        "updatedNumberScheduled": on_eligible.iter().filter(|p| p["metadata"]["labels"]["controller-revision-hash"] == hash.as_str()).count(),
        "observedGeneration": ds["metadata"]["generation"],
    });
    patch_status(ctx, Ctl::DaemonSet, format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}/status"), &ds["status"], status).await?;
    Ok(None)
}

async fn sync_statefulset(ctx: &Ctx, key: &str) -> Res {
    let Some(sts) = ctx.statefulsets.get(key) else { return Ok(None) };
    if sts["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    let (ns, name) = split(key);
    let hash = dep::template_hash(&sts["spec"]["template"]);
    let rev = format!("{name}-{hash}");
    let all = owned_pods(ctx, sts["metadata"]["uid"].as_str().unwrap_or(""));
    let pods: Vec<Arc<Value>> = all.iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).cloned().collect();
    let terminating = all.len() != pods.len();
    let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1);
    let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
    if !terminating || parallel {
        match workloads::set_step(name, replicas, parallel, &pods) {
            SetStep::Create(ords) => {
                let mk = |o: i64| {
                    let pname = format!("{name}-{o}");
                    let mut p = pod_for(&sts, "apps/v1", "StatefulSet", Some(pname.clone()));
                    p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(pname);
                    p["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(o.to_string());
                    p["metadata"]["labels"]["controller-revision-hash"] = json!(rev);
                    p["spec"]["hostname"] = json!(pname);
                    if let Some(svc) = sts["spec"]["serviceName"].as_str() {
                        p["spec"]["subdomain"] = json!(svc);
                    }
                    p
                };
                create_pods(ctx, Ctl::StatefulSet, ns, ords.into_iter().map(mk).collect()).await?;
            }
            SetStep::Delete(names) => {
                for n in names {
                    let _ = ctx.c(Ctl::StatefulSet).delete(&format!("/api/v1/namespaces/{ns}/pods/{n}"), &json!({})).await;
                }
            }
            SetStep::Wait => {
                // RollingUpdate: the highest-ordinal pod of the old revision goes once all are
                // ready; it comes back with the new template.
                let rolling = sts["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
                let all_ready = pods.len() as i64 == replicas && pods.iter().all(|p| podutil::is_ready(p));
                if rolling && all_ready
                    && let Some(p) = pods.iter().filter(|p| p["metadata"]["labels"]["controller-revision-hash"] != rev.as_str()).max_by_key(|p| workloads::ordinal(name, p["metadata"]["name"].as_str().unwrap_or("")))
                {
                    let _ = ctx.c(Ctl::StatefulSet).delete(&format!("/api/v1/namespaces/{ns}/pods/{}", p["metadata"]["name"].as_str().unwrap_or("")), &json!({})).await;
                }
            }
        }
    }
    let updated = pods.iter().filter(|p| p["metadata"]["labels"]["controller-revision-hash"] == rev.as_str()).count();
    let ready = pods.iter().filter(|p| podutil::is_ready(p)).count();
    let current_rev = if updated == pods.len() { rev.clone() } else { sts["status"]["currentRevision"].as_str().map(String::from).unwrap_or_else(|| rev.clone()) };
    let status = json!({
        "replicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready,
        "currentReplicas": if current_rev == rev { updated } else { pods.len() - updated },
        "updatedReplicas": updated, "currentRevision": current_rev, "updateRevision": rev,
        "observedGeneration": sts["metadata"]["generation"],
    });
    patch_status(ctx, Ctl::StatefulSet, format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/status"), &sts["status"], status).await?;
    Ok(None)
}

// ---------------------------------------------------------------- Namespace

/// Collection paths (without the namespace part filled in) of every namespaced resource the
/// server serves that can be deleted as a collection, from discovery.
async fn namespaced_collections(c: &Client) -> Result<Vec<(String, String)>, String> {
    let mut gvs = vec!["/api/v1".to_string()];
    let groups = c.get("/apis").await.map_err(err)?;
    for g in groups["groups"].as_array().into_iter().flatten() {
        if let Some(gv) = g["preferredVersion"]["groupVersion"].as_str() {
            gvs.push(format!("/apis/{gv}"));
        }
    }
    let mut out = Vec::new();
    for gv in gvs {
        let Ok(list) = c.get(&gv).await else { continue };
        for r in list["resources"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("");
            let deletable = r["verbs"].as_array().is_some_and(|v| v.iter().any(|x| x == "deletecollection"));
            if r["namespaced"].as_bool() == Some(true) && !name.contains('/') && deletable {
                out.push((gv.clone(), name.to_string()));
            }
        }
    }
    Ok(out)
}

async fn sync_namespace(ctx: &Ctx, ns: &str) -> Res {
    let Some(n) = ctx.namespaces.get(ns) else { return Ok(None) };
    if n["metadata"].get("deletionTimestamp").is_none() {
        return Ok(None);
    }
    let collections = namespaced_collections(ctx.c(Ctl::Namespace)).await?;
    let mut remaining = 0;
    for (gv, res) in &collections {
        let path = format!("{gv}/namespaces/{ns}/{res}");
        match ctx.c(Ctl::Namespace).delete(&path, &json!({"propagationPolicy": "Background"})).await {
            Ok(_) | Err(ClientError::Status { code: 404 | 405, .. }) => {}
            Err(e) => return Err(err(e)),
        }
        if let Ok(left) = ctx.c(Ctl::Namespace).get(&format!("{path}?limit=1")).await {
            remaining += left["items"].as_array().map_or(0, |a| a.len());
        }
    }
    if remaining > 0 {
        return Ok(Some(Duration::from_secs(1)));
    }
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": []}});
    match ctx.c(Ctl::Namespace).put(&format!("/api/v1/namespaces/{ns}/finalize"), &body).await {
        Ok(_) | Err(ClientError::Status { code: 404, .. }) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

// ---------------------------------------------------------------- PodDisruptionBudget

/// (expected pods, desired healthy) of a budget, as the disruption controller computes them.
pub fn budget(spec: &Value, matching: usize, controllers_scale: Option<i64>) -> (i64, i64) {
    let pct = |v: &Value, total: i64| -> Option<i64> {
        let s = v.as_str()?.strip_suffix('%')?;
        let p: i64 = s.parse().ok()?;
        Some((total * p + 99) / 100)
    };
    let counted = matching as i64;
    if !spec["maxUnavailable"].is_null() {
        let expected = controllers_scale.unwrap_or(counted);
        let max_un = spec["maxUnavailable"].as_i64().or_else(|| pct(&spec["maxUnavailable"], expected)).unwrap_or(0);
        return (expected, (expected - max_un).max(0));
    }
    match &spec["minAvailable"] {
        Value::Number(n) => (counted, n.as_i64().unwrap_or(0)),
        v @ Value::String(_) => {
            let expected = controllers_scale.unwrap_or(counted);
            (expected, pct(v, expected).unwrap_or(0))
        }
        _ => (counted, counted),
    }
}

async fn sync_disruption(ctx: &Ctx, key: &str) -> Res {
    let Some(pdb) = ctx.pdbs.get(key) else { return Ok(None) };
    let (ns, name) = split(key);
    let pods: Vec<Arc<Value>> = ctx
        .pods
        .list()
        .into_iter()
        .filter(|p| p["metadata"]["namespace"] == ns && is_active(p) && selector_matches(&pdb["spec"]["selector"], &p["metadata"]["labels"]))
        .collect();
    // The scale of the controllers behind the pods (for percentages and maxUnavailable).
    let mut owners: BTreeMap<String, i64> = BTreeMap::new();
    let mut all_owned = true;
    for p in &pods {
        match controller_of(p) {
            Some(o) if o["kind"] == "ReplicaSet" => {
                if let Some(r) = ctx.rs.get_by_uid(o["uid"].as_str().unwrap_or("")) {
                    owners.insert(r["metadata"]["uid"].as_str().unwrap_or("").to_string(), r["spec"]["replicas"].as_i64().unwrap_or(0));
                }
            }
            Some(o) if o["kind"] == "StatefulSet" => {
                if let Some(r) = ctx.statefulsets.get_by_uid(o["uid"].as_str().unwrap_or("")) {
                    owners.insert(r["metadata"]["uid"].as_str().unwrap_or("").to_string(), r["spec"]["replicas"].as_i64().unwrap_or(0));
                }
            }
            _ => all_owned = false,
        }
    }
    let scale = (all_owned && !owners.is_empty()).then(|| owners.values().sum());
    let (expected, desired) = budget(&pdb["spec"], pods.len(), scale);
    let healthy = pods.iter().filter(|p| podutil::is_ready(p)).count() as i64;
    // Evictions the API server granted whose pods are still here count as already spent.
    let now = now_unix();
    let mut disrupted = serde_json::Map::new();
    for (pod, at) in pdb["status"]["disruptedPods"].as_object().into_iter().flatten() {
        let live = pods.iter().any(|p| p["metadata"]["name"] == pod.as_str());
        let fresh = podutil::ts(at).is_some_and(|t| now - t < 120);
        disrupted.insert(pod.clone(), if live && fresh { at.clone() } else { Value::Null });
    }
    let pending = disrupted.values().filter(|v| !v.is_null()).count() as i64;
    let allowed = (healthy - desired - pending).max(0);
    let t = now_rfc3339();
    let ok = allowed > 0;
    let prev = pdb["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == "DisruptionAllowed")).cloned().unwrap_or(Value::Null);
    let transition = if prev["status"] == if ok { "True" } else { "False" } { prev["lastTransitionTime"].clone() } else { json!(t) };
    let status = json!({
        "observedGeneration": pdb["metadata"]["generation"],
        "expectedPods": expected, "currentHealthy": healthy, "desiredHealthy": desired, "disruptionsAllowed": allowed,
        "disruptedPods": disrupted,
        "conditions": [{"type": "DisruptionAllowed", "status": if ok { "True" } else { "False" }, "reason": if ok { "SufficientPods" } else { "InsufficientPods" },
            "message": "", "observedGeneration": pdb["metadata"]["generation"], "lastTransitionTime": transition}],
    });
    let cur = &pdb["status"];
    let same = ["observedGeneration", "expectedPods", "currentHealthy", "desiredHealthy", "disruptionsAllowed"].iter().all(|f| cur[*f] == status[*f])
        && disrupted.values().all(|v| !v.is_null())
        && cur["conditions"][0]["status"] == status["conditions"][0]["status"];
    if !same {
        match ctx.c(Ctl::Disruption).merge_patch_quiet(&format!("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}/status"), &json!({"status": status})).await {
            Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok((pending > 0).then(|| Duration::from_secs(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        assert_eq!(budget(&json!({"minAvailable": 2}), 3, None), (3, 2));
        assert_eq!(budget(&json!({"minAvailable": "50%"}), 3, Some(4)), (4, 2));
        assert_eq!(budget(&json!({"maxUnavailable": 1}), 3, Some(3)), (3, 2));
        assert_eq!(budget(&json!({"maxUnavailable": "25%"}), 4, None), (4, 3));
    }
}

// ---------------------------------------------------------------- HorizontalPodAutoscaler

use crate::autoscale::{self, Cron};
use api::meta::now_rfc3339;

fn quantity_milli(s: &str) -> i64 {
    api::Quantity::parse(s).map(|q| q.milli).unwrap_or(0)
}

async fn sync_hpa(ctx: &Ctx, key: &str) -> Res {
    let Some(hpa) = ctx.hpas.get(key) else {
        ctx.hpa_history.lock().unwrap().remove(key);
        return Ok(None);
    };
    let again = Some(ctx.settings.hpa_sync);
    let (ns, name) = split(key);
    let r = &hpa["spec"]["scaleTargetRef"];
    let (kind, tname) = (r["kind"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""));
    let target = match kind {
        "Deployment" => format!("/apis/apps/v1/namespaces/{ns}/deployments/{tname}"),
        "ReplicaSet" => format!("/apis/apps/v1/namespaces/{ns}/replicasets/{tname}"),
        "StatefulSet" => format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{tname}"),
        _ => return Ok(None),
    };
    let scale = match ctx.c(Ctl::HorizontalPodAutoscaler).get(&format!("{target}/scale")).await {
        Ok(s) => s,
        Err(ClientError::Status { code: 404, .. }) => return Ok(again),
        Err(e) => return Err(err(e)),
    };
    let current = scale["spec"]["replicas"].as_i64().unwrap_or(0);
    let min = hpa["spec"]["minReplicas"].as_i64().unwrap_or(1);
    let max = hpa["spec"]["maxReplicas"].as_i64().unwrap_or(1);
    if current == 0 {
        return Ok(again); // scaled to zero by hand: autoscaling is off
    }
    let sel = scale["status"]["selector"].as_str().unwrap_or("").to_string();
    let mut match_labels = serde_json::Map::new();
    for kv in sel.split(',').filter(|s| !s.is_empty()) {
        if let Some((k, v)) = kv.split_once('=') {
            match_labels.insert(k.to_string(), json!(v));
        }
    }
    let selector = json!({"matchLabels": match_labels});
    let pods: Vec<Arc<Value>> = ctx.pods.list().into_iter().filter(|p| p["metadata"]["namespace"] == ns && is_active(p) && selector_matches(&selector, &p["metadata"]["labels"])).collect();
    let ready = pods.iter().filter(|p| podutil::is_ready(p)).count() as i64;
    let enc = sel.replace('=', "%3D").replace(',', "%2C");
    let metrics = ctx.c(Ctl::HorizontalPodAutoscaler).get(&format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={enc}")).await.map_err(err)?;
    let usage_of = |pod: &str, res: &str| -> Option<i64> {
        let m = metrics["items"].as_array()?.iter().find(|m| m["metadata"]["name"] == pod)?;
        Some(m["containers"].as_array()?.iter().map(|c| quantity_milli(c["usage"][res].as_str().unwrap_or("0"))).sum())
    };
    let mut desired = min;
    let mut current_metrics = Vec::new();
    let mut reason = String::new();
    for m in hpa["spec"]["metrics"].as_array().into_iter().flatten() {
        if m["type"] != "Resource" {
            continue;
        }
        let res = m["resource"]["name"].as_str().unwrap_or("cpu");
        let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
        for p in &pods {
            let Some(u) = usage_of(p["metadata"]["name"].as_str().unwrap_or(""), res) else { continue };
            used += u;
            requested += p["spec"]["containers"].as_array().into_iter().flatten().map(|c| quantity_milli(c["resources"]["requests"][res].as_str().unwrap_or("0"))).sum::<i64>();
            n += 1;
        }
        if n == 0 {
            continue;
        }
        let t = &m["resource"]["target"];
        let (ratio, current_m) = match t["type"].as_str().unwrap_or("Utilization") {
            "AverageValue" => {
                let target = quantity_milli(t["averageValue"].as_str().unwrap_or("0")).max(1);
                let avg = used / n;
                (avg as f64 / target as f64, json!({"averageValue": api::Quantity::from_milli(avg).cpu_string()}))
            }
            _ => {
                if requested == 0 {
                    continue; // utilization needs requests
                }
                let util = used * 100 / requested;
                let target = t["averageUtilization"].as_i64().unwrap_or(80).max(1);
                (util as f64 / target as f64, json!({"averageUtilization": util, "averageValue": api::Quantity::from_milli(used / n).cpu_string()}))
            }
        };
        let d = autoscale::desired_replicas(ready.max(1), current, ratio, min, max);
        if d > desired || reason.is_empty() {
            reason = format!("{res} resource utilization (percentage of request) {} target", if ratio > 1.0 { "above" } else { "below" });
        }
        desired = desired.max(d);
        current_metrics.push(json!({"type": "Resource", "resource": {"name": res, "current": current_m}}));
    }
    let window = hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"].as_i64().unwrap_or(300);
    let now = now_unix();
    let decided = {
        let mut h = ctx.hpa_history.lock().unwrap();
        autoscale::stabilize(h.entry(key.to_string()).or_default(), now, window, desired, current)
    };
    let mut last_scale = hpa["status"]["lastScaleTime"].clone();
    if decided != current && !current_metrics.is_empty() {
        ctx.c(Ctl::HorizontalPodAutoscaler).merge_patch_quiet(&format!("{target}/scale"), &json!({"spec": {"replicas": decided}})).await.map_err(err)?;
        ctx.events.pod(&hpa, None, false, "SuccessfulRescale", format!("New size: {decided}; reason: {reason}"));
        last_scale = json!(now_rfc3339());
    }
    let t = now_rfc3339();
    let cond = |ty: &str, ok: bool, reason: &str, msg: &str| json!({"type": ty, "status": if ok { "True" } else { "False" }, "reason": reason, "message": msg, "lastTransitionTime": t});
    let status = json!({
        "currentReplicas": current, "desiredReplicas": decided, "currentMetrics": current_metrics, "lastScaleTime": last_scale,
        "observedGeneration": hpa["metadata"]["generation"],
        "conditions": [
            cond("AbleToScale", true, "SucceededRescale", "the HPA controller was able to update the target scale"),
            cond("ScalingActive", !pods.is_empty(), if pods.is_empty() { "FailedGetResourceMetric" } else { "ValidMetricFound" }, "the HPA was able to successfully calculate a replica count"),
            cond("ScalingLimited", desired >= max || desired <= min, if desired >= max { "TooManyReplicas" } else { "DesiredWithinRange" }, "the desired count is within the acceptable range"),
        ],
    });
    let cur = &hpa["status"];
    if ["currentReplicas", "desiredReplicas", "currentMetrics", "lastScaleTime"].iter().any(|f| cur[*f] != status[*f]) {
        match ctx.c(Ctl::HorizontalPodAutoscaler).merge_patch_quiet(&format!("/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}/status"), &json!({"status": status})).await {
            Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(again)
}

// ---------------------------------------------------------------- CronJob

fn job_finished(j: &Value) -> Option<bool> {
    j["status"]["conditions"].as_array()?.iter().find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True").map(|c| c["type"] == "Complete")
}

async fn sync_cronjob(ctx: &Ctx, key: &str) -> Res {
    let Some(cj) = ctx.cronjobs.get(key) else { return Ok(None) };
    if cj["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    let (ns, name) = split(key);
    let now = now_unix();
    let next_minute = Some(Duration::from_secs((60 - now.rem_euclid(60)).max(1) as u64));
    let cron = match Cron::parse(cj["spec"]["schedule"].as_str().unwrap_or("")) {
        Ok(c) => c,
        Err(e) => {
            ctx.events.pod(&cj, None, true, "UnparseableSchedule", format!("unparseable schedule: {e}"));
            return Ok(None);
        }
    };
    let uid = cj["metadata"]["uid"].as_str().unwrap_or("");
    let mut jobs: Vec<Arc<Value>> = ctx.jobs.owned_by(uid).into_iter().filter(|j| j["metadata"].get("deletionTimestamp").is_none()).collect();
    jobs.sort_by_key(|j| podutil::ts(&j["metadata"]["creationTimestamp"]).unwrap_or(0));
    let active: Vec<&Arc<Value>> = jobs.iter().filter(|j| job_finished(j).is_none()).collect();
    let mut status = json!({
        "active": active.iter().map(|j| json!({"kind": "Job", "apiVersion": "batch/v1", "namespace": ns, "name": j["metadata"]["name"], "uid": j["metadata"]["uid"]})).collect::<Vec<_>>(),
        "lastScheduleTime": cj["status"]["lastScheduleTime"],
    });
    if let Some(t) = jobs.iter().filter(|j| job_finished(j) == Some(true)).filter_map(|j| j["status"]["completionTime"].as_str()).max() {
        status["lastSuccessfulTime"] = json!(t);
    }
    let last = podutil::ts(&cj["status"]["lastScheduleTime"]).or_else(|| podutil::ts(&cj["metadata"]["creationTimestamp"])).unwrap_or(now);
    if cj["spec"]["suspend"].as_bool() != Some(true)
        && let Some(t) = cron.last_between(last, now)
    {
        let late = cj["spec"]["startingDeadlineSeconds"].as_i64().is_some_and(|d| now - t > d);
        let policy = cj["spec"]["concurrencyPolicy"].as_str().unwrap_or("Allow");
        if !late && !(policy == "Forbid" && !active.is_empty()) {
            if policy == "Replace" {
                for j in &active {
                    let _ = ctx.c(Ctl::CronJob).delete(&format!("/apis/batch/v1/namespaces/{ns}/jobs/{}", j["metadata"]["name"].as_str().unwrap_or("")), &json!({"propagationPolicy": "Background"})).await;
                }
            }
            let jt = &cj["spec"]["jobTemplate"];
            let mut meta = if jt["metadata"].is_object() { jt["metadata"].clone() } else { json!({}) };
            let jname = format!("{name}-{}", t / 60);
            meta["name"] = json!(jname);
            meta["namespace"] = json!(ns);
            meta["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(jiff::Timestamp::from_second(t).map(|x| x.to_string()).unwrap_or_default());
            meta["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "CronJob", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
            let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": jt["spec"]});
            match ctx.c(Ctl::CronJob).post(&format!("/apis/batch/v1/namespaces/{ns}/jobs"), &job).await {
                Ok(_) => ctx.events.pod(&cj, None, false, "SuccessfulCreate", format!("Created job {jname}")),
                Err(ClientError::Status { code: 409, .. }) => {}
                Err(e) => return Err(err(e)),
            }
        }
        status["lastScheduleTime"] = json!(jiff::Timestamp::from_second(t).map(|x| x.to_string()).unwrap_or_default());
    }
    // History limits.
    for (ok, limit) in [(true, cj["spec"]["successfulJobsHistoryLimit"].as_i64().unwrap_or(3)), (false, cj["spec"]["failedJobsHistoryLimit"].as_i64().unwrap_or(1))] {
        let done: Vec<&Arc<Value>> = jobs.iter().filter(|j| job_finished(j) == Some(ok)).collect();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in &done[..extra] {
            let _ = ctx.c(Ctl::CronJob).delete(&format!("/apis/batch/v1/namespaces/{ns}/jobs/{}", j["metadata"]["name"].as_str().unwrap_or("")), &json!({"propagationPolicy": "Background"})).await;
        }
    }
    if cj["status"]["lastScheduleTime"] != status["lastScheduleTime"] || cj["status"]["active"] != status["active"] || cj["status"]["lastSuccessfulTime"] != status["lastSuccessfulTime"] {
        match ctx.c(Ctl::CronJob).merge_patch_quiet(&format!("/apis/batch/v1/namespaces/{ns}/cronjobs/{name}/status"), &json!({"status": status})).await {
            Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(next_minute)
}

// ---------------------------------------------------------------- ResourceQuota

/// Recomputes a quota's `status.used` from what exists (the API server's admission reserves
/// usage ahead; this corrects it, e.g. for creates that failed after their reservation).
///
/// Admission charges the quota before it writes the object, so the informers can lag a
/// reservation that is about to become an object: a recount then comes out low, and writing it
/// would let admission over-commit. A recount that lowers any figure is therefore written only
/// when a recount at least a second later agrees (a reservation lives for the milliseconds of
/// one create; one that outlives that was a create that failed), and every write is
/// conditional on the quota's resourceVersion (a charge made meanwhile makes it fail with 409,
/// and the charge's own event brings a new sync).
async fn sync_quota(ctx: &Ctx, key: &str) -> Res {
    const QUOTA_CONFIRM: Duration = Duration::from_secs(1);
    let Some(rq) = ctx.quotas.get(key) else {
        ctx.quota_lowering.lock().unwrap().remove(key);
        return Ok(None);
    };
    let (ns, name) = split(key);
    let hard = rq["spec"]["hard"].as_object().cloned().unwrap_or_default();
    let pods: Vec<Arc<Value>> = ctx.pods.list().into_iter().filter(|p| p["metadata"]["namespace"] == ns && {
        let ph = p["status"]["phase"].as_str().unwrap_or("");
        ph != "Succeeded" && ph != "Failed"
    }).collect();
    let sum = |section: &str, res: &str| -> i64 {
        pods.iter()
            .flat_map(|p| p["spec"]["containers"].as_array().cloned().unwrap_or_default())
            .map(|c| c["resources"][section][res].as_str().and_then(|s| api::Quantity::parse(s).ok()).map_or(0, |q| q.milli))
            .sum()
    };
    let mut used = serde_json::Map::new();
    for k in hard.keys() {
        let count_path = |res: &str, group: &str| -> Option<String> {
            match group {
                "" => Some(format!("/api/v1/namespaces/{ns}/{res}")),
                "apps" | "batch" | "policy" | "autoscaling" => Some(format!("/apis/{group}/{}/namespaces/{ns}/{res}", if group == "autoscaling" { "v2" } else { "v1" })),
                _ => None,
            }
        };
        let m: i64 = match k.as_str() {
            "pods" | "count/pods" => pods.len() as i64 * 1000,
            "cpu" | "requests.cpu" => sum("requests", "cpu"),
            "memory" | "requests.memory" => sum("requests", "memory"),
            "ephemeral-storage" | "requests.ephemeral-storage" => sum("requests", "ephemeral-storage"),
            "limits.cpu" => sum("limits", "cpu"),
            "limits.memory" => sum("limits", "memory"),
            other => {
                let res = other.strip_prefix("count/").unwrap_or(other);
                let (res, group) = res.split_once('.').unwrap_or((res, ""));
                let Some(path) = count_path(res, group) else { continue };
                match ctx.c(Ctl::ResourceQuota).get(&path).await {
                    Ok(l) => l["items"].as_array().map_or(0, |a| a.len()) as i64 * 1000,
                    Err(_) => continue,
                }
            }
        };
        let q = api::Quantity::from_milli(m);
        used.insert(k.clone(), json!(if k.contains("memory") || k.contains("storage") { q.memory_string() } else { q.cpu_string() }));
    }
    let lowers = used.iter().any(|(k, v)| {
        let milli = |x: &Value| x.as_str().and_then(|s| api::Quantity::parse(s).ok()).map(|q| q.milli);
        matches!((milli(v), milli(&rq["status"]["used"][k])), (Some(new), Some(old)) if new < old)
    });
    let status = json!({"hard": hard, "used": used});
    if lowers {
        let mut pending = ctx.quota_lowering.lock().unwrap();
        match pending.get(key) {
            Some((s, since)) if *s == status && since.elapsed() >= QUOTA_CONFIRM => {}
            Some((s, since)) if *s == status => return Ok(Some(QUOTA_CONFIRM.saturating_sub(since.elapsed()))),
            _ => {
                pending.insert(key.to_string(), (status, Instant::now()));
                return Ok(Some(QUOTA_CONFIRM));
            }
        }
    }
    ctx.quota_lowering.lock().unwrap().remove(key);
    if rq["status"] != status {
        let rv = rq["metadata"]["resourceVersion"].clone();
        let body = json!({"metadata": {"resourceVersion": rv}, "status": status});
        match ctx.c(Ctl::ResourceQuota).merge_patch_quiet(&format!("/api/v1/namespaces/{ns}/resourcequotas/{name}/status"), &body).await {
            Ok(()) | Err(ClientError::Status { code: 404 | 409, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(Some(Duration::from_secs(30)))
}
