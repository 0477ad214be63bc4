//! ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding (admissionregistration.k8s.io
//! /v1): validation written in CEL, as Kubernetes' in-process admission policies. A binding
//! puts a policy to work (on the resources both match, with its parameters and its
//! actions: Deny, Warn); the policy's match conditions, variables and validations are CEL
//! expressions (the `cel` crate, with the strings and lists extensions Kubernetes' CEL
//! environment also has), compiled once per revision of the policy (`compile`, kept current
//! by `follow`). `evaluate` is the pure part: one binding over one request, given its
//! parameter object; the handler (`handlers/webhooks.rs`) finds the parameters and turns
//! violations into answers.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use serde_json::Value;

use crate::webhook::rules::{self, Attributes, Rule};

pub const GROUP: &str = crate::webhook::GROUP;

/// Kubernetes' CEL environment, as far as the `cel` crate has it: the standard library
/// (with `matches` for regular expressions) and the strings and lists extensions.
fn env() -> &'static Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut e = cel::Env::stdlib();
        let _ = e.add_extension(cel::extensions::strings);
        let _ = e.add_extension(cel::extensions::lists);
        Arc::new(e)
    })
}

/// One CEL expression, compiled (or why it could not be).
pub struct Expr {
    pub source: String,
    program: Result<cel::Program, String>,
}

impl Expr {
    pub fn compile(source: &str) -> Expr {
        Expr { source: source.to_string(), program: env().compile(source).map_err(|e| format!("compilation failed: {e}")) }
    }

    fn eval(&self, ctx: &cel::Context) -> Result<cel::Value, String> {
        let p = self.program.as_ref().map_err(|e| e.clone())?;
        p.execute(ctx).map_err(|e| format!("expression '{}' resulted in error: {e}", self.source))
    }

    fn eval_bool(&self, ctx: &cel::Context) -> Result<bool, String> {
        match self.eval(ctx)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!("expression '{}' resulted in a {:?}, not a bool", self.source, other.type_of())),
        }
    }
}

/// JSON as CEL values: integers that fit are `int` (Kubernetes' schemas say integer), the
/// rest as they are.
pub fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => cel::Value::from(s.as_str()),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => cel::Value::from(m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect::<HashMap<String, cel::Value>>()),
    }
}

/// Which requests a policy (its `matchConstraints`) or a binding (its `matchResources`) takes.
pub struct Matcher {
    rules: Vec<(Rule, Vec<String>)>,
    exclude: Vec<(Rule, Vec<String>)>,
    namespace_selector: Value,
    object_selector: Value,
    /// A binding's matchResources without resource rules takes what its policy takes.
    all_if_no_rules: bool,
}

fn named_rules(v: &Value) -> Vec<(Rule, Vec<String>)> {
    v.as_array().into_iter().flatten().map(|r| (Rule::from_json(r), r["resourceNames"].as_array().into_iter().flatten().filter_map(|n| n.as_str()).map(String::from).collect())).collect()
}

fn rule_hit(rules: &[(Rule, Vec<String>)], a: &Attributes, name: &str) -> bool {
    rules.iter().any(|(r, names)| r.matches(a) && (names.is_empty() || names.iter().any(|n| n == name)))
}

impl Matcher {
    fn from_json(m: &Value, all_if_no_rules: bool) -> Matcher {
        Matcher {
            rules: named_rules(&m["resourceRules"]),
            exclude: named_rules(&m["excludeResourceRules"]),
            namespace_selector: m["namespaceSelector"].clone(),
            object_selector: m["objectSelector"].clone(),
            all_if_no_rules,
        }
    }

    /// `namespace_labels`: the labels of the request's namespace (of the object itself for
    /// a Namespace), None for other cluster-scoped objects (never excluded by a namespace
    /// selector).
    pub fn matches(&self, r: &Request, namespace_labels: Option<Option<&Value>>) -> bool {
        let name = r.name;
        let hit = (self.all_if_no_rules && self.rules.is_empty()) || rule_hit(&self.rules, &r.attrs, name);
        if !hit || rule_hit(&self.exclude, &r.attrs, name) {
            return false;
        }
        if let Some(labels) = namespace_labels
            && !rules::selects(&self.namespace_selector, labels)
        {
            return false;
        }
        rules::is_empty(&self.object_selector) || [r.object, r.old].into_iter().flatten().any(|o| rules::selects(&self.object_selector, o["metadata"].get("labels")))
    }

