//! The report: verdicts against Kubernetes' SLOs and the workload's targets, printed as a
//! table, written as JSON, and as a self-contained HTML page whose plots are SVG drawn here
//! (no scripts, no network needed to view it); and `compare` of two JSON reports.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::measure::{ApiLine, PodReport};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseLine {
    pub phase: String,
    pub seconds: f64,
    pub items: u64,
    pub configured_qps: Option<f64>,
    pub achieved_qps: Option<f64>,
    pub note: String,
}

impl PhaseLine {
    /// Records a paced phase: its items, the rate achieved, and failures if any.
    pub fn paced(&mut self, items: u64, secs: f64, failed: u64) {
        self.items = items;
        self.achieved_qps = Some(items as f64 / secs.max(1e-9));
        if failed > 0 {
            self.note = format!("{failed} of {items} calls failed");
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verdict {
    pub name: String,
    pub measured: Option<f64>,
    pub limit: f64,
    pub pass: bool,
    pub source: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    // The summary other tools rely on (issue #8's interface).
    pub pods_total: u64,
    pub pods_running: u64,
    pub pod_startup_p50_ms: Option<f64>,
    pub pod_startup_p99_ms: Option<f64>,
    pub api_mutating_p99_ms: Option<f64>,
    pub pods_per_sec: Option<f64>,
    /// The control plane's peak RSS: the whole process's when embedded; with --server, the
    /// server's own from its `/metrics` (null when it does not publish one).
    pub control_plane_peak_rss_bytes: Option<u64>,
    /// The control plane's CPU seconds over the run: the whole process's when embedded
    /// (loadgen and hollow nodes included); with --server, the server's `/metrics`.
    #[serde(default)]
    pub control_plane_cpu_seconds: Option<f64>,
    /// `control_plane_cpu_seconds` over the pods the run expected, in ms.
    #[serde(default)]
    pub cpu_ms_per_pod: Option<f64>,
    /// waitPodsRunning phases that gave up before every expected pod ran.
    #[serde(default)]
    pub waits_timed_out: u64,
    /// Mutating calls of every client of the server during the run (its own histogram): the
    /// bucket bound at or above their p99, and how many there were.
    #[serde(default)]
    pub server_mutating_p99_bound_s: Option<f64>,
    #[serde(default)]
    pub server_mutating_calls: Option<u64>,
    pub slo_pass: bool,
    pub workload: String,
    pub target: String,
    pub nodes: u64,
    pub pods_per_node: u64,
    pub seconds: f64,
    pub phases: Vec<PhaseLine>,
    pub api: Vec<ApiLine>,
    pub pods: PodReport,
    pub pods_per_second_created_to_running: Option<f64>,
    pub process_cpu_seconds: f64,
    pub process_peak_rss_bytes: u64,
    pub process_note: String,
    pub verdicts: Vec<Verdict>,
    /// This process's CPU and memory sampled each second over the run.
    #[serde(default)]
    pub over_time: OverTime,
}

/// Resources over the run: `[seconds since the start, value]` pairs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OverTime {
    /// CPU cores used between one sample and the next.
    pub cpu_cores: Vec<(f64, f64)>,
    pub rss_bytes: Vec<(f64, f64)>,
}

const MUTATING: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// Verdicts: the Kubernetes SLOs (mutating calls p99 <= 1 s; reads p99 <= 1 s for one object,
/// <= 30 s for lists; pod startup p99 <= 5 s) and the workload's own targets.
/// The mutating calls' worst p99 in ms.
pub fn mutating_p99_ms(api: &[ApiLine]) -> Option<f64> {
    api.iter().filter(|l| MUTATING.contains(&l.verb.as_str())).map(|l| l.p99_ms).fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))
}

