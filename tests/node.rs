//! The local node of `capstan up`: pods as local processes, checked with real kubectl.

mod common;

use common::*;

const NODE: &str = "node-a";

fn cluster() -> Cluster {
    Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE, "--crash-backoff-seconds", "1", "--usage-sample-seconds", "1"])
}

fn jsonpath(c: &Cluster, pod: &str, path: &str) -> String {
    c.ok(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
}

/// The pid in a container's `containerID` (`process://<node>/<pid>`).
fn pid_of(c: &Cluster, pod: &str) -> i32 {
    let id = jsonpath(c, pod, "{.status.containerStatuses[0].containerID}");
    id.rsplit('/').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no pid in containerID {id:?}"))
}

/// Alive and not a zombie.
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

#[test]
fn a_pod_runs_prints_with_its_environment_and_succeeds() {
    let c = cluster();
    c.ok(&["wait", "--for=condition=Ready", &format!("node/{NODE}"), "--timeout=60s"]);
    c.ok(&["create", "configmap", "cfg", "--from-literal=greeting=hello"]);
    c.ok(&["create", "secret", "generic", "sec", "--from-literal=password=hunter2"]);
    let m = c.write(
        "job.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: printer, labels: {{app: demo}}}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  initContainers:
  - name: prepare
    image: busybox
    command: ["sh", "-c", "echo prepared > shared.txt"]
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c"]
    args: ["echo $(GREETING) from $POD $APP; echo secret=$PASSWORD; cat shared.txt; echo to-stderr >&2"]
    env:
    - name: GREETING
      valueFrom: {{configMapKeyRef: {{name: cfg, key: greeting}}}}
    - name: PASSWORD
      valueFrom: {{secretKeyRef: {{name: sec, key: password}}}}
    - name: POD
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    - name: APP
      valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['app']"}}}}
"#
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/printer", "--timeout=60s"]);
    // stdout and stderr are two pipes read concurrently (as with a CRI runtime), so the order
    // between the streams is whichever pump read first; within a stream it is kept.
    let all = c.ok(&["logs", "printer"]);
    let stdout: Vec<&str> = all.lines().filter(|l| *l != "to-stderr").collect();
    assert_eq!(stdout, ["hello from printer demo", "secret=hunter2", "prepared"], "{all}");
    assert_eq!(all.lines().filter(|l| *l == "to-stderr").count(), 1, "{all}");
    let last = all.lines().last().unwrap().to_string();
    assert_eq!(c.ok(&["logs", "printer", "-c", "main", "--tail=1"]), format!("{last}\n"));
    let ts = c.ok(&["logs", "printer", "--timestamps", "--tail=1"]);
    assert!(ts.starts_with("20") && ts.trim_end().ends_with(&format!(" {last}")), "{ts}");
    assert_eq!(jsonpath(&c, "printer", "{.status.initContainerStatuses[0].state.terminated.reason}"), "Completed");
    assert_eq!(jsonpath(&c, "printer", "{.status.containerStatuses[0].state.terminated.exitCode}"), "0");
    let table = c.ok(&["get", "pod", "printer"]);
    assert!(table.contains("Completed"), "{table}");
    // Without its ConfigMap a container cannot start, and says why.
    c.ok(&["run", "noconfig", "--image=busybox", "--restart=Never", &format!(r#"--overrides={{"spec":{{"nodeName":"{NODE}","containers":[{{"name":"noconfig","image":"busybox","envFrom":[{{"configMapRef":{{"name":"absent"}}}}]}}]}}}}"#)]);
    wait_until("noconfig waiting with CreateContainerConfigError", || {
        jsonpath(&c, "noconfig", "{.status.containerStatuses[0].state.waiting.reason}") == "CreateContainerConfigError"
    });
    // A wrong container name is the API's BadRequest.
    assert!(c.fails(&["logs", "printer", "-c", "nope"]).contains("container nope is not valid for pod printer"));
}

#[test]
fn crashes_back_off_and_probes_restart_and_gate_readiness() {
    let c = cluster();
    // gated's readiness is a file the test creates (not a port, which another process could take).
    let flag = c.dir.path().join("gated-ready");
    let m = c.write(
        "pods.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  nodeName: {NODE}
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "echo attempt; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {{name: unhealthy}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "touch alive; while :; do sleep 1; done"]
    livenessProbe:
      exec: {{command: ["sh", "-c", "test -e alive && rm alive"]}}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: gated}}
spec:
  nodeName: {NODE}
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "while :; do sleep 1; done"]
    readinessProbe:
      exec: {{command: ["test", "-e", "{flag}"]}}
      periodSeconds: 1
"#,
            flag = flag.display()
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    wait_until("crasher in CrashLoopBackOff with restartCount >= 2", || {
        let s = jsonpath(&c, "crasher", "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].restartCount}");
        s.split_once(' ').is_some_and(|(r, n)| r == "CrashLoopBackOff" && n.parse::<u32>().unwrap_or(0) >= 2)
    });
    assert_eq!(jsonpath(&c, "crasher", "{.status.containerStatuses[0].lastState.terminated.exitCode}"), "3");
    assert_eq!(c.ok(&["logs", "crasher", "--previous"]), "attempt\n");
    // The table shows the back-off while the container waits (it alternates with restarts).
    wait_until("kubectl get pod to show CrashLoopBackOff", || c.ok(&["get", "pod", "crasher"]).contains("CrashLoopBackOff"));
    wait_until("the liveness probe to restart a container", || jsonpath(&c, "unhealthy", "{.status.containerStatuses[0].restartCount}").parse::<u32>().unwrap_or(0) >= 1);
    wait_until("Killing and Unhealthy events for the liveness failure", || {
        let ev = c.ok(&["get", "events", "--field-selector", "involvedObject.name=unhealthy", "-o", "jsonpath={.items[*].reason}"]);
        ev.contains("Killing") && ev.contains("Unhealthy")
    });
    // The readiness probe fails while the file is absent: Running, not Ready.
    wait_until("gated Running with a failed readiness probe", || {
        let ev = c.ok(&["get", "events", "--field-selector", "involvedObject.name=gated,reason=Unhealthy", "-o", "name"]);
        jsonpath(&c, "gated", "{.status.phase}") == "Running" && !ev.trim().is_empty()
    });
    assert_eq!(jsonpath(&c, "gated", "{.status.conditions[?(@.type==\"Ready\")].status}"), "False");
    std::fs::write(&flag, "").unwrap();
    c.ok(&["wait", "--for=condition=Ready", "pod/gated", "--timeout=60s"]);
}

#[test]
fn delete_stops_the_process_within_its_grace_period_and_logs_follow() {
    let c = cluster();
    let m = c.write(
        "pods.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap '' TERM; i=0; while :; do i=$((i+1)); echo line $i; sleep 0.2; done"]
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  nodeName: {NODE}
  containers:
  - name: nginx
    image: nginx
"#
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/stubborn", "pod/web", "--timeout=60s"]);
    // kubectl logs -f follows a running container.
    let (mut child, mut lines) = c.kubectl_spawn(&["logs", "-f", "stubborn"]);
    let got: Vec<String> = (0..3).map(|_| lines.next("a followed line")).collect();
    let _ = child.kill();
    let _ = child.wait();
    let n: Vec<u32> = got.iter().map(|l| l.trim_start_matches("line ").parse().unwrap()).collect();
    assert!(n[0] < n[1] && n[1] < n[2], "{got:?}");
    // The stand-in for a plain image says what it is.
    assert!(c.ok(&["logs", "web"]).contains("capstan stand-in for image nginx"));
    // kubectl top shows numbers.
    wait_until("kubectl top pod web", || c.kubectl_with(KUBECTL, &["top", "pod", "web", "--no-headers"]).status.success());
    let top = c.ok(&["top", "pod", "web", "--no-headers"]);
    assert!(top.contains("Mi"), "{top}");
    let top = c.ok(&["top", "node", "--no-headers"]);
    assert!(top.starts_with(NODE) && top.contains('%'), "{top}");
    // A container that ignores SIGTERM is killed once its 2 s grace period is over.
    let pid = pid_of(&c, "stubborn");
    assert!(process_alive(pid));
    c.ok(&["delete", "pod", "stubborn", "--timeout=60s"]);
    wait_until("the stubborn container's process to be gone", || !process_alive(pid));
    assert!(c.fails(&["get", "pod", "stubborn"]).contains("NotFound"));
    // Events are written by an asynchronous recorder: wait for it.
    wait_until("a Killing event for stubborn", || {
        c.ok(&["get", "events", "--field-selector", "involvedObject.name=stubborn", "-o", "jsonpath={.items[*].reason}"]).contains("Killing")
    });
}

#[test]
fn memory_limits_are_enforced_and_a_restart_resumes_pods() {
    let c = cluster();
    let m = c.write(
        "pods.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  containers:
  - name: c
    image: python
    command: ["python3", "-c", "import time; x = bytearray(300 << 20); x[::4096] = b'1' * len(x[::4096]); time.sleep(120)"]
    resources: {{limits: {{memory: 64Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  nodeName: {NODE}
  containers:
  - name: nginx
    image: nginx
"#
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Failed", "pod/hog", "--timeout=60s"]);
    assert_eq!(jsonpath(&c, "hog", "{.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode}"), "OOMKilled 137");
    c.ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"]);
    let before = pid_of(&c, "web");
    // Stopping the cluster stops its pods.
    let dir = c.stop();
    wait_until("web's process to stop with the cluster", || !process_alive(before));
    // Starting it again on the same data runs them again (a restart, as after a reboot).
    let c = Cluster::start_with(dir, &["--node-name", NODE]);
    wait_until("web running again after the restart", || {
        jsonpath(&c, "web", "{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}") == "1 true"
    });
    let after = pid_of(&c, "web");
    assert_ne!(before, after);
    assert!(process_alive(after));
    assert_eq!(jsonpath(&c, "hog", "{.status.phase}"), "Failed", "a finished pod stays finished");
    assert!(c.ok(&["get", "nodes", "--no-headers"]).starts_with(NODE));
}

/// Mount points under `dir` in this (the host's) mount namespace.
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| std::path::Path::new(m).starts_with(&dir)).map(String::from).collect()
}

#[test]
fn volumes_are_mounted_follow_their_objects_and_leave_nothing_behind() {
    let c = cluster();
    c.ok(&["wait", "--for=condition=Ready", &format!("node/{NODE}"), "--timeout=60s"]);
    c.ok(&["create", "configmap", "cfg", "--from-literal=greeting=hello"]);
    c.ok(&["create", "secret", "generic", "sec", "--from-literal=password=hunter2"]);
    let host_dir = c.dir.path().join("from-host");
    // Something else in the pods' directory, which no container may see.
    std::fs::create_dir_all(c.dir.path().join("pods").join("another-pods-secrets")).unwrap();
    // A mount point the host lacks, under a directory the host has: never created on the host.
    let etc_new = format!("/etc/capstan-test-{}", std::process::id());
    let m = c.write(
        "pod.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: vols, labels: {{app: demo}}}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c"]
    args:
    - |
      cat /cfg/greeting; echo
      cat /sec/password; echo
      cat /info/labels; echo
      echo written > /scratch/f && cat /scratch/f
      grep -q " /mem tmpfs" /proc/self/mounts && echo mem-is-tmpfs
      test -s /tok/token && echo token-present
      echo from-pod > /host/f
      (echo x > /cfg/nope) 2>/dev/null || echo cfg-read-only
      cat {etc_new}/sub/greeting; echo
      echo hostname=$(hostname)
      echo pod-dirs-seen=$(ls {pods} | wc -l)
      while :; do echo "now=$(cat /cfg/greeting)"; sleep 0.3; done
    volumeMounts:
    - {{name: cfg, mountPath: /cfg}}
    - {{name: sec, mountPath: /sec}}
    - {{name: info, mountPath: /info}}
    - {{name: scratch, mountPath: /scratch}}
    - {{name: mem, mountPath: /mem}}
    - {{name: tok, mountPath: /tok}}
    - {{name: host, mountPath: /host}}
    - {{name: cfg, mountPath: {etc_new}/sub/greeting, subPath: greeting}}
  volumes:
  - {{name: cfg, configMap: {{name: cfg}}}}
  - {{name: sec, secret: {{secretName: sec}}}}
  - {{name: info, downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}}}
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}
  - {{name: tok, projected: {{sources: [{{serviceAccountToken: {{path: token}}}}]}}}}
  - {{name: host, hostPath: {{path: {host}, type: DirectoryOrCreate}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: waits}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "while :; do sleep 1; done"]
    volumeMounts: [{{name: c, mountPath: /c}}]
    readinessProbe: {{exec: {{command: ["cat", "/c/k"]}}, periodSeconds: 1}}
  volumes: [{{name: c, configMap: {{name: later}}}}]
"#,
            host = host_dir.display(),
            pods = std::fs::canonicalize(c.dir.path()).unwrap().join("pods").display()
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/vols", "--timeout=60s"]);
    wait_until("the pod's report of its volumes", || c.ok(&["logs", "vols"]).contains("pod-dirs-seen="));
    let logs = c.ok(&["logs", "vols"]);
    // Other pods' directories (their volumes, their tokens) are hidden: only its own shows.
    let want = "hello\nhunter2\napp=\"demo\"\nwritten\nmem-is-tmpfs\ntoken-present\ncfg-read-only\nhello\nhostname=vols\npod-dirs-seen=1\n";
    assert!(logs.starts_with(want), "logs: {logs:?}");
    assert_eq!(std::fs::read_to_string(host_dir.join("f")).unwrap(), "from-pod\n");
    assert!(!std::path::Path::new(&etc_new).exists(), "{etc_new} was created on the host");
    // The missing ConfigMap holds the other pod in ContainerCreating, with FailedMount.
    wait_until("FailedMount for the missing ConfigMap", || {
        c.ok(&["get", "events", "--field-selector", "involvedObject.name=waits,reason=FailedMount", "-o", "jsonpath={.items[*].message}"])
            .contains("MountVolume.SetUp failed for volume \"c\" : configmap \"later\" not found")
    });
    assert_eq!(jsonpath(&c, "waits", "{.status.containerStatuses[0].state.waiting.reason}"), "ContainerCreating");
    // It starts once the ConfigMap exists; its exec probe reads the volume inside the container.
    c.ok(&["create", "configmap", "later", "--from-literal=k=v"]);
    c.ok(&["wait", "--for=condition=Ready", "pod/waits", "--timeout=60s"]);
    // An update reaches the running pod.
    let upd = c.write("cfg.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {greeting: changed}\n");
    c.ok(&["replace", "-f", path_str(&upd)]);
    wait_until("the running pod to read the updated ConfigMap", || c.ok(&["logs", "vols", "--tail=1"]).contains("now=changed"));
    // The memory-backed emptyDir is a tmpfs on the host, mounted once, even across a SIGKILL
    // of the node and its restart on the same data; deleting the pod unmounts and removes it.
    assert_eq!(mounts_under(c.dir.path()).len(), 1, "{:?}", mounts_under(c.dir.path()));
    // (waits writes nothing: a writer would die of SIGPIPE with the node's end of its pipe.)
    let before = pid_of(&c, "waits");
    let dir = c.kill();
    assert!(process_alive(before), "the container outlives a SIGKILLed node");
    let c = Cluster::start_with(dir, &["--node-name", NODE, "--crash-backoff-seconds", "1"]);
    wait_until("the previous run's container to be killed by the new one", || !process_alive(before));
    c.ok(&["wait", "--for=condition=Ready", "pod/vols", "--timeout=60s"]);
    wait_until("vols running again after the node's restart", || jsonpath(&c, "vols", "{.status.containerStatuses[0].restartCount}") == "1");
    assert_eq!(mounts_under(c.dir.path()).len(), 1, "{:?}", mounts_under(c.dir.path()));
    c.ok(&["delete", "pod", "vols", "waits", "--wait=true", "--timeout=60s"]);
    wait_until("the pods' directories to be removed", || {
        std::fs::read_dir(c.dir.path().join("pods")).map_or(true, |d| d.flatten().all(|e| !e.file_name().to_string_lossy().contains("vols")))
    });
    assert!(mounts_under(c.dir.path()).is_empty(), "{:?}", mounts_under(c.dir.path()));
}

#[test]
fn security_context_sets_the_user_groups_and_capabilities() {
    let c = cluster();
    let m = c.write(
        "pods.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: nonroot}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsUser: 1000, runAsGroup: 3000, fsGroup: 2000}}
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); touch /data/f && echo file-group=$(stat -c %g /data/f); grep CapEff /proc/self/status; while :; do sleep 1; done"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: nocaps}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "grep CapEff /proc/self/status; chown 1 /tmp 2>/dev/null || echo chown-refused"]
    securityContext: {{capabilities: {{drop: [ALL]}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: wantsnonroot}}
spec:
  nodeName: {NODE}
  containers:
  - name: c
    image: busybox
    command: ["true"]
    securityContext: {{runAsNonRoot: true}}
"#
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/nonroot", "--timeout=60s"]);
    wait_until("nonroot's report", || c.ok(&["logs", "nonroot"]).contains("CapEff"));
    let logs = c.ok(&["logs", "nonroot"]);
    assert!(logs.contains("uid=1000 gid=3000 groups=3000 2000"), "{logs}");
    assert!(logs.contains("file-group=2000"), "the emptyDir keeps the fsGroup: {logs}");
    assert!(logs.contains("CapEff:\t0000000000000000"), "a user other than root has no capabilities: {logs}");
    // kubectl exec runs as the container's user.
    assert_eq!(c.ok(&["exec", "nonroot", "--", "id", "-u"]).trim(), "1000");
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/nocaps", "--timeout=60s"]);
    let logs = c.ok(&["logs", "nocaps"]);
    assert!(logs.contains("CapEff:\t0000000000000000") && logs.contains("chown-refused"), "{logs}");
    wait_until("runAsNonRoot without a user to be refused", || {
        jsonpath(&c, "wantsnonroot", "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].state.waiting.message}")
            == "CreateContainerConfigError container has runAsNonRoot and image will run as root"
    });
}

#[test]
fn without_tls_pods_get_no_service_account_volume_and_still_run() {
    // `--insecure-http` issues no cluster CA to publish: a mounted token volume would wait
    // for `kube-root-ca.crt` forever.
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE, "--insecure-http"]);
    let p = "apiVersion: v1\nkind: Pod\nmetadata: {name: plain}\nspec:\n  nodeName: node-a\n  restartPolicy: Never\n  containers: [{name: c, image: busybox, command: [sh, -c, 'echo ran']}]\n";
    let m = c.write("plain.yaml", p);
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/plain", "--timeout=60s"]);
    assert_eq!(jsonpath(&c, "plain", "{.spec.volumes}"), "");
    assert_eq!(jsonpath(&c, "plain", "{.spec.serviceAccountName}"), "default");
}

#[test]
fn lifecycle_hooks_run_after_start_and_before_stop_and_a_failed_post_start_restarts() {
    let c = cluster();
    let host = tempfile::tempdir().unwrap();
    let h = host.path().display();
    // postStart writes a file the probes would need; preStop writes another, then the grace
    // period lets the container go.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 10
  volumes: [{{name: hooks, hostPath: {{path: {h}, type: DirectoryOrCreate}}}}]
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "sleep 3600"]
    volumeMounts: [{{name: hooks, mountPath: /hooks}}]
    readinessProbe: {{exec: {{command: [test, -f, /hooks/post]}}, periodSeconds: 1}}
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "echo post-start > /hooks/post"]}}}}
      preStop: {{exec: {{command: [sh, -c, "echo pre-stop > /hooks/pre"]}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: broken-hook}}
spec:
  nodeName: {NODE}
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "sleep 3600"]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "exit 3"]}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: unlively}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 5
  volumes: [{{name: hooks, hostPath: {{path: {h}, type: DirectoryOrCreate}}}}]
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "sleep 3600"]
    volumeMounts: [{{name: hooks, mountPath: /hooks}}]
    livenessProbe: {{exec: {{command: [test, -f, /hooks/never]}}, periodSeconds: 1, failureThreshold: 1}}
    lifecycle:
      preStop: {{exec: {{command: [sh, -c, "echo liveness-kill >> /hooks/unlively"]}}}}
