//! Server-side apply and field ownership (`metadata.managedFields`), as plain functions over
//! JSON values.
//!
//! A field set is a list of leaf paths. A path step is a map field (`f:name` in `fieldsV1`) or,
//! in a list with a merge key (`containers` by `name`, ...: the table in `patch.rs`), the
//! element with that key (`k:{"name":"c"}`); lists without a merge key are atomic (one leaf).
//! Every write gives its manager the leaves it changed (operation `Update`); an apply gives
//! its manager exactly the leaves of its configuration (operation `Apply`), removes the fields
//! it applied before and no longer does (unless someone else owns them), and conflicts with
//! other managers that own a leaf it would change, unless forced.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

mod update;

pub use update::record_update;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    F(String),
    /// A list element identified by its merge key, as `{"name":"c"}` (JSON, keys sorted).
    K(String),
}

pub type Path = Vec<Seg>;

fn seg_key(s: &Seg) -> String {
    match s {
        Seg::F(f) => format!("f:{f}"),
        Seg::K(k) => format!("k:{k}"),
    }
}

/// Fields nobody owns: identity and bookkeeping.
fn ignored(path: &Path) -> bool {
    match path.as_slice() {
        [Seg::F(a), ..] if a == "apiVersion" || a == "kind" => true,
        [Seg::F(m), Seg::F(f), ..] if m == "metadata" => matches!(
            f.as_str(),
            "managedFields" | "resourceVersion" | "generation" | "uid" | "creationTimestamp" | "name" | "namespace"
                | "deletionTimestamp" | "deletionGracePeriodSeconds" | "selfLink"
        ),
        _ => false,
    }
}

/// The leaf paths of an object (`status` included only if `with_status`).
pub fn leaves(obj: &Value, with_status: bool) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(obj, &mut Vec::new(), None, &mut out);
    out.retain(|p| !ignored(p) && (with_status || p.first() != Some(&Seg::F("status".into()))));
    out
}

