//! Authorization by RBAC, as Kubernetes' RBAC authorizer decides it.
//!
//! The Roles, ClusterRoles and their bindings are compiled into an `Index` (subjects to the
//! rules that apply to them, aggregated ClusterRoles resolved), rebuilt by a task that follows
//! the four resources' watch caches, so a decision is a few hash lookups and a walk over the
//! caller's own rules. Members of `system:masters` are allowed everything before RBAC is
//! consulted, as kube-apiserver's privileged-group authorizer allows them.
//!
//! `attributes` turns a request into Kubernetes' request attributes (verb, API group,
//! resource, subresource, namespace, name, or a non-resource path); `Index::allows` is the
//! decision; `forbidden` words the refusal as Kubernetes does.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use crate::authn::UserInfo;

pub const MASTERS: &str = "system:masters";

/// What a request asks to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Resource { group: String, resource: String, subresource: String, namespace: String, name: String },
    NonResource { path: String },
}

/// Kubernetes' request attributes of `method path?query`.
pub fn attributes(method: &str, path: &str, query: &str) -> Attributes {
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    let non_resource = |verb: &str| Attributes { verb: verb.to_string(), target: Target::NonResource { path: path.to_string() } };
    let lower = method.to_ascii_lowercase();
    let (group, mut rest) = match parts.as_slice() {
        ["api", _v, rest @ ..] if !rest.is_empty() => (String::new(), rest.to_vec()),
        ["apis", g, _v, rest @ ..] if !rest.is_empty() => (g.to_string(), rest.to_vec()),
        _ => return non_resource(&lower),
    };
    // The old `/watch/` prefix.
    let mut watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    if rest.first() == Some(&"watch") {
        watch = true;
        rest.remove(0);
    }
    let mut namespace = String::new();
    // `namespaces/NAME/status` and `namespaces/NAME/finalize` are subresources of the
    // namespace, not resources in it (Kubernetes' RequestInfo says the same).
    let namespace_subresource = rest.len() == 3 && rest[0] == "namespaces" && matches!(rest[2], "status" | "finalize");
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 && !namespace_subresource {
        namespace = rest[1].to_string();
        rest.drain(..2);
    } else if rest.first() == Some(&"namespaces") && (rest.len() == 2 || namespace_subresource) {
        // A namespace itself: it is also its own namespace, as Kubernetes sets it.
        namespace = rest[1].to_string();
    }
    let resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
    let name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
    let subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    let verb = match (lower.as_str(), name.is_empty()) {
        ("get" | "head", _) if watch => "watch",
        ("get" | "head", true) => "list",
        ("get" | "head", false) => "get",
        ("post", _) => "create",
        ("put", _) => "update",
        ("patch", _) => "patch",
        ("delete", true) => "deletecollection",
        ("delete", false) => "delete",
        (other, _) => other,
    };
    Attributes { verb: verb.into(), target: Target::Resource { group, resource, subresource, namespace, name } }
}

/// One PolicyRule.
#[derive(Clone, Debug, Default)]
struct Rule {
    verbs: Vec<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn rules_of(role: &Value) -> Vec<Rule> {
    role["rules"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| Rule { verbs: strings(&r["verbs"]), groups: strings(&r["apiGroups"]), resources: strings(&r["resources"]), names: strings(&r["resourceNames"]), urls: strings(&r["nonResourceURLs"]) })
                .collect()
        })
        .unwrap_or_default()
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

impl Rule {
    fn allows(&self, a: &Attributes) -> bool {
        if !has(&self.verbs, &a.verb) {
            return false;
        }
        match &a.target {
            Target::NonResource { path } => self.urls.iter().any(|u| u == "*" || u == path || (u.ends_with('*') && path.starts_with(&u[..u.len() - 1]))),
            Target::Resource { group, resource, subresource, name, .. } => {
                if !has(&self.groups, group) {
                    return false;
                }
                let full = if subresource.is_empty() { resource.clone() } else { format!("{resource}/{subresource}") };
                let resource_ok = self.resources.iter().any(|r| {
                    r == "*" || *r == full || (subresource.is_empty() && r == resource) || (!subresource.is_empty() && *r == format!("*/{subresource}")) || (!subresource.is_empty() && *r == format!("{resource}/*"))
                });
                // resourceNames limit a rule to those names (a list or create has none, so such
                // a rule never allows them).
                resource_ok && (self.names.is_empty() || (!name.is_empty() && self.names.iter().any(|n| n == name)))
            }
        }
    }
}