pub fn verdicts(api: &[ApiLine], pods: &PodReport, rate: Option<f64>, targets: &Value, embedded: bool, waits_timed_out: u64, server_mutating: Option<(f64, u64)>) -> Vec<Verdict> {
    let mut v = Vec::new();
    let worst = |pred: &dyn Fn(&ApiLine) -> bool| api.iter().filter(|l| pred(l)).map(|l| l.p99_ms / 1000.0).fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    let mutating = worst(&|l| MUTATING.contains(&l.verb.as_str()));
    let get = worst(&|l| l.verb == "get");
    let list = worst(&|l| l.verb == "list");
    // In embedded mode the client and the server share one clock: the watched startup is
    // exact to the millisecond; otherwise the server's timestamps are the authority.
    let (startup, src) = if embedded && pods.startup_client_p99_s.is_some() {
        (pods.startup_client_p99_s, "client-observed (create sent, or first watched, to Running watched; one clock)")
    } else {
        (pods.startup_server_p99_s, "server timestamps (creationTimestamp to Ready; 1 s resolution)")
    };
    let mut push = |name: &str, measured: Option<f64>, limit: f64, source: &str, higher_is_better: bool| {
        let pass = measured.is_some_and(|m| if higher_is_better { m >= limit } else { m <= limit });
        v.push(Verdict { name: name.into(), measured, limit, pass, source: source.into() });
    };
    push("SLO: mutating API calls p99 (s)", mutating, 1.0, "client-side hdrhistogram", false);
    if get.is_some() {
        push("SLO: single-object reads p99 (s)", get, 1.0, "client-side hdrhistogram", false);
    }
    if list.is_some() {
        push("SLO: list reads p99 (s)", list, 30.0, "client-side hdrhistogram", false);
    }
    if startup.is_some() {
        push("SLO: pod startup p99 (s)", startup, 5.0, src, false);
    }
    if let Some(t) = targets["podStartupP99Seconds"].as_f64() {
        push("target: pod startup p99 (s)", startup, t, src, false);
    }
    if let Some(t) = targets["mutatingP99Seconds"].as_f64() {
        push("target: mutating API calls p99 (s)", mutating, t, "client-side hdrhistogram", false);
        if let Some((bound, calls)) = server_mutating {
            let source = format!("server histogram, {calls} writes of every component; the bucket bound at or above the p99");
            push("target: mutating API calls p99, every component (s)", Some(bound), t, &source, false);
        }
    }
    if let Some(t) = targets["podsPerSecond"].as_f64() {
        push("target: pods/s created to running", rate, t, "first create to last Running watched", true);
    }
    // The run's own pods, every one Running: none failed, none still pending, none expected
    // and never seen, and no wait for Running that gave up.
    v.push(Verdict {
        name: "every pod accounted for".into(),
        measured: Some(pods.running as f64),
        limit: pods.expected as f64,
        pass: pods.running >= pods.expected && pods.failed == 0 && pods.not_running == 0 && pods.missing == 0 && waits_timed_out == 0,
        source: format!(
            "{} running, {} failed, {} not running at the end, {} never seen, {} deleted before running; {} waits for Running timed out",
            pods.running, pods.failed, pods.not_running, pods.missing, pods.deleted_before_running, waits_timed_out
        ),
    });
    v
}

fn f(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.3}"))
}

pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "workload {} against {} ({} nodes, {} pods/node): {:.1} s", r.workload, r.target, r.nodes, r.pods_per_node, r.seconds);
    let _ = writeln!(s, "\nphase                 seconds     items   qps set  qps achieved  note");
    for p in &r.phases {
        let _ = writeln!(s, "{:<20} {:>8.2} {:>9} {:>9} {:>13}  {}", p.phase, p.seconds, p.items, f(p.configured_qps), f(p.achieved_qps), p.note);
    }
    let _ = writeln!(s, "\nAPI calls (client-side)   count  errors   p50 ms   p90 ms   p99 ms   max ms");
    for a in &r.api {
        let _ = writeln!(s, "{:<24} {:>6} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2}", format!("{} {}", a.verb, a.resource), a.count, a.errors, a.p50_ms, a.p90_ms, a.p99_ms, a.max_ms);
    }
    let p = &r.pods;
    let _ = writeln!(s, "\npods: expected {}, running {}, failed {}, not running {}, never seen {}", p.expected, p.running, p.failed, p.not_running, p.missing);
    let _ = writeln!(s, "pod startup p50/p99: server {} / {} s (1 s resolution); client-observed {} / {} s", f(p.startup_server_p50_s), f(p.startup_server_p99_s), f(p.startup_client_p50_s), f(p.startup_client_p99_s));
    let _ = writeln!(s, "scheduling: {} pods/s (p99 created to scheduled {} s); created-to-running throughput {} pods/s", f(p.scheduling_pods_per_s), f(p.schedule_server_p99_s), f(r.pods_per_second_created_to_running));
    if p.watch_event_count > 0 {
        let _ = writeln!(s, "watch events: {} writes timed to their watch event, p50 {} ms, p99 {} ms", p.watch_event_count, f(p.watch_event_p50_ms), f(p.watch_event_p99_ms));
    }
    let _ = writeln!(s, "process: {:.1} CPU s, peak RSS {} MiB ({})", r.process_cpu_seconds, r.process_peak_rss_bytes >> 20, r.process_note);
    let _ = writeln!(
        s,
        "control plane: {} CPU s, {} ms CPU per pod, peak RSS {} MiB",
        f(r.control_plane_cpu_seconds),
        f(r.cpu_ms_per_pod),
        r.control_plane_peak_rss_bytes.map_or("-".into(), |b| (b >> 20).to_string())
    );
    let _ = writeln!(s, "\nverdicts");
    for v in &r.verdicts {
        let _ = writeln!(s, "  [{}] {}: {} (limit {}) — {}", if v.pass { "PASS" } else { "FAIL" }, v.name, f(v.measured), v.limit, v.source);
    }
    s
}

