//! CPU profiles of the whole process in flamegraph-ready forms, for performance engineers:
//! `GET /debug/pprof/profile?seconds=N[&format=folded|svg]` samples every thread at 99 Hz
//! (not a divisor of common timer rates, so it does not run in lockstep with them) for N
//! seconds (1..=60) and answers the folded stacks (`thread;outermost;...;innermost count`, one
//! line per distinct stack: the input of flamegraph.pl, inferno and speedscope) or the SVG
//! flame graph itself. One profile at a time; a second request meanwhile gets 409.
//!
//! Sampling is pprof-rs (SIGPROF and a backtrace per sample). Samples whose innermost frame is
//! in libc, libgcc, pthread or the vdso are dropped, as pprof-rs advises, because unwinding
//! from inside them can deadlock; time spent in system calls is undercounted accordingly.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const FREQUENCY_HZ: i32 = 99;
pub const MAX_SECONDS: u64 = 60;

static BUSY: AtomicBool = AtomicBool::new(false);

#[derive(Debug, PartialEq, Eq)]
pub enum ProfileError {
    /// The request asked for something out of bounds.
    Invalid(String),
    /// Another profile is being taken.
    Busy,
    /// The profiler could not start or report.
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Folded,
    Svg,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Result<Format, ProfileError> {
        match s {
            None | Some("folded") => Ok(Format::Folded),
            Some("svg") => Ok(Format::Svg),
            Some(o) => Err(ProfileError::Invalid(format!("format must be folded or svg, not {o:?}"))),
        }
    }
}

/// Ends a profile (after the profiler's guard is dropped): notes the profiler's next buffer
/// file for removal at exit and lets the next profile start.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        note_profiler_buffer();
        BUSY.store(false, Ordering::SeqCst);
    }
}

/// pprof-rs keeps its samples in a named temporary file (`$TMPDIR/.tmpXXXXXX`, reopened by
/// name to build a report) owned by a process-wide profiler that is never dropped, and opens
/// the next profile's file as each profile ends: that file would outlive the process, one per
/// process ever profiled. Its name is noted here and the file removed when the process exits
/// (`atexit`: a return from `main`, as on SIGTERM; a killed process still leaves it).
static BUFFER: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

fn note_profiler_buffer() {
    let tmp = std::env::temp_dir();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return };
    let open: Vec<_> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|t| t.parent() == Some(tmp.as_path()) && t.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".tmp")) && t.is_file())
        .collect();
    // Only when it is unambiguous: nothing else in capstan opens such a file.
    let [path] = <[_; 1]>::try_from(open).unwrap_or_else(|_| [std::path::PathBuf::new()]);
    let Ok(mut b) = BUFFER.lock() else { return };
    let first = b.is_none();
    *b = Some(path).filter(|p| !p.as_os_str().is_empty());
    if first {
        // SAFETY: registers a function with no arguments that only takes a lock without waiting
        // and removes a file.
        unsafe { libc::atexit(remove_profiler_buffer) };
    }
}

/// Removes the profiler's buffer file; run at exit (the profiler cannot report after it).
extern "C" fn remove_profiler_buffer() {
    if let Ok(mut b) = BUFFER.try_lock()
        && let Some(p) = b.take()
    {
        let _ = std::fs::remove_file(p);
    }
}

