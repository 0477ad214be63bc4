//! Container resource limits through cgroup v2, when the machine delegates it.
//!
//! `Cgroups::detect` succeeds only when `/sys/fs/cgroup` is a cgroup v2 hierarchy with the
//! `cpu` and `memory` controllers available to the kubelet's own cgroup and a child cgroup
//! can be created and given them. Each container then gets `<own>/capstan-pods/<uid>-<name>`
//! with `memory.max` = its memory limit and `cpu.max` = its CPU limit per 100 ms period;
//! usage is read from `cpu.stat` and `memory.current`, and stopping kills through
//! `cgroup.kill`.
//!
//! When detection fails (cgroup v1 hosts, as the machine this was written on, or no
//! delegation), limits are not enforced by the kernel: the kubelet's sampler kills a
//! container whose resident memory exceeds its memory limit (reported `OOMKilled`, exit 137,
//! as Kubernetes does) and CPU limits are not enforced. `capstan up` says which mode it runs
//! in at start.

use std::path::{Path, PathBuf};

use api::Quantity;
use serde_json::Value;

pub const CPU_PERIOD_US: i64 = 100_000;

/// `cpu.max` for a CPU limit: quota per period (Kubernetes' minimum quota is 1 ms).
pub fn cpu_max(limit: Option<Quantity>) -> String {
    match limit {
        Some(q) if q.milli > 0 => format!("{} {CPU_PERIOD_US}", (q.milli * CPU_PERIOD_US / 1000).max(1000)),
        _ => format!("max {CPU_PERIOD_US}"),
    }
}

/// `memory.max` for a memory limit.
pub fn memory_max(limit: Option<Quantity>) -> String {
    match limit {
        Some(q) if q.milli > 0 => q.units_ceil().to_string(),
        _ => "max".into(),
    }
}

pub fn limits(container: &Value) -> (Option<Quantity>, Option<Quantity>) {
    let q = |r: &str| container["resources"]["limits"][r].as_str().and_then(|s| Quantity::parse(s).ok());
    (q("cpu"), q("memory"))
}

#[derive(Clone, Debug)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// Whether this machine lets the kubelet manage cgroup v2 limits; the error says why not.
    pub fn detect() -> Result<Cgroups, String> {
        let base = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).map_err(|_| "/sys/fs/cgroup is not a cgroup v2 hierarchy".to_string())?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string())))
            .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
        let own_dir = base.join(own.trim_start_matches('/'));
        let available = std::fs::read_to_string(own_dir.join("cgroup.controllers")).unwrap_or(controllers);
        for c in ["cpu", "memory"] {
            if !available.split_whitespace().any(|x| x == c) {
                return Err(format!("the {c} controller is not delegated to {}", own_dir.display()));
            }
        }
        let root = own_dir.join("capstan-pods");
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory").map_err(|e| format!("enabling cpu and memory in {}: {e}", root.display()))?;
        Ok(Cgroups { root })
    }

    /// Creates a container's cgroup with its limits.
    pub fn create(&self, id: &str, container: &Value) -> std::io::Result<PathBuf> {
        let dir = self.root.join(id);
        std::fs::create_dir_all(&dir)?;
        let (cpu, mem) = limits(container);
        std::fs::write(dir.join("cpu.max"), cpu_max(cpu))?;
        std::fs::write(dir.join("memory.max"), memory_max(mem))?;
        Ok(dir)
    }

    /// Makes the child `cmd` starts join the cgroup `dir` before it execs: memory the program
    /// touches from its first instruction is charged (and limited) there, which moving it in
    /// after spawn cannot promise. If joining fails, the spawn fails with that error.
    pub fn join_before_exec(dir: &Path, cmd: &mut tokio::process::Command) {
        let Ok(procs) = std::ffi::CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes()) else { return };
        // SAFETY: between fork and exec only async-signal-safe calls are made (open, write,
        // close on memory prepared before the fork); nothing allocates or takes a lock.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" is the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 { Err(e) } else { Ok(()) }
            });
        }
    }

    /// (cpu ns, memory bytes) of a container cgroup.
    pub fn usage(dir: &Path) -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let usec: u64 = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
        let mem: u64 = std::fs::read_to_string(dir.join("memory.current")).ok()?.trim().parse().ok()?;
        Some((usec * 1000, mem))
    }

    /// Whether the kernel killed the container for memory (`memory.events` oom_kill > 0).
    pub fn oom_killed(dir: &Path) -> bool {
        std::fs::read_to_string(dir.join("memory.events"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse::<u64>().ok()))
            .is_some_and(|n| n > 0)
    }

    pub fn remove(dir: &Path) {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_files() {
        let q = |s: &str| Some(Quantity::parse(s).unwrap());
        assert_eq!(cpu_max(q("500m")), "50000 100000");
        assert_eq!(cpu_max(q("2")), "200000 100000");
        assert_eq!(cpu_max(q("1m")), "1000 100000", "at least 1 ms per period");
        assert_eq!(cpu_max(None), "max 100000");
        assert_eq!(memory_max(q("64Mi")), "67108864");
        assert_eq!(memory_max(None), "max");
    }

    #[test]
    fn detection_explains_itself() {
        // On a cgroup v1 host this is an error with a reason; on a delegated v2 host, a root.
        match Cgroups::detect() {
            Ok(c) => assert!(c.root.ends_with("capstan-pods")),
            Err(why) => assert!(!why.is_empty()),
        }
    }
}
