//! The aggregation layer: APIService objects (apiregistration.k8s.io/v1), as kube-apiserver's
//! aggregator. A Local APIService names a group-version this server serves itself (one for
//! each, made at bootstrap by `local_api_services`); one with a `service` hands its
//! group-version to another server: requests under `/apis/GROUP/VERSION` are proxied to a
//! ready endpoint of that Service (`proxy`) over TLS checked against its `caBundle`, with the
//! front-proxy client certificate and the user in `X-Remote-User`, `X-Remote-Group` and
//! `X-Remote-Extra-*` (what the `kube-system/extension-apiserver-authentication` ConfigMap
//! tells such servers to trust). The availability loop (`available`) checks each remote's
//! discovery every 10 s, keeps what it serves for this server's discovery, and writes the
//! `Available` condition.

pub mod available;
pub mod proxy;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use serde_json::{Value, json};

use crate::registry::Registry;

pub const GROUP: &str = "apiregistration.k8s.io";

/// A group-version served by another server.
pub struct Remote {
    /// `VERSION.GROUP`, the APIService's name.
    pub name: String,
    pub group: String,
    pub version: String,
    pub namespace: String,
    pub service: String,
    pub port: u16,
    pub tls: Result<Arc<rustls::ClientConfig>, String>,
    pub group_priority: i64,
    pub version_priority: i64,
}

impl Remote {
    /// The name the backend's certificate must carry.
    pub fn server_name(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }
}

/// The front-proxy identity: the client certificate presented to aggregated servers, and the
/// CA they should trust for it (published in `extension-apiserver-authentication`).
pub struct FrontProxy {
    pub ca_pem: String,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

static FRONT_PROXY: OnceLock<FrontProxy> = OnceLock::new();

/// The name aggregated servers are told to accept in the front-proxy certificate.
pub const FRONT_PROXY_CN: &str = "front-proxy-client";

/// Makes this process present `cert_pem` to aggregated servers (once, at start), issued by
/// `ca_pem`.
pub fn use_front_proxy(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("the front-proxy certificate: {e}"))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the front-proxy key: {e}"))?;
    FRONT_PROXY.set(FrontProxy { ca_pem: ca_pem.to_string(), chain, key }).map_err(|_| "the front-proxy certificate is set already".to_string())
}

pub fn front_proxy() -> Option<&'static FrontProxy> {
    FRONT_PROXY.get()
}

