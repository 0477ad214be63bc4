//! Kubernetes' default RBAC roles and bindings, as capstan has them: created at start when
//! missing (an operator's edits to existing ones are kept). Three families:
//! - for users: cluster-admin, admin / edit / view (aggregating the `system:aggregate-to-*`
//!   roles by label), and what every authenticated user holds (discovery, basic-user,
//!   public-info-viewer);
//! - for the components: `system:kube-scheduler`, `system:volume-scheduler`,
//!   `system:kube-controller-manager`, `system:node` (bound to no one: kubelets are judged by
//!   the Node authorizer), `system:node-proxier`, `system:node-bootstrapper`,
//!   `system:monitoring`;
//! - one `system:controller:<name>` role per controller, bound to its ServiceAccount in
//!   `kube-system` (the controllers' `identity.rs` names them).
//!
//! The rules are Kubernetes' (its bootstrap policy), with one deliberate difference: where a
//! capstan controller writes a status or an object with a merge patch and Kubernetes' role
//! grants only `update`, the role here grants `patch` too (listed in ARCHITECTURE.md).

use serde_json::{Value, json};

use crate::rbac::MASTERS;

/// Every default role and binding, as (resource, object).
pub fn defaults() -> Vec<(&'static str, Value)> {
    let mut all = users();
    all.extend(components());
    all.extend(controllers());
    all
}

fn boot() -> Value {
    json!({"kubernetes.io/bootstrapping": "rbac-defaults"})
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name, "labels": boot()}, "rules": rules})
}

fn binding(kind: &str, name: &str, namespace: Option<&str>, role_kind: &str, subjects: Value) -> Value {
    let mut meta = json!({"name": name, "labels": boot()});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name}, "subjects": subjects})
}

fn user(name: &str) -> Value {
    json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}])
}

fn group(name: &str) -> Value {
    json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name}])
}

/// A PolicyRule: `verbs` on `resources` of `groups`.
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

/// A rule limited to `names`.
fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources, "resourceNames": names})
}

const READ: &[&str] = &["get", "list", "watch"];
const READ_UPDATE: &[&str] = &["get", "list", "watch", "update", "patch"];
const CORE: &[&str] = &[""];
const APPS: &[&str] = &["apps", "extensions"];

/// Events: how every component reports (Kubernetes' eventsRule).
fn events() -> Value {
    rule(&["create", "update", "patch"], &["", "events.k8s.io"], &["events"])
}