    pub fn has_namespace_selector(&self) -> bool {
        !rules::is_empty(&self.namespace_selector)
    }
}

struct Validation {
    expr: Expr,
    message: Option<String>,
    message_expr: Option<Expr>,
    reason: &'static str,
}

/// A policy, compiled.
pub struct Policy {
    pub name: String,
    pub fail_closed: bool,
    pub matcher: Matcher,
    /// `paramKind` (apiVersion, kind), when the policy takes parameters.
    pub param_kind: Option<(String, String)>,
    match_conditions: Vec<(String, Expr)>,
    variables: Vec<(String, Expr)>,
    validations: Vec<Validation>,
}

/// Where a binding's parameters are.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamRef {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub selector: Option<Value>,
    /// `parameterNotFoundAction: Deny` (the default).
    pub deny_if_missing: bool,
}

/// A binding, with its policy.
pub struct Binding {
    pub name: String,
    pub policy: Arc<Policy>,
    pub matcher: Option<Matcher>,
    pub deny: bool,
    pub warn: bool,
    pub param_ref: Option<ParamRef>,
}

impl Binding {
    pub fn has_namespace_selector(&self) -> bool {
        self.policy.matcher.has_namespace_selector() || self.matcher.as_ref().is_some_and(|m| m.has_namespace_selector())
    }

    pub fn matches(&self, r: &Request, namespace_labels: Option<Option<&Value>>) -> bool {
        self.policy.matcher.matches(r, namespace_labels) && self.matcher.as_ref().is_none_or(|m| m.matches(r, namespace_labels))
    }
}

const REASONS: &[(&str, u16)] = &[("Unauthorized", 401), ("Forbidden", 403), ("Invalid", 422), ("RequestEntityTooLarge", 413)];

/// A list of `{name, expression}` (match conditions, variables), compiled.
pub fn named(list: &Value) -> Vec<(String, Expr)> {
    list.as_array().into_iter().flatten().map(|c| (c["name"].as_str().unwrap_or("").to_string(), Expr::compile(c["expression"].as_str().unwrap_or("")))).collect()
}

/// Kubernetes' match conditions (of a policy or a webhook) over a request's CEL context:
/// any condition false excludes the request, even if others failed; otherwise a condition
/// that could not be evaluated is an error (the failurePolicy decides); otherwise it matches.
pub fn match_conditions(conditions: &[(String, Expr)], ctx: &cel::Context) -> Result<bool, String> {
    let mut errors = Vec::new();
    for (name, c) in conditions {
        match c.eval_bool(ctx) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => errors.push(format!("matchCondition '{name}': {e}")),
        }
    }
    if errors.is_empty() { Ok(true) } else { Err(errors.join(", ")) }
}

/// The CEL variables every admission expression sees: `request`, `object`, `oldObject`.
pub fn request_context(r: &Request) -> cel::Context<'static, 'static> {
    let mut ctx = cel::Context::with_env(env().clone());
    let a = &r.attrs;
    let user = r.user.map(|u| serde_json::json!({"username": u.name, "uid": u.uid, "groups": u.groups, "extra": u.extra})).unwrap_or(serde_json::json!({"username": "system:anonymous"}));
    let request = serde_json::json!({
        "kind": {"group": a.group, "version": a.version, "kind": r.kind},
        "resource": {"group": a.group, "version": a.version, "resource": a.resource},
        "subResource": a.subresource,
        "name": r.name,
        "namespace": r.namespace.unwrap_or(""),
        "operation": a.operation.as_str(),
        "userInfo": user,
        "dryRun": r.dry_run,
    });
    ctx.add_variable_from_value("request", to_cel(&request));
    ctx.add_variable_from_value("object", r.object.map_or(cel::Value::Null, to_cel));
    ctx.add_variable_from_value("oldObject", r.old.map_or(cel::Value::Null, to_cel));
    ctx
}

fn compile_policy(p: &Value) -> Policy {
    let spec = &p["spec"];
    Policy {
        name: p["metadata"]["name"].as_str().unwrap_or("").to_string(),
        fail_closed: spec["failurePolicy"].as_str() != Some("Ignore"),
        matcher: Matcher::from_json(&spec["matchConstraints"], false),
        param_kind: spec["paramKind"]["kind"].as_str().map(|k| (spec["paramKind"]["apiVersion"].as_str().unwrap_or("").to_string(), k.to_string())),
        match_conditions: named(&spec["matchConditions"]),
        variables: named(&spec["variables"]),
        validations: spec["validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| Validation {
                expr: Expr::compile(v["expression"].as_str().unwrap_or("")),
                message: v["message"].as_str().filter(|m| !m.is_empty()).map(String::from),
                message_expr: v["messageExpression"].as_str().filter(|m| !m.is_empty()).map(Expr::compile),
                reason: REASONS.iter().find(|(r, _)| Some(*r) == v["reason"].as_str()).map_or("Invalid", |(r, _)| r),
            })
            .collect(),
    }
}

