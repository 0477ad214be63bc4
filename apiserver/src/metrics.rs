//! Prometheus metrics: request counts and latency histograms by verb and resource, buckets from
//! 100 µs to 60 s, and requests in flight. Rendered in the text exposition format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct Series {
    buckets: Vec<u64>,
    count: u64,
    sum_s: f64,
}

#[derive(Default)]
pub struct Metrics {
    /// (verb, resource) -> latency series; (verb, resource, code) -> count.
    latency: Mutex<HashMap<(String, String), Series>>,
    requests: Mutex<HashMap<(String, String, u16), u64>>,
    pub inflight: AtomicI64,
}

impl Metrics {
    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        let s = took.as_secs_f64();
        {
            let mut l = self.latency.lock().unwrap();
            let e = l.entry((verb.to_string(), resource.to_string())).or_insert_with(|| Series {
                buckets: vec![0; LATENCY_BUCKETS_S.len()],
                ..Default::default()
            });
            for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
                if s <= *b {
                    e.buckets[i] += 1;
                }
            }
            e.count += 1;
            e.sum_s += s;
        }
        *self.requests.lock().unwrap().entry((verb.to_string(), resource.to_string(), code)).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out += "# HELP apiserver_request_total Requests by verb, resource and HTTP code.\n# TYPE apiserver_request_total counter\n";
        let mut reqs: Vec<_> = self.requests.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect();
        reqs.sort();
        for ((verb, res, code), n) in reqs {
            let _ = writeln!(out, "apiserver_request_total{{verb=\"{verb}\",resource=\"{res}\",code=\"{code}\"}} {n}");
        }
        out += "# HELP apiserver_request_duration_seconds Request latency by verb and resource.\n# TYPE apiserver_request_duration_seconds histogram\n";
        let l = self.latency.lock().unwrap();
        let mut keys: Vec<_> = l.keys().cloned().collect();
        keys.sort();
        for k in keys {
            let s = &l[&k];
            for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
                let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{verb=\"{}\",resource=\"{}\",le=\"{b}\"}} {}", k.0, k.1, s.buckets[i]);
            }
            let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{verb=\"{}\",resource=\"{}\",le=\"+Inf\"}} {}", k.0, k.1, s.count);
            let _ = writeln!(out, "apiserver_request_duration_seconds_sum{{verb=\"{}\",resource=\"{}\"}} {}", k.0, k.1, s.sum_s);
            let _ = writeln!(out, "apiserver_request_duration_seconds_count{{verb=\"{}\",resource=\"{}\"}} {}", k.0, k.1, s.count);
        }
        let _ = writeln!(out, "# HELP apiserver_current_inflight_requests Requests being served.\n# TYPE apiserver_current_inflight_requests gauge\napiserver_current_inflight_requests {}", self.inflight.load(Ordering::Relaxed));
        out
    }
}
