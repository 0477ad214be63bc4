//! Pod Security Admission, as Kubernetes has it: a namespace's labels
//! `pod-security.kubernetes.io/{enforce,warn,audit}` name a level (`privileged`, `baseline`,
//! `restricted`); a pod created there that violates the `enforce` level is refused (403, with
//! every violation named), one that violates the `warn` level is created with a `Warning`
//! header, and a workload whose pod template violates `enforce` or `warn` gets the warning
//! (pods are enforced, templates are not). The checks are Kubernetes' Pod Security Standards,
//! worded as its admission words them, at the version a namespace's `*-version` label pins
//! (`v1.X`; unset, `latest` or newer than this server: the latest): a check is applied from
//! the Kubernetes version that introduced it, and the sysctls allowed grew in 1.27 and 1.29.
//! The `audit` label is accepted; its annotations on audit events are not written yet.

use serde_json::Value;

/// A Pod Security Standards level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// The Kubernetes minor version this server's checks are (a newer label means these).
const LATEST_MINOR: u32 = 33;

/// The version of the Pod Security Standards a check is made at: `v1.MINOR`, or the latest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(Option<u32>);

impl Version {
    pub const LATEST: Version = Version(None);

    /// From a `*-version` label's value (an invalid one, refused when the namespace is
    /// written, counts as the latest).
    pub fn parse(label: Option<&str>) -> Version {
        match label.and_then(|v| v.strip_prefix("v1.")).and_then(|m| m.parse::<u32>().ok()) {
            Some(m) if m < LATEST_MINOR => Version(Some(m)),
            _ => Version::LATEST,
        }
    }

    /// Whether a check Kubernetes introduced in 1.`minor` applies at this version.
    fn since(self, minor: u32) -> bool {
        self.0.is_none_or(|m| m >= minor)
    }

    fn as_string(self) -> String {
        self.0.map_or("latest".into(), |m| format!("v1.{m}"))
    }
}

/// The version a namespace's labels pin for `mode`.
pub fn version_of(ns_labels: &Value, mode: &str) -> Version {
    Version::parse(ns_labels[format!("{LABEL_PREFIX}{mode}-version")].as_str())
}

/// The level a namespace's labels give for `mode` (`enforce`, `warn`, `audit`): privileged
/// when unset (Kubernetes' default).
pub fn level_of(ns_labels: &Value, mode: &str) -> Level {
    ns_labels[format!("{LABEL_PREFIX}{mode}")].as_str().and_then(Level::parse).unwrap_or(Level::Privileged)
}

/// Invalid values of the namespace's Pod Security labels, as (field, message).
pub fn label_errors(ns_labels: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in ns_labels.as_object().into_iter().flatten() {
        let Some(mode) = k.strip_prefix(LABEL_PREFIX) else { continue };
        let v = v.as_str().unwrap_or("");
        let field = format!("metadata.labels[{k}]");
        match mode {
            "enforce" | "warn" | "audit" if Level::parse(v).is_none() => out.push((field, format!("Invalid value: {v:?}: must be one of privileged, baseline, restricted"))),
            "enforce-version" | "warn-version" | "audit-version" if !(v == "latest" || is_version(v)) => {
                out.push((field, format!("Invalid value: {v:?}: must be \"latest\" or \"v1.x\"")))
            }
            _ => {}
        }
    }
    out
}

fn is_version(v: &str) -> bool {
    v.strip_prefix("v1.").is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
}

const BASELINE_CAPS: &[&str] = &["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"];
/// The sysctls baseline allows, each with the minor version that allowed it.
const SAFE_SYSCTLS: &[(&str, u32)] = &[
    ("kernel.shm_rmid_forced", 0),
    ("net.ipv4.ip_local_port_range", 0),
    ("net.ipv4.ip_unprivileged_port_start", 0),
    ("net.ipv4.tcp_syncookies", 0),
    ("net.ipv4.ping_group_range", 0),
    ("net.ipv4.ip_local_reserved_ports", 27),
    ("net.ipv4.tcp_keepalive_time", 29),
    ("net.ipv4.tcp_fin_timeout", 29),
    ("net.ipv4.tcp_keepalive_intvl", 29),
    ("net.ipv4.tcp_keepalive_probes", 29),
];
const RESTRICTED_VOLUMES: &[&str] = &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

