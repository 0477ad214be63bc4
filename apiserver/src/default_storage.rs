//! The default StorageClass every capstan cluster has, as kind has `standard`: claims that
//! name no class get it (DefaultStorageClass admission, `handlers/admit.rs`), and the
//! controllers' local-path provisioner (`controllers/src/run/volumes.rs`) makes a directory
//! on the node of the claim's first pod for each (`WaitForFirstConsumer`: the node is known
//! only then), deleted with the claim (`reclaimPolicy: Delete`).

use serde_json::json;
use storage::{Store, StoreError};

/// The provisioner name the local-path provisioner answers to.
pub const PROVISIONER: &str = "capstan.io/local-path";
pub const NAME: &str = "standard";

/// Creates the class when missing (deleting it, or taking its default annotation away, is
/// the operator's choice and stays).
pub async fn ensure(store: &Store) -> Result<(), StoreError> {
    let key = format!("/registry/storage.k8s.io/storageclasses/{NAME}");
    if store.get(key.clone()).await?.is_some() {
        return Ok(());
    }
    let obj = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": NAME, "uid": crate::object::new_uid(), "creationTimestamp": crate::object::now_rfc3339(),
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": false});
    crate::create_if_absent(store, key, &obj).await
}
