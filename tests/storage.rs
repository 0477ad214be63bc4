//! PersistentVolumeClaims on the real node of `capstan up`: the default StorageClass, the
//! local-path provisioner, StatefulSet volumeClaimTemplates, checked with kubectl.

mod common;

use common::*;

const NODE: &str = "node-s";

fn jsonpath(c: &Cluster, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let p = format!("jsonpath={path}");
    args.extend(["-o", &p]);
    c.ok(&args)
}

#[test]
fn claims_get_local_volumes_that_outlive_their_pods_and_go_with_their_claims() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    c.ok(&["wait", "--for=condition=Ready", &format!("node/{NODE}"), "--timeout=60s"]);
    // kind's `standard`: the default class, made at the first start.
    let classes = c.ok(&["get", "storageclass"]);
    assert!(classes.contains("standard (default)") && classes.contains("capstan.io/local-path") && classes.contains("WaitForFirstConsumer"), "{classes}");
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 16Mi}}\n";
    let m = c.write("claim.yaml", claim);
    c.ok(&["apply", "-f", path_str(&m)]);
    assert_eq!(jsonpath(&c, &["pvc", "data"], "{.spec.storageClassName}"), "standard", "DefaultStorageClass admission");
    // No consumer yet: it waits, and says why.
    wait_until("the claim's WaitForFirstConsumer event", || c.ok(&["get", "events", "--field-selector", "involvedObject.name=data"]).contains("WaitForFirstConsumer"));
    assert_eq!(jsonpath(&c, &["pvc", "data"], "{.status.phase}"), "Pending");
    let pod = |name: &str, cmd: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "{cmd}"]
    volumeMounts: [{{name: v, mountPath: /data}}]
  volumes: [{{name: v, persistentVolumeClaim: {{claimName: data}}}}]
"#
        )
    };
    // Scheduled (not named to a node): the volume is made on the pod's node.
    let w = c.write("writer.yaml", &pod("writer", "echo kept > /data/f && cat /data/f"));
    c.ok(&["apply", "-f", path_str(&w)]);
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/writer", "--timeout=60s"]);
    assert_eq!(c.ok(&["logs", "writer"]).trim(), "kept");
    assert_eq!(jsonpath(&c, &["pvc", "data"], "{.status.phase}"), "Bound");
    let pv = jsonpath(&c, &["pvc", "data"], "{.spec.volumeName}");
    let path = jsonpath(&c, &["pv", &pv], "{.spec.hostPath.path}");
    let volumes = c.dir.path().join("volumes");
    assert!(std::path::Path::new(&path).starts_with(std::fs::canonicalize(&volumes).unwrap_or(volumes.clone())) || std::path::Path::new(&path).starts_with(&volumes), "{path} is not under {}", volumes.display());
    assert_eq!(jsonpath(&c, &["pv", &pv], "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}"), NODE);
    // The data outlives the pod: a second pod reads it.
    c.ok(&["delete", "pod", "writer", "--wait=true"]);
    let r = c.write("reader.yaml", &pod("reader", "cat /data/f"));
    c.ok(&["apply", "-f", path_str(&r)]);
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/reader", "--timeout=60s"]);
    assert_eq!(c.ok(&["logs", "reader"]).trim(), "kept");
    c.ok(&["delete", "pod", "reader", "--wait=true"]);
    // A pod whose claim does not exist is not scheduled, and says which.
    let lost = pod("lost", "true").replace("claimName: data", "claimName: nope");
    let l = c.write("lost.yaml", &lost);
    c.ok(&["apply", "-f", path_str(&l)]);
    wait_until("the missing claim to be named in PodScheduled", || jsonpath(&c, &["pod", "lost"], "{.status.conditions[?(@.type==\"PodScheduled\")].message}").contains("persistentvolumeclaim \"nope\" not found"));
    c.ok(&["delete", "pod", "lost", "--wait=true"]);
    // The claim deleted: its volume (reclaimPolicy Delete) and, on the node, its directory.
    c.ok(&["delete", "pvc", "data", "--wait=true"]);
    wait_until("the volume to be deleted with its claim", || c.fails(&["get", "pv", &pv]).contains("NotFound"));
    wait_until("the node to remove the volume's directory", || !std::path::Path::new(&path).exists());
}

