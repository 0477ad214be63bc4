//! Hollow nodes inside `capstan up`, through real kubectl.

mod common;

use common::*;

#[test]
fn hollow_nodes_register_stay_ready_and_run_and_remove_their_pods() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "3", "--no-local-node"]);
    // The API answers before the nodes (each first gets its node token) have registered.
    wait_until("3 hollow nodes registered", || c.ok(&["get", "nodes", "-o", "name"]).lines().count() == 3);
    c.ok(&["wait", "--for=condition=Ready", "node/hollow-0", "node/hollow-1", "node/hollow-2", "--timeout=60s"]);
    let zones = c.ok(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.labels.topology\\.kubernetes\\.io/zone}"]);
    assert_eq!(zones, "zone-0 zone-1 zone-2");
    // Each lease is created after its node: wait for the three.
    wait_until("3 node leases", || c.ok(&["get", "leases", "-n", "kube-node-lease", "-o", "name"]).lines().count() == 3);
    c.ok(&["run", "p1", "--image=nginx", r#"--overrides={"spec":{"nodeName":"hollow-1"}}"#]);
    c.ok(&["wait", "--for=condition=Ready", "pod/p1", "--timeout=60s"]);
    assert_eq!(c.ok(&["get", "pod", "p1", "-o", "jsonpath={.status.phase} {.status.containerStatuses[0].ready}"]), "Running true");
    // A bound pod is deleted gracefully; the hollow kubelet finishes it, kubectl waits for that.
    assert!(c.ok(&["delete", "pod", "p1", "--timeout=60s"]).contains("deleted"));
    assert!(c.fails(&["get", "pod", "p1"]).contains("NotFound"));
}

#[test]
fn a_thousand_hollow_nodes_register_renew_their_leases_and_run_pods() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "1000", "--no-local-node", "--hollow-lease-renew-seconds", "2"]);
    // A thousand registrations and renewals share two cores with the other tests: a longer limit.
    let limit = std::time::Duration::from_secs(180);
    wait_until_within(limit, "1000 hollow nodes registered and Ready", || {
        let ready = c.ok(&["get", "nodes", "-o", "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"]);
        ready.lines().count() == 1000 && ready.lines().all(|l| l == "True")
    });
    let start = c.ok(&["get", "lease", "-n", "kube-node-lease", "hollow-999", "-o", "jsonpath={.spec.renewTime}"]);
    // Every lease is renewed (the node lifecycle controller would otherwise mark it unreachable).
    wait_until_within(limit, "every hollow node's lease to be renewed", || {
        let times = c.ok(&["get", "leases", "-n", "kube-node-lease", "-o", "jsonpath={range .items[*]}{.spec.renewTime}{\"\\n\"}{end}"]);
        times.lines().count() == 1000 && times.lines().all(|t| t > start.as_str())
    });
    let mut manifest = String::new();
    for i in 0..20 {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec:\n  nodeName: hollow-{}\n  containers: [{{name: c, image: nginx}}]\n",
            i * 50
        ));
    }
    let m = c.write("pods.yaml", &manifest);
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pods", "--all", "--timeout=60s"]);
    let phases = c.ok(&["get", "pods", "-o", "jsonpath={.items[*].status.phase}"]);
    assert_eq!(phases.split(' ').filter(|p| *p == "Running").count(), 20);
}

#[test]
fn hollow_pods_with_a_run_time_succeed_and_report_usage() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2", "--no-local-node"]);
    let m = c.write(
        "job.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: short\n  annotations: {hollow.capstan.io/run-seconds: \"1\"}\nspec:\n  nodeName: hollow-0\n  restartPolicy: Never\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: 200m, memory: 64Mi}}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: long}\nspec:\n  nodeName: hollow-1\n  containers: [{name: c, image: nginx, resources: {requests: {cpu: 100m, memory: 32Mi}}}]\n",
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/short", "--timeout=60s"]);
    c.ok(&["wait", "--for=condition=Ready", "pod/long", "--timeout=60s"]);
    // Synthetic usage: half the requests.
    let top = c.ok(&["top", "pod", "long", "--no-headers"]);
    assert!(top.contains("50m") && top.contains("16Mi"), "{top}");
    let nodes = c.ok(&["top", "node", "--no-headers"]);
    assert_eq!(nodes.lines().count(), 2, "{nodes}");
}

/// A hollow pod's status write that the API server refuses is written again later, as a real
/// kubelet's next sync would: here a ValidatingAdmissionPolicy refuses the status of pods
/// labelled `hold` until the label is taken off.
#[test]
fn a_refused_status_write_of_a_hollow_pod_is_tried_again() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "1", "--no-local-node"]);
    wait_until("the hollow node registered", || c.ok(&["get", "nodes", "-o", "name"]).lines().count() == 1);
    let apply = |name: &str, doc: serde_json::Value| c.ok(&["apply", "-f", path_str(&c.write(name, &doc.to_string()))]);
    apply("policy.json", serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": "hold.capstan.test"},
        "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods/status"]}]},
            "validations": [{"expression": "!has(object.metadata.labels) || !('hold' in object.metadata.labels)", "message": "held"}],
        },
    }));
    apply("binding.json", serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": "hold"},
        "spec": {"policyName": "hold.capstan.test", "validationActions": ["Deny"]},
    }));
    // In force once a status write of a held pod that no node runs is refused.
    c.ok(&["run", "probe", "--image=nginx", "--labels=hold=yes", r#"--overrides={"spec":{"schedulerName":"nobody"}}"#]);
    wait_until("the policy to refuse a held pod's status", || {
        let out = c.kubectl_with(KUBECTL, &["patch", "pod", "probe", "--subresource=status", "--type=merge", "-p", r#"{"status":{"message":"x"}}"#]);
        String::from_utf8_lossy(&out.stderr).contains("held")
    });
    let refused = || {
        let m = c.ok(&["get", "--raw", "/metrics"]);
        m.lines().filter(|l| l.starts_with(r#"apiserver_request_total{verb="patch",resource="pods/status",code="422"}"#)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum::<u64>()
    };
    let before = refused();
    c.ok(&["run", "p", "--image=nginx", "--labels=hold=yes", r#"--overrides={"spec":{"nodeName":"hollow-0"}}"#]);
    wait_until("the hollow kubelet's status write to be refused", || refused() > before);
    assert_eq!(c.ok(&["get", "pod", "p", "-o", "jsonpath={.status.phase}"]), "Pending");
    c.ok(&["label", "pod", "p", "hold-"]);
    c.ok(&["wait", "--for=condition=Ready", "pod/p", "--timeout=60s"]);
    assert_eq!(c.ok(&["get", "pod", "p", "-o", "jsonpath={.status.phase}"]), "Running");
}
