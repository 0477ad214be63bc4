//! Patches: JSON patch (RFC 6902) and merge patch (RFC 7386) through the `json-patch` crate,
//! and strategic merge patch.
//!
//! Strategic merge patch here: maps merge recursively, `null` deletes, `$patch: replace` /
//! `$patch: delete` in maps and list elements, `$retainKeys` and
//! `$deleteFromPrimitiveList/<list>` are honoured, `$setElementOrder/<list>` is accepted (the
//! merged order is the existing order with new elements appended), and a list merges by its
//! patch merge key when Kubernetes declares one for that field of that type: the facts come
//! from `patch_meta.rs`, generated from the published schemas, and the type of each nested
//! value from the served schemas (`schema.rs`). Without a type (a caller that has none), a
//! small table of common list fields stands in.

use serde_json::{Map, Value};

use crate::schema::Schemas;

/// The merge key of a list field when its type is unknown (`ssa`'s field sets use it too).
pub(crate) fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets"
        | "containerStatuses" | "initContainerStatuses" | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "addresses" => "type",
        "taints" => "key",
        _ => return None,
    })
}

/// Where in the type tree a value sits: its definition name, when known.
#[derive(Clone, Copy)]
struct Ty<'a> {
    schemas: Option<&'a Schemas>,
    def: Option<&'a str>,
}

impl<'a> Ty<'a> {
    /// The merge key of `field` of this type, if the field's patch strategy is "merge".
    fn merge_key(&self, field: &str) -> Option<&'static str> {
        match self.def {
            Some(def) => {
                let m = crate::patch_meta::lookup(def, field)?;
                if m.strategy.is_some_and(|s| s.split(',').any(|x| x == "merge")) { m.merge_key } else { None }
            }
            None => merge_key(field),
        }
    }

    /// Whether the type is known, so that "no merge key" means "replace the list".
    fn known(&self) -> bool {
        self.def.is_some()
    }

    /// The type of `field`'s value (for a list, of its items).
    fn child(&self, field: &str) -> Ty<'a> {
        let def = (|| {
            let schemas = self.schemas?;
            let prop = schemas.components.get(self.def?)?.get("properties")?.get(field)?;
            let r = prop.get("$ref").or_else(|| prop.get("items").and_then(|i| i.get("$ref")))?;
            let name = r.as_str()?.strip_prefix("#/components/schemas/")?;
            schemas.components.get_key_value(name).map(|(k, _)| k.as_str())
        })();
        Ty { schemas: self.schemas, def }
    }
}

fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object()?.get(key)
}

/// Applies a strategic merge patch to `doc`, without type information.
pub fn strategic_merge(doc: &mut Value, patch: &Value) -> Result<(), String> {
    strategic_merge_typed(doc, patch, None, None)
}

/// Applies a strategic merge patch to `doc`, an object of definition `def` (e.g.
/// `io.k8s.api.apps.v1.Deployment`) whose nested types `schemas` knows.
pub fn strategic_merge_typed(doc: &mut Value, patch: &Value, schemas: Option<&Schemas>, def: Option<&str>) -> Result<(), String> {
    let ty = Ty { schemas, def };
    match (doc, patch) {
        (Value::Object(d), Value::Object(p)) => merge_map(d, p, ty),
        (doc, p) => {
            *doc = p.clone();
            Ok(())
        }
    }
}

