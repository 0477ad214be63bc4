//! RBAC's escalation checks, as Kubernetes makes them: a user may create or update a Role or
//! ClusterRole only with permissions it holds itself (or with the `escalate` verb on it), and
//! a RoleBinding or ClusterRoleBinding only to a role whose permissions it holds (or with the
//! `bind` verb on that role). Otherwise RBAC could be used to grant oneself anything.
//! `system:masters` holds everything.

use serde_json::Value;

use crate::authn::UserInfo;
use crate::handlers::AppState;
use crate::rbac::{Attributes, Index, MASTERS, Target};
use crate::status::ApiError;

const GROUP: &str = "rbac.authorization.k8s.io";

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The rules of `rules` that `user` does not hold in `namespace` ("" for cluster-wide),
/// each written as Kubernetes writes them in the refusal.
pub fn not_held(ix: &Index, user: &UserInfo, namespace: &str, rules: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    for rule in rules.as_array().into_iter().flatten() {
        let verbs = strings(&rule["verbs"]);
        let urls = strings(&rule["nonResourceURLs"]);
        if !urls.is_empty() {
            for url in &urls {
                for verb in &verbs {
                    let a = Attributes { verb: verb.clone(), target: Target::NonResource { path: url.clone() } };
                    if !ix.allows(user, &a) {
                        missing.push(format!("{{NonResourceURLs:[{url:?}], Verbs:[{verb:?}]}}"));
                    }
                }
            }
            continue;
        }
        let groups = strings(&rule["apiGroups"]);
        let resources = strings(&rule["resources"]);
        let names = strings(&rule["resourceNames"]);
        let names: Vec<String> = if names.is_empty() { vec![String::new()] } else { names };
        for group in &groups {
            for res in &resources {
                let (resource, subresource) = res.split_once('/').unwrap_or((res.as_str(), ""));
                for name in &names {
                    for verb in &verbs {
                        let target = Target::Resource { group: group.clone(), resource: resource.to_string(), subresource: subresource.to_string(), namespace: namespace.to_string(), name: name.clone() };
                        if !ix.allows(user, &Attributes { verb: verb.clone(), target }) {
                            let names = if name.is_empty() { String::new() } else { format!(", ResourceNames:[{name:?}]") };
                            missing.push(format!("{{APIGroups:[{group:?}], Resources:[{res:?}]{names}, Verbs:[{verb:?}]}}"));
                        }
                    }
                }
            }
        }
    }
    missing
}

fn refusal(resource: &str, name: &str, user: &UserInfo, missing: &[String]) -> ApiError {
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    ApiError::forbidden(format!(
        "{resource}.{GROUP} {name:?} is forbidden: user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        groups.join(" "),
        missing.join("\n")
    ))
}

/// Checks a Role, ClusterRole, RoleBinding or ClusterRoleBinding `obj` that `user` writes in
/// `namespace` ("" for the cluster-scoped kinds).
pub async fn check(st: &AppState, user: &UserInfo, resource: &str, namespace: &str, obj: &Value) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let ix = st.rbac.index();
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let has = |verb: &str, res: &str, res_name: &str| {
        let target = Target::Resource { group: GROUP.into(), resource: res.into(), subresource: String::new(), namespace: namespace.into(), name: res_name.into() };
        ix.allows(user, &Attributes { verb: verb.into(), target })
    };
    match resource {
        "roles" | "clusterroles" => {
            if has("escalate", resource, name) {
                return Ok(());
            }
            let missing = not_held(&ix, user, namespace, &obj["rules"]);
            if missing.is_empty() { Ok(()) } else { Err(refusal(resource, name, user, &missing)) }
        }
        "rolebindings" | "clusterrolebindings" => {
            let kind = obj["roleRef"]["kind"].as_str().unwrap_or("");
            let role = obj["roleRef"]["name"].as_str().unwrap_or("");
            let (role_resource, role_ns) = match kind {
                "ClusterRole" => ("clusterroles", None),
                "Role" if resource == "rolebindings" => ("roles", Some(namespace)),
                _ => return Err(ApiError::bad_request(format!("roleRef.kind {kind:?} is not ClusterRole{}", if resource == "rolebindings" { " or Role" } else { "" }))),
            };
            if has("bind", role_resource, role) {
                return Ok(());
            }
            // A binding to a role that does not exist grants nothing yet: Kubernetes
            // refuses it unless the user may bind it, since the role may appear later.
            let rules = match st.read_object(GROUP, role_resource, role_ns, role).await? {
                Some(r) => r["rules"].clone(),
                None => return Err(refusal(resource, name, user, &[format!("the {kind} {role:?} does not exist, and binding it needs the bind verb on it")])),
            };
            let missing = not_held(&ix, user, namespace, &rules);
            if missing.is_empty() { Ok(()) } else { Err(refusal(resource, name, user, &missing)) }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index() -> Index {
        let cr = json!([{"metadata": {"name": "reader"}, "rules": [{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list"]}]},
                        {"metadata": {"name": "one"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"], "verbs": ["get"]}]}]);
        let crb = json!([]);
        let rb = json!([
            {"metadata": {"name": "b", "namespace": "dev"}, "roleRef": {"kind": "ClusterRole", "name": "reader"}, "subjects": [{"kind": "User", "name": "bob"}]},
            {"metadata": {"name": "c", "namespace": "dev"}, "roleRef": {"kind": "ClusterRole", "name": "one"}, "subjects": [{"kind": "User", "name": "bob"}]},
        ]);
        Index::build(cr.as_array().unwrap(), &[], crb.as_array().unwrap(), rb.as_array().unwrap())
    }

    #[test]
    fn a_user_may_grant_only_what_it_holds_where_it_holds_it() {
        let ix = index();
        let bob = UserInfo::new("bob", vec!["system:authenticated".into()]);
        let held = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]);
        assert!(not_held(&ix, &bob, "dev", &held).is_empty());
        assert_eq!(not_held(&ix, &bob, "prod", &held), vec!["{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"get\"]}"]);
        let more = json!([{"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["get", "delete"]}]);
        assert_eq!(not_held(&ix, &bob, "dev", &more).len(), 3, "pods/delete, secrets/get, secrets/delete");
        // resourceNames: s1 is held, every secret is not.
        assert!(not_held(&ix, &bob, "dev", &json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"], "verbs": ["get"]}])).is_empty());
        assert_eq!(not_held(&ix, &bob, "dev", &json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])).len(), 1);
        // A wildcard is held only by a wildcard.
        assert_eq!(not_held(&ix, &bob, "dev", &json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}])).len(), 1);
        assert_eq!(not_held(&ix, &bob, "dev", &json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])).len(), 1);
    }
}