/// The TLS client configuration for one APIService: its `caBundle` (or no check at all under
/// `insecureSkipTLSVerify`), presenting the front-proxy certificate when there is one.
fn tls_for(spec: &Value) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder();
    let verified = if spec["insecureSkipTLSVerify"].as_bool() == Some(true) {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(crate::node_proxy::AnyServer))
    } else {
        use base64::Engine;
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let pem = match spec["caBundle"].as_str().filter(|b| !b.is_empty()) {
            Some(b) => base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| format!("caBundle is not base64: {e}"))?,
            None => return Err("no caBundle and not insecureSkipTLSVerify".into()),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.map_err(|e| format!("caBundle is not PEM: {e}"))?).map_err(|e| format!("caBundle: {e}"))?;
        }
        if roots.is_empty() {
            return Err("caBundle holds no certificate".into());
        }
        builder.with_root_certificates(roots)
    };
    let cfg = match front_proxy() {
        Some(fp) => verified.with_client_auth_cert(fp.chain.clone(), fp.key.clone_key()).map_err(|e| format!("the front-proxy certificate: {e}"))?,
        None => verified.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// The remote group-versions among APIService objects (those with a `service`).
pub fn compile(objects: &[Value]) -> Vec<Remote> {
    objects
        .iter()
        .filter_map(|o| {
            let spec = &o["spec"];
            let svc = spec.get("service").filter(|s| s.is_object())?;
            Some(Remote {
                name: o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                group: spec["group"].as_str()?.to_string(),
                version: spec["version"].as_str()?.to_string(),
                namespace: svc["namespace"].as_str().unwrap_or("").to_string(),
                service: svc["name"].as_str().unwrap_or("").to_string(),
                port: svc["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(443),
                tls: tls_for(spec),
                group_priority: spec["groupPriorityMinimum"].as_i64().unwrap_or(0),
                version_priority: spec["versionPriority"].as_i64().unwrap_or(0),
            })
        })
        .collect()
}

/// The remotes, and what their servers last said they serve.
#[derive(Default)]
pub struct Aggregator {
    remotes: RwLock<Arc<Vec<Arc<Remote>>>>,
    /// (group, version) -> the `resources` of its APIResourceList.
    discovered: RwLock<HashMap<(String, String), Vec<Value>>>,
    /// Wakes the availability loop when the APIServices change.
    pub changed: tokio::sync::Notify,
}

impl Aggregator {
    pub fn set(&self, remotes: Vec<Remote>) {
        *self.remotes.write().unwrap() = Arc::new(remotes.into_iter().map(Arc::new).collect());
        self.changed.notify_one();
    }

    pub fn remotes(&self) -> Arc<Vec<Arc<Remote>>> {
        self.remotes.read().unwrap().clone()
    }

    /// The remote serving `group/version`, if one does.
    pub fn remote(&self, group: &str, version: &str) -> Option<Arc<Remote>> {
        let r = self.remotes.read().unwrap();
        if r.is_empty() {
            return None;
        }
        r.iter().find(|x| x.group == group && x.version == version).cloned()
    }

    pub fn serves_group(&self, group: &str) -> bool {
        self.remotes.read().unwrap().iter().any(|r| r.group == group)
    }

    pub fn set_discovered(&self, group: &str, version: &str, resources: Option<Vec<Value>>) {
        let mut d = self.discovered.write().unwrap();
        match resources {
            Some(r) => d.insert((group.to_string(), version.to_string()), r),
            None => d.remove(&(group.to_string(), version.to_string())),
        };
    }

    /// The remote groups with their versions, highest version priority first, for the
    /// groups `reg` does not serve itself.
    fn groups(&self, reg: &Registry) -> Vec<(String, Vec<String>)> {
        let remotes = self.remotes();
        let mut by_group: Vec<(String, Vec<&Remote>)> = Vec::new();
        for r in remotes.iter().filter(|r| !reg.groups().iter().any(|(g, _)| *g == r.group)) {
            match by_group.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, v)) => v.push(r),
                None => by_group.push((r.group.clone(), vec![r])),
            }
        }
        by_group
            .into_iter()
            .map(|(g, mut rs)| {
                rs.sort_by(|a, b| b.version_priority.cmp(&a.version_priority).then_with(|| a.version.cmp(&b.version)));
                (g, rs.into_iter().map(|r| r.version.clone()).collect())
            })
            .collect()
    }

    /// Legacy discovery's APIGroup entries for the remote groups.
    pub fn legacy_groups(&self, reg: &Registry) -> Vec<Value> {
        self.groups(reg)
            .into_iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> = vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
                json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect()
    }

    /// `/apis/GROUP` for a remote group.
    pub fn group_of(&self, reg: &Registry, group: &str) -> Option<Value> {
        let mut g = self.legacy_groups(reg).into_iter().find(|g| g["name"] == group)?;
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        Some(g)
    }

    /// Aggregated discovery's entries for the remote groups: each version with the resources
    /// its server last listed (converted), `Stale` when it has not answered.
    pub fn aggregated_items(&self, reg: &Registry) -> Vec<Value> {
        let discovered = self.discovered.read().unwrap();
        self.groups(reg)
            .into_iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> = vs
                    .iter()
                    .map(|v| match discovered.get(&(g.clone(), v.clone())) {
                        Some(res) => json!({"version": v, "resources": aggregated_resources(&g, v, res), "freshness": "Current"}),
                        None => json!({"version": v, "resources": [], "freshness": "Stale"}),
                    })
                    .collect();
                json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
            })
            .collect()
    }
}

