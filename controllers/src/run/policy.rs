//! The PodDisruptionBudget status and HorizontalPodAutoscaler controllers.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------- PodDisruptionBudget

/// (expected pods, desired healthy) of a budget, as the disruption controller computes them.
pub fn budget(spec: &Obj, matching: usize, controllers_scale: Option<i64>) -> (i64, i64) {
    let pct = |v: &Obj, total: i64| -> Option<i64> {
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
        Obj::Number(n) => (counted, n.as_i64().unwrap_or(0)),
        v @ Obj::String(_) => {
            let expected = controllers_scale.unwrap_or(counted);
            (expected, pct(v, expected).unwrap_or(0))
        }
        _ => (counted, counted),
    }
}

/// A budget's status from the pods it selects (active ones), the scale of their controllers
/// (for percentages and maxUnavailable; `None` if not all are owned by a scalable controller)
/// and the time; and how many granted evictions are still pending. Evictions the API server
/// granted (`disruptedPods`) whose pods are still here and younger than two minutes count as
/// spent; older or gone ones are dropped (`null`, for a merge patch to remove).
pub fn disruption_status(pdb: &Obj, pods: &[Arc<Obj>], scale: Option<i64>, now: i64, now_rfc3339: &str) -> (Value, i64) {
    let (expected, desired) = budget(&pdb["spec"], pods.len(), scale);
    let healthy = pods.iter().filter(|p| podutil::is_ready(p)).count() as i64;
    // Evictions the API server granted whose pods are still here count as already spent.
    let mut disrupted = serde_json::Map::new();
    for (pod, at) in pdb["status"]["disruptedPods"].as_object().into_iter().flatten() {
        let live = pods.iter().any(|p| p["metadata"]["name"] == pod);
        let fresh = podutil::ts(at).is_some_and(|t| now - t < 120);
        disrupted.insert(pod.to_string(), if live && fresh { at.to_value() } else { Value::Null });
    }
    let pending = disrupted.values().filter(|v| !v.is_null()).count() as i64;
    let allowed = (healthy - desired - pending).max(0);
    let t = now_rfc3339.to_string();
    let ok = allowed > 0;
    let prev = pdb["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == "DisruptionAllowed")).cloned().unwrap_or(Obj::Null);
    let transition = if prev["status"] == if ok { "True" } else { "False" } { prev["lastTransitionTime"].to_value() } else { json!(t) };
    let status = json!({
        "observedGeneration": pdb["metadata"]["generation"],
        "expectedPods": expected, "currentHealthy": healthy, "desiredHealthy": desired, "disruptionsAllowed": allowed,
        "disruptedPods": disrupted,
        "conditions": [{"type": "DisruptionAllowed", "status": if ok { "True" } else { "False" }, "reason": if ok { "SufficientPods" } else { "InsufficientPods" },
            "message": "", "observedGeneration": pdb["metadata"]["generation"], "lastTransitionTime": transition}],
    });
    (status, pending)
}

/// The merge patch that writes `status` only over the budget it was computed from: its
/// resourceVersion is the patch's precondition (a conflict if the budget changed since).
fn status_patch(pdb: &Obj, status: Value) -> Value {
    json!({"metadata": {"resourceVersion": pdb["metadata"]["resourceVersion"]}, "status": status})
}

pub(super) async fn sync_disruption(ctx: &Ctx, key: &str) -> Res {
    let Some(pdb) = ctx.pdbs.get(key) else { return Ok(None) };
    let (ns, name) = split(key);
    let pods: Vec<Arc<Obj>> = ctx
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
    let (status, pending) = disruption_status(&pdb, &pods, scale, now_unix(), &now_rfc3339());
    let cur = &pdb["status"];
    let same = ["observedGeneration", "expectedPods", "currentHealthy", "desiredHealthy", "disruptionsAllowed"].iter().all(|f| cur[*f] == status[*f])
        && status["disruptedPods"].as_object().is_none_or(|m| m.values().all(|v| !v.is_null()))
        && cur["conditions"][0]["status"] == status["conditions"][0]["status"];
    if !same {
        // Only over the budget this status was computed from (its resourceVersion, a
        // precondition of the patch), as Kubernetes' controller updates it: an eviction granted
        // meanwhile spent a disruption this status does not know of, and writing over it would
        // let a second eviction spend it again (sim/FOUND.md). A conflict is that change: its
        // event brings the budget back to sync, so it is not an error (as for quotas).
        let patch = status_patch(&pdb, status);
        match ctx.c(Ctl::Disruption).merge_patch_quiet(&format!("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}/status"), &patch).await {
            Ok(()) | Err(ClientError::Status { code: 404 | 409, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok((pending > 0).then(|| Duration::from_secs(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_status_counts_granted_evictions_and_is_written_only_over_its_source() {
        let pod = |name: &str, ready: bool| Arc::new(Obj::from(json!({"metadata": {"name": name}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})));
        let pdb = Obj::from(json!({"metadata": {"name": "web", "generation": 2, "resourceVersion": "41"}, "spec": {"minAvailable": 2},
            "status": {"disruptedPods": {"a": "2026-12-05T00:00:00Z", "gone": "2026-12-05T00:00:00Z", "old": "2026-12-04T00:00:00Z"}}}));
        let pods = [pod("a", true), pod("b", true), pod("c", true), pod("d", true), pod("old", true), pod("e", false)];
        let now = "2026-12-05T00:00:30Z".parse::<jiff::Timestamp>().unwrap().as_second();
        let (status, pending) = disruption_status(&pdb, &pods, None, now, "2026-12-05T00:00:30Z");
        // Five healthy, two needed, one granted eviction still pending ("a"); one whose pod
        // went and one older than two minutes are dropped.
        assert_eq!((status["currentHealthy"].as_i64(), status["desiredHealthy"].as_i64(), pending), (Some(5), Some(2), 1));
        assert_eq!(status["disruptionsAllowed"], 2);
        assert_eq!(status["disruptedPods"], json!({"a": "2026-12-05T00:00:00Z", "gone": null, "old": null}));
        assert_eq!(status["observedGeneration"], 2);
        let patch = status_patch(&pdb, status);
        assert_eq!(patch["metadata"]["resourceVersion"], "41", "the write is conditional on the budget it was computed from");
    }

    #[test]
    fn budgets() {
        assert_eq!(budget(&Obj::from(json!({"minAvailable": 2})), 3, None), (3, 2));
        assert_eq!(budget(&Obj::from(json!({"minAvailable": "50%"})), 3, Some(4)), (4, 2));
        assert_eq!(budget(&Obj::from(json!({"maxUnavailable": 1})), 3, Some(3)), (3, 2));
        assert_eq!(budget(&Obj::from(json!({"maxUnavailable": "25%"})), 4, None), (4, 3));
    }
}

// ---------------------------------------------------------------- HorizontalPodAutoscaler


pub(super) fn quantity_milli(s: &str) -> i64 {
    api::Quantity::parse(s).map(|q| q.milli).unwrap_or(0)
}

/// A Pods, Object or External metric of an HPA, read from the custom and external metrics
/// APIs (served by an aggregated API server): the replicas it asks for, its current value for
/// the status, and the reason it gives, as kube-controller-manager's replica calculator.
/// `pod_selector`: the scale target's selector text.
#[allow(clippy::too_many_arguments)]
async fn custom_metric(ctx: &Ctx, ns: &str, m: &Obj, pod_selector: &str, ready: i64, current: i64, min: i64, max: i64) -> Result<(i64, Value, String), String> {
    use autoscale::{average_value_replicas, desired_replicas, plural_of, query_escape, selector_text};
    let c = ctx.c(Ctl::HorizontalPodAutoscaler);
    let q = |v: Option<&str>| quantity_milli(v.unwrap_or("0"));
    let show = |milli: i64| api::Quantity::from_milli(milli).cpu_string();
    let side = |ratio: f64| if ratio > 1.0 { "above" } else { "below" };
    let ty = m["type"].as_str().unwrap_or("");
    let src = &m[match ty {
        "Pods" => "pods",
        "Object" => "object",
        _ => "external",
    }];
    let name = src["metric"]["name"].as_str().unwrap_or("");
    let metric_sel = selector_text(&src["metric"]["selector"]);
    let metric_query = if metric_sel.is_empty() { String::new() } else { format!("metricLabelSelector={}", query_escape(&metric_sel)) };
    let target = &src["target"];
    let get = |path: String| async move { c.get(&path).await.map_err(|e| format!("unable to get metric {name}: {e}")) };
    let values = |list: &Value| -> Vec<i64> { list["items"].as_array().into_iter().flatten().map(|i| q(i["value"].as_str())).collect() };
    match ty {
        "Pods" => {
            let mut path = format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/{name}?labelSelector={}", query_escape(pod_selector));
            if !metric_query.is_empty() {
                path = format!("{path}&{metric_query}");
            }
            let v = values(&get(path).await?);
            if v.is_empty() {
                return Err(format!("unable to get metric {name}: no metrics returned from custom metrics API"));
            }
            let avg = v.iter().sum::<i64>() / v.len() as i64;
            let ratio = avg as f64 / q(target["averageValue"].as_str()).max(1) as f64;
            let d = desired_replicas(ready.max(1), current, ratio, min, max);
            Ok((d, json!({"type": "Pods", "pods": {"metric": src["metric"], "current": {"averageValue": show(avg)}}}), format!("pods metric {name} {} target", side(ratio))))
        }
        "Object" => {
            let o = &src["describedObject"];
            let mut path = format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/{}/{}/{name}", plural_of(o["kind"].as_str().unwrap_or("")), o["name"].as_str().unwrap_or(""));
            if !metric_query.is_empty() {
                path = format!("{path}?{metric_query}");
            }
            let &total = values(&get(path).await?).first().ok_or_else(|| format!("unable to get metric {name}: no metric returned for {}/{}", o["kind"].as_str().unwrap_or(""), o["name"].as_str().unwrap_or("")))?;
            if target["type"] == "AverageValue" {
                let d = average_value_replicas(total, q(target["averageValue"].as_str()), current, min, max);
                let cur = json!({"type": "Object", "object": {"describedObject": o, "metric": src["metric"], "current": {"averageValue": show(total / current.max(1))}}});
                return Ok((d, cur, format!("{name} (target average value) {} target", side(total as f64 / (q(target["averageValue"].as_str()).max(1) * current.max(1)) as f64))));
            }
            let ratio = total as f64 / q(target["value"].as_str()).max(1) as f64;
            let cur = json!({"type": "Object", "object": {"describedObject": o, "metric": src["metric"], "current": {"value": show(total)}}});
            Ok((desired_replicas(ready.max(1), current, ratio, min, max), cur, format!("{name} {} target", side(ratio))))
        }
        _ => {
            let path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{name}?labelSelector={}", query_escape(&metric_sel));
            let v = values(&get(path).await?);
            if v.is_empty() {
                return Err(format!("unable to get external metric {ns}/{name}: no metrics returned from external metrics API"));
            }
            let total: i64 = v.iter().sum();
            if target["type"] == "AverageValue" {
                let d = average_value_replicas(total, q(target["averageValue"].as_str()), current, min, max);
                let cur = json!({"type": "External", "external": {"metric": src["metric"], "current": {"averageValue": show(total / current.max(1))}}});
                return Ok((d, cur, format!("external metric {name} {} target", side(total as f64 / (q(target["averageValue"].as_str()).max(1) * current.max(1)) as f64))));
            }
            let ratio = total as f64 / q(target["value"].as_str()).max(1) as f64;
            let cur = json!({"type": "External", "external": {"metric": src["metric"], "current": {"value": show(total)}}});
            Ok((desired_replicas(ready.max(1), current, ratio, min, max), cur, format!("external metric {name} {} target", side(ratio))))
        }
    }
}

pub(super) async fn sync_hpa(ctx: &Ctx, key: &str) -> Res {
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
    let pods: Vec<Arc<Obj>> = ctx.pods.list().into_iter().filter(|p| p["metadata"]["namespace"] == ns && is_active(p) && selector_matches(&selector, &p["metadata"]["labels"])).collect();
    let ready = pods.iter().filter(|p| podutil::is_ready(p)).count() as i64;
    let enc = sel.replace('=', "%3D").replace(',', "%2C");
    // The resource metrics API is asked only for Resource metrics.
    let has_resource = hpa["spec"]["metrics"].as_array().into_iter().flatten().any(|m| m["type"] == "Resource");
    let metrics = if has_resource { ctx.c(Ctl::HorizontalPodAutoscaler).get(&format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={enc}")).await.map_err(err)? } else { json!({}) };
    let usage_of = |pod: &str, res: &str| -> Option<i64> {
        let m = metrics["items"].as_array()?.iter().find(|m| m["metadata"]["name"] == pod)?;
        Some(m["containers"].as_array()?.iter().map(|c| quantity_milli(c["usage"][res].as_str().unwrap_or("0"))).sum())
    };
    let mut desired = min;
    let mut current_metrics = Vec::new();
    let mut reason = String::new();
    let mut failed: Option<(String, String)> = None;
    for m in hpa["spec"]["metrics"].as_array().into_iter().flatten() {
        if matches!(m["type"].as_str(), Some("Pods" | "Object" | "External")) {
            match custom_metric(ctx, ns, m, &sel, ready, current, min, max).await {
                Ok((d, cur, why)) => {
                    if d > desired || reason.is_empty() {
                        reason = why;
                    }
                    desired = desired.max(d);
                    current_metrics.push(cur);
                }
                Err(e) => failed = Some((format!("FailedGet{}Metric", m["type"].as_str().unwrap_or("")), e)),
            }
            continue;
        }
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
    let behavior = &hpa["spec"]["behavior"];
    let (up, down) = (autoscale::Rules::of(behavior, true), autoscale::Rules::of(behavior, false));
    let now = now_unix();
    let decided = {
        let mut h = ctx.hpa_history.lock().unwrap();
        autoscale::decide(h.entry(key.to_string()).or_default(), now, current, desired, min, max, &up, &down)
    };
    let mut last_scale = hpa["status"]["lastScaleTime"].to_value();
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
            match &failed {
                Some((reason, msg)) => cond("ScalingActive", false, reason, msg),
                None => cond("ScalingActive", !pods.is_empty(), if pods.is_empty() { "FailedGetResourceMetric" } else { "ValidMetricFound" }, "the HPA was able to successfully calculate a replica count"),
            },
            cond("ScalingLimited", desired >= max || desired <= min, if desired >= max { "TooManyReplicas" } else { "DesiredWithinRange" }, "the desired count is within the acceptable range"),
        ],
    });
    let cur = &hpa["status"].to_value();
    let active = |s: &Value| s["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "ScalingActive").map(|c| (c["status"].clone(), c["reason"].clone()));
    if ["currentReplicas", "desiredReplicas", "currentMetrics", "lastScaleTime"].iter().any(|f| cur[*f] != status[*f]) || active(cur) != active(&status) {
        match ctx.c(Ctl::HorizontalPodAutoscaler).merge_patch_quiet(&format!("/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}/status"), &json!({"status": status})).await {
            Ok(()) | Err(ClientError::Status { code: 404, .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(again)
}
