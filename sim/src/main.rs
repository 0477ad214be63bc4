//! `sim`: runs seeds of the deterministic simulation (sim/DESIGN.md).
//!
//! `sim --seeds N [--from S] [--minutes M | --seconds S] [--replicas 3|5] [--threads T]`
//! runs seeds S..S+N; `sim --replay S` runs one and prints its trace. A failing seed prints its
//! violation, the end of its trace and the command that replays it; the exit status is 1 if any
//! seed failed, 2 for a refused replay (another build, or a run that diverged), 3 when a seed
//! overran its real-time budget (a livelock: simulated time stopped advancing).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sim::{Bug, Params, SeedReport, run_seed};

struct Args {
    seeds: u64,
    from: u64,
    replay: Option<u64>,
    params: Params,
    threads: usize,
    trace: Vec<String>,
    trace_lines: usize,
    build: Option<String>,
    digest: Option<String>,
    real_timeout: Duration,
}

const USAGE: &str = "usage: sim [--seeds N] [--from S] [--replay S] [--minutes M | --seconds S] [--settle S] [--replicas 3|5] \
[--clients N] [--nodes N] [--threads T] [--bug NAME] [--trace COMPONENT,...] [--trace-lines N] [--build ID] [--digest D] [--real-timeout SECS]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 1,
        from: 0,
        replay: None,
        params: Params::default(),
        threads: 1,
        trace: Vec::new(),
        trace_lines: 200,
        build: None,
        digest: None,
        real_timeout: Duration::from_secs(600),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |what: &str| v.parse::<u64>().map_err(|_| format!("{what} takes a whole number, got {v:?}"));
        let secs = |what: &str| match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 && x <= 24.0 * 3600.0 => Ok(x),
            _ => Err(format!("{what} takes a positive number, got {v:?}")),
        };
        match flag.as_str() {
            "--seeds" => a.seeds = num("--seeds")?,
            "--from" => a.from = num("--from")?,
            "--replay" => a.replay = Some(num("--replay")?),
            "--minutes" => a.params.fault_secs = secs("--minutes")? * 60.0,
            "--seconds" => a.params.fault_secs = secs("--seconds")?,
            "--settle" => a.params.settle_secs = secs("--settle")?,
            "--replicas" => match num("--replicas")? {
                n @ (3 | 5) => a.params.replicas = Some(n),
                n => return Err(format!("--replicas is 3 or 5, got {n}")),
            },
            "--clients" => a.params.clients = num("--clients")?.clamp(1, 64) as usize,
            "--nodes" => match num("--nodes")? {
                n @ 1..=1000 => a.params.nodes = Some(n),
                n => return Err(format!("--nodes is 1 to 1000, got {n}")),
            },
            "--threads" => a.threads = num("--threads")?.clamp(1, 64) as usize,
            "--bug" => a.params.bug = Some(Bug::parse(&v)?),
            "--trace" => a.trace = v.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
            "--trace-lines" => a.trace_lines = num("--trace-lines")? as usize,
            "--build" => a.build = Some(v),
            "--digest" => a.digest = Some(v),
            "--real-timeout" => a.real_timeout = Duration::from_secs_f64(secs("--real-timeout")?),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

/// This build's identity: a hash of the running executable (a replay on another build may
/// schedule differently, and must say so rather than diverge silently).
fn build_id() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    match std::env::current_exe().and_then(std::fs::read) {
        Ok(bytes) => bytes.hash(&mut h),
        Err(_) => env!("CARGO_PKG_VERSION").hash(&mut h),
    }
    format!("{:016x}", h.finish())
}

