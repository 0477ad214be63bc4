//! The scheduler inside `capstan up`, with hollow nodes, through real kubectl.

mod common;

use std::collections::HashMap;

use common::*;

fn pods_json(c: &Cluster) -> serde_json::Value {
    serde_json::from_str(&c.ok(&["get", "pods", "-o", "json"])).unwrap()
}

/// The checker run after every end-to-end scheduling test: no node over its allocatable
/// cpu or pod count, every required anti-affinity on hostname held.
fn check_invariants(c: &Cluster) {
    let nodes: serde_json::Value = serde_json::from_str(&c.ok(&["get", "nodes", "-o", "json"])).unwrap();
    let pods = pods_json(c);
    let mut used: HashMap<String, (i64, i64)> = HashMap::new();
    for p in pods["items"].as_array().unwrap() {
        let Some(n) = p["spec"]["nodeName"].as_str() else { continue };
        let cpu: i64 = p["spec"]["containers"].as_array().unwrap().iter().map(|c| api::Quantity::parse(c["resources"]["requests"]["cpu"].as_str().unwrap_or("0")).unwrap().milli).sum();
        let e = used.entry(n.to_string()).or_default();
        e.0 += cpu;
        e.1 += 1;
    }
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap();
        let a = &n["status"]["allocatable"];
        let (cpu, count) = used.get(name).copied().unwrap_or_default();
        assert!(cpu <= api::Quantity::parse(a["cpu"].as_str().unwrap()).unwrap().milli, "{name} over its cpu");
        assert!(count <= a["pods"].as_str().unwrap().parse::<i64>().unwrap(), "{name} over its pod count");
    }
    let mut spread_nodes: Vec<&str> = pods["items"].as_array().unwrap().iter().filter(|p| p["metadata"]["labels"]["app"] == "spread").filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    let n = spread_nodes.len();
    spread_nodes.sort();
    spread_nodes.dedup();
    assert_eq!(spread_nodes.len(), n, "anti-affinity on hostname: one spread pod per node");
}

