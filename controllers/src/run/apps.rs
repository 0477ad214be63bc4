//! The ReplicaSet and Deployment controllers' reconcile functions.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------- ReplicaSet

/// The two controllers of replicas: ReplicaSet (apps/v1) and ReplicationController (v1,
/// whose selector is a plain label map, defaulted to its template's labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Replicas {
    Set,
    Controller,
}

impl Replicas {
    pub(super) fn kind(self) -> (&'static str, &'static str) {
        match self {
            Replicas::Set => ("apps/v1", "ReplicaSet"),
            Replicas::Controller => ("v1", "ReplicationController"),
        }
    }

    fn path(self, ns: &str, name: &str) -> String {
        match self {
            Replicas::Set => format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}"),
            Replicas::Controller => format!("/api/v1/namespaces/{ns}/replicationcontrollers/{name}"),
        }
    }

    fn ctl(self) -> Ctl {
        match self {
            Replicas::Set => Ctl::ReplicaSet,
            Replicas::Controller => Ctl::ReplicationController,
        }
    }

    pub(super) fn informer(self, ctx: &Ctx) -> &Arc<client::informer::Informer> {
        match self {
            Replicas::Set => &ctx.rs,
            Replicas::Controller => &ctx.rcs,
        }
    }

    /// The expectations' key (a ReplicaSet and a ReplicationController may share a name).
    pub(super) fn exp_key(self, key: &str) -> String {
        match self {
            Replicas::Set => key.to_string(),
            Replicas::Controller => format!("rc:{key}"),
        }
    }

    /// The label selector (a ReplicationController's map as `matchLabels`).
    pub(super) fn selector(self, obj: &Obj) -> Obj {
        match self {
            Replicas::Set => obj["spec"]["selector"].clone(),
            Replicas::Controller => {
                let map = if obj["spec"]["selector"].is_object() { obj["spec"]["selector"].clone() } else { obj["spec"]["template"]["metadata"]["labels"].clone() };
                Obj::from(json!({"matchLabels": map}))
            }
        }
    }
}

