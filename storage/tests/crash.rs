//! Crash test: the store runs as a child process under concurrent writes and is killed with
//! SIGKILL (or aborts at a failpoint) at random moments, then recovered and checked:
//! - no acknowledged write is lost, and each is present with its acknowledged revision;
//! - nothing unacknowledged appears half-made (a two-key txn is all or nothing);
//! - revisions keep increasing across lives.
//!
//! Rounds: `CAPSTAN_CRASH_ROUNDS` (default 20) SIGKILL rounds, then one round per failpoint.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;
use rand::{Rng, SeedableRng};
use storage::*;

const SHARDS: usize = 2;

struct Acks {
    /// key -> acknowledged revision
    puts: BTreeMap<String, u64>,
    max_revision: u64,
}

fn spawn(dir: &std::path::Path, failpoints: &str, snapshot_every: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_storage-crash-child"))
        .arg(dir)
        .arg(SHARDS.to_string())
        .arg("8")
        .arg(snapshot_every.to_string())
        .env("CAPSTAN_FAILPOINTS", failpoints)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crash child")
}

/// How a life is meant to end.
#[derive(Clone, Copy, Debug)]
enum End<'a> {
    /// We SIGKILL it after this many acknowledgements.
    KillAfter(usize),
    /// It aborts at this failpoint by itself.
    Failpoint(&'a str),
}

/// Every life is watched: one that does not end as meant within this fails with what it
/// waited for (a failpoint that never fires, a child that hangs).
const ROUND_WATCHDOG: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs one life of the child and checks that it ended as meant: killed by us after its
/// acknowledgements, or aborted at exactly its failpoint. A child that panics, exits by
/// itself or hangs fails the round instead of passing with fewer acknowledgements.
fn life(dir: &std::path::Path, failpoints: &str, snapshot_every: u64, end: End, acks: &mut Acks) -> u64 {
    use std::os::unix::process::ExitStatusExt;
    let mut child = spawn(dir, failpoints, snapshot_every);
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let err_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let err_reader = {
        let err_lines = err_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  child: {line}");
                err_lines.lock().unwrap().push(line);
            }
        })
    };
    // The watchdog: if the life has not ended in time, kill it and say what was awaited.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let fired = fired.clone();
        std::thread::spawn(move || {
            if done_rx.recv_timeout(ROUND_WATCHDOG) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                fired.store(true, std::sync::atomic::Ordering::SeqCst);
                // SAFETY: kill(2) on the pid of a child we have not reaped yet.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        })
    };
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.next().expect("child printed READY").expect("read READY");
    let start: u64 = ready.strip_prefix("READY ").expect("READY line").parse().unwrap();
    assert!(start >= acks.max_revision, "revision went backwards across a restart: {start} < {}", acks.max_revision);
    let mut seen = 0;
    let mut life_max = 0;
    let mut killed_by_us = false;
    for line in lines {
        let Ok(line) = line else { break };
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "ACK" => {
                let rev: u64 = f[3].parse().unwrap();
                assert!(rev > start, "a new life acknowledged revision {rev} <= its start {start}");
                acks.puts.insert(format!("/c/{}/{}", f[1], f[2]), rev);
                life_max = life_max.max(rev);
            }
            "PAIR" => {
                let rev: u64 = f[3].parse().unwrap();
                acks.puts.insert(format!("/pair/{}/{}/a", f[1], f[2]), rev);
                acks.puts.insert(format!("/pair/{}/{}/b", f[1], f[2]), rev);
                life_max = life_max.max(rev);
            }
            other => panic!("child said {other:?}: {line}"),
        }
        seen += 1;
        if let End::KillAfter(n) = end
            && seen >= n
        {
            let _ = child.kill(); // SIGKILL
            killed_by_us = true;
            break;
        }
    }
    let status = child.wait().expect("wait for the crash child");
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    err_reader.join().unwrap();
    acks.max_revision = acks.max_revision.max(life_max);
    let stderr = err_lines.lock().unwrap().join("\n");
    assert!(
        !fired.load(std::sync::atomic::Ordering::SeqCst),
        "watchdog: the life meant to end by {end:?} did not end within {ROUND_WATCHDOG:?} ({seen} acknowledgements); stderr:\n{stderr}"
    );
    match end {
        End::KillAfter(n) => {
            assert!(
                killed_by_us && status.signal() == Some(libc::SIGKILL),
                "the child ended by itself ({status}) after {seen} of the {n} acknowledgements we waited for; stderr:\n{stderr}"
            );
        }
        End::Failpoint(name) => {
            assert_eq!(status.signal(), Some(libc::SIGABRT), "the child meant to abort at failpoint {name} ended with {status}; stderr:\n{stderr}");
            assert!(
                stderr.contains(&format!("failpoint {name}: abort")),
                "the child aborted, but not at failpoint {name}; stderr:\n{stderr}"
            );
        }
    }
    seen as u64
}

