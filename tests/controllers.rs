//! The controllers inside `capstan up` (and as `capstan controllers`), through real kubectl:
//! the scenario every user knows, garbage collection, node lifecycle, leader election.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn count(c: &Cluster, args: &[&str]) -> usize {
    c.ok(args).lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn a_deployment_rolls_out_heals_rolls_back_scales_and_goes() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "3", "--no-local-node"]);
    c.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=3"]);
    assert!(c.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]).contains("successfully rolled out"));
    assert_eq!(count(&c, &["get", "pods", "-l", "app=web", "--field-selector=status.phase=Running", "-o", "name"]), 3);
    // Delete a pod: it comes back. Delete the ReplicaSet: it comes back.
    let pod = c.ok(&["get", "pods", "-l", "app=web", "-o", "name"]).lines().next().unwrap().to_string();
    c.ok(&["delete", &pod]);
    wait_until("3 web pods again after deleting one", || {
        let pods = c.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
        pods.lines().count() == 3 && !pods.contains(&pod)
    });
    let rs = c.ok(&["get", "rs", "-l", "app=web", "-o", "name"]).trim().to_string();
    c.ok(&["delete", &rs]);
    wait_until("the ReplicaSet recreated with 3 ready pods", || c.ok(&["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].status.readyReplicas}"]) == "3");
    // A rolling update, its history, and a rollback that reuses the first ReplicaSet.
    c.ok(&["set", "image", "deploy/web", "nginx=nginx:1.27"]);
    assert!(c.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]).contains("successfully rolled out"));
    wait_until("only new pods after the rollout", || {
        c.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"]).split(' ').all(|i| i == "nginx:1.27")
    });
    let history = c.ok(&["rollout", "history", "deploy/web"]);
    assert!(history.contains("1 ") && history.contains("2 "), "{history}");
    c.ok(&["rollout", "undo", "deploy/web"]);
    assert!(c.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]).contains("successfully rolled out"));
    assert_eq!(count(&c, &["get", "rs", "-l", "app=web", "-o", "name"]), 2, "the rollback reused the first ReplicaSet");
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]), "nginx");
    // Scale.
    c.ok(&["scale", "deploy/web", "--replicas=5"]);
    wait_until("5 available", || c.ok(&["get", "deploy", "web", "-o", "jsonpath={.status.availableReplicas}"]) == "5");
    // Pause: a template change waits for resume.
    c.ok(&["rollout", "pause", "deploy/web"]);
    c.ok(&["set", "image", "deploy/web", "nginx=nginx:2"]);
    assert_eq!(count(&c, &["get", "rs", "-l", "app=web", "-o", "name"]), 2);
    c.ok(&["rollout", "resume", "deploy/web"]);
    assert!(c.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]).contains("successfully rolled out"));
    // Deleting the Deployment takes its ReplicaSets and pods (background propagation).
    c.ok(&["delete", "deploy", "web"]);
    wait_until("no ReplicaSets or pods left", || count(&c, &["get", "rs,pods", "-o", "name"]) == 0);
}

#[test]
fn orphan_and_foreground_deletion() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2", "--no-local-node"]);
    c.ok(&["create", "deployment", "kept", "--image=nginx", "--replicas=2"]);
    c.ok(&["rollout", "status", "deploy/kept", "--timeout=60s"]);
    c.ok(&["delete", "deploy", "kept", "--cascade=orphan"]);
    wait_until("the deployment gone and its ReplicaSet orphaned", || {
        c.kubectl_with(KUBECTL, &["get", "deploy", "kept"]).status.success() == false
            && c.ok(&["get", "rs", "-l", "app=kept", "-o", "jsonpath={.items[*].metadata.ownerReferences}"]).trim().is_empty()
    });
    assert_eq!(count(&c, &["get", "pods", "-l", "app=kept", "-o", "name"]), 2, "orphaned pods stay");
    // Foreground: the pods go first, then the ReplicaSet.
    let rs = c.ok(&["get", "rs", "-l", "app=kept", "-o", "name"]).trim().to_string();
    c.ok(&["delete", &rs, "--cascade=foreground", "--timeout=60s"]);
    wait_until("the ReplicaSet and its pods gone", || count(&c, &["get", "rs,pods", "-o", "name"]) == 0);
}