fn walk(v: &Value, path: &mut Path, field: Option<&str>, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                path.push(Seg::F(k.clone()));
                walk(x, path, Some(k), out);
                path.pop();
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let key = field.and_then(crate::patch::merge_key);
            match key {
                Some(key) if a.iter().all(|e| e.get(key).is_some()) => {
                    for e in a {
                        path.push(Seg::K(json!({ key: e[key] }).to_string()));
                        out.insert(path.clone());
                        if let Value::Object(m) = e {
                            for (k, x) in m {
                                path.push(Seg::F(k.clone()));
                                walk(x, path, Some(k), out);
                                path.pop();
                            }
                        }
                        path.pop();
                    }
                }
                _ => {
                    out.insert(path.clone());
                }
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path`, if present.
pub fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for s in path {
        cur = match s {
            Seg::F(f) => cur.get(f)?,
            Seg::K(k) => element(cur, k)?,
        };
    }
    Some(cur)
}

/// The (first) element of the list `v` whose fields match `key`, a merge key as JSON.
fn element<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    let key: Map<String, Value> = serde_json::from_str(key).ok()?;
    v.as_array()?.iter().find(|e| key.iter().all(|(k, x)| e.get(k) == Some(x)))
}

/// Removes the field (or list element) at `path`.
pub fn remove(v: &mut Value, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut cur = v;
    for s in parent {
        let next = match s {
            Seg::F(f) => cur.get_mut(f),
            Seg::K(k) => {
                let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else { return };
                cur.as_array_mut().and_then(|a| a.iter_mut().find(|e| key.iter().all(|(kk, kv)| e.get(kk) == Some(kv))))
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Seg::F(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Seg::K(k) => {
            if let (Ok(key), Some(a)) = (serde_json::from_str::<Map<String, Value>>(k), cur.as_array_mut()) {
                a.retain(|e| !key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)));
            }
        }
    }
}

/// A field set as `fieldsV1`.
pub fn to_fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for s in p {
            cur = cur.entry(seg_key(s)).or_insert_with(|| json!({})).as_object_mut().unwrap();
        }
        if matches!(p.last(), Some(Seg::K(_))) {
            cur.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

/// A `fieldsV1` value as a field set.
pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn go(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (k, x) in m {
            if k == "." {
                out.insert(path.clone());
                continue;
            }
            let seg = if let Some(f) = k.strip_prefix("f:") {
                Seg::F(f.to_string())
            } else if let Some(key) = k.strip_prefix("k:") {
                Seg::K(key.to_string())
            } else {
                continue; // v: (set values) and i: (indices) are not produced here
            };
            path.push(seg);
            go(x, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
pub struct Managed {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub fields: BTreeSet<Path>,
    pub subresource: Option<String>,
}

pub fn read_managed(obj: &Value) -> Vec<Managed> {
    obj["metadata"]
        .get("managedFields")
        .and_then(|m| m.as_array())
        .map(|a| {
            a.iter()
                .map(|e| Managed {
                    manager: e.get("manager").and_then(|x| x.as_str()).unwrap_or("").into(),
                    operation: e.get("operation").and_then(|x| x.as_str()).unwrap_or("Update").into(),
                    api_version: e.get("apiVersion").and_then(|x| x.as_str()).unwrap_or("").into(),
                    time: e.get("time").and_then(|x| x.as_str()).unwrap_or("").into(),
                    fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    subresource: e.get("subresource").and_then(|x| x.as_str()).map(String::from),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_managed(obj: &mut Value, managed: &[Managed]) {
    let list: Vec<Value> = managed
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager, "operation": m.operation, "apiVersion": m.api_version, "time": m.time,
                "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&m.fields),
            });
            if let Some(s) = &m.subresource {
                e["subresource"] = json!(s);
            }
            e
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn entry<'a>(managed: &'a mut Vec<Managed>, manager: &str, operation: &str, api_version: &str, now: &str) -> &'a mut Managed {
    let i = match managed.iter().position(|m| m.manager == manager && m.operation == operation) {
        Some(i) => i,
        None => {
            managed.push(Managed {
                manager: manager.into(),
                operation: operation.into(),
                api_version: api_version.into(),
                time: now.into(),
                fields: BTreeSet::new(),
                subresource: None,
            });
            managed.len() - 1
        }
    };
    let e = &mut managed[i];
    e.time = now.into();
    e.api_version = api_version.into();
    e
}

/// A field that another manager owns with a different value.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub path: String,
}

pub fn path_string(p: &Path) -> String {
    p.iter()
        .map(|s| match s {
            Seg::F(f) => format!(".{f}"),
            Seg::K(k) => format!("[{k}]"),
        })
        .collect()
}

/// Server-side apply of `applied` by `manager` over `current` (an empty object when creating).
/// Returns the new object, or the conflicts when not forced.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    current: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
    schemas: Option<&crate::schema::Schemas>,
    def: Option<&str>,
) -> Result<Value, Vec<Conflict>> {
    let mut managed = read_managed(current);
    let new_set = leaves(applied, false);
    let mut conflicts = Vec::new();
    for p in &new_set {
        let (cv, av) = (get(current, p), get(applied, p));
        if cv.is_none() || cv == av {
            continue;
        }
        for m in &managed {
            // A manager's Apply and Update entries are distinct owners, as in Kubernetes.
            if !(m.manager == manager && m.operation == "Apply") && m.fields.contains(p) {
                conflicts.push(Conflict { manager: m.manager.clone(), path: path_string(p) });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Leaves this manager applied before and no longer does, that nobody else owns.
    let prev: BTreeSet<Path> = managed.iter().filter(|m| m.manager == manager && m.operation == "Apply").flat_map(|m| m.fields.clone()).collect();
    let others: BTreeSet<Path> = managed.iter().filter(|m| !(m.manager == manager && m.operation == "Apply")).flat_map(|m| m.fields.clone()).collect();
    let mut obj = current.clone();
    for p in prev.difference(&new_set) {
        if !others.contains(p) {
            remove(&mut obj, p);
        }
    }
    let mut patch = applied.clone();
    if let Some(m) = patch.as_object_mut() {
        m.remove("status");
    }
    crate::patch::strategic_merge_typed(&mut obj, &patch, schemas, def).map_err(|e| vec![Conflict { manager: String::new(), path: e }])?;
    for m in managed.iter_mut() {
        if (m.manager != manager || m.operation != "Apply")
            && force {
                m.fields.retain(|p| !new_set.contains(p) || get(current, p) == get(applied, p));
            }
    }
    // The entry's time moves only when its fields do: an apply that changes nothing leaves
    // the object as it was (and so is not written).
    let same = managed.iter().any(|m| m.manager == manager && m.operation == "Apply" && m.fields == new_set && m.api_version == api_version);
    if !same {
        entry(&mut managed, manager, "Apply", api_version, now).fields = new_set;
    }
    for m in managed.iter_mut() {
        m.fields.retain(|p| get(&obj, p).is_some());
    }
    write_managed(&mut obj, &managed);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let set = leaves(&deploy(1, "x"), false);
        assert!(set.contains(&vec![Seg::F("spec".into()), Seg::F("replicas".into())]));
        let v1 = to_fields_v1(&set);
        assert!(v1["f:spec"]["f:template"]["f:spec"]["f:containers"][r#"k:{"name":"c"}"#]["."].is_object());
        assert_eq!(from_fields_v1(&v1), set);
    }

    #[test]
    fn apply_creates_then_is_idempotent_and_conflicts_with_another_owner() {
        let created = apply(&json!({}), &deploy(1, "x"), "kubectl", false, "apps/v1", NOW, None, None).unwrap();
        assert_eq!(created["spec"]["replicas"], 1);
        assert_eq!(created["metadata"]["managedFields"][0]["manager"], "kubectl");
        let again = apply(&created, &deploy(1, "x"), "kubectl", false, "apps/v1", NOW, None, None).unwrap();
        assert_eq!(again["spec"], created["spec"]);
        // Another manager changes replicas (an Update), then the applier's different value conflicts.
        let mut scaled = again.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&again), &mut scaled, "kubectl-scale", "apps/v1", NOW, false);
        let err = apply(&scaled, &deploy(1, "x"), "kubectl", false, "apps/v1", NOW, None, None).unwrap_err();
        assert_eq!(err, vec![Conflict { manager: "kubectl-scale".into(), path: ".spec.replicas".into() }]);
        let forced = apply(&scaled, &deploy(1, "x"), "kubectl", true, "apps/v1", NOW, None, None).unwrap();
        assert_eq!(forced["spec"]["replicas"], 1);
    }

    #[test]
    fn fields_no_longer_applied_are_removed_unless_others_own_them() {
        let mut with_label = deploy(1, "x");
        with_label["metadata"]["labels"]["tier"] = json!("web");
        let a = apply(&json!({}), &with_label, "m", false, "apps/v1", NOW, None, None).unwrap();
        let b = apply(&a, &deploy(1, "x"), "m", false, "apps/v1", NOW, None, None).unwrap();
        assert!(b["metadata"]["labels"].get("tier").is_none(), "dropped from the config, dropped from the object");
        assert_eq!(b["metadata"]["labels"]["app"], "d");
    }
}