#[test]
fn statefulset_pods_keep_their_claims_across_restarts_and_static_volumes_bind_by_size() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    c.ok(&["wait", "--for=condition=Ready", &format!("node/{NODE}"), "--timeout=60s"]);
    let set = r#"apiVersion: v1
kind: Service
metadata: {name: db}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete, whenScaled: Retain}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox
        command: ["sh", "-c", "test -f /www/first || date +%s%N > /www/first; while :; do sleep 1; done"]
        volumeMounts: [{name: www, mountPath: /www}]
  volumeClaimTemplates:
  - metadata: {name: www}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 8Mi}}}
"#;
    let m = c.write("set.yaml", set);
    c.ok(&["apply", "-f", path_str(&m)]);
    wait_until("both set pods to run", || c.ok(&["get", "statefulset", "db", "-o", "jsonpath={.status.readyReplicas}"]) == "2");
    for o in 0..2 {
        let claim = format!("www-db-{o}");
        assert_eq!(jsonpath(&c, &["pvc", &claim], "{.status.phase}"), "Bound", "{claim}");
        assert_eq!(jsonpath(&c, &["pvc", &claim], "{.metadata.labels.app}"), "db");
    }
    let first = c.ok(&["exec", "db-0", "--", "cat", "/www/first"]);
    assert_ne!(first, c.ok(&["exec", "db-1", "--", "cat", "/www/first"]), "each pod has its own claim");
    // db-0 deleted comes back with the same claim and what it wrote.
    let uid = jsonpath(&c, &["pod", "db-0"], "{.metadata.uid}");
    // Not `--wait`: kubectl waits for the name to be gone, and the StatefulSet may make a new
    // db-0 before kubectl's watch starts (then it waits forever for a deletion already seen).
    c.ok(&["delete", "pod", "db-0", "--wait=false"]);
    wait_until("db-0 to be made again and run", || {
        let v = c.kubectl_with(KUBECTL, &["get", "pod", "db-0", "-o", "jsonpath={.metadata.uid} {.status.phase}"]);
        let v = String::from_utf8_lossy(&v.stdout).into_owned();
        !v.starts_with(&uid) && v.ends_with(" Running")
    });
    assert_eq!(c.ok(&["exec", "db-0", "--", "cat", "/www/first"]), first);
    // A volume made by hand binds the smallest claim-fitting one of the class asked for.
    let dir = c.dir.path().join("manual");
    std::fs::create_dir_all(&dir).unwrap();
    let pvs = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: small}}\nspec: {{storageClassName: manual, capacity: {{storage: 1Mi}}, accessModes: [ReadWriteOnce], hostPath: {{path: {0}}}}}\n---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: big}}\nspec: {{storageClassName: manual, capacity: {{storage: 1Gi}}, accessModes: [ReadWriteOnce], persistentVolumeReclaimPolicy: Retain, hostPath: {{path: {0}}}}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: manual}}\nspec: {{storageClassName: manual, accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 10Mi}}}}}}\n",
        dir.display()
    );
    let m = c.write("manual.yaml", &pvs);
    c.ok(&["apply", "-f", path_str(&m)]);
    wait_until("the claim to bind", || jsonpath(&c, &["pvc", "manual"], "{.status.phase}") == "Bound");
    assert_eq!(jsonpath(&c, &["pvc", "manual"], "{.spec.volumeName}"), "big", "1Mi is too small");
    assert_eq!(jsonpath(&c, &["pv", "small"], "{.status.phase}"), "Available");
    c.ok(&["delete", "pvc", "manual", "--wait=true"]);
    wait_until("the retained volume to be Released", || jsonpath(&c, &["pv", "big"], "{.status.phase}") == "Released");
    // whenDeleted: Delete: the set's claims go with it.
    c.ok(&["delete", "statefulset", "db", "--wait=true"]);
    wait_until("the set's claims to be collected", || c.ok(&["get", "pvc", "-o", "name"]).trim().is_empty());
}