pub(super) async fn sync_replicas(ctx: &Ctx, key: &str, which: Replicas) -> Res {
    let exp_key = which.exp_key(key);
    let Some(raw) = which.informer(ctx).get(key) else {
        ctx.exp.forget(&exp_key);
        return Ok(None);
    };
    if raw["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    // One shape for both: the selector as a LabelSelector.
    let rs = if which == Replicas::Set {
        raw
    } else {
        let mut v = raw.to_value();
        v["spec"]["selector"] = which.selector(&raw).to_value();
        Arc::new(Obj::from(v))
    };
    let (ns, rs_name) = split(key);
    let rs_path = which.path(ns, rs_name);
    let kind = which.kind();
    let ctl = which.ctl();
    let pods = claimed_pods(ctx, ctl, &rs, kind, &rs_path).await?;
    let active: Vec<Arc<Obj>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    if ctx.exp.satisfied(&exp_key) {
        let d = rsc::decide(rs["spec"]["replicas"].as_i64().unwrap_or(1), &active);
        if d.create > 0 || !d.delete.is_empty() {
            ctx.exp.expect(&exp_key, d.create as i64, &d.delete);
        }
        if d.create > 0 {
            let mut pod = rsc::pod_from_template(&rs);
            pod["metadata"]["ownerReferences"][0]["apiVersion"] = json!(kind.0);
            pod["metadata"]["ownerReferences"][0]["kind"] = json!(kind.1);
            let path = format!("/api/v1/namespaces/{ns}/pods");
            let mut created = 0;
            for b in rsc::batches(d.create) {
                let results = futures_util::future::join_all((0..b).map(|_| ctx.c(ctl).post_quiet(&path, &pod))).await;
                let failed = results.iter().filter(|r| r.is_err()).count();
                created += b - failed;
                if failed > 0 {
                    // Not coming: stop expecting them, and retry with backoff.
                    for _ in 0..(d.create - created) {
                        ctx.exp.observed_add(&exp_key);
                    }
                    let e = results.into_iter().find_map(|r| r.err()).map(err).unwrap_or_default();
                    ctx.events.object(kind, &rs, true, "FailedCreate", format!("Error creating: {e}"));
                    return Err(e);
                }
            }
            ctx.events.object(kind, &rs, false, "SuccessfulCreate", format!("Created {created} pod(s)"));
        }
        if !d.delete.is_empty() {
            for name in &d.delete {
                match ctx.c(ctl).delete(&format!("/api/v1/namespaces/{ns}/pods/{name}"), &json!({})).await {
                    Ok(_) => {}
                    Err(ClientError::Status { code: 404, .. }) => ctx.exp.observed_delete(&exp_key, name),
                    Err(e) => return Err(err(e)),
                }
            }
            ctx.events.object(kind, &rs, false, "SuccessfulDelete", format!("Deleted pod(s): {}", d.delete.join(", ")));
        }
    }
    let status = rsc::status(&rs, &pods, now_unix());
    let cur = &rs["status"];
    let changed = ["replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas", "observedGeneration"].iter().any(|f| cur[*f].as_i64().unwrap_or(0) != status[*f].as_i64().unwrap_or(0));
    if changed {
        let path = format!("{rs_path}/status");
        match ctx.c(ctl).merge_patch_quiet(&path, &json!({"status": status})).await {
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

pub(super) fn rs_view(r: &Obj) -> Rs {
    Rs {
        name: r["metadata"]["name"].as_str().unwrap_or("").to_string(),
        spec: r["spec"]["replicas"].as_i64().unwrap_or(0),
        available: r["status"]["availableReplicas"].as_i64().unwrap_or(0),
        created: podutil::ts(&r["metadata"]["creationTimestamp"]).unwrap_or(0),
    }
}

pub(super) fn revision(r: &Obj) -> i64 {
    r["metadata"]["annotations"][REVISION].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

pub(super) async fn scale_rs(ctx: &Ctx, ns: &str, name: &str, replicas: i64, d: &Obj) -> Result<(), String> {
    let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}");
    let patch = json!({"metadata": {"annotations": {"deployment.kubernetes.io/desired-replicas": d["spec"]["replicas"].as_i64().unwrap_or(1).to_string()}}, "spec": {"replicas": replicas}});
    ctx.c(Ctl::Deployment).merge_patch_quiet(&path, &patch).await.map_err(err)?;
    ctx.events.pod(d, None, false, "ScalingReplicaSet", format!("Scaled replica set {name} to {replicas}"));
    Ok(())
}

pub(super) async fn sync_deployment(ctx: &Ctx, key: &str) -> Res {
    let Some(d) = ctx.deploy.get(key) else { return Ok(None) };
    if d["metadata"].get("deletionTimestamp").is_some() {
        return Ok(None);
    }
    let (ns, name) = split(key);
    let uid = d["metadata"]["uid"].as_str().unwrap_or("");
    // The ReplicaSets it controls, orphans its selector matches adopted (ControllerRefManager).
    let owned: Vec<Arc<Obj>> = ctx.rs.owned_by(uid).into_iter().filter(|r| controller_of(r).is_some_and(|o| o["uid"] == uid)).collect();
    let rs_path = |r: &Obj| format!("/apis/apps/v1/namespaces/{ns}/replicasets/{}", r["metadata"]["name"].as_str().unwrap_or(""));
    let d_path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}");
    let claimed = super::adopt::claim(ctx.c(Ctl::Deployment), &d, &d_path, ("apps/v1", "Deployment"), &d["spec"]["selector"], owned, ctx.rs.orphans_in(ns), rs_path).await?;
    let rss: Vec<Arc<Obj>> = claimed.into_iter().filter(|r| r["metadata"].get("deletionTimestamp").is_none()).collect();
    let template = &d["spec"]["template"];
    let hash = dep::template_hash(template);
    // The new set is the one whose template, without the hash label, is the deployment's
    // (so a rollback to an old template reuses its set, as Kubernetes' EqualIgnoreHash).
    let without_hash = |t: &Obj| {
        let mut t = dep::normalize(t);
        if let Some(l) = t["metadata"]["labels"].as_object_mut() {
            l.remove(HASH_LABEL);
        }
        t
    };
    let want = without_hash(template);
    let same_template = |r: &Obj| without_hash(&r["spec"]["template"]) == want;
    let new = rss.iter().find(|r| same_template(r)).or_else(|| rss.iter().find(|r| r["metadata"]["labels"][HASH_LABEL] == hash.as_str())).cloned();
    let new_uid = new.as_ref().map(|n| n["metadata"]["uid"].clone());
    let olds: Vec<Arc<Obj>> = rss.iter().filter(|r| Some(&r["metadata"]["uid"]) != new_uid.as_ref()).cloned().collect();
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
        let mut labels = template["metadata"]["labels"].to_value();
        labels[HASH_LABEL] = json!(hash);
        let mut tmpl = template.to_value();
        tmpl["metadata"]["labels"] = labels.clone();
        let mut selector = d["spec"]["selector"].to_value();
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
        let mut idle: Vec<&Arc<Obj>> = olds.iter().filter(|r| r["spec"]["replicas"].as_i64() == Some(0) && r["status"]["replicas"].as_i64().unwrap_or(0) == 0).collect();
        if idle.len() > limit {
            idle.sort_by_key(|r| revision(r));
            for r in &idle[..idle.len() - limit] {
                let n = r["metadata"]["name"].as_str().unwrap_or("");
                let _ = ctx.c(Ctl::Deployment).delete(&format!("/apis/apps/v1/namespaces/{ns}/replicasets/{n}"), &json!({"propagationPolicy": "Background"})).await;
            }
        }
    }
    // Status, with the progress deadline.
    let all: Vec<&Obj> = rss.iter().map(|r| &**r).collect();
    let deadline = Duration::from_secs(d["spec"]["progressDeadlineSeconds"].as_u64().unwrap_or(600));
    let progressing = d["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == "Progressing")).cloned();
    let since = progressing.as_ref().and_then(|c| podutil::ts(&c["lastUpdateTime"])).unwrap_or(now_unix());
    let passed = now_unix() - since > deadline.as_secs() as i64;
    let status = dep::status(&d, Some(&new), &all, &d["status"], &now_rfc3339(), passed);
    let strip = |mut v: Value| {
        for c in v["conditions"].as_array_mut().into_iter().flatten() {
            c.as_object_mut().map(|m| m.remove("lastUpdateTime"));
        }
        v
    };
    if strip(status.clone()) != strip(d["status"].to_value()) {
        match ctx.c(Ctl::Deployment).merge_patch_quiet(&format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}/status"), &json!({"status": status})).await {
            Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    let complete = status["conditions"][1]["reason"] == "NewReplicaSetAvailable";
    Ok((!complete && !paused).then(|| Duration::from_secs(5)))
}
