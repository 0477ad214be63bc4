//! A pod's page: facts, its timeline with each scheduling attempt, containers, conditions,
//! events and the log tail.

use super::*;

pub(super) fn attempt_details(a: &Value) -> Markup {
    let plugins = |field: &str| -> Vec<(String, u64)> { a[field].as_array().into_iter().flatten().filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_u64()?))).collect() };
    let (filters, scores) = (plugins("filter_us"), plugins("score_us"));
    html! {
        (a["result"].as_str().unwrap_or("")) " — " (ui::micros(a["total_us"].as_f64().unwrap_or(0.0)))
        ", " (a["feasible"].as_u64().unwrap_or(0)) " feasible of " (a["evaluated"].as_u64().unwrap_or(0)) " evaluated (" (a["nodes"].as_u64().unwrap_or(0)) " nodes; candidates: " (a["candidates"].as_str().unwrap_or("")) ")"
        ", queued " (ui::micros(a["queue_wait_us"].as_f64().unwrap_or(0.0)))
        br;
        span.muted {
            "PreFilter " (ui::micros(a["pre_filter_us"].as_f64().unwrap_or(0.0)))
            @for (p, us) in &filters { " · Filter/" (p) " " (ui::micros(*us as f64)) }
            @for (p, us) in &scores { " · Score/" (p) " " (ui::micros(*us as f64)) }
            @if let Some(b) = a["bind_us"].as_f64() { " · Bind " (ui::micros(b)) }
        }
        @let reasons: Vec<&Value> = a["reasons"].as_array().into_iter().flatten().collect();
        @if !reasons.is_empty() {
            br;
            "Filter verdicts: "
            @for (i, r) in reasons.iter().enumerate() {
                @if i > 0 { ", " }
                (r[1].as_u64().unwrap_or(0)) " node(s): " (r[0].as_str().unwrap_or(""))
            }
        }
    }
}

pub(super) async fn pod(st: &Arc<AppState>, v: &Viewer, ns: &str, name: &str) -> Result<Markup, UiError> {
    v.must("get", "", "pods", Some(ns))?;
    let snap = cache(st, "", "pods").await?.snapshot().1;
    let o = snap.get(key(st, "", "pods", Some(ns), name).as_bytes()).cloned().ok_or_else(|| UiError::not_found(format!("pods \"{name}\" not found")))?;
    let p: Value = serde_json::from_slice(&o.json()).map_err(|e| UiError::bad_request(e.to_string()))?;
    let attempts: Vec<Value> = st.ui.hooks.scheduler().and_then(|s| s.attempts(&format!("{ns}/{name}"))).and_then(|a| a.as_array().cloned()).unwrap_or_default();
    let steps = ui::timeline::assemble(&p, &attempts);
    let offsets = ui::timeline::offsets(&steps);
    let events: Vec<Value> = if v.may("list", "", "events", Some(ns)) {
        let prefix = format!("{}.", key(st, "", "events", Some(ns), name));
        let es = cache(st, "", "events").await?.snapshot().1;
        let mut list: Vec<Value> = es
            .range(Bytes::from(prefix.clone())..)
            .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
            .take(1000)
            .filter_map(|(_, o)| serde_json::from_slice::<Value>(&o.json()).ok())
            .filter(|e| e["involvedObject"]["name"] == name && e["involvedObject"]["kind"] == "Pod")
            .collect();
        list.sort_by(|a, b| b["lastTimestamp"].as_str().unwrap_or("").cmp(a["lastTimestamp"].as_str().unwrap_or("")));
        list
    } else {
        Vec::new()
    };
    let s = &p["status"];
    Ok(html! {
        (ui::page::facts(&[
            ("phase", s["phase"].as_str().unwrap_or("").to_string()),
            ("node", p["spec"]["nodeName"].as_str().unwrap_or("-").to_string()),
            ("pod IP", s["podIP"].as_str().unwrap_or("-").to_string()),
            ("QoS class", s["qosClass"].as_str().unwrap_or("-").to_string()),
            ("created", p["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string()),
            ("labels", o.meta.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")),
            ("owner", p["metadata"]["ownerReferences"].as_array().into_iter().flatten().map(|r| format!("{}/{}", r["kind"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""))).collect::<Vec<_>>().join(", ")),
        ]))
        h2 { "Timeline" }
        table.timeline {
            tr { th { "at (server time)" } th { "after created" } th { "what" } }
            @for (i, step) in steps.iter().enumerate() {
                tr {
                    td { (step.at.to_string()) }
                    td.n { (format!("+{:.3} s", offsets[i])) }
                    td { @match &step.what {
                        ui::timeline::What::Created => "Created",
                        ui::timeline::What::Attempt(k) => { "Scheduling attempt " (k + 1) ": " (attempt_details(&attempts[*k])) },
                        ui::timeline::What::Scheduled { node } => { "Bound to " a href={"/ui/nodes/" (node)} { (node) } },
                        ui::timeline::What::Unschedulable { message } => { "Unschedulable: " (message) },
                        ui::timeline::What::Accepted => "Accepted by the kubelet",
                        ui::timeline::What::ContainerStarted { container } => { "Container " (container) " started" },
                        ui::timeline::What::Ready => "Ready",
                        ui::timeline::What::ContainerTerminated { container, reason, exit_code } => { "Container " (container) " terminated: " (reason) " (exit code " (exit_code) ")" },
                        ui::timeline::What::DeletionRequested => "Deletion requested",
                    } }
                }
            }
        }
        p.muted { "Kubernetes stamps objects to the second; the scheduler's attempts are to the microsecond. Within one second, steps keep the order of a pod's life." }
        @if attempts.is_empty() && st.ui.hooks.scheduler().is_none() {
            p.muted { "The scheduler does not run in this process: its attempts are not shown." }
        }
        h2 { "Containers" }
        table {
            tr { th { "name" } th { "image / command" } th { "ready" } th { "restarts" } th { "state" } }
            @for c in p["spec"]["containers"].as_array().into_iter().flatten() {
                @let cs = s["containerStatuses"].as_array().into_iter().flatten().find(|x| x["name"] == c["name"]);
                tr {
                    td { (c["name"].as_str().unwrap_or("")) }
                    td { (c["image"].as_str().unwrap_or("")) " " span.muted { (c["command"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" ")).unwrap_or_default()) } }
                    td { (cs.and_then(|x| x["ready"].as_bool()).unwrap_or(false)) }
                    td.n { (cs.and_then(|x| x["restartCount"].as_u64()).unwrap_or(0)) }
                    td { (cs.and_then(|x| x["state"].as_object()).map(|m| m.iter().map(|(k, v)| match v["reason"].as_str() { Some(r) => format!("{k} ({r})"), None => k.clone() }).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                }
            }
        }
        h2 { "Conditions" }
        table {
            tr { th { "type" } th { "status" } th { "last transition" } th { "reason" } th { "message" } }
            @for c in s["conditions"].as_array().into_iter().flatten() {
                tr { td { (c["type"].as_str().unwrap_or("")) } td class=(c["status"].as_str().unwrap_or("")) { (c["status"].as_str().unwrap_or("")) } td { (c["lastTransitionTime"].as_str().unwrap_or("")) } td { (c["reason"].as_str().unwrap_or("")) } td { (c["message"].as_str().unwrap_or("")) } }
            }
        }
        h2 { "Events" }
        (events_table(&events))
        h2 { "Log" }
        @if v.may("get", "", "pods/log", Some(ns)) {
            pre.log #log data-src={"/ui/pods/" (ns) "/" (name) "/log"} { "loading…" }
        } @else { (denied("this pod's log")) }
    })
}
