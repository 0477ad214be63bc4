//! Garbage collection, ServiceAccounts, Endpoints and EndpointSlices, node lifecycle,
//! Namespace deletion and ResourceQuota usage: the controllers that keep objects' lives
//! consistent.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------- garbage collection

impl Ctx {
    pub(super) fn owner_informers(&self) -> [(&'static str, &Arc<Informer>); 7] {
        [("ReplicaSet", &self.rs), ("ReplicationController", &self.rcs), ("Deployment", &self.deploy), ("Job", &self.jobs), ("DaemonSet", &self.daemonsets), ("StatefulSet", &self.statefulsets), ("CronJob", &self.cronjobs)]
    }

    pub(super) fn dependent_informers(&self) -> [(&'static str, &Arc<Informer>); 4] {
        [("Pod", &self.pods), ("ReplicaSet", &self.rs), ("Job", &self.jobs), ("PersistentVolumeClaim", &self.pvcs)]
    }
}

pub(super) fn informer_for<'a>(ctx: &'a Ctx, kind: &str) -> Option<&'a Arc<Informer>> {
    match kind {
        "Pod" => Some(&ctx.pods),
        "ReplicaSet" => Some(&ctx.rs),
        "ReplicationController" => Some(&ctx.rcs),
        "Deployment" => Some(&ctx.deploy),
        "Job" => Some(&ctx.jobs),
        "DaemonSet" => Some(&ctx.daemonsets),
        "StatefulSet" => Some(&ctx.statefulsets),
        "CronJob" => Some(&ctx.cronjobs),
        "PersistentVolumeClaim" => Some(&ctx.pvcs),
        _ => None,
    }
}

pub(super) fn api_path(kind: &str, ns: &str, name: &str) -> String {
    match kind {
        "Pod" => format!("/api/v1/namespaces/{ns}/pods/{name}"),
        "Job" => format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}"),
        "ReplicaSet" => format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}"),
        "ReplicationController" => format!("/api/v1/namespaces/{ns}/replicationcontrollers/{name}"),
        "DaemonSet" => format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}"),
        "StatefulSet" => format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{name}"),
        "CronJob" => format!("/apis/batch/v1/namespaces/{ns}/cronjobs/{name}"),
        "PersistentVolumeClaim" => format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}"),
        _ => format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
    }
}

