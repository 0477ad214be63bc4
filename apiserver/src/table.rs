//! `as=Table` rendering: kubectl's usual columns per kind, computed on the server as
//! Kubernetes does, with each row's object as `PartialObjectMetadata`.

use serde_json::{Value, json};

/// Whether the client asked for a Table (kubectl get).
pub fn wants_table(accept: &str) -> bool {
    accept.contains("as=Table")
}

fn col(name: &str, ty: &str, priority: u8) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
}

pub fn columns(kind: &str) -> Vec<Value> {
    match kind {
        "HorizontalPodAutoscaler" => vec![
            col("Name", "string", 0),
            col("Reference", "string", 0),
            col("Targets", "string", 0),
            col("MinPods", "string", 0),
            col("MaxPods", "string", 0),
            col("Replicas", "string", 0),
            col("Age", "string", 0),
        ],
        "Pod" => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        "Deployment" => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Up-to-date", "string", 0),
            col("Available", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            col("Name", "string", 0),
            col("Desired", "string", 0),
            col("Current", "string", 0),
            col("Ready", "string", 0),
            col("Age", "string", 0),
        ],
        "Namespace" => vec![col("Name", "string", 0), col("Status", "string", 0), col("Age", "string", 0)],
        "Node" => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
        ],
        "StorageClass" => vec![
            col("Name", "string", 0),
            col("Provisioner", "string", 0),
            col("ReclaimPolicy", "string", 0),
            col("VolumeBindingMode", "string", 0),
            col("AllowVolumeExpansion", "string", 0),
            col("Age", "string", 0),
        ],
        "PersistentVolumeClaim" => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Volume", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            col("Age", "string", 0),
            col("VolumeMode", "string", 1),
        ],
        "PersistentVolume" => vec![
            col("Name", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("Reclaim Policy", "string", 0),
            col("Status", "string", 0),
            col("Claim", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            col("Reason", "string", 0),
            col("Age", "string", 0),
            col("VolumeMode", "string", 1),
        ],
        "Service" => vec![
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            col("Age", "string", 0),
        ],
        "ConfigMap" | "Secret" => vec![col("Name", "string", 0), col("Data", "string", 0), col("Age", "string", 0)],
        "ComponentStatus" => vec![col("Name", "string", 0), col("Status", "string", 0), col("Message", "string", 0), col("Error", "string", 0)],
        "Job" => vec![col("Name", "string", 0), col("Completions", "string", 0), col("Age", "string", 0)],
        "Event" => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
            col("Name", "string", 1),
        ],
        "StatefulSet" => vec![col("Name", "string", 0), col("Ready", "string", 0), col("Age", "string", 0)],
        "DaemonSet" => vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
        ],
        "CronJob" => vec![
            col("Name", "string", 0),
            col("Schedule", "string", 0),
            col("Suspend", "boolean", 0),
            col("Active", "integer", 0),
            col("Age", "string", 0),
        ],
        "Lease" => vec![col("Name", "string", 0), col("Holder", "string", 0), col("Age", "string", 0)],
        "CertificateSigningRequest" => vec![
            col("Name", "string", 0),
            col("Age", "string", 0),
            col("SignerName", "string", 0),
            col("Requestor", "string", 0),
            col("RequestedDuration", "string", 0),
            col("Condition", "string", 0),
        ],
        "PodDisruptionBudget" => vec![col("Name", "string", 0), col("Min Available", "string", 0), col("Max Unavailable", "string", 0), col("Allowed Disruptions", "integer", 0), col("Age", "string", 0)],
        "Endpoints" => vec![col("Name", "string", 0), col("Endpoints", "string", 0), col("Age", "string", 0)],
        "EndpointSlice" => vec![col("Name", "string", 0), col("AddressType", "string", 0), col("Ports", "string", 0), col("Endpoints", "string", 0), col("Age", "string", 0)],
        "NetworkPolicy" => vec![col("Name", "string", 0), col("Pod-Selector", "string", 0), col("Age", "string", 0)],
        "PriorityClass" => vec![col("Name", "string", 0), col("Value", "integer", 0), col("Global-Default", "boolean", 0), col("Age", "string", 0), col("PreemptionPolicy", "string", 0)],
        "ServiceAccount" => vec![col("Name", "string", 0), col("Secrets", "string", 0), col("Age", "string", 0)],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            col("Name", "string", 0),
            col("Role", "string", 0),
            col("Age", "string", 0),
            col("Users", "string", 1),
            col("Groups", "string", 1),
            col("ServiceAccounts", "string", 1),
        ],
        "ServiceCIDR" => vec![col("Name", "string", 0), col("CIDRs", "string", 0), col("Age", "string", 0)],
        "IPAddress" => vec![col("Name", "string", 0), col("ParentRef", "string", 0)],
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => vec![col("Name", "string", 0), col("Webhooks", "integer", 0), col("Age", "string", 0)],
        "RuntimeClass" => vec![col("Name", "string", 0), col("Handler", "string", 0), col("Age", "string", 0)],
        "CSIDriver" => vec![
            col("Name", "string", 0),
            col("AttachRequired", "boolean", 0),
            col("PodInfoOnMount", "boolean", 0),
            col("StorageCapacity", "boolean", 0),
            col("TokenRequests", "string", 0),
            col("RequiresRepublish", "boolean", 0),
            col("Modes", "string", 0),
            col("Age", "string", 0),
        ],
        "CSINode" => vec![col("Name", "string", 0), col("Drivers", "integer", 0), col("Age", "string", 0)],
        "VolumeAttachment" => vec![col("Name", "string", 0), col("Attacher", "string", 0), col("PV", "string", 0), col("Node", "string", 0), col("Attached", "boolean", 0), col("Age", "string", 0)],
        "CSIStorageCapacity" => vec![col("Name", "string", 0), col("StorageClassName", "string", 0), col("Capacity", "string", 0)],
        "APIService" => vec![col("Name", "string", 0), col("Service", "string", 0), col("Available", "string", 0), col("Age", "string", 0)],
        "ValidatingAdmissionPolicy" => vec![col("Name", "string", 0), col("Validations", "integer", 0), col("ParamKind", "string", 0), col("Age", "string", 0)],
        "ValidatingAdmissionPolicyBinding" => vec![col("Name", "string", 0), col("PolicyName", "string", 0), col("ParamRef", "string", 0), col("Age", "string", 0)],
        "Role" | "ClusterRole" | "CustomResourceDefinition" | "LimitRange" => vec![col("Name", "string", 0), col("Created At", "date", 0)],
        "ResourceQuota" => vec![col("Name", "string", 0), col("Age", "string", 0), col("Request", "string", 0), col("Limit", "string", 0)],
        "ControllerRevision" => vec![col("Name", "string", 0), col("Controller", "string", 0), col("Revision", "integer", 0), col("Age", "string", 0)],
        "PodTemplate" => vec![col("Name", "string", 0), col("Containers", "string", 0), col("Images", "string", 0), col("Pod Labels", "string", 0)],
        "FlowSchema" => vec![
            col("Name", "string", 0),
            col("PriorityLevel", "string", 0),
            col("MatchingPrecedence", "string", 0),
            col("DistinguisherMethod", "string", 0),
            col("Age", "string", 0),
            col("MissingPL", "string", 0),
        ],
        "PriorityLevelConfiguration" => vec![
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("NominalConcurrencyShares", "string", 0),
            col("Queues", "string", 0),
            col("HandSize", "string", 0),
            col("QueueLengthLimit", "string", 0),
            col("Age", "string", 0),
        ],
        _ => vec![col("Name", "string", 0), col("Age", "string", 0)],
    }
}

