//! A work queue as client-go's: a key is queued at most once; a key added while it is being
//! processed is processed again afterwards (never concurrently); failures retry with
//! per-key exponential backoff (5 ms doubling to 1,000 s) under a global token bucket
//! (10/s, burst 100): the larger delay wins. Controllers process keys, never events.
//!
//! Bounded by the number of distinct keys (objects), since a key is held once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct WorkQueue {
    name: &'static str,
    s: Mutex<State>,
    notify: tokio::sync::Notify,
}

struct State {
    queue: VecDeque<String>,
    dirty: HashSet<String>,
    processing: HashSet<String>,
    /// Keys waiting out a gathering window (`add_gathered`), added when it ends.
    gathering: HashSet<String>,
    failures: HashMap<String, u32>,
    tokens: f64,
    last: Instant,
    shutdown: bool,
    adds: u64,
    retries: u64,
}

const BASE: Duration = Duration::from_millis(5);
const MAX: Duration = Duration::from_secs(1000);
const QPS: f64 = 10.0;
const BURST: f64 = 100.0;

impl WorkQueue {
    pub fn new(name: &'static str) -> std::sync::Arc<WorkQueue> {
        std::sync::Arc::new(WorkQueue {
            name,
            s: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                gathering: HashSet::new(),
                failures: HashMap::new(),
                tokens: BURST,
                last: Instant::now(),
                shutdown: false,
                adds: 0,
                retries: 0,
            }),
            notify: tokio::sync::Notify::new(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn add(&self, key: String) {
        let mut s = self.s.lock().unwrap();
        if s.shutdown || s.dirty.contains(&key) {
            return;
        }
        s.adds += 1;
        s.dirty.insert(key.clone());
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn add_after(self: &std::sync::Arc<Self>, key: String, d: Duration) {
        if d.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            q.add(key);
        });
    }

    /// Adds `key` once `window` has passed, gathering every call made meanwhile into that one
    /// add; a key already queued (and not yet taken) is left as it is, since its reconcile
    /// has yet to read the state. For a burst of changes to many objects one key stands for
    /// (a set's pods), one reconcile per window instead of one per change, each at most
    /// `window` late.
    pub fn add_gathered(self: &std::sync::Arc<Self>, key: String, window: Duration) {
        {
            let mut s = self.s.lock().unwrap();
            if s.shutdown || (s.dirty.contains(&key) && !s.processing.contains(&key)) || !s.gathering.insert(key.clone()) {
                return;
            }
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            q.s.lock().unwrap().gathering.remove(&key);
            q.add(key);
        });
    }

    /// Retries `key` after its backoff (and the global rate limit).
    pub fn add_rate_limited(self: &std::sync::Arc<Self>, key: String) {
        let d = {
            let mut s = self.s.lock().unwrap();
            s.retries += 1;
            let n = s.failures.entry(key.clone()).or_insert(0);
            let per_key = BASE.saturating_mul(1u32 << (*n).min(20)).min(MAX);
            *n += 1;
            let now = Instant::now();
            let refill = now.duration_since(s.last).as_secs_f64() * QPS;
            s.tokens = (s.tokens + refill).min(BURST) - 1.0;
            s.last = now;
            let bucket = if s.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-s.tokens / QPS) };
            per_key.max(bucket)
        };
        self.add_after(key, d);
    }

    /// Clears a key's failure count (it succeeded).
    pub fn forget(&self, key: &str) {
        self.s.lock().unwrap().failures.remove(key);
    }

    pub fn retries_of(&self, key: &str) -> u32 {
        self.s.lock().unwrap().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key, waiting for one; `None` after `shutdown`.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.s.lock().unwrap();
                if s.shutdown {
                    return None;
                }
                if let Some(k) = s.queue.pop_front() {
                    s.dirty.remove(&k);
                    s.processing.insert(k.clone());
                    return Some(k);
                }
            }
            notified.await;
        }
    }

    /// Processing of `key` ended; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &str) {
        let mut s = self.s.lock().unwrap();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.to_string());
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn shutdown(&self) {
        self.s.lock().unwrap().shutdown = true;
        self.notify.notify_waiters();
    }

    /// (depth, adds, retries) for metrics.
    pub fn stats(&self) -> (usize, u64, u64) {
        let s = self.s.lock().unwrap();
        (s.queue.len(), s.adds, s.retries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedup_and_no_concurrent_processing_of_a_key() {
        let q = WorkQueue::new("t");
        q.add("a".into());
        q.add("a".into());
        q.add("b".into());
        assert_eq!(q.stats().0, 2);
        let k = q.get().await.unwrap();
        assert_eq!(k, "a");
        q.add("a".into()); // while processing: held back
        assert_eq!(q.get().await.unwrap(), "b");
        assert_eq!(q.stats().0, 0);
        q.done("a");
        assert_eq!(q.get().await.unwrap(), "a", "requeued after done");
    }

    #[tokio::test(start_paused = true)]
    async fn gathered_adds_within_a_window_make_one_add_at_its_end() {
        let q = WorkQueue::new("t");
        for _ in 0..50 {
            q.add_gathered("rs".into(), Duration::from_millis(100));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(q.stats(), (0, 0, 0), "nothing is added before the window ends");
        tokio::time::advance(Duration::from_millis(60)).await;
        tokio::task::yield_now().await;
        assert_eq!(q.stats(), (1, 1, 0), "fifty calls within the window, one add at its end");
        assert_eq!(q.get().await.unwrap(), "rs");
        // While it is processed, a new change opens a new window; a key still queued gathers
        // nothing more.
        q.add_gathered("rs".into(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(101)).await;
        tokio::task::yield_now().await;
        q.done("rs");
        assert_eq!(q.get().await.unwrap(), "rs", "the change made while processing is reconciled after");
        q.done("rs");
        q.add("rs".into());
        q.add_gathered("rs".into(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(101)).await;
        tokio::task::yield_now().await;
        assert_eq!(q.stats().1, 3, "a key already queued opens no window");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially() {
        let q = WorkQueue::new("t");
        for _ in 0..3 {
            q.add_rate_limited("k".into());
        }
        assert_eq!(q.retries_of("k"), 3);
        q.forget("k");
        assert_eq!(q.retries_of("k"), 0);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(q.get().await.unwrap(), "k");
    }
}
