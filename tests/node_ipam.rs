//! The node IPAM controller: every node without a pod range gets its own share of
//! `--cluster-cidr`, none twice; a full cluster range says so on the node (Kubernetes'
//! `CIDRNotAvailable` event) until a node's deletion frees one; a range once given is fixed.

mod common;

use common::*;

fn pod_cidr(c: &Cluster, node: &str) -> String {
    c.ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])
}

#[test]
fn nodes_get_distinct_ranges_of_the_cluster_range_until_it_is_full() {
    // These nodes have no kubelet: a long grace keeps the node lifecycle controller from
    // touching them (a change to a node would wake the allocator for it anyway).
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--node-cidr-mask-size", "17", "--node-monitor-grace-seconds", "3600"]);
    // The harness gave this cluster a /16: two node ranges of /17.
    let cluster = std::fs::read_to_string(c.dir.path().join(".test-ranges")).unwrap().split(' ').next().unwrap().to_string();
    let base = cluster.trim_end_matches("0.0/16");
    for n in ["ipam-a", "ipam-b"] {
        c.ok(&["create", "-f", c.write(&format!("{n}.yaml"), &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n")).to_str().unwrap()]);
    }
    wait_until("both nodes to get a pod range", || !pod_cidr(&c, "ipam-a").is_empty() && !pod_cidr(&c, "ipam-b").is_empty());
    let (a, b) = (pod_cidr(&c, "ipam-a"), pod_cidr(&c, "ipam-b"));
    let mut got = [a.clone(), b.clone()];
    got.sort();
    assert_eq!(got, [format!("{base}0.0/17"), format!("{base}128.0/17")], "two halves of {cluster}");
    assert_eq!(c.ok(&["get", "node", "ipam-a", "-o", "jsonpath={.spec.podCIDRs[0]}"]), a);
    // Once given, a range does not change.
    let refused = c.fails(&["patch", "node", "ipam-a", "-p", &format!(r#"{{"spec":{{"podCIDR":"{b}"}}}}"#)]);
    assert!(refused.contains("spec.podCIDR") && refused.contains("immutable"), "{refused}");
    // A third node finds the range full.
    c.ok(&["create", "-f", c.write("c.yaml", "apiVersion: v1\nkind: Node\nmetadata:\n  name: ipam-c\n").to_str().unwrap()]);
    wait_until("the CIDRNotAvailable event for ipam-c", || {
        c.ok(&["get", "events", "-n", "default", "--field-selector", "involvedObject.name=ipam-c,reason=CIDRNotAvailable", "-o", "name"]).contains("event")
    });
    assert_eq!(pod_cidr(&c, "ipam-c"), "");
    // A deleted node's range goes to the one waiting.
    c.ok(&["delete", "node", "ipam-a"]);
    wait_until("ipam-c to get ipam-a's range", || pod_cidr(&c, "ipam-c") == a);
    assert_eq!(pod_cidr(&c, "ipam-b"), b);
}
