//! Pure pod logic: restart decisions, CrashLoopBackOff delays, `$(VAR)` expansion, the
//! environment from ConfigMaps, Secrets and the downward API, node admission, and the pod
//! status a kubelet reports. No I/O and no clocks: times come in as arguments, so every rule
//! is tested as a table.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use api::Quantity;
use serde_json::{Map, Value, json};

/// `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn of(pod: &Value) -> RestartPolicy {
        match pod["spec"]["restartPolicy"].as_str() {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` starts again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// Kubernetes' container restart backoff: the first restart is immediate, then `base`,
/// doubling up to `cap` (10 s and 300 s in Kubernetes); a container that ran for `reset`
/// (10 minutes) before exiting starts over.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub reset: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(300), reset: Duration::from_secs(600) }
    }
}

impl Backoff {
    /// Given the previous delay and how long the container ran, the delay before the next
    /// start.
    pub fn next(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            _ if ran >= self.reset => Duration::ZERO,
            None => Duration::ZERO,
            Some(d) if d.is_zero() => self.base,
            Some(d) => (d * 2).min(self.cap),
        }
    }
}

/// Expands `$(NAME)` references as Kubernetes does: defined names are replaced, `$$` is a
/// literal `$`, anything else is left as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    if !s.contains('$') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(close) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + close];
                    if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                        out.push_str(v);
                        i += close + 3;
                        continue;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The ConfigMaps and Secrets a container's environment refers to (names, deduplicated).
pub fn env_sources(container: &Value) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let add = |list: &mut Vec<String>, n: Option<&str>| {
        if let Some(n) = n
            && !list.iter().any(|x| x == n)
        {
            list.push(n.to_string());
        }
    };
    for e in container["env"].as_array().into_iter().flatten() {
        add(&mut cms, e["valueFrom"]["configMapKeyRef"]["name"].as_str());
        add(&mut secrets, e["valueFrom"]["secretKeyRef"]["name"].as_str());
    }
    for e in container["envFrom"].as_array().into_iter().flatten() {
        add(&mut cms, e["configMapRef"]["name"].as_str());
        add(&mut secrets, e["secretRef"]["name"].as_str());
    }
    (cms, secrets)
}

/// What `env_sources` named, fetched: `None` for one that does not exist. Secret values are
/// already base64-decoded.
#[derive(Default, Debug)]
pub struct EnvData {
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

/// A container's environment, in order, or the reason it cannot start
/// (`CreateContainerConfigError` in Kubernetes).
pub fn resolve_env(pod: &Value, container: &Value, data: &EnvData) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(x, _)| *x != k);
        env.push((k, v));
    };
    for src in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = src["prefix"].as_str().unwrap_or("");
        let (kind, r, map) = if let Some(r) = src.get("configMapRef") {
            ("configmap", r, &data.config_maps)
        } else if let Some(r) = src.get("secretRef") {
            ("secret", r, &data.secrets)
        } else {
            continue;
        };
        let name = r["name"].as_str().unwrap_or("");
        match map.get(name).and_then(|m| m.as_ref()) {
            Some(m) => {
                for (k, v) in m {
                    set(&mut env, format!("{prefix}{k}"), v.clone());
                }
            }
            None if r["optional"].as_bool() == Some(true) => {}
            None => return Err(format!("{kind} \"{name}\" not found")),
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let Some(name) = e["name"].as_str() else { continue };
        if let Some(v) = e.get("value").and_then(|v| v.as_str()) {
            let v = expand(v, &env);
            set(&mut env, name.to_string(), v);
            continue;
        }
        let from = &e["valueFrom"];
        let value = if let Some(r) = from.get("configMapKeyRef") {
            key_ref("configmap", r, &data.config_maps)?
        } else if let Some(r) = from.get("secretKeyRef") {
            key_ref("secret", r, &data.secrets)?
        } else if let Some(r) = from.get("fieldRef") {
            Some(field_ref(pod, r["fieldPath"].as_str().unwrap_or(""))?)
        } else if let Some(r) = from.get("resourceFieldRef") {
            Some(resource_field_ref(pod, container, r)?)
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(&mut env, name.to_string(), v);
        }
    }
    Ok(env)
}

fn key_ref(kind: &str, r: &Value, map: &HashMap<String, Option<BTreeMap<String, String>>>) -> Result<Option<String>, String> {
    let name = r["name"].as_str().unwrap_or("");
    let key = r["key"].as_str().unwrap_or("");
    let optional = r["optional"].as_bool() == Some(true);
    match map.get(name).and_then(|m| m.as_ref()) {
        None if optional => Ok(None),
        None => Err(format!("{kind} \"{name}\" not found")),
        Some(m) => match m.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(format!("couldn't find key {key} in {kind} {name}")),
        },
    }
}

/// The downward API's `fieldRef` paths a kubelet resolves.
pub fn field_ref(pod: &Value, path: &str) -> Result<String, String> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let bracket = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?.strip_suffix("']").map(|k| k.to_string())
    };
    Ok(match path {
        "metadata.name" => s(&pod["metadata"]["name"]),
        "metadata.namespace" => s(&pod["metadata"]["namespace"]),
        "metadata.uid" => s(&pod["metadata"]["uid"]),
        "spec.nodeName" => s(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => s(&pod["spec"]["serviceAccountName"]),
        "status.hostIP" => s(&pod["status"]["hostIP"]),
        "status.podIP" => s(&pod["status"]["podIP"]),
        "status.hostIPs" | "status.podIPs" => {
            let list = if path == "status.hostIPs" { &pod["status"]["hostIPs"] } else { &pod["status"]["podIPs"] };
            list.as_array().into_iter().flatten().map(|x| s(&x["ip"])).collect::<Vec<_>>().join(",")
        }
        _ => {
            if let Some(k) = bracket("metadata.labels['") {
                s(&pod["metadata"]["labels"][k.as_str()])
            } else if let Some(k) = bracket("metadata.annotations['") {
                s(&pod["metadata"]["annotations"][k.as_str()])
            } else {
                return Err(format!("unsupported fieldRef fieldPath {path:?}"));
            }
        }
    })
}

pub(crate) fn resource_field_ref(pod: &Value, container: &Value, r: &Value) -> Result<String, String> {
    let c = match r["containerName"].as_str() {
        Some(n) if !n.is_empty() => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == n)
            .ok_or_else(|| format!("resourceFieldRef: no container {n:?}"))?,
        _ => container,
    };
    let res = r["resource"].as_str().unwrap_or("");
    let (section, name) = res.split_once('.').ok_or_else(|| format!("unsupported resource {res:?}"))?;
    let q = c["resources"][section][name].as_str().and_then(|s| Quantity::parse(s).ok());
    let divisor = r["divisor"].as_str().and_then(|s| Quantity::parse(s).ok()).filter(|d| d.milli > 0).unwrap_or(Quantity::from_units(1));
    let q = match q {
        Some(q) => q,
        // Without a limit, the node's allocatable is used; without a request, 0.
        None if section == "limits" => return Ok("0".into()),
        None => Quantity::ZERO,
    };
    // Rounded up to whole divisors, as Kubernetes does.
    let n = (q.milli + divisor.milli - 1) / divisor.milli;
    Ok(n.max(if q.milli > 0 { 1 } else { 0 }).to_string())
}

/// The sum of a pod's container requests (what node admission counts): cpu in millicores,
/// memory in bytes. Init containers count by their maximum, as Kubernetes does.
pub fn pod_requests(pod: &Value) -> (i64, i64) {
    let sum = |list: &Value, res: &str, bytes: bool| -> (i64, i64) {
        let mut total = 0i64;
        let mut max = 0i64;
        for c in list.as_array().into_iter().flatten() {
            let q = c["resources"]["requests"][res]
                .as_str()
                .or_else(|| c["resources"]["limits"][res].as_str())
                .and_then(|s| Quantity::parse(s).ok())
                .unwrap_or_default();
            let v = if bytes { q.units_ceil() } else { q.milli };
            total += v;
            max = max.max(v);
        }
        (total, max)
    };
    let (cpu, _) = sum(&pod["spec"]["containers"], "cpu", false);
    let (_, init_cpu) = sum(&pod["spec"]["initContainers"], "cpu", false);
    let (mem, _) = sum(&pod["spec"]["containers"], "memory", true);
    let (_, init_mem) = sum(&pod["spec"]["initContainers"], "memory", true);
    (cpu.max(init_cpu), mem.max(init_mem))
}

/// What a node has for pods: millicores, bytes, pod count.
#[derive(Clone, Copy, Debug)]
pub struct Allocatable {
    pub cpu_milli: i64,
    pub memory: i64,
    pub pods: i64,
}

/// Node admission: whether `pod` fits beside the pods already admitted (their requests
/// summed in `used`, with `count` pods). `Err((reason, message))` as the kubelet reports it.
pub fn admit(pod: &Value, alloc: Allocatable, used: (i64, i64), count: i64) -> Result<(), (String, String)> {
    let (cpu, mem) = pod_requests(pod);
    if count + 1 > alloc.pods {
        return Err(("OutOfpods".into(), format!("Node didn't have enough resource: pods, requested: 1, used: {count}, capacity: {}", alloc.pods)));
    }
    if cpu > 0 && used.0 + cpu > alloc.cpu_milli {
        return Err(("OutOfcpu".into(), format!("Pod was rejected: Node didn't have enough resource: cpu, requested: {cpu}, used: {}, capacity: {}", used.0, alloc.cpu_milli)));
    }
    if mem > 0 && used.1 + mem > alloc.memory {
        return Err(("OutOfmemory".into(), format!("Pod was rejected: Node didn't have enough resource: memory, requested: {mem}, used: {}, capacity: {}", used.1, alloc.memory)));
    }
    Ok(())
}

/// One container's state, as `containerStatuses[].state` shows it. Times are RFC 3339.
#[derive(Clone, Debug, PartialEq)]
pub enum CState {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated { exit_code: i32, signal: Option<i32>, reason: String, message: String, started_at: String, finished_at: String },
}

impl CState {
    pub fn to_json(&self) -> Value {
        match self {
            CState::Waiting { reason, message } => {
                let mut w = Map::new();
                w.insert("reason".into(), json!(reason));
                if !message.is_empty() {
                    w.insert("message".into(), json!(message));
                }
                json!({"waiting": w})
            }
            CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            CState::Terminated { exit_code, signal, reason, message, started_at, finished_at } => {
                let mut t = Map::new();
                t.insert("exitCode".into(), json!(exit_code));
                if let Some(s) = signal {
                    t.insert("signal".into(), json!(s));
                }
                t.insert("reason".into(), json!(reason));
                if !message.is_empty() {
                    t.insert("message".into(), json!(message));
                }
                t.insert("startedAt".into(), json!(started_at));
                t.insert("finishedAt".into(), json!(finished_at));
                json!({"terminated": t})
            }
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, CState::Running { .. })
    }
}

/// What the status computation needs of one container.
#[derive(Clone, Debug)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub state: CState,
    pub last_state: Option<CState>,
    pub ready: bool,
    pub started: bool,
    pub restart_count: u32,
    pub container_id: String,
    /// Exited and will not run again (restart policy), or (init) completed.
    pub done: bool,
}

impl ContainerView {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name, "image": self.image, "imageID": "",
            "state": self.state.to_json(),
            "lastState": self.last_state.as_ref().map_or(json!({}), |s| s.to_json()),
            "ready": self.ready, "restartCount": self.restart_count, "started": self.started,
        });
        if !self.container_id.is_empty() {
            v["containerID"] = json!(self.container_id);
        }
        v
    }

    fn exit_code(&self) -> Option<i32> {
        match &self.state {
            CState::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}

/// Everything a pod status is computed from.
#[derive(Clone, Debug)]
pub struct PodView {
    pub init: Vec<ContainerView>,
    pub main: Vec<ContainerView>,
    /// Ephemeral containers (`kubectl debug`): reported, never part of phase or readiness.
    pub ephemeral: Vec<ContainerView>,
    /// Set when admission or an init failure (restartPolicy Never) failed the pod.
    pub failed: Option<(String, String)>,
    pub host_ip: String,
    pub pod_ip: String,
    pub start_time: String,
}

/// Phase as Kubernetes computes it.
pub fn phase(v: &PodView) -> &'static str {
    if v.failed.is_some() {
        return "Failed";
    }
    if v.init.iter().any(|c| !c.done || c.exit_code() != Some(0)) {
        return if v.init.iter().any(|c| c.done && c.exit_code().is_some_and(|e| e != 0)) { "Failed" } else { "Pending" };
    }
    if v.main.is_empty() {
        return "Pending";
    }
    if v.main.iter().all(|c| c.done) {
        return if v.main.iter().all(|c| c.exit_code() == Some(0)) { "Succeeded" } else { "Failed" };
    }
    let ever_started = v.main.iter().any(|c| c.state.is_running() || c.restart_count > 0 || matches!(c.state, CState::Terminated { .. }) || c.last_state.is_some());
    if ever_started { "Running" } else { "Pending" }
}

/// Condition status and reason/message, before transition times are attached.
pub type Cond = (&'static str, bool, &'static str, String);

pub fn conditions(v: &PodView) -> Vec<Cond> {
    let ph = phase(v);
    let mut out = Vec::new();
    let init_pending: Vec<&str> = v.init.iter().filter(|c| !(c.done && c.exit_code() == Some(0))).map(|c| c.name.as_str()).collect();
    out.push(("PodReadyToStartContainers", v.failed.is_none(), "", String::new()));
    if init_pending.is_empty() {
        out.push(("Initialized", true, "", String::new()));
    } else {
        out.push(("Initialized", false, "ContainersNotInitialized", format!("containers with incomplete status: [{}]", init_pending.join(" "))));
    }
    let unready: Vec<&str> = v.main.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
    let (ready, reason, msg) = if ph == "Succeeded" || ph == "Failed" {
        (false, "PodCompleted", String::new())
    } else if unready.is_empty() && init_pending.is_empty() {
        (true, "", String::new())
    } else {
        (false, "ContainersNotReady", format!("containers with unready status: [{}]", unready.join(" ")))
    };
    out.push(("ContainersReady", ready, reason, msg.clone()));
    out.push(("Ready", ready, reason, msg));
    out.push(("PodScheduled", true, "", String::new()));
    out
}

/// The `status` object; `transitions` keeps each condition's last (status, time) and is
/// updated with `now` for conditions that changed.
pub fn status(v: &PodView, transitions: &mut HashMap<&'static str, (bool, String)>, now: &str) -> Value {
    let conds: Vec<Value> = conditions(v)
        .into_iter()
        .map(|(ty, ok, reason, message)| {
            let t = transitions.entry(ty).or_insert_with(|| (ok, now.to_string()));
            if t.0 != ok {
                *t = (ok, now.to_string());
            }
            let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": t.1});
            if !reason.is_empty() {
                c["reason"] = json!(reason);
            }
            if !message.is_empty() {
                c["message"] = json!(message);
            }
            c
        })
        .collect();
    let mut s = json!({
        "phase": phase(v),
        "conditions": conds,
        "hostIP": v.host_ip, "hostIPs": [{"ip": v.host_ip}],
        "podIP": v.pod_ip, "podIPs": [{"ip": v.pod_ip}],
        "startTime": v.start_time,
        "containerStatuses": v.main.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
    });
    if !v.ephemeral.is_empty() {
        s["ephemeralContainerStatuses"] = json!(v.ephemeral.iter().map(|c| c.to_json()).collect::<Vec<_>>());
    }
    if !v.init.is_empty() {
        s["initContainerStatuses"] = json!(v.init.iter().map(|c| c.to_json()).collect::<Vec<_>>());
    }
    if let Some((reason, message)) = &v.failed {
        s["reason"] = json!(reason);
        s["message"] = json!(message);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_table() {
        use RestartPolicy::*;
        for (p, code, want) in [(Always, 0, true), (Always, 1, true), (OnFailure, 0, false), (OnFailure, 2, true), (Never, 0, false), (Never, 1, false)] {
            assert_eq!(p.restarts(code), want, "{p:?} exit {code}");
        }
        assert_eq!(RestartPolicy::of(&json!({"spec": {}})), Always);
        assert_eq!(RestartPolicy::of(&json!({"spec": {"restartPolicy": "Never"}})), Never);
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let b = Backoff::default();
        let s = Duration::from_secs;
        let ran = s(1);
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let n = b.next(d, ran);
            seen.push(n.as_secs());
            d = Some(n);
        }
        assert_eq!(seen, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next(Some(s(300)), s(600)), Duration::ZERO);
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![("A".to_string(), "1".to_string()), ("B".to_string(), "two".to_string())];
        for (input, want) in [
            ("$(A)", "1"),
            ("x$(A)y$(B)", "x1ytwo"),
            ("$$(A)", "$(A)"),
            ("$(C)", "$(C)"),
            ("$(A", "$(A"),
            ("cost $5", "cost $5"),
            ("é$(A)", "é1"),
        ] {
            assert_eq!(expand(input, &env), want, "{input}");
        }
    }

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "default", "containers": [
                {"name": "c", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "32Mi"}}}
            ]},
            "status": {"podIP": "127.0.0.1", "hostIP": "127.0.0.1"},
        })
    }

    #[test]
    fn environment_from_every_source() {
        let p = pod();
        let c = json!({
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}, {"secretRef": {"name": "missing", "optional": true}}],
            "env": [
                {"name": "PLAIN", "value": "v"},
                {"name": "EXPANDED", "value": "$(PLAIN)-$(CM_k1)"},
                {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k2"}}},
                {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope", "optional": true}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}},
            ],
        });
        let (cms, secrets) = env_sources(&c);
        assert_eq!(cms, ["cm"]);
        assert_eq!(secrets, ["s", "missing"]);
        let mut d = EnvData::default();
        d.config_maps.insert("cm".into(), Some([("k1".to_string(), "x".to_string()), ("k2".to_string(), "y".to_string())].into()));
        d.secrets.insert("s".into(), Some([("password".to_string(), "hunter2".to_string())].into()));
        d.secrets.insert("missing".into(), None);
        let env: HashMap<String, String> = resolve_env(&p, &c, &d).unwrap().into_iter().collect();
        let want = [
            ("CM_k1", "x"), ("CM_k2", "y"), ("PLAIN", "v"), ("EXPANDED", "v-x"), ("FROM_CM", "y"), ("FROM_SECRET", "hunter2"),
            ("POD", "p"), ("NODE", "n1"), ("APP", "web"), ("CPU", "500"), ("MEM", "64"),
        ];
        for (k, v) in want {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(!env.contains_key("OPT"));
    }

    #[test]
    fn missing_sources_are_config_errors() {
        let p = pod();
        let d = EnvData::default();
        let c = json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]});
        assert_eq!(resolve_env(&p, &c, &d).unwrap_err(), "configmap \"absent\" not found");
        let mut d = EnvData::default();
        d.secrets.insert("s".into(), Some(BTreeMap::new()));
        let c = json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]});
        assert_eq!(resolve_env(&p, &c, &d).unwrap_err(), "couldn't find key k in secret s");
        let c = json!({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}]});
        assert!(resolve_env(&p, &c, &EnvData::default()).is_err());
    }

    #[test]
    fn admission_counts_requests() {
        let alloc = Allocatable { cpu_milli: 1000, memory: 1 << 30, pods: 3 };
        let p = pod();
        assert_eq!(pod_requests(&p), (250, 32 << 20));
        assert!(admit(&p, alloc, (750, 0), 1).is_ok());
        assert_eq!(admit(&p, alloc, (800, 0), 1).unwrap_err().0, "OutOfcpu");
        assert_eq!(admit(&p, alloc, (0, (1 << 30) - 1), 1).unwrap_err().0, "OutOfmemory");
        assert_eq!(admit(&p, alloc, (0, 0), 3).unwrap_err().0, "OutOfpods");
    }

    fn c(name: &str, state: CState, done: bool) -> ContainerView {
        ContainerView { name: name.into(), image: "i".into(), state, last_state: None, ready: false, started: false, restart_count: 0, container_id: String::new(), done }
    }

    fn term(code: i32) -> CState {
        CState::Terminated { exit_code: code, signal: None, reason: if code == 0 { "Completed" } else { "Error" }.into(), message: String::new(), started_at: "t".into(), finished_at: "t".into() }
    }

    fn waiting(r: &str) -> CState {
        CState::Waiting { reason: r.into(), message: String::new() }
    }

    #[test]
    fn phase_table() {
        let v = |init: Vec<ContainerView>, main: Vec<ContainerView>| PodView { init, main, ephemeral: vec![], failed: None, host_ip: "h".into(), pod_ip: "p".into(), start_time: "t".into() };
        let running = CState::Running { started_at: "t".into() };
        let cases = [
            (v(vec![], vec![c("a", waiting("ContainerCreating"), false)]), "Pending"),
            (v(vec![c("i", running.clone(), false)], vec![c("a", waiting("PodInitializing"), false)]), "Pending"),
            (v(vec![c("i", term(1), true)], vec![c("a", waiting("PodInitializing"), false)]), "Failed"),
            (v(vec![c("i", term(0), true)], vec![c("a", running.clone(), false)]), "Running"),
            (v(vec![], vec![c("a", term(0), true), c("b", term(0), true)]), "Succeeded"),
            (v(vec![], vec![c("a", term(0), true), c("b", term(3), true)]), "Failed"),
            (v(vec![], vec![c("a", term(0), true), c("b", running.clone(), false)]), "Running"),
            (v(vec![], vec![{ let mut x = c("a", waiting("CrashLoopBackOff"), false); x.restart_count = 2; x }]), "Running"),
        ];
        for (i, (view, want)) in cases.iter().enumerate() {
            assert_eq!(phase(view), *want, "case {i}");
        }
    }

    #[test]
    fn ready_conditions_name_the_unready_containers() {
        let mut a = c("a", CState::Running { started_at: "t".into() }, false);
        a.ready = true;
        let b = c("b", CState::Running { started_at: "t".into() }, false);
        let v = PodView { init: vec![], main: vec![a, b], ephemeral: vec![], failed: None, host_ip: "h".into(), pod_ip: "p".into(), start_time: "t".into() };
        let mut tr = HashMap::new();
        let s = status(&v, &mut tr, "t0");
        let ready = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "containers with unready status: [b]");
        assert_eq!(ready["lastTransitionTime"], "t0");
        // The transition time moves only when the status changes.
        let s2 = status(&v, &mut tr, "t1");
        assert_eq!(s2["conditions"][2]["lastTransitionTime"], "t0");
    }
}
