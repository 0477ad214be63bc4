//! The node's side of the local-path provisioner (`controllers/src/run/volumes.rs`): where
//! this node's volumes live (advertised in its `capstan.io/local-path-dir` annotation: the
//! provisioner makes each volume a `hostPath` there), and the removal of the directories of
//! volumes that were deleted (`reclaimPolicy: Delete`). The directory itself is made by the
//! first mount (`DirectoryOrCreate`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::{Client, ClientError};

pub const DIR_ANNOTATION: &str = "capstan.io/local-path-dir";
/// How often deleted volumes' directories are looked for.
pub const COLLECT_EVERY: Duration = Duration::from_secs(10);

/// Where the node with data directory `data_dir` keeps local-path volumes (absolute: the
/// provisioner writes it into volumes).
pub fn dir(data_dir: &Path) -> PathBuf {
    std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()).join("volumes")
}

/// The volume a directory holds: `pvc-<uid>_<namespace>_<claim>` is volume `pvc-<uid>`.
pub fn volume_of(entry: &str) -> Option<&str> {
    let (pv, _) = entry.split_once('_')?;
    (pv.starts_with("pvc-") && pv.len() > 4 && pv.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then_some(pv)
}

/// Removes the directories under `dir` whose volume no longer exists. Returns how many.
pub async fn collect(client: &Client, dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pv) = volume_of(&name) else { continue };
        match client.get(&format!("/api/v1/persistentvolumes/{pv}")).await {
            Err(ClientError::Status { code: 404, .. }) => {
                crate::volume::unmount_under(&e.path());
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => {
                        tracing::info!(volume = pv, path = %e.path().display(), "local-path volume deleted: its directory is removed");
                        removed += 1;
                    }
                    Err(err) => tracing::warn!(volume = pv, path = %e.path().display(), error = %err, "removing a deleted volume's directory failed"),
                }
            }
            _ => {}
        }
    }
    removed
}

/// `collect` every [`COLLECT_EVERY`], forever.
pub async fn collect_loop(client: Client, dir: PathBuf) {
    loop {
        collect(&client, &dir).await;
        tokio::time::sleep(COLLECT_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_name_their_volumes() {
        assert_eq!(volume_of("pvc-0b1c-22_ns_data"), Some("pvc-0b1c-22"));
        assert_eq!(volume_of("pvc-_ns_data"), None);
        assert_eq!(volume_of("other_ns_data"), None);
        assert_eq!(volume_of("pvc-x"), None);
        assert_eq!(volume_of("pvc-../x_ns_d"), None);
        assert!(dir(Path::new("rel")).is_absolute());
    }
}