"#
    );
    let f = c.write("hooks.yaml", &manifest);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_until("the hooked pod to be ready", || jsonpath(&c, "hooked", "{.status.containerStatuses[0].ready}") == "true");
    assert_eq!(std::fs::read_to_string(host.path().join("post")).unwrap().trim(), "post-start");
    assert!(!host.path().join("pre").exists(), "preStop ran before any stop");
    c.ok(&["delete", "pod", "hooked", "--wait=false"]);
    wait_until("the hooked pod to be gone", || c.kubectl_with(KUBECTL, &["get", "pod", "hooked"]).status.code() == Some(1));
    assert_eq!(std::fs::read_to_string(host.path().join("pre")).unwrap().trim(), "pre-stop");
    // A postStart that fails kills the container, which restarts by its policy (Always).
    wait_until("the broken hook's container to restart", || jsonpath(&c, "broken-hook", "{.status.containerStatuses[0].restartCount}").parse::<u32>().unwrap_or(0) >= 1);
    let events = c.ok(&["get", "events", "--field-selector", "involvedObject.name=broken-hook", "-o", "jsonpath={range .items[*]}{.reason}: {.message}{'\\n'}{end}"]);
    assert!(events.contains("FailedPostStartHook: PostStartHook failed: command") && events.contains("exited with 3"), "{events}");
    assert_ne!(jsonpath(&c, "broken-hook", "{.status.containerStatuses[0].ready}"), "true");
    // A liveness kill runs the preStop hook first, as the kubelet's does.
    wait_until("the unlively container to be killed and restarted", || jsonpath(&c, "unlively", "{.status.containerStatuses[0].restartCount}").parse::<u32>().unwrap_or(0) >= 1);
    assert!(std::fs::read_to_string(host.path().join("unlively")).unwrap_or_default().contains("liveness-kill"));
}

