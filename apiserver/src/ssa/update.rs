//! Field ownership of a non-apply write (`record_update`): the writer owns every leaf whose
//! value it changed, and nobody owns a field that is gone.
//!
//! The entries are edited where they are, as `fieldsV1` trees: the changed leaves are taken
//! from the other managers and given to the writer, and every tree is walked once beside the
//! new object to drop what no longer exists. An entry nobody's write touched keeps its JSON
//! as it was. (Decoding every entry into a set of paths and encoding it again, as `apply`
//! does, cost a pod's status update more than the rest of its write.)

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{Path, Seg, element, ignored, seg_key};

/// A path step borrowed from the object being walked: a map field, or a list element by its
/// merge key (`{"name":"c"}`, made only for lists that have one).
enum Step<'a> {
    F(&'a str),
    K(String),
}

fn owned(path: &[Step]) -> Path {
    path.iter()
        .map(|s| match s {
            Step::F(f) => Seg::F((*f).to_string()),
            Step::K(k) => Seg::K(k.clone()),
        })
        .collect()
}

/// The leaves of `new` whose value differs from `old`'s, found by walking both at once (a
/// path is allocated only for a changed leaf). A list element with a merge key is itself a
/// leaf when it is new.
fn changed_leaves<'a>(old: Option<&Value>, new: &'a Value, path: &mut Vec<Step<'a>>, field: Option<&str>, out: &mut BTreeSet<Path>) {
    match new {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                path.push(Step::F(k));
                changed_leaves(old.and_then(|o| o.get(k)), x, path, Some(k), out);
                path.pop();
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let key = field.and_then(crate::patch::merge_key).filter(|key| a.iter().all(|e| e.get(*key).is_some()));
            match key {
                Some(key) => {
                    for e in a {
                        let prev = old.and_then(|o| o.as_array()).and_then(|oa| oa.iter().find(|oe| oe.get(key) == e.get(key)));
                        path.push(Step::K(json!({ key: e[key] }).to_string()));
                        if prev.is_none() {
                            out.insert(owned(path));
                        }
                        if let Value::Object(m) = e {
                            for (k, x) in m {
                                path.push(Step::F(k));
                                changed_leaves(prev.and_then(|p| p.get(k)), x, path, Some(k), out);
                                path.pop();
                            }
                        }
                        path.pop();
                    }
                }
                None => {
                    if old != Some(new) {
                        out.insert(owned(path));
                    }
                }
            }
        }
        _ => {
            if old != Some(new) {
                out.insert(owned(path));
            }
        }
    }
}

/// `fieldsV1` of every leaf of `v` (a create's ownership), built directly without paths.
fn fields_v1_of(v: &Value, field: Option<&str>, top: bool, with_status: bool) -> Value {
    let mut out = Map::new();
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if top && (k == "apiVersion" || k == "kind" || (k == "status" && !with_status)) {
                    continue;
                }
                let sub = if top && k == "metadata" {
                    let mut mm = Map::new();
                    if let Value::Object(meta) = x {
                        for (mk, mx) in meta {
                            if !ignored(&vec![Seg::F("metadata".into()), Seg::F(mk.clone())]) {
                                mm.insert(format!("f:{mk}"), fields_v1_of(mx, Some(mk), false, with_status));
                            }
                        }
                    }
                    if mm.is_empty() {
                        continue;
                    }
                    Value::Object(mm)
                } else {
                    fields_v1_of(x, Some(k), false, with_status)
                };
                out.insert(format!("f:{k}"), sub);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            if let Some(key) = field.and_then(crate::patch::merge_key).filter(|key| a.iter().all(|e| e.get(*key).is_some())) {
                for e in a {
                    let mut el = match fields_v1_of(e, None, false, with_status) {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                    el.insert(".".into(), json!({}));
                    out.insert(format!("k:{}", json!({ key: e[key] })), Value::Object(el));
                }
            }
        }
        _ => {}
    }
    Value::Object(out)
}

/// In a `fieldsV1` tree, a map field's path is owned when its node is an empty object; a list
/// element's when its node holds `"."` (or is empty). Takes `path` out of the tree, and with
/// it every node it leaves empty.
fn disown(tree: &mut Map<String, Value>, path: &[Seg]) {
    let Some((first, rest)) = path.split_first() else { return };
    let key = seg_key(first);
    let Some(Value::Object(node)) = tree.get_mut(&key) else { return };
    if rest.is_empty() {
        if matches!(first, Seg::K(_)) {
            node.remove(".");
        }
        if node.is_empty() {
            tree.remove(&key);
        }
        return;
    }
    if node.is_empty() {
        return; // the node is a leaf: nothing below it is owned
    }
    disown(node, rest);
    if node.is_empty() {
        tree.remove(&key);
    }
}