fn merge_map(d: &mut Map<String, Value>, p: &Map<String, Value>, ty: Ty) -> Result<(), String> {
    if let Some(directive) = p.get("$patch").and_then(|x| x.as_str()) {
        match directive {
            "replace" => {
                let mut np = p.clone();
                np.remove("$patch");
                *d = np;
                return Ok(());
            }
            "delete" => {
                d.clear();
                return Ok(());
            }
            "merge" => {}
            other => return Err(format!("unknown patch directive {other:?}")),
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(|k| k.as_str()).collect();
        d.retain(|k, _| keep.contains(&k.as_str()) || p.contains_key(k));
    }
    for (k, pv) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Value::Array(del)) = (d.get_mut(list), pv) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if pv.is_null() {
            d.remove(k);
            continue;
        }
        match (d.get_mut(k), pv) {
            (Some(Value::Object(dm)), Value::Object(pm)) => merge_map(dm, pm, ty.child(k))?,
            (Some(Value::Array(da)), Value::Array(pa)) => merge_list(k, da, pa, ty)?,
            _ => {
                let mut v = pv.clone();
                strip_directives(&mut v);
                d.insert(k.clone(), v);
            }
        }
    }
    Ok(())
}

fn merge_list(field: &str, d: &mut Vec<Value>, p: &[Value], ty: Ty) -> Result<(), String> {
    let key = ty.merge_key(field).or_else(|| {
        if ty.known() {
            return None;
        }
        let all_named = !p.is_empty() && p.iter().all(|e| key_of(e, "name").is_some()) && d.iter().all(|e| key_of(e, "name").is_some());
        all_named.then_some("name")
    });
    let Some(key) = key else {
        let mut v = p.to_vec();
        v.iter_mut().for_each(strip_directives);
        *d = v;
        return Ok(());
    };
    let item_ty = ty.child(field);
    for pe in p {
        let Some(pk) = key_of(pe, key).cloned() else {
            // Elements without the key cannot be merged: the patch's list wins.
            *d = p.to_vec();
            return Ok(());
        };
        let is_delete = pe.get("$patch").and_then(|x| x.as_str()) == Some("delete");
        match d.iter().position(|de| key_of(de, key) == Some(&pk)) {
            Some(i) if is_delete => {
                d.remove(i);
            }
            Some(i) => {
                if let (Value::Object(dm), Value::Object(pm)) = (&mut d[i], pe) {
                    merge_map(dm, pm, item_ty)?;
                }
            }
            None if is_delete => {}
            None => {
                let mut v = pe.clone();
                strip_directives(&mut v);
                d.push(v);
            }
        }
    }
    Ok(())
}

fn strip_directives(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|k, _| !k.starts_with('$'));
        for (_, x) in m.iter_mut() {
            strip_directives(x);
        }
    } else if let Value::Array(a) = v {
        for x in a {
            strip_directives(x);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        Some(match base {
            "application/json-patch+json" => PatchType::Json,
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
            _ => return None,
        })
    }
}

/// Applies a patch body of `ty` to `doc` (strategic merge patches without type information;
/// see `apply_typed`).
pub fn apply(ty: PatchType, doc: &mut Value, body: &[u8]) -> Result<(), String> {
    apply_typed(ty, doc, body, None, None)
}