#[test]
fn services_get_endpoints_and_namespaces_a_default_service_account() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2", "--no-local-node"]);
    c.ok(&["create", "namespace", "team"]);
    wait_until("the default ServiceAccount in team", || c.kubectl_with(KUBECTL, &["get", "sa", "default", "-n", "team"]).status.success());
    c.ok(&["create", "deployment", "api", "--image=nginx", "--replicas=2", "--port=8080"]);
    c.ok(&["expose", "deployment", "api", "--port=80", "--target-port=8080"]);
    c.ok(&["rollout", "status", "deploy/api", "--timeout=60s"]);
    wait_until("2 ready addresses in the Endpoints and the EndpointSlice", || {
        let ips = c.ok(&["get", "endpoints", "api", "-o", "jsonpath={.subsets[0].addresses[*].ip}"]);
        let slice = c.ok(&["get", "endpointslices", "-l", "kubernetes.io/service-name=api", "-o", "jsonpath={.items[0].endpoints[*].conditions.ready}"]);
        ips.split_whitespace().count() == 2 && slice == "true true"
    });
    assert_eq!(c.ok(&["get", "endpoints", "api", "-o", "jsonpath={.subsets[0].ports[0].port}"]), "8080");
}

#[test]
fn an_unreachable_node_is_tainted_its_pods_evicted_and_it_recovers() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--node-monitor-grace-seconds", "2"]);
    // A node object with no kubelet behind it: its lease is never renewed.
    let f = c.write(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: ghost}\nstatus:\n  allocatable: {cpu: '4', memory: 8Gi, pods: '10'}\n  capacity: {cpu: '4', memory: 8Gi, pods: '10'}\n  conditions: [{type: Ready, status: 'True', reason: KubeletReady}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: stranded}\nspec:\n  nodeName: ghost\n  tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}]\n  containers: [{name: c, image: nginx}]\n",
    );
    c.ok(&["apply", "-f", path_str(&f)]);
    wait_until("ghost Ready=Unknown with the unreachable taint", || {
        c.ok(&["get", "node", "ghost", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints[*].key}"]).starts_with("Unknown node.kubernetes.io/unreachable")
    });
    wait_until("the stranded pod evicted after its 1 s toleration", || {
        c.kubectl_with(KUBECTL, &["get", "pod", "stranded", "-o", "jsonpath={.metadata.deletionTimestamp}"]).stdout.len() > 2
            || !c.kubectl_with(KUBECTL, &["get", "pod", "stranded"]).status.success()
    });
    // The lease comes back: the taint goes.
    let renew = {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 30;
        let out = Command::new("date").args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%S.000000Z"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let f = c.write("lease.yaml", &format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: ghost, namespace: kube-node-lease}}\nspec: {{holderIdentity: ghost, leaseDurationSeconds: 40, renewTime: \"{renew}\"}}\n"));
    c.ok(&["apply", "-f", path_str(&f)]);
    wait_until("the unreachable taint removed", || c.ok(&["get", "node", "ghost", "-o", "jsonpath={.spec.taints}"]).trim().is_empty());
}

