//! Which webhooks a request goes to, as Kubernetes matches them: a webhook's rules
//! (operations, API groups, versions, resources with their subresources, scope), then its
//! namespace selector and its object selector. Plain data, no I/O.

use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }

    /// The options kind an AdmissionReview carries for this operation.
    pub fn options_kind(self) -> &'static str {
        match self {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
        }
    }
}

/// What a rule is matched against.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    pub operation: Operation,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    /// "" for the main resource.
    pub subresource: &'a str,
    pub namespaced: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    Any,
    Cluster,
    Namespaced,
}

/// One `RuleWithOperations`.
#[derive(Clone, Debug)]
pub struct Rule {
    operations: Vec<String>,
    groups: Vec<String>,
    versions: Vec<String>,
    resources: Vec<String>,
    scope: Scope,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str()).map(String::from).collect()
}

fn any(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            operations: strings(&v["operations"]),
            groups: strings(&v["apiGroups"]),
            versions: strings(&v["apiVersions"]),
            resources: strings(&v["resources"]),
            scope: match v["scope"].as_str() {
                Some("Cluster") => Scope::Cluster,
                Some("Namespaced") => Scope::Namespaced,
                _ => Scope::Any,
            },
        }
    }

    pub fn matches(&self, a: &Attributes) -> bool {
        any(&self.operations, a.operation.as_str())
            && any(&self.groups, a.group)
            && any(&self.versions, a.version)
            && self.resources.iter().any(|r| resource_matches(r, a.resource, a.subresource))
            && match self.scope {
                Scope::Any => true,
                Scope::Cluster => !a.namespaced,
                Scope::Namespaced => a.namespaced,
            }
    }
}

/// `pods` is the main resource only, `pods/status` one subresource, `pods/*` the resource
/// and all its subresources, `*` every main resource, `*/*` everything, `*/scale` every
/// scale subresource.
fn resource_matches(pattern: &str, resource: &str, subresource: &str) -> bool {
    let (r, s) = pattern.split_once('/').unwrap_or((pattern, ""));
    (r == "*" || r == resource) && (s == "*" || s == subresource)
}

/// A namespace or object selector: absent or empty selects everything.
pub fn selects(selector: &Value, labels: Option<&Value>) -> bool {
    if is_empty(selector) {
        return true;
    }
    match labels {
        Some(l) => api::meta::selector_matches(selector, l),
        None => api::meta::selector_matches(selector, &Value::Object(Default::default())),
    }
}

/// A selector with neither labels nor expressions to match.
pub fn is_empty(selector: &Value) -> bool {
    selector["matchLabels"].as_object().is_none_or(|m| m.is_empty()) && selector["matchExpressions"].as_array().is_none_or(|a| a.is_empty())
}

/// The objects no webhook is called for (Kubernetes exempts them so that a broken webhook
/// can always be removed).
pub fn exempt(group: &str, resource: &str) -> bool {
    group == "admissionregistration.k8s.io"
        && matches!(
            resource,
            "validatingwebhookconfigurations" | "mutatingwebhookconfigurations" | "validatingadmissionpolicies" | "validatingadmissionpolicybindings" | "mutatingadmissionpolicies" | "mutatingadmissionpolicybindings"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(op: Operation, group: &'static str, resource: &'static str, sub: &'static str, namespaced: bool) -> Attributes<'static> {
        Attributes { operation: op, group, version: "v1", resource, subresource: sub, namespaced }
    }

    #[test]
    fn rules_match_as_kubernetes_matches_them() {
        use Operation::*;
        let pod = attrs(Create, "", "pods", "", true);
        let pod_status = attrs(Update, "", "pods", "status", true);
        let deploy_scale = attrs(Update, "apps", "deployments", "scale", true);
        let node = attrs(Create, "", "nodes", "", false);
        let cases: &[(Value, Attributes, bool)] = &[
            (json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}), pod, true),
            (json!({"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}), pod, false),
            (json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}), pod, true),
            (json!({"operations": ["*"], "apiGroups": ["apps"], "apiVersions": ["*"], "resources": ["*"]}), pod, false),
            (json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["v2"], "resources": ["*"]}), pod, false),
            // "pods" and "*" are main resources only; "pods/*" and "*/*" take subresources.
            (json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["*"], "resources": ["pods"]}), pod_status, false),
            (json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["*"], "resources": ["*"]}), pod_status, false),
            (json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["*"], "resources": ["pods/status"]}), pod_status, true),
            (json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["*"], "resources": ["pods/*"]}), pod_status, true),
            (json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["*"], "resources": ["pods/*"]}), pod, true),
            (json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"]}), deploy_scale, true),
            (json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/scale"]}), deploy_scale, true),
            (json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/scale"]}), pod_status, false),
            // Scope.
            (json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Namespaced"}), node, false),
            (json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}), node, true),
            (json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}), pod, false),
            // A rule missing a list matches nothing.
            (json!({"operations": ["*"], "apiGroups": ["*"], "resources": ["*"]}), pod, false),
        ];
        for (rule, a, want) in cases {
            assert_eq!(Rule::from_json(rule).matches(a), *want, "{rule} against {a:?}");
        }
    }

    #[test]
    fn selectors_select_everything_when_empty() {
        let l = json!({"env": "prod"});
        assert!(selects(&Value::Null, Some(&l)));
        assert!(selects(&json!({}), None));
        assert!(selects(&json!({"matchLabels": {}, "matchExpressions": []}), Some(&l)));
        assert!(selects(&json!({"matchLabels": {"env": "prod"}}), Some(&l)));
        assert!(!selects(&json!({"matchLabels": {"env": "dev"}}), Some(&l)));
        assert!(!selects(&json!({"matchLabels": {"env": "prod"}}), None), "no labels: a selector that asks for one fails");
        assert!(selects(&json!({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}), None));
    }

    #[test]
    fn the_configuration_resources_are_exempt() {
        assert!(exempt("admissionregistration.k8s.io", "validatingwebhookconfigurations"));
        assert!(exempt("admissionregistration.k8s.io", "mutatingwebhookconfigurations"));
        assert!(!exempt("", "pods"));
    }
}
