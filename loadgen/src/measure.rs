//! What a run measures. API calls: one hdrhistogram per (verb, resource), client-side, no
//! per-request records. Pods: one small record per pod (times as seconds since the run
//! started), so every pod is accounted for: Running, failed, or not running when the phase
//! timed out. Startup latency is measured twice: from the server's timestamps
//! (`creationTimestamp` to the `Ready` condition's transition: second resolution, as
//! Kubernetes writes them, and immune to client clock skew) and as the client saw it (create
//! sent to Running watched: millisecond resolution, one clock).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

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
}

/// Pods of the run, by namespace/name.
pub struct Pods {
    start: Instant,
    start_unix: i64,
    m: Mutex<HashMap<String, PodRec>>,
    /// Writes whose watch event is awaited (watch latency): key -> time sent.
    marks: Mutex<HashMap<String, f64>>,
    watch_latency: Mutex<Histogram<u64>>,
}

fn ts(v: &Value) -> Option<i64> {
    v.as_str()?.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

impl Pods {
    pub fn new() -> Pods {
        Pods { start: Instant::now(), start_unix: jiff::Timestamp::now().as_second(), m: Default::default(), marks: Default::default(), watch_latency: Mutex::new(hist()) }
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
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
    pub fn observe(&self, pod: &Value) {
        let key = format!("{}/{}", pod["metadata"]["namespace"].as_str().unwrap_or(""), pod["metadata"]["name"].as_str().unwrap_or(""));
        let now = self.elapsed();
        if pod["metadata"]["labels"]["loadgen-mark"].is_string()
            && let Some(sent) = self.marks.lock().unwrap().remove(&key)
        {
            let _ = self.watch_latency.lock().unwrap().record((((now - sent) * 1e6) as u64).max(1));
        }
        let cond = |ty: &str| pod["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == ty && c["status"] == "True")).and_then(|c| ts(&c["lastTransitionTime"]));
        let mut m = self.m.lock().unwrap();
        let r = m.entry(key).or_default();
        r.created = r.created.or(ts(&pod["metadata"]["creationTimestamp"]));
        r.added_seen = r.added_seen.or(Some(now));
        r.scheduled = r.scheduled.or(cond("PodScheduled"));
        let running = pod["status"]["phase"] == "Running" || pod["status"]["phase"] == "Succeeded";
        if running {
            r.ready = r.ready.or(cond("Ready")).or(ts(&pod["status"]["startTime"]));
            r.running_seen = r.running_seen.or(Some(now));
        }
        if pod["status"]["phase"] == "Failed" {
            r.failed = true;
        }
    }

    /// Pods seen Running (or Succeeded) so far in `ns`.
    pub fn running(&self, ns: &str) -> usize {
        let prefix = format!("{ns}/");
        self.m.lock().unwrap().iter().filter(|(k, r)| k.starts_with(&prefix) && r.running_seen.is_some()).count()
    }

    pub fn report(&self, expected: u64) -> PodReport {
        let m = self.m.lock().unwrap();
        let mut server = hist();
        let mut client = hist();
        let mut sched = hist();
        let (mut running, mut failed, mut pending) = (0u64, 0u64, 0u64);
        let mut over_time: Vec<f64> = Vec::new();
        let mut sched_times: Vec<i64> = Vec::new();
        for r in m.values() {
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
        let seen_total = m.len() as u64;
        let (watch_n, watch_p50, watch_p99) = self.watch_latency();
        PodReport {
            expected,
            seen: seen_total,
            running,
            failed,
            not_running: pending,
            missing: expected.saturating_sub(seen_total),
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

    #[test]
    fn every_pod_is_accounted_for() {
        let p = Pods::new();
        p.sent("ns/a");
        p.observe(&json!({"metadata": {"namespace": "ns", "name": "a", "creationTimestamp": "2026-11-22T00:00:00Z"},
            "status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-22T00:00:00Z"}, {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-22T00:00:01Z"}]}}));
        p.observe(&json!({"metadata": {"namespace": "ns", "name": "b"}, "status": {"phase": "Failed"}}));
        p.observe(&json!({"metadata": {"namespace": "ns", "name": "c"}, "status": {"phase": "Pending"}}));
        let r = p.report(4);
        assert_eq!((r.running, r.failed, r.not_running, r.missing), (1, 1, 1, 1));
        assert_eq!(r.running + r.failed + r.not_running + r.missing, r.expected);
        let s = r.startup_server_p99_s.unwrap();
        assert!((1.0..1.001).contains(&s), "{s}");
        assert_eq!(p.running("ns"), 1);
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
