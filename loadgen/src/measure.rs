//! What a run measures. API calls: one hdrhistogram per (verb, resource), client-side, no
//! per-request records. Pods: one small record per pod (times as seconds since the run
//! started), so every pod is accounted for: Running, failed, not running when the phase
//! timed out, or never seen. Only the run's own pods count: those in the namespaces its phases
//! create pods in. Startup latency is measured twice: from the server's timestamps
//! (`creationTimestamp` to the `Ready` condition's transition: second resolution, as
//! Kubernetes writes them, and immune to client clock skew) and as the client saw it (create
//! sent to Running watched: millisecond resolution, one clock).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

#[derive(Default)]
pub struct ApiStats {
    h: Mutex<BTreeMap<(String, String), (Histogram<u64>, u64)>>,
}

impl ApiStats {
    /// Records one call of `verb` on `resource` that took `d`; `ok` false counts an error.
    pub fn record(&self, verb: &str, resource: &str, d: Duration, ok: bool) {
        let mut h = self.h.lock().unwrap();
        let e = h.entry((verb.to_string(), resource.to_string())).or_insert_with(|| (hist(), 0));
        let _ = e.0.record(d.as_micros().max(1) as u64);
        if !ok {
            e.1 += 1;
        }
    }

    pub fn summary(&self) -> Vec<ApiLine> {
        self.h
            .lock()
            .unwrap()
            .iter()
            .map(|((verb, res), (h, errors))| ApiLine {
                verb: verb.clone(),
                resource: res.clone(),
                count: h.len(),
                errors: *errors,
                p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                p90_ms: h.value_at_quantile(0.9) as f64 / 1000.0,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                max_ms: h.max() as f64 / 1000.0,
                buckets: buckets(h),
            })
            .collect()
    }
}

/// (upper bound ms, count) for the report's histogram plot: 1-2-5 steps from 0.1 ms; each
/// recorded value counted once, in the first bucket that holds it.
fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut bounds = Vec::new();
    let mut b = 100u64;
    while b <= 3_600_000_000 {
        for m in [1, 2, 5] {
            bounds.push(b * m);
        }
        if b * 5 >= h.max() {
            break;
        }
        b *= 10;
    }
    let mut counts = vec![0u64; bounds.len()];
    for v in h.iter_recorded() {
        let x = h.highest_equivalent(v.value_iterated_to());
        let i = bounds.iter().position(|ub| *ub >= x).unwrap_or(bounds.len() - 1);
        counts[i] += v.count_at_value();
    }
    bounds.into_iter().map(|ub| ub as f64 / 1000.0).zip(counts).collect()
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ApiLine {
    pub verb: String,
    pub resource: String,
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Clone, Debug, Default)]
struct PodRec {
    sent: Option<f64>,
    added_seen: Option<f64>,
    created: Option<i64>,
    scheduled: Option<i64>,
    ready: Option<i64>,
    running_seen: Option<f64>,
    failed: bool,
    deleted: bool,
}

/// Pods of the run, by namespace/name.
pub struct Pods {
    start: Instant,
    start_unix: i64,
    m: Mutex<HashMap<String, PodRec>>,
    /// Pods seen Running, by namespace (what waitPodsRunning polls).
    running_in: Mutex<HashMap<String, usize>>,
    /// The namespaces the run creates pods in; pods elsewhere are not the run's.
    namespaces: Mutex<HashSet<String>>,
    /// Writes whose watch event is awaited (watch latency): key -> time sent.
    marks: Mutex<HashMap<String, f64>>,
    watch_latency: Mutex<Histogram<u64>>,
}

fn ts(v: &Option<String>) -> Option<i64> {
    v.as_deref()?.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// The fields of a pod the accounting reads, decoded from each watch event without building
/// the rest (spec, managedFields): the watch is of every pod of the run, so its cost counts
/// in the run's CPU.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PodLite {
    #[serde(default)]
    pub metadata: MetaLite,
    /// A pod's status; an ERROR event's object is a `Status`, whose `status` is a string.
    #[serde(default, deserialize_with = "pod_status")]
    pub status: StatusLite,
}