/// `GET /debug/pprof/profile?seconds=N&format=folded|svg` (10 s and folded by default).
pub fn router() -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/debug/pprof/profile",
        axum::routing::get(|axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>| async move {
            let seconds = match q.get("seconds").map(|s| s.parse::<u64>()) {
                None => Ok(10),
                Some(Ok(n)) => Ok(n),
                Some(Err(_)) => Err(ProfileError::Invalid("seconds must be a whole number".into())),
            };
            let result = match (seconds, Format::parse(q.get("format").map(String::as_str))) {
                (Ok(s), Ok(f)) => profile(s, f).await.map(|body| (f, body)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            match result {
                Ok((Format::Svg, body)) => ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response(),
                Ok((Format::Folded, body)) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response(),
                Err(ProfileError::Invalid(m)) => (StatusCode::BAD_REQUEST, format!("{m}\n")).into_response(),
                Err(ProfileError::Busy) => (StatusCode::CONFLICT, "a profile is already being taken; try again when it ends\n").into_response(),
                Err(ProfileError::Failed(m)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{m}\n")).into_response(),
            }
        }),
    )
}

/// Samples the process for `seconds` and renders the profile.
pub async fn profile(seconds: u64, format: Format) -> Result<Vec<u8>, ProfileError> {
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(ProfileError::Invalid(format!("seconds must be 1..={MAX_SECONDS}, not {seconds}")));
    }
    if BUSY.swap(true, Ordering::SeqCst) {
        return Err(ProfileError::Busy);
    }
    let _release = Release;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| ProfileError::Failed(format!("starting the profiler: {e}")))?;
    // The profile's length is the request's own parameter, not a wait for an event.
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let report = guard.report().build().map_err(|e| ProfileError::Failed(format!("building the report: {e}")))?;
    drop(guard);
    match format {
        Format::Folded => Ok(folded(&report).into_bytes()),
        Format::Svg => {
            let mut out = Vec::new();
            report.flamegraph(&mut out).map_err(|e| ProfileError::Failed(format!("drawing the flame graph: {e}")))?;
            Ok(out)
        }
    }
}

/// `thread;outermost;...;innermost count`, sorted, frames demangled.
fn folded(report: &pprof::Report) -> String {
    let mut lines: Vec<(String, isize)> = report
        .data
        .iter()
        .map(|(frames, count)| {
            let mut line = frames.thread_name.replace([';', ' '], "_");
            // pprof-rs lists frames innermost first, inlined ones innermost first too.
            for group in frames.frames.iter().rev() {
                for sym in group.iter().rev() {
                    line.push(';');
                    line.push_str(&sym.name().replace([';', ' '], "_"));
                }
            }
            (line, *count)
        })
        .collect();
    lines.sort();
    let mut out = String::new();
    for (l, c) in lines {
        let _ = writeln!(out, "{l} {c}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[inline(never)]
    fn burn_cpu_for_the_profiler(stop: &AtomicBool) -> u64 {
        let mut x = 1u64;
        while !stop.load(Ordering::Relaxed) {
            for i in 0..10_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        x
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_profile_is_folded_stacks_with_the_busy_function_and_bad_requests_are_named() {
        assert!(matches!(profile(0, Format::Folded).await, Err(ProfileError::Invalid(m)) if m.contains("seconds")));
        assert!(matches!(profile(61, Format::Folded).await, Err(ProfileError::Invalid(_))));
        assert!(matches!(Format::parse(Some("pdf")), Err(ProfileError::Invalid(m)) if m.contains("folded or svg")));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let burner = std::thread::Builder::new().name("burner".into()).spawn(move || burn_cpu_for_the_profiler(&s)).unwrap();
        let (a, b) = tokio::join!(profile(1, Format::Folded), async {
            // A second profile while the first runs is refused. The first has set BUSY
            // before its first await, and join! polls it first.
            profile(1, Format::Folded).await
        });
        let svg = profile(1, Format::Svg).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        burner.join().unwrap();
        assert!(String::from_utf8_lossy(&svg).contains("<svg"));
        assert_eq!(b, Err(ProfileError::Busy));
        let text = String::from_utf8(a.unwrap()).unwrap();
        let burning: u64 = text
            .lines()
            .filter(|l| l.starts_with("burner;") && l.contains("burn_cpu_for_the_profiler"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert!(burning > 0, "no sample of the busy thread in:\n{text}");
        // Each line: stack, a space, a count.
        assert!(text.lines().all(|l| l.rsplit_once(' ').is_some_and(|(s, c)| !s.is_empty() && c.parse::<u64>().is_ok())));
        // The profiler's buffer for the next profile is noted, and what runs at exit removes it.
        let buffer = BUFFER.lock().unwrap().clone().expect("the profiler's next buffer file is noted");
        assert!(buffer.is_file(), "{} is not the open buffer", buffer.display());
        remove_profiler_buffer();
        assert!(!buffer.exists(), "{} is left behind at exit", buffer.display());
    }
}