/// The first three of `items` joined with commas, and `+ N more...` (kubectl's lists of
/// endpoints); `<none>` for none.
fn first_three(items: &[String]) -> String {
    match items.len() {
        0 => "<none>".into(),
        1..=3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

/// A label selector as kubectl prints it (`app=web,tier in (a,b)`); `<none>` when empty.
fn selector_text(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return "<none>".into() };
    let mut parts: Vec<String> = sel["matchLabels"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let vals: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op}"),
        });
    }
    if parts.is_empty() { "<none>".into() } else { parts.join(",") }
}

/// Kubernetes' short human duration ("5s", "3m12s", "2d").
pub fn age(created: Option<&str>) -> String {
    age_at(created, jiff::Timestamp::now().as_second())
}

/// `age` as of `now` (seconds since the epoch).
fn age_at(created: Option<&str>, now: i64) -> String {
    let Some(ts) = created.and_then(|c| c.parse::<jiff::Timestamp>().ok()) else { return "<unknown>".into() };
    let secs = (now - ts.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    Some(cur)
}

fn n(v: &Value, path: &[&str]) -> i64 {
    s(v, path).and_then(|x| x.as_i64()).unwrap_or(0)
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let statuses = s(o, &["status", "containerStatuses"]).and_then(|x| x.as_array()).cloned().unwrap_or_default();
    let total = s(o, &["spec", "containers"]).and_then(|x| x.as_array()).map_or(0, |a| a.len());
    let ready = statuses.iter().filter(|c| c.get("ready").and_then(|r| r.as_bool()) == Some(true)).count();
    let restarts: i64 = statuses.iter().map(|c| c.get("restartCount").and_then(|r| r.as_i64()).unwrap_or(0)).sum();
    let mut status = s(o, &["status", "phase"]).and_then(|x| x.as_str()).unwrap_or("Pending").to_string();
    if let Some(r) = s(o, &["status", "reason"]).and_then(|x| x.as_str()) {
        status = r.to_string();
    }
    let init = s(o, &["status", "initContainerStatuses"]).and_then(|x| x.as_array()).cloned().unwrap_or_default();
    let init_total = s(o, &["spec", "initContainers"]).and_then(|x| x.as_array()).map_or(0, |a| a.len());
    let init_done = init.iter().filter(|c| s(c, &["state", "terminated", "exitCode"]).and_then(|x| x.as_i64()) == Some(0)).count();
    let mut initializing = false;
    if init_total > 0 && init_done < init_total {
        initializing = true;
        status = format!("Init:{init_done}/{init_total}");
        for c in &init {
            if let Some(r) = s(c, &["state", "waiting", "reason"]).and_then(|x| x.as_str()).filter(|r| *r != "PodInitializing") {
                status = format!("Init:{r}");
            } else if let Some(code) = s(c, &["state", "terminated", "exitCode"]).and_then(|x| x.as_i64()).filter(|c| *c != 0) {
                status = format!("Init:ExitCode:{code}");
            }
        }
    }
    for c in statuses.iter().filter(|_| !initializing) {
        if let Some(r) = s(c, &["state", "waiting", "reason"]).and_then(|x| x.as_str()) {
            status = r.to_string();
        } else if let Some(r) = s(c, &["state", "terminated", "reason"]).and_then(|x| x.as_str()) {
            status = r.to_string();
        }
    }
    if s(o, &["metadata", "deletionTimestamp"]).is_some() {
        status = "Terminating".into();
    }
    let str_or = |p: &[&str], d: &str| s(o, p).and_then(|x| x.as_str()).unwrap_or(d).to_string();
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(meta(o, "creationTimestamp"))),
        json!(str_or(&["status", "podIP"], "<none>")),
        json!(str_or(&["spec", "nodeName"], "<none>")),
        json!(str_or(&["status", "nominatedNodeName"], "<none>")),
        json!("<none>"),
    ]
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(v: Option<&Value>) -> String {
    let short = |m: &str| match m {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        _ => "",
    };
    v.and_then(|x| x.as_array()).into_iter().flatten().filter_map(|m| m.as_str()).map(short).filter(|m| !m.is_empty()).collect::<Vec<_>>().join(",")
}

