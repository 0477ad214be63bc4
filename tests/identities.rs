//! Every component as its own user, end to end: with `capstan up` over TLS, the audit log
//! shows the scheduler binding pods as `system:kube-scheduler`, each controller writing as
//! its own ServiceAccount in `kube-system` (as kube-controller-manager with
//! `--use-service-account-credentials`), and each hollow node writing as `system:node:NAME`
//! with its own node token, confined by the Node authorizer and NodeRestriction; the
//! components being in the API server's process, their requests are calls into it, checked
//! as any other.

mod common;

use common::*;

fn audit_events(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).expect("each line is a JSON event")).collect()
}

fn wrote(evs: &[serde_json::Value], user: &str, verb: &str, resource: &str, subresource: &str) -> bool {
    evs.iter().any(|e| {
        e["user"]["username"] == user
            && e["verb"] == verb
            && e["objectRef"]["resource"] == resource
            && e["objectRef"]["subresource"].as_str().unwrap_or("") == subresource
            && e["stage"] == "ResponseComplete"
            && e["responseStatus"]["code"].as_u64().is_some_and(|c| c < 300)
    })
}

#[test]
fn each_component_writes_as_its_own_user_and_a_node_token_only_reaches_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n").unwrap();
    let log = dir.path().join("audit.log");
    let c = Cluster::start_with(dir, &["--no-local-node", "--hollow-nodes", "2", "--audit-policy-file", path_str(&policy), "--audit-log-path", path_str(&log)]);
    c.ok(&["create", "deployment", "web", "--image=registry.k8s.io/pause:3.10", "--replicas=2"]);
    wait_until("the deployment's two pods Running", || c.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.phase}"]) == "Running Running");
    let sa = |name: &str| format!("system:serviceaccount:kube-system:{name}");
    wait_until("each component's writes in the audit log, as its own user", || {
        let evs = audit_events(&log);
        wrote(&evs, &sa("deployment-controller"), "create", "replicasets", "")
            && wrote(&evs, &sa("replicaset-controller"), "create", "pods", "")
            && wrote(&evs, "system:kube-scheduler", "create", "pods", "binding")
            && (0..2).any(|i| wrote(&evs, &format!("system:node:hollow-{i}"), "patch", "pods", "status"))
            && wrote(&evs, "system:node:hollow-0", "create", "nodes", "")
            && wrote(&evs, "system:node:hollow-1", "create", "leases", "")
            && wrote(&evs, &sa("service-account-controller"), "create", "serviceaccounts", "")
    });
    // Those writes were calls into the API server, not loopback connections (`client::local`):
    // the audit log above shows they were authenticated and audited as over the network.
    let metrics = c.ok(&["get", "--raw", "/metrics"]);
    let in_process = metrics.lines().find_map(|l| l.strip_prefix("capstan_in_process_requests_total ")).and_then(|n| n.trim().parse::<u64>().ok());
    assert!(in_process.is_some_and(|n| n > 0), "the components' requests went in-process: {in_process:?}");
    // Nothing of that went as the process's catch-all identity.
    let evs = audit_events(&log);
    for (verb, resource, sub) in [("create", "pods", ""), ("create", "pods", "binding"), ("patch", "pods", "status"), ("create", "replicasets", ""), ("create", "nodes", "")] {
        assert!(!wrote(&evs, "system:capstan-components", verb, resource, sub), "{verb} {resource}/{sub} went as system:capstan-components");
    }

    // hollow-0's token, read as the admin who may read kube-system's Secrets.
    let secrets: serde_json::Value = serde_json::from_str(&c.ok(&["get", "secrets", "-n", "kube-system", "-l", "capstan.io/hollow-nodes=hollow", "-o", "json"])).unwrap();
    use base64::Engine;
    let field = |s: &serde_json::Value, k: &str| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s["data"][k].as_str().unwrap()).unwrap()).unwrap();
    let items = secrets["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "one node token per hollow node");
    let mine = items.iter().find(|s| field(s, "node-name") == "hollow-0").expect("hollow-0's token");
    let token = format!("{}.{}", field(mine, "token-id"), field(mine, "token-secret"));
    let out = with_token(&c, &token, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "system:node:hollow-0", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(with_token(&c, &token, &["label", "node", "hollow-0", "capstan-test=mine"]).status.success(), "a node labels itself");
    let other = with_token(&c, &token, &["label", "node", "hollow-1", "capstan-test=theirs"]);
    assert!(!other.status.success() && String::from_utf8_lossy(&other.stderr).contains("forbidden"), "{}", String::from_utf8_lossy(&other.stderr));
    let all = with_token(&c, &token, &["get", "pods", "-A"]);
    assert!(!all.status.success() && String::from_utf8_lossy(&all.stderr).contains("forbidden"), "a node lists only its own pods: {}", String::from_utf8_lossy(&all.stderr));
    // Deleting the Secret revokes the token.
    c.ok(&["delete", "secret", "-n", "kube-system", mine["metadata"]["name"].as_str().unwrap()]);
    let gone = with_token(&c, &token, &["get", "node", "hollow-0"]);
    assert!(!gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("Unauthorized"), "{}", String::from_utf8_lossy(&gone.stderr));
}

/// Every controller that writes has its role and binding among the defaults.
#[test]
fn every_controller_identity_has_a_default_role() {
    let roles = apiserver::default_roles::defaults();
    for ctl in controllers::identity::Ctl::ALL {
        let sa = ctl.service_account();
        let bound = roles.iter().any(|(kind, b)| {
            (*kind == "clusterrolebindings" || *kind == "rolebindings")
                && b["roleRef"]["name"] == format!("system:controller:{sa}")
                && b["subjects"].as_array().is_some_and(|s| s.iter().any(|x| x["kind"] == "ServiceAccount" && x["name"] == sa && x["namespace"] == "kube-system"))
        });
        assert!(bound, "no default binding for the {sa} ServiceAccount");
    }
}

/// A legacy Secret-based ServiceAccount token, made only when a user asks for one: the
/// Secret is filled (token, namespace, ca.crt, the ServiceAccount's uid) and its token
/// authenticates as the ServiceAccount until the Secret or the ServiceAccount goes.
#[test]
fn a_legacy_service_account_token_secret_is_filled_and_dies_with_its_secret() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--no-scheduler", "--no-controllers"]);
    c.ok(&["create", "serviceaccount", "ci"]);
    let secret = |name: &str, sa: &str| {
        c.write(&format!("{name}.yaml"), &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  annotations: {{kubernetes.io/service-account.name: {sa}}}\ntype: kubernetes.io/service-account-token\n"))
    };
    c.ok(&["apply", "-f", path_str(&secret("ci-token", "ci"))]);
    use base64::Engine;
    let field = |k: &str| {
        let v = c.ok(&["get", "secret", "ci-token", "-o", &format!("jsonpath={{.data.{}}}", k.replace('.', "\\."))]);
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.trim()).unwrap()).unwrap()
    };
    let token = field("token");
    assert_eq!(field("namespace"), "default");
    assert!(field("ca.crt").contains("BEGIN CERTIFICATE"));
    let uid = c.ok(&["get", "serviceaccount", "ci", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(c.ok(&["get", "secret", "ci-token", "-o", "jsonpath={.metadata.annotations.kubernetes\\.io/service-account\\.uid}"]), uid);
    let who = with_token(&c, &token, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(String::from_utf8_lossy(&who.stdout), "system:serviceaccount:default:ci", "{}", String::from_utf8_lossy(&who.stderr));
    // One naming no ServiceAccount is refused.
    let err = c.fails(&["apply", "-f", path_str(&secret("ghost-token", "ghost"))]);
    assert!(err.contains("ghost"), "{err}");
    // Deleting the Secret revokes the token.
    c.ok(&["delete", "secret", "ci-token"]);
    // kubectl says 401 either way, depending on whether discovery or the request met it.
    wait_until("the deleted Secret's token refused (401)", || {
        let o = with_token(&c, &token, &["get", "pods"]);
        let err = String::from_utf8_lossy(&o.stderr);
        !o.status.success() && (err.contains("Unauthorized") || err.contains("asked for the client to provide credentials"))
    });
}
