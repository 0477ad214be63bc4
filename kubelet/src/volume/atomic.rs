//! Writes a volume's files so that a reader never sees half an update, as the kubelet's
//! AtomicWriter does: the files live in a timestamped directory `..<time>`, the symlink
//! `..data` names the current one, and each top-level name the user sees is a symlink
//! through `..data`. An update writes a new directory, points `..data_tmp` at it and renames
//! that over `..data` (one atomic step), then fixes the user-visible links and removes the
//! old directory.
//!
//! A process holding a file open keeps the old contents; a process opening a path again sees
//! the new ones. A volume mounted with `subPath` is bound to one resolved file and does not
//! follow updates (as in Kubernetes).

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use super::files::File;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Makes `dir` hold exactly `files`. Returns whether anything changed (an equal set of files
/// writes nothing).
pub fn write(dir: &Path, files: &[File]) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let old = std::fs::read_link(dir.join(DATA)).ok();
    if let Some(old) = &old
        && same(&dir.join(old), files)
    {
        return Ok(false);
    }
    let now = jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f").to_string();
    let mut name = format!("..{now}");
    let mut n = 0;
    while dir.join(&name).exists() {
        n += 1;
        name = format!("..{now}{n}");
    }
    let new = dir.join(&name);
    std::fs::create_dir(&new)?;
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755))?;
    for f in files {
        let p = new.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, &f.data)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))?;
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    symlink(&name, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // The names the user sees: one link per top-level element, through ..data.
    let wanted: BTreeSet<&str> = files.iter().map(|f| f.path.split('/').next().unwrap_or(&f.path)).collect();
    for top in &wanted {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(top), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("..") || wanted.contains(n.as_ref()) {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_symlink()) {
            std::fs::remove_file(e.path())?;
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(true)
}

/// Whether `dir` holds exactly `files` (paths, bytes and modes).
fn same(dir: &Path, files: &[File]) -> bool {
    let mut count = 0;
    if count_files(dir, &mut count).is_err() || count != files.len() {
        return false;
    }
    files.iter().all(|f| {
        let p = dir.join(&f.path);
        std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == f.mode) && std::fs::read(&p).is_ok_and(|d| d == f.data)
    })
}

fn count_files(dir: &Path, count: &mut usize) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            count_files(&e.path(), count)?;
        } else {
            *count += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, data: &str) -> File {
        File { path: path.into(), data: data.as_bytes().to_vec(), mode: 0o644 }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn writes_updates_and_removes_through_one_rename() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("vol");
        assert!(write(&d, &[f("a", "1"), f("sub/b", "2")]).unwrap());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(d.join("sub/b")).unwrap(), "2");
        assert!(std::fs::symlink_metadata(d.join("a")).unwrap().file_type().is_symlink());
        // The same files again: nothing written.
        let before = std::fs::read_link(d.join(DATA)).unwrap();
        assert!(!write(&d, &[f("a", "1"), f("sub/b", "2")]).unwrap());
        assert_eq!(std::fs::read_link(d.join(DATA)).unwrap(), before);
        // A reader holding the old file keeps its contents; a new open sees the update.
        let held = std::fs::File::open(d.join("a")).unwrap();
        assert!(write(&d, &[f("a", "changed"), f("c", "3")]).unwrap());
        assert_eq!(std::io::read_to_string(held).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "changed");
        assert_eq!(std::fs::read_to_string(d.join("c")).unwrap(), "3");
        // The key that went away is gone, and so is the old directory.
        assert!(!d.join("sub").exists());
        let names = listing(&d);
        assert_eq!(names.iter().filter(|n| n.starts_with("..") && *n != DATA).count(), 1, "{names:?}");
        assert_eq!(names.iter().filter(|n| !n.starts_with("..")).collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn a_mode_change_alone_is_an_update() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("vol");
        write(&d, &[f("a", "1")]).unwrap();
        let mut g = f("a", "1");
        g.mode = 0o400;
        assert!(write(&d, &[g]).unwrap());
        assert_eq!(std::fs::metadata(d.join("a")).unwrap().permissions().mode() & 0o777, 0o400);
    }
}
