//! What a container's `securityContext` asks of the process runtime, and the system calls
//! that give it, between fork and exec: the user and groups (`runAsUser`, `runAsGroup`,
//! `supplementalGroups`, `fsGroup`), the capabilities (containerd's default set for a
//! container running as root, all of them when `privileged`, then `add` and `drop`), and
//! `allowPrivilegeEscalation: false` (no_new_privs). The container's values win over the
//! pod's, as in Kubernetes.
//!
//! Ignored, because a process runtime has nothing to apply them to: `seLinuxOptions`,
//! `seccompProfile`, `appArmorProfile`, `procMount`, `windowsOptions` (kubelet/DESIGN.md).

use serde_json::Value;

/// Linux capability names, by number.
const CAPS: [&str; 41] = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE",
    "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN",
    "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE",
    "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
];

/// containerd's default capabilities for a container that is not privileged.
const DEFAULT: [&str; 14] = ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"];

fn cap_number(name: &str) -> Result<Option<u64>, String> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("CAP_").unwrap_or(&n);
    if n == "ALL" {
        return Ok(None);
    }
    CAPS.iter().position(|c| *c == n).map(|i| Some(i as u64)).ok_or_else(|| format!("unknown capability {name:?}"))
}

/// The privileges a container runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Privileges {
    /// `(uid, gid, supplementary groups)` when the container names a user or group.
    pub user: Option<(u32, u32, Vec<u32>)>,
    /// The capabilities kept, as a bit set.
    pub caps: u64,
    pub no_new_privs: bool,
    /// `securityContext.privileged`: also keeps the kernel's tunables in /proc writable.
    pub privileged: bool,
}

const ALL_CAPS: u64 = (1 << CAPS.len()) - 1;

