//! Every attempt timed, without sampling, per extension point and per plugin, into
//! hdrhistograms (nanoseconds, 3 significant digits); rendered for Prometheus with buckets
//! from 1 µs to 10 s (kube-scheduler's stop near 22 ms for plugins and are sampled).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::framework::{Candidates, Timings};

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

pub struct Metrics {
    attempts: BTreeMap<&'static str, Histogram<u64>>,
    extension: BTreeMap<&'static str, Histogram<u64>>,
    plugin: BTreeMap<(&'static str, &'static str), Histogram<u64>>,
    queue_wait: Histogram<u64>,
    bind: Histogram<u64>,
    e2e: Histogram<u64>,
    pending: [usize; 4],
    /// Restarts of the scheduling thread after a panic.
    pub restarts: u64,
    /// Attempts by where their candidate nodes came from, and how many reused their class's
    /// static filter results.
    candidates: [u64; 4],
    static_reused: u64,
    parallel: u64,
}

/// 1, 2, 5 per decade from 1 µs to 10 s, in nanoseconds.
fn bounds() -> Vec<u64> {
    let mut v = Vec::new();
    let mut d = 1_000u64;
    while d <= 10_000_000_000 {
        for m in [1, 2, 5] {
            if d * m <= 10_000_000_000 {
                v.push(d * m);
            }
        }
        d *= 10;
    }
    v
}

fn ns(d: Duration) -> u64 {
    (d.as_nanos() as u64).max(1)
}