/// Applies a patch body of `ty` to `doc`, an object of definition `def`.
pub fn apply_typed(ty: PatchType, doc: &mut Value, body: &[u8], schemas: Option<&Schemas>, def: Option<&str>) -> Result<(), String> {
    match ty {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body).map_err(|e| format!("invalid JSON patch: {e}"))?;
            json_patch::patch(doc, &ops).map_err(|e| e.to_string())
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(body).map_err(|e| format!("invalid merge patch: {e}"))?;
            json_patch::merge(doc, &p);
            Ok(())
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(body).map_err(|e| format!("invalid strategic merge patch: {e}"))?;
            if !p.is_object() {
                return Err("a strategic merge patch must be a JSON object".into());
            }
            strategic_merge_typed(doc, &p, schemas, def)
        }
        PatchType::Apply => Err("server-side apply is not supported yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Case {
        name: &'static str,
        doc: Value,
        patch: Value,
        want: Value,
    }

    #[test]
    fn strategic_merge_patch_cases() {
        let cases = vec![
            Case {
                name: "maps merge and null deletes",
                doc: json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
                patch: json!({"metadata": {"labels": {"b": null, "c": "3"}}}),
                want: json!({"metadata": {"labels": {"a": "1", "c": "3"}}}),
            },
            Case {
                name: "containers merge by name",
                doc: json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}}),
                patch: json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "b", "image": "y:2"}]}}),
                want: json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}]}}),
            },
            Case {
                name: "delete a list element by key",
                doc: json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                patch: json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
                want: json!({"spec": {"containers": [{"name": "b"}]}}),
            },
            Case {
                name: "lists without a merge key are replaced",
                doc: json!({"spec": {"args": ["a", "b"]}}),
                patch: json!({"spec": {"args": ["c"]}}),
                want: json!({"spec": {"args": ["c"]}}),
            },
            Case {
                name: "$patch replace on a map",
                doc: json!({"spec": {"selector": {"a": "1", "b": "2"}}}),
                patch: json!({"spec": {"selector": {"$patch": "replace", "c": "3"}}}),
                want: json!({"spec": {"selector": {"c": "3"}}}),
            },
            Case {
                name: "$deleteFromPrimitiveList",
                doc: json!({"metadata": {"finalizers": ["a", "b"]}}),
                patch: json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
                want: json!({"metadata": {"finalizers": ["b"]}}),
            },
            Case {
                name: "$retainKeys drops keys not listed",
                doc: json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
                patch: json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
                want: json!({"spec": {"strategy": {"type": "Recreate"}}}),
            },
            Case {
                name: "unschedulable for cordon",
                doc: json!({"spec": {"podCIDR": "x"}}),
                patch: json!({"spec": {"unschedulable": true}}),
                want: json!({"spec": {"podCIDR": "x", "unschedulable": true}}),
            },
        ];
        for c in cases {
            let mut d = c.doc.clone();
            strategic_merge(&mut d, &c.patch).unwrap();
            assert_eq!(d, c.want, "{}", c.name);
        }
    }

    #[test]
    fn typed_strategic_merge_uses_kubernetes_merge_keys() {
        let reg = crate::registry::Registry::new();
        let schemas = Schemas::get(&reg);
        let def = schemas.name_of("", "v1", "Pod");
        // Container ports merge by containerPort; service ports (another type) by port.
        let mut pod = json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}, {"containerPort": 443}]}]}});
        let patch = json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 443, "name": "https"}]}]}});
        strategic_merge_typed(&mut pod, &patch, Some(schemas), def).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["ports"], json!([{"containerPort": 80}, {"containerPort": 443, "name": "https"}]));
        // args has no merge strategy: replaced even though the elements look alike.
        let mut pod = json!({"spec": {"containers": [{"name": "c", "args": ["a", "b"]}]}});
        strategic_merge_typed(&mut pod, &json!({"spec": {"containers": [{"name": "c", "args": ["z"]}]}}), Some(schemas), def).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["args"], json!(["z"]));
        let svc_def = schemas.name_of("", "v1", "Service");
        let mut svc = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 81}]}});
        strategic_merge_typed(&mut svc, &json!({"spec": {"ports": [{"port": 81, "targetPort": 8081}]}}), Some(schemas), svc_def).unwrap();
        assert_eq!(svc["spec"]["ports"][1], json!({"port": 81, "targetPort": 8081}));
    }

    #[test]
    fn json_and_merge_patches() {
        let mut d = json!({"spec": {"replicas": 1}, "metadata": {"labels": {"a": "1"}}});
        apply(PatchType::Json, &mut d, br#"[{"op":"replace","path":"/spec/replicas","value":3}]"#).unwrap();
        assert_eq!(d["spec"]["replicas"], 3);
        apply(PatchType::Merge, &mut d, br#"{"metadata":{"labels":{"a":null,"b":"2"}}}"#).unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"b": "2"}));
        assert!(apply(PatchType::Json, &mut d, br#"[{"op":"test","path":"/spec/replicas","value":9}]"#).is_err());
        assert!(apply(PatchType::Merge, &mut d, b"{not json").is_err());
    }
}
