//! The scheduler's page (its summary, queues and latency) and the CPU profile page.

use super::*;

pub(super) fn strip_row(label: Markup, v: &Value) -> Markup {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    html! {
        tr {
            td { (label) }
            td.n { (v["count"].as_u64().unwrap_or(0)) }
            td.n { (ui::micros(f("p50_us"))) } td.n { (ui::micros(f("p90_us"))) } td.n { (ui::micros(f("p99_us"))) } td.n { (ui::micros(f("max_us"))) }
            td { (ui::svg::quantile_strip(f("p50_us"), f("p90_us"), f("p99_us"), f("max_us"))) }
        }
    }
}

/// A summary's buckets as (label, count), from one before the first non-empty bucket to one
/// after the last.
pub(super) fn used_buckets(e: &Value) -> Vec<(String, f64)> {
    let all: Vec<(f64, f64)> = e["buckets"].as_array().into_iter().flatten().filter_map(|b| Some((b[0].as_f64()?, b[1].as_f64()?))).collect();
    let first = all.iter().position(|b| b.1 > 0.0).unwrap_or(0).saturating_sub(1);
    let last = (all.iter().rposition(|b| b.1 > 0.0).unwrap_or(0) + 2).min(all.len());
    all[first..last.max(first)].iter().map(|(le, n)| (format!("≤{}", ui::micros(*le)), *n)).collect()
}

pub(super) fn strip_head() -> Markup {
    html! { tr { th {} th { "count" } th { "p50" } th { "p90" } th { "p99" } th { "max" } th { "1 µs … 10 s (log)" } } }
}

pub(super) async fn scheduler_lease(st: &AppState) -> Option<String> {
    let c = cache(st, "coordination.k8s.io", "leases").await.ok()?;
    let o = c.snapshot().1.get(key(st, "coordination.k8s.io", "leases", Some("kube-system"), "kube-scheduler").as_bytes()).cloned()?;
    let v: Value = serde_json::from_slice(&o.json()).ok()?;
    v["spec"]["holderIdentity"].as_str().map(str::to_string)
}

pub(super) async fn scheduler(st: &Arc<AppState>, v: &Viewer) -> Result<Markup, UiError> {
    v.must("list", "", "pods", None)?;
    let Some(sched) = st.ui.hooks.scheduler() else {
        let holder = scheduler_lease(st).await;
        return Ok(html! {
            p { "The scheduler does not run in this process." }
            @if let Some(h) = holder { p { "The kube-system/kube-scheduler lease is held by " code { (h) } ": its dashboard shows it." } }
        });
    };
    let s = sched.summary();
    let samples = st.ui.ring.snapshot();
    let attempts = sampler::rate(&samples, |x| x.attempts.map(|a| a as f64));
    let queues: Vec<Vec<(f64, f64)>> = (0..3).map(|i| sampler::gauge(&samples, |x| x.pending.map(|p| p[i] as f64))).collect();
    let queue_series = [Series { name: "active", points: &queues[0] }, Series { name: "backoff", points: &queues[1] }, Series { name: "unschedulable", points: &queues[2] }];
    let ext: Vec<&Value> = s["extension_points"].as_array().into_iter().flatten().collect();
    Ok(html! {
        div.cards {
            (card("attempts", s["attempts_total"].to_string(), ""))
            (card("active queue", s["pending"]["active"].to_string(), ""))
            (card("backoff", s["pending"]["backoff"].to_string(), "Pending"))
            (card("unschedulable", s["pending"]["unschedulable"].to_string(), "Failed"))
            (card("restarts", s["restarts"].to_string(), "muted"))
        }
        div.charts {
            (svg::line_chart(&LineChart { title: "Attempts", x_unit: "s", y_unit: "per second", series: &[Series { name: "attempts", points: &attempts }], width: 560, height: 220 }))
            (svg::line_chart(&LineChart { title: "Queue depth", x_unit: "s", y_unit: "pods", series: &queue_series, width: 560, height: 220 }))
        }
        h2 { "Attempts by result" }
        table {
            (strip_head())
            @for (r, h) in s["attempts"].as_object().into_iter().flatten() { (strip_row(html! { (r) }, h)) }
            (strip_row(html! { "queue wait" }, &s["queue_wait"]))
            (strip_row(html! { "pending to bound (SLI)" }, &s["e2e"]))
        }
        h2 { "Extension points" }
        table {
            (strip_head())
            @for e in &ext { (strip_row(html! { (e["name"].as_str().unwrap_or("")) }, e)) }
        }
        div.charts {
            @for e in &ext {
                @let buckets = used_buckets(e);
                @let t = format!("{} (attempts per latency bucket)", e["name"].as_str().unwrap_or(""));
                (svg::bars(&t, &buckets, 420, 150))
            }
        }
        h2 { "Plugins" }
        table {
            (strip_head())
            @for p in s["plugins"].as_array().into_iter().flatten() { (strip_row(html! { (p["extension_point"].as_str().unwrap_or("")) "/" (p["plugin"].as_str().unwrap_or("")) }, p)) }
        }
        h2 { "Slowest attempts of the last minute" }
        table {
            tr { th { "pod" } th { "at" } th { "took" } th { "result" } }
            @for a in s["slowest"].as_array().into_iter().flatten() {
                @let pod = a["pod"].as_str().unwrap_or("");
                tr { td { a href={"/ui/pods/" (pod)} { (pod) } } td { (a["at"].as_str().unwrap_or("")) } td.n { (ui::micros(a["total_us"].as_f64().unwrap_or(0.0))) } td { (a["result"].as_str().unwrap_or("")) } }
            }
        }
        h2 { "Why pods did not fit (last minute)" }
        table {
            tr { th { "reason" } th { "attempts" } }
            @for r in s["unschedulable_reasons"].as_array().into_iter().flatten() { tr { td { (r["reason"].as_str().unwrap_or("")) } td.n { (r["attempts"].as_u64().unwrap_or(0)) } } }
        }
        h2 { "CPU profile" }
        form method="get" action="/ui/scheduler/profile" {
            "Sample the whole process for "
            select name="seconds" { option value="2" { "2" } option value="5" selected { "5" } option value="10" { "10" } option value="30" { "30" } }
            " seconds: "
            button type="submit" { "Take a CPU profile" }
        }
    })
}

pub(super) fn profile(v: &Viewer, seconds: u64) -> Result<Markup, UiError> {
    v.must("list", "", "pods", None)?;
    Ok(html! {
        p { "Sampling every thread of the process at 99 Hz for " (seconds) " s; the flame graph appears below when done (open it alone to search and zoom)." }
        p { a href={"/ui/scheduler/flamegraph.svg?seconds=" (seconds)} { "Open the flame graph alone" } }
        img #flamegraph src={"/ui/scheduler/flamegraph.svg?seconds=" (seconds)} alt="CPU flame graph" style="max-width:100%;background:#fff";
    })
}