fn pod_status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StatusLite, D::Error> {
    client::decode::object_or_none(d).map(Option::unwrap_or_default)
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaLite {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    pub creation_timestamp: Option<String>,
    pub resource_version: Option<String>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusLite {
    #[serde(default)]
    pub phase: String,
    pub start_time: Option<String>,
    #[serde(default)]
    pub conditions: Vec<ConditionLite>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLite {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    pub last_transition_time: Option<String>,
}

/// A watch event of a pod.
#[derive(Debug, serde::Deserialize)]
pub struct PodEvent {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub object: PodLite,
}

impl Pods {
    pub fn new() -> Pods {
        Pods { start: Instant::now(), start_unix: jiff::Timestamp::now().as_second(), m: Default::default(), running_in: Default::default(), namespaces: Default::default(), marks: Default::default(), watch_latency: Mutex::new(hist()) }
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The run creates pods in `ns`: from now on its pods are accounted for.
    pub fn own(&self, ns: &str) {
        self.namespaces.lock().unwrap().insert(ns.to_string());
    }

    fn is_own(&self, key: &str) -> bool {
        key.split_once('/').is_some_and(|(ns, _)| self.namespaces.lock().unwrap().contains(ns))
    }

    /// A pod create request is being sent (bare pods only; controller-made pods have none).
    pub fn sent(&self, key: &str) {
        let t = self.elapsed();
        self.m.lock().unwrap().entry(key.to_string()).or_default().sent = Some(t);
    }

    /// A write marking `key` (label `loadgen-mark`) is being sent; its watch event times the
    /// watch path.
    pub fn mark_sent(&self, key: &str) {
        let t = self.elapsed();
        self.marks.lock().unwrap().insert(key.to_string(), t);
    }

    /// Whether a mark's watch event is still awaited.
    pub fn marked(&self, key: &str) -> bool {
        self.marks.lock().unwrap().contains_key(key)
    }

    /// (count, p50 ms, p99 ms) of write-to-watch-event latency.
    pub fn watch_latency(&self) -> (u64, Option<f64>, Option<f64>) {
        let h = self.watch_latency.lock().unwrap();
        if h.is_empty() {
            return (0, None, None);
        }
        (h.len(), Some(h.value_at_quantile(0.5) as f64 / 1000.0), Some(h.value_at_quantile(0.99) as f64 / 1000.0))
    }

    /// A watch event about a pod.
    pub fn observe(&self, pod: &PodLite) {
        let (meta, status) = (&pod.metadata, &pod.status);
        let key = format!("{}/{}", meta.namespace, meta.name);
        if !self.is_own(&key) {
            return;
        }
        let now = self.elapsed();
        if meta.labels.contains_key("loadgen-mark")
            && let Some(sent) = self.marks.lock().unwrap().remove(&key)
        {
            let _ = self.watch_latency.lock().unwrap().record((((now - sent) * 1e6) as u64).max(1));
        }
        let cond = |ty: &str| status.conditions.iter().find(|c| c.type_ == ty && c.status == "True").and_then(|c| ts(&c.last_transition_time));
        let mut m = self.m.lock().unwrap();
        let r = m.entry(key).or_default();
        r.created = r.created.or(ts(&meta.creation_timestamp));
        r.added_seen = r.added_seen.or(Some(now));
        r.scheduled = r.scheduled.or(cond("PodScheduled"));
        if status.phase == "Running" || status.phase == "Succeeded" {
            r.ready = r.ready.or(cond("Ready")).or(ts(&status.start_time));
            if r.running_seen.is_none() {
                r.running_seen = Some(now);
                *self.running_in.lock().unwrap().entry(meta.namespace.clone()).or_default() += 1;
            }
        }
        if status.phase == "Failed" {
            r.failed = true;
        }
    }

    /// A watch event deleting a pod: if it never ran, it is not counted as "not running".
    pub fn deleted(&self, pod: &PodLite) {
        let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
        if self.is_own(&key) {
            let now = self.elapsed();
            let mut m = self.m.lock().unwrap();
            let r = m.entry(key).or_default();
            r.added_seen = r.added_seen.or(Some(now));
            r.deleted = true;
        }
    }

    /// Pods seen Running (or Succeeded) so far in `ns`.
    pub fn running(&self, ns: &str) -> usize {
        self.running_in.lock().unwrap().get(ns).copied().unwrap_or(0)
    }

    pub fn report(&self, expected: u64) -> PodReport {
        let m = self.m.lock().unwrap();
        let mut server = hist();
        let mut client = hist();
        let mut sched = hist();
        let (mut running, mut failed, mut pending, mut deleted, mut seen_total, mut sent_unseen) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        let mut over_time: Vec<f64> = Vec::new();
        let mut sched_times: Vec<i64> = Vec::new();
        for r in m.values() {
            // A create this run sent whose pod no watch event ever showed.
            if r.added_seen.is_none() {
                sent_unseen += 1;
                continue;
            }
            seen_total += 1;
            if let Some(s) = r.scheduled {
                sched_times.push(s);
            }
            if r.running_seen.is_some() {
                running += 1;
                over_time.push(r.running_seen.unwrap_or(0.0));
                if let (Some(c), Some(rd)) = (r.created, r.ready) {
                    let _ = server.record((((rd - c).max(0) as u64) * 1000).max(1));
                }
                if let (Some(c), Some(s)) = (r.created, r.scheduled) {
                    let _ = sched.record((((s - c).max(0) as u64) * 1000).max(1));
                }
                // From the create request when this run sent it, else from the pod's first
                // watch event (controller-made pods).
                if let (Some(s), Some(seen)) = (r.sent.or(r.added_seen), r.running_seen) {
                    let _ = client.record(((seen - s).max(0.0) * 1000.0) as u64 + 1);
                }
            } else if r.failed {
                failed += 1;
            } else if r.deleted {
                deleted += 1;
            } else {
                pending += 1;
            }
        }
        over_time.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        sched_times.sort();
        let q = |h: &Histogram<u64>, x: f64| if h.is_empty() { None } else { Some(h.value_at_quantile(x) as f64 / 1000.0) };
        // Scheduling throughput: pods scheduled per second between the first and the last.
        let sched_rate = match (sched_times.first(), sched_times.last()) {
            (Some(a), Some(b)) if b > a => Some(sched_times.len() as f64 / (b - a) as f64),
            _ => None,
        };
        let (watch_n, watch_p50, watch_p99) = self.watch_latency();
        PodReport {
            expected,
            seen: seen_total,
            running,
            failed,
            not_running: pending,
            deleted_before_running: deleted,
            missing: expected.saturating_sub(seen_total).max(sent_unseen),
            startup_server_p50_s: q(&server, 0.5),
            startup_server_p99_s: q(&server, 0.99),
            startup_server_resolution_s: 1.0,
            startup_client_p50_s: q(&client, 0.5),
            startup_client_p99_s: q(&client, 0.99),
            startup_client_count: client.len(),
            schedule_server_p99_s: q(&sched, 0.99),
            scheduling_pods_per_s: sched_rate,
            running_over_time: downsample(&over_time, 200),
            start_unix: self.start_unix,
            watch_event_count: watch_n,
            watch_event_p50_ms: watch_p50,
            watch_event_p99_ms: watch_p99,
        }
    }
}

impl Default for Pods {
    fn default() -> Self {
        Pods::new()
    }
}

/// (seconds since start, pods running) points, at most `n`.
fn downsample(sorted: &[f64], n: usize) -> Vec<(f64, u64)> {
    if sorted.is_empty() {
        return vec![];
    }
    let step = sorted.len().div_ceil(n).max(1);
    let mut v: Vec<(f64, u64)> = sorted.iter().enumerate().filter(|(i, _)| i % step == 0).map(|(i, t)| (*t, i as u64 + 1)).collect();
    v.push((*sorted.last().unwrap(), sorted.len() as u64));
    v
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PodReport {
    pub expected: u64,
    pub seen: u64,
    pub running: u64,
    pub failed: u64,
    pub not_running: u64,
    /// Pods deleted (by their controller or the run) before they were seen Running.
    #[serde(default)]
    pub deleted_before_running: u64,
    /// Pods expected but never seen (fewer seen than expected, or creates sent and never seen).
    pub missing: u64,
    pub startup_server_p50_s: Option<f64>,
    pub startup_server_p99_s: Option<f64>,
    pub startup_server_resolution_s: f64,
    pub startup_client_p50_s: Option<f64>,
    pub startup_client_p99_s: Option<f64>,
    pub startup_client_count: u64,
    pub schedule_server_p99_s: Option<f64>,
    pub scheduling_pods_per_s: Option<f64>,
    pub running_over_time: Vec<(f64, u64)>,
    pub start_unix: i64,
    /// Write sent to its watch event received (churnPods' label patches), ms.
    pub watch_event_count: u64,
    pub watch_event_p50_ms: Option<f64>,
    pub watch_event_p99_ms: Option<f64>,
}

/// The server's request latency histogram for mutating calls (every client's, every
/// component's), summed over resources: (upper bound in seconds, cumulative count), from
/// Prometheus text (`apiserver_request_duration_seconds_bucket`).
pub fn mutating_buckets(metrics: &str) -> Vec<(f64, u64)> {
    const MUTATING: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
    let mut by_le: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_duration_seconds_bucket{") else { continue };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let label = |k: &str| labels.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"'));
        if !label("verb").is_some_and(|v| MUTATING.contains(&v)) {
            continue;
        }
        let le = match label("le") {
            Some("+Inf") => f64::INFINITY,
            Some(x) => match x.parse::<f64>() {
                Ok(x) => x,
                Err(_) => continue,
            },
            None => continue,
        };
        let Ok(n) = value.trim().parse::<f64>() else { continue };
        // Keyed by the bound's bits: the bounds are the same for every series.
        by_le.entry(le.to_bits()).or_insert((le, 0)).1 += n as u64;
    }
    let mut v: Vec<(f64, u64)> = by_le.into_values().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The smallest bucket bound under which `q` of the calls between two scrapes fell: an upper
/// bound of the quantile (the histogram's resolution). None without calls.
pub fn quantile_bound(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<(f64, u64)> {
    let at = |v: &[(f64, u64)], le: f64| v.iter().find(|(b, _)| *b == le).map_or(0, |x| x.1);
    let delta: Vec<(f64, u64)> = after.iter().map(|(le, n)| (*le, n.saturating_sub(at(before, *le)))).collect();
    let total = delta.iter().find(|(le, _)| le.is_infinite())?.1;
    if total == 0 {
        return None;
    }
    delta.iter().find(|(_, n)| *n as f64 >= q * total as f64).map(|(le, _)| (*le, total))
}

/// This process's resident memory now, in bytes.
pub fn current_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap_or(0) * 1024))
        .unwrap_or(0)
}

/// Samples this process's CPU (cores, over each second) and RSS every second until aborted;
/// `out` holds at most `OVER_TIME_MAX` of each (the oldest half thinned when full).
pub async fn sample_usage(started: std::time::Instant, out: std::sync::Arc<std::sync::Mutex<crate::report::OverTime>>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last: Option<(f64, f64)> = None;
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let (cpu, _) = process_usage();
        let mut o = out.lock().unwrap();
        if let Some((t0, c0)) = last
            && t > t0
        {
            push_bounded(&mut o.cpu_cores, (t, (cpu - c0).max(0.0) / (t - t0)));
        }
        push_bounded(&mut o.rss_bytes, (t, current_rss() as f64));
        last = Some((t, cpu));
    }
}

/// Points kept per series over a run (a long run keeps every other point of its first half).
pub const OVER_TIME_MAX: usize = 400;

fn push_bounded(v: &mut Vec<(f64, f64)>, p: (f64, f64)) {
    if v.len() >= OVER_TIME_MAX {
        let half = v.len() / 2;
        let thinned: Vec<(f64, f64)> = v[..half].iter().step_by(2).copied().chain(v[half..].iter().copied()).collect();
        *v = thinned;
    }
    v.push(p);
}

/// This process's CPU seconds and peak RSS (the control plane too, when embedded).
pub fn process_usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0) + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap_or(0) * 1024))
        .unwrap_or(0);
    (ticks as f64 / 100.0, hwm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lite(v: serde_json::Value) -> PodLite {
        serde_json::from_value(v).expect("a pod")
    }

    #[test]
    fn every_pod_is_accounted_for() {
        let p = Pods::new();
        p.own("ns");
        p.sent("ns/a");
        p.observe(&lite(json!({"metadata": {"namespace": "ns", "name": "a", "creationTimestamp": "2026-11-22T00:00:00Z"},
            "status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-22T00:00:00Z"}, {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-22T00:00:01Z"}]}})));
        p.observe(&lite(json!({"metadata": {"namespace": "ns", "name": "b"}, "status": {"phase": "Failed"}})));
        p.observe(&lite(json!({"metadata": {"namespace": "ns", "name": "c"}, "status": {"phase": "Pending"}})));
        let r = p.report(4);
        assert_eq!((r.running, r.failed, r.not_running, r.missing), (1, 1, 1, 1));
        assert_eq!(r.running + r.failed + r.not_running + r.missing, r.expected);
        let s = r.startup_server_p99_s.unwrap();
        assert!((1.0..1.001).contains(&s), "{s}");
        assert_eq!(p.running("ns"), 1);
    }

    #[test]
    fn an_error_event_decodes() {
        let e: PodEvent = serde_json::from_str(r#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","code":410}}"#).expect("an ERROR event");
        assert_eq!(e.type_, "ERROR");
    }

    #[test]
    fn a_create_never_seen_is_missing_and_other_namespaces_do_not_count() {
        let p = Pods::new();
        p.own("ns");
        let running = |name: &str, ns: &str| lite(json!({"metadata": {"namespace": ns, "name": name}, "status": {"phase": "Running"}}));
        p.sent("ns/a");
        p.sent("ns/b");
        p.observe(&running("a", "ns"));
        // Not the run's pods: they must not stand in for b.
        p.observe(&running("x", "kube-system"));
        p.observe(&running("y", "other"));
        let r = p.report(2);
        assert_eq!((r.seen, r.running, r.missing), (1, 1, 1));
        // A pod deleted before it ran is neither running nor pending.
        p.observe(&lite(json!({"metadata": {"namespace": "ns", "name": "b"}, "status": {"phase": "Pending"}})));
        p.deleted(&lite(json!({"metadata": {"namespace": "ns", "name": "b"}})));
        let r = p.report(2);
        assert_eq!((r.seen, r.running, r.not_running, r.deleted_before_running, r.missing), (2, 1, 0, 1, 0));
    }

    #[test]
    fn the_server_histogram_gives_a_bound_on_the_p99_of_mutating_calls() {
        // Cumulative counts at le 0.05, 0.1, 1, +Inf; reads never count.
        let scrape = |c: [u64; 4]| {
            let mut t = String::new();
            for (le, n) in ["0.05", "0.1", "1", "+Inf"].iter().zip(c) {
                t += &format!("apiserver_request_duration_seconds_bucket{{verb=\"create\",resource=\"pods\",le=\"{le}\"}} {n}\n");
            }
            t + "apiserver_request_duration_seconds_bucket{verb=\"get\",resource=\"pods\",le=\"+Inf\"} 1000000\n"
        };
        let before = mutating_buckets(&scrape([100, 100, 100, 100]));
        // Since: 500 within 50 ms, 990 within 100 ms, 1,000 in all: the p99 is within 0.1 s.
        assert_eq!(quantile_bound(&before, &mutating_buckets(&scrape([600, 1090, 1100, 1100])), 0.99), Some((0.1, 1000)));
        // 980 within 100 ms: it is not.
        assert_eq!(quantile_bound(&before, &mutating_buckets(&scrape([600, 1080, 1100, 1100])), 0.99), Some((1.0, 1000)));
        assert_eq!(quantile_bound(&before, &before, 0.99), None);
    }

    #[test]
    fn api_percentiles_are_ordered() {
        let a = ApiStats::default();
        for i in 1..=1000 {
            a.record("create", "pods", Duration::from_micros(i * 10), i % 100 != 0);
        }
        let s = &a.summary()[0];
        assert_eq!((s.count, s.errors), (1000, 10));
        assert!(s.p50_ms <= s.p90_ms && s.p90_ms <= s.p99_ms && s.p99_ms <= s.max_ms);
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 1000);
    }
}
