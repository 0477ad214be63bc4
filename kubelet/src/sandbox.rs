//! A container's own mount (and UTS) namespace on the process runtime: the filesystem a
//! container sees, built between fork and exec.
//!
//! There are no images: a container's root is a small tmpfs holding a bind of each of the
//! host's top-level entries (`/usr`, `/etc`, `/tmp`, ... and `/proc`, `/sys`, `/dev` with
//! what is mounted under them), so programs and files are the host's, as before. On top of
//! that come the pod's volumes at their `mountPath`s. A mount path the host lacks needs a
//! directory created for it; that is never done on the host: a new top-level directory is
//! made in the tmpfs, a new one inside a volume in that volume, and one under an existing host
//! directory (`/etc/config` for example) in an overlay of that directory whose writable layer
//! belongs to the container (files the host adds to an overlaid directory after the container
//! starts may not show inside it). Then `pivot_root` makes the tmpfs the namespace's root, so
//! `kubectl exec` (which joins the namespace) lands in the same view.
//!
//! Building is split in two: [`plan`] (ordinary code, before the fork: resolves paths,
//! decides overlays, prepares every string) and [`Plan::apply`] (in the child: only system
//! calls on memory prepared before, nothing allocates or locks).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// One of the host's top-level entries, rebuilt in every container root.
#[derive(Clone, Debug)]
pub enum Top {
    Dir(String),
    File(String),
    Symlink(String, PathBuf),
}

/// The host's top-level entries (read once when the runtime starts).
pub fn host_top() -> io::Result<Vec<Top>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/")? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let t = e.file_type()?;
        out.push(if t.is_symlink() {
            Top::Symlink(name, std::fs::read_link(e.path())?)
        } else if t.is_dir() {
            Top::Dir(name)
        } else {
            Top::File(name)
        });
    }
    out.sort_by(|a, b| top_name(a).cmp(top_name(b)));
    Ok(out)
}

fn top_name(t: &Top) -> &str {
    match t {
        Top::Dir(n) | Top::File(n) | Top::Symlink(n, _) => n,
    }
}

/// A volume (or file) mounted into the container.
#[derive(Clone, Debug)]
pub struct Mount {
    /// The path in the container (`mountPath`, absolute).
    pub dst: String,
    /// What is mounted, on the host.
    pub src: PathBuf,
    pub read_only: bool,
}

/// What a container's filesystem is made of.
pub struct Spec<'a> {
    /// An empty directory on the host: the mount point of the container's root tmpfs.
    pub root: PathBuf,
    /// A directory on the host for the writable layers of overlays (emptied by the caller).
    pub layers: PathBuf,
    pub top: &'a [Top],
    pub mounts: Vec<Mount>,
    /// Host directories the container writes at their own path even with a read-only root
    /// (the pod's scratch directory).
    pub keep: Vec<PathBuf>,
    /// Host directories the container must not see (every pod's directory: other pods'
    /// volumes and tokens): an empty tmpfs covers them; `keep` directories inside are bound
    /// back.
    pub hide: Vec<PathBuf>,
    /// The container's working directory (created if missing, as runtimes do).
    pub workdir: PathBuf,
    pub hostname: Option<String>,
    pub read_only_root: bool,
    /// The user, groups and capabilities it runs with (`securityContext`).
    pub privileges: crate::privileges::Privileges,
    /// The pod's network namespace (None: the node's network).
    pub netns: Option<PathBuf>,
}

/// Under /proc, what a container that is not privileged cannot write (runc's defaults).
const READ_ONLY_PROC: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];

enum Op {
    /// Joins the pod's network namespace (its file, opened before the fork).
    SetNetNs(OwnedFd),
    Unshare(libc::c_int),
    Private,
    Tmpfs(CString),
    Mkdir(CString),
    Touch(CString),
    Symlink(CString, CString),
    Bind { src: CString, dst: CString, read_only: bool },
    Overlay { dst: CString, data: CString },
    RemountReadOnly(CString),
    Hostname(CString),
    PivotRoot(CString),
    Privileges(crate::privileges::Privileges),
    Chdir(CString),
}

