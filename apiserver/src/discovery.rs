//! Discovery: aggregated (apidiscovery.k8s.io v2 and v2beta1) and the legacy lists, built once
//! from the registry; `/version`; the OpenAPI v3 index and per-group-version documents kubectl
//! needs to leave validation to the server.

use serde_json::{Value, json};

use crate::aggregator::Aggregator;
use crate::registry::{Registry, ResourceInfo};

pub const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
pub const AGGREGATED_V2BETA1: &str = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Which aggregated discovery version the client accepts, best first.
pub fn aggregated_version(accept: &str) -> Option<&'static str> {
    if accept.contains("g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList") {
        Some("v2")
    } else if accept.contains("g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList") {
        Some("v2beta1")
    } else {
        None
    }
}

fn resource_entry(r: &ResourceInfo) -> Value {
    json!({
        "resource": r.resource,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular(),
        "verbs": r.verbs(),
        "shortNames": r.short_names,
        "categories": r.categories(),
        "subresources": r.subresources.iter().map(|s| json!({
            "subresource": s.name,
            "responseKind": {"group": s.response.0, "version": s.response.1, "kind": s.response.2},
            "verbs": s.verbs,
        })).collect::<Vec<_>>(),
    })
}

/// `APIGroupDiscoveryList` for the core group (`legacy = true`, served at `/api`) or the
/// named groups (`/apis`, with the aggregated APIs' groups after the built-in ones).
pub fn aggregated(reg: &Registry, agg: &Aggregator, legacy: bool, version: &str) -> Value {
    let items: Vec<Value> = reg
        .groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(g, versions)| {
            json!({
                "metadata": {"name": g, "creationTimestamp": null},
                "versions": versions.iter().map(|v| json!({
                    "version": v,
                    "resources": reg.in_group_version(g, v).iter().map(resource_entry).collect::<Vec<_>>(),
                    "freshness": "Current",
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut items = items;
    if !legacy {
        if !agg.serves_group("metrics.k8s.io") {
            items.push(crate::node_proxy::aggregated_group());
        }
        items.extend(agg.aggregated_items(reg));
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

fn api_group(g: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
    json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
}

pub fn api_group_list(reg: &Registry, agg: &Aggregator) -> Value {
    let mut groups: Vec<Value> =
        reg.groups().into_iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| api_group(g, &vs)).collect();
    if !agg.serves_group("metrics.k8s.io") {
        groups.push(crate::node_proxy::legacy_group());
    }
    groups.extend(agg.legacy_groups(reg));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group_of(reg: &Registry, group: &str) -> Option<Value> {
    reg.groups().into_iter().find(|(g, _)| *g == group && !g.is_empty()).map(|(g, vs)| {
        let mut v = api_group(g, &vs);
        v["kind"] = json!("APIGroup");
        v["apiVersion"] = json!("v1");
        v
    })
}

pub fn api_resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in &reg.in_group_version(group, version) {
        resources.push(json!({
            "name": r.resource, "singularName": r.singular(), "namespaced": r.namespaced,
            "kind": r.kind, "verbs": r.verbs(), "shortNames": r.short_names, "categories": r.categories(),
        }));
        for s in r.subresources {
            resources.push(json!({
                "name": format!("{}/{}", r.resource, s.name), "singularName": "", "namespaced": r.namespaced,
                "group": s.response.0, "version": s.response.1, "kind": s.response.2, "verbs": s.verbs,
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": concat!("v1.33.0-capstan.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// A stable hash of the document set, so kubectl may cache per-version documents.
pub fn openapi_hash() -> String {
    format!("capstan-{}", env!("CARGO_PKG_VERSION"))
}

pub fn openapi_index(reg: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    let generation = reg.custom_generation.load(std::sync::atomic::Ordering::SeqCst);
    for (g, vs) in reg.groups() {
        for v in vs {
            let p = gv_path(g, v);
            let hash = if reg.is_custom_group(g) { format!("crd-{generation}") } else { openapi_hash() };
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}));
        }
    }
    json!({"paths": paths})
}

/// The OpenAPI v3 document of one group-version: the kinds' schemas (from the types, with
/// their descriptions, for `kubectl explain`) carrying their group-version-kind, and for each
/// kind PATCH and PUT operations declaring `fieldValidation`, which tells kubectl that the
/// server validates (so `apply` needs no schemas client-side).
pub fn openapi_gv(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let schemas = crate::schema::Schemas::get(reg);
    let mut paths = serde_json::Map::new();
    let mut roots = Vec::new();
    let mut custom = serde_json::Map::new();
    for r in &reg.in_group_version(group, version) {
        let schema_name = match (&r.custom_schema, schemas.name_of(r.group, r.version, r.kind)) {
            (Some(cs), _) => {
                let name = format!("{}.{}.{}", r.group, r.version, r.kind);
                let mut s = (**cs).clone();
                s["x-kubernetes-group-version-kind"] = json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
                custom.insert(name.clone(), s);
                name
            }
            (None, Some(n)) => {
                roots.push(n);
                n.to_string()
            }
            (None, None) => continue,
        };
        let base = if r.namespaced {
            format!("/{}/namespaces/{{namespace}}/{}/{{name}}", gv_path(group, version), r.resource)
        } else {
            format!("/{}/{}/{{name}}", gv_path(group, version), r.resource)
        };
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let resp = json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}}});
        paths.insert(
            base,
            json!({
                "patch": {"operationId": format!("patch{}", r.kind), "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": resp},
                "put": {"operationId": format!("replace{}", r.kind), "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": resp},
            }),
        );
    }
    if roots.is_empty() && custom.is_empty() {
        return None;
    }
    let mut components = schemas.closure(&roots);
    components.extend(custom);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": components},
    }))
}
