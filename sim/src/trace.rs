//! The trace of a run: what happened, when (simulated), and in which component. Its digest is
//! how a replay proves it ran the same schedule: two runs of one seed on one build must agree
//! line for line.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// Lines kept for printing (the digest covers every line).
const KEEP: usize = 200_000;

pub struct Line {
    pub at_us: u64,
    pub component: &'static str,
    pub text: String,
}

struct Inner {
    lines: VecDeque<Line>,
    hasher: std::hash::DefaultHasher,
    count: u64,
}

pub struct Trace {
    inner: Mutex<Inner>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace { inner: Mutex::new(Inner { lines: VecDeque::new(), hasher: std::hash::DefaultHasher::new(), count: 0 }) }
    }
}

impl Trace {
    pub fn log(&self, at_us: u64, component: &'static str, text: String) {
        let mut i = self.inner.lock().unwrap();
        (at_us, component, &text).hash(&mut i.hasher);
        i.count += 1;
        if i.lines.len() == KEEP {
            i.lines.pop_front();
        }
        i.lines.push_back(Line { at_us, component, text });
    }

    /// A digest of every line so far (`DefaultHasher::new` has fixed keys: stable in a build).
    pub fn digest(&self) -> u64 {
        self.inner.lock().unwrap().hasher.clone().finish()
    }

    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap().count
    }

    /// The last `last` lines of the given components (all when `only` is empty), one per line.
    pub fn render(&self, only: &[String], last: usize) -> String {
        let i = self.inner.lock().unwrap();
        let picked: Vec<&Line> = i.lines.iter().filter(|l| only.is_empty() || only.iter().any(|c| c == l.component)).collect();
        let skip = picked.len().saturating_sub(last);
        let mut out = String::new();
        if skip > 0 {
            out.push_str(&format!("  ... {skip} earlier lines\n"));
        }
        for l in &picked[skip..] {
            out.push_str(&format!("  {:>10.3} ms  {:<7} {}\n", l.at_us as f64 / 1000.0, l.component, l.text));
        }
        out
    }
}