/// Everything the child does, prepared.
pub struct Plan {
    ops: Vec<(Op, String)>,
    /// Directories to create (with their parents) before the fork: overlay layers.
    pub layer_dirs: Vec<PathBuf>,
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("path {} contains a NUL byte", p.display()))
}

/// `p` made absolute and clean (no `.`, `..` or empty elements), refusing `..`.
fn clean(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(format!("mount path {p:?} must be absolute"));
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(format!("mount path {p:?} must not contain '..'")),
            Component::Prefix(_) => return Err(format!("mount path {p:?} is not a Unix path")),
        }
    }
    Ok(out)
}

/// Where `p` is on the host: the longest existing prefix, with its symlinks resolved (an
/// absolute link means the same in the container, whose root mirrors the host's), and the
/// elements after it that do not exist.
fn resolve(p: &Path) -> (PathBuf, Vec<std::ffi::OsString>) {
    let mut rest = Vec::new();
    let mut cur = p.to_path_buf();
    loop {
        if let Ok(real) = std::fs::canonicalize(&cur) {
            rest.reverse();
            return (real, rest);
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent().map(Path::to_path_buf)) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                cur = parent;
            }
            _ => return (PathBuf::from("/"), Vec::new()),
        }
    }
}

fn under(p: &Path, dir: &Path) -> bool {
    p.starts_with(dir)
}