/// Puts `path` into the tree.
fn own(tree: &mut Map<String, Value>, path: &[Seg]) {
    let mut cur = tree;
    for s in path {
        let node = cur.entry(seg_key(s)).or_insert_with(|| json!({}));
        if !node.is_object() {
            *node = json!({});
        }
        cur = node.as_object_mut().expect("made an object above");
    }
    if matches!(path.last(), Some(Seg::K(_))) {
        cur.insert(".".into(), json!({}));
    }
}

/// Drops from the tree every path that does not exist in `v` (the new object at the tree's
/// place), and every node that is left empty by it; keys that are not field steps (`v:`,
/// `i:`, which capstan does not write) go too. A leaf that exists stays.
fn prune(tree: &mut Map<String, Value>, v: &Value) {
    tree.retain(|k, node| {
        if k == "." {
            return true;
        }
        let at = if let Some(f) = k.strip_prefix("f:") {
            v.get(f)
        } else if let Some(key) = k.strip_prefix("k:") {
            element(v, key)
        } else {
            None
        };
        let Some(at) = at else { return false };
        match node {
            Value::Object(n) if n.is_empty() => true,
            Value::Object(n) => {
                prune(n, at);
                !n.is_empty()
            }
            _ => false,
        }
    });
}

/// Whether a changed leaf is found again by its path: not so for a list element whose merge
/// key an earlier element of the list repeats (a path names the first), and then nobody owns it.
fn exists(new: &Value, p: &[Seg]) -> bool {
    !p.iter().any(|s| matches!(s, Seg::K(_))) || super::get(new, p).is_some()
}

fn text<'v>(e: &'v Value, field: &str, default: &'v str) -> &'v str {
    e.get(field).and_then(|x| x.as_str()).unwrap_or(default)
}

/// A manager's `Update` entry owning `fields`, which it takes (`json!` would copy the tree
/// through the serializer: 2 % of the density run's CPU).
fn update_entry(manager: &str, api_version: &str, now: &str, fields: Value) -> Value {
    let mut e = Map::new();
    e.insert("manager".into(), Value::from(manager));
    e.insert("operation".into(), Value::from("Update"));
    e.insert("apiVersion".into(), Value::from(api_version));
    e.insert("time".into(), Value::from(now));
    e.insert("fieldsType".into(), Value::from("FieldsV1"));
    e.insert("fieldsV1".into(), fields);
    Value::Object(e)
}

