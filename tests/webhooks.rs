//! Extending the API from outside, end to end with the real `capstan up` and kubectl:
//! admission webhooks (`tests/python/webhook_server.py`), ValidatingAdmissionPolicies, and
//! aggregated APIs (`tests/python/aggregated_server.py`), the servers' certificates signed by
//! a CA the configurations carry in their `caBundle`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use common::*;

/// A test server: killed when the test ends.
struct Server {
    child: Child,
    port: u16,
    ca_b64: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, and a serving certificate of it for 127.0.0.1 and the Service name
/// `hooks.webhook-test.svc`, written to `dir`; then the server started on them.
fn start_server(dir: &std::path::Path) -> Server {
    start_python(dir, "webhook_server.py", "hooks.webhook-test.svc", &[])
}

/// `tests/python/SCRIPT CERT KEY ARGS...` with a certificate for `san` and 127.0.0.1 of a CA
/// made here; it prints its port.
fn start_python(dir: &std::path::Path, script: &str, san: &str, args: &[&std::path::Path]) -> Server {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "webhook test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![san.to_string()]).unwrap();
    p.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = p.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{script}.crt")), dir.join(format!("{script}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let mut child = Command::new("python3")
        .arg(source_dir().join("tests/python").join(script))
        .args([&cert_path, &key_path])
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start python3 tests/python/{script}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("the server printed its port");
    let port = line.trim().parse().unwrap_or_else(|_| panic!("{script} printed {line:?}, not a port"));
    Server { child, port, ca_b64: base64::engine::general_purpose::STANDARD.encode(ca.pem()) }
}

/// A webhook entry: `client` is its clientConfig without the CA; `extra` more fields.
fn hook(name: &str, client: serde_json::Value, ca: &str, rules: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let mut w = serde_json::json!({"name": name, "sideEffects": "None", "admissionReviewVersions": ["v1"], "clientConfig": client, "rules": rules});
    w["clientConfig"]["caBundle"] = ca.into();
    for (k, v) in extra.as_object().unwrap() {
        w[k] = v.clone();
    }
    w
}

fn rules(ops: &[&str], group: &str, resource: &str) -> serde_json::Value {
    serde_json::json!([{"operations": ops, "apiGroups": [group], "apiVersions": ["v1"], "resources": [resource]}])
}

fn apply(c: &Cluster, name: &str, doc: serde_json::Value) {
    let f = c.write(name, &doc.to_string());
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
}

/// The CA aggregated servers are told to trust for the front-proxy headers, once published
/// in `kube-system/extension-apiserver-authentication`, written to a file.
fn front_proxy_ca(c: &Cluster) -> std::path::PathBuf {
    let mut ca = String::new();
    wait_until("kube-system/extension-apiserver-authentication to be published", || {
        let out = c.kubectl_with(KUBECTL, &["get", "configmap", "-n", "kube-system", "extension-apiserver-authentication", "-o", "jsonpath={.data.requestheader-client-ca-file}"]);
        ca = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && ca.contains("BEGIN CERTIFICATE")
    });
    c.write("front-proxy-ca.crt", &ca)
}

/// A selector-less Service `ns/name` (port 443, named https) whose one EndpointSlice leads
/// to a test server on 127.0.0.1:`port`; returns the slice, for a test to put back.
fn serve_at_service(c: &Cluster, ns: &str, name: &str, port: u16) -> serde_json::Value {
    apply(c, "svc.json", serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}}));
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
    });
    apply(c, "slice.json", slice.clone());
    slice
}

fn config(kind: &str, name: &str, hooks: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name}, "webhooks": hooks})
}

