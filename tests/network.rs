//! Pods with networks of their own on the real node of `capstan up`, checked with kubectl.

mod common;

use common::*;

const NODE: &str = "node-n";

fn jsonpath(c: &Cluster, pod: &str, path: &str) -> String {
    c.ok(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
}

/// The network namespaces on this host (`ip netns list`).
fn namespaces() -> String {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().expect("iproute2's ip (CI installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pods_get_their_own_addresses_reach_each_other_and_the_api_and_leave_nothing_behind() {
    let range = pod_range();
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE, "--cluster-cidr", &range]);
    let server = |name: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: python
    command: ["python3", "-m", "http.server", "8080"]
    readinessProbe: {{httpGet: {{port: 8080}}, periodSeconds: 1}}
"#
        )
    };
    let host_net = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: hostnet}}\nspec:\n  nodeName: {NODE}\n  hostNetwork: true\n  terminationGracePeriodSeconds: 1\n  containers: [{{name: c, image: busybox, command: [sh, -c, 'while :; do sleep 1; done']}}]\n"
    );
    let m = c.write("pods.yaml", &format!("{}---\n{}---\n{host_net}", server("a"), server("b")));
    c.ok(&["apply", "-f", path_str(&m)]);
    // Both listen on 8080: each in its own namespace. Their readiness probes reach them at
    // their addresses.
    c.ok(&["wait", "--for=condition=Ready", "pod/a", "pod/b", "pod/hostnet", "--timeout=60s"]);
    let (ip_a, ip_b) = (jsonpath(&c, "a", "{.status.podIP}"), jsonpath(&c, "b", "{.status.podIP}"));
    let prefix = range.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
    assert!(ip_a.starts_with(&prefix) && ip_b.starts_with(&prefix) && ip_a != ip_b, "{ip_a} {ip_b} in {range}");
    assert_eq!(jsonpath(&c, "hostnet", "{.status.podIP}"), jsonpath(&c, "hostnet", "{.status.hostIP}"), "hostNetwork keeps the node's");
    // a reaches b by address.
    let fetch = format!("import urllib.request; print(urllib.request.urlopen('http://{ip_b}:8080/', timeout=10).status)");
    assert_eq!(c.ok(&["exec", "a", "--", "python3", "-c", &fetch]).trim(), "200");
    // Its /etc/hosts names it at its address.
    let hosts = c.ok(&["exec", "a", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{ip_a}\ta\n")), "{hosts}");
    // The API, which listens on the node's loopback, is relayed to the pod's gateway.
    let api = "import os, ssl, urllib.request; u = 'https://%s:%s/version' % (os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']); print(urllib.request.urlopen(u, context=ssl._create_unverified_context(), timeout=10).status)";
    assert_eq!(c.ok(&["exec", "a", "--", "python3", "-c", api]).trim(), "200");
    // Deleting the pods removes their namespaces.
    let uid_a = jsonpath(&c, "a", "{.metadata.uid}");
    assert!(namespaces().contains(&uid_a), "{}", namespaces());
    c.ok(&["delete", "pod", "a", "b", "hostnet", "--wait=true", "--timeout=60s"]);
    wait_until("pod a's network namespace to be removed", || !namespaces().contains(&uid_a));
}