/// Opens the crashed store in this process and checks every promise.
async fn verify(dir: &std::path::Path, acks: &Acks) {
    let store = Store::open(config_for_child(dir)).expect("recovery after a crash must succeed");
    assert!(store.revision() >= acks.max_revision, "recovered revision {} < acknowledged {}", store.revision(), acks.max_revision);
    let all = within("range of everything", store.range(RangeRequest::prefix(""))).await.unwrap();
    let present: BTreeMap<String, &KeyValue> =
        all.kvs.iter().map(|kv| (String::from_utf8(kv.key.to_vec()).unwrap(), kv)).collect();
    for (key, rev) in &acks.puts {
        let kv = present.get(key).unwrap_or_else(|| panic!("acknowledged write {key} at revision {rev} was lost"));
        assert_eq!(kv.mod_revision, *rev, "{key} has revision {} but was acknowledged at {rev}", kv.mod_revision);
    }
    for (key, kv) in &present {
        if let Some(base) = key.strip_suffix("/a") {
            let other = present.get(&format!("{base}/b")).unwrap_or_else(|| panic!("half a txn: {key} without its /b"));
            assert_eq!(kv.mod_revision, other.mod_revision, "the two halves of {base} differ in revision");
        }
        if let Some(base) = key.strip_suffix("/b") {
            assert!(present.contains_key(&format!("{base}/a")), "half a txn: {key} without its /a");
        }
        let v = std::str::from_utf8(&kv.value).unwrap();
        let parts: Vec<&str> = key.split('/').collect();
        assert!(v.starts_with(&format!("{}:{}", parts[2], parts[3])), "value of {key} is not the one written: {v:?}");
    }
}

fn config_for_child(dir: &std::path::Path) -> Config {
    let mut cfg = config(dir, SHARDS);
    cfg.segment_bytes = 2 << 20;
    cfg.batch_bytes_max = 256 << 10;
    cfg.request_bytes_max = 256 << 10;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_at_random_moments() {
    let rounds: usize = std::env::var("CAPSTAN_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("CAPSTAN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (CAPSTAN_CRASH_SEED to replay), {rounds} rounds");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acks = Acks { puts: BTreeMap::new(), max_revision: 0 };
    for round in 0..rounds {
        let kill_after = rng.random_range(1..3000);
        // Every third life also takes snapshots, so crashes land around them too.
        let snap = if round % 3 == 2 { 500 } else { 0 };
        let n = tokio::task::block_in_place(|| life(dir.path(), "", snap, End::KillAfter(kill_after), &mut acks));
        eprintln!("round {round}: killed after {n} acknowledgements");
        verify(dir.path(), &acks).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_failpoint_loses_no_acknowledged_write() {
    let points = [
        "wal::after_write_before_sync=abort@40",
        "shard::after_sync_before_apply=abort@40",
        "snapshot::during_write=abort@2",
        "snapshot::before_current=abort@1",
        "snapshot::during_segment_removal=abort@1",
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut acks = Acks { puts: BTreeMap::new(), max_revision: 0 };
    for fp in points {
        let name = fp.split('=').next().unwrap();
        // Enough writes between snapshots for segments to roll over and be removed.
        let n = tokio::task::block_in_place(|| life(dir.path(), fp, 3000, End::Failpoint(name), &mut acks));
        eprintln!("failpoint {fp}: child died after {n} acknowledgements");
        verify(dir.path(), &acks).await;
    }
    // And a clean life after all of them.
    let n = tokio::task::block_in_place(|| life(dir.path(), "", 0, End::KillAfter(200), &mut acks));
    assert_eq!(n, 200);
    verify(dir.path(), &acks).await;
}
