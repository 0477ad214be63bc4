//! The dashboard's memory of the last ten minutes: one sample a second of counters that are
//! cheap to read (requests per verb, the store's revision and each shard's commits, the
//! scheduler's attempts and queues, the process's CPU and memory), kept in a ring of
//! `SAMPLES`. Rates are differences between neighbouring samples. Started by the first page
//! anyone opens; a page never adds samples, so an open page costs no memory.

use std::collections::VecDeque;
use std::sync::{Mutex, Weak};
use std::time::Duration;


use crate::handlers::AppState;

/// Ten minutes at one a second.
pub const SAMPLES: usize = 600;

#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Unix seconds.
    pub t: f64,
    pub revision: u64,
    /// (verb, requests, summed latency s), cumulative.
    pub verbs: Vec<(String, u64, f64)>,
    /// Per shard: commits and bytes, cumulative.
    pub shard_commits: Vec<u64>,
    pub shard_bytes: Vec<u64>,
    /// The scheduler's attempts (cumulative) and queues: active, backoff, unschedulable.
    pub attempts: Option<u64>,
    pub pending: Option<[u64; 3]>,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// The raft term and leader, when the store is replicated.
    pub raft: Option<(u64, String)>,
}

/// Leader changes kept (`Ring::elections`).
pub const ELECTIONS: usize = 20;

#[derive(Default)]
pub struct Ring {
    samples: Mutex<VecDeque<Sample>>,
    /// (unix seconds, term, leader) at each change the sampler saw, newest last.
    elections: Mutex<VecDeque<(f64, u64, String)>>,
}

impl Ring {
    pub fn push(&self, s: Sample) {
        if let Some((term, leader)) = &s.raft {
            let mut e = self.elections.lock().unwrap();
            if e.back().is_none_or(|(_, t, l)| t != term || l != leader) {
                if e.len() == ELECTIONS {
                    e.pop_front();
                }
                e.push_back((s.t, *term, leader.clone()));
            }
        }
        let mut q = self.samples.lock().unwrap();
        if q.len() == SAMPLES {
            q.pop_front();
        }
        q.push_back(s);
    }

    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().iter().cloned().collect()
    }

    /// The leader changes seen, newest first.
    pub fn elections(&self) -> Vec<(f64, u64, String)> {
        self.elections.lock().unwrap().iter().rev().cloned().collect()
    }

    pub fn last(&self) -> Option<Sample> {
        self.samples.lock().unwrap().back().cloned()
    }
}

/// Per second between neighbouring samples of a cumulative counter, against seconds before
/// the last sample (negative x, so the chart ends at 0 = now).
pub fn rate(samples: &[Sample], counter: impl Fn(&Sample) -> Option<f64>) -> Vec<(f64, f64)> {
    let Some(end) = samples.last().map(|s| s.t) else { return Vec::new() };
    samples
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (counter(&w[0])?, counter(&w[1])?);
            let dt = w[1].t - w[0].t;
            (dt > 0.0 && b >= a).then(|| (w[1].t - end, (b - a) / dt))
        })
        .collect()
}

/// A gauge over time, as `rate` places it.
pub fn gauge(samples: &[Sample], value: impl Fn(&Sample) -> Option<f64>) -> Vec<(f64, f64)> {
    let Some(end) = samples.last().map(|s| s.t) else { return Vec::new() };
    samples.iter().filter_map(|s| Some((s.t - end, value(s)?))).collect()
}

/// Mean latency (ms) per second of a verb's requests between neighbouring samples.
pub fn mean_latency_ms(samples: &[Sample], verb: &str) -> Vec<(f64, f64)> {
    let Some(end) = samples.last().map(|s| s.t) else { return Vec::new() };
    let get = |s: &Sample| s.verbs.iter().find(|v| v.0 == verb).map(|v| (v.1, v.2));
    samples
        .windows(2)
        .filter_map(|w| {
            let ((c0, s0), (c1, s1)) = (get(&w[0]).unwrap_or((0, 0.0)), get(&w[1])?);
            (c1 > c0).then(|| (w[1].t - end, (s1 - s0) / (c1 - c0) as f64 * 1000.0))
        })
        .collect()
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One sample of `st` now.
pub fn take(st: &AppState) -> Sample {
    let io = st.store.shard_io();
    let sched = st.ui.hooks.scheduler().map(|s| s.summary());
    let (attempts, pending) = match &sched {
        Some(v) => (v["attempts_total"].as_u64(), Some([v["pending"]["active"].as_u64().unwrap_or(0), v["pending"]["backoff"].as_u64().unwrap_or(0), v["pending"]["unschedulable"].as_u64().unwrap_or(0)])),
        None => (None, None),
    };
    let p = crate::metrics::process_usage();
    let raft = st.ui.hooks.replication().map(|r| r()).and_then(|v| Some((v["term"].as_u64()?, v["leader"].as_str().unwrap_or("(none)").to_string())));
    Sample {
        raft,
        t: now_unix(),
        revision: st.store.revision(),
        verbs: st.metrics.by_verb(),
        shard_commits: io.iter().map(|s| s.commits).collect(),
        shard_bytes: io.iter().map(|s| s.bytes).collect(),
        attempts,
        pending,
        cpu_seconds: p.as_ref().map_or(0.0, |p| p.cpu_seconds),
        rss_bytes: p.map_or(0, |p| p.rss_bytes),
    }
}

/// Samples every second while the server runs (it holds no strong reference to it).
pub fn run(st: Weak<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Some(st) = st.upgrade() else { return };
            let s = take(&st);
            st.ui.ring.push(s);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: f64, n: u64) -> Sample {
        Sample { t, revision: n, verbs: vec![("get".into(), n, n as f64 * 0.002)], ..Default::default() }
    }

    #[test]
    fn rates_are_differences_over_time_ending_now() {
        let s = vec![at(100.0, 0), at(101.0, 10), at(103.0, 30)];
        assert_eq!(rate(&s, |x| Some(x.revision as f64)), vec![(-2.0, 10.0), (0.0, 10.0)]);
        assert_eq!(gauge(&s, |x| Some(x.revision as f64)), vec![(-3.0, 0.0), (-2.0, 10.0), (0.0, 30.0)]);
        let ms = mean_latency_ms(&s, "get");
        assert!(ms.iter().all(|(_, v)| (v - 2.0).abs() < 1e-9), "{ms:?}");
        assert!(rate(&[], |x| Some(x.t)).is_empty());
        // A counter that went back (a restart) gives no point rather than a negative rate.
        assert!(rate(&[at(1.0, 5), at(2.0, 1)], |x| Some(x.revision as f64)).is_empty());
    }

    #[test]
    fn leader_changes_are_kept_once_each() {
        let r = Ring::default();
        for (t, term, leader) in [(1.0, 1, "a"), (2.0, 1, "a"), (3.0, 2, "b"), (4.0, 2, "b"), (5.0, 3, "a")] {
            r.push(Sample { t, raft: Some((term, leader.into())), ..Default::default() });
        }
        let e = r.elections();
        assert_eq!(e, vec![(5.0, 3, "a".to_string()), (3.0, 2, "b".to_string()), (1.0, 1, "a".to_string())]);
    }

    #[test]
    fn the_ring_keeps_the_last_ten_minutes() {
        let r = Ring::default();
        for i in 0..(SAMPLES + 5) {
            r.push(at(i as f64, i as u64));
        }
        let s = r.snapshot();
        assert_eq!(s.len(), SAMPLES);
        assert_eq!(s[0].t, 5.0);
        assert_eq!(r.last().unwrap().t, (SAMPLES + 4) as f64);
    }
}
