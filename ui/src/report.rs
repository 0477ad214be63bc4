//! A loadgen report (`loadgen run --report-json`), drawn: alone (loadgen's own HTML report
//! and the dashboard's loadgen page) or two side by side with their ratios. It reads the
//! report as JSON, so the dashboard needs no dependency on loadgen; fields a report lacks
//! show as `-`.

use maud::{Markup, html};
use serde_json::Value;

use crate::svg::{self, LineChart, Series};

/// Why an upload is not a report.
pub fn check(v: &Value) -> Result<(), String> {
    if !v.is_object() {
        return Err("not a loadgen report: the JSON is not an object".into());
    }
    for field in ["workload", "pods", "api"] {
        if v.get(field).is_none() {
            return Err(format!("not a loadgen report: it has no {field:?} field (write one with loadgen run --report-json FILE)"));
        }
    }
    Ok(())
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn f(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.3}") })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Pods Running over time as chart points.
fn running(r: &Value) -> Vec<(f64, f64)> {
    r["pods"]["running_over_time"].as_array().into_iter().flatten().filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?))).collect()
}

/// A resource sampled over the run (`[seconds, value]` pairs under `over_time`).
fn over_time(r: &Value, field: &str, scale: f64) -> Vec<(f64, f64)> {
    r["over_time"][field].as_array().into_iter().flatten().filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()? * scale))).collect()
}

/// The rows every report has, as (label, value).
fn headline(r: &Value) -> Vec<(&'static str, Option<f64>)> {
    vec![
        ("seconds", num(&r["seconds"])),
        ("pods expected", num(&r["pods"]["expected"])),
        ("pods running", num(&r["pods"]["running"])),
        ("pods/s created to running", num(&r["pods_per_second_created_to_running"])),
        ("scheduling pods/s", num(&r["pods"]["scheduling_pods_per_s"])),
        ("pod startup p50, client-observed (s)", num(&r["pods"]["startup_client_p50_s"])),
        ("pod startup p99, client-observed (s)", num(&r["pods"]["startup_client_p99_s"])),
        ("pod startup p99, server (s)", num(&r["pods"]["startup_server_p99_s"])),
        ("process CPU s", num(&r["process_cpu_seconds"])),
        ("process peak RSS MiB", num(&r["process_peak_rss_bytes"]).map(|b| (b / 1048576.0).round())),
        ("control plane CPU ms per pod", num(&r["cpu_ms_per_pod"])),
        ("control plane peak RSS MiB", num(&r["control_plane_peak_rss_bytes"]).map(|b| (b / 1048576.0).round())),
    ]
}

fn api_buckets(a: &Value) -> Vec<(String, f64)> {
    a["buckets"].as_array().into_iter().flatten().filter_map(|b| Some((format!("{} ms", svg::tick(b[0].as_f64()?)), b[1].as_f64()?))).collect()
}

fn charts_over_time(series_of: &[(&str, &Value)]) -> Markup {
    let runs: Vec<(String, Vec<(f64, f64)>, Vec<(f64, f64)>, Vec<(f64, f64)>)> =
        series_of.iter().map(|(name, r)| (name.to_string(), running(r), over_time(r, "cpu_cores", 1.0), over_time(r, "rss_bytes", 1.0 / 1048576.0))).collect();
    let pods: Vec<Series> = runs.iter().map(|(n, p, _, _)| Series { name: n, points: p }).collect();
    let cpu: Vec<Series> = runs.iter().filter(|r| !r.2.is_empty()).map(|(n, _, c, _)| Series { name: n, points: c }).collect();
    let rss: Vec<Series> = runs.iter().filter(|r| !r.3.is_empty()).map(|(n, _, _, m)| Series { name: n, points: m }).collect();
    html! {
        div.charts {
            (svg::line_chart(&LineChart { title: "Pods Running", x_unit: "s", y_unit: "pods", series: &pods, width: 640, height: 240 }))
            @if !cpu.is_empty() {
                (svg::line_chart(&LineChart { title: "Process CPU", x_unit: "s", y_unit: "cores", series: &cpu, width: 640, height: 240 }))
            }
            @if !rss.is_empty() {
                (svg::line_chart(&LineChart { title: "Process RSS", x_unit: "s", y_unit: "MiB", series: &rss, width: 640, height: 240 }))
            }
        }
    }
}