#[test]
fn two_controller_processes_elect_one_leader_and_fail_over() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-controllers", "--hollow-nodes", "1", "--no-local-node"]);
    let start = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["controllers", "--kubeconfig", path_str(&c.kubeconfig), "--listen", "127.0.0.1:0", "--identity", id, "--log-level", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = start("a");
    // Its port is kube-controller-manager's secure port: HTTPS, nothing but /healthz for
    // callers without a client certificate of the cluster CA.
    let line = first_line(&mut a);
    let port = line.split("metrics at https://").nth(1).unwrap_or_else(|| panic!("the port on HTTPS: {line}")).split('/').next().unwrap().to_string();
    let anonymous = std::sync::Arc::new(rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(std::sync::Arc::new(apiserver::node_proxy::AnyServer)).with_no_client_auth());
    assert_eq!(https_get(&port, anonymous.clone(), "/metrics").0, 401);
    assert_eq!(https_get(&port, anonymous, "/healthz").0, 200);
    wait_until("a to lead", || c.ok(&["get", "lease", "-n", "kube-system", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"]) == "a");
    let mut b = start("b");
    c.ok(&["create", "deployment", "led", "--image=nginx", "--replicas=1"]);
    c.ok(&["rollout", "status", "deploy/led", "--timeout=60s"]);
    assert_eq!(c.ok(&["get", "lease", "-n", "kube-system", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"]), "a", "b waits");
    let _ = a.kill();
    let _ = a.wait();
    wait_until("b to take over after the lease expires", || c.ok(&["get", "lease", "-n", "kube-system", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"]) == "b");
    c.ok(&["scale", "deploy/led", "--replicas=2"]);
    wait_until("b's controllers to scale the deployment", || c.ok(&["get", "deploy", "led", "-o", "jsonpath={.status.availableReplicas}"]) == "2");
    let _ = b.kill();
    let _ = b.wait();
}

#[test]
fn jobs_daemonsets_and_statefulsets() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "3", "--no-local-node"]);
    let f = c.write(
        "w.yaml",
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: pi}
spec:
  completions: 3
  parallelism: 2
  ttlSecondsAfterFinished: 10
  template:
    metadata:
      annotations: {hollow.capstan.io/run-seconds: "0.2"}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: c, image: busybox}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: c, image: busybox}]
"#,
    );
    c.ok(&["apply", "-f", path_str(&f)]);
    c.ok(&["wait", "--for=condition=complete", "job/pi", "--timeout=60s"]);
    // ttlSecondsAfterFinished: the finished Job and its pods go.
    wait_until("the finished job removed after its ttl", || !c.kubectl_with(KUBECTL, &["get", "job", "pi"]).status.success());
    wait_until("the job's pods removed", || count(&c, &["get", "pods", "-l", "job-name=pi", "-o", "name"]) == 0);
    assert!(c.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]).contains("successfully rolled out"));
    let nodes = c.ok(&["get", "pods", "-l", "app=agent", "-o", "jsonpath={.items[*].spec.nodeName}"]);
    let mut n: Vec<&str> = nodes.split(' ').collect();
    n.sort();
    assert_eq!(n, ["hollow-0", "hollow-1", "hollow-2"], "one daemon pod per node");
    // A surge rollout: the new pod beside the old on one node at a time, the old one gone once
    // the new is ready.
    c.ok(&["patch", "ds", "agent", "-p", r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}"#]);
    c.ok(&["set", "image", "ds/agent", "c=busybox:2"]);
    assert!(c.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]).contains("successfully rolled out"));
    wait_until("one new daemon pod per node", || c.ok(&["get", "pods", "-l", "app=agent", "-o", "jsonpath={.items[*].spec.containers[0].image}"]) == "busybox:2 busybox:2 busybox:2");
    assert!(c.ok(&["rollout", "status", "sts/db", "--timeout=60s"]).contains("roll"));
    assert_eq!(c.ok(&["get", "pods", "-l", "app=db", "-o", "jsonpath={.items[*].metadata.name}"]), "db-0 db-1 db-2");
    // A partitioned update: only the ordinals at or above the partition take the new template.
    c.ok(&["patch", "sts", "db", "-p", r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}}}}"#]);
    c.ok(&["set", "image", "sts/db", "c=busybox:2"]);
    assert!(c.ok(&["rollout", "status", "sts/db", "--timeout=60s"]).contains("partitioned roll out complete: 1 new pods have been updated"));
    let images = || c.ok(&["get", "pods", "-l", "app=db", "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.containers[0].image} {end}"]);
    assert_eq!(images(), "db-0=busybox db-1=busybox db-2=busybox:2 ");
    c.ok(&["patch", "sts", "db", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#]);
    wait_until("every db pod on the new template", || images() == "db-0=busybox:2 db-1=busybox:2 db-2=busybox:2 ");
    // Scaling down removes the highest ordinals.
    c.ok(&["scale", "sts/db", "--replicas=1"]);
    wait_until("db scaled down to db-0", || c.ok(&["get", "pods", "-l", "app=db", "-o", "jsonpath={.items[*].metadata.name}"]) == "db-0");
    // A new node gets a daemon pod.
    let f = c.write("node.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: extra}\nstatus:\n  allocatable: {cpu: '4', memory: 8Gi, pods: '10'}\n");
    c.ok(&["apply", "-f", path_str(&f)]);
    wait_until("a daemon pod for the new node", || c.ok(&["get", "pods", "-l", "app=agent", "-o", "jsonpath={.items[*].spec.nodeName}"]).contains("extra"));
}

#[test]
fn a_deleted_namespace_is_terminating_until_it_is_empty() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2", "--no-local-node"]);
    c.ok(&["create", "namespace", "doomed"]);
    c.ok(&["create", "deployment", "d", "--image=nginx", "--replicas=2", "-n", "doomed"]);
    c.ok(&["rollout", "status", "deploy/d", "-n", "doomed", "--timeout=60s"]);
    c.ok(&["create", "configmap", "cm", "-n", "doomed", "--from-literal=a=b"]);
    c.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    // Terminating: nothing new may go in (or it is already gone).
    let out = c.kubectl_with(KUBECTL, &["create", "configmap", "late", "-n", "doomed"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("because it is being terminated") || e.contains("not found"), "{e}");
    wait_until("the namespace and everything in it gone", || {
        !c.kubectl_with(KUBECTL, &["get", "namespace", "doomed"]).status.success()
    });
    assert_eq!(count(&c, &["get", "pods,rs,deploy,cm", "-n", "doomed", "-o", "name"]), 0);
}

#[test]
fn drain_respects_pod_disruption_budgets() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2", "--no-local-node"]);
    c.ok(&["create", "deployment", "app", "--image=nginx", "--replicas=2"]);
    c.ok(&["rollout", "status", "deploy/app", "--timeout=60s"]);
    c.ok(&["create", "poddisruptionbudget", "app", "--selector=app=app", "--min-available=2"]);
    wait_until("the budget computed", || c.ok(&["get", "pdb", "app", "-o", "jsonpath={.status.currentHealthy}/{.status.disruptionsAllowed}"]) == "2/0");
    let node = c.ok(&["get", "pods", "-l", "app=app", "-o", "jsonpath={.items[0].spec.nodeName}"]);
    let out = c.kubectl_with(KUBECTL, &["drain", &node, "--ignore-daemonsets", "--timeout=3s"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("disruption budget"), "{e}");
    // With room for one disruption, the drain goes through and the pods move.
    c.ok(&["patch", "pdb", "app", "--type=merge", "-p", r#"{"spec":{"minAvailable":1}}"#]);
    wait_until("one disruption allowed", || c.ok(&["get", "pdb", "app", "-o", "jsonpath={.status.disruptionsAllowed}"]) == "1");
    c.ok(&["drain", &node, "--ignore-daemonsets", "--timeout=60s"]);
    wait_until("both pods on the other node and available", || {
        let nodes = c.ok(&["get", "pods", "-l", "app=app", "--field-selector=status.phase=Running", "-o", "jsonpath={.items[*].spec.nodeName}"]);
        nodes.split_whitespace().count() == 2 && !nodes.contains(&node)
    });
}

#[test]
fn a_horizontal_pod_autoscaler_follows_cpu_utilization() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2", "--no-local-node", "--hpa-sync-seconds", "1"]);
    let f = c.write(
        "d.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: nginx, resources: {requests: {cpu: 200m}}}]\n---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 1\n  maxReplicas: 5\n  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 20}}}]\n  behavior: {scaleDown: {stabilizationWindowSeconds: 0}}\n",
    );
    c.ok(&["apply", "-f", path_str(&f)]);
    // Hollow pods use half their requests: 50% against a 20% target grows to the maximum.
    wait_until("scaled up to 5", || c.ok(&["get", "hpa", "web", "-o", "jsonpath={.status.desiredReplicas}"]) == "5");
    wait_until("5 replicas available", || c.ok(&["get", "deploy", "web", "-o", "jsonpath={.status.availableReplicas}"]) == "5");
    assert_eq!(c.ok(&["get", "hpa", "web", "-o", "jsonpath={.status.currentMetrics[0].resource.current.averageUtilization}"]), "50");
    // A higher target brings it down: 50% against 100% halves the replicas, down to 3.
    c.ok(&["patch", "hpa", "web", "--type=merge", "-p", r#"{"spec":{"metrics":[{"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":100}}}]}}"#]);
    wait_until("scaled down", || c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]).parse::<i64>().unwrap_or(9) < 5);
}

#[test]
fn a_cron_job_creates_jobs_on_schedule() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "1", "--no-local-node"]);
    let cj = |name: &str, schedule: &str, tz: &str| {
        format!("apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n  schedule: '{schedule}'\n  timeZone: {tz}\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{{name: c, image: busybox}}]\n")
    };
    // A time zone is checked against the IANA database; TZ= in the schedule is refused.
    let e = c.fails(&["apply", "-f", path_str(&c.write("bad.yaml", &cj("bad", "* * * * *", "Mars/Olympus_Mons")))]);
    assert!(e.contains("spec.timeZone: Invalid value: \"Mars/Olympus_Mons\": unknown time zone Mars/Olympus_Mons"), "{e}");
    let e = c.fails(&["apply", "-f", path_str(&c.write("tz.yaml", &cj("tz", "TZ=UTC * * * * *", "UTC")))]);
    assert!(e.contains("cannot use TZ or CRON_TZ in schedule, use timeZone field instead"), "{e}");
    // Scheduled for the next minute as Tokyo reads the clock (nine hours from UTC): it runs
    // only if the schedule is read in its time zone.
    let now = jiff::Timestamp::now().as_second();
    let next = now - now.rem_euclid(60) + if now.rem_euclid(60) > 50 { 120 } else { 60 };
    let tokyo = jiff::Timestamp::from_second(next).unwrap().to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap());
    let at = format!("{} {} * * *", tokyo.minute(), tokyo.hour());
    c.ok(&["apply", "-f", path_str(&c.write("tick.yaml", &cj("tick", &at, "Asia/Tokyo")))]);
    // That minute is at most two minutes away.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    loop {
        if count(&c, &["get", "jobs", "-o", "name"]) >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for the cron job's first job");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let owner = c.ok(&["get", "jobs", "-o", "jsonpath={.items[0].metadata.ownerReferences[0].kind}/{.items[0].metadata.ownerReferences[0].name}"]);
    assert_eq!(owner, "CronJob/tick");
    wait_until("lastScheduleTime recorded", || !c.ok(&["get", "cronjob", "tick", "-o", "jsonpath={.status.lastScheduleTime}"]).is_empty());
    // Its events are about the CronJob.
    wait_until("the SuccessfulCreate event on the CronJob", || {
        c.ok(&["get", "events", "--field-selector", "involvedObject.kind=CronJob,involvedObject.name=tick,reason=SuccessfulCreate", "-o", "name"]).contains("event")
    });
}

