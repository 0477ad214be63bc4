//! The built-in types' schemas, from the k8s-openapi types (their `schemars` JSON schemas,
//! with Kubernetes' own descriptions), never typed in: served as OpenAPI v3 components (for
//! `kubectl explain` and `apply`) and used to find unknown fields (`fieldValidation`).

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::registry::Registry;

pub struct Schemas {
    /// Every schema by its Kubernetes name (`io.k8s.api.core.v1.Pod`), refs rewritten to
    /// `#/components/schemas/...`.
    pub components: Map<String, Value>,
    /// (group, version, kind) -> schema name.
    pub kinds: HashMap<(String, String, String), String>,
}

const DEFS: &str = "#/$defs/";
const COMPONENTS: &str = "#/components/schemas/";

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref")
                && let Some(name) = r.strip_prefix(DEFS) {
                    *r = format!("{COMPONENTS}{name}");
                }
            for (_, x) in m.iter_mut() {
                rewrite_refs(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

fn refs_of(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref")
                && let Some(name) = r.strip_prefix(COMPONENTS) {
                    out.push(name.to_string());
                }
            m.values().for_each(|x| refs_of(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs_of(x, out)),
        _ => {}
    }
}

impl Schemas {
    fn build(reg: &Registry) -> Schemas {
        let mut components = Map::new();
        let mut kinds = HashMap::new();
        for r in &reg.resources {
            let mut s = (r.schema)();
            let Some(obj) = s.as_object_mut() else { continue };
            let name = obj.get("title").and_then(|t| t.as_str()).map(String::from).unwrap_or_else(|| format!("{}.{}.{}", r.group, r.version, r.kind));
            if let Some(Value::Object(defs)) = obj.remove("$defs") {
                for (k, mut d) in defs {
                    rewrite_refs(&mut d);
                    components.entry(k).or_insert(d);
                }
            }
            obj.remove("$schema");
            obj.remove("title");
            obj.insert("x-kubernetes-group-version-kind".into(), json!([{"group": r.group, "version": r.version, "kind": r.kind}]));
            rewrite_refs(&mut s);
            components.insert(name.clone(), s);
            kinds.insert((r.group.to_string(), r.version.to_string(), r.kind.to_string()), name);
        }
        Schemas { components, kinds }
    }

    pub fn get(reg: &Registry) -> &'static Schemas {
        static S: OnceLock<Schemas> = OnceLock::new();
        S.get_or_init(|| Schemas::build(reg))
    }

    pub fn name_of(&self, group: &str, version: &str, kind: &str) -> Option<&str> {
        self.kinds.get(&(group.to_string(), version.to_string(), kind.to_string())).map(|s| s.as_str())
    }

    /// The schemas reachable from `roots` (for one group-version's document).
    pub fn closure(&self, roots: &[&str]) -> Map<String, Value> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = roots.iter().map(|s| s.to_string()).collect();
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(s) = self.components.get(&n) {
                refs_of(s, &mut todo);
            }
        }
        seen.into_iter().filter_map(|n| self.components.get(&n).map(|s| (n, s.clone()))).collect()
    }

    fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        for _ in 0..16 {
            match s.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix(COMPONENTS)) {
                Some(name) => match self.components.get(name) {
                    Some(t) => s = t,
                    None => return s,
                },
                None => return s,
            }
        }
        s
    }

    /// Removes the fields of `obj` that its kind's schema does not define and returns their
    /// paths (`spec.foo`, `spec.containers[0].bar`). A value of the wrong type (a number
    /// where the type says string, an object where it says list) is an error, worded as
    /// Kubernetes' decoder words it: nothing is removed then.
    pub fn prune_unknown(&self, group: &str, version: &str, kind: &str, obj: &mut Value) -> Result<Vec<String>, String> {
        match self.name_of(group, version, kind).and_then(|n| self.components.get(n)) {
            Some(s) => {
                let mut bad = None;
                let out = self.prune_checked(s, obj, &mut bad);
                match bad {
                    Some(b) => Err(format!("{kind} in version {version:?} cannot be handled as a {kind}: {}", b.message(kind))),
                    None => Ok(out),
                }
            }
            None => Ok(Vec::new()),
        }
    }

    /// Finds unknown fields with a read-only walk that allocates only for what it finds, then
    /// removes them.
    fn prune(&self, schema: &Value, obj: &mut Value) -> Vec<String> {
        self.prune_checked(schema, obj, &mut None)
    }

    fn prune_checked(&self, schema: &Value, obj: &mut Value, bad: &mut Option<BadType>) -> Vec<String> {
        let found: Vec<Vec<Owned>> = {
            let mut found: Vec<Vec<Step>> = Vec::new();
            self.find_unknown(schema, obj, &mut Vec::new(), &mut found, bad);
            if bad.is_some() {
                return Vec::new();
            }
            found.iter().map(|p| p.iter().map(Step::owned).collect()).collect()
        };
        let mut out = Vec::with_capacity(found.len());
        for path in found {
            out.push(render(&path));
            remove_at(obj, &path);
        }
        out
    }

    fn find_unknown<'v>(&self, schema: &Value, v: &'v Value, path: &mut Vec<Step<'v>>, out: &mut Vec<Vec<Step<'v>>>, bad: &mut Option<BadType>) {
        let reference = schema.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix(COMPONENTS));
        let schema = self.resolve(schema);
        if schema.get("x-kubernetes-preserve-unknown-fields").and_then(|x| x.as_bool()) == Some(true) {
            return;
        }
        if bad.is_none()
            && let Some(want) = wrong_type(schema, reference, v)
        {
            *bad = Some(BadType { path: path.iter().map(Step::owned).collect(), got: type_name(v), want });
            return;
        }
        match v {
            Value::Object(m) => {
                let props = schema.get("properties").and_then(|p| p.as_object());
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                if props.is_none() && additional.is_none() {
                    return; // free-form (e.g. RawExtension) or not an object schema
                }
                for (k, x) in m {
                    let in_props = props.and_then(|p| p.get(k));
                    path.push(if in_props.is_some() { Step::Key(k) } else { Step::MapKey(k) });
                    match in_props.or(additional) {
                        Some(ps) => self.find_unknown(ps, x, path, out, bad),
                        None => out.push(path.clone()),
                    }
                    path.pop();
                }
            }
            Value::Array(a) => {
                if let Some(items) = schema.get("items") {
                    for (i, x) in a.iter().enumerate() {
                        path.push(Step::Index(i));
                        self.find_unknown(items, x, path, out, bad);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
    }

    /// As `prune_unknown`, over a given schema (a CRD version's `openAPIV3Schema`).
    pub fn prune_with(&self, schema: &Value, obj: &mut Value) -> Vec<String> {
        let mut out = Vec::new();
        // apiVersion, kind and metadata are the server's, whatever the CRD's schema says.
        let mut body = obj.clone();
        if let Some(m) = body.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
            m.remove("metadata");
        }
        let has_props = schema.get("properties").is_some();
        if has_props {
            out = self.prune(schema, &mut body);
            if let (Some(o), Value::Object(b)) = (obj.as_object_mut(), body) {
                let keep: Vec<String> = ["apiVersion", "kind", "metadata"].iter().map(|s| s.to_string()).collect();
                o.retain(|k, _| keep.contains(k) || b.contains_key(k));
                for (k, v) in b {
                    o.insert(k, v);
                }
            }
        }
        out
    }

}

/// One step of a path into a JSON value, borrowed from it.
#[derive(Clone, Copy, Debug)]
enum Step<'a> {
    Key(&'a str),
    /// A key of a map (not a field: Go's messages leave it out).
    MapKey(&'a str),
    Index(usize),
}

/// A step that outlives the value it was found in.
enum Owned {
    Key(String),
    MapKey(String),
    Index(usize),
}

impl Step<'_> {
    fn owned(&self) -> Owned {
        match self {
            Step::Key(k) => Owned::Key(k.to_string()),
            Step::MapKey(k) => Owned::MapKey(k.to_string()),
            Step::Index(i) => Owned::Index(*i),
        }
    }
}

fn render(path: &[Owned]) -> String {
    let mut s = String::new();
    for p in path {
        match p {
            Owned::Key(k) | Owned::MapKey(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Owned::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn remove_at(v: &mut Value, path: &[Owned]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut cur = v;
    for p in parent {
        let next = match p {
            Owned::Key(k) | Owned::MapKey(k) => cur.get_mut(k.as_str()),
            Owned::Index(i) => cur.get_mut(*i),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let (Owned::Key(k) | Owned::MapKey(k), Some(m)) = (last, cur.as_object_mut()) {
        m.remove(k);
    }
}

/// A value whose JSON type the kind's type cannot hold.
pub struct BadType {
    path: Vec<Owned>,
    got: &'static str,
    want: String,
}

impl BadType {
    /// As Go's JSON decoder says it: `json: cannot unmarshal number into Go struct field
    /// ConfigMap.data of type string`.
    fn message(&self, kind: &str) -> String {
        let got = match self.got {
            "integer" => "number",
            "boolean" => "bool",
            other => other,
        };
        let mut field = kind.to_string();
        for p in &self.path {
            if let Owned::Key(k) = p {
                field.push('.');
                field.push_str(k);
            }
        }
        format!("json: cannot unmarshal {got} into Go struct field {field} of type {}", self.want)
    }
}

/// Go's name of the type a schema describes (`string`, `int32`, `[]v1.Container`,
/// `map[string]string`, `v1.PodSpec`).
fn go_type(schema: &Value, reference: Option<&str>, resolve: &dyn Fn(&Value) -> (Option<String>, Value)) -> String {
    if let Some(r) = reference {
        let mut parts = r.rsplit('.');
        let (name, version) = (parts.next().unwrap_or(r), parts.next().unwrap_or(""));
        return if version.is_empty() { name.to_string() } else { format!("{version}.{name}") };
    }
    match schema.get("type").and_then(|t| t.as_str()) {
        Some("integer") => schema.get("format").and_then(|f| f.as_str()).unwrap_or("int64").to_string(),
        Some("number") => "float64".into(),
        Some("boolean") => "bool".into(),
        Some("array") => {
            let (r, items) = resolve(schema.get("items").unwrap_or(&Value::Null));
            format!("[]{}", go_type(&items, r.as_deref(), resolve))
        }
        Some("object") if schema.get("additionalProperties").is_some_and(|a| a.is_object()) => {
            let (r, inner) = resolve(&schema["additionalProperties"]);
            format!("map[string]{}", go_type(&inner, r.as_deref(), resolve))
        }
        Some(t) => t.to_string(),
        None => "interface {}".into(),
    }
}

/// What the schema's type is when `v` cannot be decoded into it (None when it can). Null
/// decodes into anything; quantities and int-or-strings take numbers and strings.
fn wrong_type(schema: &Value, reference: Option<&str>, v: &Value) -> Option<String> {
    let t = schema.get("type").and_then(|t| t.as_str())?;
    // Types that decode from several JSON types (any JSON, a schema or a list of them, a
    // schema or a bool, ...).
    const ANY: [&str; 5] = [".JSON", ".JSONSchemaPropsOrArray", ".JSONSchemaPropsOrBool", ".JSONSchemaPropsOrStringArray", ".RawExtension"];
    if reference.is_some_and(|r| ANY.iter().any(|a| r.ends_with(a))) {
        return None;
    }
    if v.is_null() || schema.get("x-kubernetes-int-or-string").is_some() || schema.get("format").and_then(|f| f.as_str()) == Some("int-or-string") {
        return None;
    }
    let quantity = reference.is_some_and(|r| r.ends_with(".Quantity")) || schema.get("description").and_then(|d| d.as_str()).is_some_and(|d| d.starts_with("Quantity is a fixed-point"));
    let actual = type_name(v);
    let ok = actual == t || (t == "number" && actual == "integer") || (quantity && matches!(actual, "integer" | "number" | "string"));
    if ok {
        return None;
    }
    let name_of = |s: &Value| (s.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix(COMPONENTS)).map(String::from), s.clone());
    Some(go_type(schema, reference, &name_of))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The basics of OpenAPI v3 schema validation for custom resources: `type`, `required`,
/// `enum`, `minimum`/`maximum`, recursively through `properties`, `items` and
/// `additionalProperties`. Causes are (field path, message).
pub fn validate_basic(schema: &Value, v: &Value, path: &str, causes: &mut Vec<(String, String)>) {
    let field = |p: &str| if p.is_empty() { "<root>".to_string() } else { p.to_string() };
    if let Some(t) = schema.get("type").and_then(|t| t.as_str()) {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer") || (v.is_null() && schema.get("nullable").and_then(|n| n.as_bool()) == Some(true));
        if !ok && schema.get("x-kubernetes-int-or-string").is_none() {
            causes.push((field(path), format!("Invalid value: {:?}: {path} in body must be of type {t}", actual)));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(|e| e.as_array())
        && !e.contains(v) {
            causes.push((field(path), format!("Unsupported value: {v}: supported values: {}", e.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))));
        }
    if let (Some(min), Some(x)) = (schema.get("minimum").and_then(|m| m.as_f64()), v.as_f64())
        && x < min {
            causes.push((field(path), format!("Invalid value: {x}: {path} in body should be greater than or equal to {min}")));
        }
    if let (Some(max), Some(x)) = (schema.get("maximum").and_then(|m| m.as_f64()), v.as_f64())
        && x > max {
            causes.push((field(path), format!("Invalid value: {x}: {path} in body should be less than or equal to {max}")));
        }
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    if let Value::Object(m) = v {
        for r in schema.get("required").and_then(|r| r.as_array()).into_iter().flatten().filter_map(|r| r.as_str()) {
            if !m.contains_key(r) && !(path.is_empty() && matches!(r, "apiVersion" | "kind" | "metadata")) {
                causes.push((join(r), "Required value".into()));
            }
        }
        let props = schema.get("properties").and_then(|p| p.as_object());
        for (k, x) in m {
            if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(ps) = props.and_then(|p| p.get(k)).or_else(|| schema.get("additionalProperties").filter(|a| a.is_object())) {
                validate_basic(ps, x, &join(k), causes);
            }
        }
    }
    if let (Value::Array(a), Some(items)) = (v, schema.get("items")) {
        for (i, x) in a.iter().enumerate() {
            validate_basic(items, x, &format!("{path}[{i}]"), causes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_come_from_the_types_with_descriptions() {
        let reg = Registry::new();
        let s = Schemas::get(&reg);
        let pod = &s.components[s.name_of("", "v1", "Pod").unwrap()];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert!(pod["properties"]["spec"]["$ref"].as_str().unwrap().starts_with(COMPONENTS));
        assert!(s.components["io.k8s.api.core.v1.Container"]["properties"]["image"]["description"].is_string());
    }

    #[test]
    fn unknown_fields_are_found_and_pruned_with_their_paths() {
        let reg = Registry::new();
        let s = Schemas::get(&reg);
        let mut obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"any": "label"}, "bogus": 1},
            "spec": {"replicas": 1, "replicaz": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i", "imagee": "x"}]}}},
        });
        let mut unknown = s.prune_unknown("apps", "v1", "Deployment", &mut obj).unwrap();
        unknown.sort();
        assert_eq!(unknown, vec!["metadata.bogus", "spec.replicaz", "spec.template.spec.containers[0].imagee"]);
        assert!(obj["spec"].get("replicaz").is_none());
        assert_eq!(obj["metadata"]["labels"]["any"], "label", "maps take any key");
    }

    #[test]
    fn values_of_the_wrong_type_are_refused_as_kubernetes_words_it() {
        let reg = Registry::new();
        let s = Schemas::get(&reg);
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": 1}});
        assert_eq!(
            s.prune_unknown("", "v1", "ConfigMap", &mut cm).unwrap_err(),
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal number into Go struct field ConfigMap.data of type string"
        );
        let mut cm = json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": ["x"]}});
        assert!(s.prune_unknown("", "v1", "ConfigMap", &mut cm).unwrap_err().contains("cannot unmarshal array into Go struct field ConfigMap.data of type string"));
        let mut pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": {"name": "c"}}});
        let e = s.prune_unknown("", "v1", "Pod", &mut pod).unwrap_err();
        assert!(e.contains("cannot unmarshal object into Go struct field Pod.spec.containers of type []v1.Container"), "{e}");
        // What Kubernetes accepts: quantities as numbers, int-or-strings, nulls.
        let mut ok = json!({"kind": "Pod", "metadata": {"name": "p", "labels": null}, "spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}, "ports": [{"containerPort": 80}],
            "readinessProbe": {"httpGet": {"port": "http"}}, "livenessProbe": {"httpGet": {"port": 8080}}}]}});
        assert_eq!(s.prune_unknown("", "v1", "Pod", &mut ok).unwrap(), Vec::<String>::new());
        let mut crd = json!({"kind": "CustomResourceDefinition", "metadata": {"name": "c"}, "spec": {"group": "g", "names": {"plural": "cs", "kind": "C"}, "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "properties": {"size": {"type": "string", "enum": ["S", "M"], "default": "S"},
                "items": {"type": "array", "items": {"type": "string"}}, "flag": {"x-kubernetes-preserve-unknown-fields": true, "additionalProperties": true}}}}}]}});
        assert_eq!(s.prune_unknown("apiextensions.k8s.io", "v1", "CustomResourceDefinition", &mut crd), Ok(vec![]), "any-JSON fields take any JSON");
        let mut d = json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": "3"}});
        assert!(s.prune_unknown("apps", "v1", "Deployment", &mut d).unwrap_err().contains("cannot unmarshal string into Go struct field Deployment.spec.replicas of type int32"));
    }
}
