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
            ("", "pods" | "services")
            | ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets")
            | ("batch", "jobs" | "cronjobs")
            | ("autoscaling", "horizontalpodautoscalers") => &["all"],
            _ => &[],
        }
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
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
    }
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
        apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch, coordination::v1 as coordination,
        core::v1 as core, discovery::v1 as discovery, policy::v1 as policy, rbac::v1 as rbac,
        scheduling::v1 as scheduling,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    const SCALE: Subresource = Subresource {
        name: "scale",
        response: ("autoscaling", "v1", "Scale"),
        verbs: GET_PATCH_UPDATE,
    };
    const POD_SUBS: &[Subresource] = &[
        status_of!(core::Pod),
        Subresource { name: "binding", response: ("", "v1", "Binding"), verbs: &["create"] },
        Subresource { name: "eviction", response: ("policy", "v1", "Eviction"), verbs: &["create"] },
        Subresource { name: "log", response: ("", "v1", "Pod"), verbs: &["get"] },
    ];
    vec![
        info::<core::Namespace>(&["ns"], &[status_of!(core::Namespace)], true),
        info::<core::Pod>(&["po"], POD_SUBS, true),
        info::<core::Node>(&["no"], &[status_of!(core::Node)], true),
        info::<core::Service>(&["svc"], &[status_of!(core::Service)], true),
        info::<core::Endpoints>(&["ep"], &[], false),
        info::<core::ConfigMap>(&["cm"], &[], false),
        info::<core::Secret>(&[], &[], false),
        info::<core::Event>(&["ev"], &[], false),
        info::<core::ServiceAccount>(&["sa"], &[], false),
        info::<core::PersistentVolume>(&["pv"], &[status_of!(core::PersistentVolume)], true),
        info::<core::PersistentVolumeClaim>(&["pvc"], &[status_of!(core::PersistentVolumeClaim)], true),
        info::<core::ResourceQuota>(&["quota"], &[status_of!(core::ResourceQuota)], true),
        info::<core::LimitRange>(&["limits"], &[], true),
        info::<apps::Deployment>(&["deploy"], &[status_of!(apps::Deployment), SCALE], true),
        info::<apps::ReplicaSet>(&["rs"], &[status_of!(apps::ReplicaSet), SCALE], true),
        info::<apps::StatefulSet>(&["sts"], &[status_of!(apps::StatefulSet), SCALE], true),
        info::<apps::DaemonSet>(&["ds"], &[status_of!(apps::DaemonSet)], true),
        info::<apps::ControllerRevision>(&[], &[], false),
        info::<batch::Job>(&[], &[status_of!(batch::Job)], true),
        info::<batch::CronJob>(&["cj"], &[status_of!(batch::CronJob)], true),
        info::<coordination::Lease>(&[], &[], true),
        info::<discovery::EndpointSlice>(&[], &[], false),
        info::<policy::PodDisruptionBudget>(&["pdb"], &[status_of!(policy::PodDisruptionBudget)], true),
        info::<autoscaling::HorizontalPodAutoscaler>(&["hpa"], &[status_of!(autoscaling::HorizontalPodAutoscaler)], true),
        info::<scheduling::PriorityClass>(&["pc"], &[], false),
        info::<rbac::Role>(&[], &[], false),
        info::<rbac::RoleBinding>(&[], &[], false),
        info::<rbac::ClusterRole>(&[], &[], false),
        info::<rbac::ClusterRoleBinding>(&[], &[], false),
        info::<apiextensions::CustomResourceDefinition>(&["crd", "crds"], &[status_of!(apiextensions::CustomResourceDefinition)], true),
    ]
}

/// Lookups over the served resources.
pub struct Registry {
    pub resources: Vec<ResourceInfo>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry { resources: builtin() }
    }

    pub fn find(&self, group: &str, version: &str, resource: &str) -> Option<&ResourceInfo> {
        self.resources.iter().find(|r| r.group == group && r.version == version && r.resource == resource)
    }

    /// Groups in the order discovery lists them (core first), each with its versions.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for r in &self.resources {
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

    pub fn in_group_version<'a>(&'a self, group: &'a str, version: &'a str) -> impl Iterator<Item = &'a ResourceInfo> + 'a {
        self.resources.iter().filter(move |r| r.group == group && r.version == version)
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
