//! The Job, CronJob, DaemonSet and StatefulSet controllers' reconcile functions.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------- Job, DaemonSet, StatefulSet

use crate::workloads::{self, JobStep, SetStep};

pub(super) fn owned_pods(ctx: &Ctx, uid: &str) -> Vec<Arc<Obj>> {
    ctx.pods.owned_by(uid).into_iter().filter(|p| controller_of(p).is_some_and(|o| o["uid"] == uid)).collect()
}

/// The pods `owner` controls, after adopting the orphans its selector matches and releasing
/// those it no longer does (`adopt.rs`). `kind` is (apiVersion, kind); `owner_path` its path.
pub(super) async fn claimed_pods(ctx: &Ctx, ctl: Ctl, owner: &Obj, kind: (&str, &str), owner_path: &str) -> Result<Vec<Arc<Obj>>, String> {
    let ns = owner["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    let owned = owned_pods(ctx, owner["metadata"]["uid"].as_str().unwrap_or(""));
    let orphans = ctx.pods.orphans_in(&ns);
    let path = |p: &Obj| format!("/api/v1/namespaces/{ns}/pods/{}", p["metadata"]["name"].as_str().unwrap_or(""));
    super::adopt::claim(ctx.c(ctl), owner, owner_path, kind, &owner["spec"]["selector"], owned, orphans, path).await
}

pub(super) fn pod_for(owner: &Obj, api_version: &str, kind: &str, name: Option<String>) -> Value {
    let t = &owner["spec"]["template"];
    let mut meta = if t["metadata"].is_object() { t["metadata"].to_value() } else { json!({}) };
    let oname = owner["metadata"]["name"].as_str().unwrap_or("");
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(format!("{oname}-")),
    }
    meta["namespace"] = owner["metadata"]["namespace"].to_value();
    meta["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind, "name": oname, "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("creationTimestamp");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"].to_value()})
}

pub(super) async fn create_pods(ctx: &Ctx, ctl: Ctl, ns: &str, pods: Vec<Value>) -> Result<(), String> {
    let path = format!("/api/v1/namespaces/{ns}/pods");
    for r in futures_util::future::join_all(pods.iter().map(|p| ctx.c(ctl).post_quiet(&path, p))).await {
        match r {
            Ok(()) | Err(ClientError::Status { code: 409, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

pub(super) async fn patch_status(ctx: &Ctx, ctl: Ctl, path: String, cur: &Obj, status: Value) -> Result<(), String> {
    let changed = status.as_object().into_iter().flatten().any(|(k, v)| cur[k] != *v);
    if !changed {
        return Ok(());
    }
    match ctx.c(ctl).merge_patch_quiet(&path, &json!({"status": status})).await {
        Ok(()) | Err(ClientError::Status { code: 404, .. }) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

pub(super) async fn sync_job(ctx: &Ctx, key: &str) -> Res {
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
    let pods = claimed_pods(ctx, Ctl::Job, &job, ("batch/v1", "Job"), &path).await?;
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

pub(super) async fn sync_daemonset(ctx: &Ctx, key: &str) -> Res {
    let Some(ds) = ctx.daemonsets.get(key) else { return Ok(None) };
    if ds["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    let (ns, name) = split(key);
    let hash = dep::template_hash(&ds["spec"]["template"]);
    let ds_path = format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}");
    let pods: Vec<Arc<Obj>> = claimed_pods(ctx, Ctl::DaemonSet, &ds, ("apps/v1", "DaemonSet"), &ds_path).await?.into_iter().filter(|p| is_active(p)).collect();
    let node_of = |p: &Obj| -> String {
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
            .as_str()
            .or(p["spec"]["nodeName"].as_str())
            .unwrap_or("")
            .to_string()
    };
    let nodes = ctx.nodes.list();
    let eligible: Vec<String> = nodes.iter().filter(|n| workloads::daemon_fits(&ds["spec"]["template"], n)).filter_map(|n| n["metadata"]["name"].as_str().map(String::from)).collect();
    // The set's pods by node, once (every step below reads them per node).
    let mut by_node: std::collections::HashMap<String, Vec<&Arc<Obj>>> = std::collections::HashMap::new();
    for p in &pods {
        by_node.entry(node_of(p)).or_default().push(p);
    }
    let on = |n: &str| by_node.get(n).map_or(&[][..], Vec::as_slice);
    let eligible_set: std::collections::HashSet<&str> = eligible.iter().map(String::as_str).collect();
    // RollingUpdate (kube-controller-manager's rules, `workloads::daemon_rollout`).
    let rolling = ds["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
    let ru = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    let desired = eligible.len() as i64;
    let max_surge = dep::resolve(&ru["maxSurge"], desired, true, "0");
    let max_unavailable = dep::resolve(&ru["maxUnavailable"], desired, true, "1");
    let current = |p: &Obj| p["metadata"]["labels"]["controller-revision-hash"] == hash.as_str();
    let (surge_on, roll_delete) = if rolling {
        let per_node: Vec<workloads::DaemonNode> = eligible
            .iter()
            .map(|n| {
                let of = |new: bool| on(n).iter().filter(|p| current(p) == new).map(|p| (p["metadata"]["name"].as_str().unwrap_or(""), podutil::is_ready(p))).collect();
                workloads::DaemonNode { node: n, old: of(false), new: of(true) }
            })
            .collect();
        workloads::daemon_rollout(&per_node, max_surge, max_unavailable)
    } else {
        (Vec::new(), Vec::new())
    };
    let mut create = Vec::new();
    for n in &eligible {
        if on(n).is_empty() || surge_on.contains(n) {
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
    // Pods on nodes that no longer fit, and the old pods the rollout lets go.
    let mut delete: Vec<&Arc<Obj>> = pods.iter().filter(|p| !eligible_set.contains(node_of(p).as_str())).collect();
    delete.extend(pods.iter().filter(|p| roll_delete.iter().any(|d| p["metadata"]["name"].as_str() == Some(d.as_str()))));
    for p in delete {
        let _ = ctx.c(Ctl::DaemonSet).delete(&format!("/api/v1/namespaces/{ns}/pods/{}", p["metadata"]["name"].as_str().unwrap_or("")), &json!({})).await;
    }
    // Counted per node (a node surging holds two pods), as Kubernetes counts them.
    let nodes_where = |f: &dyn Fn(&Obj) -> bool| eligible.iter().filter(|n| on(n).iter().any(|p| f(p))).count();
    let scheduled = nodes_where(&|_| true);
    let ready = nodes_where(&|p| podutil::is_ready(p));
    let misscheduled = by_node.keys().filter(|n| !eligible_set.contains(n.as_str())).count();
    let status = json!({
        "desiredNumberScheduled": eligible.len(),
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": ready,
        "numberUnavailable": eligible.len().saturating_sub(ready),
        "updatedNumberScheduled": nodes_where(&|p| current(p)),
        "observedGeneration": ds["metadata"]["generation"],
    });
    patch_status(ctx, Ctl::DaemonSet, format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}/status"), &ds["status"], status).await?;
    Ok(None)
}

/// (volume, claim name) of each of the set's volumeClaimTemplates for ordinal `o`
/// (`<template>-<set>-<o>`, Kubernetes' names).
fn claims_of(sts: &Obj, o: i64) -> Vec<(String, String)> {
    let set = sts["metadata"]["name"].as_str().unwrap_or("");
    sts["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten().filter_map(|t| t["metadata"]["name"].as_str()).map(|t| (t.to_string(), format!("{t}-{set}-{o}"))).collect()
}

/// Creates ordinal `o`'s claims that do not exist: the template's spec, the set's selector
/// labels, and under `whenDeleted: Delete` the set as owner (the collector takes them with it).
async fn ensure_claims(ctx: &Ctx, sts: &Obj, o: i64) -> Result<(), String> {
    let ns = sts["metadata"]["namespace"].as_str().unwrap_or("");
    let owned = sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete";
    for t in sts["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
        let Some(tname) = t["metadata"]["name"].as_str() else { continue };
        let claim = format!("{tname}-{}-{o}", sts["metadata"]["name"].as_str().unwrap_or(""));
        if ctx.pvcs.get(&format!("{ns}/{claim}")).is_some() {
            continue;
        }
        let mut labels: serde_json::Map<String, Value> = t["metadata"]["labels"].as_object().into_iter().flatten().map(|(k, v)| (k.to_string(), v.to_value())).collect();
        for (k, v) in sts["spec"]["selector"]["matchLabels"].as_object().into_iter().flatten() {
            labels.insert(k.to_string(), v.to_value());
        }
        let mut pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns, "labels": labels, "annotations": t["metadata"]["annotations"]},
            "spec": t["spec"]});
        if pvc["metadata"]["annotations"].is_null() {
            pvc["metadata"].as_object_mut().map(|m| m.remove("annotations"));
        }
        if owned {
            pvc["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"], "uid": sts["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]);
        }
        match ctx.c(Ctl::StatefulSet).post(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"), &pvc).await {
            Ok(_) | Err(ClientError::Status { code: 409, .. }) => {}
            Err(e) => {
                ctx.events.object(("apps/v1", "StatefulSet"), sts, true, "FailedCreate", format!("create Claim {claim} for Pod {}-{o} in StatefulSet {} failed error: {e}", sts["metadata"]["name"].as_str().unwrap_or(""), sts["metadata"]["name"].as_str().unwrap_or("")));
                return Err(e.to_string());
            }
        }
    }
    Ok(())
}

pub(super) async fn sync_statefulset(ctx: &Ctx, key: &str) -> Res {
    let Some(sts) = ctx.statefulsets.get(key) else { return Ok(None) };
    if sts["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    let (ns, name) = split(key);
    let hash = dep::template_hash(&sts["spec"]["template"]);
    let rev = format!("{name}-{hash}");
    let all = claimed_pods(ctx, Ctl::StatefulSet, &sts, ("apps/v1", "StatefulSet"), &format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{name}")).await?;
    let pods: Vec<Arc<Obj>> = all.iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).cloned().collect();
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
                    // Each volumeClaimTemplate is the pod's volume of that name, on its own claim.
                    for (vol, claim) in claims_of(&sts, o) {
                        let v = json!({"name": vol, "persistentVolumeClaim": {"claimName": claim}});
                        let vols = p["spec"]["volumes"].as_array_mut();
                        match vols {
                            Some(vs) => {
                                vs.retain(|x| x["name"] != vol.as_str());
                                vs.push(v);
                            }
                            None => p["spec"]["volumes"] = json!([v]),
                        }
                    }
                    p
                };
                for &o in &ords {
                    ensure_claims(ctx, &sts, o).await?;
                }
                create_pods(ctx, Ctl::StatefulSet, ns, ords.into_iter().map(mk).collect()).await?;
            }
            SetStep::Delete(names) => {
                let delete_claims = sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete";
                for n in names {
                    let _ = ctx.c(Ctl::StatefulSet).delete(&format!("/api/v1/namespaces/{ns}/pods/{n}"), &json!({})).await;
                    // `whenScaled: Delete`: the claims of an ordinal scaled away go with it.
                    if delete_claims && let Some(o) = workloads::ordinal(name, &n) && o >= replicas {
                        for (_, claim) in claims_of(&sts, o) {
                            let _ = ctx.c(Ctl::StatefulSet).delete(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}"), &json!({})).await;
                        }
                    }
                }
            }
            SetStep::Wait => {
                // RollingUpdate: the highest-ordinal pod of the old revision goes once all are
                // ready; it comes back with the new template. Ordinals below the partition
                // keep their revision (a canary: only those at or above it are updated).
                let rolling = sts["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
                let partition = sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"].as_i64().unwrap_or(0).max(0);
                let all_ready = pods.len() as i64 == replicas && pods.iter().all(|p| podutil::is_ready(p));
                let ord = |p: &Arc<Obj>| workloads::ordinal(name, p["metadata"]["name"].as_str().unwrap_or(""));
                if rolling && all_ready
                    && let Some(p) = pods.iter().filter(|p| p["metadata"]["labels"]["controller-revision-hash"] != rev.as_str() && ord(p).is_some_and(|o| o >= partition)).max_by_key(|p| ord(p))
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

// ---------------------------------------------------------------- CronJob

pub(super) fn job_finished(j: &Obj) -> Option<bool> {
    j["status"]["conditions"].as_array()?.iter().find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True").map(|c| c["type"] == "Complete")
}

pub(super) async fn sync_cronjob(ctx: &Ctx, key: &str) -> Res {
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
            ctx.events.object(("batch/v1", "CronJob"), &cj, true, "UnparseableSchedule", format!("unparseable schedule: {e}"));
            return Ok(None);
        }
    };
    // The schedule is read in spec.timeZone (the IANA database built in, as Kubernetes
    // builds Go's in), else in UTC (kube-controller-manager's own zone, in containers).
    let tz = match cj["spec"]["timeZone"].as_str() {
        None => jiff::tz::TimeZone::UTC,
        Some(name) => match jiff::tz::TimeZone::get(name) {
            Ok(tz) => tz,
            Err(e) => {
                ctx.events.object(("batch/v1", "CronJob"), &cj, true, "UnknownTimeZone", format!("invalid timeZone: {name:?}: {e}"));
                return Ok(None);
            }
        },
    };
    let uid = cj["metadata"]["uid"].as_str().unwrap_or("");
    let mut jobs: Vec<Arc<Obj>> = ctx.jobs.owned_by(uid).into_iter().filter(|j| j["metadata"].get("deletionTimestamp").is_none()).collect();
    jobs.sort_by_key(|j| podutil::ts(&j["metadata"]["creationTimestamp"]).unwrap_or(0));
    let active: Vec<&Arc<Obj>> = jobs.iter().filter(|j| job_finished(j).is_none()).collect();
    let mut status = json!({
        "active": active.iter().map(|j| json!({"kind": "Job", "apiVersion": "batch/v1", "namespace": ns, "name": j["metadata"]["name"], "uid": j["metadata"]["uid"]})).collect::<Vec<_>>(),
        "lastScheduleTime": cj["status"]["lastScheduleTime"],
    });
    if let Some(t) = jobs.iter().filter(|j| job_finished(j) == Some(true)).filter_map(|j| j["status"]["completionTime"].as_str()).max() {
        status["lastSuccessfulTime"] = json!(t);
    }
    let last = podutil::ts(&cj["status"]["lastScheduleTime"]).or_else(|| podutil::ts(&cj["metadata"]["creationTimestamp"])).unwrap_or(now);
    if cj["spec"]["suspend"].as_bool() != Some(true)
        && let Some(t) = cron.last_between(last, now, &tz)
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
            let mut meta = if jt["metadata"].is_object() { jt["metadata"].to_value() } else { json!({}) };
            let jname = format!("{name}-{}", t / 60);
            meta["name"] = json!(jname);
            meta["namespace"] = json!(ns);
            meta["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(jiff::Timestamp::from_second(t).map(|x| x.to_string()).unwrap_or_default());
            meta["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "CronJob", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
            let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": jt["spec"]});
            match ctx.c(Ctl::CronJob).post(&format!("/apis/batch/v1/namespaces/{ns}/jobs"), &job).await {
                Ok(_) => ctx.events.object(("batch/v1", "CronJob"), &cj, false, "SuccessfulCreate", format!("Created job {jname}")),
                Err(ClientError::Status { code: 409, .. }) => {}
                Err(e) => return Err(err(e)),
            }
        }
        status["lastScheduleTime"] = json!(jiff::Timestamp::from_second(t).map(|x| x.to_string()).unwrap_or_default());
    }
    // History limits.
    for (ok, limit) in [(true, cj["spec"]["successfulJobsHistoryLimit"].as_i64().unwrap_or(3)), (false, cj["spec"]["failedJobsHistoryLimit"].as_i64().unwrap_or(1))] {
        let done: Vec<&Arc<Obj>> = jobs.iter().filter(|j| job_finished(j) == Some(ok)).collect();
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