/// Records a non-apply write: `manager` owns every leaf whose value it changed (its
/// `Update` entry, made if it has none, takes the write's time and apiVersion); the other
/// entries lose those leaves; no entry keeps a field the new object does not have, and an
/// entry left owning nothing is dropped. A write that changes no owned leaf keeps the old
/// entries as they were.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, api_version: &str, now: &str, with_status: bool) {
    let Some(old) = old else {
        // A create: the manager owns everything it wrote.
        let fields = fields_v1_of(new, None, true, with_status);
        if fields.as_object().is_some_and(|m| !m.is_empty()) {
            let entry = Value::Array(vec![update_entry(manager, api_version, now, fields)]);
            if let Some(meta) = new.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.insert("managedFields".into(), entry);
            }
        }
        return;
    };
    let mut changed = BTreeSet::new();
    changed_leaves(Some(old), new, &mut Vec::new(), None, &mut changed);
    changed.retain(|p| !ignored(p) && (with_status || p.first() != Some(&Seg::F("status".into()))));
    let Some(meta) = new.get_mut("metadata").and_then(|m| m.as_object_mut()) else { return };
    // The entries are the old object's, whatever `new` carries (a PUT's body may carry any):
    // moved rather than copied when they are the same (a patch's object, made from the old
    // one, carries them).
    let before = old["metadata"].get("managedFields");
    let entries = match (meta.remove("managedFields"), before) {
        (Some(c), Some(b)) if c == *b => Some(c),
        (_, b) => b.cloned(),
    };
    if changed.is_empty() {
        if let Some(e) = entries {
            meta.insert("managedFields".into(), e);
        }
        return;
    }
    let mut entries = match entries {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let mine = entries.iter().position(|e| text(e, "manager", "") == manager && text(e, "operation", "Update") == "Update");
    for (i, e) in entries.iter_mut().enumerate() {
        let Some(e) = e.as_object_mut() else { continue };
        if Some(i) == mine && !e.get("fieldsV1").is_some_and(|t| t.is_object()) {
            e.insert("fieldsV1".into(), json!({}));
        }
        let Some(tree) = e.get_mut("fieldsV1").and_then(|t| t.as_object_mut()) else { continue };
        if Some(i) != mine {
            for p in &changed {
                disown(tree, p);
            }
        }
        prune(tree, new);
        if Some(i) == mine {
            for p in changed.iter().filter(|p| exists(new, p)) {
                own(tree, p);
            }
        }
    }
    match mine {
        Some(i) => {
            let e = &mut entries[i];
            e["time"] = json!(now);
            e["apiVersion"] = json!(api_version);
        }
        None => {
            let mut tree = Map::new();
            for p in changed.iter().filter(|p| exists(new, p)) {
                own(&mut tree, p);
            }
            entries.push(update_entry(manager, api_version, now, Value::Object(tree)));
        }
    }
    entries.retain(|e| e.get("fieldsV1").and_then(|t| t.as_object()).is_some_and(|t| !t.is_empty()));
    if let Some(meta) = new.get_mut("metadata").and_then(|m| m.as_object_mut())
        && !entries.is_empty()
    {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{entry, from_fields_v1, get, leaves, read_managed, write_managed};
    use super::*;

    /// The definition, as sets of paths: every entry decoded, edited as a set and encoded
    /// again (what `record_update` did before it edited the trees in place).
    fn by_sets(old: &Value, new: &mut Value, manager: &str, api_version: &str, now: &str, with_status: bool) {
        let mut changed = BTreeSet::new();
        changed_paths(Some(old), new, &mut Vec::new(), None, &mut changed);
        changed.retain(|p| !ignored(p) && (with_status || p.first() != Some(&Seg::F("status".into()))));
        if changed.is_empty() {
            if let Some(meta) = new.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                match old["metadata"].get("managedFields") {
                    Some(mf) => meta.insert("managedFields".into(), mf.clone()),
                    None => meta.remove("managedFields"),
                };
            }
            return;
        }
        let mut managed = read_managed(old);
        for m in managed.iter_mut() {
            m.fields.retain(|p| !changed.contains(p));
        }
        entry(&mut managed, manager, "Update", api_version, now).fields.extend(changed);
        for m in managed.iter_mut() {
            m.fields.retain(|p| get(new, p).is_some());
        }
        write_managed(new, &managed);
    }

    /// The changed leaves as the sets' version found them (a path built at every step).
    fn changed_paths(old: Option<&Value>, new: &Value, path: &mut Path, field: Option<&str>, out: &mut BTreeSet<Path>) {
        match new {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    path.push(Seg::F(k.clone()));
                    changed_paths(old.and_then(|o| o.get(k)), x, path, Some(k), out);
                    path.pop();
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let key = field.and_then(crate::patch::merge_key).filter(|key| a.iter().all(|e| e.get(*key).is_some()));
                match key {
                    Some(key) => {
                        for e in a {
                            let prev = old.and_then(|o| o.as_array()).and_then(|oa| oa.iter().find(|oe| oe.get(key) == e.get(key)));
                            path.push(Seg::K(json!({ key: e[key] }).to_string()));
                            if prev.is_none() {
                                out.insert(path.clone());
                            }
                            if let Value::Object(m) = e {
                                for (k, x) in m {
                                    path.push(Seg::F(k.clone()));
                                    changed_paths(prev.and_then(|p| p.get(k)), x, path, Some(k), out);
                                    path.pop();
                                }
                            }
                            path.pop();
                        }
                    }
                    None => {
                        if old != Some(new) {
                            out.insert(path.clone());
                        }
                    }
                }
            }
            _ => {
                if old != Some(new) {
                    out.insert(path.clone());
                }
            }
        }
    }

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const FIELDS: [&str; 10] = ["spec", "status", "containers", "conditions", "env", "image", "labels", "a", "b", "ports"];

    fn value(r: &mut Rng, field: &str, depth: usize) -> Value {
        if let Some(key) = crate::patch::merge_key(field) {
            let n = r.below(3);
            return Value::Array((0..n).map(|_| element_value(r, key, depth)).collect());
        }
        match r.below(if depth > 3 { 4 } else { 7 }) {
            0 => json!(r.below(3)),
            1 => json!(format!("s{}", r.below(3))),
            2 => Value::Null,
            3 => json!({}),
            4 => json!([r.below(2), "x"]),
            _ => {
                let mut m = Map::new();
                for _ in 0..1 + r.below(2) {
                    let f = FIELDS[r.below(FIELDS.len())];
                    m.insert(f.into(), value(r, f, depth + 1));
                }
                Value::Object(m)
            }
        }
    }

    fn element_value(r: &mut Rng, key: &str, depth: usize) -> Value {
        let mut e = json!({ key: format!("k{}", r.below(3)) });
        if r.below(2) == 0 {
            let f = FIELDS[r.below(FIELDS.len())];
            e[f] = value(r, f, depth + 1);
        }
        e
    }

    /// One random edit somewhere in `v` (whose own field name is `field`).
    fn mutate(r: &mut Rng, v: &mut Value, field: &str, depth: usize) {
        match v {
            Value::Object(m) => {
                let keys: Vec<String> = m.keys().filter(|k| *k != "managedFields" && *k != "apiVersion").cloned().collect();
                match r.below(5) {
                    0 | 1 if !keys.is_empty() && depth < 5 => {
                        let k = &keys[r.below(keys.len())];
                        let child = m.get_mut(k).unwrap();
                        if child.is_object() || child.is_array() {
                            mutate(r, child, k, depth + 1);
                        } else {
                            *child = value(r, k, depth + 1);
                        }
                    }
                    2 if !keys.is_empty() => {
                        m.remove(&keys[r.below(keys.len())]);
                    }
                    _ => {
                        let f = FIELDS[r.below(FIELDS.len())];
                        m.insert(f.into(), value(r, f, depth + 1));
                    }
                }
            }
            Value::Array(a) => match (r.below(3), crate::patch::merge_key(field)) {
                (0, _) if !a.is_empty() => {
                    let i = r.below(a.len());
                    a.remove(i);
                }
                (1, _) if !a.is_empty() && depth < 5 => {
                    let i = r.below(a.len());
                    mutate(r, &mut a[i], "", depth + 1);
                }
                (_, Some(key)) => a.push(element_value(r, key, depth)),
                _ => a.push(value(r, "", depth + 1)),
            },
            _ => *v = value(r, field, depth),
        }
    }

    #[test]
    fn a_creates_field_set_built_directly_equals_the_leaf_walk() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        d["metadata"]["uid"] = json!("u");
        d["status"] = json!({"replicas": 1});
        let direct = from_fields_v1(&fields_v1_of(&d, None, true, false));
        assert_eq!(direct, leaves(&d, false));
    }

    #[test]
    fn edits_the_trees_as_the_sets_would() {
        const MANAGERS: [&str; 3] = ["kubelet", "kube-scheduler", "kube-controller-manager"];
        let mut writes = 0;
        for seed in 1..=300u64 {
            let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "uid": "u", "labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "1"}]}]},
                "status": {"conditions": [{"type": "Ready", "status": "False"}], "podIPs": [{"ip": "10.0.0.1"}]}});
            record_update(None, &mut obj, MANAGERS[0], "v1", "t0", false);
            for step in 0..40 {
                let mut next = obj.clone();
                for _ in 0..1 + r.below(3) {
                    mutate(&mut r, &mut next, "", 0);
                }
                let (manager, with_status, now) = (MANAGERS[r.below(3)], r.below(2) == 0, format!("t{step}"));
                let mut expected = next.clone();
                by_sets(&obj, &mut expected, manager, "v1", &now, with_status);
                record_update(Some(&obj), &mut next, manager, "v1", &now, with_status);
                let (got, want) = (&next["metadata"]["managedFields"], &expected["metadata"]["managedFields"]);
                assert_eq!(got, want, "seed {seed}, step {step}: {manager} (status {with_status}) wrote {}", serde_json::to_string(&next).unwrap());
                writes += 1;
                obj = next;
            }
        }
        assert_eq!(writes, 12_000);
    }

    #[test]
    fn a_status_update_moves_only_the_leaves_it_changed() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Pending"}});
        record_update(None, &mut pod, "creator", "v1", "t0", false);
        let mut running = pod.clone();
        running["status"] = json!({"phase": "Running", "podIP": "10.0.0.1"});
        record_update(Some(&pod), &mut running, "kubelet", "v1", "t1", true);
        let mf = running["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 2);
        assert_eq!(mf[0], pod["metadata"]["managedFields"][0], "the creator's entry is untouched");
        assert_eq!(mf[1]["manager"], "kubelet");
        assert_eq!(from_fields_v1(&mf[1]["fieldsV1"]).len(), 2, "phase and podIP: {}", mf[1]["fieldsV1"]);
        // The same write again changes nothing: the entries stay as they were, time included.
        let mut again = running.clone();
        record_update(Some(&running), &mut again, "kubelet", "v1", "t2", true);
        assert_eq!(again["metadata"]["managedFields"], running["metadata"]["managedFields"]);
        // Entries a client sent (a PUT's body) are not taken: the old object's are.
        let mut sent = running.clone();
        sent["metadata"]["managedFields"] = json!([{"manager": "me", "operation": "Update", "fieldsV1": {"f:spec": {}}}]);
        sent["status"]["phase"] = json!("Succeeded");
        record_update(Some(&running), &mut sent, "kubelet", "v1", "t3", true);
        let mf = sent["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!((mf.len(), &mf[0]), (2, &running["metadata"]["managedFields"][0]), "{mf:?}");
    }
}
