//! PersistentVolumes and their claims: the binder (kube-controller-manager's
//! `persistent-volume-binder`) and the local-path provisioner of the default StorageClass
//! (`capstan.io/local-path`, as kind runs rancher's).
//!
//! A claim is bound to the smallest Available volume of its class that has its access modes
//! and at least its size (and matches its `selector`); failing that, a claim of a class whose
//! provisioner is `capstan.io/local-path` gets a volume made for it: a directory under the
//! node's `capstan.io/local-path-dir` annotation (the kubelet's `D/volumes`), as a
//! `hostPath` volume (`DirectoryOrCreate`: the node makes it at the first mount) with node
//! affinity to that node. Under `WaitForFirstConsumer` the node is the one the claim's first
//! pod was scheduled to (or the claim's `volume.kubernetes.io/selected-node`); the scheduler
//! then keeps the claim's later pods on that node (its VolumeBinding filter). A volume whose
//! claim is gone is Released; with `reclaimPolicy: Delete` it is deleted, and its node
//! removes the directory (the kubelet, `volume/local_path.rs`).
//!
//! Differences from Kubernetes: binding is by the controller only (the scheduler does not
//! pre-bind), claims of a class with another provisioner wait with `ExternalProvisioning`
//! forever, and there is no volume expansion, recycling or `dataSource`.

use client::obj::Obj;
use serde_json::{Value, json};

use super::{Ctx, Res, err, split};
use crate::identity::Ctl;

/// The provisioner of the default class (`apiserver::default_storage::PROVISIONER`).
pub const LOCAL_PATH: &str = "capstan.io/local-path";
/// Where a node keeps local-path volumes (set by its kubelet).
pub const DIR_ANNOTATION: &str = "capstan.io/local-path-dir";
const CLAIM: (&str, &str) = ("v1", "PersistentVolumeClaim");
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// Bytes of a quantity (`1Gi`), 0 when absent or invalid.
fn bytes(q: &Obj) -> i128 {
    q.as_str().and_then(|s| api::Quantity::parse(s).ok()).map_or(0, |q| q.units_ceil() as i128)
}

fn modes(v: &Obj) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect()
}

/// The class a claim asks for (`""`: none).
fn class_of(pvc: &Obj) -> &str {
    pvc["spec"]["storageClassName"].as_str().unwrap_or("")
}

/// Whether volume `pv` can hold claim `pvc` (not looking at whom it is bound to).
pub fn fits(pv: &Obj, pvc: &Obj) -> bool {
    let want = bytes(&pvc["spec"]["resources"]["requests"]["storage"]);
    let have = bytes(&pv["spec"]["capacity"]["storage"]);
    let pv_modes = modes(&pv["spec"]["accessModes"]);
    pv["spec"]["storageClassName"].as_str().unwrap_or("") == class_of(pvc)
        && have >= want
        && modes(&pvc["spec"]["accessModes"]).iter().all(|m| pv_modes.contains(m))
        && pv["spec"]["volumeMode"].as_str().unwrap_or("Filesystem") == pvc["spec"]["volumeMode"].as_str().unwrap_or("Filesystem")
        && (pvc["spec"]["selector"].is_null() || crate::podutil::selector_matches(&pvc["spec"]["selector"], &pv["metadata"]["labels"]))
}

/// The smallest Available volume that fits `pvc` (or one already claiming it by name).
pub fn best<'a>(pvs: &'a [std::sync::Arc<Obj>], pvc: &Obj) -> Option<&'a Obj> {
    let (ns, name, uid) = (&pvc["metadata"]["namespace"], &pvc["metadata"]["name"], &pvc["metadata"]["uid"]);
    let claims_it = |pv: &Obj| {
        let r = &pv["spec"]["claimRef"];
        r["namespace"] == *ns && r["name"] == *name && (r["uid"].is_null() || r["uid"] == *uid)
    };
    // A volume pre-bound to this claim wins.
    if let Some(pv) = pvs.iter().find(|pv| claims_it(pv) && pv["metadata"]["deletionTimestamp"].is_null()) {
        return Some(pv);
    }
    pvs.iter()
        .map(|pv| pv.as_ref())
        .filter(|pv| pv["spec"]["claimRef"].is_null() && pv["metadata"]["deletionTimestamp"].is_null() && pv["status"]["phase"] != "Released" && fits(pv, pvc))
        .min_by_key(|pv| bytes(&pv["spec"]["capacity"]["storage"]))
}

fn claim_ref(pvc: &Obj) -> Value {
    json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": pvc["metadata"]["namespace"], "name": pvc["metadata"]["name"], "uid": pvc["metadata"]["uid"]})
}

