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
