//! The built-in resources the server knows, with their group, version, kind and scope taken
//! from the `k8s-openapi` types (never typed in by hand). Short names and subresources are
//! Kubernetes facts that the types do not carry; they are listed here.

use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource};

#[derive(Clone, Debug)]
pub struct ResourceInfo {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// The plural name used in URLs, e.g. "pods".
    pub resource: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Whether writes to `spec` bump `metadata.generation` (types with a spec).
    pub has_spec: bool,
    /// The type's JSON schema (from its `schemars` implementation).
    pub schema: fn() -> serde_json::Value,
    /// For custom resources: the CRD version's `openAPIV3Schema`.
    pub custom_schema: Option<std::sync::Arc<serde_json::Value>>,
    /// For custom resources of CRDs with several versions: their storage version and how
    /// objects change version (`crd_conversion`).
    pub conversion: Option<std::sync::Arc<crate::crd_conversion::Conversion>>,
    /// For custom resources: the version's Table columns (`custom_columns`); None for
    /// built-in kinds, whose columns are `table`'s.
    pub printer_columns: Option<std::sync::Arc<Vec<crate::custom_columns::PrinterColumn>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subresource {
    pub name: &'static str,
    /// (group, version, kind) of what the subresource answers.
    pub response: (&'static str, &'static str, &'static str),
    pub verbs: &'static [&'static str],
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    /// The store key prefix of all objects of this resource (in a namespace, if given).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let g = if self.group.is_empty() { "core" } else { self.group };
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{g}/{}/{ns}/", self.resource),
            _ => format!("/registry/{g}/{}/", self.resource),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// Categories (`kubectl get all` lists the resources in category "all").
    pub fn categories(&self) -> &'static [&'static str] {
        match (self.group, self.resource) {
            ("", "pods" | "services" | "replicationcontrollers")
            | ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets")
            | ("batch", "jobs" | "cronjobs")
            | ("autoscaling", "horizontalpodautoscalers") => &["all"],
            _ => &[],
        }
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        match (self.group, self.resource) {
            // Read-only: answered from health checks, not stored (`component_status.rs`).
            ("", "componentstatuses") => &["get", "list"],
            _ => &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }
    }
}

/// Implemented for k8s-openapi's scope markers so a type's scope becomes a value.
pub trait Scope {
    const NAMESPACED: bool;
}
impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
}

fn info<T>(short_names: &'static [&'static str], subresources: &'static [Subresource], has_spec: bool) -> ResourceInfo
where
    T: Resource + ListableResource + schemars::JsonSchema,
    T::Scope: Scope,
{
    ResourceInfo {
        group: T::GROUP,
        version: T::VERSION,
        resource: T::URL_PATH_SEGMENT,
        kind: T::KIND,
        list_kind: T::LIST_KIND,
        namespaced: <T::Scope as Scope>::NAMESPACED,
        short_names,
        subresources,
        has_spec,
        schema: schema_of::<T>,
        custom_schema: None,
        conversion: None,
        printer_columns: None,
    }
}

fn no_schema() -> serde_json::Value {
    serde_json::Value::Null
}