#[test]
fn resource_quotas_are_counted_and_enforced() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "1", "--no-local-node"]);
    c.ok(&["create", "quota", "small", "--hard=pods=2,requests.cpu=1,count/configmaps=2"]);
    wait_until("the quota's status", || c.ok(&["get", "quota", "small", "-o", "jsonpath={.status.hard.pods}"]) == "2");
    let pod = |name: &str, cpu: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: nginx, resources: {{requests: {{cpu: {cpu}}}}}}}]\n");
    c.ok(&["apply", "-f", path_str(&c.write("a.yaml", &pod("a", "400m")))]);
    c.ok(&["apply", "-f", path_str(&c.write("b.yaml", &pod("b", "400m")))]);
    let e = c.fails(&["apply", "-f", path_str(&c.write("c.yaml", &pod("c", "100m")))]);
    assert!(e.contains("exceeded quota: small") && e.contains("pods=2"), "{e}");
    c.ok(&["delete", "pod", "b", "--wait=false", "--grace-period=0", "--force"]);
    let e = c.fails(&["apply", "-f", path_str(&c.write("d.yaml", &pod("d", "700m")))]);
    assert!(e.contains("requests.cpu"), "{e}");
    let no_req = "apiVersion: v1\nkind: Pod\nmetadata: {name: e}\nspec:\n  containers: [{name: c, image: nginx}]\n";
    assert!(c.fails(&["apply", "-f", path_str(&c.write("e.yaml", no_req))]).contains("must specify requests.cpu"));
    wait_until("used recomputed after the deletion", || c.ok(&["get", "quota", "small", "-o", "jsonpath={.status.used.pods}"]) == "1");
}