fn replay_command(a: &Args, r: &SeedReport, build: &str) -> String {
    let mut c = format!("cargo run --release -p sim -- --replay {} --seconds {} --settle {}", r.seed, a.params.fault_secs, a.params.settle_secs);
    if let Some(n) = a.params.replicas {
        c += &format!(" --replicas {n}");
    }
    if a.params.clients != Params::default().clients {
        c += &format!(" --clients {}", a.params.clients);
    }
    if let Some(n) = a.params.nodes {
        c += &format!(" --nodes {n}");
    }
    if let Some(b) = a.params.bug {
        c += &format!(" --bug {}", b.name());
    }
    c + &format!(" --build {build} --digest {:016x}", r.digest)
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim: {e}");
            std::process::exit(2);
        }
    };
    let build = build_id();
    if let Some(b) = &a.build
        && *b != build
    {
        eprintln!("sim: this run was recorded by build {b}; this is build {build}. A seed replays exactly only on the build that ran it: rebuild that commit, or drop --build to run this build's schedule for the seed.");
        std::process::exit(2);
    }
    if let Some(seed) = a.replay {
        let r = run_seed(seed, &a.params);
        let lines = if a.trace_lines == 0 { usize::MAX } else { a.trace_lines };
        print!("{}", r.world.trace.render(&a.trace, lines));
        println!(
            "seed {seed}: {} replicas, {} operations, {} raft leaderships, {} Lease leaderships, {:.1} s simulated, digest {:016x}",
            r.replicas,
            r.ops,
            r.terms,
            r.world.checks.lease_terms.load(std::sync::atomic::Ordering::Relaxed),
            r.simulated.as_secs_f64(),
            r.digest
        );
        if let Some(d) = &a.digest
            && *d != format!("{:016x}", r.digest)
        {
            eprintln!("sim: the replay diverged: digest {:016x}, recorded {d} (the same build must give the same run: a source of nondeterminism)", r.digest);
            std::process::exit(2);
        }
        match r.violation {
            Some(v) => {
                println!("FAILED {v}");
                std::process::exit(1);
            }
            None => println!("passed"),
        }
        return;
    }
    println!("sim: build {build}, seeds {}..{}, {} s of faults each, {} thread(s)", a.from, a.from + a.seeds, a.params.fault_secs, a.threads);
    let next = Arc::new(AtomicU64::new(a.from));
    let end = a.from + a.seeds;
    let failed = Arc::new(AtomicUsize::new(0));
    let simulated_us = Arc::new(AtomicU64::new(0));
    let running: Arc<Mutex<Vec<Option<(u64, Instant)>>>> = Arc::new(Mutex::new(vec![None; a.threads]));
    let a = Arc::new(a);
    let t0 = Instant::now();
    let workers: Vec<_> = (0..a.threads)
        .map(|t| {
            let (next, failed, simulated_us, running, a, build) = (next.clone(), failed.clone(), simulated_us.clone(), running.clone(), a.clone(), build.clone());
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        return;
                    }
                    running.lock().unwrap()[t] = Some((seed, Instant::now()));
                    let r = run_seed(seed, &a.params);
                    running.lock().unwrap()[t] = None;
                    simulated_us.fetch_add(r.simulated.as_micros() as u64, Ordering::Relaxed);
                    if let Some(v) = &r.violation {
                        failed.fetch_add(1, Ordering::SeqCst);
                        let lines = if a.trace_lines == 0 { usize::MAX } else { a.trace_lines };
                        println!(
                            "seed {seed} FAILED ({} replicas): {v}\ntrace (last {} lines{}):\n{}replay: {}",
                            r.replicas,
                            a.trace_lines,
                            if a.trace.is_empty() { "; --trace COMPONENT,... filters".to_string() } else { format!(" of {}", a.trace.join(",")) },
                            r.world.trace.render(&a.trace, lines),
                            replay_command(&a, &r, &build)
                        );
                    } else if a.seeds <= 20 {
                        println!("seed {seed}: passed ({} replicas, {} operations, {} terms, {:.1} s simulated)", r.replicas, r.ops, r.terms, r.simulated.as_secs_f64());
                    }
                }
            })
        })
        .collect();
    // A seed that runs too long in real time has stopped advancing simulated time.
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
        for (seed, since) in running.lock().unwrap().iter().flatten() {
            if since.elapsed() > a.real_timeout {
                println!(
                    "seed {seed} FAILED: [livelock] it ran {:?} of real time without finishing (simulated time no longer advances)\nreplay: {}",
                    a.real_timeout,
                    format!("cargo run --release -p sim -- --replay {seed} --seconds {}", a.params.fault_secs)
                );
                std::process::exit(3);
            }
        }
    }
    let real = t0.elapsed().as_secs_f64();
    let sim = simulated_us.load(Ordering::Relaxed) as f64 / 1e6;
    let f = failed.load(Ordering::SeqCst);
    println!(
        "{} seeds: {} passed, {f} failed; {sim:.0} s simulated in {real:.1} s real ({:.1}x real time on {} thread(s)); {:.0} seeds/hour",
        a.seeds,
        a.seeds as usize - f,
        sim / real.max(1e-9),
        a.threads,
        a.seeds as f64 / real.max(1e-9) * 3600.0
    );
    if f > 0 {
        std::process::exit(1);
    }
}