/// One report, whole: headline figures, verdicts, charts over time, API latency.
pub fn one(r: &Value) -> Markup {
    html! {
        p { (s(&r["workload"])) " against " (s(&r["target"])) ": " (f(num(&r["nodes"]))) " nodes, " (f(num(&r["pods_per_node"]))) " pods per node. " (s(&r["process_note"])) }
        h2 { "Verdicts" }
        table {
            tr { th { "check" } th { "measured" } th { "limit" } th { "result" } th { "source" } }
            @for v in r["verdicts"].as_array().into_iter().flatten() {
                @let pass = v["pass"].as_bool().unwrap_or(false);
                tr {
                    td { (s(&v["name"])) }
                    td.n { (f(num(&v["measured"]))) }
                    td.n { (f(num(&v["limit"]))) }
                    td class=(if pass { "True" } else { "False" }) { (if pass { "PASS" } else { "FAIL" }) }
                    td { (s(&v["source"])) }
                }
            }
        }
        h2 { "Figures" }
        table { @for (k, v) in headline(r) { tr { th { (k) } td.n { (f(v)) } } } }
        h2 { "Over time" }
        (charts_over_time(&[("run", r)]))
        h2 { "API call latency (client-side)" }
        table {
            tr { th { "call" } th { "count" } th { "errors" } th { "p50 ms" } th { "p90 ms" } th { "p99 ms" } th { "max ms" } }
            @for a in r["api"].as_array().into_iter().flatten() {
                tr {
                    td { (s(&a["verb"])) " " (s(&a["resource"])) }
                    td.n { (f(num(&a["count"]))) } td.n { (f(num(&a["errors"]))) }
                    td.n { (f(num(&a["p50_ms"]))) } td.n { (f(num(&a["p90_ms"]))) } td.n { (f(num(&a["p99_ms"]))) } td.n { (f(num(&a["max_ms"]))) }
                }
            }
        }
        div.charts {
            @for a in r["api"].as_array().into_iter().flatten() {
                @let title = format!("{} {} (ms)", s(&a["verb"]), s(&a["resource"]));
                (svg::bars(&title, &api_buckets(a), 640, 160))
            }
        }
        h2 { "Phases" }
        table {
            tr { th { "phase" } th { "seconds" } th { "items" } th { "qps set" } th { "qps achieved" } th { "note" } }
            @for p in r["phases"].as_array().into_iter().flatten() {
                tr { td { (s(&p["phase"])) } td.n { (f(num(&p["seconds"]))) } td.n { (f(num(&p["items"]))) } td.n { (f(num(&p["configured_qps"]))) } td.n { (f(num(&p["achieved_qps"]))) } td { (s(&p["note"])) } }
            }
        }
    }
}

/// B over A, when both are there and A is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => Some(b / a),
        _ => None,
    }
}

/// Two reports side by side: their figures with B/A, their API p99s, their charts overlaid.
pub fn compare(a: &Value, b: &Value) -> Markup {
    let (ha, hb) = (headline(a), headline(b));
    let calls: Vec<&Value> = a["api"].as_array().into_iter().flatten().collect();
    html! {
        p { "A: " (s(&a["workload"])) " against " (s(&a["target"])) ". B: " (s(&b["workload"])) " against " (s(&b["target"])) "." }
        table {
            tr { th {} th { "A" } th { "B" } th { "B/A" } }
            @for ((k, x), (_, y)) in ha.iter().zip(hb.iter()) {
                tr { th { (k) } td.n { (f(*x)) } td.n { (f(*y)) } td.n { (ratio(*x, *y).map_or("-".into(), |r| format!("{r:.2}×"))) } }
            }
            @for x in &calls {
                @let y = b["api"].as_array().into_iter().flatten().find(|y| y["verb"] == x["verb"] && y["resource"] == x["resource"]);
                @let (px, py) = (num(&x["p99_ms"]), y.and_then(|y| num(&y["p99_ms"])));
                tr { th { (s(&x["verb"])) " " (s(&x["resource"])) " p99 ms" } td.n { (f(px)) } td.n { (f(py)) } td.n { (ratio(px, py).map_or("-".into(), |r| format!("{r:.2}×"))) } }
            }
        }
        (charts_over_time(&[("A", a), ("B", b)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(rate: f64) -> Value {
        json!({
            "workload": "density<1>", "target": "embedded", "nodes": 10, "pods_per_node": 3, "seconds": 2.5,
            "pods": {"expected": 30, "running": 30, "running_over_time": [[0.0, 0], [1.0, 15], [2.0, 30]]},
            "pods_per_second_created_to_running": rate,
            "api": [{"verb": "create", "resource": "pods", "count": 30, "errors": 0, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 4.0, "max_ms": 5.0, "buckets": [[1.0, 10], [2.0, 20]]}],
            "verdicts": [{"name": "pods running", "measured": 30, "limit": 30, "pass": true, "source": "x"}],
            "over_time": {"cpu_cores": [[0.0, 0.5], [1.0, 1.5]], "rss_bytes": [[0.0, 1048576.0], [1.0, 2097152.0]]}
        })
    }

    #[test]
    fn a_report_is_checked_and_drawn_with_its_fields_escaped() {
        assert!(check(&json!([])).is_err());
        assert!(check(&json!({"workload": "x"})).unwrap_err().contains("\"pods\""));
        check(&report(10.0)).unwrap();
        let s = one(&report(10.0)).into_string();
        assert!(s.contains("density&lt;1&gt;") && !s.contains("density<1>"), "{s}");
        assert!(s.contains("Pods Running") && s.contains("Process CPU") && s.contains("Process RSS"));
        assert!(s.contains(">PASS<"));
    }

    #[test]
    fn two_reports_compare_as_ratios() {
        assert_eq!(ratio(Some(10.0), Some(15.0)), Some(1.5));
        assert_eq!(ratio(Some(0.0), Some(15.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        let s = compare(&report(10.0), &report(25.0)).into_string();
        assert!(s.contains("2.50×"), "{s}");
        assert!(s.contains("● A") && s.contains("● B"));
    }
}
