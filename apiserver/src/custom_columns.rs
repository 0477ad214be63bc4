//! Tables of custom resources: a CRD version's `additionalPrinterColumns` (or, without them,
//! Name and Age), computed on the server as Kubernetes' CRD table convertor does, so that
//! `kubectl get` shows them. Column paths are Kubernetes' simple JSONPath (`.spec.replicas`,
//! `.status.conditions[?(@.type=="Ready")].status`), evaluated with `serde_json_path`
//! (RFC 9535) after turning the leading `.name` steps into its syntax; the first value found
//! fills the cell, typed by the column's `type`.

use serde_json::{Value, json};
use serde_json_path::JsonPath;

use crate::registry::ResourceInfo;
use crate::table;

/// One printer column, compiled.
#[derive(Debug)]
pub struct PrinterColumn {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    /// None: a path that does not parse (its cells are empty).
    path: Option<JsonPath>,
}

/// A CRD version's columns (`additionalPrinterColumns`); none listed gives Kubernetes'
/// default, Age.
pub fn of_version(version: &Value) -> Vec<PrinterColumn> {
    let listed = version["additionalPrinterColumns"].as_array();
    let Some(listed) = listed.filter(|l| !l.is_empty()) else {
        return vec![PrinterColumn {
            name: "Age".into(),
            ty: "date".into(),
            format: String::new(),
            description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
            priority: 0,
            path: compile(".metadata.creationTimestamp"),
        }];
    };
    listed
        .iter()
        .map(|c| PrinterColumn {
            name: c["name"].as_str().unwrap_or("").to_string(),
            ty: c["type"].as_str().unwrap_or("string").to_string(),
            format: c["format"].as_str().unwrap_or("").to_string(),
            description: c["description"].as_str().unwrap_or("").to_string(),
            priority: c["priority"].as_i64().unwrap_or(0),
            path: c["jsonPath"].as_str().and_then(compile),
        })
        .collect()
}

/// Kubernetes' column path as RFC 9535: `.a.b-c[0]` is `$['a']['b-c'][0]`; a `\.` is a dot
/// inside a name; brackets pass through as they are.
pub fn to_rfc9535(path: &str) -> String {
    let mut out = String::from("$");
    let mut name = String::new();
    let mut chars = path.trim().trim_start_matches('{').trim_end_matches('}').chars().peekable();
    let flush = |name: &mut String, out: &mut String| {
        if !name.is_empty() {
            out.push_str(&format!("['{}']", name.replace('\\', "\\\\").replace('\'', "\\'")));
            name.clear();
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                name.push('.');
                chars.next();
            }
            '.' => flush(&mut name, &mut out),
            '[' => {
                flush(&mut name, &mut out);
                out.push('[');
                let mut depth = 1;
                for c in chars.by_ref() {
                    out.push(c);
                    match c {
                        '[' => depth += 1,
                        ']' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            c => name.push(c),
        }
    }
    flush(&mut name, &mut out);
    out
}

fn compile(path: &str) -> Option<JsonPath> {
    JsonPath::parse(&to_rfc9535(path)).ok()
}

/// The cell of one column for one object: its path's first value, as the column's type.
fn cell(c: &PrinterColumn, o: &Value) -> Value {
    let Some(v) = c.path.as_ref().and_then(|p| p.query(o).all().first().copied()) else { return Value::Null };
    match c.ty.as_str() {
        "integer" => v.as_i64().map(Value::from).unwrap_or(Value::Null),
        "number" => if v.is_number() { v.clone() } else { Value::Null },
        "boolean" => v.as_bool().map(Value::Bool).unwrap_or(Value::Null),
        "date" => match v.as_str() {
            Some(s) if s.parse::<jiff::Timestamp>().is_ok() => json!(table::age(Some(s))),
            _ => json!("<invalid>"),
        },
        _ => match v {
            Value::String(s) => json!(s),
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
    }
}

fn definitions(cols: &[PrinterColumn]) -> Vec<Value> {
    let mut out = vec![json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0})];
    out.extend(cols.iter().map(|c| json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority})));
    out
}

/// A Table row of `o`, for its resource: a custom resource's columns, or a built-in kind's.
pub fn row_for(info: &ResourceInfo, o: &Value) -> Value {
    match &info.printer_columns {
        None => table::row(info.kind, o),
        Some(cols) => {
            let mut cells = vec![o["metadata"]["name"].clone()];
            cells.extend(cols.iter().map(|c| cell(c, o)));
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))},
            })
        }
    }
}

/// A Table of `rows` (made by `row_for`), with the resource's column definitions.
pub fn table_for(info: &ResourceInfo, rows: Vec<Value>, resource_version: &str, cont: Option<&str>) -> Value {
    let mut t = table::table(info.kind, rows, resource_version, cont);
    if let Some(cols) = &info.printer_columns {
        t["columnDefinitions"] = json!(definitions(cols));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(v: Value) -> Vec<PrinterColumn> {
        of_version(&json!({"additionalPrinterColumns": v}))
    }

    #[test]
    fn kubernetes_paths_become_rfc9535() {
        assert_eq!(to_rfc9535(".spec.replicas"), "$['spec']['replicas']");
        assert_eq!(to_rfc9535(".metadata.labels.app\\.kubernetes\\.io/name"), "$['metadata']['labels']['app.kubernetes.io/name']");
        assert_eq!(to_rfc9535(".status.conditions[?(@.type==\"Ready\")].status"), "$['status']['conditions'][?(@.type==\"Ready\")]['status']");
        assert_eq!(to_rfc9535(".spec.ports[0].port"), "$['spec']['ports'][0]['port']");
    }

    #[test]
    fn cells_take_the_first_value_as_the_columns_type() {
        let c = cols(json!([
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
            {"name": "Ratio", "type": "number", "jsonPath": ".spec.ratio"},
            {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused", "priority": 1},
            {"name": "Tags", "type": "string", "jsonPath": ".spec.tags"},
            {"name": "Missing", "type": "string", "jsonPath": ".spec.nothing"},
            {"name": "Wrong", "type": "integer", "jsonPath": ".spec.ratio"},
            {"name": "Since", "type": "date", "jsonPath": ".status.since"},
            {"name": "Bad", "type": "string", "jsonPath": ".spec[?("},
        ]));
        let o = json!({"metadata": {"name": "x"}, "spec": {"replicas": 3, "ratio": 0.5, "paused": true, "tags": ["a", "b"]},
            "status": {"since": "not a time", "conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        let cells: Vec<Value> = c.iter().map(|c| cell(c, &o)).collect();
        assert_eq!(cells, vec![json!(3), json!("True"), json!(0.5), json!(true), json!("[\"a\",\"b\"]"), Value::Null, Value::Null, json!("<invalid>"), Value::Null]);
        let defs = definitions(&c);
        assert_eq!((defs[0]["name"].as_str(), defs[4]["name"].as_str(), defs[4]["priority"].as_i64()), (Some("Name"), Some("Paused"), Some(1)));
        // No columns listed: Name and Age.
        let d = of_version(&json!({}));
        assert_eq!((d.len(), d[0].name.as_str(), d[0].ty.as_str()), (1, "Age", "date"));
        assert!(cell(&d[0], &json!({"metadata": {"creationTimestamp": "2020-01-01T00:00:00Z"}})).as_str().unwrap().ends_with('d'));
    }
}