/// The node the claim's volume is to be made on: the annotated one, else the node of a pod
/// using it that was scheduled.
fn consumer_node(ctx: &Ctx, pvc: &Obj) -> Option<String> {
    if let Some(n) = pvc["metadata"]["annotations"][SELECTED_NODE].as_str() {
        return Some(n.to_string());
    }
    let (ns, name) = (pvc["metadata"]["namespace"].as_str()?, pvc["metadata"]["name"].as_str()?);
    ctx.pods.list().into_iter().filter(|p| p["metadata"]["namespace"] == ns).find_map(|p| {
        let uses = p["spec"]["volumes"].as_array().into_iter().flatten().any(|v| v["persistentVolumeClaim"]["claimName"] == name);
        let node = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())?;
        uses.then(|| node.to_string())
    })
}

/// Reconciles claim `key` (namespace/name).
pub(super) async fn sync_claim(ctx: &Ctx, key: &str) -> Res {
    let Some(pvc) = ctx.pvcs.get(key) else { return Ok(None) };
    if !pvc["metadata"]["deletionTimestamp"].is_null() {
        return Ok(None);
    }
    let (ns, name) = split(key);
    let c = ctx.c(Ctl::PersistentVolumeBinder);
    if let Some(vol) = pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
        let Some(pv) = ctx.pvs.get(vol) else {
            if pvc["status"]["phase"] != "Lost" {
                ctx.events.object(CLAIM, &pvc, true, "ClaimLost", "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!".into());
                c.merge_patch_quiet(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}/status"), &json!({"status": {"phase": "Lost"}})).await.map_err(err)?;
            }
            return Ok(None);
        };
        return bind(ctx, &pvc, &pv).await;
    }
    let pvs = ctx.pvs.list();
    if let Some(pv) = best(&pvs, &pvc) {
        return bind(ctx, &pvc, pv).await;
    }
    let class_name = class_of(&pvc);
    if class_name.is_empty() {
        ctx.events.object(CLAIM, &pvc, false, "FailedBinding", "no persistent volumes available for this claim and no storage class is set".into());
        return pending(ctx, &pvc).await;
    }
    let Some(class) = ctx.classes.get(class_name) else {
        ctx.events.object(CLAIM, &pvc, true, "ProvisioningFailed", format!("storageclass.storage.k8s.io \"{class_name}\" not found"));
        return pending(ctx, &pvc).await;
    };
    if class["provisioner"] != LOCAL_PATH {
        ctx.events.object(CLAIM, &pvc, false, "ExternalProvisioning", format!("Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator.", class["provisioner"].as_str().unwrap_or("")));
        return pending(ctx, &pvc).await;
    }
    let wait = class["volumeBindingMode"] == "WaitForFirstConsumer";
    let node = match consumer_node(ctx, &pvc) {
        Some(n) => n,
        None if wait => {
            ctx.events.object(CLAIM, &pvc, false, "WaitForFirstConsumer", "waiting for first consumer to be created before binding".into());
            return pending(ctx, &pvc).await;
        }
        // Immediate: the first node that keeps local-path volumes.
        None => match ctx.nodes.list().into_iter().find(|n| n["metadata"]["annotations"][DIR_ANNOTATION].is_string()) {
            Some(n) => n["metadata"]["name"].as_str().unwrap_or("").to_string(),
            None => {
                ctx.events.object(CLAIM, &pvc, true, "ProvisioningFailed", "no node keeps local-path volumes".into());
                return pending(ctx, &pvc).await;
            }
        },
    };
    let Some(dir) = ctx.nodes.get(&node).and_then(|n| n["metadata"]["annotations"][DIR_ANNOTATION].as_str().map(String::from)) else {
        ctx.events.object(CLAIM, &pvc, true, "ProvisioningFailed", format!("node {node:?} keeps no local-path volumes (no {DIR_ANNOTATION} annotation: a hollow node?)"));
        return pending(ctx, &pvc).await;
    };
    let pv = provisioned(&pvc, &class, &node, &dir);
    let pv_name = pv["metadata"]["name"].as_str().unwrap_or("").to_string();
    match c.post("/api/v1/persistentvolumes", &pv).await {
        Ok(_) | Err(client::ClientError::Status { code: 409, .. }) => {}
        Err(e) => return Err(err(e)),
    }
    ctx.events.object(CLAIM, &pvc, false, "ProvisioningSucceeded", format!("Successfully provisioned volume {pv_name}"));
    // Bound when the volume shows up in the informer (its add wakes this claim).
    Ok(None)
}

