//! A linearizability checker for histories of a key-value store (Wing & Gong's search with
//! Lowe's memoization, as porcupine does), used by the fault tests on recorded client
//! histories.
//!
//! A history is a list of operations, each with the time it was called, the time it returned
//! (or none: its outcome is unknown — a timeout, a 503 — so it may have taken effect at any
//! moment after its call, or never), its input and its output. Operations on different keys
//! commute, so the history is checked key by key (linearizability is compositional).
//!
//! The model is a register per key holding a value or nothing: `Put` writes, `Delete` empties,
//! `Get` reads, `Cas` writes only if the register holds the expected value (or is empty, when
//! expecting nothing). Values must be unique per write for a failed check to be meaningful.
//!
//! Unanswered writes are what makes the search explode (each may sit anywhere after its call),
//! so a key is first checked without the unanswered operations no other operation observed;
//! only if that fails is its whole history searched (`pruned`).

use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Put(String),
    Delete,
    Get,
    /// Write `new` if the register holds `expect` (`None`: if it is empty).
    Cas { expect: Option<String>, new: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A write that was acknowledged.
    Ok,
    /// What a read returned.
    Value(Option<String>),
    /// Whether a compare-and-swap took effect.
    Swapped(bool),
    /// No answer (or an error that does not say whether it happened).
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub input: Input,
    pub output: Output,
    /// When the call was made and when its answer came (`None`: never, or unknown).
    pub call: u64,
    pub ret: Option<u64>,
}

/// Why a history is not linearizable: the key, and its operations in call order. `undecided`
/// when the search ran out of its budget (a failure too: the history was not shown
/// linearizable).
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub ops: Vec<Op>,
    pub undecided: bool,
}

/// States a search may visit per key before it gives up (undecided): a violation makes the
/// search exhaustive, which is exponential in the operations that overlap.
pub const SEARCH_BUDGET: usize = 2_000_000;

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.undecided {
            writeln!(f, "history of key {:?} could not be shown linearizable within {SEARCH_BUDGET} search states ({} operations):", self.key, self.ops.len())?;
        } else {
            writeln!(f, "history of key {:?} is not linearizable ({} operations):", self.key, self.ops.len())?;
        }
        for o in &self.ops {
            let ret = o.ret.map_or("?".to_string(), |r| r.to_string());
            writeln!(f, "  client {:>3} [{:>10} .. {:>10}] {:?} -> {:?}", o.client, o.call, ret, o.input, o.output)?;
        }
        Ok(())
    }
}

/// The register's answer to `input` in `state`: the next state, if `output` is what it says.
fn step(state: &Option<String>, input: &Input, output: &Output) -> Option<Option<String>> {
    match (input, output) {
        (Input::Put(v), Output::Ok | Output::Unknown) => Some(Some(v.clone())),
        (Input::Delete, Output::Ok | Output::Unknown) => Some(None),
        (Input::Get, Output::Value(v)) => (v == state).then(|| state.clone()),
        (Input::Get, Output::Unknown) => Some(state.clone()),
        (Input::Cas { expect, new }, Output::Swapped(true)) => (expect == state).then(|| Some(new.clone())),
        (Input::Cas { expect, .. }, Output::Swapped(false)) => (expect != state).then(|| state.clone()),
        (Input::Cas { expect, new }, Output::Unknown) => Some(if expect == state { Some(new.clone()) } else { state.clone() }),
        _ => None,
    }
}

/// Checks a whole history; the first key found not linearizable is the error.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for o in history {
        by_key.entry(&o.key).or_default().push(o.clone());
    }
    for (key, ops) in by_key {
        // First without the unknown operations nobody could have observed: a linearization
        // of the rest is one of the whole history with those placed at its end (they never
        // returned, so the end is within their windows). Only if that fails is the whole
        // history searched, whose unknown writes multiply the orders to try.
        let observed = pruned(&ops);
        if observed.len() < ops.len() && check_key(&observed) == Some(true) {
            continue;
        }
        let verdict = check_key(&ops);
        if verdict != Some(true) {
            let mut ops = ops;
            ops.sort_by_key(|o| o.call);
            return Err(Violation { key: key.to_string(), ops, undecided: verdict.is_none() });
        }
    }
    Ok(())
}

/// `ops` without the operations whose outcome is unknown and whose effect no other operation
/// saw: reads without an answer, and writes whose value no read returned and no successful
/// compare-and-swap expected. (A failed compare-and-swap may have needed such a write; that is
/// why the pruned history is only ever a first attempt.)
fn pruned(ops: &[Op]) -> Vec<Op> {
    let mut seen: HashSet<&str> = HashSet::new();
    for o in ops {
        match (&o.input, &o.output) {
            (Input::Get, Output::Value(Some(v))) => {
                seen.insert(v);
            }
            (
                Input::Cas {
                    expect: Some(v), ..
                },
                Output::Swapped(true),
            ) => {
                seen.insert(v);
            }
            _ => {}
        }
    }
    let unseen = |o: &Op| match (&o.input, &o.output) {
        (_, out) if *out != Output::Unknown => false,
        (Input::Get, _) => true,
        (Input::Put(v) | Input::Cas { new: v, .. }, _) => {
            o.ret.is_none() && !seen.contains(v.as_str())
        }
        (Input::Delete, _) => false,
    };
    ops.iter().filter(|o| !unseen(o)).cloned().collect()
}