#[test]
fn pending_pods_are_scheduled_explained_and_profiled() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "4", "--no-local-node"]);
    wait_until("4 hollow nodes", || c.ok(&["get", "nodes", "-o", "name"]).lines().count() == 4);
    let mut m = String::new();
    for i in 0..12 {
        m.push_str(&format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: plain-{i}}}\nspec:\n  containers: [{{name: c, image: nginx, resources: {{requests: {{cpu: \"4\"}}}}}}]\n"));
    }
    for i in 0..5 {
        m.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: spread-{i}, labels: {{app: spread}}}}\nspec:\n  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - labelSelector: {{matchLabels: {{app: spread}}}}\n        topologyKey: kubernetes.io/hostname\n  containers: [{{name: c, image: nginx}}]\n"
        ));
    }
    m.push_str("---\napiVersion: v1\nkind: Pod\nmetadata: {name: huge}\nspec:\n  containers: [{name: c, image: nginx, resources: {requests: {cpu: \"100\"}}}]\n");
    let f = c.write("pods.yaml", &m);
    c.ok(&["apply", "-f", path_str(&f)]);
    // 12 x 4 cpu on 4 x 32 cpu: all fit; 4 of the 5 spread pods fit (one per node).
    wait_until("the plain pods and four spread pods Running", || {
        let pods = pods_json(&c);
        let running = |prefix: &str| pods["items"].as_array().unwrap().iter().filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with(prefix) && p["status"]["phase"] == "Running").count();
        running("plain-") == 12 && running("spread-") == 4
    });
    wait_until("FailedScheduling for the huge pod", || {
        c.ok(&["get", "events", "--field-selector", "involvedObject.name=huge,reason=FailedScheduling", "-o", "jsonpath={.items[*].message}"]).contains("0/4 nodes are available: 4 Insufficient cpu.")
    });
    // The event and the condition are written concurrently: wait for the condition too.
    wait_until("huge's PodScheduled condition Unschedulable", || {
        c.ok(&["get", "pod", "huge", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}"]) == "Unschedulable"
    });
    wait_until("the fifth spread pod explained", || {
        let pods = pods_json(&c);
        let pending: Vec<&str> = pods["items"].as_array().unwrap().iter().filter(|p| p["metadata"]["labels"]["app"] == "spread" && p["spec"]["nodeName"].is_null()).map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
        pending.len() == 1
            && c.ok(&["get", "events", "--field-selector", &format!("involvedObject.name={},reason=FailedScheduling", pending[0]), "-o", "jsonpath={.items[*].message}"])
                .contains("4 node(s) didn't satisfy existing pods anti-affinity rules")
    });
    // Events are written by an asynchronous recorder: wait for it.
    wait_until("a Scheduled event for plain-0", || {
        c.ok(&["get", "events", "--field-selector", "involvedObject.name=plain-0,reason=Scheduled", "-o", "jsonpath={.items[*].message}"]).starts_with("Successfully assigned default/plain-0 to hollow-")
    });
    check_invariants(&c);
    // Deleting a plain pod frees room: nothing else was waiting for cpu but huge, which still
    // does not fit; the pending spread pod stays pending (its anti-affinity still holds).
    c.ok(&["delete", "pod", "plain-0"]);
    check_invariants(&c);
    // Every attempt is visible with its timeline.
    let line = c.printed("scheduler:");
    // The components port is HTTPS with a certificate of the cluster CA: the admin's client
    // certificate is authorized (system:masters); anonymous callers reach /healthz only.
    let sched = line.split("https://").nth(1).expect("the components port on HTTPS").split('/').next().unwrap().to_string();
    let ca = std::fs::read_to_string(c.dir.path().join("pki").join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let anonymous = std::sync::Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth());
    assert_eq!(https_get(&sched, anonymous.clone(), "/metrics").0, 401);
    assert_eq!(https_get(&sched, anonymous.clone(), "/debug/pprof/profile?seconds=1").0, 401);
    assert_eq!(https_get(&sched, anonymous, "/healthz").0, 200);
    use_tls(&sched, &c.kubeconfig);
    let (code, body) = http(&sched, "GET", "/debug/scheduler/pods/default/huge", &[], b"");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let a = &v["attempts"][0];
    assert_eq!(a["result"], "Unschedulable");
    assert_eq!(a["reasons"][0][0], "Insufficient cpu");
    assert!(a["filter_us"].as_array().unwrap().iter().any(|p| p[0] == "NodeResourcesFit"));
    let (code, metrics) = http(&sched, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("scheduler_plugin_execution_duration_seconds_bucket{plugin=\"NodeResourcesFit\",extension_point=\"Filter\",le=\"0.000001\"}"));
    assert!(metrics.contains("scheduler_scheduling_attempt_duration_seconds_count{result=\"scheduled\",profile=\"default-scheduler\"} "));
    assert!(metrics.contains("capstan_scheduler_restarts_total 0"));
    assert!(a["candidates"].as_str().is_some_and(|s| !s.is_empty()), "{a}");
    // A CPU profile of the process, folded for flame graphs; bad parameters are named.
    let (code, body) = http(&sched, "GET", "/debug/pprof/profile?seconds=1", &[], b"");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let folded = String::from_utf8(body).unwrap();
    assert!(folded.lines().all(|l| l.rsplit_once(' ').is_some_and(|(_, n)| n.parse::<u64>().is_ok())), "{folded}");
    let (code, body) = http(&sched, "GET", "/debug/pprof/profile?seconds=600", &[], b"");
    assert_eq!((code, String::from_utf8_lossy(&body).trim()), (400, "seconds must be 1..=60, not 600"));
    let (code, body) = http(&sched, "GET", "/debug/pprof/profile?seconds=ten", &[], b"");
    assert_eq!((code, String::from_utf8_lossy(&body).trim()), (400, "seconds must be a whole number"));
    let (code, _) = http(&sched, "GET", "/debug/pprof/profile?seconds=1&format=pdf", &[], b"");
    assert_eq!(code, 400);
}

#[test]
fn a_deployment_free_pod_lands_on_the_local_node_and_runs() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", "local"]);
    c.ok(&["run", "hello", "--image=busybox", "--restart=Never", "--", "sh", "-c", "echo scheduled and ran"]);
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/hello", "--timeout=60s"]);
    assert_eq!(c.ok(&["get", "pod", "hello", "-o", "jsonpath={.spec.nodeName}"]), "local");
    assert_eq!(c.ok(&["logs", "hello"]), "scheduled and ran\n");
}

