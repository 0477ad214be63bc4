//! The real `capstan` binary's store commands, end to end.

use std::process::Command;

fn capstan(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("kv")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run capstan");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn kv_commands_write_read_and_persist_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, out, err) = capstan(d, &["put", "/registry/a", "hello"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "OK revision 1");
    assert!(capstan(d, &["put", "/registry/b", "world"]).0);
    assert!(capstan(d, &["put", "/registry/a", "again"]).0);
    let (ok, out, _) = capstan(d, &["get", "/registry/a"]);
    assert!(ok);
    assert!(out.starts_with("/registry/a\tagain\t(create_revision 1, mod_revision 3, version 2)"), "{out}");
    let (_, out, _) = capstan(d, &["get", "/registry/a", "--revision", "1"]);
    assert!(out.contains("\thello\t"), "{out}");
    let (_, out, _) = capstan(d, &["range", "/registry/"]);
    assert_eq!(out, "/registry/a\tagain\n/registry/b\tworld\n");
    let (ok, _, err) = capstan(d, &["get", "/missing"]);
    assert!(!ok);
    assert!(err.contains("/missing not found"), "{err}");
    assert!(capstan(d, &["snapshot"]).0);
    let (_, out, _) = capstan(d, &["stats"]);
    assert!(out.contains("live keys             2"), "{out}");
    let (_, out, _) = capstan(d, &["del", "--prefix", "/registry/"]);
    assert_eq!(out.trim(), "deleted 2 at revision 4");
}