fn quoted(list: &[String]) -> String {
    list.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 { one.to_string() } else { many.to_string() }
}

/// Every container of a pod spec, with its name.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"].iter().flat_map(|k| spec[*k].as_array().into_iter().flatten()).collect()
}

/// The violations of `level` at `version` by a pod spec, worded as Kubernetes' admission
/// words them.
pub fn violations(level: Level, version: Version, spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let cs = containers(spec);
    let name = |c: &Value| c["name"].as_str().unwrap_or("").to_string();
    let psc = &spec["securityContext"];
    // Baseline.
    let hosts: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"].iter().filter(|k| spec[**k].as_bool() == Some(true)).map(|k| format!("{k}=true")).collect();
    if !hosts.is_empty() {
        out.push(format!("host namespaces ({})", hosts.join(", ")));
    }
    let privileged: Vec<String> = cs.iter().filter(|c| c["securityContext"]["privileged"].as_bool() == Some(true)).map(|c| name(c)).collect();
    if !privileged.is_empty() {
        out.push(format!("privileged ({} {} must not set securityContext.privileged=true)", plural(privileged.len(), "container", "containers"), quoted(&privileged)));
    }
    let mut caps = Vec::new();
    for c in &cs {
        let added: Vec<String> = c["securityContext"]["capabilities"]["add"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).filter(|cap| !BASELINE_CAPS.contains(cap)).map(str::to_string).collect();
        if !added.is_empty() {
            caps.push(format!("container {:?} must not include {} in securityContext.capabilities.add", name(c), quoted(&added)));
        }
    }
    if !caps.is_empty() {
        out.push(format!("non-default capabilities ({})", caps.join("; ")));
    }
    let host_paths: Vec<String> = spec["volumes"].as_array().into_iter().flatten().filter(|v| v["hostPath"].is_object()).map(|v| v["name"].as_str().unwrap_or("").to_string()).collect();
    if !host_paths.is_empty() {
        out.push(format!("hostPath volumes ({} {})", plural(host_paths.len(), "volume", "volumes"), quoted(&host_paths)));
    }
    let mut ports = Vec::new();
    for c in &cs {
        let hp: Vec<String> = c["ports"].as_array().into_iter().flatten().filter_map(|p| p["hostPort"].as_i64()).filter(|p| *p != 0).map(|p| p.to_string()).collect();
        if !hp.is_empty() {
            ports.push(format!("container {:?} uses {} {}", name(c), plural(hp.len(), "hostPort", "hostPorts"), hp.join(", ")));
        }
    }
    if !ports.is_empty() {
        out.push(format!("hostPort ({})", ports.join("; ")));
    }
    let proc_mount: Vec<String> = cs.iter().filter(|c| c["securityContext"]["procMount"].as_str().is_some_and(|m| m != "Default")).map(|c| name(c)).collect();
    if !proc_mount.is_empty() {
        out.push(format!("procMount ({} {} must not set securityContext.procMount to \"Unmasked\")", plural(proc_mount.len(), "container", "containers"), quoted(&proc_mount)));
    }
    let unconfined_pod = psc["seccompProfile"]["type"].as_str() == Some("Unconfined");
    let unconfined: Vec<String> = cs.iter().filter(|c| c["securityContext"]["seccompProfile"]["type"].as_str() == Some("Unconfined")).map(|c| name(c)).collect();
    if version.since(19) && (unconfined_pod || !unconfined.is_empty()) {
        let who = if unconfined_pod { "pod".to_string() } else { format!("{} {}", plural(unconfined.len(), "container", "containers"), quoted(&unconfined)) };
        out.push(format!("seccompProfile ({who} must not set securityContext.seccompProfile.type to \"Unconfined\")"));
    }
    let safe = |n: &str| SAFE_SYSCTLS.iter().any(|(s, since)| *s == n && version.since(*since));
    let sysctls: Vec<String> = psc["sysctls"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).filter(|n| !safe(n)).map(str::to_string).collect();
    if !sysctls.is_empty() {
        out.push(format!("forbidden sysctls ({})", sysctls.join(", ")));
    }
    if level == Level::Baseline {
        return out;
    }
    // Restricted.
    let mut vols = Vec::new();
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(kind) = v.as_object().and_then(|o| o.keys().find(|k| *k != "name")) {
            if !RESTRICTED_VOLUMES.contains(&kind.as_str()) {
                vols.push(format!("volume {:?} uses restricted volume type {kind:?}", v["name"].as_str().unwrap_or("")));
            }
        }
    }
    if !vols.is_empty() {
        out.push(format!("restricted volume types ({})", vols.join("; ")));
    }
    let escalation: Vec<String> = cs.iter().filter(|c| c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false)).map(|c| name(c)).collect();
    if version.since(8) && !escalation.is_empty() {
        out.push(format!("allowPrivilegeEscalation != false ({} {} must set securityContext.allowPrivilegeEscalation=false)", plural(escalation.len(), "container", "containers"), quoted(&escalation)));
    }
    let mut unrestricted = Vec::new();
    for c in &cs {
        let cap = &c["securityContext"]["capabilities"];
        let drops_all = cap["drop"].as_array().is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")));
        if !drops_all {
            unrestricted.push(format!("container {:?} must set securityContext.capabilities.drop=[\"ALL\"]", name(c)));
        }
        let added: Vec<String> = cap["add"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).filter(|a| *a != "NET_BIND_SERVICE").map(str::to_string).collect();
        if !added.is_empty() {
            unrestricted.push(format!("container {:?} must not include {} in securityContext.capabilities.add", name(c), quoted(&added)));
        }
    }
    if version.since(22) && !unrestricted.is_empty() {
        out.push(format!("unrestricted capabilities ({})", unrestricted.join("; ")));
    }
    let pod_non_root = psc["runAsNonRoot"].as_bool() == Some(true);
    let pod_says_root = psc["runAsNonRoot"].as_bool() == Some(false);
    let root: Vec<String> = cs.iter().filter(|c| match c["securityContext"]["runAsNonRoot"].as_bool() { Some(v) => !v, None => !pod_non_root }).map(|c| name(c)).collect();
    if pod_says_root || !root.is_empty() {
        let who = if pod_says_root && root.len() == cs.len() { "pod".to_string() } else { format!("pod or {} {}", plural(root.len(), "container", "containers"), quoted(&root)) };
        out.push(format!("runAsNonRoot != true ({who} must set securityContext.runAsNonRoot=true)"));
    }
    let uid0_pod = psc["runAsUser"].as_i64() == Some(0);
    let uid0: Vec<String> = cs.iter().filter(|c| c["securityContext"]["runAsUser"].as_i64() == Some(0)).map(|c| name(c)).collect();
    if version.since(23) && (uid0_pod || !uid0.is_empty()) {
        let who = if uid0_pod { "pod".to_string() } else { format!("{} {}", plural(uid0.len(), "container", "containers"), quoted(&uid0)) };
        out.push(format!("runAsUser=0 ({who} must not set runAsUser=0)"));
    }
    let ok_profile = |v: &Value| matches!(v["seccompProfile"]["type"].as_str(), Some("RuntimeDefault" | "Localhost"));
    let pod_profile = ok_profile(psc);
    let no_profile: Vec<String> = cs.iter().filter(|c| if c["securityContext"]["seccompProfile"]["type"].is_string() { !ok_profile(&c["securityContext"]) } else { !pod_profile }).map(|c| name(c)).collect();
    if version.since(19) && !no_profile.is_empty() {
        let who = if !pod_profile && no_profile.len() == cs.len() { format!("pod or {} {}", plural(no_profile.len(), "container", "containers"), quoted(&no_profile)) } else { format!("{} {}", plural(no_profile.len(), "container", "containers"), quoted(&no_profile)) };
        out.push(format!("seccompProfile ({who} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"));
    }
    out
}

