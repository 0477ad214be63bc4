//! Real kubectl against the real `capstan up`.

mod common;

use std::process::Command;

use common::*;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports: [{containerPort: 80}]
      - name: sidecar
        image: busybox
"#;

fn pod(name: &str, labels: &str, node: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{{labels}}}}},"spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"busybox"}}]}}}}"#
    )
}

#[test]
fn discovery_lists_the_built_in_resources() {
    let c = Cluster::start();
    let out = c.ok(&["api-resources"]);
    for line in ["pods", "deployments", "namespaces", "leases", "customresourcedefinitions", "horizontalpodautoscalers"] {
        assert!(out.lines().any(|l| l.starts_with(line)), "api-resources lacks {line}:\n{out}");
    }
    let ns = c.ok(&["get", "namespaces"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(n), "{ns}");
    }
    assert!(c.ok(&["version"]).contains("Server Version: v1.33"));
    let f = c.write("d.yaml", DEPLOYMENT);
    c.ok(&["apply", "-f", path_str(&f)]);
    assert!(c.ok(&["get", "all"]).contains("deployment.apps/web"), "kubectl get all uses the 'all' category");
}

#[test]
fn apply_new_unchanged_changed_and_dry_run() {
    let c = Cluster::start();
    let f = c.write("d.yaml", DEPLOYMENT);
    let f = path_str(&f);
    assert!(c.ok(&["apply", "-f", f]).contains("deployment.apps/web created"));
    assert!(c.ok(&["apply", "-f", f]).contains("deployment.apps/web unchanged"));
    let changed = c.write("d2.yaml", &DEPLOYMENT.replace("nginx:1.25", "nginx:1.26"));
    assert!(c.ok(&["apply", "-f", path_str(&changed)]).contains("deployment.apps/web configured"));
    let images = c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].image} {.metadata.generation}"]);
    assert_eq!(images, "nginx:1.26 busybox 2", "strategic merge kept both containers and bumped generation");
    let dry = c.write("d3.yaml", &DEPLOYMENT.replace("name: web\n", "name: dry\n"));
    assert!(c.ok(&["apply", "--dry-run=server", "-f", path_str(&dry)]).contains("(server dry run)"));
    assert!(c.fails(&["get", "deploy", "dry"]).contains("NotFound"));
}