fn render_hist(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>) {
    let sep = if labels.is_empty() { "" } else { "," };
    for le_ns in bounds() {
        let count = h.count_between(0, le_ns);
        let b = le_ns as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.len());
    let sum: f64 = h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum::<f64>() / 1e9;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

/// One histogram (nanoseconds) as count, p50/p90/p99/max in µs, and with `buckets` its
/// counts per bucket of `bounds()` as `[upper bound µs, count]` pairs.
pub fn summarize(h: &Histogram<u64>, buckets: bool) -> serde_json::Value {
    let us = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
    let mut v = serde_json::json!({
        "count": h.len(),
        "p50_us": us(0.5),
        "p90_us": us(0.9),
        "p99_us": us(0.99),
        "max_us": if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
    });
    if buckets {
        let mut below = 0;
        let list: Vec<serde_json::Value> = bounds()
            .into_iter()
            .map(|le| {
                let upto = h.count_between(0, le);
                let n = upto - below;
                below = upto;
                serde_json::json!([le as f64 / 1000.0, n])
            })
            .collect();
        v["buckets"] = serde_json::Value::Array(list);
    }
    v
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics { attempts: BTreeMap::new(), extension: BTreeMap::new(), plugin: BTreeMap::new(), queue_wait: hist(), bind: hist(), e2e: hist(), pending: [0; 4], restarts: 0, candidates: [0; 4], static_reused: 0, parallel: 0 }
    }

    pub fn attempt(&mut self, result: &'static str, d: Duration) {
        let _ = self.attempts.entry(result).or_insert_with(hist).record(ns(d));
    }

    pub fn cycle(&mut self, t: &Timings, result: &'static str, queue_wait: Duration) {
        self.attempt(result, t.total);
        self.candidates[t.candidates.index()] += 1;
        self.static_reused += u64::from(t.static_reused);
        self.parallel += u64::from(t.parallel);
        if !t.diagnose.is_zero() {
            let _ = self.extension.entry("Diagnose").or_insert_with(hist).record(ns(t.diagnose));
        }
        let _ = self.queue_wait.record(ns(queue_wait));
        let _ = self.extension.entry("PreFilter").or_insert_with(hist).record(ns(t.pre_filter));
        let f: Duration = t.filter.iter().map(|(_, d)| *d).sum();
        let s: Duration = t.score.iter().map(|(_, d)| *d).sum();
        let _ = self.extension.entry("Filter").or_insert_with(hist).record(ns(f));
        if !t.score.is_empty() {
            let _ = self.extension.entry("Score").or_insert_with(hist).record(ns(s));
        }
        for (p, d) in &t.filter {
            let _ = self.plugin.entry((p.name(), "Filter")).or_insert_with(hist).record(ns(*d));
        }
        for (p, d) in &t.score {
            let _ = self.plugin.entry((p.name(), "Score")).or_insert_with(hist).record(ns(*d));
        }
    }

    pub fn bind(&mut self, d: Duration) {
        let _ = self.bind.record(ns(d));
        let _ = self.extension.entry("Bind").or_insert_with(hist).record(ns(d));
    }

    pub fn e2e(&mut self, d: Duration) {
        let _ = self.e2e.record(ns(d));
    }

    pub fn pending(&mut self, d: [usize; 4]) {
        self.pending = d;
    }

    /// Every histogram summarized (count and quantiles in µs, with bucket counts for the
    /// extension points), and the queues: the dashboard's view.
    pub fn summary(&self) -> serde_json::Value {
        use serde_json::json;
        let attempts: serde_json::Map<String, serde_json::Value> = self.attempts.iter().map(|(r, h)| (r.to_string(), summarize(h, false))).collect();
        let total: u64 = self.attempts.values().map(|h| h.len()).sum();
        let ext: Vec<serde_json::Value> = self.extension.iter().map(|(e, h)| {
            let mut v = summarize(h, true);
            v["name"] = json!(e);
            v
        }).collect();
        let plugins: Vec<serde_json::Value> = self.plugin.iter().map(|((p, e), h)| {
            let mut v = summarize(h, false);
            v["plugin"] = json!(p);
            v["extension_point"] = json!(e);
            v
        }).collect();
        json!({
            "attempts_total": total,
            "attempts": attempts,
            "extension_points": ext,
            "plugins": plugins,
            "queue_wait": summarize(&self.queue_wait, false),
            "e2e": summarize(&self.e2e, false),
            "bind": summarize(&self.bind, false),
            "pending": {"active": self.pending[0], "backoff": self.pending[1], "unschedulable": self.pending[2], "inflight": self.pending[3]},
            "restarts": self.restarts,
        })
    }

    /// (count, p50, p99) of attempts in microseconds, for benchmarks.
    pub fn attempt_summary(&self, result: &str) -> Option<(u64, u64, u64)> {
        let h = self.attempts.get(result)?;
        Some((h.len(), h.value_at_quantile(0.5) / 1000, h.value_at_quantile(0.99) / 1000))
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP scheduler_scheduling_attempt_duration_seconds Scheduling attempt latency (the algorithm, not binding), every attempt.\n# TYPE scheduler_scheduling_attempt_duration_seconds histogram\n");
        for (r, h) in &self.attempts {
            render_hist(&mut out, "scheduler_scheduling_attempt_duration_seconds", &format!("result=\"{r}\",profile=\"default-scheduler\""), h);
        }
        out.push_str("# HELP scheduler_framework_extension_point_duration_seconds Latency per extension point, every attempt.\n# TYPE scheduler_framework_extension_point_duration_seconds histogram\n");
        for (e, h) in &self.extension {
            render_hist(&mut out, "scheduler_framework_extension_point_duration_seconds", &format!("extension_point=\"{e}\",profile=\"default-scheduler\""), h);
        }
        out.push_str("# HELP scheduler_plugin_execution_duration_seconds Time per plugin and extension point over all nodes of an attempt, every attempt.\n# TYPE scheduler_plugin_execution_duration_seconds histogram\n");
        for ((p, e), h) in &self.plugin {
            render_hist(&mut out, "scheduler_plugin_execution_duration_seconds", &format!("plugin=\"{p}\",extension_point=\"{e}\""), h);
        }
        out.push_str("# HELP scheduler_queue_wait_duration_seconds Time in the active queue before an attempt.\n# TYPE scheduler_queue_wait_duration_seconds histogram\n");
        render_hist(&mut out, "scheduler_queue_wait_duration_seconds", "", &self.queue_wait);
        out.push_str("# HELP scheduler_pod_scheduling_sli_duration_seconds From first seen pending to bound.\n# TYPE scheduler_pod_scheduling_sli_duration_seconds histogram\n");
        render_hist(&mut out, "scheduler_pod_scheduling_sli_duration_seconds", "", &self.e2e);
        out.push_str("# HELP scheduler_pending_pods Pods waiting, by queue.\n# TYPE scheduler_pending_pods gauge\n");
        for (i, q) in ["active", "backoff", "unschedulable", "inflight"].iter().enumerate() {
            let _ = writeln!(out, "scheduler_pending_pods{{queue=\"{q}\"}} {}", self.pending[i]);
        }
        out.push_str("# HELP capstan_scheduler_candidates_total Attempts by where their candidate nodes came from.\n# TYPE capstan_scheduler_candidates_total counter\n");
        for (i, s) in Candidates::LABELS.iter().enumerate() {
            let _ = writeln!(out, "capstan_scheduler_candidates_total{{source=\"{s}\"}} {}", self.candidates[i]);
        }
        let _ = writeln!(out, "# HELP capstan_scheduler_static_filter_reuse_total Attempts that reused their class's static filter results.\n# TYPE capstan_scheduler_static_filter_reuse_total counter\ncapstan_scheduler_static_filter_reuse_total {}", self.static_reused);
        let _ = writeln!(out, "# HELP capstan_scheduler_parallel_cycles_total Attempts filtered on the worker pool.\n# TYPE capstan_scheduler_parallel_cycles_total counter\ncapstan_scheduler_parallel_cycles_total {}", self.parallel);
        let _ = writeln!(out, "# HELP capstan_scheduler_restarts_total Restarts of the scheduling thread after a panic.\n# TYPE capstan_scheduler_restarts_total counter\ncapstan_scheduler_restarts_total {}", self.restarts);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_gives_quantiles_in_microseconds_and_bucket_counts() {
        let mut h = hist();
        for us in 1..=100u64 {
            h.record(us * 1000).unwrap();
        }
        let s = summarize(&h, true);
        assert_eq!(s["count"], 100);
        // Three significant digits: each within 0.1% of the value recorded.
        for (q, want) in [("p50_us", 50.0), ("p90_us", 90.0), ("p99_us", 99.0), ("max_us", 100.0)] {
            let got = s[q].as_f64().unwrap();
            assert!((got - want).abs() <= want * 0.001, "{q}: {got}");
        }
        let b = s["buckets"].as_array().unwrap();
        // (0, 1 µs]: 1; (1, 2]: 1; (2, 5]: 3; (5, 10]: 5; (10, 20]: 10; (20, 50]: 30; (50, 100]: 50.
        let counts: Vec<u64> = b.iter().take(7).map(|x| x[1].as_u64().unwrap()).collect();
        assert_eq!(counts, vec![1, 1, 3, 5, 10, 30, 50]);
        assert_eq!(b.iter().map(|x| x[1].as_u64().unwrap()).sum::<u64>(), 100);
        let empty = summarize(&hist(), false);
        assert_eq!((empty["count"].as_u64(), empty["p99_us"].as_f64()), (Some(0), Some(0.0)));
        assert!(empty.get("buckets").is_none());
    }

    #[test]
    fn buckets_span_a_microsecond_to_ten_seconds() {
        let b = bounds();
        assert_eq!(b[0], 1_000);
        assert_eq!(*b.last().unwrap(), 10_000_000_000);
        assert_eq!(b.len(), 22);
        let mut m = Metrics::new();
        let mut t = Timings::default();
        t.total = Duration::from_micros(3);
        m.cycle(&t, "scheduled", Duration::from_millis(1));
        let r = m.render();
        assert!(r.contains("scheduler_scheduling_attempt_duration_seconds_bucket{result=\"scheduled\",profile=\"default-scheduler\",le=\"0.000002\"} 0"), "{r}");
        assert!(r.contains("scheduler_scheduling_attempt_duration_seconds_bucket{result=\"scheduled\",profile=\"default-scheduler\",le=\"0.000005\"} 1"));
    }
}