#[test]
fn admission_webhooks_mutate_deny_and_fail_by_their_policy() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let s = start_server(c.dir.path());
    let url = |path: &str| serde_json::json!({"url": format!("https://127.0.0.1:{}{path}", s.port)});

    // Mutating: "a-hooks" (sorted first) holds /mutate-a, reinvoked if needed, and /mutate;
    // "b-hooks" holds /mutate-b. Only pods labelled hook=yes.
    let only_hooked = serde_json::json!({"objectSelector": {"matchLabels": {"hook": "yes"}}});
    let mut a = only_hooked.clone();
    a["reinvocationPolicy"] = "IfNeeded".into();
    apply(&c, "a.json", config("MutatingWebhookConfiguration", "a-hooks", vec![
        hook("mutate-a.capstan.test", url("/mutate-a"), &s.ca_b64, rules(&["CREATE"], "", "pods"), a),
        hook("mutate.capstan.test", url("/mutate"), &s.ca_b64, rules(&["CREATE"], "", "pods"), only_hooked.clone()),
    ]));
    apply(&c, "b.json", config("MutatingWebhookConfiguration", "b-hooks", vec![hook("mutate-b.capstan.test", url("/mutate-b"), &s.ca_b64, rules(&["CREATE"], "", "pods"), only_hooked)]));
    let pod = |name: &str, labels: &str| {
        c.write(&format!("{name}.yaml"), &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {labels}\nspec:\n  containers: [{{name: c, image: busybox}}]\n"))
    };
    let probe = pod("probe", "{hook: \"yes\"}");
    wait_until("the mutating webhooks to take effect", || {
        c.ok(&["create", "--dry-run=server", "-o", "json", "-f", probe.to_str().unwrap()]).contains("\"b\": \"yes\"")
    });
    let hooked = pod("hooked", "{hook: \"yes\"}");
    let out = c.kubectl_with(KUBECTL, &["create", "-f", hooked.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Warning: mutated by the test webhook"), "the webhook's warning reaches kubectl: {}", String::from_utf8_lossy(&out.stderr));
    let labels: serde_json::Value = serde_json::from_str(&c.ok(&["get", "pod", "hooked", "-o", "jsonpath={.metadata.labels}"])).unwrap();
    assert_eq!(labels, serde_json::json!({"hook": "yes", "mutated": "yes", "a": "yes", "b": "yes", "a-saw-b": "yes"}), "every mutating webhook in order, /mutate-a again after /mutate-b");
    let ann: serde_json::Value = serde_json::from_str(&c.ok(&["get", "pod", "hooked", "-o", "jsonpath={.metadata.annotations}"])).unwrap();
    assert_eq!((&ann["webhook-user"], &ann["webhook-operation"], &ann["webhook-timeout"]), (&"kubernetes-admin".into(), &"CREATE".into(), &"10s".into()));
    let plain = pod("plain", "{other: \"x\"}");
    c.ok(&["create", "-f", plain.to_str().unwrap()]);
    assert_eq!(c.ok(&["get", "pod", "plain", "-o", "jsonpath={.metadata.labels}"]), r#"{"other":"x"}"#, "the object selector leaves other pods alone");

    // Validating, through a Service: a selector-less Service and its EndpointSlice lead to
    // the server; the certificate is checked for hooks.webhook-test.svc.
    c.ok(&["create", "namespace", "webhook-test"]);
    c.ok(&["create", "namespace", "guarded"]);
    c.ok(&["label", "namespace", "guarded", "guard=on"]);
    c.ok(&["create", "namespace", "open"]);
    serve_at_service(&c, "webhook-test", "hooks", s.port);
    apply(&c, "v.json", config("ValidatingWebhookConfiguration", "guard", vec![hook(
        "deny.capstan.test",
        serde_json::json!({"service": {"namespace": "webhook-test", "name": "hooks", "path": "/validate"}}),
        &s.ca_b64,
        rules(&["CREATE", "UPDATE", "DELETE"], "", "configmaps"),
        serde_json::json!({"namespaceSelector": {"matchLabels": {"guard": "on"}}}),
    )]));
    let denied = "admission webhook \"deny.capstan.test\" denied the request: the key \"forbidden\" is not allowed";
    wait_until("the validating webhook to take effect", || {
        let out = c.kubectl_with(KUBECTL, &["create", "configmap", "probe", "-n", "guarded", "--from-literal=forbidden=1", "--dry-run=server"]);
        String::from_utf8_lossy(&out.stderr).contains(denied)
    });
    assert!(c.fails(&["create", "configmap", "bad", "-n", "guarded", "--from-literal=forbidden=1"]).contains(denied));
    c.ok(&["create", "configmap", "bad", "-n", "open", "--from-literal=forbidden=1"]);
    c.ok(&["create", "configmap", "good", "-n", "guarded", "--from-literal=fine=1"]);
    let e = c.fails(&["patch", "configmap", "good", "-n", "guarded", "-p", r#"{"data":{"forbidden":"1"}}"#]);
    assert!(e.contains(denied), "an update is validated too: {e}");
    c.ok(&["label", "configmap", "good", "-n", "guarded", "protected=yes"]);
    let e = c.fails(&["delete", "configmap", "good", "-n", "guarded"]);
    assert!(e.contains("admission webhook \"deny.capstan.test\" denied the request: this object is protected"), "{e}");
    c.ok(&["label", "configmap", "good", "-n", "guarded", "protected-"]);
    c.ok(&["delete", "configmap", "good", "-n", "guarded"]);

    // matchConditions: a false one skips the webhook; one that cannot be evaluated fails the
    // request (403) under failurePolicy Fail.
    c.ok(&["create", "namespace", "cond"]);
    c.ok(&["label", "namespace", "cond", "cond=on"]);
    let on_cond = |extra: serde_json::Value| {
        let mut e = serde_json::json!({"namespaceSelector": {"matchLabels": {"cond": "on"}}});
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        e
    };
    apply(&c, "cond.json", config("ValidatingWebhookConfiguration", "conditional", vec![
        hook("cond.capstan.test", url("/validate"), &s.ca_b64, rules(&["CREATE"], "", "configmaps"),
            on_cond(serde_json::json!({"matchConditions": [{"name": "not-exempt", "expression": "!has(object.data) || !('exempt' in object.data)"}]}))),
        hook("team.capstan.test", url("/validate"), &s.ca_b64, rules(&["CREATE"], "", "secrets"),
            on_cond(serde_json::json!({"matchConditions": [{"name": "team-a", "expression": "object.metadata.labels.team == 'a'"}]}))),
    ]));
    let cond_denied = "admission webhook \"cond.capstan.test\" denied the request: the key \"forbidden\" is not allowed";
    wait_until("the conditional webhook to take effect", || {
        let out = c.kubectl_with(KUBECTL, &["create", "configmap", "probe", "-n", "cond", "--from-literal=forbidden=1", "--dry-run=server"]);
        String::from_utf8_lossy(&out.stderr).contains(cond_denied)
    });
    c.ok(&["create", "configmap", "exempt", "-n", "cond", "--from-literal=forbidden=1", "--from-literal=exempt=1"]);
    let e = c.fails(&["create", "secret", "generic", "unlabelled", "-n", "cond", "--from-literal=k=v"]);
    assert!(e.contains("secrets \"unlabelled\" is forbidden: matchCondition 'team-a': expression"), "a condition that cannot be evaluated, failing closed: {e}");
    let labelled = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-b", "namespace": "cond", "labels": {"team": "b"}}, "stringData": {"k": "v"}});
    c.ok(&["create", "-f", c.write("team-b.json", &labelled.to_string()).to_str().unwrap()]);
    c.ok(&["delete", "validatingwebhookconfiguration", "conditional"]);

    // Subresources capstan writes apart from their objects reach webhooks with their own
    // objects: a Scale (mutated here), an Eviction and a Binding (refused here).
    c.ok(&["create", "namespace", "subs"]);
    c.ok(&["label", "namespace", "subs", "subs=on"]);
    let subs = serde_json::json!({"namespaceSelector": {"matchLabels": {"subs": "on"}}});
    let sub_rule = |group: &str, resource: &str, op: &str| serde_json::json!([{"operations": [op], "apiGroups": [group], "apiVersions": ["*"], "resources": [resource]}]);
    apply(&c, "subs-m.json", config("MutatingWebhookConfiguration", "subresources", vec![
        hook("scale.capstan.test", url("/subresource"), &s.ca_b64, sub_rule("apps", "deployments/scale", "UPDATE"), subs.clone()),
    ]));
    apply(&c, "subs-v.json", config("ValidatingWebhookConfiguration", "subresources", vec![
        hook("evict.capstan.test", url("/subresource"), &s.ca_b64, sub_rule("", "pods/eviction", "CREATE"), subs.clone()),
        hook("bind.capstan.test", url("/subresource"), &s.ca_b64, sub_rule("", "pods/binding", "CREATE"), subs.clone()),
    ]));
    c.ok(&["create", "deployment", "sized", "-n", "subs", "--image=busybox", "--replicas=1"]);
    wait_until("the Scale webhook to take effect", || {
        c.ok(&["scale", "deployment", "sized", "-n", "subs", "--replicas=6"]);
        c.ok(&["get", "deployment", "sized", "-n", "subs", "-o", "jsonpath={.spec.replicas}"]) == "3"
    });
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unbound", "namespace": "subs"}, "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox"}]}});
    c.ok(&["create", "-f", c.write("unbound.json", &pod.to_string()).to_str().unwrap()]);
    let post = |path: &str, body: serde_json::Value| {
        let (code, out) = http(&c.addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes());
        (code, String::from_utf8_lossy(&out).into_owned())
    };
    let (code, out) = post("/api/v1/namespaces/subs/pods/unbound/eviction", serde_json::json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "unbound", "namespace": "subs"}}));
    assert_eq!(code, 403, "{out}");
    assert!(out.contains("evict.capstan.test") && out.contains("denied the request: policy/v1 Eviction of pods/eviction CREATE refused"), "{out}");
    let (code, out) = post("/api/v1/namespaces/subs/pods/unbound/binding", serde_json::json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "unbound", "namespace": "subs"}, "target": {"kind": "Node", "name": "n1"}}));
    assert_eq!(code, 403, "{out}");
    assert!(out.contains("/v1 Binding of pods/binding CREATE refused"), "{out}");
    assert_eq!(c.ok(&["get", "pod", "unbound", "-n", "subs", "-o", "jsonpath={.spec.nodeName}|{.metadata.deletionTimestamp}"]), "|", "neither bound nor evicted");

    // Failures, by failurePolicy: a webhook nobody listens for, one that never answers in
    // its timeout, one that answers garbage.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = serde_json::json!({"url": format!("https://127.0.0.1:{closed}/x")});
    apply(&c, "ignore.json", config("ValidatingWebhookConfiguration", "failing", vec![
        hook("down.capstan.test", down.clone(), &s.ca_b64, rules(&["CREATE"], "", "secrets"), serde_json::json!({"failurePolicy": "Ignore"})),
    ]));
    let secret = |name: &str| c.kubectl_with(KUBECTL, &["create", "secret", "generic", name, "--from-literal=k=v"]);
    c.ok(&["create", "secret", "generic", "ignored", "--from-literal=k=v"]);
    apply(&c, "fail.json", config("ValidatingWebhookConfiguration", "failing", vec![
        hook("down.capstan.test", down, &s.ca_b64, rules(&["CREATE"], "", "secrets"), serde_json::json!({"failurePolicy": "Fail"})),
        hook("slow.capstan.test", url("/slow"), &s.ca_b64, rules(&["CREATE"], "", "serviceaccounts"), serde_json::json!({"timeoutSeconds": 1})),
        hook("garbage.capstan.test", url("/garbage"), &s.ca_b64, rules(&["CREATE"], "", "configmaps"), serde_json::json!({"namespaceSelector": {"matchLabels": {"garbage": "on"}}})),
    ]));
    let refused = format!("Internal error occurred: failed calling webhook \"down.capstan.test\": failed to call webhook: Post \"https://127.0.0.1:{closed}/x?timeout=10s\": dial tcp 127.0.0.1:{closed}");
    wait_until("failurePolicy Fail to take effect", || String::from_utf8_lossy(&secret("probe").stderr).contains(&refused));
    let e = c.fails(&["create", "serviceaccount", "slow"]);
    assert!(e.contains("failed calling webhook \"slow.capstan.test\"") && e.contains("context deadline exceeded"), "a webhook past its timeout: {e}");
    c.ok(&["label", "namespace", "open", "garbage=on"]);
    let e = c.fails(&["create", "configmap", "g", "-n", "open"]);
    assert!(e.contains("failed calling webhook \"garbage.capstan.test\": failed to decode the webhook response"), "{e}");
    let (_, metrics) = http(&c.addr, "GET", "/metrics", &[], b"");
    let failures = String::from_utf8_lossy(&metrics).lines().find_map(|l| l.strip_prefix("apiserver_admission_webhook_failures_total ").map(|n| n.parse::<u64>().unwrap())).expect("the failures counter");
    assert!(failures >= 4, "the ignored, refused, slow and garbage calls are counted: {failures}");

    // The configurations themselves are never sent to webhooks: a broken one can be removed.
    c.ok(&["delete", "validatingwebhookconfiguration", "failing"]);
    wait_until("the failing webhooks to be gone", || secret("after").status.success());
    let listed = c.ok(&["get", "mutatingwebhookconfigurations"]);
    assert!(listed.lines().any(|l| l.starts_with("a-hooks") && l.split_whitespace().nth(1) == Some("2")), "kubectl's WEBHOOKS column: {listed}");
    let e = c.fails(&["apply", "-f", c.write("bad.json", &config("ValidatingWebhookConfiguration", "bad", vec![serde_json::json!({"name": "x", "clientConfig": {"url": "http://h/x"}})]).to_string()).to_str().unwrap()]);
    assert!(e.contains("webhooks[0].name") && e.contains("webhooks[0].sideEffects") && e.contains("'https' is the only allowed URL scheme"), "an invalid configuration is refused: {e}");
}