fn components() -> Vec<(&'static str, Value)> {
    let scheduler = vec![
        events(),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(&["get", "update"], &["coordination.k8s.io"], &["leases"], &["kube-scheduler"]),
        rule(&["create"], CORE, &["endpoints"]),
        named(&["get", "update"], CORE, &["endpoints"], &["kube-scheduler"]),
        rule(READ, CORE, &["nodes"]),
        rule(&["get", "list", "watch", "delete"], CORE, &["pods"]),
        rule(&["create"], CORE, &["pods/binding", "bindings"]),
        rule(&["patch", "update"], CORE, &["pods/status"]),
        rule(READ, CORE, &["services", "replicationcontrollers"]),
        // Pod-affinity terms' namespaceSelector.
        rule(READ, CORE, &["namespaces"]),
        rule(READ, APPS, &["replicasets"]),
        rule(READ, &["apps"], &["statefulsets"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        rule(READ, CORE, &["persistentvolumeclaims", "persistentvolumes"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
        rule(READ, &["storage.k8s.io"], &["csinodes", "csidrivers", "csistoragecapacities"]),
    ];
    let volume_scheduler = vec![
        rule(READ_UPDATE, CORE, &["persistentvolumes"]),
        rule(READ, &["storage.k8s.io"], &["storageclasses"]),
        rule(READ_UPDATE, CORE, &["persistentvolumeclaims"]),
    ];
    let controller_manager = vec![
        events(),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(&["get", "update"], &["coordination.k8s.io"], &["leases"], &["kube-controller-manager"]),
        rule(&["create"], CORE, &["endpoints"]),
        named(&["get", "update"], CORE, &["endpoints"], &["kube-controller-manager"]),
        rule(&["create"], CORE, &["secrets", "serviceaccounts"]),
        rule(&["delete"], CORE, &["secrets"]),
        rule(&["get"], CORE, &["namespaces", "secrets", "serviceaccounts", "configmaps"]),
        rule(&["update"], CORE, &["secrets", "serviceaccounts"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
        // The shared informers.
        rule(&["list", "watch"], &["*"], &["*"]),
        rule(&["create"], CORE, &["serviceaccounts/token"]),
    ];
    // What a kubelet may do by RBAC alone; bound to no one (the Node authorizer judges
    // kubelets), kept for operators who bind it.
    let node = vec![
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews", "localsubjectaccessreviews"]),
        rule(READ, CORE, &["services"]),
        rule(&["create", "get", "list", "watch"], CORE, &["nodes"]),
        rule(&["update", "patch"], CORE, &["nodes/status"]),
        rule(&["update", "patch", "delete"], CORE, &["nodes"]),
        rule(&["create", "update", "patch"], CORE, &["events"]),
        rule(READ, CORE, &["pods"]),
        rule(&["create", "delete"], CORE, &["pods"]),
        rule(&["update", "patch"], CORE, &["pods/status"]),
        rule(&["create"], CORE, &["pods/eviction"]),
        rule(&["get"], CORE, &["configmaps", "secrets"]),
        rule(&["get"], CORE, &["persistentvolumeclaims", "persistentvolumes"]),
        rule(&["get"], CORE, &["endpoints"]),
        rule(&["update", "patch"], CORE, &["persistentvolumeclaims/status"]),
        rule(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        rule(&["create"], CORE, &["serviceaccounts/token"]),
        rule(&["create", "get", "list", "watch"], &["certificates.k8s.io"], &["certificatesigningrequests"]),
        rule(&["get", "create", "update", "patch", "delete"], &["coordination.k8s.io"], &["leases"]),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(&["get", "create", "update", "patch", "delete"], &["storage.k8s.io"], &["csinodes"]),
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ];
    let proxier = vec![
        rule(&["list", "watch"], CORE, &["services", "endpoints"]),
        rule(READ, CORE, &["nodes"]),
        events(),
        rule(&["list", "watch"], &["discovery.k8s.io"], &["endpointslices"]),
    ];
    let monitoring = vec![json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/healthz/*", "/livez", "/livez/*", "/readyz", "/readyz/*", "/metrics", "/metrics/slis"]})];
    let crb = |name: &str, subjects: Value| ("clusterrolebindings", binding("ClusterRoleBinding", name, None, "ClusterRole", subjects));
    vec![
        ("clusterroles", cluster_role("system:kube-scheduler", scheduler)),
        ("clusterroles", cluster_role("system:volume-scheduler", volume_scheduler)),
        ("clusterroles", cluster_role("system:kube-controller-manager", controller_manager)),
        ("clusterroles", cluster_role("system:node", node)),
        ("clusterroles", cluster_role("system:node-proxier", proxier)),
        ("clusterroles", cluster_role("system:node-bootstrapper", vec![rule(&["create", "get", "list", "watch"], &["certificates.k8s.io"], &["certificatesigningrequests"])])),
        ("clusterroles", cluster_role("system:certificates.k8s.io:certificatesigningrequests:nodeclient", vec![rule(&["create"], &["certificates.k8s.io"], &["certificatesigningrequests/nodeclient"])])),
        ("clusterroles", cluster_role("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", vec![rule(&["create"], &["certificates.k8s.io"], &["certificatesigningrequests/selfnodeclient"])])),
        ("clusterroles", cluster_role("system:monitoring", monitoring)),
        // capstan's own: the real node's NetworkPolicy agent (`kubelet/src/netpol`), which reads
        // every pod, as a CNI's node agent does under its own ServiceAccount.
        ("clusterroles", cluster_role(NETWORK_POLICY_AGENT, vec![rule(READ, CORE, &["pods", "namespaces"]), rule(READ, &["networking.k8s.io"], &["networkpolicies"])])),
        crb("system:kube-scheduler", user("system:kube-scheduler")),
        crb("system:volume-scheduler", user("system:kube-scheduler")),
        crb("system:kube-controller-manager", user("system:kube-controller-manager")),
        crb("system:node-proxier", user("system:kube-proxy")),
        crb("system:monitoring", group("system:monitoring")),
        crb(NETWORK_POLICY_AGENT, user(NETWORK_POLICY_AGENT)),
        // Kept with no subjects, as Kubernetes keeps it since the Node authorizer.
        crb("system:node", json!([])),
        // kubeadm's TLS bootstrap (`capstan node join`): bootstrap tokens of its group may ask
        // for a node client certificate and have it approved automatically, and nodes renew
        // theirs. kubeadm creates these at `kubeadm init`; capstan at start.
        ("clusterrolebindings", kubeadm("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", BOOTSTRAP_NODE_GROUP)),
        ("clusterrolebindings", kubeadm("kubeadm:node-autoapprove-bootstrap", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", BOOTSTRAP_NODE_GROUP)),
        ("clusterrolebindings", kubeadm("kubeadm:node-autoapprove-certificate-rotation", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "system:nodes")),
    ]
}

/// The user (and role) of the real node's NetworkPolicy agent.
pub const NETWORK_POLICY_AGENT: &str = "system:capstan:network-policy-agent";

/// The group kubeadm gives its node bootstrap tokens (`auth-extra-groups`).
pub const BOOTSTRAP_NODE_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// A binding of kubeadm's (its name and role differ, its labels are not RBAC's defaults').
fn kubeadm(name: &str, role: &str, group_name: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": group(group_name)})
}

/// The rules of each controller's role (Kubernetes' `system:controller:*`, `patch` added
/// where capstan's controller patches).
fn controller_rules(ctl: &str) -> Vec<Value> {
    let all = &["*"];
    match ctl {
        "replicaset-controller" => vec![
            rule(&["get", "list", "watch", "update"], APPS, &["replicasets"]),
            rule(&["update", "patch"], APPS, &["replicasets/status"]),
            rule(&["update"], APPS, &["replicasets/finalizers"]),
            rule(&["list", "watch", "patch", "create", "delete"], CORE, &["pods"]),
            events(),
        ],
        "deployment-controller" => vec![
            rule(&["get", "list", "watch", "update", "patch"], APPS, &["deployments"]),
            rule(&["update", "patch"], APPS, &["deployments/status"]),
            rule(&["update"], APPS, &["deployments/finalizers"]),
            rule(&["get", "list", "watch", "create", "update", "patch", "delete"], APPS, &["replicasets"]),
            rule(&["get", "list", "watch", "update"], CORE, &["pods"]),
            events(),
        ],
        "generic-garbage-collector" => vec![rule(&["get", "list", "watch", "patch", "update", "delete"], all, all), events()],
        "service-account-controller" => vec![rule(&["create"], CORE, &["serviceaccounts"]), events()],
        "endpoint-controller" => vec![
            rule(READ, CORE, &["services", "pods"]),
            rule(&["get", "list", "watch", "create", "update", "patch", "delete"], CORE, &["endpoints"]),
            rule(&["create"], CORE, &["endpoints/restricted"]),
            events(),
        ],
        "endpointslice-controller" => vec![
            rule(READ, CORE, &["services", "pods", "nodes"]),
            rule(&["update"], CORE, &["services/finalizers"]),
            rule(&["get", "list", "watch", "create", "update", "patch", "delete"], &["discovery.k8s.io"], &["endpointslices"]),
            events(),
        ],
        "node-controller" => vec![
            rule(&["get", "list", "watch", "update", "delete", "patch"], CORE, &["nodes"]),
            rule(&["patch", "update"], CORE, &["nodes/status"]),
            rule(&["patch", "update"], CORE, &["pods/status"]),
            rule(&["list", "watch", "get", "delete"], CORE, &["pods"]),
            events(),
        ],
        "job-controller" => vec![
            rule(&["get", "list", "watch", "update", "patch"], &["batch"], &["jobs"]),
            rule(&["update", "patch"], &["batch"], &["jobs/status"]),
            rule(&["update"], &["batch"], &["jobs/finalizers"]),
            rule(&["list", "watch", "create", "delete", "patch"], CORE, &["pods"]),
            events(),
        ],
        "ttl-after-finished-controller" => vec![rule(&["get", "list", "watch", "delete"], &["batch"], &["jobs"]), events()],
        "daemon-set-controller" => vec![
            rule(READ, APPS, &["daemonsets"]),
            rule(&["update", "patch"], APPS, &["daemonsets/status"]),
            rule(&["update"], APPS, &["daemonsets/finalizers"]),
            rule(&["list", "watch"], CORE, &["nodes"]),
            rule(&["list", "watch", "create", "delete", "patch"], CORE, &["pods"]),
            rule(&["create"], CORE, &["pods/binding"]),
            rule(&["get", "list", "watch", "create", "delete", "update", "patch"], &["apps"], &["controllerrevisions"]),
            events(),
        ],
        "statefulset-controller" => vec![
            rule(&["list", "watch"], CORE, &["pods"]),
            rule(READ, &["apps"], &["statefulsets"]),
            rule(&["update", "patch"], &["apps"], &["statefulsets/status"]),
            rule(&["update"], &["apps"], &["statefulsets/finalizers"]),
            rule(&["get", "create", "delete", "update", "patch"], CORE, &["pods"]),
            rule(&["get", "create", "delete", "update", "patch", "list", "watch"], &["apps"], &["controllerrevisions"]),
            rule(&["get", "create", "list", "watch", "update", "delete"], CORE, &["persistentvolumeclaims"]),
            rule(&["update"], CORE, &["pods/finalizers"]),
            events(),
        ],
        "namespace-controller" => vec![
            rule(&["get", "list", "watch", "delete"], CORE, &["namespaces"]),
            rule(&["update"], CORE, &["namespaces/finalize", "namespaces/status"]),
            rule(&["get", "list", "watch", "delete", "deletecollection"], all, all),
        ],
        "disruption-controller" => vec![
            rule(READ, APPS, &["deployments", "replicasets"]),
            rule(READ, CORE, &["replicationcontrollers"]),
            rule(READ, &["policy"], &["poddisruptionbudgets"]),
            rule(READ, &["apps"], &["statefulsets"]),
            rule(&["update", "patch"], &["policy"], &["poddisruptionbudgets/status"]),
            rule(&["patch", "update"], CORE, &["pods/status"]),
            rule(&["get"], all, &["*/scale"]),
            events(),
        ],
        "horizontal-pod-autoscaler" => vec![
            rule(READ, &["autoscaling"], &["horizontalpodautoscalers"]),
            rule(&["update", "patch"], &["autoscaling"], &["horizontalpodautoscalers/status"]),
            rule(&["get", "update", "patch"], all, &["*/scale"]),
            rule(&["list", "watch"], CORE, &["pods"]),
            rule(&["list", "watch"], &["metrics.k8s.io"], &["pods"]),
            rule(READ, &["custom.metrics.k8s.io", "external.metrics.k8s.io"], all),
            events(),
        ],
        "cronjob-controller" => vec![
            rule(&["get", "list", "watch", "update"], &["batch"], &["cronjobs"]),
            rule(&["get", "list", "watch", "create", "update", "delete", "patch"], &["batch"], &["jobs"]),
            rule(&["update", "patch"], &["batch"], &["cronjobs/status"]),
            rule(&["update"], &["batch"], &["cronjobs/finalizers"]),
            rule(&["list", "watch", "delete"], CORE, &["pods"]),
            events(),
        ],
        "certificate-controller" => vec![
            rule(&["get", "list", "watch", "delete"], &["certificates.k8s.io"], &["certificatesigningrequests"]),
            rule(&["update"], &["certificates.k8s.io"], &["certificatesigningrequests/status", "certificatesigningrequests/approval"]),
            named(&["approve"], &["certificates.k8s.io"], &["signers"], &["kubernetes.io/kube-apiserver-client-kubelet"]),
            named(
                &["sign"],
                &["certificates.k8s.io"],
                &["signers"],
                &["kubernetes.io/legacy-unknown", "kubernetes.io/kube-apiserver-client", "kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving"],
            ),
            rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
            events(),
        ],
        "root-ca-cert-publisher" => vec![rule(&["get", "create", "update", "patch"], CORE, &["configmaps"]), events()],
        "replication-controller" => vec![
            rule(&["get", "list", "watch", "update"], CORE, &["replicationcontrollers"]),
            rule(&["update", "patch"], CORE, &["replicationcontrollers/status"]),
            rule(&["update"], CORE, &["replicationcontrollers/finalizers"]),
            rule(&["list", "watch", "patch", "create", "delete"], CORE, &["pods"]),
            events(),
        ],
        "persistent-volume-binder" => vec![
            rule(&["create", "delete", "get", "list", "update", "patch", "watch"], CORE, &["persistentvolumes"]),
            rule(&["update", "patch"], CORE, &["persistentvolumes/status"]),
            rule(&["get", "list", "update", "patch", "watch"], CORE, &["persistentvolumeclaims"]),
            rule(&["update", "patch"], CORE, &["persistentvolumeclaims/status"]),
            rule(&["get", "list", "watch"], CORE, &["pods", "nodes"]),
            rule(READ, &["storage.k8s.io"], &["storageclasses"]),
            events(),
        ],
        "resourcequota-controller" => vec![rule(&["list", "watch"], all, all), rule(&["update", "patch"], CORE, &["resourcequotas/status"]), events()],
        _ => Vec::new(),
    }
}

/// Controller names with roles in `controller_rules` (cluster-wide), and the token cleaner's,
/// which Kubernetes grants in `kube-system` only.
pub const CONTROLLERS: &[&str] = &[
    "replicaset-controller",
    "deployment-controller",
    "generic-garbage-collector",
    "service-account-controller",
    "endpoint-controller",
    "endpointslice-controller",
    "node-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "daemon-set-controller",
    "statefulset-controller",
    "namespace-controller",
    "disruption-controller",
    "horizontal-pod-autoscaler",
    "cronjob-controller",
    "resourcequota-controller",
    "certificate-controller",
    "persistent-volume-binder",
    "replication-controller",
    "root-ca-cert-publisher",
];

fn controllers() -> Vec<(&'static str, Value)> {
    let sa = |name: &str| json!([{"kind": "ServiceAccount", "name": name, "namespace": "kube-system"}]);
    let mut out = Vec::new();
    for c in CONTROLLERS {
        let name = format!("system:controller:{c}");
        out.push(("clusterroles", cluster_role(&name, controller_rules(c))));
        out.push(("clusterrolebindings", binding("ClusterRoleBinding", &name, None, "ClusterRole", sa(c))));
    }
    let name = "system:controller:token-cleaner";
    let mut role = cluster_role(name, vec![rule(&["delete", "get", "list", "watch"], CORE, &["secrets"]), events()]);
    role["kind"] = json!("Role");
    role["metadata"]["namespace"] = json!("kube-system");
    out.push(("roles", role));
    out.push(("rolebindings", binding("RoleBinding", name, Some("kube-system"), "Role", sa("token-cleaner"))));
    out
}

/// The user-facing roles (cluster-admin, admin, edit, view and what they aggregate) and the
/// ones every authenticated user holds.
fn users() -> Vec<(&'static str, Value)> {
    let cr = |name: &str, labels: Value, rules: Value| json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name, "labels": labels}, "rules": rules});
    let agg = |name: &str, labels: Value, to: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name, "labels": labels},
               "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}}]}, "rules": []})
    };
    let crb = |name: &str, role: &str, group: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]})
    };
    let boot = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let read = json!(["get", "list", "watch"]);
    let write = json!(["create", "delete", "deletecollection", "patch", "update"]);
    let core_read = json!(["configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "pods", "pods/log", "pods/status", "replicationcontrollers", "replicationcontrollers/scale", "replicationcontrollers/status", "serviceaccounts", "services", "services/status", "bindings", "events", "limitranges", "resourcequotas", "resourcequotas/status", "namespaces", "namespaces/status"]);
    let apps = json!(["controllerrevisions", "daemonsets", "daemonsets/status", "deployments", "deployments/scale", "deployments/status", "replicasets", "replicasets/scale", "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status"]);
    let view_rules = json!([
        {"apiGroups": [""], "resources": core_read, "verbs": read},
        {"apiGroups": ["apps"], "resources": apps, "verbs": read},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers", "horizontalpodautoscalers/status"], "verbs": read},
        {"apiGroups": ["batch"], "resources": ["cronjobs", "cronjobs/status", "jobs", "jobs/status"], "verbs": read},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets", "poddisruptionbudgets/status"], "verbs": read},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingresses/status", "networkpolicies"], "verbs": read},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
    ]);
    let edit_rules = json!([
        {"apiGroups": [""], "resources": ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "pods/eviction", "configmaps", "endpoints", "persistentvolumeclaims", "replicationcontrollers", "replicationcontrollers/scale", "secrets", "serviceaccounts", "services", "services/proxy"], "verbs": write},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": read},
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
        {"apiGroups": ["apps"], "resources": ["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets", "replicasets/scale", "statefulsets", "statefulsets/scale"], "verbs": write},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": write},
        {"apiGroups": ["batch"], "resources": ["cronjobs", "jobs"], "verbs": write},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": write},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"], "verbs": write},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": write},
    ]);
    let admin_rules = json!([
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings", "roles"], "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]},
    ]);
    vec![
        ("clusterroles", cr("cluster-admin", boot.clone(), json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]))),
        ("clusterroles", cr("system:discovery", boot.clone(), json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]))),
        ("clusterroles", cr("system:public-info-viewer", boot.clone(), json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]))),
        ("clusterroles", cr("system:basic-user", boot.clone(), json!([
            {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
        ]))),
        ("clusterroles", cr("system:service-account-issuer-discovery", boot.clone(), json!([{"nonResourceURLs": ["/.well-known/openid-configuration", "/.well-known/openid-configuration/", "/openid/v1/jwks", "/openid/v1/jwks/"], "verbs": ["get"]}]))),
        ("clusterroles", cr("system:auth-delegator", boot.clone(), json!([
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        ]))),
        ("clusterroles", cr("system:aggregate-to-view", json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-view": "true"}), view_rules)),
        ("clusterroles", cr("system:aggregate-to-edit", json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-edit": "true"}), edit_rules)),
        ("clusterroles", cr("system:aggregate-to-admin", json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}), admin_rules)),
        ("clusterroles", agg("view", json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-edit": "true"}), "view")),
        ("clusterroles", agg("edit", json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}), "edit")),
        ("clusterroles", agg("admin", boot.clone(), "admin")),
        ("clusterrolebindings", crb("cluster-admin", "cluster-admin", MASTERS)),
        ("clusterrolebindings", crb("system:discovery", "system:discovery", crate::authn::AUTHENTICATED)),
        ("clusterrolebindings", crb("system:basic-user", "system:basic-user", crate::authn::AUTHENTICATED)),
        ("clusterrolebindings", crb("system:public-info-viewer", "system:public-info-viewer", crate::authn::AUTHENTICATED)),
        ("clusterrolebindings", crb("system:service-account-issuer-discovery", "system:service-account-issuer-discovery", "system:serviceaccounts")),
    ]
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::{AUTHENTICATED, UserInfo};
    use crate::rbac::{Index, attributes, authorized};

    fn index() -> Index {
        let of = |kind: &str| defaults().into_iter().filter(|(k, _)| *k == kind).map(|(_, v)| v).collect::<Vec<_>>();
        Index::build(&of("clusterroles"), &of("roles"), &of("clusterrolebindings"), &of("rolebindings"))
    }

    fn can(ix: &Index, u: &UserInfo, method: &str, path: &str) -> bool {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        authorized(ix, u, &attributes(method, p, q))
    }

    fn controller(sa: &str) -> UserInfo {
        UserInfo::new(format!("system:serviceaccount:kube-system:{sa}"), vec!["system:serviceaccounts".into(), "system:serviceaccounts:kube-system".into(), AUTHENTICATED.into()])
    }

    /// Each component holds what its work needs and no more (checked both ways: a grant that
    /// went missing and one that leaked both fail here).
    #[test]
    fn each_component_and_controller_holds_its_own_role_only() {
        let ix = index();
        let sched = UserInfo::new("system:kube-scheduler", vec![AUTHENTICATED.into()]);
        for (m, p, want) in [
            ("POST", "/api/v1/namespaces/a/pods/p/binding", true),
            ("PATCH", "/api/v1/namespaces/a/pods/p/status", true),
            ("DELETE", "/api/v1/namespaces/a/pods/p", true),
            ("GET", "/api/v1/nodes?watch=true", true),
            ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler", true),
            ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager", false),
            ("POST", "/api/v1/namespaces/a/pods", false),
            ("GET", "/api/v1/namespaces/a/secrets/s", false),
            ("PATCH", "/api/v1/nodes/n1", false),
        ] {
            assert_eq!(can(&ix, &sched, m, p), want, "scheduler {m} {p}");
        }
        let kcm = UserInfo::new("system:kube-controller-manager", vec![AUTHENTICATED.into()]);
        for (m, p, want) in [
            ("GET", "/api/v1/pods?watch=true", true),
            ("GET", "/apis/apps/v1/replicasets", true),
            ("POST", "/api/v1/namespaces/kube-system/serviceaccounts/replicaset-controller/token", true),
            ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager", true),
            ("POST", "/api/v1/namespaces/a/pods", false),
            ("GET", "/api/v1/namespaces/a/secrets/s", true),
            ("DELETE", "/api/v1/nodes/n1", false),
        ] {
            assert_eq!(can(&ix, &kcm, m, p), want, "controller manager {m} {p}");
        }
        let rs = controller("replicaset-controller");
        for (m, p, want) in [
            ("POST", "/api/v1/namespaces/a/pods", true),
            ("DELETE", "/api/v1/namespaces/a/pods/p", true),
            ("PATCH", "/apis/apps/v1/namespaces/a/replicasets/r/status", true),
            ("POST", "/api/v1/namespaces/a/events", true),
            ("POST", "/apis/apps/v1/namespaces/a/replicasets", false),
            ("DELETE", "/api/v1/nodes/n1", false),
            ("GET", "/api/v1/namespaces/a/secrets/s", false),
        ] {
            assert_eq!(can(&ix, &rs, m, p), want, "replicaset-controller {m} {p}");
        }
        let dep = controller("deployment-controller");
        assert!(can(&ix, &dep, "POST", "/apis/apps/v1/namespaces/a/replicasets"));
        assert!(!can(&ix, &dep, "POST", "/api/v1/namespaces/a/pods"));
        let node = controller("node-controller");
        assert!(can(&ix, &node, "PATCH", "/api/v1/nodes/n1/status") && can(&ix, &node, "DELETE", "/api/v1/namespaces/a/pods/p"));
        assert!(!can(&ix, &node, "POST", "/api/v1/namespaces/a/pods"));
        let cleaner = controller("token-cleaner");
        assert!(can(&ix, &cleaner, "DELETE", "/api/v1/namespaces/kube-system/secrets/bootstrap-token-abcdef"));
        assert!(!can(&ix, &cleaner, "DELETE", "/api/v1/namespaces/default/secrets/s"), "the token cleaner's role is kube-system's only");
        // Another ServiceAccount of the same name elsewhere is not the controller.
        let imposter = UserInfo::new("system:serviceaccount:default:replicaset-controller", vec![AUTHENTICATED.into()]);
        assert!(!can(&ix, &imposter, "POST", "/api/v1/namespaces/a/pods"));
        // system:node is bound to no one.
        let kubelet = UserInfo::new("system:node:n1", vec!["system:nodes".into(), AUTHENTICATED.into()]);
        assert!(!can(&ix, &kubelet, "GET", "/api/v1/namespaces/a/secrets/s"));
        // kubeadm's TLS bootstrap: a node bootstrap token may ask and be auto-approved; a
        // bootstrap token without the group may not.
        let joining = UserInfo::new("system:bootstrap:abcdef", vec!["system:bootstrappers".into(), BOOTSTRAP_NODE_GROUP.into(), AUTHENTICATED.into()]);
        let other = UserInfo::new("system:bootstrap:zzzzzz", vec!["system:bootstrappers".into(), AUTHENTICATED.into()]);
        for (m, p) in [("POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests"), ("POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests/x/nodeclient")] {
            assert!(can(&ix, &joining, m, p), "joining {m} {p}");
            assert!(!can(&ix, &other, m, p), "other bootstrapper {m} {p}");
        }
        assert!(!can(&ix, &joining, "GET", "/api/v1/namespaces/a/pods"));
        let approver = controller("certificate-controller");
        assert!(can(&ix, &approver, "PUT", "/apis/certificates.k8s.io/v1/certificatesigningrequests/x/approval"));
        let monitor = UserInfo::new("prom", vec!["system:monitoring".into(), AUTHENTICATED.into()]);
        assert!(can(&ix, &monitor, "GET", "/metrics") && !can(&ix, &monitor, "GET", "/api/v1/pods"));
    }

    #[test]
    fn every_controller_of_the_controllers_has_a_role_with_rules() {
        for c in CONTROLLERS {
            assert!(!controller_rules(c).is_empty(), "{c}");
        }
    }
}
