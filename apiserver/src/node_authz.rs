//! The Node authorizer and the NodeRestriction admission checks, as Kubernetes has them: a
//! kubelet (user `system:node:NAME` in group `system:nodes`) may do what running its own node
//! needs and nothing to another node.
//!
//! The authorizer (`authorize`) is asked before RBAC and answers Allow or NoOpinion (then RBAC
//! decides; Kubernetes binds no role to `system:nodes` by default, so that usually means 403,
//! with the authorizer's reason in the message). What it allows, for node N:
//! - nodes: read any; update, patch, delete and `nodes/status` only N; create (its name is
//!   checked by `admit`, from the body);
//! - pods: list and watch only with `fieldSelector=spec.nodeName=N` (Kubernetes 1.32's
//!   AuthorizeNodeWithSelectors); get, delete, `pods/status` and `pods/eviction` only of pods
//!   bound to N; create only mirror pods bound to N (`admit`);
//! - secrets, configmaps and persistentvolumeclaims: get (and a list or watch of one by
//!   `metadata.name`) only of those a pod bound to N uses; `serviceaccounts/token` only for a
//!   ServiceAccount a pod bound to N runs as, bound to that pod (`admit`);
//! - persistentvolumes: get of those bound to a claim a pod bound to N uses, or whose node
//!   affinity names N (its local volumes);
//! - leases in `kube-node-lease`: only the one named N;
//! - reads of services, endpoints and endpointslices; writes of events; TokenReview,
//!   SubjectAccessReview, CertificateSigningRequests and RuntimeClass reads.
//!
//! Which objects a pod "uses" is read from the pods' watch cache when asked (the pods bound
//! to N, then their volumes, env and envFrom references, image pull secrets and
//! ServiceAccount), not kept as a graph: it costs a scan of the cached pods per check, paid
//! only by kubelets' reads of secrets, configmaps and claims, which happen at pod start.

use serde_json::Value;

use crate::authn::UserInfo;
use crate::handlers::AppState;
use crate::rbac::{Attributes, Target};
use crate::status::ApiError;

/// The group every kubelet's user is in.
pub const NODES_GROUP: &str = "system:nodes";
/// A kubelet's user is this and its node's name.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The node a user is the kubelet of, if it is one.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

/// The Node authorizer's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Left to RBAC; the reason is added to a refusal's message.
    NoOpinion(String),
}

fn no(reason: impl Into<String>) -> Decision {
    Decision::NoOpinion(reason.into())
}

/// A field selector's required value of `field` (`a=b,c==d`), if it has one.
fn selected(query: &str, field: &str) -> Option<String> {
    let (_, v) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "fieldSelector")?;
    v.split(',').find_map(|term| {
        let (k, val) = term.split_once("==").or_else(|| term.split_once('='))?;
        (k.trim() == field && !k.ends_with('!')).then(|| val.trim().to_string())
    })
}

/// The pods bound to `node` (from the pods' watch cache).
async fn pods_on(st: &AppState, node: &str) -> Result<Vec<Value>, String> {
    let info = st.reg.find("", "v1", "pods").ok_or("pods are not served")?;
    let cache = st.caches.get(&st.store, &info).await.map_err(|e| e.message)?;
    let (_, snap) = cache.snapshot();
    Ok(snap.values().filter(|o| o.meta.node_name.as_deref() == Some(node)).filter_map(|o| serde_json::from_slice(&o.json()).ok()).collect())
}