/// The compiled bindings: for each subject, the rules that apply to it and where.
#[derive(Default)]
pub struct Index {
    /// `u:NAME` or `g:NAME` → (namespace of a RoleBinding, or None for cluster-wide; rules).
    by_subject: HashMap<String, Vec<(Option<String>, Arc<Vec<Rule>>)>>,
    pub bindings: usize,
}

fn matches_selector(labels: &Value, sel: &Value) -> bool {
    let ml = sel["matchLabels"].as_object();
    if let Some(ml) = ml
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let values = strings(&e["values"]);
        let got = labels.get(key).and_then(Value::as_str);
        let ok = match e["operator"].as_str().unwrap_or("") {
            "In" => got.is_some_and(|g| values.iter().any(|v| v == g)),
            "NotIn" => got.is_none_or(|g| !values.iter().any(|v| v == g)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    ml.is_some() || sel["matchExpressions"].as_array().is_some_and(|a| !a.is_empty())
}

impl Index {
    /// Compiles the objects (JSON) of the four RBAC resources.
    pub fn build(cluster_roles: &[Value], roles: &[Value], cluster_bindings: &[Value], bindings: &[Value]) -> Index {
        // ClusterRoles, with aggregation resolved to a fixed point (an aggregated role may
        // itself be aggregated into another, as view is into edit and edit into admin).
        let mut cr: HashMap<String, Vec<Rule>> = cluster_roles.iter().map(|r| (r["metadata"]["name"].as_str().unwrap_or("").to_string(), rules_of(r))).collect();
        let aggregated: Vec<(&str, Vec<&Value>)> = cluster_roles
            .iter()
            .filter_map(|r| r["aggregationRule"]["clusterRoleSelectors"].as_array().map(|s| (r["metadata"]["name"].as_str().unwrap_or(""), s.iter().collect())))
            .collect();
        for _ in 0..8 {
            let mut changed = false;
            for (name, selectors) in &aggregated {
                let mut rules: Vec<Rule> = Vec::new();
                for other in cluster_roles {
                    let on = other["metadata"]["name"].as_str().unwrap_or("");
                    if on != *name && selectors.iter().any(|s| matches_selector(&other["metadata"]["labels"], s)) {
                        rules.extend(cr.get(on).cloned().unwrap_or_default());
                    }
                }
                let own = rules_of(cluster_roles.iter().find(|r| r["metadata"]["name"] == *name).unwrap());
                rules.extend(own);
                if cr.get(*name).map(Vec::len) != Some(rules.len()) {
                    changed = true;
                }
                cr.insert(name.to_string(), rules);
            }
            if !changed {
                break;
            }
        }
        let cr: HashMap<String, Arc<Vec<Rule>>> = cr.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        let nr: HashMap<(String, String), Arc<Vec<Rule>>> = roles
            .iter()
            .map(|r| ((r["metadata"]["namespace"].as_str().unwrap_or("").to_string(), r["metadata"]["name"].as_str().unwrap_or("").to_string()), Arc::new(rules_of(r))))
            .collect();
        let mut ix = Index::default();
        let mut add = |b: &Value, ns: Option<String>, rules: Arc<Vec<Rule>>| {
            for s in b["subjects"].as_array().into_iter().flatten() {
                let key = match s["kind"].as_str().unwrap_or("") {
                    "User" => format!("u:{}", s["name"].as_str().unwrap_or("")),
                    "Group" => format!("g:{}", s["name"].as_str().unwrap_or("")),
                    "ServiceAccount" => {
                        let sns = s["namespace"].as_str().filter(|n| !n.is_empty()).or(ns.as_deref()).unwrap_or("");
                        format!("u:system:serviceaccount:{sns}:{}", s["name"].as_str().unwrap_or(""))
                    }
                    _ => continue,
                };
                ix.by_subject.entry(key).or_default().push((ns.clone(), rules.clone()));
            }
        };
        for b in cluster_bindings {
            if b["roleRef"]["kind"] == "ClusterRole"
                && let Some(rules) = b["roleRef"]["name"].as_str().and_then(|n| cr.get(n))
            {
                add(b, None, rules.clone());
            }
        }
        for b in bindings {
            let ns = b["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            let name = b["roleRef"]["name"].as_str().unwrap_or("").to_string();
            let rules = match b["roleRef"]["kind"].as_str() {
                Some("ClusterRole") => cr.get(&name).cloned(),
                Some("Role") => nr.get(&(ns.clone(), name)).cloned(),
                _ => None,
            };
            if let Some(rules) = rules {
                add(b, Some(ns), rules);
            }
        }
        ix.bindings = cluster_bindings.len() + bindings.len();
        ix
    }

    /// Whether RBAC grants `a` to `user`.
    pub fn allows(&self, user: &UserInfo, a: &Attributes) -> bool {
        let namespace = match &a.target {
            Target::Resource { namespace, .. } => namespace.as_str(),
            Target::NonResource { .. } => "",
        };
        let subject_rules = |key: &str| -> bool {
            self.by_subject.get(key).is_some_and(|list| {
                list.iter().any(|(ns, rules)| {
                    // A RoleBinding grants in its namespace only, and never non-resource URLs.
                    let scoped = match ns {
                        None => true,
                        Some(ns) => matches!(a.target, Target::Resource { .. }) && ns == namespace,
                    };
                    scoped && rules.iter().any(|r| r.allows(a))
                })
            })
        };
        // A lookup key per subject, built once per decision.
        let mut key = String::with_capacity(64);
        key.push_str("u:");
        key.push_str(&user.name);
        if subject_rules(&key) {
            return true;
        }
        user.groups.iter().any(|g| {
            key.clear();
            key.push_str("g:");
            key.push_str(g);
            subject_rules(&key)
        })
    }
}

impl Index {
    /// The rules that apply to `user` in `namespace` (cluster-wide bindings and the
    /// namespace's RoleBindings), as SelfSubjectRulesReview lists them: (resource rules,
    /// non-resource rules).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<Value>, Vec<Value>) {
        let (mut res, mut non) = (Vec::new(), Vec::new());
        let keys = std::iter::once(format!("u:{}", user.name)).chain(user.groups.iter().map(|g| format!("g:{g}")));
        for key in keys {
            for (ns, rules) in self.by_subject.get(&key).into_iter().flatten() {
                if ns.as_deref().is_some_and(|n| n != namespace) {
                    continue;
                }
                for r in rules.iter() {
                    if !r.urls.is_empty() {
                        // A RoleBinding never grants non-resource URLs.
                        if ns.is_none() {
                            non.push(json!({"verbs": r.verbs, "nonResourceURLs": r.urls}));
                        }
                    } else {
                        let mut v = json!({"verbs": r.verbs, "apiGroups": r.groups, "resources": r.resources});
                        if !r.names.is_empty() {
                            v["resourceNames"] = json!(r.names);
                        }
                        res.push(v);
                    }
                }
            }
        }
        (res, non)
    }
}


/// The decision for `user` (masters first, then RBAC).
pub fn authorized(index: &Index, user: &UserInfo, a: &Attributes) -> bool {
    user.groups.iter().any(|g| g == MASTERS) || index.allows(user, a)
}

/// Kubernetes' words for a refusal.
pub fn forbidden(user: &UserInfo, a: &Attributes) -> crate::status::ApiError {
    match &a.target {
        Target::NonResource { path } => crate::status::ApiError::forbidden(format!("forbidden: User \"{}\" cannot {} path \"{path}\"", user.name, a.verb)),
        Target::Resource { group, resource, subresource, namespace, name } => {
            let full = if subresource.is_empty() { resource.clone() } else { format!("{resource}/{subresource}") };
            // The prefix names the resource qualified by its group (`deployments.apps`).
            let qualified = if group.is_empty() { full.clone() } else { format!("{resource}.{group}{}", if subresource.is_empty() { String::new() } else { format!("/{subresource}") }) };
            let what = if name.is_empty() { format!("{qualified} is forbidden") } else { format!("{qualified} \"{name}\" is forbidden") };
            let scope = if namespace.is_empty() { "at the cluster scope".to_string() } else { format!("in the namespace \"{namespace}\"") };
            let mut e = crate::status::ApiError::forbidden(format!("{what}: User \"{}\" cannot {} resource \"{full}\" in API group \"{group}\" {scope}", user.name, a.verb));
            let mut d = json!({ "kind": resource });
            if !name.is_empty() {
                d["name"] = json!(name);
            }
            if !group.is_empty() {
                d["group"] = json!(group);
            }
            e.details = Some(d);
            e
        }
    }
}

/// The current index, swapped whole when RBAC objects change.
#[derive(Default)]
pub struct Authorizer {
    index: RwLock<Arc<Index>>,
    ready: std::sync::atomic::AtomicBool,
}

impl Authorizer {
    pub fn index(&self) -> Arc<Index> {
        self.index.read().unwrap().clone()
    }

    pub fn set(&self, ix: Index) {
        *self.index.write().unwrap() = Arc::new(ix);
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::new(name, groups.iter().map(|g| g.to_string()).collect())
    }

    fn can(ix: &Index, u: &UserInfo, method: &str, path: &str) -> bool {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        authorized(ix, u, &attributes(method, p, q))
    }

    fn defaults_of(kind: &str) -> Vec<Value> {
        crate::default_roles::defaults().into_iter().filter(|(k, _)| *k == kind).map(|(_, v)| v).collect()
    }

    #[test]
    fn requests_become_kubernetes_attributes() {
        let r = |verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str| Attributes {
            verb: verb.into(),
            target: Target::Resource { group: group.into(), resource: resource.into(), subresource: sub.into(), namespace: ns.into(), name: name.into() },
        };
        assert_eq!(attributes("GET", "/api/v1/namespaces/a/pods", ""), r("list", "", "pods", "", "a", ""));
        assert_eq!(attributes("GET", "/api/v1/namespaces/a/pods", "watch=true&x=1"), r("watch", "", "pods", "", "a", ""));
        assert_eq!(attributes("GET", "/api/v1/watch/namespaces/a/pods", ""), r("watch", "", "pods", "", "a", ""));
        assert_eq!(attributes("GET", "/api/v1/namespaces/a/pods/p/log", ""), r("get", "", "pods", "log", "a", "p"));
        assert_eq!(attributes("DELETE", "/apis/apps/v1/namespaces/a/deployments", ""), r("deletecollection", "apps", "deployments", "", "a", ""));
        assert_eq!(attributes("PUT", "/api/v1/namespaces/a/finalize", ""), r("update", "", "namespaces", "finalize", "a", "a"));
        assert_eq!(attributes("PATCH", "/api/v1/namespaces/a/status", ""), r("patch", "", "namespaces", "status", "a", "a"));
        assert_eq!(attributes("GET", "/api/v1/namespaces/a/pods", ""), r("list", "", "pods", "", "a", ""));
        assert_eq!(attributes("PATCH", "/apis/apps/v1/namespaces/a/deployments/d/scale", ""), r("patch", "apps", "deployments", "scale", "a", "d"));
        assert_eq!(attributes("GET", "/api/v1/namespaces/a", ""), r("get", "", "namespaces", "", "a", "a"));
        assert_eq!(attributes("GET", "/api/v1/nodes", ""), r("list", "", "nodes", "", "", ""));
        assert_eq!(attributes("POST", "/api/v1/namespaces", ""), r("create", "", "namespaces", "", "", ""));
        assert_eq!(attributes("GET", "/apis/apps/v1", ""), Attributes { verb: "get".into(), target: Target::NonResource { path: "/apis/apps/v1".into() } });
        assert_eq!(attributes("GET", "/metrics", ""), Attributes { verb: "get".into(), target: Target::NonResource { path: "/metrics".into() } });
    }

    /// Kubernetes' documented examples, over the default roles and a few of the test's own.
    #[test]
    fn rbac_decides_as_kubernetes_documents() {
        let role = |ns: &str, name: &str, rules: Value| json!({"metadata": {"namespace": ns, "name": name}, "rules": rules});
        let rb = |ns: &str, kind: &str, role: &str, subjects: Value| json!({"metadata": {"namespace": ns, "name": format!("{role}-b")}, "roleRef": {"kind": kind, "name": role}, "subjects": subjects});
        let mut crs = defaults_of("clusterroles");
        crs.push(json!({"metadata": {"name": "secret-reader"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "watch", "list"]}]}));
        // An aggregated role: whatever carries the label joins it.
        crs.push(json!({"metadata": {"name": "monitoring"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/aggregate-to-monitoring": "true"}}]}, "rules": []}));
        crs.push(json!({"metadata": {"name": "monitoring-endpoints", "labels": {"rbac.example.com/aggregate-to-monitoring": "true"}}, "rules": [{"apiGroups": [""], "resources": ["services", "endpointslices", "pods"], "verbs": ["get", "list", "watch"]}]}));
        crs.push(json!({"metadata": {"name": "healthz-only"}, "rules": [{"nonResourceURLs": ["/healthz", "/healthz/*"], "verbs": ["get", "post"]}]}));
        let roles = vec![
            role("default", "pod-reader", json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch", "list"]}])),
            role("default", "log-reader", json!([{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}])),
            role("default", "configmap-updater", json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["my-configmap"], "verbs": ["update", "get"]}])),
        ];
        let mut crbs = defaults_of("clusterrolebindings");
        crbs.push(json!({"metadata": {"name": "read-secrets-global"}, "roleRef": {"kind": "ClusterRole", "name": "secret-reader"}, "subjects": [{"kind": "Group", "name": "manager"}]}));
        crbs.push(json!({"metadata": {"name": "mon"}, "roleRef": {"kind": "ClusterRole", "name": "monitoring"}, "subjects": [{"kind": "User", "name": "prom"}]}));
        crbs.push(json!({"metadata": {"name": "hz"}, "roleRef": {"kind": "ClusterRole", "name": "healthz-only"}, "subjects": [{"kind": "User", "name": "probe"}]}));
        let rbs = vec![
            rb("default", "Role", "pod-reader", json!([{"kind": "User", "name": "jane"}])),
            rb("default", "Role", "log-reader", json!([{"kind": "User", "name": "logger"}])),
            rb("default", "Role", "configmap-updater", json!([{"kind": "User", "name": "cm"}])),
            // A RoleBinding to a ClusterRole grants it in its own namespace only.
            rb("development", "ClusterRole", "secret-reader", json!([{"kind": "User", "name": "dave"}])),
            rb("dev", "ClusterRole", "view", json!([{"kind": "Group", "name": "viewers"}])),
            rb("dev", "ClusterRole", "edit", json!([{"kind": "ServiceAccount", "name": "ci"}])),
        ];
        let ix = Index::build(&crs, &roles, &crbs, &rbs);
        let auth = user("anyone", &["system:authenticated"]);
        let jane = user("jane", &["system:authenticated"]);
        let table: Vec<(&UserInfo, &str, &str, bool)> = vec![
            (&jane, "GET", "/api/v1/namespaces/default/pods", true),
            (&jane, "GET", "/api/v1/namespaces/default/pods/p", true),
            (&jane, "GET", "/api/v1/namespaces/default/pods?watch=true", true),
            (&jane, "DELETE", "/api/v1/namespaces/default/pods/p", false),
            (&jane, "GET", "/api/v1/namespaces/other/pods", false),
            (&jane, "GET", "/api/v1/namespaces/default/pods/p/log", false), // subresource not granted by "pods"
            (&jane, "GET", "/api/v1/pods", false),                          // all namespaces needs cluster scope
            (&jane, "GET", "/api", true),                                   // system:discovery
            (&jane, "GET", "/metrics", false),
            (&jane, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", true), // basic-user
            (&jane, "GET", "/apis/apps/v1/namespaces/default/deployments", false),
        ];
        for (u, m, p, want) in table {
            assert_eq!(can(&ix, u, m, p), want, "{} {m} {p}", u.name);
        }
        let logger = user("logger", &[]);
        assert!(can(&ix, &logger, "GET", "/api/v1/namespaces/default/pods/p/log"));
        let cm = user("cm", &[]);
        assert!(can(&ix, &cm, "GET", "/api/v1/namespaces/default/configmaps/my-configmap"));
        assert!(can(&ix, &cm, "PUT", "/api/v1/namespaces/default/configmaps/my-configmap"));
        assert!(!can(&ix, &cm, "GET", "/api/v1/namespaces/default/configmaps/other"), "resourceNames limit the rule");
        assert!(!can(&ix, &cm, "GET", "/api/v1/namespaces/default/configmaps"), "a list names nothing: resourceNames rules never allow it");
        let manager = user("m", &["manager"]);
        assert!(can(&ix, &manager, "GET", "/api/v1/secrets") && can(&ix, &manager, "GET", "/api/v1/namespaces/x/secrets/s"));
        let dave = user("dave", &[]);
        assert!(can(&ix, &dave, "GET", "/api/v1/namespaces/development/secrets/s"));
        assert!(!can(&ix, &dave, "GET", "/api/v1/namespaces/default/secrets/s"));
        assert!(!can(&ix, &dave, "GET", "/api/v1/secrets"));
        let prom = user("prom", &[]);
        assert!(can(&ix, &prom, "GET", "/api/v1/services") && can(&ix, &prom, "GET", "/api/v1/namespaces/a/pods/p"), "aggregated rules");
        assert!(!can(&ix, &prom, "DELETE", "/api/v1/namespaces/a/pods/p"));
        let probe = user("probe", &[]);
        assert!(can(&ix, &probe, "GET", "/healthz") && can(&ix, &probe, "POST", "/healthz/ping"));
        assert!(!can(&ix, &probe, "GET", "/metrics"));
        // view, edit and admin, aggregated from the system:aggregate-to-* roles (edit includes view).
        let viewer = user("v", &["viewers"]);
        assert!(can(&ix, &viewer, "GET", "/apis/apps/v1/namespaces/dev/deployments"));
        assert!(!can(&ix, &viewer, "POST", "/apis/apps/v1/namespaces/dev/deployments"));
        assert!(!can(&ix, &viewer, "GET", "/api/v1/namespaces/dev/secrets"), "view does not read secrets");
        let ci = user("system:serviceaccount:dev:ci", &[]);
        assert!(can(&ix, &ci, "POST", "/apis/apps/v1/namespaces/dev/deployments"));
        assert!(can(&ix, &ci, "GET", "/apis/apps/v1/namespaces/dev/deployments"), "edit aggregates view");
        assert!(!can(&ix, &ci, "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/dev/roles"), "roles are admin's");
        assert!(!can(&ix, &auth, "GET", "/api/v1/namespaces/default/pods"));
        let root = user("root", &[MASTERS]);
        assert!(can(&ix, &root, "DELETE", "/api/v1/nodes/n") && can(&ix, &root, "GET", "/metrics"));
    }

    #[test]
    fn a_refusal_is_worded_as_kubernetes_words_it() {
        let u = user("x", &[]);
        let e = forbidden(&u, &attributes("GET", "/api/v1/namespaces/y/pods", ""));
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(e.message, "pods is forbidden: User \"x\" cannot list resource \"pods\" in API group \"\" in the namespace \"y\"");
        let e = forbidden(&u, &attributes("DELETE", "/apis/apps/v1/namespaces/y/deployments/d", ""));
        assert_eq!(e.message, "deployments.apps \"d\" is forbidden: User \"x\" cannot delete resource \"deployments\" in API group \"apps\" in the namespace \"y\"");
        let e = forbidden(&u, &attributes("GET", "/api/v1/nodes", ""));
        assert_eq!(e.message, "nodes is forbidden: User \"x\" cannot list resource \"nodes\" in API group \"\" at the cluster scope");
        let e = forbidden(&u, &attributes("GET", "/metrics", ""));
        assert_eq!(e.message, "forbidden: User \"x\" cannot get path \"/metrics\"");
    }
}

/// The four RBAC resources, in `Index::build`'s order.
const RESOURCES: [(&str, &str); 4] = [(GROUP, "clusterroles"), (GROUP, "roles"), (GROUP, "clusterrolebindings"), (GROUP, "rolebindings")];
const GROUP: &str = "rbac.authorization.k8s.io";

/// Keeps `st.rbac` compiled from the RBAC resources' watch caches.
pub(crate) async fn follow(st: Arc<crate::handlers::AppState>) {
    let target = st.clone();
    crate::cached::follow(st, &RESOURCES, move |o| {
        let ix = Index::build(&o[0], &o[1], &o[2], &o[3]);
        tracing::debug!(bindings = ix.bindings, "RBAC index rebuilt");
        target.rbac.set(ix);
    })
    .await
}

/// The authorization middleware: a request its user may not make gets 403 with Kubernetes'
/// message. Requests without a user reached here only on the public paths.
pub async fn authorize<F: std::future::Future<Output = axum::response::Response>>(st: &crate::handlers::AppState, mut req: axum::extract::Request, next: impl FnOnce(axum::extract::Request) -> F) -> axum::response::Response {
    use axum::response::IntoResponse;
    if req.headers().contains_key("impersonate-user") || req.headers().contains_key("impersonate-group") {
        let Some(user) = req.extensions().get::<Arc<UserInfo>>().cloned() else {
            return crate::status::ApiError::unauthorized().into_response();
        };
        match impersonate(&st.rbac.index(), &user, req.headers()) {
            Ok(as_user) => {
                req.extensions_mut().insert(Arc::new(as_user));
            }
            Err(e) => {
                st.metrics.forbidden.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return e.into_response();
            }
        }
    }
    if let Some(user) = req.extensions().get::<Arc<UserInfo>>().cloned()
        && !user.groups.iter().any(|g| g == MASTERS)
        // The dashboard authorizes each thing it shows itself (`dashboard::Viewer`).
        && !crate::dashboard::is_ui(req.uri().path())
    {
        let user = &*user;
        let query = req.uri().query().unwrap_or("").to_string();
        let query = query.as_str();
        let a = attributes(req.method().as_str(), req.uri().path(), query);
        // The Node authorizer first, for kubelets; RBAC for what it has no opinion on.
        let reason = match crate::node_authz::node_of(user) {
            Some(node) => match crate::node_authz::authorize(&st, node, &a, query).await {
                crate::node_authz::Decision::Allow => return next(req).await,
                crate::node_authz::Decision::NoOpinion(r) => r,
            },
            None => String::new(),
        };
        if !st.rbac.index().allows(user, &a) {
            st.metrics.forbidden.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut e = forbidden(user, &a);
            if !reason.is_empty() {
                e.message = format!("{}: {reason}", e.message);
            }
            return e.into_response();
        }
    }
    next(req).await
}

/// Impersonation (`Impersonate-User`, `Impersonate-Group`; `kubectl --as`, `--as-group`):
/// the caller needs the `impersonate` verb on each user and group it asks for (`users`,
/// `groups` in the core group; a ServiceAccount's user name is checked as the
/// `serviceaccounts` of its namespace, as Kubernetes does). The request then runs as that
/// user, in the groups given plus `system:authenticated`.
pub fn impersonate(ix: &Index, user: &UserInfo, headers: &axum::http::HeaderMap) -> Result<UserInfo, crate::status::ApiError> {
    let name = headers.get("impersonate-user").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let groups: Vec<String> = headers.get_all("impersonate-group").iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    if name.is_empty() {
        return Err(crate::status::ApiError::bad_request("Impersonate-Group requires Impersonate-User"));
    }
    let check = |resource: &str, namespace: &str, object: &str| {
        let a = Attributes { verb: "impersonate".into(), target: Target::Resource { group: String::new(), resource: resource.into(), subresource: String::new(), namespace: namespace.into(), name: object.into() } };
        if authorized(ix, user, &a) { Ok(()) } else { Err(forbidden(user, &a)) }
    };
    match name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
        Some((ns, sa)) => check("serviceaccounts", ns, sa)?,
        None => check("users", "", &name)?,
    }
    for g in &groups {
        check("groups", "", g)?;
    }
    let mut groups = groups;
    if name != "system:anonymous" && !groups.iter().any(|g| g == crate::authn::AUTHENTICATED) {
        groups.push(crate::authn::AUTHENTICATED.into());
    }
    Ok(UserInfo::new(name, groups))
}

