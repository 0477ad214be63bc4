//! `/openapi/v2` as protobuf (gnostic's `openapi.v2.Document`), for kubectl before 1.28: its
//! `apply` and `create -f` look there for whether the server validates fields. The document
//! holds, for every kind, a PATCH operation with its group-version-kind and a `fieldValidation`
//! query parameter, so kubectl leaves validation to the server. It carries no definitions.
//!
//! As JSON (`document_json`), it is the Swagger 2.0 form of the v3 documents: every
//! group-version's schemas as `definitions` (references rewritten to `#/definitions/`), and
//! the same PATCH and PUT operations, for tools that read the whole schema from v2.
//!
//! Encoded by hand with the field numbers of gnostic's `OpenAPIv2.proto` (a few nested
//! messages of strings), rather than generating code for the whole schema.

use crate::registry::Registry;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, ((field as u64) << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn bool_field(out: &mut Vec<u8>, field: u32, v: bool) {
    varint(out, (field as u64) << 3);
    varint(out, v as u64);
}

fn msg(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    f(&mut v);
    v
}

fn query_param(name: &str) -> Vec<u8> {
    // ParametersItem{parameter=1: Parameter{non_body_parameter=2: NonBodyParameter{
    //   query_parameter_sub_schema=3: {in=2, name=4, type=6, unique_items=20}}}}
    let sub = msg(|m| {
        bytes_field(m, 2, b"query");
        bytes_field(m, 4, name.as_bytes());
        bytes_field(m, 6, b"string");
        bool_field(m, 20, true);
    });
    let non_body = msg(|m| bytes_field(m, 3, &sub));
    let param = msg(|m| bytes_field(m, 2, &non_body));
    msg(|m| bytes_field(m, 1, &param))
}

/// The protobuf document.
pub fn document(reg: &Registry) -> Vec<u8> {
    let mut paths = Vec::new();
    for r in reg.all() {
        let gv = if r.group.is_empty() { format!("api/{}", r.version) } else { format!("apis/{}/{}", r.group, r.version) };
        let path = if r.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", r.resource)
        } else {
            format!("/{gv}/{}/{{name}}", r.resource)
        };
        let gvk_yaml = format!("group: {:?}\nkind: {}\nversion: {}\n", r.group, r.kind, r.version);
        // NamedAny{name=1, value=2: Any{yaml=2}}
        let ext = msg(|m| {
            bytes_field(m, 1, b"x-kubernetes-group-version-kind");
            bytes_field(m, 2, &msg(|a| bytes_field(a, 2, gvk_yaml.as_bytes())));
        });
        // Operation{operation_id=5, parameters=8 (repeated), vendor_extension=13}
        let op = msg(|m| {
            bytes_field(m, 5, format!("patch{}", r.kind).as_bytes());
            for p in ["fieldValidation", "dryRun", "fieldManager"] {
                bytes_field(m, 8, &query_param(p));
            }
            bytes_field(m, 13, &ext);
        });
        // NamedPathItem{name=1, value=2: PathItem{patch=8}}
        let item = msg(|m| {
            bytes_field(m, 1, path.as_bytes());
            bytes_field(m, 2, &msg(|p| bytes_field(p, 8, &op)));
        });
        paths.push(item);
    }
    msg(|d| {
        bytes_field(d, 1, b"2.0");
        bytes_field(d, 2, &msg(|i| {
            bytes_field(i, 1, b"Kubernetes");
            bytes_field(i, 2, b"v1.33.0");
        }));
        // Paths{path=2 (repeated)}
        bytes_field(d, 8, &msg(|p| {
            for item in &paths {
                bytes_field(p, 2, item);
            }
        }));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_encode_as_protobuf_does() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, vec![0xac, 0x02]);
        let mut f = Vec::new();
        bytes_field(&mut f, 1, b"2.0");
        assert_eq!(f, vec![0x0a, 3, b'2', b'.', b'0']);
        let doc = document(&Registry::new());
        assert!(doc.starts_with(&[0x0a, 3, b'2', b'.', b'0']));
        assert!(doc.windows(15).any(|w| w == b"fieldValidation"));
    }

    #[test]
    fn the_json_document_is_swagger_2_with_every_reference_defined() {
        let doc = document_json(&Registry::new());
        assert_eq!(doc["swagger"], "2.0");
        let defs = doc["definitions"].as_object().unwrap();
        let pod = &defs["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert!(defs.contains_key("io.k8s.api.apps.v1.Deployment") && defs.contains_key("io.k8s.api.networking.v1.IPAddress"));
        let op = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(op["responses"]["200"]["schema"]["$ref"], "#/definitions/io.k8s.api.core.v1.Pod");
        assert_eq!(op["parameters"][0]["type"], "string");
        // No v3 reference is left, and every reference names a definition.
        fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        out.push(r);
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 100);
        for r in all {
            let name = r.strip_prefix("#/definitions/").unwrap_or_else(|| panic!("a reference outside the definitions: {r}"));
            assert!(defs.contains_key(name), "{r} is not defined");
        }
    }
}

/// Rewrites OpenAPI v3 schema references to Swagger 2.0's (`#/components/schemas/X` to
/// `#/definitions/X`).
fn v2_refs(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(r)) = m.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                *r = format!("#/definitions/{name}");
            }
            m.values_mut().for_each(v2_refs);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(v2_refs),
        _ => {}
    }
}

/// `/openapi/v2` as JSON: Swagger 2.0 with every group-version's definitions and operations.
pub fn document_json(reg: &Registry) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let (mut definitions, mut paths) = (Map::new(), Map::new());
    for (g, vs) in reg.groups() {
        for v in vs {
            let Some(mut doc) = crate::discovery::openapi_gv(reg, g, v) else { continue };
            v2_refs(&mut doc);
            if let Some(Value::Object(s)) = doc["components"].get_mut("schemas").map(Value::take) {
                definitions.extend(s);
            }
            for (path, item) in doc["paths"].as_object().into_iter().flatten() {
                let mut item = item.clone();
                for op in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                    // v2 parameters carry their type themselves; responses their schema.
                    for p in op["parameters"].as_array_mut().into_iter().flatten() {
                        if let Some(t) = p.as_object_mut().and_then(|m| m.remove("schema")) {
                            p["type"] = t["type"].clone();
                            p["uniqueItems"] = t["uniqueItems"].clone();
                        }
                    }
                    let schema = op["responses"]["200"]["content"]["application/json"]["schema"].take();
                    op["responses"] = json!({"200": {"description": "OK", "schema": schema}});
                    op["consumes"] = json!(["application/json", "application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"]);
                    op["produces"] = json!(["application/json", "application/yaml"]);
                }
                paths.insert(path.clone(), item);
            }
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "definitions": definitions})
}
