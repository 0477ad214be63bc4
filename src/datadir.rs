//! The data directory's format version: `D/VERSION` says which layout a directory has and
//! what kind of cluster member wrote it. A binary upgrades the formats it knows and refuses,
//! naming both versions, a format it does not know.
//!
//! Formats:
//! - 1: before replication (no `VERSION` file): `D/store/` (the store's log and snapshots),
//!   `D/kubeconfig`, `D/pods/`. Only `capstan up` and `capstan apiserver` wrote it.
//! - 2: `VERSION` added. A single store (`up`, `apiserver`) keeps format 1's layout; a replica
//!   (`server`) has `D/CLUSTER` (which member of which cluster), `D/raft/` (its raft log) and
//!   `D/store/` (snapshots only). Upgrading 1 to 2 writes `VERSION`: nothing moves.

use std::path::Path;

use anyhow::{Result, bail};

pub const FORMAT: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One store: `capstan up`, `capstan apiserver`.
    Single,
    /// One member of a replicated cluster: `capstan server`.
    Replica,
    /// `capstan up --replicas N`: the replicas' directories (`replica-I/`), their ports
    /// (`cluster.json`), the kubeconfig and the local node's pods.
    Cluster,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Single => "single",
            Kind::Replica => "replica",
            Kind::Cluster => "cluster",
        }
    }
}

fn render(kind: Kind) -> String {
    format!("capstan data directory\nformat {FORMAT}\nkind {}\n", kind.name())
}

/// What `VERSION` says: (format, kind).
fn parse(text: &str) -> Result<(u32, Option<String>), String> {
    let mut format = None;
    let mut kind = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("format", v)) => format = Some(v.trim().parse::<u32>().map_err(|_| format!("format {v:?} is not a number"))?),
            Some(("kind", v)) => kind = Some(v.trim().to_string()),
            _ if line == "capstan data directory" => {}
            _ => {}
        }
    }
    Ok((format.ok_or("no format line")?, kind))
}

fn write(dir: &Path, kind: Kind) -> Result<()> {
    let tmp = dir.join("VERSION.tmp");
    std::fs::write(&tmp, render(kind))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("VERSION"))?;
    storage::wal::fsync_dir(dir)?;
    Ok(())
}

/// Checks `dir` (creating it) for a member of `kind`: stamps a new directory, upgrades a known
/// older format, refuses an unknown format or another kind's directory.
pub fn prepare(dir: &Path, kind: Kind) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("VERSION");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (format, found) = parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if format > FORMAT || format == 0 {
                bail!(
                    "{} is data directory format {format}, written by another capstan; this binary knows formats 1 to {FORMAT} and will not touch it",
                    dir.display()
                );
            }
            if let Some(found) = found
                && found != kind.name()
            {
                bail!(
                    "{} belongs to a {found} member (data directory format {format}); this command runs a {} member",
                    dir.display(),
                    kind.name()
                );
            }
            if format < FORMAT {
                write(dir, kind)?;
                tracing::info!(dir = %dir.display(), from = format, to = FORMAT, "upgraded the data directory format");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let format1 = dir.join("store").exists();
            match (format1, kind) {
                (true, Kind::Single) => {
                    write(dir, kind)?;
                    eprintln!("capstan: upgraded {} from data directory format 1 to {FORMAT}", dir.display());
                    Ok(())
                }
                (true, Kind::Replica | Kind::Cluster) if !dir.join("CLUSTER").exists() => bail!(
                    "{} holds a single-store cluster (data directory format 1): a replicated one starts from an empty directory (or its own)",
                    dir.display()
                ),
                _ => write(dir, kind),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_stamped_and_accepted_again() {
        let d = tempfile::tempdir().unwrap();
        prepare(d.path(), Kind::Replica).unwrap();
        assert!(std::fs::read_to_string(d.path().join("VERSION")).unwrap().contains("format 2"));
        prepare(d.path(), Kind::Replica).unwrap();
        let e = prepare(d.path(), Kind::Single).unwrap_err().to_string();
        assert!(e.contains("belongs to a replica member"), "{e}");
    }

    #[test]
    fn format_1_is_upgraded_for_a_single_store_and_refused_for_a_replica() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("store/wal/shard-0")).unwrap();
        let e = prepare(d.path(), Kind::Replica).unwrap_err().to_string();
        assert!(e.contains("format 1"), "{e}");
        prepare(d.path(), Kind::Single).unwrap();
        assert!(std::fs::read_to_string(d.path().join("VERSION")).unwrap().contains("kind single"));
    }

    #[test]
    fn an_unknown_format_is_refused_naming_both_versions() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("VERSION"), "capstan data directory\nformat 7\nkind single\n").unwrap();
        let e = prepare(d.path(), Kind::Single).unwrap_err().to_string();
        assert!(e.contains("format 7") && e.contains("formats 1 to 2"), "{e}");
        std::fs::write(d.path().join("VERSION"), "garbage").unwrap();
        assert!(prepare(d.path(), Kind::Single).is_err());
    }
}
