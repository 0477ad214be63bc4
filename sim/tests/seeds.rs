//! The simulation as a test: seeds of a small cluster pass; one seed always runs the same
//! schedule; every planted bug is caught within a stated number of seeds; the binary refuses a
//! replay recorded by another build and says how to replay a failure.

use std::process::Command;

use sim::{Bug, Params, run_seed};

/// Seeds of the suite: a 5-second fault phase (each a few seconds of CPU in a debug build).
fn small() -> Params {
    Params { fault_secs: 5.0, settle_secs: 30.0, nodes: Some(10), ..Params::default() }
}

fn run_in_parallel(seeds: std::ops::Range<u64>, p: &Params) -> Vec<sim::SeedReport> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4) as u64;
    let chunks: Vec<Vec<u64>> = (0..threads).map(|t| seeds.clone().filter(|s| s % threads == t).collect()).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|c| {
            let p = p.clone();
            std::thread::spawn(move || c.into_iter().map(|s| run_seed(s, &p)).collect::<Vec<_>>())
        })
        .collect();
    let mut out: Vec<_> = handles.into_iter().flat_map(|h| h.join().expect("a seed panicked")).collect();
    out.sort_by_key(|r| r.seed);
    out
}

#[test]
fn fifty_seeds_of_a_small_cluster_keep_every_invariant() {
    let reports = run_in_parallel(0..50, &small());
    let mut failures = Vec::new();
    for r in &reports {
        if let Some(v) = &r.violation {
            failures.push(format!("seed {}: {v}\n{}", r.seed, r.world.trace.render(&[], 60)));
        }
    }
    assert!(failures.is_empty(), "{} of 50 seeds failed:\n{}", failures.len(), failures.join("\n"));
    // The runs did something: writes were acknowledged and leaders changed under the faults.
    let acked: usize = reports.iter().map(|r| r.acked).sum();
    let changes = reports.iter().filter(|r| r.terms > 1).count();
    assert!(acked > 50 * 50, "only {acked} acknowledged writes in 50 seeds");
    assert!(changes > 10, "the leader changed in only {changes} of 50 seeds");
}

#[test]
fn a_seed_replays_exactly() {
    let p = small();
    let a = run_seed(7, &p);
    let b = run_seed(7, &p);
    let c = run_seed(8, &p);
    assert_eq!(a.digest, b.digest, "seed 7 ran two different schedules ({} and {} trace lines)", a.world.trace.count(), b.world.trace.count());
    assert_eq!((a.ops, a.acked), (b.ops, b.acked));
    assert_ne!(a.digest, c.digest, "seeds 7 and 8 ran the same schedule");
}

/// Runs seeds from 0 with `bug` planted, four at a time, until one fails; the violation's
/// name must be one of `expect`, within `within` seeds.
fn caught(bug: Bug, fault_secs: f64, within: u64, expect: &[&str]) {
    let p = Params { fault_secs, bug: Some(bug), ..small() };
    let mut from = 0;
    while from < within {
        let to = (from + 4).min(within);
        for r in run_in_parallel(from..to, &p) {
            if let Some(v) = r.violation {
                assert!(expect.contains(&v.name), "{} was caught as {v}, expected one of {expect:?}", bug.name());
                return;
            }
        }
        from = to;
    }
    panic!("{} was not caught within {within} seeds", bug.name());
}

#[test]
fn a_skipped_watch_event_is_caught() {
    caught(Bug::SkipWatchEvent, 5.0, 2, &["watch-gap", "watch-mismatch"]);
}

#[test]
fn a_bind_without_compare_and_swap_is_caught() {
    caught(Bug::BindWithoutCas, 5.0, 5, &["pod-rebound"]);
}

#[test]
fn a_leader_restored_without_election_is_caught() {
    caught(Bug::LeaderRestore, 10.0, 5, &["leader-id-reused"]);
}

#[test]
fn a_renew_deadline_with_no_room_for_clock_skew_is_caught() {
    // About one seed in six of 20 s catches it (bench/RESULTS.md); 30 seeds miss it with a
    // probability of about half a percent.
    caught(Bug::LeaseDeadlineTooLong, 20.0, 30, &["lease-two-holders"]);
}

#[test]
fn a_store_lease_not_extended_on_a_new_leader_is_caught() {
    caught(Bug::LeaseNotExtended, 10.0, 5, &["store-lease-expired-early"]);
}

#[test]
fn a_lease_clock_drifting_beyond_its_bound_is_caught() {
    caught(Bug::LeaseClockTooFast, 10.0, 5, &["store-lease-expired-early"]);
}

#[test]
fn a_disruption_budget_status_written_without_compare_and_swap_is_caught() {
    // About one seed in nine catches it (the write must land between two evictions).
    caught(Bug::PdbStatusWithoutCas, 10.0, 60, &["pdb-violated"]);
}

#[test]
fn a_quota_recount_lowered_without_confirmation_is_caught() {
    caught(Bug::QuotaLoweredAtOnce, 10.0, 5, &["quota-exceeded"]);
}

#[test]
fn an_append_acknowledged_before_its_fsync_is_caught() {
    // Only a power cut of a quorum loses what was acknowledged early: the nemesis cuts every
    // replica at once in about one fault of twenty.
    caught(Bug::AckBeforeFsync, 10.0, 20, &["acked-write-lost", "replicas-diverge", "linearizability", "liveness", "watch-mismatch", "watch-gap"]);
}

#[test]
fn a_replay_from_another_build_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_sim")).args(["--replay", "1", "--build", "0000000000000000"]).output().expect("run sim");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("recorded by build 0000000000000000"), "stderr: {err}");
}

#[test]
fn a_failing_seed_prints_its_replay_command_and_the_replay_reproduces_it() {
    let sim = env!("CARGO_BIN_EXE_sim");
    let out = Command::new(sim).args(["--seeds", "1", "--seconds", "2", "--bug", "skip-watch-event"]).output().expect("run sim");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout: {text}");
    assert!(text.contains("FAILED") && text.contains("[watch-gap]"), "stdout: {text}");
    let replay = text.lines().find_map(|l| l.strip_prefix("replay: cargo run --release -p sim -- ")).expect("a replay command");
    let args: Vec<&str> = replay.split_whitespace().collect();
    let again = Command::new(sim).args(&args).output().expect("replay");
    let again_text = String::from_utf8_lossy(&again.stdout);
    // Same build, same digest: exit 1 for the same violation, not 2 for a divergence.
    assert_eq!(again.status.code(), Some(1), "replay stdout: {again_text}\nstderr: {}", String::from_utf8_lossy(&again.stderr));
    assert!(again_text.contains("FAILED [watch-gap]"), "replay stdout: {again_text}");
}

#[test]
fn bad_flags_are_refused() {
    for args in [&["--replicas", "4"][..], &["--seconds", "-1"], &["--bug", "nonsense"], &["--frobnicate", "1"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_sim")).args(args).output().expect("run sim");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
