//! Containers left running by a node process that was killed (SIGKILL, a crash): each start
//! records its process group in `D/pods/<pod>/.fs/<container>/pid` with the process's start
//! time, and the next runtime on the same data directory kills those groups before it starts
//! anything, so that no process (and no mount namespace it holds) outlives its node. The
//! start time tells a recorded process from a later one that reused its pid.

use std::path::Path;

/// The start time of process `pid` (field 22 of /proc/PID/stat, in clock ticks since boot).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Records a container's process group in `dir` (its `.fs/<container>` directory).
pub fn record(dir: &Path, pgid: i32) {
    if let Some(t) = start_time(pgid) {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join("pid"), format!("{pgid} {t}\n"));
    }
}

/// Kills every recorded process group under `root` (the pods' directory) whose leader is
/// still the process recorded. Returns how many were killed.
pub fn reap(root: &Path) -> usize {
    let mut killed = 0;
    for pod in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for ctr in std::fs::read_dir(pod.path().join(".fs")).into_iter().flatten().flatten() {
            let file = ctr.path().join("pid");
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            let mut it = text.split_whitespace().map(|x| x.parse::<u64>().ok());
            if let (Some(Some(pid)), Some(Some(t))) = (it.next(), it.next())
                && pid > 1
                && start_time(pid as i32) == Some(t)
            {
                // SAFETY: signalling a process group this node started (checked by start time).
                unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
                killed += 1;
            }
            let _ = std::fs::remove_file(file);
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_group_is_killed_and_a_reused_pid_is_not() {
        let t = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
        let dir = t.path().join("pod/.fs/c");
        record(&dir, child.id() as i32);
        // A record whose start time does not match (the pid was reused) is left alone.
        let other = t.path().join("pod2/.fs/c");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("pid"), format!("{} 1\n", std::process::id())).unwrap();
        assert_eq!(reap(t.path()), 1);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(!dir.join("pid").exists() && !other.join("pid").exists());
    }

    use std::os::unix::process::CommandExt;
}