const NIL: usize = usize::MAX;

/// One key's history (Lowe's algorithm over a doubly linked list of call and return events):
/// `Some(linearizable?)`, or `None` when the budget ran out.
fn check_key(ops: &[Op]) -> Option<bool> {
    let n = ops.len();
    if n == 0 {
        return Some(true);
    }
    // Events in time order; at equal times calls come first (the more permissive reading).
    let mut evs: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        evs.push((o.call, 0, i, true));
        evs.push((o.ret.unwrap_or(u64::MAX), 1, i, false));
    }
    evs.sort_by_key(|(t, k, i, _)| (*t, *k, *i));
    let m = evs.len();
    let head = m;
    let mut next = vec![NIL; m + 1];
    let mut prev = vec![NIL; m + 1];
    next[head] = 0;
    for i in 0..m {
        next[i] = if i + 1 < m { i + 1 } else { NIL };
        prev[i] = if i == 0 { head } else { i - 1 };
    }
    let mut call_slot = vec![0usize; n];
    let mut ret_slot = vec![0usize; n];
    for (s, (_, _, op, is_call)) in evs.iter().enumerate() {
        if *is_call {
            call_slot[*op] = s;
        } else {
            ret_slot[*op] = s;
        }
    }
    fn unlink(next: &mut [usize], prev: &mut [usize], s: usize) {
        let (p, nx) = (prev[s], next[s]);
        next[p] = nx;
        if nx != NIL {
            prev[nx] = p;
        }
    }
    fn relink(next: &mut [usize], prev: &mut [usize], s: usize) {
        let (p, nx) = (prev[s], next[s]);
        next[p] = s;
        if nx != NIL {
            prev[nx] = s;
        }
    }
    let mut linearized = vec![0u64; n.div_ceil(64)];
    let mut state: Option<String> = None;
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut cur = next[head];
    while next[head] != NIL {
        let dead_end = cur == NIL || !evs[cur].3;
        if dead_end {
            // The earliest open operation's return was reached (or the list ran out): nothing
            // else may be linearized before it. Undo the last choice.
            let Some((op, old)) = stack.pop() else { return Some(false) };
            state = old;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_slot[op]);
            relink(&mut next, &mut prev, call_slot[op]);
            cur = next[call_slot[op]];
            continue;
        }
        let op = evs[cur].2;
        let o = &ops[op];
        if let Some(new_state) = step(&state, &o.input, &o.output) {
            linearized[op / 64] |= 1 << (op % 64);
            if seen.len() >= SEARCH_BUDGET {
                return None;
            }
            if seen.insert((linearized.clone(), new_state.clone())) {
                stack.push((op, std::mem::replace(&mut state, new_state)));
                unlink(&mut next, &mut prev, call_slot[op]);
                unlink(&mut next, &mut prev, ret_slot[op]);
                cur = next[head];
                continue;
            }
            linearized[op / 64] &= !(1 << (op % 64));
        }
        cur = next[cur];
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: u64, ret: Option<u64>, input: Input, output: Output) -> Op {
        Op { client, key: "k".into(), input, output, call, ret }
    }
    fn put(c: usize, a: u64, b: u64, v: &str) -> Op {
        op(c, a, Some(b), Input::Put(v.into()), Output::Ok)
    }
    fn get(c: usize, a: u64, b: u64, v: Option<&str>) -> Op {
        op(c, a, Some(b), Input::Get, Output::Value(v.map(String::from)))
    }

    #[test]
    fn sequential_histories() {
        assert!(check(&[put(0, 0, 1, "a"), get(0, 2, 3, Some("a"))]).is_ok());
        assert!(check(&[get(0, 0, 1, None), put(0, 2, 3, "a"), get(1, 4, 5, Some("a"))]).is_ok());
        // A read after a completed write that does not see it.
        assert!(check(&[put(0, 0, 1, "a"), get(1, 2, 3, None)]).is_err());
        // A read of a value nobody wrote.
        assert!(check(&[get(0, 0, 1, Some("z"))]).is_err());
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        assert!(check(&[put(0, 0, 10, "a"), get(1, 1, 2, None), get(2, 3, 4, Some("a"))]).is_ok());
        // But once one read saw the new value, a later read may not go back.
        assert!(check(&[put(0, 0, 10, "a"), get(1, 1, 2, Some("a")), get(2, 3, 4, None)]).is_err());
        // Two writes overlapping: later reads agree on one order.
        let h = [put(0, 0, 5, "a"), put(1, 0, 5, "b"), get(2, 6, 7, Some("a")), get(2, 8, 9, Some("a"))];
        assert!(check(&h).is_ok());
        let h = [put(0, 0, 5, "a"), put(1, 0, 5, "b"), get(2, 6, 7, Some("a")), get(2, 8, 9, Some("b"))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_happen() {
        let lost = op(0, 0, None, Input::Put("a".into()), Output::Unknown);
        assert!(check(&[lost.clone(), get(1, 5, 6, Some("a"))]).is_ok());
        assert!(check(&[lost.clone(), get(1, 5, 6, None)]).is_ok());
        // ...but not both ways: seen, then unseen.
        assert!(check(&[lost, get(1, 5, 6, Some("a")), get(1, 7, 8, None)]).is_err());
        // An unknown write cannot take effect before it was called.
        let late = op(0, 10, None, Input::Put("a".into()), Output::Unknown);
        assert!(check(&[late, get(1, 0, 1, Some("a"))]).is_err());
    }

    #[test]
    fn compare_and_swap() {
        let cas = |c, a, b, e: Option<&str>, n: &str, ok| op(c, a, Some(b), Input::Cas { expect: e.map(String::from), new: n.into() }, Output::Swapped(ok));
        assert!(check(&[put(0, 0, 1, "a"), cas(1, 2, 3, Some("a"), "b", true), get(2, 4, 5, Some("b"))]).is_ok());
        // Two CASes from the same value cannot both succeed.
        assert!(check(&[put(0, 0, 1, "a"), cas(1, 2, 5, Some("a"), "b", true), cas(2, 2, 5, Some("a"), "c", true)]).is_err());
        assert!(check(&[put(0, 0, 1, "a"), cas(1, 2, 5, Some("a"), "b", true), cas(2, 2, 5, Some("a"), "c", false)]).is_ok());
        // A failed CAS whose expectation was met.
        assert!(check(&[put(0, 0, 1, "a"), cas(1, 2, 3, Some("a"), "b", false)]).is_err());
        assert!(check(&[cas(0, 0, 1, None, "x", true), get(0, 2, 3, Some("x"))]).is_ok());
    }

    #[test]
    fn keys_are_checked_apart_and_the_violation_names_its_key() {
        let mut h = vec![put(0, 0, 1, "a"), get(1, 2, 3, Some("a"))];
        let mut bad = put(0, 0, 1, "x");
        bad.key = "other".into();
        let mut badget = get(1, 2, 3, None);
        badget.key = "other".into();
        h.push(bad);
        h.push(badget);
        let v = check(&h).unwrap_err();
        assert_eq!(v.key, "other");
        assert!(v.to_string().contains("not linearizable"));
    }

    #[test]
    fn a_larger_concurrent_history_is_checked_quickly() {
        // 8 clients, 25 rounds each of put then get of their own write, all overlapping.
        let mut h = Vec::new();
        for r in 0..25u64 {
            for c in 0..8usize {
                let v = format!("{c}-{r}");
                h.push(put(c, r * 10, r * 10 + 5, &v));
                h.push(op(c, r * 10 + 6, Some(r * 10 + 7), Input::Get, Output::Unknown));
            }
        }
        assert!(check(&h).is_ok());
    }

    #[test]
    fn many_unanswered_writes_nobody_saw_do_not_exhaust_the_search() {
        // 120 writes that never returned, spread over a history of 60 answered writes and
        // reads: placed anywhere, they multiply the orders beyond any budget.
        let mut h = Vec::new();
        for i in 0..120u64 {
            h.push(op(
                100 + i as usize,
                i * 3,
                None,
                Input::Put(format!("lost-{i}")),
                Output::Unknown,
            ));
        }
        for r in 0..30u64 {
            h.push(put(0, r * 12 + 1, r * 12 + 4, &format!("w-{r}")));
            h.push(get(1, r * 12 + 6, r * 12 + 9, Some(&format!("w-{r}"))));
        }
        // 30 more after the last answered write, then a read that saw none of them: a search
        // that tries them before the read backtracks through every subset.
        for i in 0..30u64 {
            h.push(op(
                300 + i as usize,
                400 + i,
                None,
                Input::Put(format!("late-{i}")),
                Output::Unknown,
            ));
        }
        h.push(get(1, 500, 501, Some("w-29")));
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_failed_swap_may_be_explained_by_an_unanswered_write() {
        // Only the unanswered write explains why the swap found something else than "a".
        let h = vec![
            put(0, 0, 1, "a"),
            op(1, 2, None, Input::Put("b".into()), Output::Unknown),
            op(
                2,
                5,
                Some(6),
                Input::Cas {
                    expect: Some("a".into()),
                    new: "c".into(),
                },
                Output::Swapped(false),
            ),
        ];
        assert!(check(&h).is_ok());
        // Without it, the same failed swap is a violation.
        assert!(check(&[h[0].clone(), h[2].clone()]).is_err());
    }
}
