//! Dynamic admission on the write path: webhooks (`crate::webhook`) and
//! ValidatingAdmissionPolicies (`crate::admission_policy`). For webhooks: which of them a
//! request goes to (rules, then the namespace's labels, then the object's), where a
//! Service-referenced one is (a ready endpoint of its EndpointSlices), and what their
//! answers do: mutating ones patch the object in turn, validating ones deny together. For
//! policies: the bindings that match, their parameter objects, and their actions.

use super::*;
use crate::admission_policy::{self as policy, Binding, ParamRef};
use crate::webhook::review;
use crate::webhook::rules::{Attributes, Operation};
use crate::webhook::Hook;

impl Req<'_> {
    /// The group, version and kind of what admission sees: the resource's object, or the
    /// subresource's own (a Scale, an Eviction, a Binding).
    fn admission_kind(&self) -> (&str, &str, &str) {
        match self.sub.as_deref() {
            Some("scale") => ("autoscaling", "v1", "Scale"),
            Some("eviction") => ("policy", "v1", "Eviction"),
            Some("binding") => ("", "v1", "Binding"),
            _ => (self.info.group, self.info.version, self.info.kind),
        }
    }

    /// Admission of a subresource's write that capstan handles apart from the object's
    /// (`scale`, `binding`, `eviction`): mutating webhooks over the subresource's object,
    /// then validating policies and webhooks, as Kubernetes admits them.
    pub(super) async fn admit_subresource(&self, op: Operation, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        self.mutate_by_webhooks(op, obj, old).await?;
        self.dynamic_validation(op, Some(obj), old).await
    }

    /// The name of what is admitted: the request's, or the object's (a create).
    fn object_name<'a>(&'a self, obj: Option<&'a Value>, old: Option<&'a Value>) -> &'a str {
        self.name.as_deref().or_else(|| obj.or(old).and_then(|o| meta_str(o, "name"))).unwrap_or("")
    }

    fn attributes(&self, operation: Operation) -> Attributes<'_> {
        Attributes {
            operation,
            group: self.info.group,
            version: self.info.version,
            resource: self.info.resource,
            subresource: self.sub.as_deref().unwrap_or(""),
            namespaced: self.info.namespaced,
        }
    }

    /// The webhooks of `hooks` whose rules and namespace selector this request matches (the
    /// object selector is the caller's: a mutating webhook is matched against the object as
    /// the webhooks before it left it). The namespace's labels are read only if a webhook
    /// asks.
    async fn webhooks_for(&self, hooks: &[Arc<Hook>], op: Operation, obj: Option<&Value>, old: Option<&Value>) -> Result<Vec<Arc<Hook>>, ApiError> {
        if hooks.is_empty() || crate::webhook::rules::exempt(self.info.group, self.info.resource) {
            return Ok(vec![]);
        }
        let a = self.attributes(op);
        let is_namespace = self.info.kind == "Namespace" && self.info.group.is_empty();
        let mut labels: Option<Option<Value>> = None;
        let mut out = Vec::new();
        for h in hooks.iter().filter(|h| h.matches(&a)) {
            // A cluster-scoped object (but a Namespace) is never exempted by a namespace selector.
            if h.has_namespace_selector() && (self.namespace.is_some() || is_namespace) {
                if labels.is_none() {
                    labels = Some(if is_namespace {
                        obj.or(old).and_then(|o| o["metadata"].get("labels").cloned())
                    } else {
                        let ns = self.namespace.as_deref().unwrap_or("");
                        self.st.lookup("namespaces", None, ns).await?.and_then(|n| n["metadata"].get("labels").cloned())
                    });
                }
                if !h.selects_namespace(labels.as_ref().and_then(|l| l.as_ref())) {
                    continue;
                }
            }
            out.push(h.clone());
        }
        Ok(out)
    }

    /// An update's webhooks: mutating ones over `next` (with the generation and the built-in
    /// validation done again if they changed it), then validating ones.
    pub(super) async fn webhooks_on_update(&self, cur: &Value, next: &mut Value) -> Result<(), ApiError> {
        if self.mutate_by_webhooks(Operation::Update, next, Some(cur)).await? {
            if self.info.has_spec && cur.get("spec") != next.get("spec") {
                let g = cur["metadata"].get("generation").and_then(|g| g.as_i64()).unwrap_or(0) + 1;
                meta_mut(next).insert("generation".into(), json!(g));
            }
            self.st.admission.admit(self.info, Some(cur), next)?;
        }
        self.dynamic_validation(Operation::Update, Some(next), Some(cur)).await
    }

    /// Runs the mutating webhooks over `obj` (a create's or update's new object), then the
    /// built-in validation again if they changed it. Returns whether they did.
    pub(super) async fn mutate_by_webhooks(&self, op: Operation, obj: &mut Value, old: Option<&Value>) -> Result<bool, ApiError> {
        let set = self.st.webhooks.current();
        let hooks = self.webhooks_for(&set.mutating, op, Some(obj), old).await?;
        if hooks.is_empty() {
            return Ok(false);
        }
        let (name, namespace) = (meta_str(obj, "name").map(String::from), meta_str(obj, "namespace").map(String::from));
        let mut last_change = None;
        for (i, h) in hooks.iter().enumerate() {
            if h.selects_object(Some(obj), old) && self.mutate_once(h, op, obj, old).await? {
                last_change = Some(i);
            }
        }
        // reinvocationPolicy IfNeeded: called once more when a webhook after it changed the
        // object (Kubernetes' single reinvocation pass; changes made now call no one again).
        if let Some(last) = last_change {
            for h in hooks[..last].iter().filter(|h| h.reinvoke) {
                if h.selects_object(Some(obj), old) {
                    self.mutate_once(h, op, obj, old).await?;
                }
            }
        }
        if meta_str(obj, "name").map(String::from) != name || meta_str(obj, "namespace").map(String::from) != namespace {
            return Err(ApiError::internal("Internal error occurred: an admission webhook changed the object's name or namespace"));
        }
        Ok(last_change.is_some())
    }

    /// One mutating webhook's call: its patch applied to `obj`; true if that changed it.
    async fn mutate_once(&self, h: &Hook, op: Operation, obj: &mut Value, old: Option<&Value>) -> Result<bool, ApiError> {
        let Some(v) = self.call_webhook(h, op, Some(obj), old).await? else { return Ok(false) };
        if !v.allowed {
            return Err(review::denied(&h.name, &v.status));
        }
        self.warnings.lock().unwrap().extend(v.warnings);
        let Some(p) = v.patch.filter(|p| !p.0.is_empty()) else { return Ok(false) };
        let mut next = obj.clone();
        json_patch::patch(&mut next, &p).map_err(|e| review::call_failed(&h.name, &format!("JSON Patch: {e}")))?;
        let changed = next != *obj;
        *obj = next;
        Ok(changed)
    }

    /// The validating admission policies, then the validating webhooks, together; the
    /// first denial (in their order) is the answer. A DELETE goes to the mutating webhooks
    /// that match it too, whose denial denies (there is no object for a patch).
    pub(super) async fn dynamic_validation(&self, op: Operation, obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
        self.validate_by_policies(op, obj, old).await?;
        let set = self.st.webhooks.current();
        if set.is_empty() {
            return Ok(());
        }
        let mut hooks = if op == Operation::Delete { self.webhooks_for(&set.mutating, op, obj, old).await? } else { vec![] };
        hooks.extend(self.webhooks_for(&set.validating, op, obj, old).await?);
        hooks.retain(|h| h.selects_object(obj, old));
        let answers = futures_util::future::join_all(hooks.iter().map(|h| self.call_webhook(h, op, obj, old))).await;
        for (h, answer) in hooks.iter().zip(answers) {
            if let Some(v) = answer? {
                if !v.allowed {
                    return Err(review::denied(&h.name, &v.status));
                }
                self.warnings.lock().unwrap().extend(v.warnings);
            }
        }
        Ok(())
    }

    /// Sends one webhook its review. `Ok(None)`: the call failed and the webhook's
    /// failurePolicy is Ignore.
    async fn call_webhook(&self, h: &Hook, op: Operation, obj: Option<&Value>, old: Option<&Value>) -> Result<Option<review::Verdict>, ApiError> {
        if !h.match_conditions.is_empty() {
            let name = self.object_name(obj, old);
            let r = policy::Request { attrs: self.attributes(op), kind: self.admission_kind().2, name, namespace: self.namespace.as_deref(), user: self.user.as_deref(), dry_run: self.dry_run(), object: obj, old };
            // Kubernetes: a false condition skips the webhook; an evaluation error fails the
            // request (403) under failurePolicy Fail and skips the webhook under Ignore.
            match policy::match_conditions(&h.match_conditions, &policy::request_context(&r)) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(why) if h.fail_closed => {
                    let gr = if self.info.group.is_empty() { self.info.resource.to_string() } else { format!("{}.{}", self.info.resource, self.info.group) };
                    return Err(ApiError::forbidden(format!("{gr} {name:?} is forbidden: {why}")));
                }
                Err(_) => return Ok(None),
            }
        }
        if self.dry_run() && !h.dry_run_safe {
            return Err(ApiError::bad_request(format!("admission webhook {:?} does not support dry run", h.name)));
        }
        let uid = object::new_uid();
        let name = self.object_name(obj, old);
        let req = review::Request { uid: &uid, attrs: self.attributes(op), kind: self.admission_kind(), name, namespace: self.namespace.as_deref(), user: self.user.as_deref(), dry_run: self.dry_run() };
        let body = review::encode(&req, obj, old);
        let answer = match self.st.post_to_webhook(h, body).await {
            Ok(bytes) => review::decode(&bytes, &uid),
            Err(e) => Err(e),
        };
        match answer {
            Ok(v) => Ok(Some(v)),
            Err(why) => {
                self.st.metrics.webhook_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.st.webhooks.log_failure(h, &why);
                if h.fail_closed { Err(review::call_failed(&h.name, &why)) } else { Ok(None) }
            }
        }
    }

    /// The ValidatingAdmissionPolicy bindings that match this request, each evaluated over
    /// its parameter objects: a Deny binding's violation is the answer, a Warn binding's a
    /// warning; an expression that fails is judged by its policy's failurePolicy.
    async fn validate_by_policies(&self, op: Operation, obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
        let bindings = self.st.policies.current();
        if bindings.is_empty() || crate::webhook::rules::exempt(self.info.group, self.info.resource) {
            return Ok(());
        }
        let name = self.object_name(obj, old);
        let r = policy::Request { attrs: self.attributes(op), kind: self.admission_kind().2, name, namespace: self.namespace.as_deref(), user: self.user.as_deref(), dry_run: self.dry_run(), object: obj, old };
        let is_namespace = self.info.kind == "Namespace" && self.info.group.is_empty();
        let ns_obj = match self.namespace.as_deref() {
            Some(ns) => self.st.lookup("namespaces", None, ns).await?,
            None => None,
        };
        let labels = if is_namespace {
            Some(obj.or(old).and_then(|o| o["metadata"].get("labels")))
        } else if self.namespace.is_some() {
            Some(ns_obj.as_ref().and_then(|n| n["metadata"].get("labels")))
        } else {
            None
        };
        for b in bindings.iter().filter(|b| b.matches(&r, labels)) {
            let params: Vec<Option<Value>> = match (&b.policy.param_kind, &b.param_ref) {
                (None, _) => vec![None],
                (Some(kind), Some(pr)) => {
                    let found = self.policy_params(kind, pr).await;
                    match found {
                        Ok(found) if found.is_empty() && pr.deny_if_missing => {
                            return Err(policy_denial(self.info, name, b, "failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction", "Invalid", 422));
                        }
                        Ok(found) => found.into_iter().map(Some).collect(),
                        Err(e) => {
                            self.policy_failed(b, name, &e)?;
                            continue;
                        }
                    }
                }
                (Some(_), None) => {
                    self.policy_failed(b, name, "failed to configure binding: paramKind is set but the binding has no paramRef")?;
                    continue;
                }
            };
            for p in &params {
                match policy::evaluate(b, &r, p.as_ref(), ns_obj.as_deref()) {
                    Ok(None) => {}
                    Ok(Some(violations)) => {
                        for v in violations {
                            if b.deny {
                                return Err(policy_denial(self.info, name, b, &v.message, v.reason, v.code));
                            }
                            if b.warn {
                                self.warnings.lock().unwrap().push(format!("Validation failed for ValidatingAdmissionPolicy '{}' with binding '{}': {}", b.policy.name, b.name, v.message));
                            }
                        }
                    }
                    Err(e) => self.policy_failed(b, name, &e)?,
                }
            }
        }
        Ok(())
    }

    /// A policy that could not be evaluated: denied under failurePolicy Fail, skipped (and
    /// logged) under Ignore.
    fn policy_failed(&self, b: &Binding, name: &str, why: &str) -> Result<(), ApiError> {
        if b.policy.fail_closed && b.deny {
            return Err(policy_denial(self.info, name, b, why, "Invalid", 422));
        }
        if b.policy.fail_closed && b.warn {
            self.warnings.lock().unwrap().push(format!("Validation failed for ValidatingAdmissionPolicy '{}' with binding '{}': {why}", b.policy.name, b.name));
        }
        tracing::debug!(policy = b.policy.name, binding = b.name, error = why, "a validating admission policy could not be evaluated");
        Ok(())
    }

    /// A binding's parameter objects: the one named, or those its selector picks, in its
    /// namespace (the request's, for a namespaced kind when the binding names none).
    async fn policy_params(&self, (api_version, kind): &(String, String), pr: &ParamRef) -> Result<Vec<Value>, String> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
        let info = self.st.reg.in_group_version(group, version).into_iter().find(|r| r.kind == kind).ok_or_else(|| format!("failed to configure binding: paramKind {api_version}, Kind={kind} is not served"))?;
        let ns = info.namespaced.then(|| pr.namespace.as_deref().or(self.namespace.as_deref()).unwrap_or(""));
        let objects = self.cached(info.group, info.version, info.resource).await.ok_or("failed to configure binding: the parameters' cache is not available")?;
        let parse = |o: &watchcache::Object| serde_json::from_slice::<Value>(&o.json()).ok();
        if let Some(n) = &pr.name {
            return Ok(objects.get(info.key(ns, n).as_bytes()).and_then(|o| parse(o)).into_iter().collect());
        }
        let sel = pr.selector.clone().unwrap_or_else(|| json!({}));
        let prefix = info.prefix(ns);
        Ok(objects
            .range(Bytes::from(prefix.clone())..)
            .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
            .filter_map(|(_, o)| parse(o))
            .filter(|o| api::meta::selector_matches(&sel, &o["metadata"]["labels"]))
            .collect())
    }
}

/// A Deny binding's answer: Kubernetes' message, as 422 Invalid (with the resource and name)
/// or with the validation's own reason.
fn policy_denial(info: &crate::registry::ResourceInfo, name: &str, b: &Binding, message: &str, reason: &'static str, code: u16) -> ApiError {
    let message = format!("ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {message}", b.policy.name, b.name);
    if reason == "Invalid" {
        return ApiError::invalid(info.group, info.resource, name, vec![(String::new(), message)]);
    }
    ApiError { code, reason, message, details: None }
}