fn meta<'a>(o: &'a Value, f: &str) -> Option<&'a str> {
    s(o, &["metadata", f]).and_then(|x| x.as_str())
}

/// kubectl's TARGETS of a HorizontalPodAutoscaler: `cpu: 50%/80%` per metric (`<unknown>`
/// before the controller measured it), the first two and `+ N more...`.
fn hpa_targets(o: &Value) -> String {
    let metrics = s(o, &["spec", "metrics"]).and_then(|m| m.as_array()).cloned().unwrap_or_default();
    let current = s(o, &["status", "currentMetrics"]).and_then(|m| m.as_array()).cloned().unwrap_or_default();
    if metrics.is_empty() {
        return "<none>".into();
    }
    let quantity = |t: &Value| -> Option<String> {
        if let Some(u) = t.get("averageUtilization").and_then(|x| x.as_i64()) {
            return Some(format!("{u}%"));
        }
        t.get("averageValue").or_else(|| t.get("value")).and_then(|x| x.as_str()).map(String::from)
    };
    let parts: Vec<String> = metrics
        .iter()
        .map(|m| {
            let ty = m["type"].as_str().unwrap_or("");
            let src = match ty {
                "Resource" => "resource",
                "ContainerResource" => "containerResource",
                "Pods" => "pods",
                "Object" => "object",
                _ => "external",
            };
            let name = m[src]["name"].as_str().or_else(|| m[src]["metric"]["name"].as_str()).unwrap_or("");
            let target = quantity(&m[src]["target"]).unwrap_or_else(|| "<unknown>".into());
            let cur = current.iter().find(|c| c["type"] == ty && (c[src]["name"].as_str().or_else(|| c[src]["metric"]["name"].as_str()) == Some(name))).and_then(|c| quantity(&c[src]["current"]));
            format!("{name}: {}/{target}", cur.unwrap_or_else(|| "<unknown>".into()))
        })
        .collect();
    if parts.len() > 2 { format!("{} + {} more...", parts[..2].join(", "), parts.len() - 2) } else { parts.join(", ") }
}