#[test]
fn get_in_every_output_format_with_selectors() {
    let c = Cluster::start();
    c.ok(&["create", "-f", path_str(&c.write("p1.json", &pod("p1", r#""app":"a""#, "n1")))]);
    c.ok(&["create", "-f", path_str(&c.write("p2.json", &pod("p2", r#""app":"b""#, "n2")))]);
    let table = c.ok(&["get", "pods"]);
    assert!(table.starts_with("NAME") && table.contains("READY") && table.contains("STATUS") && table.contains("p1"), "{table}");
    let wide = c.ok(&["get", "pods", "-o", "wide"]);
    assert!(wide.contains("NODE") && wide.contains("n1"), "{wide}");
    let yaml = c.ok(&["get", "pod", "p1", "-o", "yaml"]);
    assert!(yaml.contains("resourceVersion:") && yaml.contains("uid:") && yaml.contains("restartPolicy: Always"), "{yaml}");
    let json: serde_json::Value = serde_json::from_str(&c.ok(&["get", "pod", "p1", "-o", "json"])).unwrap();
    assert_eq!(json["metadata"]["name"], "p1");
    assert_eq!(json["status"]["phase"], "Pending");
    // A status sent with a new pod is not taken: a new pod is Pending (PrepareForCreate).
    let sent = pod("p3", r#""app":"c""#, "n3").replacen(r#""spec":"#, r#""status":{"phase":"Running","podIP":"10.0.0.9"},"spec":"#, 1);
    c.ok(&["create", "-f", path_str(&c.write("p3.json", &sent))]);
    assert_eq!(c.ok(&["get", "pod", "p3", "-o", "jsonpath={.status.phase} {.status.qosClass} {.status.podIP}"]), "Pending BestEffort ");
    let by_label = c.ok(&["get", "pods", "-l", "app=b", "-o", "name"]);
    assert_eq!(by_label.trim(), "pod/p2");
    let by_set = c.ok(&["get", "pods", "-l", "app in (a,b)", "-o", "name"]);
    assert_eq!(by_set.lines().count(), 2);
    let by_field = c.ok(&["get", "pods", "--field-selector", "spec.nodeName=n1", "-o", "name"]);
    assert_eq!(by_field.trim(), "pod/p1");
    let all = c.ok(&["get", "pods", "-A"]);
    assert!(all.contains("NAMESPACE") && all.contains("default"), "{all}");
    let bad = c.fails(&["get", "pods", "--field-selector", "spec.unknown=x"]);
    assert!(bad.contains("field label not supported"), "{bad}");
}

#[test]
fn label_annotate_patch_scale_edit_describe_delete() {
    let c = Cluster::start();
    c.ok(&["apply", "-f", path_str(&c.write("d.yaml", DEPLOYMENT))]);
    c.ok(&["label", "deploy", "web", "tier=front"]);
    c.ok(&["annotate", "deploy", "web", "owner=team-a"]);
    assert_eq!(c.ok(&["get", "deploy", "-l", "tier=front", "-o", "name"]).trim(), "deployment.apps/web");
    c.ok(&["patch", "deploy", "web", "--type", "merge", "-p", r#"{"spec":{"replicas":3}}"#]);
    c.ok(&["patch", "deploy", "web", "--type", "json", "-p", r#"[{"op":"add","path":"/metadata/labels/x","value":"y"}]"#]);
    c.ok(&["patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:2"}]}}}}"#]);
    let got = c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.metadata.labels.x} {.spec.template.spec.containers[*].image}"]);
    assert_eq!(got, "3 y nginx:1.25 busybox:2");
    c.ok(&["scale", "deploy", "web", "--replicas=5"]);
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "5");
    // edit, with an editor that changes the file in place.
    let out = Command::new(KUBECTL)
        .args(["edit", "deploy", "web"])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .env("KUBE_EDITOR", "sed -i s/owner:\\ team-a/owner:\\ team-b/")
        .output()
        .unwrap();
    assert!(out.status.success(), "edit: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.annotations.owner}"]), "team-b");
    let desc = c.ok(&["describe", "deploy", "web"]);
    assert!(desc.contains("Name:") && desc.contains("web") && desc.contains("5 desired"), "{desc}");
    assert!(c.ok(&["delete", "deploy", "web"]).contains("deleted"));
    assert!(c.fails(&["get", "deploy", "web"]).contains("NotFound"));
    c.ok(&["create", "-f", path_str(&c.write("p.json", &pod("gone", r#""a":"b""#, "")))]);
    // A pod's spec changes only where Kubernetes lets it: the image, yes; anything else, no.
    c.ok(&["set", "image", "pod/gone", "c=busybox:2"]);
    assert_eq!(c.ok(&["get", "pod", "gone", "-o", "jsonpath={.spec.containers[0].image}"]), "busybox:2");
    let refused = c.fails(&["patch", "pod", "gone", "-p", r#"{"spec":{"containers":[{"name":"c","env":[{"name":"X","value":"1"}]}]}}"#]);
    assert!(refused.contains("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"), "{refused}");
    assert!(c.ok(&["delete", "pod", "gone", "--wait=false"]).contains("deleted"));
}

#[test]
fn cordon_marks_a_node_unschedulable() {
    let c = Cluster::start();
    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1","labels":{"kubernetes.io/hostname":"n1"}}}"#;
    c.ok(&["create", "-f", path_str(&c.write("n.json", node))]);
    assert!(c.ok(&["cordon", "n1"]).contains("cordoned"));
    assert_eq!(c.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.unschedulable}"]), "true");
    assert!(c.ok(&["get", "nodes"]).contains("SchedulingDisabled"));
}

#[test]
fn get_watch_sees_an_update_arrive() {
    let c = Cluster::start();
    // Labelled: the namespace also has the controllers' kube-root-ca.crt.
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"w","labels":{"t":"1"}},"data":{"k":"1"}}"#;
    c.ok(&["create", "-f", path_str(&c.write("cm.json", cm))]);
    let (mut watch, mut lines) = c.kubectl_spawn(&["get", "configmaps", "-l", "t=1", "-w", "-o", "jsonpath={.metadata.name}={.data.k}{\"\\n\"}"]);
    assert_eq!(lines.next("kubectl -w printed the current object"), "w=1");
    c.ok(&["patch", "configmap", "w", "--type", "merge", "-p", r#"{"data":{"k":"2"}}"#]);
    assert_eq!(lines.next("kubectl -w printed the update"), "w=2");
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn errors_are_kubernetes_statuses() {
    let c = Cluster::start();
    assert!(c.fails(&["get", "configmap", "missing"]).contains(r#"configmaps "missing" not found"#));
    let bad = c.write("bad.json", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#);
    let e = c.fails(&["create", "-f", path_str(&bad)]);
    assert!(e.contains("is invalid") && e.contains("metadata.name"), "{e}");
    let cm = c.write("cm.json", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#);
    c.ok(&["create", "-f", path_str(&cm)]);
    assert!(c.fails(&["create", "-f", path_str(&cm)]).contains("AlreadyExists"));
    // A replace with a stale resourceVersion is a 409 Conflict.
    let stale = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","resourceVersion":"1"},"data":{"a":"b"}}"#;
    let e = c.fails(&["replace", "-f", path_str(&c.write("stale.json", stale))]);
    assert!(e.contains("the object has been modified"), "{e}");
    // Raw: malformed JSON is 400, a too large body 413, an unknown media type 415, all Status.
    let (code, body) = http(&c.addr, "POST", "/api/v1/namespaces/default/configmaps", &[("Content-Type", "application/json")], b"{nope");
    assert_eq!(code, 400);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["kind"].as_str(), v["reason"].as_str()), (Some("Status"), Some("BadRequest")));
    let big = vec![b' '; (3 << 20) + 10];
    let (code, body) = http(&c.addr, "POST", "/api/v1/namespaces/default/configmaps", &[("Content-Type", "application/json")], &big);
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&body));
    let (code, _) = http(&c.addr, "POST", "/api/v1/namespaces/default/configmaps", &[("Content-Type", "text/csv")], b"a,b");
    assert_eq!(code, 415);
    // YAML bodies are accepted; malformed YAML and protobuf are 400.
    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: b\n";
    let (code, body) = http(&c.addr, "POST", "/api/v1/namespaces/default/configmaps", &[("Content-Type", "application/yaml")], yaml);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let (code, _) = http(&c.addr, "POST", "/api/v1/namespaces/default/configmaps", &[("Content-Type", "application/yaml")], b"a: [b");
    assert_eq!(code, 400);
    let (code, _) = http(&c.addr, "POST", "/api/v1/namespaces/default/configmaps", &[("Content-Type", "application/vnd.kubernetes.protobuf")], b"k8s\0\xff\xff");
    assert_eq!(code, 400);
    let (code, _) = http(&c.addr, "GET", "/api/v1/namespaces/default/widgets", &[], b"");
    assert_eq!(code, 404);
}

/// Any built-in kind may come as protobuf, as client-go sends it: inline Go structs (a
/// volume's source, a probe's handler), quantities, int-or-strings and nested schemas arrive
/// as the JSON a JSON client would have sent. A custom resource's protobuf is 415, as in
/// Kubernetes (custom resources are JSON only).
#[test]
fn protobuf_bodies_of_any_built_in_kind() {
    use k8s_pb::api::{core::v1 as core, networking::v1 as net, storage::v1 as storage};
    use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as x;
    use k8s_pb::apimachinery::pkg::{apis::meta::v1 as meta, util::intstr::IntOrString};
    use prost::Message;
    fn post(c: &Cluster, path: &str, api_version: &str, kind: &str, m: &impl Message) -> (u16, String) {
        let u = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
            raw: Some(m.encode_to_vec()),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = b"k8s\0".to_vec();
        body.extend(u.encode_to_vec());
        let (code, out) = http(&c.addr, "POST", path, &[("Content-Type", "application/vnd.kubernetes.protobuf")], &body);
        (code, String::from_utf8_lossy(&out).into_owned())
    }
    let named = |n: &str| Some(meta::ObjectMeta { name: Some(n.into()), ..Default::default() });
    let port = |p: &str| Some(IntOrString { r#type: Some(1), int_val: Some(0), str_val: Some(p.into()) });
    let c = Cluster::start();

    let pod = core::Pod {
        metadata: named("pb-pod"),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: Some("c".into()),
                image: Some("busybox".into()),
                resources: Some(core::ResourceRequirements {
                    limits: [("cpu".to_string(), k8s_pb::apimachinery::pkg::api::resource::Quantity { string: Some("250m".into()) })].into(),
                    ..Default::default()
                }),
                liveness_probe: Some(core::Probe {
                    handler: Some(core::ProbeHandler { http_get: Some(core::HttpGetAction { port: port("http"), ..Default::default() }), ..Default::default() }),
                    ..Default::default()
                }),
                // Go writes every non-pointer string; an empty one is not a value.
                termination_message_path: Some(String::new()),
                ..Default::default()
            }],
            volumes: vec![core::Volume {
                name: Some("cfg".into()),
                volume_source: Some(core::VolumeSource {
                    config_map: Some(core::ConfigMapVolumeSource { local_object_reference: Some(core::LocalObjectReference { name: Some("cm".into()) }), ..Default::default() }),
                    ..Default::default()
                }),
            }],
            node_name: Some("nowhere".into()),
            ..Default::default()
        }),
        status: Some(Default::default()),
    };
    let (code, out) = post(&c, "/api/v1/namespaces/default/pods", "v1", "Pod", &pod);
    assert_eq!(code, 201, "{out}");
    assert_eq!(
        c.ok(&["get", "pod", "pb-pod", "-o", "jsonpath={.spec.volumes[0].configMap.name} {.spec.containers[0].livenessProbe.httpGet.port} {.spec.containers[0].resources.limits.cpu} {.spec.containers[0].terminationMessagePath}"]),
        "cm http 250m /dev/termination-log",
        "inline structs joined, the empty path defaulted"
    );

    let sc = storage::StorageClass { metadata: named("pb-fast"), provisioner: Some("example.com/x".into()), parameters: [("tier".to_string(), "1".to_string())].into(), ..Default::default() };
    let (code, out) = post(&c, "/apis/storage.k8s.io/v1/storageclasses", "storage.k8s.io/v1", "StorageClass", &sc);
    assert_eq!(code, 201, "{out}");
    assert_eq!(c.ok(&["get", "storageclass", "pb-fast", "-o", "jsonpath={.provisioner} {.parameters.tier}"]), "example.com/x 1");

    let np = net::NetworkPolicy {
        metadata: named("pb-policy"),
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(meta::LabelSelector { match_labels: [("app".to_string(), "db".to_string())].into(), ..Default::default() }),
            ingress: vec![net::NetworkPolicyIngressRule { ports: vec![net::NetworkPolicyPort { protocol: Some("TCP".into()), port: port("pg"), end_port: None }], from: vec![] }],
            policy_types: vec!["Ingress".into()],
            ..Default::default()
        }),
    };
    let (code, out) = post(&c, "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies", "networking.k8s.io/v1", "NetworkPolicy", &np);
    assert_eq!(code, 201, "{out}");
    assert_eq!(c.ok(&["get", "networkpolicy", "pb-policy", "-o", "jsonpath={.spec.ingress[0].ports[0].port} {.spec.podSelector.matchLabels.app}"]), "pg db");

    let schema = x::JsonSchemaProps {
        r#type: Some("object".into()),
        properties: [("spec".to_string(), x::JsonSchemaProps {
            r#type: Some("object".into()),
            properties: [("size".to_string(), x::JsonSchemaProps { r#type: Some("integer".into()), maximum: Some(10.0), ..Default::default() })].into(),
            ..Default::default()
        })]
        .into(),
        ..Default::default()
    };
    let crd = x::CustomResourceDefinition {
        metadata: named("gizmos.pb.example.com"),
        spec: Some(x::CustomResourceDefinitionSpec {
            group: Some("pb.example.com".into()),
            names: Some(x::CustomResourceDefinitionNames { plural: Some("gizmos".into()), singular: Some("gizmo".into()), kind: Some("Gizmo".into()), list_kind: Some("GizmoList".into()), ..Default::default() }),
            scope: Some("Namespaced".into()),
            versions: vec![x::CustomResourceDefinitionVersion {
                name: Some("v1".into()),
                served: Some(true),
                storage: Some(true),
                schema: Some(x::CustomResourceValidation { open_apiv3_schema: Some(schema) }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(Default::default()),
    };
    let (code, out) = post(&c, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "apiextensions.k8s.io/v1", "CustomResourceDefinition", &crd);
    assert_eq!(code, 201, "{out}");
    assert_eq!(c.ok(&["get", "crd", "gizmos.pb.example.com", "-o", "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.size}"]), r#"{"maximum":10,"type":"integer"}"#);
    c.ok(&["wait", "--for=condition=Established", "crd/gizmos.pb.example.com", "--timeout=60s"]);
    let gizmo = meta::Status::default();
    let (code, out) = post(&c, "/apis/pb.example.com/v1/namespaces/default/gizmos", "pb.example.com/v1", "Gizmo", &gizmo);
    assert_eq!(code, 415, "{out}");
    assert!(out.contains("pb.example.com/v1/Gizmo"), "{out}");
}

/// A create that fails after its quota charge and its Service IP were computed (here: the
/// name is taken) takes neither: they are written in the create's own txn. No controllers
/// run, so nothing recomputes `used` afterwards to hide a leak.
#[test]
fn a_failed_create_charges_no_quota_and_takes_no_service_ip() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-controllers", "--no-scheduler", "--no-local-node"]);
    c.ok(&["create", "quota", "q", "--hard=pods=5,services=5"]);
    let p = c.write("p.json", &pod("p", "", ""));
    c.ok(&["create", "-f", path_str(&p)]);
    assert_eq!(c.ok(&["get", "quota", "q", "-o", "jsonpath={.status.used.pods}"]), "1");
    assert!(c.fails(&["create", "-f", path_str(&p)]).contains("AlreadyExists"));
    assert_eq!(c.ok(&["get", "quota", "q", "-o", "jsonpath={.status.used.pods}"]), "1", "the failed create charged the quota");
    c.ok(&["create", "service", "clusterip", "a", "--tcp=80"]);
    let ip_a: std::net::Ipv4Addr = c.ok(&["get", "svc", "a", "-o", "jsonpath={.spec.clusterIP}"]).parse().unwrap();
    assert!(c.fails(&["create", "service", "clusterip", "a", "--tcp=80"]).contains("already exists"));
    c.ok(&["create", "service", "clusterip", "b", "--tcp=80"]);
    let ip_b: std::net::Ipv4Addr = c.ok(&["get", "svc", "b", "-o", "jsonpath={.spec.clusterIP}"]).parse().unwrap();
    assert_ne!(ip_a, ip_b);
    // One IPAddress per Service cluster IP: none for the failed create.
    let mut holders: Vec<String> = c.ok(&["get", "ipaddresses", "-o", "jsonpath={.items[*].spec.parentRef.name}"]).split_whitespace().map(String::from).collect();
    holders.sort();
    assert_eq!(holders, ["a", "b", "kube-dns", "kubernetes"]);
    assert_eq!(c.ok(&["get", "quota", "q", "-o", "jsonpath={.status.used.services}"]), "2");
}

/// Cluster IPs are IPAddress objects, as in Kubernetes 1.33: free addresses of the range
/// (the ServiceCIDR `kubernetes`), each held by one Service, released when it is deleted and
/// kept across a restart.
#[test]
fn service_ips_are_unique_released_on_delete_and_survive_a_restart() {
    let range = service_range().replace("/24", "/28");
    let flags = ["--no-controllers", "--no-scheduler", "--no-local-node", "--service-cluster-ip-range", range.as_str()];
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &flags);
    assert_eq!(c.ok(&["get", "servicecidrs", "kubernetes", "-o", "jsonpath={.spec.cidrs[0]}"]), range);
    // 14 hosts: the first is the kubernetes Service's, the tenth kube-dns's; 12 are left.
    for i in 0..12 {
        c.ok(&["create", "service", "clusterip", &format!("s{i}"), "--tcp=80"]);
    }
    let e = c.fails(&["create", "service", "clusterip", "s12", "--tcp=80"]);
    assert!(e.contains("failed to allocate a serviceIP: range is full"), "{e}");
    let ip = |name: &str| c.ok(&["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"]);
    let freed = ip("s3");
    assert_eq!(c.ok(&["get", "ipaddress", &freed, "-o", "jsonpath={.spec.parentRef.namespace}/{.spec.parentRef.name}"]), "default/s3");
    c.ok(&["delete", "svc", "s3"]);
    assert!(c.fails(&["get", "ipaddress", &freed]).contains("NotFound"));
    c.ok(&["create", "service", "clusterip", "s12", "--tcp=80"]);
    assert_eq!(ip("s12"), freed, "the only free address is the one s3 released");
    // One asked for must be free and in the range.
    let taken = ip("s0");
    let svc = |name: &str, ip: &str| c.write(&format!("{name}.json"), &format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}"#));
    let e = c.fails(&["create", "-f", path_str(&svc("dup", &taken))]);
    assert!(e.contains(&format!("failed to allocate IP {taken}: provided IP is already allocated")), "{e}");
    let e = c.fails(&["create", "-f", path_str(&svc("far", "192.0.2.7"))]);
    assert!(e.contains("provided IP (192.0.2.7) is not in the valid range"), "{e}");
    // Headless Services take no address.
    c.ok(&["create", "-f", path_str(&svc("headless", "None"))]);
    // After a restart the addresses are still held.
    let dir = c.stop();
    let c = Cluster::start_with(dir, &flags);
    let e = c.fails(&["create", "service", "clusterip", "s13", "--tcp=80"]);
    assert!(e.contains("range is full"), "{e}");
    assert_eq!(c.ok(&["get", "ipaddresses", "-o", "name"]).lines().count(), 14);
}

#[test]
fn older_and_newer_kubectl_work_too() {
    let c = Cluster::start();
    for minor in [27, 33] {
        let k = kubectl_version(minor);
        let name = format!("cm-{minor}");
        let cm = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","labels":{{"v":"k{minor}"}}}},"data":{{"a":"b"}}}}"#);
        let f = c.write(&format!("{name}.json"), &cm);
        // 1.27 learns from /openapi/v2 (protobuf) that the server validates; 1.33 from v3.
        assert!(c.ok_with(&k, &["apply", "-f", path_str(&f)]).contains("created"), "kubectl 1.{minor} apply");
        let bad = c.write(&format!("bad-{minor}.json"), &cm.replace(r#""data""#, r#""datta""#));
        let out = c.kubectl_with(&k, &["apply", "-f", path_str(&bad)]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"), "kubectl 1.{minor} strict validation");
        let changed = c.write(&format!("{name}-2.json"), &cm.replace(r#""a":"b""#, r#""a":"c""#));
        assert!(c.ok_with(&k, &["apply", "-f", path_str(&changed)]).contains("configured"), "kubectl 1.{minor} apply changed");
        assert!(c.ok_with(&k, &["get", "cm", "-l", &format!("v=k{minor}")]).contains(&name), "kubectl 1.{minor} get");
        c.ok_with(&k, &["get", "namespaces"]);
        c.ok_with(&k, &["delete", "cm", &name]);
    }
    // 1.27 sends JSON for typed create commands (1.32+ send protobuf).
    c.ok_with(&kubectl_version(27), &["create", "namespace", "from-127"]);
    c.ok_with(&kubectl_version(27), &["create", "configmap", "c127", "-n", "from-127", "--from-literal=a=b"]);
    assert!(c.ok(&["get", "cm", "-n", "from-127"]).contains("c127"));
    c.ok(&["delete", "namespace", "from-127"]);
    assert!(c.fails(&["get", "cm", "c127", "-n", "from-127"]).contains("NotFound"));
}

#[test]
fn objects_survive_a_restart_on_the_same_data_dir() {
    // Without controllers, nothing changes the Deployment between the read and the stop.
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-controllers"]);
    c.ok(&["apply", "-f", path_str(&c.write("d.yaml", DEPLOYMENT))]);
    let rv = c.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let dir = c.stop();
    let c = Cluster::start_with(dir, &["--no-controllers"]);
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.resourceVersion}"]), rv);
}

#[test]
fn typed_create_commands_send_protobuf_and_work() {
    // kubectl 1.32+ sends these bodies as application/vnd.kubernetes.protobuf.
    let services = service_range();
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--service-cluster-ip-range", &services]);
    for args in [
        &["create", "namespace", "pb"][..],
        &["create", "configmap", "c1", "-n", "pb", "--from-literal=a=b"],
        &["create", "secret", "generic", "s1", "-n", "pb", "--from-literal=p=q"],
        &["create", "deployment", "web", "-n", "pb", "--image=nginx:1.25", "--replicas=2"],
        &["run", "pod1", "-n", "pb", "--image=busybox", "--labels=app=x", "--", "sleep", "10"],
        &["expose", "deployment", "web", "-n", "pb", "--port=80", "--target-port=8080"],
        &["create", "job", "j1", "-n", "pb", "--image=busybox"],
        &["create", "serviceaccount", "sa1", "-n", "pb"],
        // An autoscaling/v2 HorizontalPodAutoscaler (with a 415 kubectl would fall back to
        // autoscaling/v1, which is not served).
        &["autoscale", "deployment", "web", "-n", "pb", "--min=2", "--max=5", "--cpu-percent=80"],
    ] {
        c.ok(args);
    }
    assert_eq!(
        c.ok(&["get", "hpa", "web", "-n", "pb", "-o", "jsonpath={.spec.scaleTargetRef.kind}/{.spec.scaleTargetRef.name} {.spec.minReplicas}-{.spec.maxReplicas} {.spec.metrics[0].resource.name}={.spec.metrics[0].resource.target.averageUtilization}"]),
        "Deployment/web 2-5 cpu=80"
    );
    let table = c.ok(&["get", "hpa", "web", "-n", "pb"]);
    assert!(table.starts_with("NAME") && table.contains("REFERENCE") && table.contains("Deployment/web") && table.contains("cpu: <unknown>/80%"), "{table}");
    assert_eq!(c.ok(&["get", "secret", "s1", "-n", "pb", "-o", "jsonpath={.data.p}"]), "cQ==");
    assert_eq!(c.ok(&["get", "deploy", "web", "-n", "pb", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image}"]), "2 nginx:1.25");
    assert_eq!(c.ok(&["get", "pod", "pod1", "-n", "pb", "-o", "jsonpath={.spec.containers[0].args}"]), r#"["sleep","10"]"#);
    assert_eq!(c.ok(&["get", "svc", "web", "-n", "pb", "-o", "jsonpath={.spec.selector.app} {.spec.ports[0].targetPort}"]), "web 8080");
    let ip = c.ok(&["get", "svc", "web", "-n", "pb", "-o", "jsonpath={.spec.clusterIP}"]);
    let net = services.rsplit_once('.').unwrap().0;
    assert!(ip.starts_with(&format!("{net}.")), "a cluster IP from the service range {services}: {ip}");
    let all = c.ok(&["get", "all", "-n", "pb"]);
    assert!(all.contains("deployment.apps/web") && all.contains("pod/pod1") && all.contains("job.batch/j1"), "{all}");
}

#[test]
fn explain_reads_the_served_schemas() {
    let c = Cluster::start();
    let out = c.ok(&["explain", "pods.spec.containers"]);
    assert!(out.contains("FIELD: containers <[]Container>") && out.contains("List of containers belonging to the pod"), "{out}");
    let out = c.ok(&["explain", "deployment.spec.replicas"]);
    assert!(out.contains("GROUP:      apps") && out.contains("<integer>"), "{out}");
    // /openapi/v2 as JSON too: Swagger 2.0 with every kind's definition.
    let v2: serde_json::Value = serde_json::from_str(&c.ok(&["get", "--raw", "/openapi/v2"])).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    assert_eq!(v2["definitions"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
}

#[test]
fn unknown_fields_are_refused_under_strict_validation_and_dropped_otherwise() {
    let c = Cluster::start();
    let bad = c.write("bad.yaml", &DEPLOYMENT.replace("replicas: 2\n", "replicas: 2\n  replicaz: 3\n"));
    let e = c.fails(&["apply", "-f", path_str(&bad)]);
    assert!(e.contains(r#"strict decoding error: unknown field "spec.replicaz""#), "{e}");
    let out = c.kubectl_with(KUBECTL, &["apply", "--validate=warn", "-f", path_str(&bad)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"unknown field "spec.replicaz""#));
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicaz}"]), "", "the unknown field was dropped");
}

#[test]
fn server_side_apply_owns_fields_and_reports_conflicts() {
    let c = Cluster::start();
    let f = c.write("d.yaml", DEPLOYMENT);
    let f = path_str(&f);
    assert!(c.ok(&["apply", "--server-side", "-f", f]).contains("serverside-applied"));
    assert!(c.ok(&["apply", "--server-side", "-f", f]).contains("serverside-applied"));
    assert!(c.ok(&["apply", "--server-side", "--dry-run=server", "-f", f]).contains("server dry run"));
    // The Deployment controller records its own (Update) entries beside kubectl's, as
    // kube-controller-manager does.
    let managers = c.ok(&["get", "deploy", "web", "--show-managed-fields", "-o", "jsonpath={.metadata.managedFields[?(@.manager==\"kubectl\")].operation}"]);
    assert_eq!(managers, "Apply");
    c.ok(&["scale", "deploy", "web", "--replicas=5"]);
    let e = c.fails(&["apply", "--server-side", "-f", f]);
    assert!(e.contains(r#"Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas"#), "{e}");
    c.ok(&["apply", "--server-side", "--force-conflicts", "-f", f]);
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "2");
    // Dropping a field from the configuration removes it from the object.
    let fewer = c.write("d2.yaml", &DEPLOYMENT.replace("      - name: sidecar\n        image: busybox\n", ""));
    c.ok(&["apply", "--server-side", "-f", path_str(&fewer)]);
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].name}"]), "nginx");
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, enum: [red, blue]}
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;

#[test]
fn custom_resources_are_served_validated_and_removed_with_their_definition() {
    let c = Cluster::start();
    c.ok(&["apply", "-f", path_str(&c.write("crd.yaml", CRD))]);
    c.ok(&["wait", "--for", "condition=established", "crd/widgets.example.com", "--timeout=30s"]);
    let w = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3, color: red}\n";
    assert!(c.ok(&["apply", "-f", path_str(&c.write("w.yaml", w))]).contains("widget.example.com/w1 created"));
    assert!(c.ok(&["get", "wd"]).contains("w1"), "short name from the CRD");
    assert!(c.ok(&["api-resources"]).lines().any(|l| l.starts_with("widgets") && l.contains("example.com/v1")));
    let bad = c.write("bad.yaml", &w.replace("size: 3", "size: 0"));
    let e = c.fails(&["apply", "-f", path_str(&bad)]);
    assert!(e.contains("spec.size") && e.contains("greater than or equal to 1"), "{e}");
    let bad = c.write("bad2.yaml", &w.replace("color: red", "color: green"));
    assert!(c.fails(&["apply", "-f", path_str(&bad)]).contains("Unsupported value"));
    c.ok(&["patch", "widget", "w1", "--subresource=status", "--type=merge", "-p", r#"{"status":{"ready":true}}"#]);
    assert_eq!(c.ok(&["get", "widget", "w1", "-o", "jsonpath={.status.ready} {.metadata.generation}"]), "true 1", "status writes leave generation alone");
    c.ok(&["patch", "widget", "w1", "--type=merge", "-p", r#"{"spec":{"size":4},"status":{"ready":false}}"#]);
    assert_eq!(c.ok(&["get", "widget", "w1", "-o", "jsonpath={.status.ready} {.spec.size} {.metadata.generation}"]), "true 4 2", "the main resource does not write status");
    c.ok(&["delete", "crd", "widgets.example.com"]);
    let e = c.fails(&["get", "widgets"]);
    assert!(e.contains("could not find the requested resource") || e.contains("doesn't have a resource type"), "{e}");
    c.ok(&["apply", "-f", path_str(&c.write("crd2.yaml", CRD))]);
    assert!(c.ok(&["get", "widgets"]).is_empty(), "custom resources went with their definition");
}

#[test]
fn describe_pod_shows_its_events_and_get_events_has_kubectl_columns() {
    let c = Cluster::start();
    c.ok(&["create", "-f", path_str(&c.write("p.json", &pod("p1", r#""a":"b""#, "n1")))]);
    let uid = c.ok(&["get", "pod", "p1", "-o", "jsonpath={.metadata.uid}"]);
    let ev = format!(
        r#"{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"p1.1"}},"involvedObject":{{"kind":"Pod","name":"p1","namespace":"default","uid":"{uid}"}},"reason":"Scheduled","message":"Successfully assigned default/p1 to n1","type":"Normal","lastTimestamp":"2026-01-01T00:00:00Z","source":{{"component":"default-scheduler"}}}}"#
    );
    c.ok(&["create", "-f", path_str(&c.write("e.json", &ev))]);
    let d = c.ok(&["describe", "pod", "p1"]);
    assert!(d.contains("Events:") && d.contains("Scheduled") && d.contains("Successfully assigned default/p1 to n1"), "{d}");
    let evs = c.ok(&["get", "events"]);
    assert!(evs.starts_with("LAST SEEN") && evs.contains("pod/p1") && evs.contains("Scheduled"), "{evs}");
    // A strategic merge patch merges container ports by containerPort (on a pod template: a
    // pod's ports may not change once it exists).
    c.ok(&["create", "-f", path_str(&c.write("pt.yaml", "apiVersion: v1\nkind: PodTemplate\nmetadata: {name: t}\ntemplate:\n  spec:\n    containers: [{name: c, image: busybox}]\n"))]);
    c.ok(&["patch", "podtemplate", "t", "-p", r#"{"template":{"spec":{"containers":[{"name":"c","ports":[{"containerPort":80}]}]}}}"#]);
    c.ok(&["patch", "podtemplate", "t", "-p", r#"{"template":{"spec":{"containers":[{"name":"c","ports":[{"containerPort":443}]}]}}}"#]);
    assert_eq!(c.ok(&["get", "podtemplate", "t", "-o", "jsonpath={.template.spec.containers[0].ports[*].containerPort}"]), "80 443");
}

#[test]
fn a_watch_from_before_a_restart_is_gone_unless_it_asks_for_the_store_s_history() {
    let c = Cluster::start();
    // Labelled: the namespace also has the controllers' kube-root-ca.crt.
    let cm = |name: &str, v: &str| format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","labels":{{"t":"1"}}}},"data":{{"v":"{v}"}}}}"#);
    c.ok(&["create", "-f", path_str(&c.write("a.json", &cm("a", "1")))]);
    let rv = c.ok(&["get", "cm", "a", "-o", "jsonpath={.metadata.resourceVersion}"]);
    c.ok(&["create", "-f", path_str(&c.write("b.json", &cm("b", "1")))]);
    let dir = c.stop();
    let c = Cluster::start_in(dir);
    c.ok(&["patch", "cm", "a", "--type", "merge", "-p", r#"{"data":{"v":"2"}}"#]);
    // A client that held `rv` before the restart and watches again from it is told 410 Gone,
    // as Kubernetes tells it (the new cache's ring starts after the restart): it lists again.
    let out = c.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?labelSelector=t%3D1&watch=true&resourceVersion={rv}&timeoutSeconds=5")]);
    let gone: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((gone["type"].as_str(), gone["object"]["code"].as_i64(), gone["object"]["reason"].as_str()), (Some("ERROR"), Some(410), Some("Expired")), "{out}");
    assert!(gone["object"]["message"].as_str().unwrap().starts_with(&format!("too old resource version: {rv} (")), "{out}");
    // Asking for the store's history (`history=true`), it gets every change since, in order.
    let out = c.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?labelSelector=t%3D1&watch=true&resourceVersion={rv}&timeoutSeconds=5&history=true")]);
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["object"]["metadata"]["name"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(seen, vec![("ADDED".to_string(), "b".to_string()), ("MODIFIED".to_string(), "a".to_string())], "{out}");
    let counter = |name: &str| {
        let m = c.ok(&["get", "--raw", "/metrics"]);
        m.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).map(|n| n.trim().to_string())
    };
    let from_store = || counter("apiserver_watches_from_store_total");
    assert_eq!(from_store().as_deref(), Some("1"), "the resumed watch is counted as served from the store");
    // Once it had sent what the store held beyond the new cache's ring, it moved to the cache.
    assert_eq!(counter("apiserver_watches_handed_to_cache_total").as_deref(), Some("1"), "the resumed watch moved to the cache");
    // A resumed watch that stays open gets the store's history, then, from the cache, what
    // happens next: nothing lost or repeated at the hand-over.
    let url = format!("/api/v1/namespaces/default/configmaps?labelSelector=t%3D1&watch=true&resourceVersion={rv}&history=true");
    let (mut watch, mut lines) = c.kubectl_spawn(&["get", "--raw", &url]);
    let ev = |l: String| {
        let e: serde_json::Value = serde_json::from_str(&l).unwrap();
        (e["type"].as_str().unwrap().to_string(), e["object"]["metadata"]["name"].as_str().unwrap().to_string(), e["object"]["data"]["v"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(ev(lines.next("b from the store")), ("ADDED".into(), "b".into(), "1".into()));
    assert_eq!(ev(lines.next("a's patch from the store")), ("MODIFIED".into(), "a".into(), "2".into()));
    c.ok(&["patch", "cm", "a", "--type", "merge", "-p", r#"{"data":{"v":"3"}}"#]);
    assert_eq!(ev(lines.next("a's next patch, live")), ("MODIFIED".into(), "a".into(), "3".into()));
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(counter("apiserver_watches_handed_to_cache_total").as_deref(), Some("2"), "the second resumed watch moved to the cache too");
    // And a watch from the newest version is served by the cache.
    let now = c.ok(&["get", "cm", "a", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let out = c.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?labelSelector=t%3D1&watch=true&resourceVersion={now}&timeoutSeconds=1")]);
    assert!(out.trim().is_empty(), "nothing after the newest version: {out}");
    assert_eq!(from_store().as_deref(), Some("2"), "a watch from the newest version is the cache's");
}

#[test]
fn sigterm_with_an_open_watch_stops_the_server_and_ends_the_watch() {
    let c = Cluster::start();
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"w","labels":{"t":"1"}}}"#;
    c.ok(&["create", "-f", path_str(&c.write("cm.json", cm))]);
    let (mut watch, mut lines) = c.kubectl_spawn(&["get", "configmaps", "-l", "t=1", "-w", "-o", "name"]);
    assert_eq!(lines.next("the watch is open"), "configmap/w");
    // stop() fails the test if the server is not gone within the wait: an open watch must not
    // hold the graceful shutdown.
    let dir = c.stop();
    let status = watch.wait().unwrap();
    assert!(status.code().is_some(), "kubectl -w ended when the server stopped");
    // After a restart, kubectl get -w run again sees the state and the changes that follow.
    let c = Cluster::start_in(dir);
    let (mut watch, mut lines) = c.kubectl_spawn(&["get", "configmaps", "-l", "t=1", "-w", "-o", "jsonpath={.metadata.name}={.data.v}{\"\\n\"}"]);
    assert_eq!(lines.next("the state after the restart"), "w=");
    c.ok(&["patch", "cm", "w", "--type", "merge", "-p", r#"{"data":{"v":"after"}}"#]);
    assert_eq!(lines.next("a change after the restart"), "w=after");
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn metrics_expose_request_and_watch_cache_figures() {
    let c = Cluster::start();
    c.ok(&["get", "pods"]);
    let (code, body) = http(&c.addr, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    let text = String::from_utf8(body).unwrap();
    for needle in [
        r#"apiserver_request_total{verb="list",resource="pods",code="200"}"#,
        r#"apiserver_request_duration_seconds_bucket{verb="list",resource="pods",le="0.0001"}"#,
        "apiserver_current_inflight_requests",
        r#"watchcache_watchers{resource="registry/core/pods"}"#,
        r#"watchcache_ring_events{resource="registry/core/pods"}"#,
        r#"watchcache_event_delivery_seconds_bucket{resource="registry/core/pods",le="0.0001"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
}

#[test]
fn a_list_at_an_exact_past_resource_version_shows_that_state() {
    let c = Cluster::start();
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"v":"old"}}"#;
    c.ok(&["create", "-f", path_str(&c.write("cm.json", cm))]);
    let rv = c.ok(&["get", "cm", "x", "-o", "jsonpath={.metadata.resourceVersion}"]);
    c.ok(&["patch", "cm", "x", "--type", "merge", "-p", r#"{"data":{"v":"new"}}"#]);
    let out = c.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact")]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["metadata"]["resourceVersion"], rv.as_str());
    // The namespace also has the controllers' kube-root-ca.crt.
    let x = |v: &serde_json::Value| v["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == "x").map(|i| i["data"]["v"].clone());
    assert_eq!(x(&v), Some("old".into()));
    let now: serde_json::Value = serde_json::from_str(&c.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"])).unwrap();
    assert_eq!(x(&now), Some("new".into()));
}

#[test]
fn pages_of_a_list_come_from_one_snapshot_while_writes_go_on() {
    let c = Cluster::start();
    for i in 0..5 {
        let cm = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c{i}","labels":{{"t":"1"}}}}}}"#);
        c.ok(&["create", "-f", path_str(&c.write(&format!("c{i}.json"), &cm))]);
    }
    let mut names = Vec::new();
    // Labelled: the namespace also has the controllers' kube-root-ca.crt.
    let mut url = "/api/v1/namespaces/default/configmaps?labelSelector=t%3D1&limit=2".to_string();
    let mut rvs = Vec::new();
    loop {
        let page: serde_json::Value = serde_json::from_str(&c.ok(&["get", "--raw", &url])).unwrap();
        rvs.push(page["metadata"]["resourceVersion"].as_str().unwrap().to_string());
        names.extend(page["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()));
        // A write between pages is not part of this list.
        let extra = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"z{}"}}}}"#, names.len());
        c.ok(&["create", "-f", path_str(&c.write("extra.json", &extra))]);
        match page["metadata"]["continue"].as_str() {
            Some(tok) => url = format!("/api/v1/namespaces/default/configmaps?labelSelector=t%3D1&limit=2&continue={tok}"),
            None => break,
        }
    }
    assert_eq!(names, vec!["c0", "c1", "c2", "c3", "c4"]);
    assert!(rvs.windows(2).all(|w| w[0] == w[1]), "every page is at one revision: {rvs:?}");
}

#[test]
fn values_of_the_wrong_type_are_refused_and_nothing_is_stored() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let m = c.write("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typed}\ndata: {a: 1}\n");
    let e = c.fails(&["create", "-f", path_str(&m)]);
    assert!(
        e.contains("ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal number into Go struct field ConfigMap.data of type string"),
        "{e}"
    );
    let e = c.fails(&["get", "configmap", "typed"]);
    assert!(e.contains("NotFound"), "{e}");
    let m = c.write("d.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 1\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: {name: c, image: i}}\n");
    let e = c.fails(&["create", "-f", path_str(&m)]);
    assert!(e.contains("cannot unmarshal object into Go struct field Deployment.spec.template.spec.containers of type []v1.Container"), "{e}");
}

#[test]
fn server_side_apply_co_owns_equal_values_and_writes_nothing_for_a_no_op() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let m = c.write("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"1\", b: \"2\"}\n");
    let rv = || c.ok(&["get", "cm", "ssa", "-o", "jsonpath={.metadata.resourceVersion}"]);
    c.ok(&["create", "-f", path_str(&m)]);
    c.ok(&["apply", "--server-side", "-f", path_str(&m)]);
    let first = rv();
    // The same manifest again changes nothing: not written, same resourceVersion.
    c.ok(&["apply", "--server-side", "-f", path_str(&m)]);
    assert_eq!(rv(), first, "a no-op apply was written");
    // Another manager applying equal values co-owns them, no conflict.
    c.ok(&["apply", "--server-side", "--field-manager", "other", "-f", path_str(&m)]);
    let owners = c.ok(&["get", "cm", "ssa", "--show-managed-fields", "-o", "jsonpath={range .metadata.managedFields[*]}{.manager}={.fieldsV1} {end}"]);
    assert!(owners.contains("kubectl={\"f:data\":{\"f:a\":{},\"f:b\":{}}}") && owners.contains("other={\"f:data\":{\"f:a\":{},\"f:b\":{}}}"), "{owners}");
    // A different value conflicts, unless forced.
    let m2 = c.write("cm2.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"9\", b: \"2\"}\n");
    let e = c.fails(&["apply", "--server-side", "--field-manager", "other", "-f", path_str(&m2)]);
    assert!(e.contains("Apply failed with") && e.contains("conflict with \"kubectl\": .data.a"), "{e}");
    c.ok(&["apply", "--server-side", "--field-manager", "other", "--force-conflicts", "-f", path_str(&m2)]);
    assert_eq!(c.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]), "9");
    // A label set to the value it has is not a write either.
    c.ok(&["label", "cm", "ssa", "x=y"]);
    let labelled = rv();
    c.ok(&["label", "cm", "ssa", "x=y", "--overwrite"]);
    assert_eq!(rv(), labelled);
}

#[test]
fn node_ports_are_allocated_on_create_and_when_a_service_becomes_a_node_port() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node"]);
    let port = |name: &str| c.ok(&["get", "svc", name, "-o", "jsonpath={.spec.ports[0].nodePort}"]).parse::<u32>().unwrap_or(0);
    c.ok(&["create", "service", "nodeport", "np", "--tcp=80:8080"]);
    let first = port("np");
    assert!((30000..=32767).contains(&first), "{first}");
    c.ok(&["create", "service", "clusterip", "later", "--tcp=80:8080"]);
    c.ok(&["patch", "svc", "later", "-p", r#"{"spec":{"type":"NodePort"}}"#]);
    let second = port("later");
    assert!((30000..=32767).contains(&second) && second != first, "{second} (first {first})");
    // An update that keeps its port keeps it; another's port or one out of range is refused.
    c.ok(&["label", "svc", "later", "x=y"]);
    assert_eq!(port("later"), second);
    let e = c.fails(&["patch", "svc", "later", "-p", &format!(r#"{{"spec":{{"ports":[{{"port":80,"targetPort":8080,"nodePort":{first}}}]}}}}"#)]);
    assert!(e.contains("provided port is already allocated"), "{e}");
    let e = c.fails(&["patch", "svc", "later", "-p", r#"{"spec":{"ports":[{"port":80,"targetPort":8080,"nodePort":80}]}}"#]);
    assert!(e.contains("provided port is not in the valid range"), "{e}");
    // A TCP and a UDP port of one number share their node port, as Kubernetes shares it.
    let dns = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dns"},"spec":{"type":"NodePort","ports":[{"name":"tcp","port":53,"protocol":"TCP"},{"name":"udp","port":53,"protocol":"UDP"}]}}"#;
    c.ok(&["create", "-f", path_str(&c.write("dns.json", dns))]);
    let ports = c.ok(&["get", "svc", "dns", "-o", "jsonpath={.spec.ports[0].nodePort} {.spec.ports[1].nodePort}"]);
    let (a, b) = ports.split_once(' ').unwrap();
    assert!(a == b && a != first.to_string() && a != second.to_string(), "{ports}");
    // The same node port twice for one protocol is a duplicate.
    let dup = format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"dup"}},"spec":{{"type":"NodePort","ports":[{{"name":"a","port":1,"nodePort":31999}},{{"name":"b","port":2,"nodePort":31999}}]}}}}"#);
    let e = c.fails(&["create", "-f", path_str(&c.write("dup.json", &dup))]);
    assert!(e.contains("Duplicate value: 31999"), "{e}");
}

#[test]
fn limit_ranges_default_and_bound_pods_and_claims_and_qos_follows() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-controllers", "--no-scheduler", "--no-local-node"]);
    let lr = r#"apiVersion: v1
kind: LimitRange
metadata: {name: limits}
spec:
  limits:
  - type: Container
    max: {cpu: "1", memory: 1Gi}
    defaultRequest: {cpu: 100m, memory: 64Mi}
  - type: PersistentVolumeClaim
    min: {storage: 1Gi}
"#;
    let m = c.write("lr.yaml", lr);
    c.ok(&["apply", "-f", path_str(&m)]);
    // Defaulted at its own write: `default` from `max`.
    assert_eq!(c.ok(&["get", "limitrange", "limits", "-o", "jsonpath={.spec.limits[0].default.cpu}"]), "1");
    // A pod asking for nothing gets the defaults, and says so.
    let p = c.write("p.json", &pod("plain", "", ""));
    c.ok(&["create", "-f", path_str(&p)]);
    assert_eq!(c.ok(&["get", "pod", "plain", "-o", "jsonpath={.spec.containers[0].resources.limits.cpu} {.spec.containers[0].resources.requests.memory}"]), "1 64Mi");
    assert!(c.ok(&["get", "pod", "plain", "-o", "jsonpath={.metadata.annotations.kubernetes\\.io/limit-ranger}"]).starts_with("LimitRanger plugin set: cpu, memory limit for container c"));
    assert_eq!(c.ok(&["get", "pod", "plain", "-o", "jsonpath={.status.qosClass}"]), "Burstable");
    // Over the maximum: refused with Kubernetes' message, nothing stored.
    let big = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"big"},"spec":{"containers":[{"name":"c","image":"busybox","resources":{"limits":{"cpu":"2"}}}]}}"#;
    let b = c.write("big.json", big);
    let e = c.fails(&["create", "-f", path_str(&b)]);
    assert!(e.contains("pods \"big\" is forbidden: [maximum cpu usage per Container is 1, but limit is 2, maximum cpu usage per Container is 1, but request is 2]"), "{e}");
    assert!(c.fails(&["get", "pod", "big"]).contains("NotFound"));
    // Guaranteed: limits on both, requests equal (defaulted from the limits).
    let g = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"g"},"spec":{"containers":[{"name":"c","image":"busybox","resources":{"limits":{"cpu":"500m","memory":"128Mi"}}}]}}"#;
    let gf = c.write("g.json", g);
    c.ok(&["create", "-f", path_str(&gf)]);
    assert_eq!(c.ok(&["get", "pod", "g", "-o", "jsonpath={.status.qosClass} {.spec.containers[0].resources.requests.cpu}"]), "Guaranteed 500m");
    // A claim under the minimum.
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: small}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 100Mi}}}\n";
    let cl = c.write("claim.yaml", claim);
    let e = c.fails(&["apply", "-f", path_str(&cl)]);
    assert!(e.contains("persistentvolumeclaims \"small\" is forbidden: minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 100Mi"), "{e}");
}

#[test]
fn componentstatuses_report_the_scheduler_the_controllers_and_the_store() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-scheduler", "--no-local-node"]);
    // The controllers start once the API server is up.
    wait_until("the controller manager to report healthy", || c.ok(&["get", "cs", "controller-manager", "-o", "jsonpath={.conditions[0].status}"]) == "True");
    let out = c.kubectl_with(KUBECTL, &["get", "componentstatuses"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("v1 ComponentStatus is deprecated in v1.19+"), "{stderr}");
    let row = |name: &str| stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} row: {stdout}")).split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(stdout.lines().next().unwrap().split_whitespace().collect::<Vec<_>>(), ["NAME", "STATUS", "MESSAGE", "ERROR"]);
    assert_eq!(row("controller-manager")[1..3], ["Healthy".to_string(), "ok".to_string()]);
    assert_eq!(row("etcd-0")[1], "Healthy");
    // This cluster runs no scheduler, and none holds its lease.
    assert_eq!(row("scheduler")[1], "Unhealthy", "{stdout}");
    let one: serde_json::Value = serde_json::from_str(&c.ok(&["get", "cs", "etcd-0", "-o", "json"])).unwrap();
    assert_eq!(one["conditions"][0]["type"], "Healthy");
    assert_eq!(one["conditions"][0]["status"], "True");
    assert!(c.fails(&["get", "cs", "nope"]).contains("componentstatuses \"nope\" not found"));
    let e = c.fails(&["delete", "cs", "scheduler"]);
    assert!(e.contains("MethodNotAllowed") || e.contains("not allow"), "{e}");
    let api = c.ok(&["api-resources", "--api-group="]);
    assert!(api.lines().any(|l| l.starts_with("componentstatuses") && l.contains("cs") && l.contains("ComponentStatus")), "{api}");
}

#[test]
fn unconditional_updates_that_race_all_succeed_and_conditional_ones_conflict() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-controllers", "--no-scheduler", "--no-local-node"]);
    c.ok(&["create", "configmap", "race"]);
    let put = |rv: Option<&str>, i: usize| {
        let rv = rv.map(|r| format!(r#","resourceVersion":"{r}""#)).unwrap_or_default();
        format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"race"{rv}}},"data":{{"writer":"{i}"}}}}"#)
    };
    // Without a resourceVersion a PUT is unconditional: Kubernetes applies it again over
    // whatever another writer left (GuaranteedUpdate), so none of them is refused.
    for round in 0..5 {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let (addr, body) = (c.addr.clone(), put(None, i));
                std::thread::spawn(move || http(&addr, "PUT", "/api/v1/namespaces/default/configmaps/race", &[("Content-Type", "application/json")], body.as_bytes()))
            })
            .collect();
        let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap().0).collect();
        assert!(codes.iter().all(|c| *c == 200), "round {round}: {codes:?}");
    }
    // With a stale one it is a 409.
    let rv = c.ok(&["get", "cm", "race", "-o", "jsonpath={.metadata.resourceVersion}"]);
    c.ok(&["label", "cm", "race", "moved=yes"]);
    let (code, body) = http(&c.addr, "PUT", "/api/v1/namespaces/default/configmaps/race", &[("Content-Type", "application/json")], put(Some(&rv), 99).as_bytes());
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn concurrent_creates_or_updates_asking_for_one_node_port_admit_exactly_one() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-controllers", "--no-scheduler", "--no-local-node"]);
    // Many rounds of racing creates, each round for its own port: without a reservation in
    // the create's txn, two creates that read the Services before either wrote both succeed.
    for round in 0..10u16 {
        let port = 30100 + round;
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let addr = c.addr.clone();
                std::thread::spawn(move || {
                    let body = format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"np-{port}-{i}"}},"spec":{{"type":"NodePort","ports":[{{"port":80,"nodePort":{port}}}]}}}}"#);
                    http(&addr, "POST", "/api/v1/namespaces/default/services", &[("Content-Type", "application/json")], body.as_bytes())
                })
            })
            .collect();
        let results: Vec<(u16, Vec<u8>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let created = results.iter().filter(|(code, _)| *code == 201).count();
        assert_eq!(created, 1, "round {round}: {:?}", results.iter().map(|(c, b)| (c, String::from_utf8_lossy(b).chars().take(160).collect::<String>())).collect::<Vec<_>>());
        assert!(results.iter().filter(|(code, _)| *code != 201).all(|(code, b)| *code == 422 && String::from_utf8_lossy(b).contains("provided port is already allocated")));
    }
    // A port freed by a deletion can be taken again (its reservation key is overwritten).
    let holder = c.ok(&["get", "svc", "-o", "jsonpath={range .items[?(@.spec.ports[0].nodePort==30100)]}{.metadata.name}{end}"]);
    c.ok(&["delete", "svc", holder.trim()]);
    c.ok(&["create", "service", "nodeport", "again", "--tcp=80", "--node-port=30100"]);
    // Updates that turn ClusterIP Services into NodePorts asking for one port race the same
    // way: exactly one takes it, the others are told it is allocated.
    for round in 0..5u16 {
        let port = 30200 + round;
        for i in 0..8 {
            c.ok(&["create", "service", "clusterip", &format!("up-{port}-{i}"), "--tcp=80"]);
        }
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let addr = c.addr.clone();
                std::thread::spawn(move || {
                    let body = format!(r#"{{"spec":{{"type":"NodePort","ports":[{{"port":80,"nodePort":{port}}}]}}}}"#);
                    http(&addr, "PATCH", &format!("/api/v1/namespaces/default/services/up-{port}-{i}"), &[("Content-Type", "application/merge-patch+json")], body.as_bytes())
                })
            })
            .collect();
        let results: Vec<(u16, Vec<u8>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let updated = results.iter().filter(|(code, _)| *code == 200).count();
        assert_eq!(updated, 1, "round {round}: {:?}", results.iter().map(|(c, b)| (c, String::from_utf8_lossy(b).chars().take(160).collect::<String>())).collect::<Vec<_>>());
        assert!(results.iter().filter(|(code, _)| *code != 200).all(|(code, b)| *code == 422 && String::from_utf8_lossy(b).contains("provided port is already allocated")));
        let holders = c.ok(&["get", "svc", "-o", &format!("jsonpath={{range .items[?(@.spec.ports[0].nodePort=={port})]}}{{.metadata.name}} {{end}}")]);
        assert_eq!(holders.split_whitespace().count(), 1, "round {round}: {holders}");
    }
}

#[test]
fn a_runtime_class_gives_its_pods_overhead_and_scheduling_or_refuses_them() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--no-local-node", "--no-scheduler"]);
    let pod = |name: &str, class: &str| c.write(&format!("{name}.yaml"), &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  runtimeClassName: {class}\n  containers: [{{name: c, image: busybox}}]\n"));
    let e = c.fails(&["create", "-f", path_str(&pod("early", "sandboxed"))]);
    assert!(e.contains("pods \"early\" is forbidden: pod rejected: RuntimeClass \"sandboxed\" not found"), "{e}");
    let rc = c.write("rc.yaml", "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: sandboxed}\nhandler: runsc\noverhead: {podFixed: {cpu: 250m, memory: 64Mi}}\nscheduling:\n  nodeSelector: {sandbox: 'true'}\n  tolerations: [{key: sandbox, operator: Exists, effect: NoSchedule}]\n");
    c.ok(&["apply", "-f", path_str(&rc)]);
    assert!(c.ok(&["get", "runtimeclass"]).lines().any(|l| l.starts_with("sandboxed") && l.contains("runsc")), "kubectl's HANDLER column");
    c.ok(&["create", "-f", path_str(&pod("p", "sandboxed"))]);
    assert_eq!(c.ok(&["get", "pod", "p", "-o", "jsonpath={.spec.overhead.cpu} {.spec.overhead.memory} {.spec.nodeSelector.sandbox} {.spec.tolerations[0].key}"]), "250m 64Mi true sandbox");
}