/// Whether `pod` uses the object `resource/name` (in its namespace).
pub fn uses(pod: &Value, resource: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |v: &Value| v.as_str() == Some(name);
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match resource {
        "serviceaccounts" => spec["serviceAccountName"].as_str().unwrap_or("default") == name,
        "persistentvolumeclaims" => list(&spec["volumes"]).iter().any(|v| is(&v["persistentVolumeClaim"]["claimName"]) || (v["ephemeral"].is_object() && format!("{}-{}", pod["metadata"]["name"].as_str().unwrap_or(""), v["name"].as_str().unwrap_or("")) == name)),
        "secrets" | "configmaps" => {
            let (vol, vol_field, proj, env_ref, from_ref) = if resource == "secrets" {
                ("secret", "secretName", "secret", "secretKeyRef", "secretRef")
            } else {
                ("configMap", "name", "configMap", "configMapKeyRef", "configMapRef")
            };
            if resource == "secrets" && list(&spec["imagePullSecrets"]).iter().any(|s| is(&s["name"])) {
                return true;
            }
            for v in list(&spec["volumes"]) {
                if is(&v[vol][vol_field]) || list(&v["projected"]["sources"]).iter().any(|s| is(&s[proj]["name"])) {
                    return true;
                }
                // Volumes whose drivers read a secret (CSI, CephFS, ...).
                if resource == "secrets" && v.as_object().is_some_and(|o| o.values().any(|d| is(&d["secretRef"]["name"]) || is(&d["nodePublishSecretRef"]["name"]))) {
                    return true;
                }
            }
            for kind in ["containers", "initContainers", "ephemeralContainers"] {
                for c in list(&spec[kind]) {
                    if list(&c["env"]).iter().any(|e| is(&e["valueFrom"][env_ref]["name"])) || list(&c["envFrom"]).iter().any(|e| is(&e[from_ref]["name"])) {
                        return true;
                    }
                }
            }
            false
        }
        _ => false,
    }
}

/// The Node authorizer's decision on a request of kubelet `node`.
pub async fn authorize(st: &AppState, node: &str, a: &Attributes, query: &str) -> Decision {
    let Target::Resource { group, resource, subresource, namespace, name } = &a.target else {
        return no("");
    };
    let verb = a.verb.as_str();
    let read = matches!(verb, "get" | "list" | "watch");
    let reason_other = || format!("node '{node}' cannot {verb} {resource} of another node");
    match (group.as_str(), resource.as_str(), subresource.as_str()) {
        ("", "nodes", "") => match verb {
            "get" | "list" | "watch" | "create" => Decision::Allow,
            "update" | "patch" | "delete" if name == node => Decision::Allow,
            _ => no(format!("node '{node}' cannot modify node '{name}'")),
        },
        ("", "nodes", "status") if matches!(verb, "update" | "patch") => {
            if name == node { Decision::Allow } else { no(format!("node '{node}' cannot modify node '{name}'")) }
        }
        ("", "pods", "") if matches!(verb, "list" | "watch") => match selected(query, "spec.nodeName") {
            Some(n) if n == node => Decision::Allow,
            _ => no(format!("can only list/watch pods with spec.nodeName field selector (node '{node}')")),
        },
        ("", "pods", "") if verb == "create" => Decision::Allow,
        ("", "pods", "" | "status" | "eviction") if matches!((verb, subresource.as_str()), ("get" | "delete", "") | ("update" | "patch", "status") | ("create", "eviction")) => {
            match st.pod_node(namespace, name).await {
                Ok(Some(Some(n))) if &*n == node => Decision::Allow,
                Ok(Some(_)) => no(reason_other()),
                // A pod that does not exist: let the request say so (404), as Kubernetes does
                // for a delete of one; a get of one is not the node's to see.
                Ok(None) if verb == "delete" => Decision::Allow,
                Ok(None) => no(format!("no relationship found between node '{node}' and this object")),
                Err(e) => no(e.message),
            }
        }
        ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") if read => {
            let name = if name.is_empty() { selected(query, "metadata.name").unwrap_or_default() } else { name.clone() };
            if name.is_empty() {
                return no(format!("can only {verb} individual {resource} of pods bound to node '{node}'"));
            }
            related(st, node, namespace, resource, &name).await
        }
        ("", "persistentvolumes", "") if verb == "get" && !name.is_empty() => volume_related(st, node, name).await,
        ("", "serviceaccounts", "token") if verb == "create" => related(st, node, namespace, "serviceaccounts", name).await,
        ("", "services" | "endpoints", "") | ("discovery.k8s.io", "endpointslices", "") | ("node.k8s.io", "runtimeclasses", "") if read => Decision::Allow,
        ("", "events", "") | ("events.k8s.io", "events", "") if matches!(verb, "create" | "update" | "patch") => Decision::Allow,
        ("coordination.k8s.io", "leases", "") if namespace == "kube-node-lease" => match verb {
            "create" => Decision::Allow,
            _ if name == node => Decision::Allow,
            _ => no(format!("can only access node lease with the same name as the requesting node '{node}'")),
        },
        ("authentication.k8s.io", "tokenreviews", "") | ("authorization.k8s.io", "subjectaccessreviews" | "localsubjectaccessreviews", "") if verb == "create" => Decision::Allow,
        ("certificates.k8s.io", "certificatesigningrequests", "") if matches!(verb, "create" | "get" | "list" | "watch") => Decision::Allow,
        _ => no(""),
    }
}

