//! Resource usage from /proc (and cgroup v2 when containers have cgroups): cumulative CPU time
//! and resident memory of a container's process group, and of the whole machine. Rates are
//! computed by the sampler from two readings, as metrics-server does from the kubelet's.

use std::path::Path;

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if t > 0 { t as u64 } else { 4096 }
}

/// From one `/proc/<pid>/stat` line: (pgid, utime + stime in ticks, rss in pages).
pub fn parse_stat(line: &str) -> Option<(i32, u64, u64)> {
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let rest = &line[line.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); pgid is field 5, utime 14, stime 15, rss 24.
    let pgid = f.get(2)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss: u64 = f.get(21)?.parse().ok()?;
    Some((pgid, utime + stime, rss))
}

/// Usage of every process group in `pgids` at once (one pass over /proc): (cpu ns, rss bytes).
pub fn groups_usage(pgids: &[i32]) -> Vec<(u64, u64)> {
    let mut out = vec![(0u64, 0u64); pgids.len()];
    if pgids.is_empty() {
        return out;
    }
    let tick_ns = 1_000_000_000 / clk_tck();
    let page = page_size();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(line) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if let Some((pgid, ticks, rss)) = parse_stat(&line)
            && let Some(i) = pgids.iter().position(|g| *g == pgid)
        {
            out[i].0 += ticks * tick_ns;
            out[i].1 += rss * page;
        }
    }
    out
}

/// Whether any process of the group is alive (for tests and the shutdown path).
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::killpg(pgid, 0) == 0 }
}

/// The machine: (cpu ns used by everything but idle, memory in use in bytes, memory total).
pub fn machine_usage() -> (u64, u64, u64) {
    let tick_ns = 1_000_000_000 / clk_tck();
    let cpu = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let l = s.lines().next()?.to_string();
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal
            let busy: u64 = v.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4 && *i < 8).map(|(_, x)| x).sum();
            Some(busy * tick_ns)
        })
        .unwrap_or(0);
    let (total, avail) = meminfo();
    (cpu, total.saturating_sub(avail), total)
}

/// (MemTotal, MemAvailable) in bytes.
pub fn meminfo() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |k: &str| {
        s.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0) * 1024
    };
    (get("MemTotal:"), get("MemAvailable:"))
}

/// Free bytes of the filesystem holding `p` (for `ephemeral-storage`).
pub fn fs_bytes(p: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return 0 };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) == 0 { s.f_blocks as u64 * s.f_frsize as u64 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name() {
        let l = "1234 (my prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 100 1000000 250 18446744073709551615";
        assert_eq!(parse_stat(l), Some((1234, 10, 250)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_counted() {
        let me = std::process::id() as i32;
        // SAFETY: getpgid on our own pid.
        let pgid = unsafe { libc::getpgid(me) };
        let u = groups_usage(&[pgid]);
        assert!(u[0].1 > 0, "our own group has resident memory");
        let (_, used, total) = machine_usage();
        assert!(total > 0 && used <= total);
    }
}