/// The volume made for `pvc` on `node`, under the node's local-path directory.
pub fn provisioned(pvc: &Obj, class: &Obj, node: &str, dir: &str) -> Value {
    let m = &pvc["metadata"];
    let name = format!("pvc-{}", m["uid"].as_str().unwrap_or(""));
    let path = format!("{}/{name}_{}_{}", dir.trim_end_matches('/'), m["namespace"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or(""));
    let size = pvc["spec"]["resources"]["requests"]["storage"].as_str().unwrap_or("1Gi");
    let access = if pvc["spec"]["accessModes"].is_array() { pvc["spec"]["accessModes"].to_value() } else { json!(["ReadWriteOnce"]) };
    json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": LOCAL_PATH}},
        "spec": {"capacity": {"storage": size}, "accessModes": access, "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": class["metadata"]["name"], "claimRef": claim_ref(pvc),
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
}

async fn pending(ctx: &Ctx, pvc: &Obj) -> Res {
    if pvc["status"]["phase"] != "Pending" {
        let (ns, name) = (pvc["metadata"]["namespace"].as_str().unwrap_or(""), pvc["metadata"]["name"].as_str().unwrap_or(""));
        ctx.c(Ctl::PersistentVolumeBinder).merge_patch_quiet(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}/status"), &json!({"status": {"phase": "Pending"}})).await.map_err(err)?;
    }
    Ok(None)
}

/// Binds `pvc` and `pv` both ways (each write only when missing), then both statuses.
async fn bind(ctx: &Ctx, pvc: &Obj, pv: &Obj) -> Res {
    let c = ctx.c(Ctl::PersistentVolumeBinder);
    let (ns, name) = (pvc["metadata"]["namespace"].as_str().unwrap_or(""), pvc["metadata"]["name"].as_str().unwrap_or(""));
    let pv_name = pv["metadata"]["name"].as_str().unwrap_or("");
    let r = &pv["spec"]["claimRef"];
    if !r.is_null() && (r["namespace"] != pvc["metadata"]["namespace"] || r["name"] != pvc["metadata"]["name"] || (!r["uid"].is_null() && r["uid"] != pvc["metadata"]["uid"])) {
        // The claim names a volume bound to another claim.
        ctx.events.object(CLAIM, pvc, true, "FailedBinding", format!("volume {pv_name:?} already bound to a different claim."));
        return pending(ctx, pvc).await;
    }
    if r.is_null() || r["uid"].is_null() {
        c.merge_patch_quiet(&format!("/api/v1/persistentvolumes/{pv_name}"), &json!({"spec": {"claimRef": claim_ref(pvc)}})).await.map_err(err)?;
    }
    if pv["status"]["phase"] != "Bound" {
        c.merge_patch_quiet(&format!("/api/v1/persistentvolumes/{pv_name}/status"), &json!({"status": {"phase": "Bound"}})).await.map_err(err)?;
    }
    if pvc["spec"]["volumeName"].as_str() != Some(pv_name) {
        let annotations = json!({"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"});
        c.merge_patch_quiet(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}"), &json!({"metadata": {"annotations": annotations}, "spec": {"volumeName": pv_name}})).await.map_err(err)?;
    }
    let status = json!({"phase": "Bound", "accessModes": pv["spec"]["accessModes"], "capacity": pv["spec"]["capacity"]});
    if pvc["status"] != status {
        c.merge_patch_quiet(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}/status"), &json!({"status": status})).await.map_err(err)?;
    }
    Ok(None)
}

/// Reconciles volume `name`: Available when unclaimed; Released (and deleted, under
/// `Delete`) once its claim is gone.
pub(super) async fn sync_volume(ctx: &Ctx, name: &str) -> Res {
    let Some(pv) = ctx.pvs.get(name) else { return Ok(None) };
    if !pv["metadata"]["deletionTimestamp"].is_null() {
        return Ok(None);
    }
    let c = ctx.c(Ctl::PersistentVolumeBinder);
    let status = |phase: &str| json!({"status": {"phase": phase}});
    let r = &pv["spec"]["claimRef"];
    if r.is_null() {
        if pv["status"]["phase"] != "Available" {
            c.merge_patch_quiet(&format!("/api/v1/persistentvolumes/{name}/status"), &status("Available")).await.map_err(err)?;
        }
        return Ok(None);
    }
    let key = format!("{}/{}", r["namespace"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""));
    let claim = ctx.pvcs.get(&key);
    let claim_gone = match &claim {
        None => !r["uid"].is_null(),
        Some(pvc) => !r["uid"].is_null() && pvc["metadata"]["uid"] != r["uid"],
    };
    if !claim_gone {
        // Pre-bound (or just made) for a claim: the claim's sync binds the rest.
        if claim.is_some() {
            return sync_claim(ctx, &key).await;
        }
        return Ok(None);
    }
    match pv["spec"]["persistentVolumeReclaimPolicy"].as_str().unwrap_or("Retain") {
        "Delete" => match c.delete(&format!("/api/v1/persistentvolumes/{name}"), &json!({})).await {
            Ok(_) | Err(client::ClientError::Status { code: 404, .. }) => Ok(None),
            Err(e) => Err(err(e)),
        },
        _ => {
            if pv["status"]["phase"] != "Released" {
                c.merge_patch_quiet(&format!("/api/v1/persistentvolumes/{name}/status"), &status("Released")).await.map_err(err)?;
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pv(name: &str, size: &str, class: &str, modes: &[&str]) -> Arc<Obj> {
        Arc::new(Obj::from(json!({"metadata": {"name": name, "labels": {"tier": "fast"}}, "spec": {"capacity": {"storage": size}, "storageClassName": class, "accessModes": modes}})))
    }

    // The functions read informer `Obj`s; the tests build and edit `Value`s.
    fn best<'a>(pvs: &'a [Arc<Obj>], pvc: &Value) -> Option<&'a Obj> {
        super::best(pvs, &Obj::from(pvc))
    }
    fn provisioned(pvc: &Value, class: &Value, node: &str, dir: &str) -> Value {
        super::provisioned(&Obj::from(pvc), &Obj::from(class), node, dir)
    }
    fn fits(pv: &Value, pvc: &Value) -> bool {
        super::fits(&Obj::from(pv), &Obj::from(pvc))
    }

    fn pvc(size: &str, class: Option<&str>, modes: &[&str]) -> Value {
        let mut v = json!({"metadata": {"namespace": "ns", "name": "data", "uid": "u1"}, "spec": {"resources": {"requests": {"storage": size}}, "accessModes": modes}});
        if let Some(c) = class {
            v["spec"]["storageClassName"] = json!(c);
        }
        v
    }

    #[test]
    fn the_smallest_volume_that_fits_is_chosen() {
        let pvs = vec![pv("big", "10Gi", "", &["ReadWriteOnce"]), pv("small", "1Gi", "", &["ReadWriteOnce"]), pv("tiny", "100Mi", "", &["ReadWriteOnce"]), pv("other-class", "1Gi", "fast", &["ReadWriteOnce"]), pv("rox", "1Gi", "", &["ReadOnlyMany"])];
        let name = |c: &Value| best(&pvs, c).map(|p| p["metadata"]["name"].as_str().unwrap().to_string());
        assert_eq!(name(&pvc("500Mi", None, &["ReadWriteOnce"])).as_deref(), Some("small"));
        assert_eq!(name(&pvc("2Gi", None, &["ReadWriteOnce"])).as_deref(), Some("big"));
        assert_eq!(name(&pvc("20Gi", None, &["ReadWriteOnce"])), None, "too big for all");
        assert_eq!(name(&pvc("1Gi", Some("fast"), &["ReadWriteOnce"])).as_deref(), Some("other-class"));
        assert_eq!(name(&pvc("1Gi", None, &["ReadOnlyMany"])).as_deref(), Some("rox"), "access modes must be offered");
        let mut sel = pvc("1Gi", None, &["ReadWriteOnce"]);
        sel["spec"]["selector"] = json!({"matchLabels": {"tier": "slow"}});
        assert_eq!(name(&sel), None, "the selector must match the volume's labels");
    }

    #[test]
    fn a_volume_claimed_by_name_wins_and_a_taken_one_is_skipped() {
        let mut taken = pv("taken", "1Gi", "", &["ReadWriteOnce"]).to_value();
        taken["spec"]["claimRef"] = json!({"namespace": "ns", "name": "someone-else"});
        let mut mine = pv("mine", "50Gi", "", &["ReadWriteOnce"]).to_value();
        mine["spec"]["claimRef"] = json!({"namespace": "ns", "name": "data"});
        let pvs = vec![Arc::new(Obj::from(taken)), pv("free", "1Gi", "", &["ReadWriteOnce"]), Arc::new(Obj::from(mine))];
        assert_eq!(best(&pvs, &pvc("1Gi", None, &["ReadWriteOnce"])).unwrap()["metadata"]["name"], "mine");
    }

    #[test]
    fn a_provisioned_volume_lives_on_the_node_under_its_directory() {
        let class = json!({"metadata": {"name": "standard"}, "reclaimPolicy": "Delete"});
        let v = provisioned(&pvc("1Gi", Some("standard"), &["ReadWriteOnce"]), &class, "n1", "/data/volumes/");
        assert_eq!(v["metadata"]["name"], "pvc-u1");
        assert_eq!(v["spec"]["hostPath"]["path"], "/data/volumes/pvc-u1_ns_data");
        assert_eq!(v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"], json!(["n1"]));
        assert_eq!((v["spec"]["persistentVolumeReclaimPolicy"].as_str(), v["spec"]["claimRef"]["uid"].as_str()), (Some("Delete"), Some("u1")));
        assert!(fits(&v, &pvc("1Gi", Some("standard"), &["ReadWriteOnce"])));
    }
}