/// A volume is the node's to read when a claim a pod bound to it uses is bound to it, or
/// when its node affinity names the node (its local-path volumes, whose directories the
/// node removes once they are deleted; capstan's addition). One that does not exist: the
/// request says so (404).
async fn volume_related(st: &AppState, node: &str, name: &str) -> Decision {
    let pv = match st.store.get(format!("/registry/core/persistentvolumes/{name}")).await {
        Ok(None) => return Decision::Allow,
        Ok(Some(kv)) => match crate::object::Stored::from_kv(&kv).and_then(|s| s.value_at(kv.mod_revision)) {
            Ok(v) => v,
            Err(e) => return no(e),
        },
        Err(e) => return no(e.to_string()),
    };
    let on_node = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"].as_array().into_iter().flatten().any(|t| {
        t["matchExpressions"].as_array().into_iter().flatten().any(|e| e["key"] == "kubernetes.io/hostname" && e["operator"] == "In" && e["values"].as_array().is_some_and(|v| v.iter().any(|x| x == node)))
    });
    if on_node {
        return Decision::Allow;
    }
    let r = &pv["spec"]["claimRef"];
    match (r["namespace"].as_str(), r["name"].as_str()) {
        (Some(ns), Some(claim)) => related(st, node, ns, "persistentvolumeclaims", claim).await,
        _ => no(format!("no relationship found between node '{node}' and this object")),
    }
}

async fn related(st: &AppState, node: &str, namespace: &str, resource: &str, name: &str) -> Decision {
    match pods_on(st, node).await {
        Ok(pods) if pods.iter().any(|p| p["metadata"]["namespace"].as_str() == Some(namespace) && uses(p, resource, name)) => Decision::Allow,
        Ok(_) => no(format!("no relationship found between node '{node}' and this object")),
        Err(e) => no(e),
    }
}

