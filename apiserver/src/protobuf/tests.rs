use super::*;
use k8s_pb::api::{apps::v1 as apps, core::v1 as core};
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use serde_json::json;

use super::fields::MESSAGES;
use super::table::{Message, Ty};

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let u = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut b = MAGIC.to_vec();
    b.extend(u.encode_to_vec());
    b
}

#[test]
fn a_protobuf_horizontal_pod_autoscaler_keeps_its_metrics_and_behavior() {
    use k8s_pb::api::autoscaling::v2 as a;
    let q = |s: &str| Some(k8s_pb::apimachinery::pkg::api::resource::Quantity { string: Some(s.into()) });
    let h = a::HorizontalPodAutoscaler {
        metadata: Some(meta::ObjectMeta { name: Some("web".into()), ..Default::default() }),
        spec: Some(a::HorizontalPodAutoscalerSpec {
            scale_target_ref: Some(a::CrossVersionObjectReference { kind: Some("Deployment".into()), name: Some("web".into()), api_version: Some("apps/v1".into()) }),
            min_replicas: Some(2),
            max_replicas: Some(5),
            metrics: vec![
                a::MetricSpec {
                    r#type: Some("Resource".into()),
                    resource: Some(a::ResourceMetricSource { name: Some("cpu".into()), target: Some(a::MetricTarget { r#type: Some("Utilization".into()), average_utilization: Some(80), ..Default::default() }) }),
                    ..Default::default()
                },
                a::MetricSpec {
                    r#type: Some("Pods".into()),
                    pods: Some(a::PodsMetricSource {
                        metric: Some(a::MetricIdentifier { name: Some("rps".into()), selector: None }),
                        target: Some(a::MetricTarget { r#type: Some("AverageValue".into()), average_value: q("10"), ..Default::default() }),
                    }),
                    ..Default::default()
                },
            ],
            behavior: Some(a::HorizontalPodAutoscalerBehavior {
                scale_down: Some(a::HpaScalingRules {
                    stabilization_window_seconds: Some(30),
                    policies: vec![a::HpaScalingPolicy { r#type: Some("Percent".into()), value: Some(50), period_seconds: Some(60) }],
                    ..Default::default()
                }),
                scale_up: None,
            }),
        }),
        status: None,
    };
    let v = to_json(&envelope("autoscaling/v2", "HorizontalPodAutoscaler", h.encode_to_vec())).unwrap();
    assert_eq!(
        v,
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 5,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30, "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]}},
        }})
    );
}

#[test]
fn a_protobuf_namespace_becomes_its_json() {
    let ns = core::Namespace { metadata: Some(meta::ObjectMeta { name: Some("x".into()), ..Default::default() }), ..Default::default() };
    let v = to_json(&envelope("v1", "Namespace", ns.encode_to_vec())).unwrap();
    assert_eq!(v, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}));
}

#[test]
fn a_protobuf_deployment_keeps_its_pod_template() {
    let d = apps::Deployment {
        metadata: Some(meta::ObjectMeta { name: Some("web".into()), labels: [("app".to_string(), "web".to_string())].into(), ..Default::default() }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(3),
            selector: Some(meta::LabelSelector { match_labels: [("app".to_string(), "web".to_string())].into(), ..Default::default() }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta { labels: [("app".to_string(), "web".to_string())].into(), ..Default::default() }),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container { name: Some("nginx".into()), image: Some("nginx".into()), ..Default::default() }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let v = to_json(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
    assert_eq!(v["spec"]["replicas"], 3);
    assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
    assert_eq!(v["spec"]["template"]["spec"]["containers"][0]["image"], "nginx");
}

#[test]
fn secrets_carry_base64_data_and_bad_bodies_are_refused() {
    let s = core::Secret { data: [("k".to_string(), b"hi".to_vec())].into(), ..Default::default() };
    let v = to_json(&envelope("v1", "Secret", s.encode_to_vec())).unwrap();
    assert_eq!(v["data"]["k"], "aGk=");
    assert!(matches!(to_json(b"nope"), Err(PbError::Malformed(_))));
    assert!(matches!(to_json(&envelope("v1", "Secret", vec![0xff, 0xff, 0xff])), Err(PbError::Malformed(_))));
    assert!(matches!(to_json(&envelope("v1", "Widget", vec![])), Err(PbError::Unsupported(_))));
    let mut gzipped = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(&envelope("v1", "Secret", vec![])[4..]).unwrap();
    gzipped.content_encoding = Some("gzip".into());
    let mut body = MAGIC.to_vec();
    body.extend(gzipped.encode_to_vec());
    assert!(matches!(to_json(&body), Err(PbError::Unsupported(m)) if m.contains("gzip")), "a content encoding is refused, not misread");
}

/// Bytes of a message with every field set (strings "v", numbers 1, booleans true, two
/// elements per list and two keys per map near the top, one deeper), nested messages as far
/// as they go without entering a message already on the path (a CRD schema holds schemas).
fn filled(m: &Message, path: &mut Vec<*const Message>) -> Vec<u8> {
    fn key(out: &mut Vec<u8>, tag: u32, wire_type: u8) {
        varint(out, u64::from(tag) << 3 | u64::from(wire_type));
    }
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn len(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
        key(out, tag, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    const JSON: &[u8] = br#"{"k":"v"}"#;
    let mut out = Vec::new();
    path.push(m as *const Message);
    let n = if path.len() <= 3 { 2 } else { 1 };
    for f in m.fields {
        let inner = |i: u16, path: &mut Vec<*const Message>| {
            let sub = super::table::message(i);
            if path.contains(&(sub as *const Message)) || path.len() > 8 { None } else { Some(filled(sub, path)) }
        };
        for e in 0..(if f.repeated || matches!(f.ty, Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_)) { n } else { 1 }) {
            match f.ty {
                Ty::Str => len(&mut out, f.tag, b"v"),
                Ty::Bytes => len(&mut out, f.tag, JSON),
                Ty::I32 | Ty::I64 | Ty::Bool => {
                    key(&mut out, f.tag, 0);
                    varint(&mut out, 1);
                }
                Ty::F64 => {
                    key(&mut out, f.tag, 1);
                    out.extend_from_slice(&1.5f64.to_le_bytes());
                }
                Ty::Msg(i) => match inner(i, path) {
                    Some(b) => len(&mut out, f.tag, &b),
                    None => break,
                },
                Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_) => {
                    let mut entry = Vec::new();
                    len(&mut entry, 1, if e == 0 { b"a" } else { b"b" });
                    match f.ty {
                        Ty::MapStr => len(&mut entry, 2, b"v"),
                        Ty::MapBytes => len(&mut entry, 2, JSON),
                        Ty::MapMsg(i) => match inner(i, path) {
                            // prost leaves a value equal to its default out of an entry.
                            Some(b) if !b.is_empty() => len(&mut entry, 2, &b),
                            _ => {}
                        },
                        _ => unreachable!(),
                    }
                    len(&mut out, f.tag, &entry);
                }
            }
        }
    }
    path.pop();
    out
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    format!("lengths {} and {}, first difference at byte {i}: {:?} vs {:?}", a.len(), b.len(), &a[i..(i + 16).min(a.len())], &b[i..(i + 16).min(b.len())])
}

/// The generated table agrees with k8s-pb's own types on every kind: a message with every
/// field the table knows, written by the table, decodes with the crate's type and encodes
/// back to the same bytes (a wrong tag would be dropped as unknown, a wrong wire type would
/// not decode).
#[test]
fn the_field_table_agrees_with_k8s_pb_on_every_kind() {
    let mut checked = 0;
    macro_rules! check {
        ($av:literal, $kind:literal, $ty:ty) => {{
            let m = super::table::kind($av, $kind).expect($kind);
            let bytes = filled(m, &mut Vec::new());
            let typed = <$ty as prost::Message>::decode(&bytes[..]).unwrap_or_else(|e| panic!("{} {}: {e}", $av, $kind));
            let again = prost::Message::encode_to_vec(&typed);
            assert!(again == bytes, "{} {}: the table's bytes and k8s-pb's differ: {}", $av, $kind, first_difference(&bytes, &again));
            checked += 1;
        }};
    }
    super::fields::for_each_kind!(check);
    assert!(checked > 80, "only {checked} kinds");
}

/// Every served kind, with every field set, decodes to JSON its schema accepts whole: no
/// field the schema does not know (a wrong JSON name), no value of the wrong type.
#[test]
fn every_served_kind_decodes_to_json_its_schema_accepts() {
    let reg = crate::registry::Registry::new();
    let schemas = crate::schema::Schemas::get(&reg);
    let mut checked = Vec::new();
    macro_rules! check {
        ($av:literal, $kind:literal, $ty:ty) => {{
            let (group, version) = $av.rsplit_once('/').unwrap_or(("", $av));
            if schemas.name_of(group, version, $kind).is_some() {
                let m = super::table::kind($av, $kind).unwrap();
                let mut v = to_json(&envelope($av, $kind, filled(m, &mut Vec::new()))).unwrap_or_else(|e| panic!("{} {}: {e:?}", $av, $kind));
                let unknown = schemas.prune_unknown(group, version, $kind, &mut v);
                assert_eq!(unknown, Ok(vec![]), "{} {}", $av, $kind);
                checked.push($kind);
            }
        }};
    }
    super::fields::for_each_kind!(check);
    assert!(checked.len() >= 50, "only {} served kinds: {checked:?}", checked.len());
}

#[test]
fn the_tables_are_sorted_and_every_message_is_reachable_by_index() {
    for w in super::fields::KINDS.windows(2) {
        assert!((w[0].0, w[0].1) < (w[1].0, w[1].1), "{:?} !< {:?}", w[0], w[1]);
    }
    for m in MESSAGES {
        assert!(m.fields.windows(2).all(|w| w[0].tag < w[1].tag), "{}", m.name);
        for f in m.fields {
            if let Ty::Msg(i) | Ty::MapMsg(i) = f.ty {
                assert!((i as usize) < MESSAGES.len(), "{}.{}", m.name, f.json);
            }
        }
    }
    assert_eq!(super::table::kind("v1", "Pod").unwrap().name, "io.k8s.api.core.v1.Pod");
    assert!(super::table::kind("v1", "Widget").is_none());
}

#[test]
fn go_types_with_their_own_json_form() {
    let q = |s: &str| k8s_pb::apimachinery::pkg::api::resource::Quantity { string: Some(s.into()) };
    let t = |s: i64| meta::Time { seconds: Some(s), nanos: Some(500) };
    let pod = core::Pod {
        metadata: Some(meta::ObjectMeta {
            name: Some("p".into()),
            creation_timestamp: Some(meta::Time::default()),
            deletion_timestamp: Some(t(1_700_000_000)),
            ..Default::default()
        }),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: Some("c".into()),
                resources: Some(core::ResourceRequirements { limits: [("cpu".to_string(), q("250m"))].into(), ..Default::default() }),
                liveness_probe: Some(core::Probe {
                    handler: Some(core::ProbeHandler {
                        http_get: Some(core::HttpGetAction {
                            port: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString { r#type: Some(1), int_val: Some(0), str_val: Some("http".into()) }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    period_seconds: Some(5),
                    ..Default::default()
                }),
                ports: vec![core::ContainerPort { container_port: Some(80), host_ip: Some(String::new()), ..Default::default() }],
                // As Go writes them: non-pointer fields even when zero.
                stdin: Some(false),
                security_context: Some(core::SecurityContext { allow_privilege_escalation: Some(false), ..Default::default() }),
                ..Default::default()
            }],
            host_network: Some(false),
            termination_grace_period_seconds: Some(0),
            volumes: vec![core::Volume {
                name: Some("cfg".into()),
                volume_source: Some(core::VolumeSource {
                    config_map: Some(core::ConfigMapVolumeSource {
                        local_object_reference: Some(core::LocalObjectReference { name: Some("cm".into()) }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        }),
        status: Some(Default::default()),
    };
    let v = to_json(&envelope("v1", "Pod", pod.encode_to_vec())).unwrap();
    assert_eq!(v["metadata"], json!({"name": "p", "deletionTimestamp": "2023-11-14T22:13:20Z"}), "a zero time is left out, a time is whole seconds");
    let c = &v["spec"]["containers"][0];
    assert_eq!(c["resources"], json!({"limits": {"cpu": "250m"}}));
    assert_eq!(c["livenessProbe"], json!({"httpGet": {"port": "http"}, "periodSeconds": 5}), "the inline ProbeHandler joins the probe");
    assert_eq!(c["ports"], json!([{"containerPort": 80}]), "an empty string field is left out, as Go's JSON omits it");
    assert!(c.get("stdin").is_none() && v["spec"].get("hostNetwork").is_none(), "zero non-pointer omitempty fields are left out: {v}");
    assert_eq!(v["spec"]["terminationGracePeriodSeconds"], 0, "a pointer set to zero is kept");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "a pointer set to false is kept");
    assert_eq!(v["spec"]["volumes"], json!([{"name": "cfg", "configMap": {"name": "cm"}}]), "inline structs two deep");
    assert_eq!(v["status"], json!({}));

    let lease = k8s_pb::api::coordination::v1::Lease {
        spec: Some(k8s_pb::api::coordination::v1::LeaseSpec {
            renew_time: Some(k8s_pb::apimachinery::pkg::apis::meta::v1::MicroTime { seconds: Some(1_700_000_000), nanos: Some(123_456_789) }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let v = to_json(&envelope("coordination.k8s.io/v1", "Lease", lease.encode_to_vec())).unwrap();
    assert_eq!(v["spec"]["renewTime"], "2023-11-14T22:13:20.123456Z");

    let pdb = k8s_pb::api::policy::v1::PodDisruptionBudget {
        spec: Some(k8s_pb::api::policy::v1::PodDisruptionBudgetSpec {
            min_available: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString { r#type: Some(0), int_val: Some(2), str_val: Some(String::new()) }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let v = to_json(&envelope("policy/v1", "PodDisruptionBudget", pdb.encode_to_vec())).unwrap();
    assert_eq!(v["spec"]["minAvailable"], 2);

    let cm = core::ConfigMap { data: [("empty".to_string(), String::new()), ("k".to_string(), "v".to_string())].into(), ..Default::default() };
    let v = to_json(&envelope("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
    assert_eq!(v["data"], json!({"empty": "", "k": "v"}), "an empty value in a map is kept");

    let ctl = apps::ControllerRevision {
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension { raw: Some(br#"{"spec":{"x":1}}"#.to_vec()) }),
        revision: Some(3),
        ..Default::default()
    };
    let v = to_json(&envelope("apps/v1", "ControllerRevision", ctl.encode_to_vec())).unwrap();
    assert_eq!(v["data"], json!({"spec": {"x": 1}}));
    assert_eq!(v["revision"], 3);
}

#[test]
fn a_custom_resource_definition_keeps_its_schema() {
    use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as x;
    let props = |t: &str| x::JsonSchemaProps { r#type: Some(t.into()), ..Default::default() };
    let schema = x::JsonSchemaProps {
        r#type: Some("object".into()),
        properties: [("size".to_string(), props("integer")), ("tags".to_string(), x::JsonSchemaProps {
            r#type: Some("array".into()),
            items: Some(Box::new(x::JsonSchemaPropsOrArray { schema: Some(Box::new(props("string"))), j_son_schemas: vec![] })),
            ..Default::default()
        })]
        .into(),
        additional_properties: Some(Box::new(x::JsonSchemaPropsOrBool { allows: Some(false), schema: None })),
        x_kubernetes_preserve_unknown_fields: Some(true),
        default: Some(x::Json { raw: Some(br#"{"size":1}"#.to_vec()) }),
        maximum: Some(10.5),
        ..Default::default()
    };
    let crd = x::CustomResourceDefinition {
        spec: Some(x::CustomResourceDefinitionSpec {
            group: Some("example.com".into()),
            versions: vec![x::CustomResourceDefinitionVersion {
                name: Some("v1".into()),
                schema: Some(x::CustomResourceValidation { open_apiv3_schema: Some(schema) }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let v = to_json(&envelope("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd.encode_to_vec())).unwrap();
    assert_eq!(
        v["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        json!({"type": "object", "properties": {"size": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
            "additionalProperties": false, "x-kubernetes-preserve-unknown-fields": true, "default": {"size": 1}, "maximum": 10.5})
    );
}

#[test]
fn malformed_messages_are_refused_with_where() {
    let bad = |raw: Vec<u8>| match to_json(&envelope("v1", "Pod", raw)) {
        Err(PbError::Malformed(m)) => m,
        other => panic!("{other:?}"),
    };
    // metadata (field 1) as a varint
    assert!(bad(vec![0x08, 0x01]).contains("Pod.metadata (field 1) has wire type 0"), "{}", bad(vec![0x08, 0x01]));
    // metadata's length runs past the end
    assert!(bad(vec![0x0a, 0x05, 0x0a]).contains("a length of 5 bytes where 1 remain"));
    // metadata.name not UTF-8
    assert!(bad(vec![0x0a, 0x03, 0x0a, 0x01, 0xff]).contains("in ObjectMeta.name: a string that is not UTF-8"), "{}", bad(vec![0x0a, 0x03, 0x0a, 0x01, 0xff]));
    // a truncated varint
    assert!(bad(vec![0x80]).contains("varint"));
    // metadata.name (a string) as a varint
    assert!(bad(vec![0x0a, 0x02, 0x08, 0x01]).contains("ObjectMeta.name (field 1) has wire type 0"), "{}", bad(vec![0x0a, 0x02, 0x08, 0x01]));
    // unknown fields are skipped
    let v = to_json(&envelope("v1", "Pod", vec![0xf8, 0x07, 0x01])).unwrap();
    assert_eq!(v, json!({"apiVersion": "v1", "kind": "Pod"}));
}

#[test]
fn nesting_is_bounded() {
    use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as x;
    let mut s = x::JsonSchemaProps::default();
    for _ in 0..200 {
        s = x::JsonSchemaProps { not: Some(Box::new(s)), ..Default::default() };
    }
    let crd = x::CustomResourceDefinition {
        spec: Some(x::CustomResourceDefinitionSpec {
            versions: vec![x::CustomResourceDefinitionVersion { schema: Some(x::CustomResourceValidation { open_apiv3_schema: Some(s) }), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    };
    match to_json(&envelope("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd.encode_to_vec())) {
        Err(PbError::Malformed(m)) => assert!(m.contains("nested deeper than"), "{m}"),
        other => panic!("{other:?}"),
    }
}