fn in_root(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Prepares the container's filesystem (see the module's notes).
pub fn plan(s: &Spec) -> Result<Plan, String> {
    let mut ops: Vec<(Op, String)> = Vec::new();
    let root = &s.root;
    if let Some(ns) = &s.netns {
        let f = std::fs::File::open(ns).map_err(|e| format!("opening the pod's network namespace {}: {e}", ns.display()))?;
        ops.push((Op::SetNetNs(OwnedFd::from(f)), "joining the pod's network namespace".into()));
    }
    let flags = libc::CLONE_NEWNS | if s.hostname.is_some() { libc::CLONE_NEWUTS } else { 0 };
    ops.push((Op::Unshare(flags), "creating the container's mount namespace".into()));
    ops.push((Op::Private, "making mounts private".into()));
    ops.push((Op::Tmpfs(cstr(root)?), format!("mounting the container root at {}", root.display())));
    for t in s.top {
        let name = top_name(t);
        let host = Path::new("/").join(name);
        let dst = root.join(name);
        match t {
            Top::Dir(_) => {
                let ro = s.read_only_root && !matches!(name, "proc" | "sys" | "dev");
                ops.push((Op::Mkdir(cstr(&dst)?), format!("creating {}", dst.display())));
                ops.push((Op::Bind { src: cstr(&host)?, dst: cstr(&dst)?, read_only: ro }, format!("binding the host's {}", host.display())));
            }
            Top::File(_) => {
                ops.push((Op::Touch(cstr(&dst)?), format!("creating {}", dst.display())));
                ops.push((Op::Bind { src: cstr(&host)?, dst: cstr(&dst)?, read_only: s.read_only_root }, format!("binding the host's {}", host.display())));
            }
            Top::Symlink(_, target) => ops.push((Op::Symlink(cstr(target)?, cstr(&dst)?), format!("linking {}", dst.display()))),
        }
    }

    // The kernel's tunables in the host's /proc are read-only for a container that is not
    // privileged (runc's default `readonlyPaths`): a root process in it must not change the
    // node's sysctls.
    if !s.privileges.privileged && s.top.iter().any(|t| top_name(t) == "proc") {
        for p in READ_ONLY_PROC {
            let host = Path::new("/proc").join(p);
            if host.exists() {
                ops.push((Op::Bind { src: cstr(&host)?, dst: cstr(&root.join("proc").join(p))?, read_only: true }, format!("making {} read-only", host.display())));
            }
        }
    }

    // Where each mount lands (resolved on the host), and which host directories need an
    // overlay so that new mount points are not created on the host.
    struct Target {
        at: PathBuf,
        create: Vec<std::ffi::OsString>,
        src: PathBuf,
        file: bool,
        read_only: bool,
        dst: String,
    }
    let mut mounts = s.mounts.clone();
    let depth = |m: &Mount| clean(&m.dst).map(|p| p.components().count()).unwrap_or(0);
    mounts.sort_by_key(|m| (depth(m), m.dst.clone()));
    let mut owned: Vec<PathBuf> = s.keep.iter().filter_map(|k| std::fs::canonicalize(k).ok()).collect();
    let mut overlays: Vec<PathBuf> = Vec::new();
    let mut targets = Vec::new();
    let mut need_dir = |p: &Path, owned: &[PathBuf]| -> (PathBuf, Vec<std::ffi::OsString>) {
        let (at, create) = resolve(p);
        if !create.is_empty() && at != Path::new("/") && !owned.iter().any(|o| under(&at, o)) {
            overlays.push(at.clone());
        }
        (at, create)
    };
    for m in &mounts {
        let dst = clean(&m.dst)?;
        let file = std::fs::metadata(&m.src).map_err(|e| format!("volume source {}: {e}", m.src.display()))?.is_file();
        let (at, create) = need_dir(&dst, &owned);
        if create.is_empty() && std::fs::metadata(&at).is_ok_and(|md| md.is_dir()) == file {
            return Err(format!("cannot mount {} at {}: one is a file and the other a directory", m.src.display(), m.dst));
        }
        let full: PathBuf = create.iter().fold(at.clone(), |p, c| p.join(c));
        owned.push(full);
        targets.push(Target { at, create, src: m.src.clone(), file, read_only: m.read_only, dst: m.dst.clone() });
    }
    let work = clean(&s.workdir.to_string_lossy())?;
    let (work_at, work_create) = need_dir(&work, &owned);

    // The outermost overlays only: one over /etc covers /etc/ssl.
    overlays.sort();
    overlays.dedup();
    let outer: Vec<PathBuf> = overlays.iter().filter(|o| !overlays.iter().any(|p| p != *o && under(o, p))).cloned().collect();
    let mut layer_dirs = Vec::new();
    for (i, o) in outer.iter().enumerate() {
        let (up, wk) = (s.layers.join(format!("{i}/upper")), s.layers.join(format!("{i}/work")));
        for p in [o, &up, &wk] {
            let t = p.to_string_lossy();
            if t.contains([',', ':', '\\']) {
                return Err(format!("cannot overlay with the path {t:?}: ',', ':' and '\\' are not allowed in overlay paths"));
            }
        }
        let data = format!("lowerdir={},upperdir={},workdir={}", o.display(), up.display(), wk.display());
        let dst = in_root(root, o);
        ops.push((Op::Overlay { dst: cstr(&dst)?, data: CString::new(data).map_err(|_| "NUL in a path".to_string())? }, format!("overlaying {} to create mount points", o.display())));
        layer_dirs.push(up);
        layer_dirs.push(wk);
    }
    for h in &s.hide {
        ops.push((Op::Tmpfs(cstr(&in_root(root, h))?), format!("hiding {}", h.display())));
    }
    for k in &s.keep {
        let dst = in_root(root, k);
        if let Some(h) = s.hide.iter().find(|h| k.starts_with(h)) {
            // The mount point, made again in the tmpfs that hides its parent.
            let mut p = in_root(root, h);
            for c in k.strip_prefix(h).unwrap_or(k).components() {
                p.push(c);
                ops.push((Op::Mkdir(cstr(&p)?), format!("creating {}", p.display())));
            }
        }
        ops.push((Op::Bind { src: cstr(k)?, dst: cstr(&dst)?, read_only: false }, format!("binding {}", k.display())));
    }
    let mkdir_p = |ops: &mut Vec<(Op, String)>, at: &Path, create: &[std::ffi::OsString], last_is_file: bool| -> Result<PathBuf, String> {
        let mut p = in_root(root, at);
        for (i, c) in create.iter().enumerate() {
            p.push(c);
            let op = if last_is_file && i + 1 == create.len() { Op::Touch(cstr(&p)?) } else { Op::Mkdir(cstr(&p)?) };
            ops.push((op, format!("creating the mount point {}", p.display())));
        }
        Ok(p)
    };
    for t in &targets {
        let dst = mkdir_p(&mut ops, &t.at, &t.create, t.file)?;
        ops.push((Op::Bind { src: cstr(&t.src)?, dst: cstr(&dst)?, read_only: t.read_only }, format!("mounting {} at {}", t.src.display(), t.dst)));
    }
    mkdir_p(&mut ops, &work_at, &work_create, false)?;
    if s.read_only_root {
        for o in &outer {
            ops.push((Op::RemountReadOnly(cstr(&in_root(root, o))?), format!("making {} read-only", o.display())));
        }
    }
    if let Some(h) = &s.hostname {
        ops.push((Op::Hostname(CString::new(h.as_str()).map_err(|_| "NUL in the hostname".to_string())?), "setting the hostname".into()));
    }
    ops.push((Op::PivotRoot(cstr(root)?), "entering the container root".into()));
    if s.read_only_root {
        ops.push((Op::RemountReadOnly(c"/".into()), "making the root read-only".into()));
    }
    let work_in: PathBuf = work_create.iter().fold(work_at, |p, c| p.join(c));
    ops.push((Op::Privileges(s.privileges.clone()), "taking the container's user, groups and capabilities".into()));
    ops.push((Op::Chdir(cstr(&work_in)?), format!("changing to the working directory {}", work_in.display())));
    Ok(Plan { ops, layer_dirs })
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn null() -> *const libc::c_char {
    std::ptr::null()
}

impl Plan {
    /// Runs in the child between fork and exec. On failure, the index of the step that failed
    /// is written to `report` (see [`Plan::explain`]).
    ///
    /// # Safety
    /// Only in a forked child before exec: it changes the process's namespaces and root.
    pub unsafe fn apply(&self, report: libc::c_int) -> io::Result<()> {
        for (i, (op, _)) in self.ops.iter().enumerate() {
            // SAFETY: system calls on C strings prepared before the fork.
            let r = unsafe { self.one(op) };
            if let Err(e) = r {
                let idx = (i as u32).to_ne_bytes();
                // SAFETY: writing 4 bytes from the stack to a pipe the parent made.
                unsafe { libc::write(report, idx.as_ptr().cast(), 4) };
                return Err(e);
            }
        }
        Ok(())
    }

    unsafe fn one(&self, op: &Op) -> io::Result<()> {
        // SAFETY (for the block): every pointer is a NUL-terminated string owned by the plan.
        unsafe {
            match op {
                Op::SetNetNs(fd) => check(libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET)),
                Op::Unshare(f) => check(libc::unshare(*f)),
                Op::Private => check(libc::mount(null(), c"/".as_ptr(), null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())),
                Op::Tmpfs(t) => check(libc::mount(c"tmpfs".as_ptr(), t.as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, c"mode=755,size=16m".as_ptr().cast())),
                Op::Mkdir(p) => {
                    if libc::mkdir(p.as_ptr(), 0o755) < 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(e);
                        }
                    }
                    Ok(())
                }
                Op::Touch(p) => {
                    let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                    check(fd)?;
                    libc::close(fd);
                    Ok(())
                }
                Op::Symlink(target, link) => check(libc::symlink(target.as_ptr(), link.as_ptr())),
                Op::Bind { src, dst, read_only } => {
                    check(libc::mount(src.as_ptr(), dst.as_ptr(), null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
                    if *read_only {
                        check(libc::mount(null(), dst.as_ptr(), null(), libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY, std::ptr::null()))?;
                    }
                    Ok(())
                }
                Op::Overlay { dst, data } => check(libc::mount(c"overlay".as_ptr(), dst.as_ptr(), c"overlay".as_ptr(), 0, data.as_ptr().cast())),
                Op::RemountReadOnly(p) => check(libc::mount(null(), p.as_ptr(), null(), libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY, std::ptr::null())),
                Op::Hostname(h) => check(libc::sethostname(h.as_ptr(), h.as_bytes().len())),
                Op::PivotRoot(root) => {
                    check(libc::chdir(root.as_ptr()))?;
                    check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
                    check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                    check(libc::chdir(c"/".as_ptr()))
                }
                Op::Privileges(p) => p.apply(),
                Op::Chdir(p) => check(libc::chdir(p.as_ptr())),
            }
        }
    }

    /// What step `idx` (read from the report pipe) was doing.
    pub fn explain(&self, idx: u32) -> &str {
        self.ops.get(idx as usize).map_or("preparing the container", |(_, what)| what)
    }

    /// Installs the plan on a command, returning the pipe on which a failing step reports
    /// itself (read it with [`Plan::failed_step`] when the spawn fails).
    pub fn install(self: &std::sync::Arc<Self>, cmd: &mut tokio::process::Command) -> io::Result<OwnedFd> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
        // SAFETY: both descriptors were just created and are owned here alone.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let plan = self.clone();
        let wr = std::sync::Arc::new(wr);
        // SAFETY: `apply` makes only async-signal-safe system calls on prepared memory.
        unsafe {
            cmd.pre_exec(move || plan.apply(wr.as_raw_fd()));
        }
        Ok(rd)
    }

    /// After a failed spawn: the step that failed, if the child reported one (the pipe does
    /// not block: no report is `None`).
    pub fn failed_step(&self, rd: OwnedFd) -> Option<&str> {
        let mut f = std::fs::File::from(rd);
        let mut b = [0u8; 4];
        use std::io::Read;
        f.read_exact(&mut b).ok().map(|_| self.explain(u32::from_ne_bytes(b)))
    }
}

