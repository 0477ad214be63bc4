//! What a configMap, secret, downwardAPI or projected volume holds, as a list of files: pure
//! functions of the pod and the objects it names (table-tested), written to disk by
//! [`super::atomic`].

use std::collections::BTreeMap;

use serde_json::Value;

use crate::pod;

/// One file of a volume: a path relative to the volume's root, its bytes and its mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Kubernetes' default file mode in these volumes (0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// The keys of a ConfigMap or Secret (decoded), or `None` when the object does not exist.
pub type Keys = Option<BTreeMap<String, Vec<u8>>>;

/// A mode from the spec (`defaultMode`, an item's `mode`): 0 to 0777, as validation allows.
pub fn mode(v: &Value, default: u32) -> Result<u32, String> {
    match v.as_u64() {
        None if v.is_null() => Ok(default),
        Some(m) if m <= 0o777 => Ok(m as u32),
        _ => Err(format!("invalid mode {v}: must be a number between 0 and 0777 (octal), both inclusive")),
    }
}

/// A file path inside a volume: relative, no `..` element, not starting with `..` (the
/// writer's own names), as Kubernetes validates `items[].path`.
pub fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("a volume file path must not be empty".into());
    }
    if p.len() > 4096 {
        return Err(format!("volume file path of {} bytes is too long", p.len()));
    }
    if p.starts_with('/') {
        return Err(format!("volume file path {p:?} must be relative"));
    }
    if p.starts_with("..") {
        return Err(format!("volume file path {p:?} must not start with '..'"));
    }
    if p.split('/').any(|e| e == "..") || p.contains('\0') {
        return Err(format!("volume file path {p:?} must not contain '..'"));
    }
    if p.split('/').any(str::is_empty) {
        return Err(format!("volume file path {p:?} has an empty element"));
    }
    Ok(())
}