#[test]
fn scoped_quotas_count_and_limit_only_the_pods_in_their_scopes() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "1", "--no-local-node"]);
    c.ok(&["create", "quota", "best-effort", "--hard=pods=1", "--scopes=BestEffort"]);
    let high = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: high}\nspec:\n  hard: {pods: '5', requests.cpu: '1'}\n  scopeSelector: {matchExpressions: [{scopeName: PriorityClass, operator: In, values: [high]}]}\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n";
    c.ok(&["apply", "-f", path_str(&c.write("high.yaml", high))]);
    wait_until("the quotas' status", || c.ok(&["get", "quota", "high", "-o", "jsonpath={.status.hard.pods}"]) == "5");
    let pod = |name: &str, extra: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  {extra}containers: [{{name: c, image: nginx{}}}]\n", if extra.contains("priority") { ", resources: {requests: {cpu: 300m}}" } else { "" });
    // Best-effort pods: one fits the BestEffort quota, a second does not.
    c.ok(&["apply", "-f", path_str(&c.write("a.yaml", &pod("a", "")))]);
    let e = c.fails(&["apply", "-f", path_str(&c.write("b.yaml", &pod("b", "")))]);
    assert!(e.contains("exceeded quota: best-effort") && e.contains("pods=1"), "{e}");
    // A pod of class high is not best-effort (it requests CPU): charged on high only, which
    // then must see its requests.
    c.ok(&["apply", "-f", path_str(&c.write("h.yaml", &pod("h", "priorityClassName: high\n  ")))]);
    wait_until("high to count its pod", || c.ok(&["get", "quota", "high", "-o", "jsonpath={.status.used.pods} {.status.used.requests\\.cpu}"]) == "1 300m");
    wait_until("best-effort to count only its pod", || c.ok(&["get", "quota", "best-effort", "-o", "jsonpath={.status.used.pods}"]) == "1");
    // A scope Kubernetes does not have is refused with its words.
    let bad = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: bad}\nspec:\n  hard: {pods: '1'}\n  scopes: [Sometimes]\n";
    let e = c.fails(&["apply", "-f", path_str(&c.write("bad.yaml", bad))]);
    assert!(e.contains("spec.scopes[0]: Unsupported value: \"Sometimes\""), "{e}");
}