#[test]
fn the_kernels_tunables_are_read_only_in_containers_that_are_not_privileged() {
    let c = cluster();
    // Written to the container's own UTS namespace if the mount were writable: harmless.
    let probe = r#"awk '$2=="/proc/sys"{print "sys:" $4}' /proc/self/mounts | head -1; (echo capstan-test > /proc/sys/kernel/hostname) 2>/dev/null && echo wrote || echo refused"#;
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: plain}}\nspec:\n  nodeName: {NODE}\n  restartPolicy: Never\n  containers: [{{name: c, image: busybox, command: [sh, -c, {probe:?}]}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: privileged}}\nspec:\n  nodeName: {NODE}\n  restartPolicy: Never\n  containers: [{{name: c, image: busybox, command: [sh, -c, \"awk '$2==\\\"/proc/sys\\\"{{print \\\"sys:\\\" $4}}' /proc/self/mounts | head -1; echo done\"], securityContext: {{privileged: true}}}}]\n"
    );
    let f = c.write("proc.yaml", &manifest);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    for p in ["plain", "privileged"] {
        wait_until(&format!("{p} to finish"), || jsonpath(&c, p, "{.status.phase}") == "Succeeded");
    }
    let plain = c.ok(&["logs", "plain"]);
    assert!(plain.contains("sys:ro,") && plain.contains("refused"), "{plain}");
    let privileged = c.ok(&["logs", "privileged"]);
    assert!(!privileged.contains("sys:ro") && privileged.contains("done"), "{privileged}");
}