/// A running container's namespaces, for a process that joins them (an exec probe, `kubectl
/// exec`): opened before the fork, entered between fork and exec.
pub struct Join {
    fds: Vec<(OwnedFd, libc::c_int)>,
    cwd: CString,
    privileges: Option<crate::privileges::Privileges>,
}

impl Join {
    /// The namespaces of process `pid` (a container's main process) that differ from ours,
    /// and the working directory to start in.
    pub fn of(pid: i32, cwd: &Path) -> io::Result<Join> {
        let mut fds = Vec::new();
        for (ns, flag) in [("mnt", libc::CLONE_NEWNS), ("uts", libc::CLONE_NEWUTS), ("net", libc::CLONE_NEWNET)] {
            let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))?;
            let ours = std::fs::metadata(format!("/proc/self/ns/{ns}"))?;
            use std::os::unix::fs::MetadataExt;
            if theirs.ino() != ours.ino() {
                fds.push((OwnedFd::from(std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))?), flag));
            }
        }
        let cwd = CString::new(cwd.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the working directory"))?;
        Ok(Join { fds, cwd, privileges: None })
    }

    /// Also takes the container's user, groups and capabilities (`kubectl exec`).
    pub fn with_privileges(mut self, p: Option<crate::privileges::Privileges>) -> Join {
        self.privileges = p;
        self
    }

    /// Makes `cmd` start inside the namespaces, in the working directory.
    pub fn install(self, cmd: &mut tokio::process::Command) {
        // SAFETY: setns and chdir on descriptors and a string prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for (fd, flag) in &self.fds {
                    check(libc::setns(fd.as_raw_fd(), *flag))?;
                }
                if let Some(p) = &self.privileges {
                    p.apply()?;
                }
                check(libc::chdir(self.cwd.as_ptr()))
            });
        }
    }
}

