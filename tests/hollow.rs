//! Hollow nodes inside `capstan up`, through real kubectl.

mod common;

use common::*;

#[test]
fn hollow_nodes_register_stay_ready_and_run_and_remove_their_pods() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "3"]);
    c.ok(&["wait", "--for=condition=Ready", "node/hollow-0", "node/hollow-1", "node/hollow-2", "--timeout=60s"]);
    let zones = c.ok(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.labels.topology\\.kubernetes\\.io/zone}"]);
    assert_eq!(zones, "zone-0 zone-1 zone-2");
    assert_eq!(c.ok(&["get", "leases", "-n", "kube-node-lease", "-o", "name"]).lines().count(), 3);
    c.ok(&["run", "p1", "--image=nginx", r#"--overrides={"spec":{"nodeName":"hollow-1"}}"#]);
    c.ok(&["wait", "--for=condition=Ready", "pod/p1", "--timeout=60s"]);
    assert_eq!(c.ok(&["get", "pod", "p1", "-o", "jsonpath={.status.phase} {.status.containerStatuses[0].ready}"]), "Running true");
    // A bound pod is deleted gracefully; the hollow kubelet finishes it, kubectl waits for that.
    assert!(c.ok(&["delete", "pod", "p1", "--timeout=60s"]).contains("deleted"));
    assert!(c.fails(&["get", "pod", "p1"]).contains("NotFound"));
}
