//! Prometheus metrics: request counts and latency histograms by verb and resource, buckets from
//! 100 µs to 60 s, and requests in flight. Rendered in the text exposition format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// One (verb, resource): its latency histogram and its requests by HTTP code.
struct Series {
    buckets: [u64; LATENCY_BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
    codes: Vec<(u16, u64)>,
}

#[derive(Default)]
pub struct Metrics {
    /// verb -> resource -> series: looked up with the request's borrowed names, so a request
    /// allocates nothing here once its (verb, resource) has been seen.
    series: Mutex<HashMap<String, HashMap<String, Series>>>,
    pub inflight: AtomicI64,
    /// Watches from a revision older than the watch cache's ring, served from the store's
    /// history (each event decoded and encoded for that watcher alone).
    pub watches_from_store: AtomicU64,
    /// ... of which moved to the cache once its ring reached back to them.
    /// (Shared with the streams that count it.)
    pub watches_handed_to_cache: std::sync::Arc<AtomicU64>,
    /// Requests RBAC refused (403).
    pub forbidden: AtomicU64,
    /// Admission webhook calls that failed (could not connect, timed out, answered nonsense),
    /// whatever their failurePolicy made of it.
    pub webhook_failures: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        let s = took.as_secs_f64();
        let mut all = self.series.lock().unwrap();
        if !all.get(verb).is_some_and(|m| m.contains_key(resource)) {
            let e = Series { buckets: [0; LATENCY_BUCKETS_S.len()], count: 0, sum_s: 0.0, codes: Vec::new() };
            all.entry(verb.to_string()).or_default().insert(resource.to_string(), e);
        }
        let e = all.get_mut(verb).and_then(|m| m.get_mut(resource)).expect("inserted above");
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *b {
                e.buckets[i] += 1;
            }
        }
        e.count += 1;
        e.sum_s += s;
        match e.codes.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => e.codes.push((code, 1)),
        }
    }

    /// Requests and their summed latency (seconds) per verb, over every resource.
    pub fn by_verb(&self) -> Vec<(String, u64, f64)> {
        let all = self.series.lock().unwrap();
        let mut v: Vec<(String, u64, f64)> = all.iter().map(|(verb, m)| (verb.clone(), m.values().map(|s| s.count).sum(), m.values().map(|s| s.sum_s).sum())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let all = self.series.lock().unwrap();
        let mut keys: Vec<(&String, &String)> = all.iter().flat_map(|(v, m)| m.keys().map(move |r| (v, r))).collect();
        keys.sort();
        out += "# HELP apiserver_request_total Requests by verb, resource and HTTP code.\n# TYPE apiserver_request_total counter\n";
        for (verb, res) in &keys {
            let mut codes = all[*verb][*res].codes.clone();
            codes.sort();
            for (code, n) in codes {
                let _ = writeln!(out, "apiserver_request_total{{verb=\"{verb}\",resource=\"{res}\",code=\"{code}\"}} {n}");
            }
        }
        out += "# HELP apiserver_request_duration_seconds Request latency by verb and resource.\n# TYPE apiserver_request_duration_seconds histogram\n";
        for k in keys {
            let s = &all[k.0][k.1];
            for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
                let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{verb=\"{}\",resource=\"{}\",le=\"{b}\"}} {}", k.0, k.1, s.buckets[i]);
            }
            let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{verb=\"{}\",resource=\"{}\",le=\"+Inf\"}} {}", k.0, k.1, s.count);
            let _ = writeln!(out, "apiserver_request_duration_seconds_sum{{verb=\"{}\",resource=\"{}\"}} {}", k.0, k.1, s.sum_s);
            let _ = writeln!(out, "apiserver_request_duration_seconds_count{{verb=\"{}\",resource=\"{}\"}} {}", k.0, k.1, s.count);
        }
        let _ = writeln!(out, "# HELP apiserver_current_inflight_requests Requests being served.\n# TYPE apiserver_current_inflight_requests gauge\napiserver_current_inflight_requests {}", self.inflight.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP apiserver_watches_from_store_total Watches older than the watch cache's ring, served from the store's history.\n# TYPE apiserver_watches_from_store_total counter\napiserver_watches_from_store_total {}",
            self.watches_from_store.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP apiserver_watches_handed_to_cache_total Watches served from the store's history that moved to the watch cache once its ring reached back to them.\n# TYPE apiserver_watches_handed_to_cache_total counter\napiserver_watches_handed_to_cache_total {}",
            self.watches_handed_to_cache.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP apiserver_forbidden_requests_total Requests the authorizer (RBAC) refused.\n# TYPE apiserver_forbidden_requests_total counter\napiserver_forbidden_requests_total {}",
            self.forbidden.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP apiserver_admission_webhook_failures_total Admission webhook calls that failed (connection, timeout, malformed answer), whatever their failurePolicy.\n# TYPE apiserver_admission_webhook_failures_total counter\napiserver_admission_webhook_failures_total {}",
            self.webhook_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP capstan_in_process_requests_total Requests from this process's own components, served through calls instead of loopback connections.\n# TYPE capstan_in_process_requests_total counter\ncapstan_in_process_requests_total {}",
            crate::in_process::requests()
        );
        render_process(&mut out);
        out
    }
}

/// Prometheus' standard process collector (the names client_golang's has), read from /proc,
/// plus the peak RSS (`VmHWM`), which it lacks and loadgen's `--server` reports need.
fn render_process(out: &mut String) {
    let Some(p) = process_usage() else { return };
    let _ = writeln!(out, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}", p.cpu_seconds);
    let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}", p.rss_bytes);
    let _ = writeln!(out, "# HELP capstan_process_peak_resident_memory_bytes Peak resident memory size in bytes (VmHWM).\n# TYPE capstan_process_peak_resident_memory_bytes gauge\ncapstan_process_peak_resident_memory_bytes {}", p.peak_rss_bytes);
}

/// This process's CPU time and memory, from /proc.
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

pub fn process_usage() -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which may itself hold spaces and parentheses.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).map(|k| k * 1024);
    // USER_HZ is 100 on every Linux this runs on (sysconf(_SC_CLK_TCK)).
    Some(ProcessUsage { cpu_seconds: ticks as f64 / 100.0, rss_bytes: kb("VmRSS:")?, peak_rss_bytes: kb("VmHWM:")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_code_and_timed() {
        let m = Metrics::default();
        m.observe("create", "pods", 201, Duration::from_millis(3));
        m.observe("create", "pods", 409, Duration::from_millis(30));
        m.observe("get", "pods", 200, Duration::from_micros(50));
        let text = m.render();
        for line in [
            r#"apiserver_request_total{verb="create",resource="pods",code="201"} 1"#,
            r#"apiserver_request_total{verb="create",resource="pods",code="409"} 1"#,
            r#"apiserver_request_total{verb="get",resource="pods",code="200"} 1"#,
            r#"apiserver_request_duration_seconds_bucket{verb="create",resource="pods",le="0.005"} 1"#,
            r#"apiserver_request_duration_seconds_bucket{verb="create",resource="pods",le="0.05"} 2"#,
            r#"apiserver_request_duration_seconds_count{verb="get",resource="pods"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn the_process_collector_is_rendered() {
        let text = Metrics::default().render();
        let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).and_then(|v| v.parse::<f64>().ok());
        assert!(value("process_cpu_seconds_total").is_some(), "{text}");
        let rss = value("process_resident_memory_bytes").expect("rss");
        let peak = value("capstan_process_peak_resident_memory_bytes").expect("peak rss");
        assert!(rss > 0.0 && peak >= rss, "rss {rss} peak {peak}");
    }
}