/// Compiles the policies and bindings (objects as JSON): a binding whose policy does not
/// exist does nothing, as in Kubernetes.
pub fn compile(policies: &[Value], bindings: &[Value]) -> Vec<Binding> {
    let compiled: HashMap<&str, Arc<Policy>> = policies.iter().filter_map(|p| Some((p["metadata"]["name"].as_str()?, Arc::new(compile_policy(p))))).collect();
    let mut sorted: Vec<&Value> = bindings.iter().collect();
    sorted.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    sorted
        .into_iter()
        .filter_map(|b| {
            let spec = &b["spec"];
            let policy = compiled.get(spec["policyName"].as_str()?)?.clone();
            let actions: Vec<&str> = spec["validationActions"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
            let pr = &spec["paramRef"];
            Some(Binding {
                name: b["metadata"]["name"].as_str().unwrap_or("").to_string(),
                policy,
                matcher: spec.get("matchResources").filter(|m| m.is_object()).map(|m| Matcher::from_json(m, true)),
                deny: actions.contains(&"Deny"),
                warn: actions.contains(&"Warn"),
                param_ref: pr.is_object().then(|| ParamRef {
                    name: pr["name"].as_str().filter(|n| !n.is_empty()).map(String::from),
                    namespace: pr["namespace"].as_str().filter(|n| !n.is_empty()).map(String::from),
                    selector: pr.get("selector").filter(|s| s.is_object()).cloned(),
                    deny_if_missing: pr["parameterNotFoundAction"].as_str() != Some("Allow"),
                }),
            })
        })
        .collect()
}

/// What a policy sees of the request (CEL's `request`, `object`, `oldObject`).
pub struct Request<'a> {
    pub attrs: Attributes<'a>,
    pub kind: &'a str,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub user: Option<&'a crate::authn::UserInfo>,
    pub dry_run: bool,
    pub object: Option<&'a Value>,
    pub old: Option<&'a Value>,
}

/// A validation that failed: its message and reason (with the code it answers).
#[derive(Debug, PartialEq)]
pub struct Violation {
    pub message: String,
    pub reason: &'static str,
    pub code: u16,
}

/// One binding over one request, with one parameter object (or none). `Ok(None)`: the
/// match conditions exclude it. `Err`: an expression could not be evaluated (its policy's
/// failurePolicy decides).
pub fn evaluate(b: &Binding, r: &Request, params: Option<&Value>, namespace_object: Option<&Value>) -> Result<Option<Vec<Violation>>, String> {
    let p = &b.policy;
    let mut ctx = request_context(r);
    ctx.add_variable_from_value("params", params.map_or(cel::Value::Null, to_cel));
    ctx.add_variable_from_value("namespaceObject", namespace_object.map_or(cel::Value::Null, to_cel));
    if !match_conditions(&p.match_conditions, &ctx)? {
        return Ok(None);
    }
    // Variables in order: each sees those before it.
    let mut vars: HashMap<String, cel::Value> = HashMap::new();
    for (name, e) in &p.variables {
        let mut scope = ctx.new_inner_scope();
        scope.add_variable_from_value("variables", cel::Value::from(vars.clone()));
        let v = e.eval(&scope)?;
        vars.insert(name.clone(), v);
    }
    let mut scope = ctx.new_inner_scope();
    scope.add_variable_from_value("variables", cel::Value::from(vars));
    let mut out = Vec::new();
    for v in &p.validations {
        if v.expr.eval_bool(&scope)? {
            continue;
        }
        // A message expression that fails or says nothing falls back to the message.
        let from_expr = v.message_expr.as_ref().and_then(|m| match m.eval(&scope) {
            Ok(cel::Value::String(s)) if !s.trim().is_empty() => Some(s.to_string()),
            _ => None,
        });
        let message = from_expr.or_else(|| v.message.clone()).unwrap_or_else(|| format!("failed expression: {}", v.expr.source));
        let code = REASONS.iter().find(|(r, _)| *r == v.reason).map_or(422, |(_, c)| *c);
        out.push(Violation { message, reason: v.reason, code });
    }
    Ok(Some(out))
}