/// An APIResourceList's `resources` in aggregated discovery's form (subresources under their
/// resource).
fn aggregated_resources(group: &str, version: &str, list: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for r in list {
        let name = r["name"].as_str().unwrap_or("");
        let kind = |r: &Value| json!({"group": r["group"].as_str().unwrap_or(group), "version": r["version"].as_str().unwrap_or(version), "kind": r["kind"].as_str().unwrap_or("")});
        match name.split_once('/') {
            None => out.push(json!({
                "resource": name,
                "responseKind": kind(r),
                "scope": if r["namespaced"].as_bool() == Some(true) { "Namespaced" } else { "Cluster" },
                "singularResource": r["singularName"].as_str().unwrap_or(""),
                "verbs": r["verbs"].clone(),
                "shortNames": r.get("shortNames").cloned().unwrap_or(json!([])),
                "categories": r.get("categories").cloned().unwrap_or(json!([])),
                "subresources": [],
            })),
            Some((parent, sub)) => {
                if let Some(p) = out.iter_mut().find(|o| o["resource"] == parent)
                    && let Some(subs) = p["subresources"].as_array_mut()
                {
                    subs.push(json!({"subresource": sub, "responseKind": kind(r), "verbs": r["verbs"].clone()}));
                }
            }
        }
    }
    out
}

/// The APIService objects of the group-versions this server serves itself (Kubernetes'
/// autoregistered Local ones), metrics.k8s.io's included.
pub fn local_api_services(reg: &Registry) -> Vec<Value> {
    let mut gvs: Vec<(String, String)> = reg.groups().into_iter().flat_map(|(g, vs)| vs.into_iter().map(move |v| (g.to_string(), v.to_string()))).collect();
    gvs.push(("metrics.k8s.io".into(), "v1beta1".into()));
    let now = crate::object::now_rfc3339();
    gvs.into_iter()
        .map(|(g, v)| {
            json!({
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": format!("{v}.{g}"), "uid": crate::object::new_uid(), "creationTimestamp": now, "labels": {"kube-aggregator.kubernetes.io/automanaged": "onstart"}},
                "spec": {"group": g, "version": v, "groupPriorityMinimum": if g.is_empty() { 18000 } else { 17000 }, "versionPriority": 15},
                "status": {"conditions": [{"type": "Available", "status": "True", "lastTransitionTime": now, "reason": "Local", "message": "Local APIServices are always available"}]},
            })
        })
        .collect()
}

/// Kubernetes' validation of an APIService.
pub fn validate(obj: &Value, causes: &mut Vec<(String, String)>) {
    let spec = &obj["spec"];
    let (group, version) = (spec["group"].as_str().unwrap_or(""), spec["version"].as_str().unwrap_or(""));
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if version.is_empty() {
        causes.push(("spec.version".into(), "Required value".into()));
    }
    if name != format!("{version}.{group}") {
        causes.push(("metadata.name".into(), format!("Invalid value: {name:?}: must be `spec.version+\".\"+spec.group`: {:?}", format!("{version}.{group}"))));
    }
    let local = spec.get("service").is_none_or(|s| s.is_null());
    if !local {
        if !(1..=20000).contains(&spec["groupPriorityMinimum"].as_i64().unwrap_or(0)) {
            causes.push(("spec.groupPriorityMinimum".into(), format!("Invalid value: {}: must be positive and less than 20000", spec["groupPriorityMinimum"])));
        }
        if !(1..=1000).contains(&spec["versionPriority"].as_i64().unwrap_or(0)) {
            causes.push(("spec.versionPriority".into(), format!("Invalid value: {}: must be positive and less than 1000", spec["versionPriority"])));
        }
        if spec["service"]["name"].as_str().is_none_or(|n| n.is_empty()) || spec["service"]["namespace"].as_str().is_none_or(|n| n.is_empty()) {
            causes.push(("spec.service".into(), "Required value: name and namespace are required".into()));
        }
    }
    if spec["insecureSkipTLSVerify"].as_bool() == Some(true) && spec["caBundle"].as_str().is_some_and(|b| !b.is_empty()) {
        causes.push(("spec.insecureSkipTLSVerify".into(), "Invalid value: true: may not be true if caBundle is present".into()));
    }
}

/// The table column SERVICE: `Local` or `NAMESPACE/NAME`; AVAILABLE: `True` or
/// `False (Reason)`.
pub fn columns(o: &Value) -> (String, String) {
    let svc = &o["spec"]["service"];
    let service = if svc.is_object() { format!("{}/{}", svc["namespace"].as_str().unwrap_or(""), svc["name"].as_str().unwrap_or("")) } else { "Local".into() };
    let cond = o["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Available");
    let available = match cond {
        Some(c) if c["status"] == "True" => "True".to_string(),
        Some(c) => format!("{} ({})", c["status"].as_str().unwrap_or("Unknown"), c["reason"].as_str().unwrap_or("")),
        None => "Unknown".into(),
    };
    (service, available)
}