/// Interns a string for the life of the process. CRD names are few and change rarely; each
/// distinct string is kept once.
fn intern(s: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static SET: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = SET.get_or_init(Default::default).lock().unwrap();
    if let Some(x) = set.get(s) {
        return x;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

fn intern_list(v: Option<&serde_json::Value>) -> &'static [&'static str] {
    let list: Vec<&'static str> = v.and_then(|x| x.as_array()).map(|a| a.iter().filter_map(|s| s.as_str()).map(intern).collect()).unwrap_or_default();
    if list.is_empty() { &[] } else { Box::leak(list.into_boxed_slice()) }
}

/// The resources a CustomResourceDefinition object defines: one per served version.
pub fn from_crd(crd: &serde_json::Value) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let (Some(group), Some(plural), Some(kind)) = (
        spec["group"].as_str(),
        spec["names"]["plural"].as_str(),
        spec["names"]["kind"].as_str(),
    ) else {
        return vec![];
    };
    let list_kind = spec["names"]["listKind"].as_str().map(String::from).unwrap_or_else(|| format!("{kind}List"));
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let conversion = crate::crd_conversion::of_crd(crd);
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let Some(version) = v["name"].as_str() else { continue };
        let mut subs = Vec::new();
        if v["subresources"].get("status").is_some() {
            subs.push(Subresource { name: "status", response: (intern(group), intern(version), intern(kind)), verbs: GET_PATCH_UPDATE });
        }
        if v["subresources"].get("scale").is_some() {
            subs.push(Subresource { name: "scale", response: ("autoscaling", "v1", "Scale"), verbs: GET_PATCH_UPDATE });
        }
        out.push(ResourceInfo {
            group: intern(group),
            version: intern(version),
            resource: intern(plural),
            kind: intern(kind),
            list_kind: intern(&list_kind),
            namespaced,
            short_names: intern_list(spec["names"].get("shortNames")),
            subresources: if subs.is_empty() { &[] } else { Box::leak(subs.into_boxed_slice()) },
            has_spec: true,
            schema: no_schema,
            custom_schema: v["schema"].get("openAPIV3Schema").cloned().map(std::sync::Arc::new),
            conversion: conversion.clone(),
            printer_columns: Some(std::sync::Arc::new(crate::custom_columns::of_version(v))),
        });
    }
    out
}

const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];

macro_rules! status_of {
    ($t:ty) => {
        Subresource {
            name: "status",
            response: (<$t as Resource>::GROUP, <$t as Resource>::VERSION, <$t as Resource>::KIND),
            verbs: GET_PATCH_UPDATE,
        }
    };
}