/// Kubernetes' validation of a policy: its expressions compile, its match constraints name
/// resources, its reasons are known.
pub fn validate_policy(obj: &Value, causes: &mut Vec<(String, String)>) {
    let spec = &obj["spec"];
    if spec["matchConstraints"]["resourceRules"].as_array().is_none_or(|a| a.is_empty()) {
        causes.push(("spec.matchConstraints.resourceRules".into(), "Required value".into()));
    }
    let check = check_expression;
    for (list, f) in [("validations", "expression"), ("matchConditions", "expression"), ("variables", "expression")] {
        for (i, v) in spec[list].as_array().into_iter().flatten().enumerate() {
            check(causes, format!("spec.{list}[{i}].{f}"), v[f].as_str());
        }
    }
    for (i, v) in spec["validations"].as_array().into_iter().flatten().enumerate() {
        if let Some(m) = v["messageExpression"].as_str().filter(|m| !m.is_empty()) {
            check(causes, format!("spec.validations[{i}].messageExpression"), Some(m));
        }
        if let Some(r) = v["reason"].as_str()
            && !REASONS.iter().any(|(k, _)| *k == r)
        {
            causes.push((format!("spec.validations[{i}].reason"), format!("Unsupported value: {r:?}: supported values: \"Unauthorized\", \"Forbidden\", \"Invalid\", \"RequestEntityTooLarge\"")));
        }
    }
    if spec["validations"].as_array().is_none_or(|a| a.is_empty()) && spec["auditAnnotations"].as_array().is_none_or(|a| a.is_empty()) {
        causes.push(("spec.validations".into(), "Required value: validations or auditAnnotations must contain at least one item".into()));
    }
    if let Some(f) = spec["failurePolicy"].as_str()
        && !matches!(f, "Ignore" | "Fail")
    {
        causes.push(("spec.failurePolicy".into(), format!("Unsupported value: {f:?}: supported values: \"Fail\", \"Ignore\"")));
    }
}

/// An expression field: present and compiling, as Kubernetes validates it at write.
pub fn check_expression(causes: &mut Vec<(String, String)>, field: String, src: Option<&str>) {
    match src {
        None | Some("") => causes.push((field, "Required value: expression is not specified".into())),
        Some(s) => {
            if let Err(e) = env().compile(s) {
                causes.push((field, format!("Invalid value: {s:?}: compilation failed: {e}")));
            }
        }
    }
}