/// Keeps `st.aggregator` compiled from the APIServices' watch cache.
pub(crate) async fn follow(st: Arc<crate::handlers::AppState>) {
    let target = st.clone();
    crate::cached::follow(st, &[(GROUP, "apiservices")], move |o| target.aggregator.set(compile(&o[0]))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_service(group: &str, version: &str, vp: i64) -> Value {
        json!({"metadata": {"name": format!("{version}.{group}")}, "spec": {"group": group, "version": version, "groupPriorityMinimum": 1000, "versionPriority": vp,
            "insecureSkipTLSVerify": true, "service": {"namespace": "ns", "name": "backend"}}})
    }

    #[test]
    fn remote_group_versions_are_routed_and_discovered() {
        let reg = Registry::new();
        let a = Aggregator::default();
        a.set(compile(&[api_service("wardle.example.com", "v1alpha1", 10), api_service("wardle.example.com", "v1beta1", 20), json!({"metadata": {"name": "v1.apps"}, "spec": {"group": "apps", "version": "v1"}})]));
        assert_eq!(a.remotes().len(), 2, "Local APIServices are not remotes");
        let r = a.remote("wardle.example.com", "v1alpha1").unwrap();
        assert_eq!((r.port, r.server_name().as_str()), (443, "backend.ns.svc"));
        assert!(r.tls.is_ok());
        assert!(a.remote("apps", "v1").is_none());
        let legacy = a.legacy_groups(&reg);
        assert_eq!(legacy.len(), 1);
        assert_eq!(legacy[0]["preferredVersion"]["version"], "v1beta1", "the highest versionPriority is preferred");
        assert_eq!(a.group_of(&reg, "wardle.example.com").unwrap()["kind"], "APIGroup");
        let items = a.aggregated_items(&reg);
        assert_eq!(items[0]["versions"][0]["freshness"], "Stale", "nothing discovered yet");
        a.set_discovered("wardle.example.com", "v1beta1", Some(vec![
            json!({"name": "flunders", "singularName": "flunder", "namespaced": true, "kind": "Flunder", "verbs": ["get", "list"]}),
            json!({"name": "flunders/status", "namespaced": true, "kind": "Flunder", "verbs": ["get"]}),
        ]));
        let items = a.aggregated_items(&reg);
        let v = &items[0]["versions"][0];
        assert_eq!((&v["version"], &v["freshness"]), (&json!("v1beta1"), &json!("Current")));
        assert_eq!(v["resources"][0]["responseKind"], json!({"group": "wardle.example.com", "version": "v1beta1", "kind": "Flunder"}));
        assert_eq!((&v["resources"][0]["scope"], &v["resources"][0]["subresources"][0]["subresource"]), (&json!("Namespaced"), &json!("status")));
    }

    #[test]
    fn api_services_are_validated_and_shown_as_kubectl_shows_them() {
        let mut causes = vec![];
        let mut bad = api_service("wardle.example.com", "v1", 0);
        bad["metadata"]["name"] = json!("wrong");
        bad["spec"]["caBundle"] = json!("eA==");
        validate(&bad, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "spec.versionPriority", "spec.insecureSkipTLSVerify"]);
        let mut ok = vec![];
        validate(&api_service("wardle.example.com", "v1", 5), &mut ok);
        for l in local_api_services(&Registry::new()) {
            validate(&l, &mut ok);
        }
        assert!(ok.is_empty(), "{ok:?}");
        let local = local_api_services(&Registry::new());
        assert!(local.iter().any(|l| l["metadata"]["name"] == "v1." && l["spec"]["group"] == ""));
        assert!(local.iter().any(|l| l["metadata"]["name"] == "v1beta1.metrics.k8s.io"));
        assert_eq!(columns(&local[0]), ("Local".to_string(), "True".to_string()));
        let mut down = api_service("g.io", "v1", 1);
        down["status"] = json!({"conditions": [{"type": "Available", "status": "False", "reason": "MissingEndpoints"}]});
        assert_eq!(columns(&down), ("ns/backend".to_string(), "False (MissingEndpoints)".to_string()));
    }
}