/// The files of a `configMap` or `secret` volume (or projection): every key, or the
/// `items` chosen. `kind` is `configmap` or `secret`, as in Kubernetes' messages.
pub fn keyed(kind: &str, name: &str, keys: &Keys, items: &Value, default_mode: u32, optional: bool) -> Result<Vec<File>, String> {
    let Some(keys) = keys else {
        return if optional { Ok(Vec::new()) } else { Err(format!("{kind} {name:?} not found")) };
    };
    let mut out = Vec::new();
    match items.as_array().filter(|a| !a.is_empty()) {
        None => {
            for (k, v) in keys {
                check_path(k)?;
                out.push(File { path: k.clone(), data: v.clone(), mode: default_mode });
            }
        }
        Some(items) => {
            for it in items {
                let key = it["key"].as_str().unwrap_or("");
                let path = it["path"].as_str().unwrap_or("");
                check_path(path)?;
                match keys.get(key) {
                    Some(v) => out.push(File { path: path.to_string(), data: v.clone(), mode: mode(&it["mode"], default_mode)? }),
                    None if optional => {}
                    None => {
                        let what = if kind == "configmap" { "configmap references non-existent config key" } else { "references non-existent secret key" };
                        return Err(format!("{what}: {key}"));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Labels or annotations as the downward API writes them: `key="value"` lines, sorted by
/// key, values quoted.
pub fn format_map(m: &Value) -> String {
    let mut lines: Vec<String> = m
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", Value::String(v.as_str().unwrap_or("").to_string())))
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The files of a `downwardAPI` volume (or projection).
pub fn downward(pod: &Value, items: &Value, default_mode: u32) -> Result<Vec<File>, String> {
    let mut out = Vec::new();
    for it in items.as_array().into_iter().flatten() {
        let path = it["path"].as_str().unwrap_or("");
        check_path(path)?;
        let text = if let Some(fp) = it["fieldRef"]["fieldPath"].as_str() {
            match fp {
                "metadata.labels" => format_map(&pod["metadata"]["labels"]),
                "metadata.annotations" => format_map(&pod["metadata"]["annotations"]),
                _ => pod::field_ref(pod, fp)?,
            }
        } else if it["resourceFieldRef"].is_object() {
            let r = &it["resourceFieldRef"];
            if r["containerName"].as_str().is_none_or(str::is_empty) {
                return Err(format!("downwardAPI item {path:?}: resourceFieldRef needs a containerName in a volume"));
            }
            pod::resource_field_ref(pod, &Value::Null, r)?
        } else {
            return Err(format!("downwardAPI item {path:?} has neither fieldRef nor resourceFieldRef"));
        };
        out.push(File { path: path.to_string(), data: text.into_bytes(), mode: mode(&it["mode"], default_mode)? });
    }
    Ok(out)
}

/// Rejects two files at one path (the sources of a projected volume overlapping).
pub fn no_duplicates(files: &[File]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for f in files {
        if !seen.insert(f.path.as_str()) {
            return Err(format!("two sources of the volume write {:?}", f.path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(pairs: &[(&str, &str)]) -> Keys {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect())
    }

    #[test]
    fn every_key_or_the_chosen_items() {
        let k = keys(&[("a", "1"), ("b.conf", "2")]);
        let all = keyed("configmap", "cfg", &k, &Value::Null, 0o600, false).unwrap();
        assert_eq!(all.iter().map(|f| (f.path.as_str(), f.mode)).collect::<Vec<_>>(), [("a", 0o600), ("b.conf", 0o600)]);
        let some = keyed("configmap", "cfg", &k, &json!([{"key": "b.conf", "path": "dir/b", "mode": 0o400}]), 0o644, false).unwrap();
        assert_eq!(some, [File { path: "dir/b".into(), data: b"2".to_vec(), mode: 0o400 }]);
        assert_eq!(keyed("configmap", "cfg", &k, &json!([{"key": "zz", "path": "z"}]), 0o644, false).unwrap_err(), "configmap references non-existent config key: zz");
        assert!(keyed("configmap", "cfg", &k, &json!([{"key": "zz", "path": "z"}]), 0o644, true).unwrap().is_empty());
    }

    #[test]
    fn a_missing_object_fails_unless_optional() {
        assert_eq!(keyed("secret", "s", &None, &Value::Null, 0o644, false).unwrap_err(), "secret \"s\" not found");
        assert!(keyed("secret", "s", &None, &Value::Null, 0o644, true).unwrap().is_empty());
    }

    #[test]
    fn paths_that_escape_or_collide_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data", "..2024", "a//b"] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a/b", "a.b", "a..b", "x/.hidden"] {
            assert!(check_path(good).is_ok(), "{good:?} refused");
        }
        let k = keys(&[("a", "1")]);
        assert!(keyed("configmap", "c", &k, &json!([{"key": "a", "path": "../../etc/x"}]), 0o644, false).is_err());
        let f = File { path: "p".into(), data: vec![], mode: 0 };
        assert!(no_duplicates(&[f.clone(), f]).is_err());
    }

    #[test]
    fn modes_are_bounded() {
        assert_eq!(mode(&Value::Null, 0o644).unwrap(), 0o644);
        assert_eq!(mode(&json!(0o755), 0o644).unwrap(), 0o755);
        assert!(mode(&json!(0o1000), 0o644).is_err());
        assert!(mode(&json!(-1), 0o644).is_err());
    }

    #[test]
    fn downward_api_files() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"b": "2", "a": "x\"y"}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}]}});
        let items = json!([
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
        ]);
        let f = downward(&pod, &items, 0o644).unwrap();
        let text: Vec<(&str, String)> = f.iter().map(|f| (f.path.as_str(), String::from_utf8(f.data.clone()).unwrap())).collect();
        assert_eq!(text, [("name", "p".to_string()), ("labels", "a=\"x\\\"y\"\nb=\"2\"".to_string()), ("mem", "64".to_string())]);
        assert!(downward(&pod, &json!([{"path": "x", "fieldRef": {"fieldPath": "spec.nope"}}]), 0o644).is_err());
        assert!(downward(&pod, &json!([{"path": "m", "resourceFieldRef": {"resource": "limits.memory"}}]), 0o644).is_err());
    }
}