#[test]
fn priority_classes_and_preemption() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2", "--no-local-node"]);
    wait_until("2 hollow nodes", || c.ok(&["get", "nodes", "-o", "name"]).lines().count() == 2);
    let f = c.write(
        "pc.yaml",
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: low}\nvalue: 10\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n",
    );
    c.ok(&["apply", "-f", path_str(&f)]);
    let pod = |name: &str, class: &str, cpu: &str| {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  priorityClassName: {class}\n  containers: [{{name: c, image: nginx, resources: {{requests: {{cpu: \"{cpu}\"}}}}}}]\n")
    };
    let f = c.write("low.yaml", &(pod("low-a", "low", "30") + &pod("low-b", "low", "30")));
    c.ok(&["apply", "-f", path_str(&f)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/low-a", "pod/low-b", "--timeout=60s"]);
    assert_eq!(c.ok(&["get", "pod", "low-a", "-o", "jsonpath={.spec.priority}"]), "10");
    let f = c.write("high.yaml", &pod("high", "high", "10"));
    c.ok(&["apply", "-f", path_str(&f)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/high", "--timeout=60s"]);
    let left = c.ok(&["get", "pods", "-o", "name"]);
    assert_eq!(left.lines().filter(|l| l.starts_with("pod/low-")).count(), 1, "one victim: {left}");
    wait_until("a Preempted event", || c.ok(&["get", "events", "--field-selector", "reason=Preempted", "-o", "jsonpath={.items[*].message}"]).starts_with("Preempted by pod "));
    check_invariants(&c);
    // The Priority admission plugin refuses an unknown class.
    let f = c.write("bad.yaml", &pod("bad", "nope", "1"));
    assert!(c.fails(&["apply", "-f", path_str(&f)]).contains("no PriorityClass with name nope was found"));
}

#[test]
fn a_scheduler_configuration_file_adds_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sched.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: default-scheduler\n- schedulerName: bin-packer\n  plugins:\n    score:\n      disabled: [{name: BalancedAllocation}]\n  pluginConfig:\n  - name: NodeResourcesFit\n    args: {scoringStrategy: {type: MostAllocated}}\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let c = Cluster::start_with(dir, &["--hollow-nodes", "3", "--no-local-node", "--scheduler-config", &cfg]);
    wait_until("3 hollow nodes", || c.ok(&["get", "nodes", "-o", "name"]).lines().count() == 3);
    // Bin-packing puts consecutive pods on one node; the default spreads them.
    let mut m = String::new();
    for i in 0..3 {
        m.push_str(&format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: packed-{i}}}\nspec:\n  schedulerName: bin-packer\n  containers: [{{name: c, image: nginx, resources: {{requests: {{cpu: \"8\"}}}}}}]\n"));
    }
    for i in 0..3 {
        // One at a time, so each decision sees the previous one.
        let one = m.split("---\n").nth(i + 1).unwrap();
        let f1 = c.write(&format!("p{i}.yaml"), one);
        c.ok(&["apply", "-f", path_str(&f1)]);
        c.ok(&["wait", "--for=condition=Ready", &format!("pod/packed-{i}"), "--timeout=60s"]);
    }
    let nodes = c.ok(&["get", "pods", "-o", "jsonpath={.items[*].spec.nodeName}"]);
    let mut v: Vec<&str> = nodes.split(' ').collect();
    v.dedup();
    assert_eq!(v.len(), 1, "bin-packed onto one node: {nodes}");
}

/// `capstan scheduler` as its own process, with the kubeconfig's credentials: it schedules,
/// and its port is kube-scheduler's secure port (HTTPS with a self-signed certificate, client
/// certificates of the cluster CA, authorized by the API server; `/healthz` open).
#[test]
fn a_standalone_scheduler_schedules_and_guards_its_port() {
    use std::sync::Arc;
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-scheduler", "--hollow-nodes", "1", "--no-local-node"]);
    let mut sched = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["scheduler", "--kubeconfig", path_str(&c.kubeconfig), "--listen", "127.0.0.1:0", "--log-level", "warn"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let line = first_line(&mut sched);
    let addr = line.split("metrics at https://").nth(1).unwrap_or_else(|| panic!("the port on HTTPS: {line}")).split('/').next().unwrap().to_string();
    c.ok(&["run", "solo", "--image=nginx", "--restart=Never"]);
    c.ok(&["wait", "--for=condition=PodScheduled", "pod/solo", "--timeout=60s"]);
    assert_eq!(c.ok(&["get", "pod", "solo", "-o", "jsonpath={.spec.nodeName}"]), "hollow-0");
    use rustls::pki_types::pem::PemObject;
    // The certificate is self-signed: accepted as Prometheus scrapes such ports.
    let b = || rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(Arc::new(apiserver::node_proxy::AnyServer));
    let anonymous = Arc::new(b().with_no_client_auth());
    assert_eq!(https_get(&addr, anonymous.clone(), "/metrics").0, 401);
    assert_eq!(https_get(&addr, anonymous.clone(), "/debug/scheduler/pods/default/solo").0, 401);
    assert_eq!(https_get(&addr, anonymous, "/healthz").0, 200);
    let creds = client::kubeconfig::load(&c.kubeconfig, None).unwrap().credentials.unwrap();
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(creds.cert_pem.as_ref().unwrap().as_bytes()).map(|c| c.unwrap()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(creds.key_pem.as_ref().unwrap().as_bytes()).unwrap();
    let admin = Arc::new(b().with_client_auth_cert(chain, key).unwrap());
    let (code, body) = https_get(&addr, admin.clone(), "/metrics");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("scheduler_scheduling_attempt_duration_seconds_count{result=\"scheduled\""));
    assert_eq!(https_get(&addr, admin, "/debug/scheduler/pods/default/solo").0, 200);
    let _ = sched.kill();
    let _ = sched.wait();
}
