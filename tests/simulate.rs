//! The scheduling simulator against a live cluster: `capstan scheduler snapshot` of hollow
//! nodes, a workload simulated on it (twice: the same placements), and the same pods placed
//! one at a time by a live scheduler that listed the same nodes landing where the simulation
//! put them. Bad files are refused with their position.

mod common;

use common::*;

const CAPSTAN: &str = env!("CARGO_BIN_EXE_capstan");

const WORKLOAD: &str = "name: agree
phases:
- createNodes: {count: nodes}
- createNamespace: {name: small}
- createPods: {namespace: small, count: 8, template: {spec: {containers: [{name: c, image: pause, resources: {requests: {cpu: '3', memory: 1Gi}}}]}}}
- createNamespace: {name: big}
- createPods: {namespace: big, count: 6, template: {spec: {containers: [{name: c, image: pause, resources: {requests: {cpu: '11', memory: 8Gi}}}]}}}
- waitPodsRunning: {namespace: big, expected: 6}
";

fn capstan(args: &[&str]) -> std::process::Output {
    std::process::Command::new(CAPSTAN).args(args).output().unwrap()
}

#[test]
fn a_simulation_places_pods_where_a_live_scheduler_does_and_twice_alike() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-scheduler", "--no-local-node", "--hollow-nodes", "5"]);
    wait_until("5 hollow nodes Ready", || c.ok(&["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"]).split_whitespace().filter(|s| *s == "True").count() == 5);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snapshot.json");
    let out = capstan(&["scheduler", "snapshot", "--kubeconfig", path_str(&c.kubeconfig)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&snap, &out.stdout).unwrap();
    let w = dir.path().join("w.yaml");
    std::fs::write(&w, WORKLOAD).unwrap();
    let simulate = |json: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["scheduler", "simulate", "--cluster", path_str(&snap), "--workload", path_str(&w), "--report-json", path_str(json)];
        args.extend_from_slice(extra);
        let out = capstan(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
        (v, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let html = dir.path().join("r.html");
    let (first, said) = simulate(&dir.path().join("a.json"), &["--report-html", path_str(&html)]);
    let (second, _) = simulate(&dir.path().join("b.json"), &[]);
    assert_eq!(first["placements"], second["placements"], "two runs, the same placements");
    assert!(said.contains("14 pods on 5 nodes: 14 scheduled"), "{said}");
    assert!(said.contains("not simulated: createNodes (the snapshot's nodes are used), waitPodsRunning"), "{said}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("filter/NodeResourcesFit") && !page.contains("<script"), "an offline page with the plugins' times");

    // The live scheduler, started now that the nodes are registered, lists them in the
    // snapshot's order; each pod is created once the one before it is bound.
    let mut sched = std::process::Command::new(CAPSTAN)
        .args(["scheduler", "--kubeconfig", path_str(&c.kubeconfig), "--listen", "127.0.0.1:0", "--log-level", "warn"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _ = first_line(&mut sched);
    c.ok(&["create", "namespace", "small"]);
    c.ok(&["create", "namespace", "big"]);
    for p in first["placements"].as_array().unwrap() {
        let (ns, name) = p["pod"].as_str().unwrap().split_once('/').unwrap();
        let (cpu, mem) = if ns == "small" { ("3", "1Gi") } else { ("11", "8Gi") };
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: bare, loadgen: 'true'}}}}\nspec:\n  containers: [{{name: c, image: pause, resources: {{requests: {{cpu: '{cpu}', memory: {mem}}}}}}}]\n"
        );
        c.ok(&["create", "-f", path_str(&c.write(&format!("{ns}-{name}.yaml"), &manifest))]);
        let mut bound = String::new();
        wait_until(&format!("{ns}/{name} to be bound"), || {
            bound = c.ok(&["get", "pod", "-n", ns, name, "-o", "jsonpath={.spec.nodeName}"]);
            !bound.is_empty()
        });
        assert_eq!(Some(bound.as_str()), p["node"].as_str(), "{ns}/{name}: live against simulated");
    }
    let _ = sched.kill();
    let _ = sched.wait();

    // Another configuration on the same input, compared.
    let most = dir.path().join("most.yaml");
    std::fs::write(&most, "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: packer\n  pluginConfig:\n  - name: NodeResourcesFit\n    args: {scoringStrategy: {type: MostAllocated}}\n").unwrap();
    let (both, said) = simulate(&dir.path().join("c.json"), &["--compare", path_str(&most)]);
    assert_eq!(both["reports"][1]["profile"], "packer");
    assert!(!both["differences"].as_array().unwrap().is_empty(), "packing places differently: {said}");

    // Bad input: refused with the file, the position and the reason.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"kind\": \"SchedulerSnapshot\",\n \"nodes\": [1,}").unwrap();
    let out = capstan(&["scheduler", "simulate", "--cluster", path_str(&bad), "--workload", path_str(&w)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json: line 2 column"), "{err}");
    std::fs::write(&w, "phases:\n- createPods: {count: lots}\n").unwrap();
    let out = capstan(&["scheduler", "simulate", "--cluster", path_str(&snap), "--workload", path_str(&w)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown count \"lots\""), "{}", String::from_utf8_lossy(&out.stderr));
}