/// `PodSecurity "LEVEL:VERSION": ...` for `found` (after "violates" or "would violate"), or
/// `None` if there are none.
pub fn describe(level: Level, version: Version, found: &[String]) -> Option<String> {
    (!found.is_empty()).then(|| format!("PodSecurity \"{}:{}\": {}", level.as_str(), version.as_string(), found.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plain_pod_is_baseline_but_not_restricted() {
        let spec = json!({"containers": [{"name": "c", "image": "x"}]});
        assert!(violations(Level::Baseline, Version::LATEST, &spec).is_empty());
        let r = violations(Level::Restricted, Version::LATEST, &spec);
        assert_eq!(
            describe(Level::Restricted, Version::LATEST, &r).unwrap(),
            "PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
    }

    #[test]
    fn a_restricted_pod_passes_every_level() {
        let spec = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "x", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "v", "configMap": {"name": "cm"}}]});
        for l in [Level::Privileged, Level::Baseline, Level::Restricted] {
            assert!(violations(l, Version::LATEST, &spec).is_empty(), "{l:?}: {:?}", violations(l, Version::LATEST, &spec));
        }
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let spec = json!({"hostNetwork": true, "hostPID": true,
            "containers": [{"name": "c", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}, "ports": [{"containerPort": 80, "hostPort": 8080}]}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}]});
        let v = violations(Level::Baseline, Version::LATEST, &spec);
        assert_eq!(v, vec![
            "host namespaces (hostNetwork=true, hostPID=true)",
            "privileged (container \"c\" must not set securityContext.privileged=true)",
            "non-default capabilities (container \"c\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)",
            "hostPath volumes (volume \"root\")",
            "hostPort (container \"c\" uses hostPort 8080)",
        ]);
        // Privileged allows all of it.
        assert!(violations(Level::Privileged, Version::LATEST, &spec).is_empty());
    }

    #[test]
    fn a_version_label_applies_the_checks_of_that_version() {
        // A plain pod running as root, with a sysctl 1.27 allowed.
        let spec = json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0, "sysctls": [{"name": "net.ipv4.ip_local_reserved_ports", "value": "1"}]},
            "containers": [{"name": "c", "image": "x"}]});
        let names = |level, v: &str| violations(level, Version::parse(Some(v)), &spec).iter().map(|x| x.split(' ').next().unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(names(Level::Restricted, "latest"), ["allowPrivilegeEscalation", "unrestricted", "runAsUser=0", "seccompProfile"]);
        assert_eq!(names(Level::Restricted, "v1.23"), ["forbidden", "allowPrivilegeEscalation", "unrestricted", "runAsUser=0", "seccompProfile"], "the sysctl only from 1.27");
        assert_eq!(names(Level::Restricted, "v1.22"), ["forbidden", "allowPrivilegeEscalation", "unrestricted", "seccompProfile"], "runAsUser=0 from 1.23");
        assert_eq!(names(Level::Restricted, "v1.21"), ["forbidden", "allowPrivilegeEscalation", "seccompProfile"], "capabilities from 1.22");
        assert_eq!(names(Level::Restricted, "v1.18"), ["forbidden", "allowPrivilegeEscalation"], "seccomp from 1.19");
        assert_eq!(names(Level::Restricted, "v1.7"), ["forbidden"], "privilege escalation from 1.8");
        assert_eq!(names(Level::Baseline, "v1.99"), Vec::<String>::new(), "newer than this server: the latest");
        let v = Version::parse(Some("v1.22"));
        assert_eq!(describe(Level::Restricted, v, &violations(Level::Restricted, v, &spec)).unwrap().split(':').take(2).collect::<Vec<_>>().join(":"), "PodSecurity \"restricted:v1.22\"");
        let labels = json!({"pod-security.kubernetes.io/enforce-version": "v1.20"});
        assert_eq!((version_of(&labels, "enforce"), version_of(&labels, "warn")), (Version(Some(20)), Version::LATEST));
    }

    #[test]
    fn namespace_labels_choose_the_level_and_bad_values_are_named() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/warn": "restricted"});
        assert_eq!(level_of(&labels, "enforce"), Level::Baseline);
        assert_eq!(level_of(&labels, "warn"), Level::Restricted);
        assert_eq!(level_of(&labels, "audit"), Level::Privileged);
        assert!(label_errors(&labels).is_empty());
        let bad = json!({"pod-security.kubernetes.io/enforce": "strict", "pod-security.kubernetes.io/warn-version": "1.2"});
        let e = label_errors(&bad);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().any(|(f, m)| f == "metadata.labels[pod-security.kubernetes.io/enforce]" && m.contains("must be one of privileged, baseline, restricted")));
    }
}