/// The report as a page that stands alone: the dashboard's report view (`ui::report`), the
/// same charts the dashboard draws for an uploaded report.
pub fn html(r: &Report) -> String {
    let v = serde_json::to_value(r).unwrap_or(Value::Null);
    ui::page::document(&format!("loadgen report: {} against {}", r.workload, r.target), ui::report::one(&v))
}

/// Two reports side by side, with B/A ratios.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut s = String::new();
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if x > 0.0 => format!("{:.2}x", y / x),
        _ => "-".into(),
    };
    let _ = writeln!(s, "{:<44} {:>12} {:>12} {:>8}", "", a.workload.clone() + " (A)", b.workload.clone() + " (B)", "B/A");
    let mut row = |name: &str, x: Option<f64>, y: Option<f64>| {
        let _ = writeln!(s, "{name:<44} {:>12} {:>12} {:>8}", f(x), f(y), ratio(x, y));
    };
    row("seconds", Some(a.seconds), Some(b.seconds));
    row("pods running", Some(a.pods.running as f64), Some(b.pods.running as f64));
    row("pod startup p99, client-observed (s)", a.pods.startup_client_p99_s, b.pods.startup_client_p99_s);
    row("pod startup p99, server (s)", a.pods.startup_server_p99_s, b.pods.startup_server_p99_s);
    row("pods/s created to running", a.pods_per_second_created_to_running, b.pods_per_second_created_to_running);
    row("scheduling pods/s", a.pods.scheduling_pods_per_s, b.pods.scheduling_pods_per_s);
    row("process CPU s", Some(a.process_cpu_seconds), Some(b.process_cpu_seconds));
    row("process peak RSS MiB", Some((a.process_peak_rss_bytes >> 20) as f64), Some((b.process_peak_rss_bytes >> 20) as f64));
    row("control plane CPU ms per pod", a.cpu_ms_per_pod, b.cpu_ms_per_pod);
    row("control plane peak RSS MiB", a.control_plane_peak_rss_bytes.map(|x| (x >> 20) as f64), b.control_plane_peak_rss_bytes.map(|x| (x >> 20) as f64));
    for x in &a.api {
        let y = b.api.iter().find(|y| y.verb == x.verb && y.resource == x.resource);
        row(&format!("{} {} p99 ms", x.verb, x.resource), Some(x.p99_ms), y.map(|y| y.p99_ms));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{PodLite, Pods};
    use serde_json::json;

    fn lite(v: serde_json::Value) -> PodLite {
        serde_json::from_value(v).expect("a pod")
    }

    fn accounted(pods: &PodReport, waits_timed_out: u64) -> bool {
        let v = verdicts(&[], pods, None, &json!({}), true, waits_timed_out, None);
        v.iter().find(|v| v.name == "every pod accounted for").expect("the verdict is always given").pass
    }

    #[test]
    fn the_accounting_verdict_fails_on_a_missing_or_stuck_pod_or_a_timed_out_wait() {
        let p = Pods::new();
        p.own("ns");
        for name in ["a", "b"] {
            p.observe(&lite(json!({"metadata": {"namespace": "ns", "name": name}, "status": {"phase": "Running"}})));
        }
        assert!(accounted(&p.report(2), 0));
        // A wait that gave up fails the run even if the pods ran later.
        assert!(!accounted(&p.report(2), 1));
        // Three expected, two seen: one never seen.
        assert!(!accounted(&p.report(3), 0));
        // A pod of another namespace does not make up for it.
        p.observe(&lite(json!({"metadata": {"namespace": "elsewhere", "name": "c"}, "status": {"phase": "Running"}})));
        assert!(!accounted(&p.report(3), 0));
        // A pod of the run still Pending at the end.
        p.observe(&lite(json!({"metadata": {"namespace": "ns", "name": "c"}, "status": {"phase": "Pending"}})));
        assert!(!accounted(&p.report(3), 0));
    }
}