/// One row's cells (after the name) for an object of `kind`.
pub fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = json!(meta(o, "name").unwrap_or(""));
    let age_cell = json!(age(meta(o, "creationTimestamp")));
    if kind == "Event" {
        let last = ["lastTimestamp", "eventTime", "firstTimestamp"].iter().find_map(|f| o.get(*f).and_then(|x| x.as_str()));
        let obj = format!(
            "{}/{}",
            s(o, &["involvedObject", "kind"]).and_then(|x| x.as_str()).unwrap_or("").to_ascii_lowercase(),
            s(o, &["involvedObject", "name"]).and_then(|x| x.as_str()).unwrap_or("")
        );
        let text = |f: &str| json!(o.get(f).and_then(|x| x.as_str()).unwrap_or(""));
        return vec![json!(age(last.or(meta(o, "creationTimestamp")))), text("type"), text("reason"), json!(obj), text("message"), name];
    }
    let mut out = vec![name];
    match kind {
        "HorizontalPodAutoscaler" => {
            let reference = format!("{}/{}", s(o, &["spec", "scaleTargetRef", "kind"]).and_then(|x| x.as_str()).unwrap_or(""), s(o, &["spec", "scaleTargetRef", "name"]).and_then(|x| x.as_str()).unwrap_or(""));
            let min = s(o, &["spec", "minReplicas"]).and_then(|x| x.as_i64()).unwrap_or(1);
            out.extend([json!(reference), json!(hpa_targets(o)), json!(min.to_string()), json!(n(o, &["spec", "maxReplicas"]).to_string()), json!(n(o, &["status", "currentReplicas"]).to_string()), age_cell]);
        }
        "ComponentStatus" => {
            let c = s(o, &["conditions"]).and_then(|c| c.as_array()).and_then(|cs| cs.iter().find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Healthy")));
            let text = |f: &str| json!(c.and_then(|c| c.get(f)).and_then(|x| x.as_str()).unwrap_or(""));
            let healthy = c.and_then(|c| c.get("status")).and_then(|x| x.as_str()) == Some("True");
            out.extend([json!(if healthy { "Healthy" } else { "Unhealthy" }), text("message"), text("error")]);
        }
        "Pod" => out.extend(pod_cells(o)),
        "Deployment" => {
            let containers = s(o, &["spec", "template", "spec", "containers"]).and_then(|c| c.as_array()).cloned().unwrap_or_default();
            let names: Vec<&str> = containers.iter().filter_map(|c| c.get("name").and_then(|x| x.as_str())).collect();
            let images: Vec<&str> = containers.iter().filter_map(|c| c.get("image").and_then(|x| x.as_str())).collect();
            let sel = s(o, &["spec", "selector", "matchLabels"])
                .and_then(|m| m.as_object())
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            out.extend([
                json!(format!("{}/{}", n(o, &["status", "readyReplicas"]), n(o, &["spec", "replicas"]))),
                json!(n(o, &["status", "updatedReplicas"])),
                json!(n(o, &["status", "availableReplicas"])),
                age_cell,
                json!(names.join(",")),
                json!(images.join(",")),
                json!(sel),
            ]);
        }
        "ReplicaSet" | "ReplicationController" => out.extend([
            json!(n(o, &["spec", "replicas"])),
            json!(n(o, &["status", "replicas"])),
            json!(n(o, &["status", "readyReplicas"])),
            age_cell,
        ]),
        "Namespace" => out.extend([
            json!(if meta(o, "deletionTimestamp").is_some() { "Terminating" } else { "Active" }),
            age_cell,
        ]),
        "Node" => {
            let ready = s(o, &["status", "conditions"])
                .and_then(|c| c.as_array())
                .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready")))
                .and_then(|c| c.get("status").and_then(|x| x.as_str()))
                .map(|st| if st == "True" { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let status = if s(o, &["spec", "unschedulable"]).and_then(|u| u.as_bool()) == Some(true) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            out.extend([
                json!(status),
                json!("<none>"),
                age_cell,
                json!(s(o, &["status", "nodeInfo", "kubeletVersion"]).and_then(|x| x.as_str()).unwrap_or("")),
            ]);
        }
        "Service" => {
            let ports = s(o, &["spec", "ports"])
                .and_then(|p| p.as_array())
                .map(|ps| {
                    ps.iter()
                        .map(|p| format!("{}/{}", n(p, &["port"]), p.get("protocol").and_then(|x| x.as_str()).unwrap_or("TCP")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            out.extend([
                json!(s(o, &["spec", "type"]).and_then(|x| x.as_str()).unwrap_or("ClusterIP")),
                json!(s(o, &["spec", "clusterIP"]).and_then(|x| x.as_str()).unwrap_or("<none>")),
                json!("<none>"),
                json!(if ports.is_empty() { "<none>".to_string() } else { ports }),
                age_cell,
            ]);
        }
        "ConfigMap" | "Secret" => {
            let d = o.get("data").and_then(|d| d.as_object()).map_or(0, |m| m.len())
                + o.get("binaryData").or_else(|| o.get("stringData")).and_then(|d| d.as_object()).map_or(0, |m| m.len());
            out.extend([json!(d), age_cell]);
        }
        "StatefulSet" => out.extend([json!(format!("{}/{}", n(o, &["status", "readyReplicas"]), n(o, &["spec", "replicas"]))), age_cell]),
        "DaemonSet" => out.extend([
            json!(n(o, &["status", "desiredNumberScheduled"])),
            json!(n(o, &["status", "currentNumberScheduled"])),
            json!(n(o, &["status", "numberReady"])),
            json!(n(o, &["status", "updatedNumberScheduled"])),
            json!(n(o, &["status", "numberAvailable"])),
            age_cell,
        ]),
        "CronJob" => out.extend([
            json!(s(o, &["spec", "schedule"]).and_then(|x| x.as_str()).unwrap_or("")),
            json!(s(o, &["spec", "suspend"]).and_then(|x| x.as_bool()).unwrap_or(false)),
            json!(s(o, &["status", "active"]).and_then(|x| x.as_array()).map_or(0, |a| a.len())),
            age_cell,
        ]),
        "Lease" => out.extend([json!(s(o, &["spec", "holderIdentity"]).and_then(|x| x.as_str()).unwrap_or("")), age_cell]),
        "PodDisruptionBudget" => {
            let or_na = |k: &str| s(o, &["spec", k]).map_or_else(|| json!("N/A"), |v| if v.is_string() { v.clone() } else { json!(v.to_string()) });
            out.extend([or_na("minAvailable"), or_na("maxUnavailable"), json!(n(o, &["status", "disruptionsAllowed"])), age_cell]);
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for ss in s(o, &["subsets"]).and_then(|x| x.as_array()).into_iter().flatten() {
                let ports: Vec<i64> = ss["ports"].as_array().into_iter().flatten().filter_map(|p| p["port"].as_i64()).collect();
                for a in ss["addresses"].as_array().into_iter().flatten() {
                    let ip = a["ip"].as_str().unwrap_or("");
                    if ports.is_empty() {
                        eps.push(ip.to_string());
                    }
                    eps.extend(ports.iter().map(|p| format!("{ip}:{p}")));
                }
            }
            out.extend([json!(first_three(&eps)), age_cell]);
        }
        "EndpointSlice" => {
            let ports: Vec<String> = s(o, &["ports"]).and_then(|x| x.as_array()).into_iter().flatten().map(|p| p["port"].as_i64().map_or("<unset>".to_string(), |n| n.to_string())).collect();
            let addrs: Vec<String> = s(o, &["endpoints"]).and_then(|x| x.as_array()).into_iter().flatten().flat_map(|e| e["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from))).collect();
            let ports = if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") };
            out.extend([json!(s(o, &["addressType"]).and_then(|x| x.as_str()).unwrap_or("")), json!(ports), json!(first_three(&addrs)), age_cell]);
        }
        "NetworkPolicy" => out.extend([json!(selector_text(s(o, &["spec", "podSelector"]))), age_cell]),
        "PriorityClass" => out.extend([
            json!(n(o, &["value"])),
            json!(s(o, &["globalDefault"]).and_then(|x| x.as_bool()).unwrap_or(false)),
            age_cell,
            json!(s(o, &["preemptionPolicy"]).and_then(|x| x.as_str()).unwrap_or("PreemptLowerPriority")),
        ]),
        "ServiceAccount" => out.extend([json!(s(o, &["secrets"]).and_then(|x| x.as_array()).map_or(0, |a| a.len()).to_string()), age_cell]),
        "RoleBinding" | "ClusterRoleBinding" => {
            let role = format!("{}/{}", s(o, &["roleRef", "kind"]).and_then(|x| x.as_str()).unwrap_or(""), s(o, &["roleRef", "name"]).and_then(|x| x.as_str()).unwrap_or(""));
            let subjects = s(o, &["subjects"]).and_then(|x| x.as_array()).cloned().unwrap_or_default();
            let of = |kind: &str| -> String {
                subjects
                    .iter()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| if kind == "ServiceAccount" { format!("{}/{}", x["namespace"].as_str().unwrap_or(""), x["name"].as_str().unwrap_or("")) } else { x["name"].as_str().unwrap_or("").to_string() })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.extend([json!(role), age_cell, json!(of("User")), json!(of("Group")), json!(of("ServiceAccount"))]);
        }
        "ServiceCIDR" => {
            let cidrs: Vec<&str> = s(o, &["spec", "cidrs"]).and_then(|x| x.as_array()).into_iter().flatten().filter_map(|c| c.as_str()).collect();
            out.extend([json!(cidrs.join(",")), age_cell]);
        }
        "Role" | "ClusterRole" | "CustomResourceDefinition" | "LimitRange" => out.push(json!(meta(o, "creationTimestamp").unwrap_or(""))),
        "ResourceQuota" => {
            // "pods: 1/10, services: 0/5": the used of each hard limit, requests and limits apart.
            let (mut request, mut limit) = (Vec::new(), Vec::new());
            let mut hard: Vec<(&String, &Value)> = s(o, &["status", "hard"]).or_else(|| s(o, &["spec", "hard"])).and_then(|h| h.as_object()).into_iter().flatten().collect();
            hard.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in hard {
                let used = s(o, &["status", "used", k]).and_then(|x| x.as_str()).unwrap_or("0");
                let text = format!("{k}: {used}/{}", v.as_str().unwrap_or(""));
                if k.starts_with("limits.") { limit.push(text) } else { request.push(text) }
            }
            out.extend([age_cell, json!(request.join(", ")), json!(limit.join(", "))]);
        }
        "ControllerRevision" => {
            let owner = s(o, &["metadata", "ownerReferences"]).and_then(|x| x.as_array()).and_then(|a| a.iter().find(|r| r["controller"] == true)).map(|r| {
                let group = r["apiVersion"].as_str().and_then(|v| v.split_once('/')).map(|(g, _)| format!(".{g}")).unwrap_or_default();
                format!("{}{group}/{}", r["kind"].as_str().unwrap_or("").to_ascii_lowercase(), r["name"].as_str().unwrap_or(""))
            });
            out.extend([json!(owner.unwrap_or_else(|| "<none>".into())), json!(n(o, &["revision"])), age_cell]);
        }
        "PodTemplate" => {
            let containers = s(o, &["template", "spec", "containers"]).and_then(|c| c.as_array()).cloned().unwrap_or_default();
            let names: Vec<&str> = containers.iter().filter_map(|c| c["name"].as_str()).collect();
            let images: Vec<&str> = containers.iter().filter_map(|c| c["image"].as_str()).collect();
            let labels = s(o, &["template", "metadata", "labels"]).and_then(|l| l.as_object()).map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")).filter(|l| !l.is_empty());
            out.extend([json!(names.join(",")), json!(images.join(",")), json!(labels.unwrap_or_else(|| "<none>".into()))]);
        }
        "FlowSchema" => {
            let text = |p: &[&str]| json!(s(o, p).map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string())).unwrap_or_else(|| "<none>".into()));
            let dangling = s(o, &["status", "conditions"]).and_then(|c| c.as_array()).into_iter().flatten().find(|c| c["type"] == "Dangling").map_or("?", |c| if c["status"] == "True" { "True" } else { "False" });
            out.extend([text(&["spec", "priorityLevelConfiguration", "name"]), text(&["spec", "matchingPrecedence"]), text(&["spec", "distinguisherMethod", "type"]), age_cell, json!(dangling)]);
        }
        "PriorityLevelConfiguration" => {
            let limited = s(o, &["spec", "limited"]);
            let num = |p: &[&str]| json!(limited.and_then(|l| p.iter().try_fold(l, |v, k| v.get(*k))).and_then(|x| x.as_i64()).map_or("<none>".to_string(), |n| n.to_string()));
            out.extend([
                json!(s(o, &["spec", "type"]).and_then(|x| x.as_str()).unwrap_or("")),
                if limited.is_some() { num(&["nominalConcurrencyShares"]) } else { json!("<none>") },
                num(&["limitResponse", "queuing", "queues"]),
                num(&["limitResponse", "queuing", "handSize"]),
                num(&["limitResponse", "queuing", "queueLengthLimit"]),
                age_cell,
            ]);
        }
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            out.extend([json!(s(o, &["webhooks"]).and_then(|w| w.as_array()).map_or(0, |a| a.len())), age_cell]);
        }
        "RuntimeClass" => out.extend([json!(s(o, &["handler"]).and_then(|h| h.as_str()).unwrap_or("")), age_cell]),
        "CSIDriver" => {
            let b = |k: &str| json!(s(o, &["spec", k]).and_then(|x| x.as_bool()).unwrap_or(false));
            let tokens: Vec<&str> = s(o, &["spec", "tokenRequests"]).and_then(|t| t.as_array()).into_iter().flatten().filter_map(|t| t["audience"].as_str()).collect();
            let modes: Vec<&str> = s(o, &["spec", "volumeLifecycleModes"]).and_then(|t| t.as_array()).into_iter().flatten().filter_map(|m| m.as_str()).collect();
            out.extend([
                json!(s(o, &["spec", "attachRequired"]).and_then(|x| x.as_bool()).unwrap_or(true)),
                b("podInfoOnMount"),
                b("storageCapacity"),
                json!(if tokens.is_empty() { "<unset>".to_string() } else { tokens.join(",") }),
                b("requiresRepublish"),
                json!(modes.join(",")),
                age_cell,
            ]);
        }
        "CSINode" => out.extend([json!(s(o, &["spec", "drivers"]).and_then(|d| d.as_array()).map_or(0, |a| a.len())), age_cell]),
        "VolumeAttachment" => {
            let text = |p: &[&str]| json!(s(o, p).and_then(|x| x.as_str()).unwrap_or(""));
            out.extend([text(&["spec", "attacher"]), text(&["spec", "source", "persistentVolumeName"]), text(&["spec", "nodeName"]), json!(s(o, &["status", "attached"]).and_then(|x| x.as_bool()).unwrap_or(false)), age_cell]);
        }
        "CSIStorageCapacity" => {
            let text = |p: &[&str]| json!(s(o, p).and_then(|x| x.as_str()).unwrap_or(""));
            out.extend([text(&["storageClassName"]), text(&["capacity"])]);
        }
        "APIService" => {
            let (service, available) = crate::aggregator::columns(o);
            out.extend([json!(service), json!(available), age_cell]);
        }
        "ValidatingAdmissionPolicy" => {
            let pk = s(o, &["spec", "paramKind"]).map(|k| format!("{}/{}", k["apiVersion"].as_str().unwrap_or(""), k["kind"].as_str().unwrap_or(""))).unwrap_or_else(|| "<unset>".into());
            out.extend([json!(s(o, &["spec", "validations"]).and_then(|w| w.as_array()).map_or(0, |a| a.len())), json!(pk), age_cell]);
        }
        "ValidatingAdmissionPolicyBinding" => {
            let pr = s(o, &["spec", "paramRef"]).map(|r| match (r["namespace"].as_str().filter(|n| !n.is_empty()), r["name"].as_str().filter(|n| !n.is_empty())) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                (None, Some(n)) => n.to_string(),
                _ => "*".to_string(),
            });
            out.extend([json!(s(o, &["spec", "policyName"]).and_then(|p| p.as_str()).unwrap_or("")), json!(pr.unwrap_or_else(|| "<unset>".into())), age_cell]);
        }
        "IPAddress" => {
            let p = s(o, &["spec", "parentRef"]).cloned().unwrap_or(Value::Null);
            let group = p["group"].as_str().filter(|g| !g.is_empty()).map(|g| format!(".{g}")).unwrap_or_default();
            let ns = p["namespace"].as_str().filter(|n| !n.is_empty()).map(|n| format!("{n}/")).unwrap_or_default();
            out.push(json!(format!("{}{group}/{ns}{}", p["resource"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or(""))));
        }
        "CertificateSigningRequest" => {
            // As kubectl prints it: the decisions, then Issued once there is a certificate.
            let mut cond: Vec<&str> = s(o, &["status", "conditions"]).and_then(|c| c.as_array()).into_iter().flatten().filter_map(|c| c.get("type").and_then(|t| t.as_str())).collect();
            if s(o, &["status", "certificate"]).and_then(|c| c.as_str()).is_some_and(|c| !c.is_empty()) {
                cond.push("Issued");
            }
            let duration = s(o, &["spec", "expirationSeconds"]).and_then(|e| e.as_i64()).map(|e| {
                let created = jiff::Timestamp::now().as_second() - e;
                age_at(jiff::Timestamp::from_second(created).ok().map(|t| t.to_string()).as_deref(), jiff::Timestamp::now().as_second())
            });
            out.extend([
                age_cell,
                json!(s(o, &["spec", "signerName"]).and_then(|x| x.as_str()).unwrap_or("")),
                json!(s(o, &["spec", "username"]).and_then(|x| x.as_str()).unwrap_or("")),
                json!(duration.unwrap_or_else(|| "<none>".into())),
                json!(if cond.is_empty() { "Pending".to_string() } else { cond.join(",") }),
            ]);
        }
        "StorageClass" => {
            // kubectl's marker for the default class.
            if s(o, &["metadata", "annotations", "storageclass.kubernetes.io/is-default-class"]).and_then(|x| x.as_str()) == Some("true") {
                out[0] = json!(format!("{} (default)", meta(o, "name").unwrap_or("")));
            }
            let str_or = |p: &[&str], d: &str| json!(s(o, p).and_then(|x| x.as_str()).unwrap_or(d));
            out.extend([
                str_or(&["provisioner"], ""),
                str_or(&["reclaimPolicy"], "Delete"),
                str_or(&["volumeBindingMode"], "Immediate"),
                json!(s(o, &["allowVolumeExpansion"]).and_then(|x| x.as_bool()).unwrap_or(false)),
                age_cell,
            ]);
        }
        "PersistentVolumeClaim" => {
            let str_or = |p: &[&str], d: &str| json!(s(o, p).and_then(|x| x.as_str()).filter(|x| !x.is_empty()).unwrap_or(d));
            out.extend([
                str_or(&["status", "phase"], "Pending"),
                str_or(&["spec", "volumeName"], ""),
                str_or(&["status", "capacity", "storage"], ""),
                json!(access_modes(s(o, &["status", "accessModes"]))),
                str_or(&["spec", "storageClassName"], "<unset>"),
                str_or(&["spec", "volumeAttributesClassName"], "<unset>"),
                age_cell,
                str_or(&["spec", "volumeMode"], "Filesystem"),
            ]);
        }
        "PersistentVolume" => {
            let str_or = |p: &[&str], d: &str| json!(s(o, p).and_then(|x| x.as_str()).filter(|x| !x.is_empty()).unwrap_or(d));
            let claim = match (s(o, &["spec", "claimRef", "namespace"]).and_then(|x| x.as_str()), s(o, &["spec", "claimRef", "name"]).and_then(|x| x.as_str())) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => String::new(),
            };
            out.extend([
                str_or(&["spec", "capacity", "storage"], ""),
                json!(access_modes(s(o, &["spec", "accessModes"]))),
                str_or(&["spec", "persistentVolumeReclaimPolicy"], "Retain"),
                str_or(&["status", "phase"], "Pending"),
                json!(claim),
                str_or(&["spec", "storageClassName"], ""),
                str_or(&["spec", "volumeAttributesClassName"], "<unset>"),
                str_or(&["status", "reason"], ""),
                age_cell,
                str_or(&["spec", "volumeMode"], "Filesystem"),
            ]);
        }
        "Job" => out.extend([
            json!(format!("{}/{}", n(o, &["status", "succeeded"]), s(o, &["spec", "completions"]).and_then(|c| c.as_i64()).unwrap_or(1))),
            age_cell,
        ]),
        _ => out.push(age_cell),
    }
    out
}

/// A row: cells plus the object's metadata as `PartialObjectMetadata`.
pub fn row(kind: &str, o: &Value) -> Value {
    json!({
        "cells": cells(kind, o),
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))},
    })
}

pub fn table(kind: &str, rows: Vec<Value>, resource_version: &str, cont: Option<&str>) -> Value {
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns(kind), "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rows_show_ready_status_and_restarts_like_kubectl() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let c = cells("Pod", &pod);
        assert_eq!(c[0], "web-1");
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "3");
        assert!(c[4].as_str().unwrap().ends_with('d'));
        assert_eq!(c[6], "n1");
        assert_eq!(c.len(), columns("Pod").len());
    }

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        let o = json!({"metadata": {"name": "x"}});
        for k in [
            "Pod", "Deployment", "ReplicaSet", "Namespace", "Node", "Service", "ConfigMap", "Secret", "Job", "Lease", "Event", "StatefulSet", "DaemonSet", "CronJob", "PriorityClass",
            "HorizontalPodAutoscaler", "PodDisruptionBudget", "Endpoints", "EndpointSlice", "NetworkPolicy", "ServiceAccount", "RoleBinding", "ClusterRoleBinding", "ServiceCIDR", "IPAddress",
            "Role", "ClusterRole", "CustomResourceDefinition", "LimitRange", "ResourceQuota", "ControllerRevision", "PodTemplate", "FlowSchema", "PriorityLevelConfiguration",
            "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "APIService",
            "RuntimeClass", "CSIDriver", "CSINode", "VolumeAttachment", "CSIStorageCapacity",
        ] {
            assert_eq!(cells(k, &o).len(), columns(k).len(), "{k}");
        }
    }

    #[test]
    fn common_kinds_show_kubectls_columns() {
        let row = |k: &str, o: Value| cells(k, &o).into_iter().map(|c| c.as_str().map(String::from).unwrap_or_else(|| c.to_string())).collect::<Vec<_>>();
        let pdb = row("PodDisruptionBudget", json!({"metadata": {"name": "p"}, "spec": {"minAvailable": 2}, "status": {"disruptionsAllowed": 1}}));
        assert_eq!(&pdb[..4], ["p", "2", "N/A", "1"]);
        let ep = row("Endpoints", json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]}));
        assert_eq!(ep[1], "10.0.0.1:80,10.0.0.1:443,10.0.0.2:80 + 1 more...");
        assert_eq!(row("Endpoints", json!({"metadata": {"name": "e"}}))[1], "<none>");
        let es = row("EndpointSlice", json!({"metadata": {"name": "s"}, "addressType": "IPv4", "ports": [{"port": 80}], "endpoints": [{"addresses": ["10.0.0.1"]}]}));
        assert_eq!(&es[1..4], ["IPv4", "80", "10.0.0.1"]);
        let np = row("NetworkPolicy", json!({"metadata": {"name": "n"}, "spec": {"podSelector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}}}));
        assert_eq!(np[1], "app=web,tier in (a,b)");
        assert_eq!(row("NetworkPolicy", json!({"metadata": {"name": "n"}, "spec": {"podSelector": {}}}))[1], "<none>");
        let rb = row("RoleBinding", json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "jane"}, {"kind": "ServiceAccount", "name": "ci", "namespace": "dev"}]}));
        assert_eq!((rb[1].as_str(), rb[3].as_str(), rb[5].as_str()), ("ClusterRole/view", "jane", "dev/ci"));
        let ip = row("IPAddress", json!({"metadata": {"name": "10.96.0.5"}, "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "default", "name": "web"}}}));
        assert_eq!(ip[1], "services/default/web");
        let q = row("ResourceQuota", json!({"metadata": {"name": "q"}, "status": {"hard": {"pods": "10", "limits.cpu": "2", "configmaps": "5"}, "used": {"pods": "1", "limits.cpu": "500m"}}}));
        assert_eq!((q[2].as_str(), q[3].as_str()), ("configmaps: 0/5, pods: 1/10", "limits.cpu: 500m/2"));
        let cr = row("ControllerRevision", json!({"metadata": {"name": "web-1", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true}]}, "revision": 3}));
        assert_eq!((cr[1].as_str(), cr[2].as_str()), ("statefulset.apps/web", "3"));
        let pt = row("PodTemplate", json!({"metadata": {"name": "t"}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}));
        assert_eq!(&pt[1..4], ["c", "busybox", "a=b"]);
        assert_eq!(row("Role", json!({"metadata": {"name": "r", "creationTimestamp": "2026-12-05T14:00:00Z"}}))[1], "2026-12-05T14:00:00Z");
        let fs = row("FlowSchema", json!({"metadata": {"name": "f"}, "spec": {"priorityLevelConfiguration": {"name": "workload-low"}, "matchingPrecedence": 9000, "distinguisherMethod": {"type": "ByUser"}},
            "status": {"conditions": [{"type": "Dangling", "status": "False"}]}}));
        assert_eq!((fs[1].as_str(), fs[2].as_str(), fs[3].as_str(), fs[5].as_str()), ("workload-low", "9000", "ByUser", "False"));
        let pl = row("PriorityLevelConfiguration", json!({"metadata": {"name": "l"}, "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 100, "limitResponse": {"type": "Queue", "queuing": {"queues": 128, "handSize": 6, "queueLengthLimit": 50}}}}}));
        assert_eq!(&pl[1..6], ["Limited", "100", "128", "6", "50"]);
        assert_eq!(&row("PriorityLevelConfiguration", json!({"metadata": {"name": "e"}, "spec": {"type": "Exempt"}}))[1..3], ["Exempt", "<none>"]);
        let pc = row("PriorityClass", json!({"metadata": {"name": "high"}, "value": 1000, "globalDefault": true}));
        assert_eq!((pc[1].as_str(), pc[2].as_str(), pc[4].as_str()), ("1000", "true", "PreemptLowerPriority"));
    }

    #[test]
    fn horizontal_pod_autoscalers_show_kubectls_columns() {
        let hpa = json!({"metadata": {"name": "web"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5, "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "1Gi"}}}]},
            "status": {"currentReplicas": 2, "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 50}}}]}});
        let c = cells("HorizontalPodAutoscaler", &hpa);
        assert_eq!(&c[..6], [json!("web"), json!("Deployment/web"), json!("cpu: 50%/80%, rps: <unknown>/10 + 1 more..."), json!("1"), json!("5"), json!("2")]);
        assert_eq!(cells("HorizontalPodAutoscaler", &json!({"spec": {}}))[2], json!("<none>"));
    }

    #[test]
    fn ages_are_humanized_as_kubectl_prints_them() {
        let now = 1_800_000_000;
        let t = |secs: i64| age_at(Some(&jiff::Timestamp::from_second(now - secs).unwrap().to_string()), now);
        assert_eq!(t(5), "5s");
        assert_eq!(t(200), "3m20s");
        assert_eq!(t(3 * 86400 + 3600), "3d1h");
    }
}