pub(super) async fn sync_gc(ctx: &Ctx, key: &str) -> Res {
    let mut parts = key.splitn(3, '|');
    let (what, kind, okey) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(inf) = informer_for(ctx, kind) else { return Ok(None) };
    let Some(obj) = inf.get(okey) else { return Ok(None) };
    let (ns, name) = split(okey);
    // Owners of kinds this collector does not watch are assumed to exist.
    for i in [&ctx.pods, &ctx.rs, &ctx.rcs, &ctx.deploy, &ctx.jobs, &ctx.daemonsets, &ctx.statefulsets, &ctx.cronjobs] {
        if !i.has_synced() {
            return Ok(Some(Duration::from_secs(1)));
        }
    }
    if what == "dep" {
        let refs = obj["metadata"]["ownerReferences"].as_array().unwrap_or_default();
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
    let deps: Vec<(&str, Arc<Obj>)> = ctx.dependent_informers().iter().flat_map(|(k, i)| i.owned_by(&uid).into_iter().map(move |d| (*k, d))).collect();
    let mut remaining = finalizers.clone();
    if finalizers.iter().any(|f| f == "orphan") {
        for (k, dv) in &deps {
            let refs: Vec<Obj> = dv["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter(|r| r["uid"] != uid.as_str()).cloned().collect();
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
        let live: Vec<&(&str, Arc<Obj>)> = deps.iter().collect();
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

pub(super) async fn sync_serviceaccount(ctx: &Ctx, ns: &str) -> Res {
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

// ---------------------------------------------------------------- root CA publisher

/// The `kube-root-ca.crt` ConfigMap in namespace `ns`: the cluster CA, which pods' projected
/// ServiceAccount volumes carry as `ca.crt` (Kubernetes' root-ca-cert-publisher).
pub(super) async fn sync_root_ca(ctx: &Ctx, ns: &str) -> Res {
    let Some(ca) = ctx.settings.credentials.as_ref().map(|c| c.ca_pem.clone()) else { return Ok(None) };
    let Some(n) = ctx.namespaces.get(ns) else { return Ok(None) };
    if n["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    let c = ctx.c(Ctl::RootCaCertPublisher);
    let path = format!("/api/v1/namespaces/{ns}/configmaps/kube-root-ca.crt");
    match c.get(&path).await {
        Ok(cm) if cm["data"]["ca.crt"].as_str() == Some(ca.as_str()) => Ok(None),
        Ok(_) => c.merge_patch_quiet(&path, &json!({"data": {"ca.crt": ca}})).await.map(|_| None).map_err(err),
        Err(ClientError::Status { code: 404, .. }) => {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": ns, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}}, "data": {"ca.crt": ca}});
            match c.post(&format!("/api/v1/namespaces/{ns}/configmaps"), &cm).await {
                Ok(_) | Err(ClientError::Status { code: 409, .. }) => Ok(None),
                // A namespace being deleted, or just gone.
                Err(ClientError::Status { code: 403 | 404, .. }) => Ok(None),
                Err(e) => Err(err(e)),
            }
        }
        Err(e) => Err(err(e)),
    }
}

// ---------------------------------------------------------------- Endpoints

pub(super) fn target_port(port: &Obj, pod: &Obj) -> Option<i64> {
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

pub(super) async fn sync_endpoints(ctx: &Ctx, key: &str) -> Res {
    let (ns, name) = split(key);
    let Some(svc) = ctx.services.get(key) else { return Ok(None) };
    let Some(sel) = svc["spec"]["selector"].as_object().filter(|m| !m.is_empty()) else { return Ok(None) };
    let selector = json!({"matchLabels": sel});
    let mut pods: Vec<Arc<Obj>> = ctx
        .pods
        .list()
        .into_iter()
        .filter(|p| p["metadata"]["namespace"] == ns && selector_matches(&selector, &p["metadata"]["labels"]) && p["status"]["podIP"].as_str().is_some_and(|i| !i.is_empty()))
        .collect();
    pods.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    let ports: Vec<&Obj> = svc["spec"]["ports"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let addr = |p: &Obj| json!({"ip": p["status"]["podIP"], "nodeName": p["spec"]["nodeName"], "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]}});
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
    let cur_subsets = cur.as_ref().map(|e| if e["subsets"].is_null() { json!([]) } else { e["subsets"].to_value() });
    if cur_subsets.as_ref() != Some(&subsets) {
        let r = match cur {
            None => ctx.c(Ctl::Endpoint).post(&format!("/api/v1/namespaces/{ns}/endpoints"), &ep).await.map(|_| ()),
            Some(_) => ctx.c(Ctl::Endpoint).merge_patch_quiet(&format!("/api/v1/namespaces/{ns}/endpoints/{name}"), &json!({"subsets": subsets})).await,
        };
        r.map_err(err)?;
    }
    // One EndpointSlice per service, named after it.
    // `publishNotReadyAddresses`: every endpoint counts as ready (for DNS, as in Kubernetes).
    let publish_all = svc["spec"]["publishNotReadyAddresses"] == true;
    let slice_eps: Vec<Value> = pods
        .iter()
        .map(|p| {
            let ready = publish_all || (podutil::is_ready(p) && is_active(p));
            let mut e = json!({"addresses": [p["status"]["podIP"]], "conditions": {"ready": ready, "serving": podutil::is_ready(p), "terminating": p["metadata"].get("deletionTimestamp").is_some()},
                "nodeName": p["spec"]["nodeName"], "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]}});
            // A pod whose subdomain is this Service is named by its hostname under it
            // (`web-0.web.ns.svc.cluster.local`: StatefulSets).
            if let Some(h) = p["spec"]["hostname"].as_str().filter(|h| !h.is_empty())
                && p["spec"]["subdomain"] == name
            {
                e["hostname"] = json!(h);
            }
            e
        })
        .collect();
    let slice_ports: Vec<Value> = eports.iter().map(|p| json!({"name": p["name"], "port": p["port"], "protocol": p["protocol"]})).collect();
    let sname = format!("{name}-capstan");
    let skey = format!("{ns}/{sname}");
    let cur = ctx.slices.get(&skey);
    if !cur.as_ref().is_some_and(|s| s["endpoints"] == json!(slice_eps) && s["ports"] == json!(slice_ports)) {
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

pub(super) const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

pub(super) fn micro_ts(v: &Obj) -> Option<f64> {
    v.as_str()?.parse::<jiff::Timestamp>().ok().map(|t| t.as_nanosecond() as f64 / 1e9)
}

/// Every 5 s: nodes whose lease is older than the grace period become `Ready=Unknown` and
/// get the unreachable taints; their pods are evicted once their toleration runs out; nodes
/// whose lease is fresh again lose the taints (the kubelet reports Ready again).
pub(super) async fn node_lifecycle(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5).min(ctx.settings.node_monitor_grace / 4).max(Duration::from_millis(200)));
    // A node that never had a lease or a heartbeat counts from when it was first seen.
    let mut first_seen: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    // Every node is looked at every tick (5,000 a tick at the density run's size): nothing
    // is allocated for a node unless it is seen for the first time or something is written.
    let mut lease_key = String::new();
    loop {
        tick.tick().await;
        if !ctx.nodes.has_synced() || !ctx.leases.has_synced() {
            continue;
        }
        let now = jiff::Timestamp::now().as_nanosecond() as f64 / 1e9;
        for n in ctx.nodes.list() {
            let name = n["metadata"]["name"].as_str().unwrap_or("");
            lease_key.clear();
            lease_key.push_str("kube-node-lease/");
            lease_key.push_str(name);
            let renewed = ctx.leases.get(&lease_key).and_then(|l| micro_ts(&l["spec"]["renewTime"]));
            let ready: &Obj = n["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == "Ready")).unwrap_or(&Obj::Null);
            let seen = match first_seen.get(name) {
                Some(t) => *t,
                None => *first_seen.entry(name.to_string()).or_insert(now),
            };
            let heartbeat = renewed.or_else(|| micro_ts(&ready["lastHeartbeatTime"])).unwrap_or(seen);
            let stale = now - heartbeat > ctx.settings.node_monitor_grace.as_secs_f64();
            let taints: &[Obj] = n["spec"]["taints"].as_array().unwrap_or_default();
            let tainted = taints.iter().any(|t| t["key"] == UNREACHABLE);
            if stale {
                if ready["status"] != "Unknown" {
                    let t = now_rfc3339();
                    let conds: Vec<Value> = n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let mut c = c.to_value();
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
                    let mut t: Vec<Value> = taints.iter().map(Obj::to_value).collect();
                    let added = now_rfc3339();
                    t.push(json!({"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": added}));
                    t.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": added}));
                    let _ = ctx.c(Ctl::Node).merge_patch_quiet(&format!("/api/v1/nodes/{name}"), &json!({"spec": {"taints": t}})).await;
                }
            } else if tainted {
                let t: Vec<&Obj> = taints.iter().filter(|t| t["key"] != UNREACHABLE).collect();
                let _ = ctx.c(Ctl::Node).merge_patch_quiet(&format!("/api/v1/nodes/{name}"), &json!({"spec": {"taints": if t.is_empty() { Value::Null } else { json!(t) }}})).await;
            }
            // Eviction of pods on a node with the NoExecute taint, after their toleration.
            let Some(added) = n["spec"]["taints"].as_array().and_then(|a| a.iter().find(|t| t["key"] == UNREACHABLE && t["effect"] == "NoExecute")).and_then(|t| micro_ts(&t["timeAdded"])) else {
                continue;
            };
            for p in ctx.pods.list().into_iter().filter(|p| p["spec"]["nodeName"] == name && p["metadata"].get("deletionTimestamp").is_none()) {
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


// ---------------------------------------------------------------- Namespace

/// Collection paths (without the namespace part filled in) of every namespaced resource the
/// server serves that can be deleted as a collection, from discovery.
pub(super) async fn namespaced_collections(c: &Client) -> Result<Vec<(String, String)>, String> {
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

pub(super) async fn sync_namespace(ctx: &Ctx, ns: &str) -> Res {
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

// ---------------------------------------------------------------- ResourceQuota

/// How long a recount that lowers a quota's usage waits for a later one to agree.
pub const QUOTA_CONFIRM: Duration = Duration::from_secs(1);

/// Whether a recount's `used` lowers any figure of the quota's current `status.used`.
pub fn quota_lowers(used: &serde_json::Map<String, Value>, current: &Obj) -> bool {
    let milli = |x: Option<&str>| x.and_then(|s| api::Quantity::parse(s).ok()).map(|q| q.milli);
    used.iter().any(|(k, v)| matches!((milli(v.as_str()), milli(current[k].as_str())), (Some(new), Some(old)) if new < old))
}

/// What to do with a recount `status` that lowers a quota's usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoweringGate {
    /// A recount `QUOTA_CONFIRM` ago or more came out the same: write it.
    Write,
    /// The same recount is pending, not yet confirmed: look again after this long.
    Wait(Duration),
    /// A new lowering: remember it (with the time) and look again after `QUOTA_CONFIRM`.
    Start,
}

/// `pending` is the lowering remembered for this quota and how long ago it was computed.
pub fn lowering_gate(pending: Option<(&Value, Duration)>, status: &Value) -> LoweringGate {
    match pending {
        Some((s, age)) if s == status && age >= QUOTA_CONFIRM => LoweringGate::Write,
        Some((s, age)) if s == status => LoweringGate::Wait(QUOTA_CONFIRM.saturating_sub(age)),
        _ => LoweringGate::Start,
    }
}

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
pub(super) async fn sync_quota(ctx: &Ctx, key: &str) -> Res {
    let Some(rq) = ctx.quotas.get(key) else {
        ctx.quota_lowering.lock().unwrap().remove(key);
        return Ok(None);
    };
    let (ns, name) = split(key);
    let hard = rq["spec"]["hard"].as_object().cloned().unwrap_or_default();
    let scoped = api::quota_scope::scoped(&*rq);
    let pods: Vec<Arc<Obj>> = ctx.pods.list().into_iter().filter(|p| p["metadata"]["namespace"] == ns && {
        let ph = p["status"]["phase"].as_str().unwrap_or("");
        ph != "Succeeded" && ph != "Failed"
    } && api::quota_scope::tracks(&*rq, true, &**p)).collect();
    let sum = |section: &str, res: &str| -> i64 {
        pods.iter()
            .flat_map(|p| p["spec"]["containers"].as_array().unwrap_or_default())
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
        let m: i64 = match k {
            "pods" | "count/pods" => pods.len() as i64 * 1000,
            "cpu" | "requests.cpu" => sum("requests", "cpu"),
            "memory" | "requests.memory" => sum("requests", "memory"),
            "ephemeral-storage" | "requests.ephemeral-storage" => sum("requests", "ephemeral-storage"),
            "limits.cpu" => sum("limits", "cpu"),
            "limits.memory" => sum("limits", "memory"),
            // A quota with scopes tracks pods only.
            _ if scoped => 0,
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
        used.insert(k.to_string(), json!(if k.contains("memory") || k.contains("storage") { q.memory_string() } else { q.cpu_string() }));
    }
    let lowers = quota_lowers(&used, &rq["status"]["used"]);
    let status = json!({"hard": hard, "used": used});
    if lowers {
        let mut pending = ctx.quota_lowering.lock().unwrap();
        match lowering_gate(pending.get(key).map(|(s, since)| (s, since.elapsed())), &status) {
            LoweringGate::Write => {}
            LoweringGate::Wait(d) => return Ok(Some(d)),
            LoweringGate::Start => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowering_recount_is_written_only_when_a_later_one_agrees() {
        let low = json!({"used": {"pods": "2"}});
        let other = json!({"used": {"pods": "1"}});
        assert_eq!(lowering_gate(None, &low), LoweringGate::Start);
        assert_eq!(lowering_gate(Some((&low, Duration::from_millis(400))), &low), LoweringGate::Wait(Duration::from_millis(600)));
        assert_eq!(lowering_gate(Some((&low, QUOTA_CONFIRM)), &low), LoweringGate::Write);
        // A different recount starts over, however old the pending one.
        assert_eq!(lowering_gate(Some((&other, Duration::from_secs(5))), &low), LoweringGate::Start);
        let used = |n: &str| json!({"pods": n}).as_object().cloned().unwrap();
        assert!(quota_lowers(&used("2"), &Obj::from(json!({"pods": "3"}))));
        assert!(!quota_lowers(&used("3"), &Obj::from(json!({"pods": "3"}))));
        assert!(!quota_lowers(&used("4"), &Obj::from(json!({"pods": "3"}))));
    }
}