/// Kubernetes' validation of a binding: a policy name and at least one known action
/// (Deny and Warn together are allowed; Audit is accepted and, here, records nothing).
pub fn validate_binding(obj: &Value, causes: &mut Vec<(String, String)>) {
    let spec = &obj["spec"];
    if spec["policyName"].as_str().is_none_or(|n| n.is_empty()) {
        causes.push(("spec.policyName".into(), "Required value".into()));
    }
    let actions: Vec<&str> = spec["validationActions"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
    if actions.is_empty() {
        causes.push(("spec.validationActions".into(), "Required value: at least one validation action is required".into()));
    }
    for a in &actions {
        if !matches!(*a, "Deny" | "Warn" | "Audit") {
            causes.push(("spec.validationActions".into(), format!("Unsupported value: {a:?}: supported values: \"Audit\", \"Deny\", \"Warn\"")));
        }
    }
    if actions.contains(&"Deny") && actions.contains(&"Warn") {
        causes.push(("spec.validationActions".into(), "Invalid value: cannot use both Deny and Warn".into()));
    }
}

/// The compiled bindings of the server.
#[derive(Default)]
pub struct Policies {
    bindings: RwLock<Arc<Vec<Binding>>>,
}

impl Policies {
    pub fn current(&self) -> Arc<Vec<Binding>> {
        self.bindings.read().unwrap().clone()
    }

    pub fn set(&self, b: Vec<Binding>) {
        *self.bindings.write().unwrap() = Arc::new(b);
    }
}

/// Keeps `st.policies` compiled from the policies' and bindings' watch caches.
pub(crate) async fn follow(st: Arc<crate::handlers::AppState>) {
    let target = st.clone();
    crate::cached::follow(st, &[(GROUP, "validatingadmissionpolicies"), (GROUP, "validatingadmissionpolicybindings")], move |o| {
        let b = compile(&o[0], &o[1]);
        tracing::debug!(bindings = b.len(), "validating admission policies compiled");
        target.policies.set(b);
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::rules::Operation;
    use serde_json::json;

    fn policy(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    fn binding(spec: Value) -> Value {
        json!({"metadata": {"name": "b"}, "spec": spec})
    }

    fn deployments() -> Value {
        json!({"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]})
    }

    fn request<'a>(op: Operation, obj: Option<&'a Value>, old: Option<&'a Value>) -> Request<'a> {
        Request {
            attrs: Attributes { operation: op, group: "apps", version: "v1", resource: "deployments", subresource: "", namespaced: true },
            kind: "Deployment",
            name: "web",
            namespace: Some("default"),
            user: None,
            dry_run: false,
            object: obj,
            old,
        }
    }

    #[test]
    fn a_false_match_condition_excludes_even_beside_one_that_fails() {
        let obj = json!({"metadata": {"name": "web", "labels": {"tier": "web"}}});
        let r = request(Operation::Create, Some(&obj), None);
        let ctx = request_context(&r);
        let conds = |list: Value| named(&list);
        let fails = json!({"name": "missing", "expression": "object.metadata.labels.team == 'x'"});
        let holds = json!({"name": "web", "expression": "object.metadata.labels.tier == 'web'"});
        let excludes = json!({"name": "not-web", "expression": "object.metadata.labels.tier != 'web'"});
        assert_eq!(match_conditions(&conds(json!([holds.clone()])), &ctx), Ok(true));
        assert_eq!(match_conditions(&conds(json!([])), &ctx), Ok(true));
        assert_eq!(match_conditions(&conds(json!([fails.clone(), excludes])), &ctx), Ok(false), "false wins over an error, whatever the order");
        let e = match_conditions(&conds(json!([holds, fails])), &ctx).unwrap_err();
        assert!(e.starts_with("matchCondition 'missing': expression 'object.metadata.labels.team == 'x'' resulted in error"), "{e}");
    }

    fn one(p: Value, b: Value) -> Binding {
        compile(&[p], &[b]).pop().expect("the binding finds its policy")
    }

    #[test]
    fn validations_pass_or_fail_with_their_messages_and_reasons() {
        let b = one(
            policy(json!({"matchConstraints": deployments(), "validations": [
                {"expression": "object.spec.replicas <= 5"},
                {"expression": "has(object.metadata.labels) && 'team' in object.metadata.labels", "message": "a team label is required", "reason": "Forbidden"},
                {"expression": "object.metadata.name.startsWith('web')", "messageExpression": "'name ' + object.metadata.name + ' is not a web name'"},
            ]})),
            binding(json!({"policyName": "p", "validationActions": ["Deny"]})),
        );
        assert!(b.deny && !b.warn);
        let ok = json!({"metadata": {"name": "web", "labels": {"team": "a"}}, "spec": {"replicas": 3}});
        let r = request(Operation::Create, Some(&ok), None);
        assert!(b.matches(&r, Some(None)));
        assert_eq!(evaluate(&b, &r, None, None).unwrap(), Some(vec![]));
        let bad = json!({"metadata": {"name": "web"}, "spec": {"replicas": 7}});
        let v = evaluate(&b, &request(Operation::Create, Some(&bad), None), None, None).unwrap().unwrap();
        assert_eq!(v, vec![
            Violation { message: "failed expression: object.spec.replicas <= 5".into(), reason: "Invalid", code: 422 },
            Violation { message: "a team label is required".into(), reason: "Forbidden", code: 403 },
        ]);
        let mut other = ok.clone();
        other["metadata"]["name"] = json!("api");
        let v = evaluate(&b, &request(Operation::Create, Some(&other), None), None, None).unwrap().unwrap();
        assert_eq!(v[0].message, "name api is not a web name");
    }

    #[test]
    fn variables_params_match_conditions_and_old_objects() {
        let b = one(
            policy(json!({
                "matchConstraints": deployments(),
                "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                "matchConditions": [{"name": "not-system", "expression": "!request.namespace.startsWith('kube-')"}],
                "variables": [{"name": "replicas", "expression": "object.spec.replicas"}, {"name": "limit", "expression": "int(params.data.max)"}, {"name": "over", "expression": "variables.replicas > variables.limit"}],
                "validations": [
                    {"expression": "!variables.over", "messageExpression": "'at most ' + string(variables.limit) + ' replicas'"},
                    {"expression": "oldObject == null || object.spec.replicas >= oldObject.spec.replicas", "message": "no scaling down"},
                ],
            })),
            binding(json!({"policyName": "p", "validationActions": ["Warn"], "paramRef": {"name": "limits", "parameterNotFoundAction": "Allow"}})),
        );
        assert_eq!(b.param_ref, Some(ParamRef { name: Some("limits".into()), namespace: None, selector: None, deny_if_missing: false }));
        assert_eq!(b.policy.param_kind, Some(("v1".into(), "ConfigMap".into())));
        let params = json!({"data": {"max": "4"}});
        let d = |n: i64| json!({"metadata": {"name": "web"}, "spec": {"replicas": n}});
        let (six, two) = (d(6), d(2));
        let v = evaluate(&b, &request(Operation::Create, Some(&six), None), Some(&params), None).unwrap().unwrap();
        assert_eq!(v.iter().map(|v| v.message.as_str()).collect::<Vec<_>>(), ["at most 4 replicas"]);
        let v = evaluate(&b, &request(Operation::Update, Some(&two), Some(&six)), Some(&params), None).unwrap().unwrap();
        assert_eq!(v.iter().map(|v| v.message.as_str()).collect::<Vec<_>>(), ["no scaling down"]);
        let mut sys = request(Operation::Create, Some(&six), None);
        sys.namespace = Some("kube-system");
        assert_eq!(evaluate(&b, &sys, Some(&params), None).unwrap(), None, "the match condition leaves it out");
        // No params: `params.data` is an error, which the policy's failurePolicy judges.
        let e = evaluate(&b, &request(Operation::Create, Some(&six), None), None, None).unwrap_err();
        assert!(e.contains("int(params.data.max)"), "{e}");
    }

    #[test]
    fn matching_by_rules_names_exclusions_selectors_and_the_bindings_resources() {
        let mut m = deployments();
        m["resourceRules"][0]["resourceNames"] = json!(["web", "api"]);
        m["excludeResourceRules"] = json!([{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["*"], "resources": ["deployments"], "resourceNames": ["api"]}]);
        m["namespaceSelector"] = json!({"matchLabels": {"env": "prod"}});
        let p = policy(json!({"matchConstraints": m, "validations": [{"expression": "true"}]}));
        let b = one(p.clone(), binding(json!({"policyName": "p", "validationActions": ["Deny"]})));
        let obj = json!({"metadata": {"name": "web", "labels": {"tier": "fe"}}});
        let mut r = request(Operation::Create, Some(&obj), None);
        let prod = json!({"env": "prod"});
        assert!(b.has_namespace_selector());
        assert!(b.matches(&r, Some(Some(&prod))));
        assert!(!b.matches(&r, Some(None)), "a namespace without the label");
        r.name = "api";
        assert!(!b.matches(&r, Some(Some(&prod))), "excluded by name");
        r.name = "db";
        assert!(!b.matches(&r, Some(Some(&prod))), "not among the resource names");
        r.name = "web";
        r.attrs.operation = Operation::Delete;
        assert!(!b.matches(&r, Some(Some(&prod))), "DELETE is not among the operations");
        r.attrs.operation = Operation::Create;
        let narrowed = one(p, binding(json!({"policyName": "p", "validationActions": ["Deny"], "matchResources": {"objectSelector": {"matchLabels": {"tier": "be"}}}})));
        assert!(!narrowed.matches(&r, Some(Some(&prod))), "the binding's object selector narrows the policy");
        assert!(compile(&[], &[binding(json!({"policyName": "p", "validationActions": ["Deny"]}))]).is_empty(), "no policy, no binding");
    }

    #[test]
    fn invalid_policies_and_bindings_are_refused_with_their_fields() {
        let mut causes = vec![];
        validate_policy(&policy(json!({"validations": [{"expression": "object.spec.replicas <="}, {"expression": "true", "reason": "Teapot"}], "failurePolicy": "Maybe"})), &mut causes);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.matchConstraints.resourceRules", "spec.validations[0].expression", "spec.validations[1].reason", "spec.failurePolicy"]);
        assert!(causes[1].1.contains("compilation failed"), "{causes:?}");
        let mut causes = vec![];
        validate_binding(&binding(json!({"validationActions": ["Deny", "Warn", "Shout"]})), &mut causes);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.policyName", "spec.validationActions", "spec.validationActions"]);
        let mut ok = vec![];
        validate_policy(&policy(json!({"matchConstraints": deployments(), "validations": [{"expression": "object.spec.replicas <= 5"}]})), &mut ok);
        validate_binding(&binding(json!({"policyName": "p", "validationActions": ["Warn", "Audit"]})), &mut ok);
        assert!(ok.is_empty(), "{ok:?}");
    }
}