#[test]
fn a_job_runs_to_completion_on_the_process_runtime() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", "local"]);
    c.ok(&["create", "job", "hello", "--image=busybox", "--", "sh", "-c", "echo done by a job"]);
    c.ok(&["wait", "--for=condition=complete", "job/hello", "--timeout=60s"]);
    assert_eq!(c.ok(&["logs", "job/hello"]), "done by a job\n");
}

#[test]
fn pods_of_a_stopped_node_are_evicted_and_recreated_elsewhere() {
    // The grace must exceed the lease renewal (Kubernetes: 40 s against 10 s), or live nodes
    // would be declared unreachable too.
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2", "--no-local-node", "--node-monitor-grace-seconds", "10", "--hollow-lease-renew-seconds", "1"]);
    wait_until("2 hollow nodes", || c.ok(&["get", "nodes", "-o", "name"]).lines().count() == 2);
    c.ok(&["cordon", "hollow-1"]);
    let d = c.write(
        "d.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}]\n      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution: [{labelSelector: {matchLabels: {app: web}}, topologyKey: kubernetes.io/hostname}]\n      containers: [{name: c, image: nginx}]\n",
    );
    c.ok(&["apply", "-f", path_str(&d)]);
    // A node with no kubelet (as if stopped) whose lease was renewed 10 s ahead, so that it
    // stays schedulable until the pending replica lands on it, however slow this machine is.
    let renew = {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 10;
        let out = Command::new("date").args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%S.000000Z"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let f = c.write(
        "ghost.yaml",
        &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: ghost}}\nstatus:\n  allocatable: {{cpu: '4', memory: 8Gi, pods: '10'}}\n  capacity: {{cpu: '4', memory: 8Gi, pods: '10'}}\n  conditions: [{{type: Ready, status: 'True', reason: KubeletReady}}]\n---\napiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: ghost, namespace: kube-node-lease}}\nspec: {{holderIdentity: ghost, leaseDurationSeconds: 40, renewTime: \"{renew}\"}}\n"),
    );
    c.ok(&["apply", "-f", path_str(&f)]);
    wait_until("one web pod on the ghost node", || c.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.nodeName}"]).contains("ghost"));
    c.ok(&["uncordon", "hollow-1"]);
    // The ghost never renews a lease: unreachable, its pod evicted, a replacement runs on hollow-1.
    wait_until("a replacement Running on hollow-1", || {
        c.ok(&["get", "pods", "-l", "app=web", "--field-selector=status.phase=Running", "-o", "jsonpath={.items[*].spec.nodeName}"]).contains("hollow-1")
    });
    // Events are written by an asynchronous recorder: wait for it.
    wait_until("a TaintManagerEviction event for a web pod", || {
        c.ok(&["get", "events", "--field-selector", "reason=TaintManagerEviction", "-o", "jsonpath={.items[*].message}"]).contains("Marking for deletion Pod default/web-")
    });
}