/// Reads the pod's and the container's `securityContext`.
pub fn of(pod: &Value, container: &Value) -> Result<Privileges, String> {
    let psc = &pod["spec"]["securityContext"];
    let csc = &container["securityContext"];
    let pick = |k: &str| csc.get(k).filter(|v| !v.is_null()).or_else(|| psc.get(k).filter(|v| !v.is_null()));
    let id = |k: &str| -> Result<Option<u32>, String> {
        match pick(k) {
            None => Ok(None),
            Some(v) => v.as_u64().filter(|n| *n <= u32::MAX as u64 - 1).map(|n| Some(n as u32)).ok_or_else(|| format!("securityContext.{k} must be a non-negative 32-bit number, not {v}")),
        }
    };
    let uid = id("runAsUser")?;
    let gid = id("runAsGroup")?;
    if pick("runAsNonRoot") == Some(&Value::Bool(true)) && uid.unwrap_or(0) == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    let mut groups: Vec<u32> = Vec::new();
    for g in psc["supplementalGroups"].as_array().into_iter().flatten() {
        groups.push(g.as_u64().filter(|n| *n <= u32::MAX as u64).ok_or_else(|| format!("supplementalGroups: {g} is not a group id"))? as u32);
    }
    if let Some(f) = psc["fsGroup"].as_u64() {
        groups.push(u32::try_from(f).map_err(|_| format!("fsGroup {f} is not a group id"))?);
    }
    groups.sort_unstable();
    groups.dedup();
    let user = (uid.is_some() || gid.is_some() || !groups.is_empty()).then(|| (uid.unwrap_or(0), gid.unwrap_or(0), groups));
    let privileged = csc["privileged"] == true;
    let mut caps = if privileged { ALL_CAPS } else { DEFAULT.iter().map(|c| 1u64 << CAPS.iter().position(|x| x == c).unwrap_or(0)).fold(0, |a, b| a | b) };
    for name in csc["capabilities"]["add"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
        caps |= cap_number(name)?.map_or(ALL_CAPS, |n| 1 << n);
    }
    for name in csc["capabilities"]["drop"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
        caps &= !cap_number(name)?.map_or(ALL_CAPS, |n| 1 << n);
    }
    let no_new_privs = csc["allowPrivilegeEscalation"] == false && !privileged;
    Ok(Privileges { user, caps, no_new_privs, privileged })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(r: libc::c_long) -> std::io::Result<()> {
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

impl Privileges {
    /// Takes the privileges on (in the child, between fork and exec: system calls only, on
    /// memory prepared before; the groups are in `self`).
    pub fn apply(&self) -> std::io::Result<()> {
        // SAFETY (for the block): prctl, setgroups, setgid, setuid, capget and capset on
        // values owned by `self` or on the stack.
        unsafe {
            for n in 0..CAPS.len() as u64 {
                if self.caps & (1 << n) == 0 && libc::prctl(libc::PR_CAPBSET_DROP, n, 0, 0, 0) < 0 {
                    let e = std::io::Error::last_os_error();
                    // A kernel older than the capability: nothing to drop.
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(e);
                    }
                }
            }
            if let Some((uid, gid, groups)) = &self.user {
                check(libc::setgroups(groups.len(), groups.as_ptr()) as libc::c_long)?;
                check(libc::setgid(*gid) as libc::c_long)?;
                check(libc::setuid(*uid) as libc::c_long)?;
            }
            // As root, the capabilities kept; a user other than root has none left.
            let mut head = CapHeader { version: 0x2008_0522, pid: 0 };
            let mut data = [CapData::default(); 2];
            check(libc::syscall(libc::SYS_capget, &mut head as *mut CapHeader, data.as_mut_ptr()))?;
            let keep = [self.caps as u32, (self.caps >> 32) as u32];
            for (d, k) in data.iter_mut().zip(keep) {
                d.effective &= k;
                d.permitted &= k;
                d.inheritable &= k;
            }
            check(libc::syscall(libc::SYS_capset, &mut head as *mut CapHeader, data.as_ptr()))?;
            if self.no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bit(name: &str) -> u64 {
        1 << cap_number(name).unwrap().unwrap()
    }

    #[test]
    fn the_container_wins_over_the_pod_and_groups_gather() {
        let pod = json!({"spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [4000], "fsGroup": 2000}}});
        let p = of(&pod, &json!({"securityContext": {"runAsUser": 1001}})).unwrap();
        assert_eq!(p.user, Some((1001, 3000, vec![2000, 4000])));
        assert_eq!(of(&json!({}), &json!({})).unwrap().user, None, "no user named: the runtime's (root)");
        assert!(of(&json!({}), &json!({"securityContext": {"runAsUser": -1}})).is_err());
        assert_eq!(of(&json!({}), &json!({"securityContext": {"runAsNonRoot": true}})).unwrap_err(), "container has runAsNonRoot and image will run as root");
        assert!(of(&json!({}), &json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 1}})).is_ok());
    }

    #[test]
    fn capabilities_start_from_containerds_set() {
        let p = of(&json!({}), &json!({})).unwrap();
        assert!(p.caps & bit("CHOWN") != 0 && p.caps & bit("SYS_ADMIN") == 0 && p.caps & bit("NET_ADMIN") == 0);
        let p = of(&json!({}), &json!({"securityContext": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["CAP_CHOWN"]}}})).unwrap();
        assert!(p.caps & bit("NET_ADMIN") != 0 && p.caps & bit("CHOWN") == 0);
        assert_eq!(of(&json!({}), &json!({"securityContext": {"capabilities": {"drop": ["ALL"]}}})).unwrap().caps, 0);
        assert_eq!(of(&json!({}), &json!({"securityContext": {"privileged": true}})).unwrap().caps, ALL_CAPS);
        assert!(of(&json!({}), &json!({"securityContext": {"capabilities": {"add": ["NOPE"]}}})).is_err());
        assert!(of(&json!({}), &json!({"securityContext": {"allowPrivilegeEscalation": false}})).unwrap().no_new_privs);
    }
}