/// Whether containers can have their own mount namespaces here (root, a kernel that allows
/// it): tried once in a child process. `Err` says why not.
pub fn available() -> Result<(), String> {
    let mut cmd = std::process::Command::new("/bin/true");
    use std::os::unix::process::CommandExt;
    // SAFETY: unshare and mount are async-signal-safe system calls on static strings.
    unsafe {
        cmd.pre_exec(|| {
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            check(libc::mount(null(), c"/".as_ptr(), null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))
        });
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("a test process exited with {s}")),
        Err(e) => Err(format!("creating a mount namespace failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_cleaned_and_dot_dot_refused() {
        assert_eq!(clean("/a//b/./c/").unwrap(), PathBuf::from("/a/b/c"));
        assert!(clean("/a/../etc").is_err());
        assert!(clean("rel").is_err());
    }

    #[test]
    fn resolve_splits_existing_from_new() {
        let t = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir(real.join("d")).unwrap();
        std::os::unix::fs::symlink(real.join("d"), real.join("link")).unwrap();
        let (at, rest) = resolve(&real.join("link/new/deeper"));
        assert_eq!(at, real.join("d"));
        assert_eq!(rest, ["new", "deeper"]);
        let (at, rest) = resolve(&real.join("d"));
        assert_eq!((at, rest.len()), (real.join("d"), 0));
    }

    fn spec<'a>(t: &Path, top: &'a [Top], mounts: Vec<Mount>) -> Spec<'a> {
        let privileges = crate::privileges::of(&serde_json::Value::Null, &serde_json::Value::Null).unwrap();
        Spec { root: t.join("root"), layers: t.join("layers"), top, mounts, keep: vec![], hide: vec![], workdir: "/".into(), hostname: None, read_only_root: false, privileges, netns: None }
    }

    fn overlay_targets(p: &Plan) -> Vec<String> {
        p.ops.iter().filter(|(o, _)| matches!(o, Op::Overlay { .. })).map(|(_, w)| w.clone()).collect()
    }

    #[test]
    fn new_mount_points_never_land_on_the_host() {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        let vol = base.join("vol");
        std::fs::create_dir(&vol).unwrap();
        let top = host_top().unwrap();
        let m = |dst: &str| Mount { dst: dst.into(), src: vol.clone(), read_only: false };
        // A new top-level directory goes in the tmpfs: no overlay.
        let p = plan(&spec(&base, &top, vec![m("/capstan-test-new-top/x")])).unwrap();
        assert!(overlay_targets(&p).is_empty(), "{:?}", overlay_targets(&p));
        // Under an existing host directory: that directory is overlaid, once for both mounts,
        // and a mount inside another volume needs none.
        let p = plan(&spec(&base, &top, vec![m("/etc/capstan-test/a"), m("/etc/capstan-test-b"), m("/etc/capstan-test/a/inner")])).unwrap();
        assert_eq!(overlay_targets(&p), ["overlaying /etc to create mount points"]);
        // An existing path is mounted over directly.
        let p = plan(&spec(&base, &top, vec![m("/etc")])).unwrap();
        assert!(overlay_targets(&p).is_empty());
        assert!(plan(&spec(&base, &top, vec![m("/etc/../x")])).is_err());
    }

    #[test]
    fn a_file_over_a_directory_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        let f = base.join("file");
        std::fs::write(&f, "x").unwrap();
        let top = host_top().unwrap();
        let e = plan(&spec(&base, &top, vec![Mount { dst: "/etc".into(), src: f, read_only: true }])).err().unwrap();
        assert!(e.contains("one is a file and the other a directory"), "{e}");
    }
}