#[test]
fn orphaned_pods_and_replicasets_are_adopted_not_duplicated() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let d = c.write(
        "web.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: nginx}]}\n",
    );
    c.ok(&["apply", "-f", path_str(&d)]);
    let pods = || c.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.metadata.name}={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].uid} {end}"]);
    wait_until("two pods owned by the deployment's ReplicaSet", || pods().split_whitespace().filter(|p| p.contains("=ReplicaSet/")).count() == 2);
    let before: Vec<String> = pods().split_whitespace().map(|p| p.split('=').next().unwrap().to_string()).collect();
    // Orphan the ReplicaSet, then its pods.
    c.ok(&["delete", "deployment", "web", "--cascade=orphan"]);
    wait_until("the deployment gone and its ReplicaSet orphaned", || {
        c.kubectl_with(KUBECTL, &["get", "deployment", "web"]).status.code() == Some(1)
            && c.ok(&["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.ownerReferences}"]).trim().is_empty()
    });
    // A new Deployment adopts the orphaned ReplicaSet instead of making another.
    c.ok(&["apply", "-f", path_str(&d)]);
    wait_until("the ReplicaSet adopted by the new deployment", || c.ok(&["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.ownerReferences[0].kind}"]).trim() == "Deployment");
    assert_eq!(c.ok(&["get", "rs", "-l", "app=web", "-o", "name"]).lines().count(), 1);
    // Now orphan the pods, and let the Deployment make its ReplicaSet again: it adopts them.
    let rs = c.ok(&["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]);
    c.ok(&["delete", "deployment", "web", "--cascade=orphan"]);
    c.ok(&["delete", "rs", &rs, "--cascade=orphan"]);
    wait_until("the pods orphaned", || {
        c.kubectl_with(KUBECTL, &["get", "rs", &rs]).status.code() == Some(1) && pods().split_whitespace().all(|p| p.ends_with("=/")) && pods().split_whitespace().count() == 2
    });
    c.ok(&["apply", "-f", path_str(&d)]);
    wait_until("the new ReplicaSet to own both pods", || pods().split_whitespace().filter(|p| p.contains("=ReplicaSet/")).count() == 2);
    let after: Vec<String> = pods().split_whitespace().map(|p| p.split('=').next().unwrap().to_string()).collect();
    assert_eq!(after, before, "the same two pods, adopted, and no new ones");
    assert_eq!(c.ok(&["get", "rs", &rs, "-o", "jsonpath={.status.replicas}"]), "2");
}

#[test]
fn replication_controllers_keep_their_replicas_scale_and_take_their_pods_with_them() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-scheduler", "--no-local-node"]);
    let rc = r#"apiVersion: v1
kind: ReplicationController
metadata: {name: old}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: old}}
    spec: {containers: [{name: c, image: busybox}]}
"#;
    let m = c.write("rc.yaml", rc);
    c.ok(&["apply", "-f", path_str(&m)]);
    // Defaulted from the template, as Kubernetes defaults it.
    assert_eq!(c.ok(&["get", "rc", "old", "-o", "jsonpath={.spec.selector.app} {.metadata.labels.app}"]), "old old");
    let pods = || c.ok(&["get", "pods", "-l", "app=old", "-o", "name"]).lines().count();
    wait_until("2 pods of the controller", || pods() == 2);
    let owner = c.ok(&["get", "pods", "-l", "app=old", "-o", "jsonpath={.items[0].metadata.ownerReferences[0].kind}"]);
    assert_eq!(owner, "ReplicationController");
    wait_until("status.replicas 2", || c.ok(&["get", "rc", "old", "-o", "jsonpath={.status.replicas}"]) == "2");
    // The scale subresource, through kubectl scale.
    c.ok(&["scale", "rc", "old", "--replicas=3"]);
    wait_until("3 pods", || pods() == 3);
    assert!(c.ok(&["get", "all"]).contains("replicationcontroller/old"), "in the `all` category");
    // A template whose labels the selector does not match is refused.
    let bad = rc.replace("name: old}", "name: bad}").replace("  replicas: 2\n", "  replicas: 1\n  selector: {app: other}\n");
    let b = c.write("bad.yaml", &bad);
    let e = c.fails(&["apply", "-f", path_str(&b)]);
    assert!(e.contains("`selector` does not match template `labels`"), "{e}");
    // Deleted: its pods go with it.
    c.ok(&["delete", "rc", "old"]);
    wait_until("the controller's pods to be collected", || pods() == 0);
}