#[test]
fn validating_admission_policies_deny_warn_and_take_parameters() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--no-scheduler"]);
    c.ok(&["create", "namespace", "limited"]);
    c.ok(&["label", "namespace", "limited", "replica-limit=on"]);
    c.ok(&["create", "configmap", "replica-limit", "-n", "limited", "--from-literal=max=3"]);
    let policy = |name: &str, spec: serde_json::Value| serde_json::json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name}, "spec": spec});
    let binding = |name: &str, spec: serde_json::Value| serde_json::json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name}, "spec": spec});
    let deployments = serde_json::json!({"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]});
    apply(&c, "p1.json", policy("max-replicas.capstan.test", serde_json::json!({"matchConstraints": deployments, "validations": [{"expression": "object.spec.replicas <= 5"}]})));
    apply(&c, "b1.json", binding("max-replicas", serde_json::json!({"policyName": "max-replicas.capstan.test", "validationActions": ["Deny"]})));
    let denied = "ValidatingAdmissionPolicy 'max-replicas.capstan.test' with binding 'max-replicas' denied request: failed expression: object.spec.replicas <= 5";
    wait_until("the policy to take effect", || {
        let out = c.kubectl_with(KUBECTL, &["create", "deployment", "probe", "--image=busybox", "--replicas=7", "--dry-run=server"]);
        String::from_utf8_lossy(&out.stderr).contains(denied)
    });
    let e = c.fails(&["create", "deployment", "big", "--image=busybox", "--replicas=7"]);
    assert!(e.contains(&format!("deployments.apps \"big\" is invalid: : {denied}")), "Kubernetes' 422: {e}");
    c.ok(&["create", "deployment", "small", "--image=busybox", "--replicas=2"]);
    let e = c.fails(&["patch", "deployment", "small", "-p", r#"{"spec":{"replicas":9}}"#]);
    assert!(e.contains(denied), "an update is validated too: {e}");

    // Parameters from a ConfigMap in the request's namespace, a message expression, and a
    // namespace selector on the binding; Warn instead of Deny.
    apply(&c, "p2.json", policy("param-limit.capstan.test", serde_json::json!({
        "matchConstraints": deployments,
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "variables": [{"name": "max", "expression": "int(params.data.max)"}],
        "validations": [{"expression": "object.spec.replicas <= variables.max", "messageExpression": "'at most ' + string(variables.max) + ' replicas here, not ' + string(object.spec.replicas)", "reason": "Forbidden"}],
    })));
    apply(&c, "b2.json", binding("param-limit", serde_json::json!({
        "policyName": "param-limit.capstan.test", "validationActions": ["Deny"],
        "paramRef": {"name": "replica-limit", "parameterNotFoundAction": "Deny"},
        "matchResources": {"namespaceSelector": {"matchLabels": {"replica-limit": "on"}}},
    })));
    let limited = "ValidatingAdmissionPolicy 'param-limit.capstan.test' with binding 'param-limit' denied request: at most 3 replicas here, not 4";
    wait_until("the parameterised policy to take effect", || {
        let out = c.kubectl_with(KUBECTL, &["create", "deployment", "probe", "-n", "limited", "--image=busybox", "--replicas=4", "--dry-run=server"]);
        String::from_utf8_lossy(&out.stderr).contains(limited)
    });
    assert!(c.fails(&["create", "deployment", "four", "-n", "limited", "--image=busybox", "--replicas=4"]).contains(limited));
    c.ok(&["create", "deployment", "four", "--image=busybox", "--replicas=4"]);
    c.ok(&["create", "deployment", "three", "-n", "limited", "--image=busybox", "--replicas=3"]);
    c.ok(&["delete", "configmap", "replica-limit", "-n", "limited"]);
    let missing = "ValidatingAdmissionPolicy 'param-limit.capstan.test' with binding 'param-limit' denied request: failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction";
    wait_until("the missing parameters to deny", || String::from_utf8_lossy(&c.kubectl_with(KUBECTL, &["create", "deployment", "one", "-n", "limited", "--image=busybox", "--replicas=1"]).stderr).contains(missing));

    apply(&c, "b1.json", binding("max-replicas", serde_json::json!({"policyName": "max-replicas.capstan.test", "validationActions": ["Warn"]})));
    let warned = "Warning: Validation failed for ValidatingAdmissionPolicy 'max-replicas.capstan.test' with binding 'max-replicas': failed expression: object.spec.replicas <= 5";
    wait_until("the binding to warn instead", || {
        let out = c.kubectl_with(KUBECTL, &["create", "deployment", "warned", "--image=busybox", "--replicas=6"]);
        out.status.success() && String::from_utf8_lossy(&out.stderr).contains(warned)
    });
    let listed = c.ok(&["get", "validatingadmissionpolicies"]);
    assert!(listed.lines().any(|l| l.starts_with("param-limit.capstan.test") && l.contains("v1/ConfigMap")), "kubectl's columns: {listed}");
    let e = c.fails(&["apply", "-f", c.write("bad.json", &policy("bad.capstan.test", serde_json::json!({"matchConstraints": deployments, "validations": [{"expression": "object.spec.replicas <="}]})).to_string()).to_str().unwrap()]);
    assert!(e.contains("spec.validations[0].expression") && e.contains("compilation failed"), "an expression that does not compile is refused: {e}");
}

#[test]
fn an_aggregated_api_is_proxied_discovered_and_checked_for_availability() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--no-scheduler"]);
    let client_ca = front_proxy_ca(&c);
    assert_eq!(c.ok(&["get", "configmap", "-n", "kube-system", "extension-apiserver-authentication", "-o", "jsonpath={.data.requestheader-allowed-names}"]), r#"["front-proxy-client"]"#);
    let s = start_python(c.dir.path(), "aggregated_server.py", "backend.wardle.svc", &[&client_ca]);

    // Every group-version served here has its Local APIService.
    let listed = c.ok(&["get", "apiservices"]);
    for name in ["v1.apps", "v1beta1.metrics.k8s.io", "v1.admissionregistration.k8s.io"] {
        assert!(listed.lines().any(|l| l.starts_with(name) && l.contains("Local") && l.contains("True")), "{name} is Local and available: {listed}");
    }

    c.ok(&["create", "namespace", "wardle"]);
    let slice = serve_at_service(&c, "wardle", "backend", s.port);
    apply(&c, "apiservice.json", serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1alpha1.wardle.example.com"},
        "spec": {"group": "wardle.example.com", "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                 "service": {"namespace": "wardle", "name": "backend", "port": 443}, "caBundle": s.ca_b64},
    }));
    let available = || c.ok(&["get", "apiservice", "v1alpha1.wardle.example.com", "-o", "jsonpath={.status.conditions[?(@.type==\"Available\")].status} {.status.conditions[?(@.type==\"Available\")].reason}"]);
    wait_until("the APIService to become Available", || available() == "True Passed");
    wait_until("kubectl's discovery to list flunders", || c.ok(&["api-resources", "--api-group", "wardle.example.com"]).contains("flunders"));
    let got: serde_json::Value = serde_json::from_str(&c.ok(&["get", "flunders", "-n", "wardle", "-o", "json"])).unwrap();
    let ann = &got["items"][0]["metadata"]["annotations"];
    assert_eq!(ann["seen-user"], "kubernetes-admin", "the user, in X-Remote-User: {got}");
    assert!(ann["seen-groups"].as_str().unwrap().split(',').any(|g| g == "system:masters"), "{got}");
    assert_eq!((&ann["client-cn"], &ann["had-authorization"]), (&"front-proxy-client".into(), &"no".into()), "the front-proxy certificate, no credentials passed on");
    assert!(c.ok(&["get", "flunder", "from-backend", "-n", "wardle"]).contains("from-backend"));
    assert!(c.fails(&["get", "flunder", "nothing", "-n", "wardle"]).contains("flunders.wardle.example.com \"nothing\" not found"), "the backend's own errors come through");
    let group: serde_json::Value = serde_json::from_str(&c.ok(&["get", "--raw", "/apis/wardle.example.com"])).unwrap();
    assert_eq!((&group["kind"], &group["preferredVersion"]["version"]), (&"APIGroup".into(), &"v1alpha1".into()));

    // Without endpoints, and then without a server: unavailable, and requests answer 503.
    c.ok(&["delete", "endpointslice", "backend-1", "-n", "wardle"]);
    wait_until("the APIService to lose its endpoints", || available().starts_with("False MissingEndpoints"));
    let e = c.fails(&["get", "flunders", "-n", "wardle"]);
    assert!(e.contains("the server is currently unable to handle the request") || e.contains("service unavailable"), "{e}");
    apply(&c, "slice.json", slice);
    wait_until("the APIService to be Available again", || available() == "True Passed");
    drop(s);
    wait_until("the APIService to fail its discovery check", || available() == "False FailedDiscoveryCheck");
    let listed = c.ok(&["get", "apiservices", "v1alpha1.wardle.example.com"]);
    assert!(listed.contains("wardle/backend") && listed.contains("False (FailedDiscoveryCheck)"), "{listed}");
    let e = c.fails(&["get", "--raw", "/apis/wardle.example.com/v1alpha1/namespaces/wardle/flunders"]);
    assert!(e.contains("ServiceUnavailable") && e.contains("error trying to reach service"), "a server that is gone: {e}");
}

#[test]
fn horizontal_pod_autoscalers_follow_custom_and_external_metrics_of_an_aggregated_server() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2", "--no-local-node", "--hpa-sync-seconds", "1"]);
    let client_ca = front_proxy_ca(&c);
    let s = start_python(c.dir.path(), "aggregated_server.py", "metrics.monitoring.svc", &[&client_ca]);
    c.ok(&["create", "namespace", "monitoring"]);
    serve_at_service(&c, "monitoring", "metrics", s.port);
    for (group, version) in [("custom.metrics.k8s.io", "v1beta2"), ("external.metrics.k8s.io", "v1beta1")] {
        apply(&c, &format!("{group}.json"), serde_json::json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": format!("{version}.{group}")},
            "spec": {"group": group, "version": version, "groupPriorityMinimum": 100, "versionPriority": 200,
                     "service": {"namespace": "monitoring", "name": "metrics", "port": 443}, "caBundle": s.ca_b64},
        }));
        let name = format!("{version}.{group}");
        wait_until(&format!("{name} to become Available"), || c.ok(&["get", "apiservice", &name, "-o", "jsonpath={.status.conditions[0].status}"]) == "True");
    }
    let deployment = |name: &str| format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: c, image: nginx}}]\n");
    let hpa = |name: &str, max: u32, metric: &str| format!("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: {name}}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}\n  minReplicas: 1\n  maxReplicas: {max}\n  metrics: [{metric}]\n");
    // External, AverageValue: a queue of 100 at 30 per replica needs 4.
    let f = c.write("queue.yaml", &format!("{}---\n{}", deployment("queue"), hpa("queue", 10, "{type: External, external: {metric: {name: queue_depth, selector: {matchLabels: {queue: jobs}}}, target: {type: AverageValue, averageValue: '30'}}}")));
    // Object, AverageValue: 60 hits at 20 per replica needs 3.
    let g = c.write("front.yaml", &format!("{}---\n{}", deployment("front"), hpa("front", 10, "{type: Object, object: {describedObject: {apiVersion: v1, kind: Service, name: frontend}, metric: {name: hits}, target: {type: AverageValue, averageValue: '20'}}}")));
    // Pods: 10 per pod against 5 doubles the replicas at each sync, up to the maximum of 3.
    let h = c.write("pods.yaml", &format!("{}---\n{}", deployment("api"), hpa("api", 3, "{type: Pods, pods: {metric: {name: requests_per_second}, target: {type: AverageValue, averageValue: '5'}}}")));
    for file in [&f, &g, &h] {
        c.ok(&["apply", "-f", path_str(file)]);
    }
    let replicas = |name: &str| c.ok(&["get", "deploy", name, "-o", "jsonpath={.spec.replicas}"]);
    wait_until("the external metric to scale queue to 4", || replicas("queue") == "4");
    wait_until("the object metric to scale front to 3", || replicas("front") == "3");
    wait_until("the pods metric to scale api to its maximum of 3", || replicas("api") == "3");
    let current = c.ok(&["get", "hpa", "queue", "-o", "jsonpath={.status.currentMetrics[0].external.current.averageValue}"]);
    assert_eq!(current, "25", "100 over 4 replicas");
    let listed = c.ok(&["get", "hpa", "front"]);
    assert!(listed.contains("hits: 20/20"), "kubectl's TARGETS: {listed}");
    // A metric the server does not have: the HPA says so and keeps its replicas.
    c.ok(&["patch", "hpa", "queue", "--type=merge", "-p", r#"{"spec":{"metrics":[{"type":"External","external":{"metric":{"name":"queue_depth","selector":{"matchLabels":{"queue":"other"}}},"target":{"type":"AverageValue","averageValue":"30"}}}]}}"#]);
    wait_until("the HPA to report the missing metric", || {
        c.ok(&["get", "hpa", "queue", "-o", "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].reason}"]) == "FailedGetExternalMetric"
    });
    assert_eq!(replicas("queue"), "4");
}

#[test]
fn custom_resources_of_several_versions_are_stored_once_and_served_converted() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--no-scheduler"]);
    let s = start_server(c.dir.path());
    let crd = |plural: &str, kind: &str, old: &str, conversion: serde_json::Value| serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": format!("{plural}.example.com")},
        "spec": {"group": "example.com", "scope": "Namespaced", "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()}, "conversion": conversion,
            "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                {"name": old, "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
            ]},
    });
    let raw = |path: &str| -> serde_json::Value { serde_json::from_str(&c.ok(&["get", "--raw", path])).unwrap() };

    // None: only apiVersion changes.
    apply(&c, "widgets.json", crd("widgets", "Widget", "v1beta1", serde_json::json!({"strategy": "None"})));
    wait_until("widgets to be served", || c.kubectl_with(KUBECTL, &["get", "widgets.v1beta1.example.com"]).status.success());
    apply(&c, "w.json", serde_json::json!({"apiVersion": "example.com/v1beta1", "kind": "Widget", "metadata": {"name": "w1", "namespace": "default"}, "spec": {"size": "S"}}));
    let base = "/apis/example.com/{v}/namespaces/default/widgets";
    let at = |v: &str, rest: &str| format!("{}{rest}", base.replace("{v}", v));
    assert_eq!(raw(&at("v1", "/w1"))["apiVersion"], "example.com/v1");
    assert_eq!(raw(&at("v1beta1", "/w1"))["apiVersion"], "example.com/v1beta1");
    let list = raw(&at("v1beta1", ""));
    assert_eq!((&list["apiVersion"], &list["items"][0]["apiVersion"]), (&"example.com/v1beta1".into(), &"example.com/v1beta1".into()));
    c.ok(&["patch", "widgets.v1.example.com", "w1", "--type=merge", "-p", r#"{"spec":{"size":"M"}}"#]);
    assert_eq!(raw(&at("v1beta1", "/w1"))["spec"]["size"], "M", "a patch at the other version");
    let (code, body) = http(&c.addr, "GET", &at("v1beta1", "?watch=true&resourceVersion=0&timeoutSeconds=1"), &[], b"");
    assert_eq!(code, 200);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&body).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!events.is_empty() && events.iter().all(|e| e["object"]["apiVersion"] == "example.com/v1beta1"), "watch events at the version asked: {events:?}");

    // Webhook: v1alpha1's color is v1's colour.
    let conversion = serde_json::json!({"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"], "clientConfig": {"url": format!("https://127.0.0.1:{}/convert", s.port), "caBundle": s.ca_b64}}});
    // Each version with its own printer columns: a Table reads the object at its version.
    let mut gadgets = crd("gadgets", "Gadget", "v1alpha1", conversion);
    gadgets["spec"]["versions"][0]["additionalPrinterColumns"] = serde_json::json!([
        {"name": "Colour", "type": "string", "jsonPath": ".spec.colour"},
        {"name": "Shade", "type": "string", "jsonPath": ".spec.colour", "priority": 1},
    ]);
    gadgets["spec"]["versions"][1]["additionalPrinterColumns"] = serde_json::json!([{"name": "Color", "type": "string", "jsonPath": ".spec.color"}]);
    apply(&c, "gadgets.json", gadgets);
    wait_until("gadgets to be served", || c.kubectl_with(KUBECTL, &["get", "gadgets.v1alpha1.example.com"]).status.success());
    apply(&c, "g.json", serde_json::json!({"apiVersion": "example.com/v1alpha1", "kind": "Gadget", "metadata": {"name": "g1", "namespace": "default", "labels": {"a": "b"}}, "spec": {"color": "red"}}));
    let g = |v: &str| raw(&format!("/apis/example.com/{v}/namespaces/default/gadgets/g1"));
    assert_eq!((&g("v1")["apiVersion"], &g("v1")["spec"]), (&"example.com/v1".into(), &serde_json::json!({"colour": "red"})), "stored and read at v1 through the webhook");
    assert_eq!(g("v1alpha1")["spec"], serde_json::json!({"color": "red"}));
    assert_eq!(g("v1alpha1")["metadata"]["labels"]["a"], "b");
    c.ok(&["patch", "gadgets.v1alpha1.example.com", "g1", "--type=merge", "-p", r#"{"spec":{"color":"blue"}}"#]);
    assert_eq!(g("v1")["spec"], serde_json::json!({"colour": "blue"}));
    let listed = c.ok(&["get", "gadgets.v1alpha1.example.com", "-o", "jsonpath={.items[0].spec.color}"]);
    assert_eq!(listed, "blue");
    let table = |args: &[&str]| -> Vec<Vec<String>> { c.ok(args).lines().map(|l| l.split_whitespace().map(String::from).collect()).collect() };
    assert_eq!(table(&["get", "gadgets.v1.example.com"]), [["NAME", "COLOUR"], ["g1", "blue"]], "the v1 columns over the object at v1");
    assert_eq!(table(&["get", "gadgets.v1alpha1.example.com", "g1"]), [["NAME", "COLOR"], ["g1", "blue"]], "the v1alpha1 columns over the object converted");
    assert_eq!(table(&["get", "gadgets.v1.example.com", "-o", "wide"]), [["NAME", "COLOUR", "SHADE"], ["g1", "blue", "blue"]], "priority 1 columns with -o wide");
    let widgets = c.ok(&["get", "widgets.v1.example.com"]);
    assert!(widgets.starts_with("NAME") && widgets.lines().next().unwrap().split_whitespace().collect::<Vec<_>>() == ["NAME", "AGE"], "no columns listed: Name and Age\n{widgets}");
    drop(s);
    // Stored at v1: read at v1 without the webhook; at v1alpha1 it is needed.
    assert_eq!(c.ok(&["get", "gadgets.v1.example.com", "g1", "-o", "jsonpath={.spec.colour}"]), "blue");
    let e = c.fails(&["get", "gadgets.v1alpha1.example.com", "g1", "-o", "json"]);
    assert!(e.contains("conversion webhook for gadgets.example.com failed"), "{e}");
    let e = c.fails(&["get", "gadgets.v1alpha1.example.com"]);
    assert!(e.contains("conversion webhook for gadgets.example.com failed"), "a Table needs the conversion too: {e}");
}