/// Every built-in resource served.
pub fn builtin() -> Vec<ResourceInfo> {
    use k8s_openapi::api::{
        admissionregistration::v1 as admissionregistration, apps::v1 as apps, node::v1 as node, autoscaling::v2 as autoscaling, batch::v1 as batch, certificates::v1 as certificates, coordination::v1 as coordination,
        core::v1 as core, discovery::v1 as discovery, flowcontrol::v1 as flowcontrol, policy::v1 as policy, rbac::v1 as rbac,
        networking::v1 as networking, scheduling::v1 as scheduling, storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    const SCALE: Subresource = Subresource {
        name: "scale",
        response: ("autoscaling", "v1", "Scale"),
        verbs: GET_PATCH_UPDATE,
    };
    const PROXY_VERBS: &[&str] = &["create", "delete", "get", "patch", "update"];
    const POD_SUBS: &[Subresource] = &[
        status_of!(core::Pod),
        Subresource { name: "binding", response: ("", "v1", "Binding"), verbs: &["create"] },
        Subresource { name: "ephemeralcontainers", response: ("", "v1", "Pod"), verbs: GET_PATCH_UPDATE },
        Subresource { name: "eviction", response: ("policy", "v1", "Eviction"), verbs: &["create"] },
        Subresource { name: "log", response: ("", "v1", "Pod"), verbs: &["get"] },
        Subresource { name: "exec", response: ("", "v1", "PodExecOptions"), verbs: &["create", "get"] },
        Subresource { name: "attach", response: ("", "v1", "PodAttachOptions"), verbs: &["create", "get"] },
        Subresource { name: "portforward", response: ("", "v1", "PodPortForwardOptions"), verbs: &["create", "get"] },
        Subresource { name: "proxy", response: ("", "v1", "PodProxyOptions"), verbs: PROXY_VERBS },
    ];
    vec![
        info::<core::Namespace>(&["ns"], &[status_of!(core::Namespace), Subresource { name: "finalize", response: ("", "v1", "Namespace"), verbs: &["update"] }], true),
        info::<core::Pod>(&["po"], POD_SUBS, true),
        info::<core::Node>(&["no"], &[status_of!(core::Node), Subresource { name: "proxy", response: ("", "v1", "NodeProxyOptions"), verbs: PROXY_VERBS }], true),
        info::<core::Service>(&["svc"], &[status_of!(core::Service), Subresource { name: "proxy", response: ("", "v1", "ServiceProxyOptions"), verbs: PROXY_VERBS }], true),
        info::<core::Endpoints>(&["ep"], &[], false),
        info::<core::ConfigMap>(&["cm"], &[], false),
        info::<core::Secret>(&[], &[], false),
        info::<core::Event>(&["ev"], &[], false),
        info::<core::ComponentStatus>(&["cs"], &[], false),
        info::<core::ServiceAccount>(&["sa"], &[Subresource { name: "token", response: ("authentication.k8s.io", "v1", "TokenRequest"), verbs: &["create"] }], false),
        info::<core::PersistentVolume>(&["pv"], &[status_of!(core::PersistentVolume)], true),
        info::<core::PersistentVolumeClaim>(&["pvc"], &[status_of!(core::PersistentVolumeClaim)], true),
        info::<core::ResourceQuota>(&["quota"], &[status_of!(core::ResourceQuota)], true),
        info::<core::LimitRange>(&["limits"], &[], true),
        info::<core::ReplicationController>(&["rc"], &[status_of!(core::ReplicationController), SCALE], true),
        info::<core::PodTemplate>(&[], &[], false),
        info::<apps::Deployment>(&["deploy"], &[status_of!(apps::Deployment), SCALE], true),
        info::<apps::ReplicaSet>(&["rs"], &[status_of!(apps::ReplicaSet), SCALE], true),
        info::<apps::StatefulSet>(&["sts"], &[status_of!(apps::StatefulSet), SCALE], true),
        info::<apps::DaemonSet>(&["ds"], &[status_of!(apps::DaemonSet)], true),
        info::<apps::ControllerRevision>(&[], &[], false),
        info::<batch::Job>(&[], &[status_of!(batch::Job)], true),
        info::<batch::CronJob>(&["cj"], &[status_of!(batch::CronJob)], true),
        info::<coordination::Lease>(&[], &[], true),
        info::<certificates::CertificateSigningRequest>(
            &["csr"],
            &[
                status_of!(certificates::CertificateSigningRequest),
                Subresource { name: "approval", response: ("certificates.k8s.io", "v1", "CertificateSigningRequest"), verbs: GET_PATCH_UPDATE },
            ],
            true,
        ),
        info::<discovery::EndpointSlice>(&[], &[], false),
        info::<policy::PodDisruptionBudget>(&["pdb"], &[status_of!(policy::PodDisruptionBudget)], true),
        info::<autoscaling::HorizontalPodAutoscaler>(&["hpa"], &[status_of!(autoscaling::HorizontalPodAutoscaler)], true),
        // The same objects as autoscaling/v1 (`hpa_v1`: converted on the way in and out);
        // after v2, which stays the preferred version.
        info::<k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler>(&["hpa"], &[status_of!(k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler)], true),
        info::<scheduling::PriorityClass>(&["pc"], &[], false),
        info::<storage::StorageClass>(&["sc"], &[], false),
        info::<storage::CSIDriver>(&[], &[], true),
        info::<storage::CSINode>(&[], &[], true),
        info::<storage::CSIStorageCapacity>(&[], &[], false),
        info::<storage::VolumeAttachment>(&[], &[status_of!(storage::VolumeAttachment)], true),
        info::<node::RuntimeClass>(&[], &[], false),
        info::<networking::NetworkPolicy>(&["netpol"], &[], true),
        // Service cluster IPs as objects (`reserve.rs`, `system_services::repair_ip_addresses`).
        info::<networking::IPAddress>(&["ip"], &[], true),
        info::<networking::ServiceCIDR>(&[], &[status_of!(networking::ServiceCIDR)], true),
        info::<admissionregistration::MutatingWebhookConfiguration>(&[], &[], false),
        info::<admissionregistration::ValidatingWebhookConfiguration>(&[], &[], false),
        info::<admissionregistration::ValidatingAdmissionPolicy>(&[], &[status_of!(admissionregistration::ValidatingAdmissionPolicy)], true),
        info::<admissionregistration::ValidatingAdmissionPolicyBinding>(&[], &[], true),
        info::<k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService>(&[], &[status_of!(k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService)], true),
        info::<rbac::Role>(&[], &[], false),
        info::<rbac::RoleBinding>(&[], &[], false),
        info::<rbac::ClusterRole>(&[], &[], false),
        info::<rbac::ClusterRoleBinding>(&[], &[], false),
        info::<flowcontrol::FlowSchema>(&[], &[status_of!(flowcontrol::FlowSchema)], true),
        info::<flowcontrol::PriorityLevelConfiguration>(&[], &[status_of!(flowcontrol::PriorityLevelConfiguration)], true),
        info::<apiextensions::CustomResourceDefinition>(&["crd", "crds"], &[status_of!(apiextensions::CustomResourceDefinition)], true),
    ]
}

/// Lookups over the served resources: the built-in ones, and the custom resources of the
/// stored CRDs (refreshed after every CRD write and at the first request).
pub struct Registry {
    pub resources: Vec<ResourceInfo>,
    custom: std::sync::RwLock<Vec<ResourceInfo>>,
    /// Bumped at every refresh of custom resources (OpenAPI document hashes follow it).
    pub custom_generation: std::sync::atomic::AtomicU64,
}

impl Registry {
    pub fn new() -> Registry {
        Registry { resources: builtin(), custom: Default::default(), custom_generation: Default::default() }
    }

    /// Replaces the custom resources with those the given CRD objects define.
    pub fn set_custom(&self, crds: &[serde_json::Value]) {
        let mut all: Vec<ResourceInfo> = crds.iter().flat_map(from_crd).collect();
        all.retain(|c| !self.resources.iter().any(|b| b.group == c.group && b.resource == c.resource));
        *self.custom.write().unwrap() = all;
        self.custom_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_custom_group(&self, group: &str) -> bool {
        self.custom.read().unwrap().iter().any(|r| r.group == group)
    }

    pub fn all(&self) -> Vec<ResourceInfo> {
        let mut v = self.resources.clone();
        v.extend(self.custom.read().unwrap().iter().cloned());
        v
    }

    pub fn find(&self, group: &str, version: &str, resource: &str) -> Option<ResourceInfo> {
        let hit = |r: &&ResourceInfo| r.group == group && r.version == version && r.resource == resource;
        if let Some(r) = self.resources.iter().find(hit) {
            return Some(r.clone());
        }
        self.custom.read().unwrap().iter().find(hit).cloned()
    }

    /// Groups in the order discovery lists them (core first), each with its versions.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for r in self.all() {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) => {
                    if !vs.contains(&r.version) {
                        vs.push(r.version)
                    }
                }
                None => out.push((r.group, vec![r.version])),
            }
        }
        out
    }

    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<ResourceInfo> {
        self.all().into_iter().filter(|r| r.group == group && r.version == version).collect()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_facts_come_from_the_types() {
        let r = Registry::new();
        let pods = r.find("", "v1", "pods").unwrap();
        assert_eq!((pods.kind, pods.list_kind, pods.namespaced), ("Pod", "PodList", true));
        let nodes = r.find("", "v1", "nodes").unwrap();
        assert!(!nodes.namespaced);
        let d = r.find("apps", "v1", "deployments").unwrap();
        assert_eq!(d.api_version(), "apps/v1");
        assert_eq!(d.key(Some("default"), "web"), "/registry/apps/deployments/default/web");
        assert_eq!(nodes.key(Some("ignored"), "n1"), "/registry/core/nodes/n1");
        assert_eq!(r.groups()[0], ("", vec!["v1"]));
    }
}