/// NodeRestriction: what a kubelet may write, judged from the object it sends. `existing` is
/// the stored object on an update.
pub fn admit(node: &str, resource: &str, subresource: &str, obj: &Value, existing: Option<&Value>) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    match (resource, subresource) {
        ("nodes", _) => {
            if name != node {
                return Err(ApiError::forbidden(format!("node \"{node}\" is not allowed to modify node \"{name}\"")));
            }
            // Labels under node-restriction.kubernetes.io/ are the administrator's.
            let restricted = |v: Option<&Value>| -> Vec<(String, String)> {
                v.and_then(|o| o["metadata"]["labels"].as_object())
                    .map(|m| m.iter().filter(|(k, _)| k.split('/').next().is_some_and(|p| p == "node-restriction.kubernetes.io" || p.ends_with(".node-restriction.kubernetes.io"))).map(|(k, v)| (k.clone(), v.to_string())).collect())
                    .unwrap_or_default()
            };
            let (new, old) = (restricted(Some(obj)), restricted(existing));
            if new != old {
                let keys: Vec<String> = new.iter().chain(old.iter()).map(|(k, _)| k.clone()).collect();
                return Err(ApiError::forbidden(format!("is not allowed to modify labels: {}", keys.join(", "))));
            }
            Ok(())
        }
        ("pods", "") if existing.is_none() => {
            if obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
                return Err(ApiError::forbidden(format!("pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods")));
            }
            if obj["spec"]["nodeName"].as_str() != Some(node) {
                return Err(ApiError::forbidden(format!("node \"{node}\" can only create pods with spec.nodeName set to itself")));
            }
            for (r, what) in [("secrets", "secrets"), ("configmaps", "configmaps"), ("persistentvolumeclaims", "persistentvolumeclaims")] {
                let refs = obj["spec"]["volumes"].as_array().is_some_and(|v| !v.is_empty()) || obj["spec"]["imagePullSecrets"].as_array().is_some_and(|v| !v.is_empty());
                if refs && (uses_any(obj, r)) {
                    return Err(ApiError::forbidden(format!("node \"{node}\" can not create pods that reference {what}")));
                }
            }
            Ok(())
        }
        ("leases", _) => {
            if name != node {
                return Err(ApiError::forbidden(format!("can only access node lease with the same name as the requesting node \"{node}\"")));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether a pod references any object of `resource` through its volumes or pull secrets.
fn uses_any(pod: &Value, resource: &str) -> bool {
    let vols = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    match resource {
        "secrets" => !pod["spec"]["imagePullSecrets"].as_array().is_none_or(|a| a.is_empty()) || vols.iter().any(|v| v["secret"].is_object()),
        "configmaps" => vols.iter().any(|v| v["configMap"].is_object()),
        "persistentvolumeclaims" => vols.iter().any(|v| v["persistentVolumeClaim"].is_object()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_system_node_user_in_system_nodes_is_a_node() {
        assert_eq!(node_of(&UserInfo::new("system:node:n1", vec![NODES_GROUP.into()])), Some("n1"));
        assert_eq!(node_of(&UserInfo::new("system:node:n1", vec![])), None);
        assert_eq!(node_of(&UserInfo::new("n1", vec![NODES_GROUP.into()])), None);
        assert_eq!(node_of(&UserInfo::new("system:node:", vec![NODES_GROUP.into()])), None);
    }

    #[test]
    fn a_pod_uses_what_its_volumes_env_and_pull_secrets_name() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "sa",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "v", "secret": {"secretName": "vol"}}, {"name": "c", "configMap": {"name": "cm"}},
                        {"name": "pr", "projected": {"sources": [{"secret": {"name": "proj"}}, {"configMap": {"name": "pcm"}}]}},
                        {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
            "containers": [{"name": "a", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}], "envFrom": [{"configMapRef": {"name": "efcm"}}]}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init"}}]}],
        }});
        for s in ["pull", "vol", "proj", "env", "init"] {
            assert!(uses(&pod, "secrets", s), "{s}");
        }
        for c in ["cm", "pcm", "efcm"] {
            assert!(uses(&pod, "configmaps", c), "{c}");
        }
        assert!(uses(&pod, "persistentvolumeclaims", "data") && uses(&pod, "serviceaccounts", "sa"));
        assert!(!uses(&pod, "secrets", "cm") && !uses(&pod, "configmaps", "vol") && !uses(&pod, "secrets", "other"));
    }

    #[test]
    fn field_selectors_are_read_as_kubernetes_writes_them() {
        assert_eq!(selected("fieldSelector=spec.nodeName%3Dn1", "spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(selected("limit=5&fieldSelector=metadata.name%3D%3Ds,spec.x=y", "metadata.name").as_deref(), Some("s"));
        assert_eq!(selected("fieldSelector=spec.nodeName!%3Dn1", "spec.nodeName"), None);
        assert_eq!(selected("labelSelector=a", "spec.nodeName"), None);
    }

    #[test]
    fn node_restriction_keeps_a_node_to_itself() {
        let node = |name: &str, labels: Value| json!({"metadata": {"name": name, "labels": labels}});
        assert!(admit("n1", "nodes", "", &node("n1", json!({"a": "b"})), None).is_ok());
        assert!(admit("n1", "nodes", "", &node("n2", json!({})), None).unwrap_err().message.contains("not allowed to modify node \"n2\""));
        let e = admit("n1", "nodes", "", &node("n1", json!({"node-restriction.kubernetes.io/pool": "x"})), Some(&node("n1", json!({})))).unwrap_err();
        assert!(e.message.contains("node-restriction.kubernetes.io/pool"), "{}", e.message);
        let mirror = json!({"metadata": {"name": "m", "annotations": {"kubernetes.io/config.mirror": "h"}}, "spec": {"nodeName": "n1"}});
        assert!(admit("n1", "pods", "", &mirror, None).is_ok());
        let mut elsewhere = mirror.clone();
        elsewhere["spec"]["nodeName"] = json!("n2");
        assert!(admit("n1", "pods", "", &elsewhere, None).is_err());
        assert!(admit("n1", "pods", "", &json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}}), None).unwrap_err().message.contains("can only create mirror pods"));
        let mut with_secret = mirror.clone();
        with_secret["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "x"}}]);
        assert!(admit("n1", "pods", "", &with_secret, None).unwrap_err().message.contains("reference secrets"));
        assert!(admit("n1", "leases", "", &json!({"metadata": {"name": "n2"}}), None).is_err());
    }
}
