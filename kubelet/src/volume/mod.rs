//! A pod's volumes on the process runtime: what each of `spec.volumes` is on the host,
//! prepared before the pod's first container starts and refreshed while it runs.
//!
//! | volume | on the host |
//! | --- | --- |
//! | `emptyDir` | `D/pods/<pod>/volumes/<name>`; `medium: Memory` is a tmpfs mounted there (`sizeLimit` its size), unmounted with the pod |
//! | `configMap`, `secret`, `downwardAPI`, `projected` | the same directory, written by [`atomic::write`] and rewritten when the objects change (read every [`REFRESH`]) |
//! | `projected.serviceAccountToken` | a TokenRequest bound to the pod, renewed at 80% of its life |
//! | `hostPath` | the host path itself, after the `type` check (`DirectoryOrCreate` and `FileOrCreate` create it) |
//! | `persistentVolumeClaim` | its bound volume's `hostPath` (or `local` path): the local-path provisioner's volumes are `hostPath`s under this node's `D/volumes` ([`local_path`]); a claim not yet bound keeps the pod waiting |
//! | anything else (network filesystems, CSI) | refused: the pod waits with `FailedMount` |
//!
//! A volume that cannot be set up (a ConfigMap that does not exist, a key it lacks) keeps the
//! pod's containers waiting in `ContainerCreating`, with Kubernetes' `FailedMount` event,
//! until it can.

pub mod atomic;
pub mod files;
pub mod local_path;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::FutureExt;
use serde_json::{Value, json};

use crate::client::{Client, ClientError};
use files::{File, Keys};

/// How often volumes that follow API objects are read again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// A volume that could not be set up, as the `FailedMount` event says it.
#[derive(Debug, Clone, PartialEq)]
pub struct MountError {
    pub volume: String,
    pub message: String,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MountVolume.SetUp failed for volume {:?} : {}", self.volume, self.message)
    }
}

/// A pod's volumes as set up on the host.
pub struct Volumes {
    dir: PathBuf,
    /// Volume name -> (where it is on the host, whether it is always mounted read-only).
    sources: HashMap<String, (PathBuf, bool)>,
    /// Projected tokens: (volume, path) -> (token, when to renew).
    tokens: HashMap<(String, String), (Vec<u8>, Instant)>,
    ready: bool,
    next_refresh: Option<Instant>,
}

fn dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !s.starts_with('-') && !s.ends_with('-')
}

/// Whether the pod has a volume whose content comes from API objects or the pod itself.
fn follows_objects(pod: &Value) -> bool {
    pod["spec"]["volumes"].as_array().into_iter().flatten().any(|v| ["configMap", "secret", "downwardAPI", "projected"].iter().any(|k| v.get(*k).is_some()))
}

impl Volumes {
    /// `dir` is the pod's volume directory (`D/pods/<pod>/volumes`).
    pub fn new(dir: PathBuf) -> Volumes {
        Volumes { dir, sources: HashMap::new(), tokens: HashMap::new(), ready: false, next_refresh: None }
    }

    /// Whether every volume has been set up once.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// When the volumes should be read again (None: they follow nothing).
    pub fn next_refresh(&self) -> Option<Instant> {
        self.next_refresh
    }

    /// Where volume `name` is on the host, once set up, and whether it is always mounted
    /// read-only (configMap, secret, downwardAPI and projected volumes are, in Kubernetes).
    pub fn source(&self, name: &str) -> Option<(&Path, bool)> {
        self.sources.get(name).map(|(p, ro)| (p.as_path(), *ro))
    }

    /// Sets up (or refreshes) every volume of `pod`. On error, the volumes before the failing
    /// one are set up and the pod is not ready.
    pub async fn sync(&mut self, pod: &Value, client: &Client) -> Result<(), MountError> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let mut objects = Objects { client, ns, configmaps: HashMap::new(), secrets: HashMap::new() };
        self.next_refresh = follows_objects(pod).then(|| Instant::now() + REFRESH);
        // Every object and token the volumes need, asked for at once rather than one round
        // trip after another; what fails here is asked again below, which reports it.
        let tokens = self.fresh_tokens(pod, client);
        let (_, tokens) = tokio::join!(objects.prefetch(pod), tokens);
        self.tokens.extend(tokens);
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or("");
            let err = |message: String| MountError { volume: name.to_string(), message };
            if !dns_label(name) {
                return Err(err(format!("volume name {name:?} is not a DNS label")));
            }
            let path = self.setup(pod, name, v, &mut objects).await.map_err(err)?;
            let read_only = match v.get("persistentVolumeClaim") {
                Some(c) => c["readOnly"] == true,
                None => v.get("emptyDir").is_none() && v.get("hostPath").is_none(),
            };
            self.sources.insert(name.to_string(), (path, read_only));
        }
        self.ready = true;
        Ok(())
    }

    async fn setup(&mut self, pod: &Value, name: &str, v: &Value, objects: &mut Objects<'_>) -> Result<PathBuf, String> {
        let dir = self.dir.join(name);
        if let Some(e) = v.get("emptyDir") {
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            // As Kubernetes makes them: writable by any user the containers run as; with the
            // pod's fsGroup as group, kept by what is created in it (setgid).
            if e["medium"] == "Memory" && !is_mount_point(&dir) {
                let size = match e["sizeLimit"].as_str() {
                    Some(q) => Some(api::Quantity::parse(q).map_err(|_| format!("invalid sizeLimit {q:?}"))?.units_ceil().max(4096) as u64),
                    None => None,
                };
                mount_tmpfs(&dir, size)?;
            }
            let fs_group = pod["spec"]["securityContext"]["fsGroup"].as_u64().and_then(|g| u32::try_from(g).ok());
            set_owner_mode(&dir, fs_group, if fs_group.is_some() { 0o2777 } else { 0o777 })?;
            return Ok(dir);
        }
        if let Some(h) = v.get("hostPath") {
            let p = PathBuf::from(h["path"].as_str().unwrap_or(""));
            host_path(&p, h["type"].as_str().unwrap_or(""))?;
            return Ok(p);
        }
        if let Some(c) = v.get("persistentVolumeClaim") {
            return objects.claimed(c["claimName"].as_str().unwrap_or("")).await;
        }
        let files = if let Some(c) = v.get("configMap") {
            let n = c["name"].as_str().unwrap_or("");
            let keys = objects.get("configmaps", n).await?;
            files::keyed("configmap", n, keys, &c["items"], files::mode(&c["defaultMode"], files::DEFAULT_MODE)?, c["optional"] == true)?
        } else if let Some(s) = v.get("secret") {
            let n = s["secretName"].as_str().unwrap_or("");
            let keys = objects.get("secrets", n).await?;
            files::keyed("secret", n, keys, &s["items"], files::mode(&s["defaultMode"], files::DEFAULT_MODE)?, s["optional"] == true)?
        } else if let Some(d) = v.get("downwardAPI") {
            files::downward(pod, &d["items"], files::mode(&d["defaultMode"], files::DEFAULT_MODE)?)?
        } else if let Some(p) = v.get("projected") {
            self.projected(pod, name, p, objects).await?
        } else {
            let kind = v.as_object().and_then(|o| o.keys().find(|k| *k != "name")).map_or("(none)", |k| k.as_str());
            return Err(format!("volume type {kind:?} is not supported by capstan's process runtime"));
        };
        atomic::write(&dir, &files).map_err(|e| format!("writing {}: {e}", dir.display()))?;
        Ok(dir)
    }

    async fn projected(&mut self, pod: &Value, vol: &str, p: &Value, objects: &mut Objects<'_>) -> Result<Vec<File>, String> {
        let default = files::mode(&p["defaultMode"], files::DEFAULT_MODE)?;
        let mut out = Vec::new();
        for s in p["sources"].as_array().into_iter().flatten() {
            if let Some(c) = s.get("configMap") {
                let n = c["name"].as_str().unwrap_or("");
                let keys = objects.get("configmaps", n).await?;
                out.extend(files::keyed("configmap", n, keys, &c["items"], default, c["optional"] == true)?);
            } else if let Some(c) = s.get("secret") {
                let n = c["name"].as_str().unwrap_or("");
                let keys = objects.get("secrets", n).await?;
                out.extend(files::keyed("secret", n, keys, &c["items"], default, c["optional"] == true)?);
            } else if let Some(d) = s.get("downwardAPI") {
                out.extend(files::downward(pod, &d["items"], default)?);
            } else if let Some(t) = s.get("serviceAccountToken") {
                let path = t["path"].as_str().unwrap_or("").to_string();
                files::check_path(&path)?;
                let token = self.token(pod, vol, &path, t, objects.client).await?;
                out.push(File { path, data: token, mode: default });
            } else {
                let kind = s.as_object().and_then(|o| o.keys().next()).map_or("(none)", |k| k.as_str());
                return Err(format!("projected source {kind:?} is not supported by capstan's process runtime"));
            }
        }
        files::no_duplicates(&out)?;
        Ok(out)
    }

    /// The tokens of the pod's projected volumes that are missing or due for renewal,
    /// requested at once (those that fail are left out).
    fn fresh_tokens<'a>(&self, pod: &'a Value, client: &'a Client) -> impl std::future::Future<Output = Vec<((String, String), (Vec<u8>, Instant))>> + 'a {
        let now = Instant::now();
        let mut wanted = Vec::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            for s in v["projected"]["sources"].as_array().into_iter().flatten() {
                if let Some(t) = s.get("serviceAccountToken") {
                    let key = (v["name"].as_str().unwrap_or("").to_string(), t["path"].as_str().unwrap_or("").to_string());
                    if self.tokens.get(&key).is_none_or(|(_, renew)| now >= *renew) {
                        wanted.push((key, t));
                    }
                }
            }
        }
        futures_util::future::join_all(wanted.into_iter().map(move |(key, t)| async move { request_token(pod, t, client).await.ok().map(|got| (key, got)) }))
            .map(|all| all.into_iter().flatten().collect())
    }

    /// A token for the pod's ServiceAccount, bound to the pod; renewed at 80% of its life (or
    /// after a day), as the kubelet's token manager does.
    async fn token(&mut self, pod: &Value, vol: &str, path: &str, t: &Value, client: &Client) -> Result<Vec<u8>, String> {
        let key = (vol.to_string(), path.to_string());
        if let Some((tok, renew)) = self.tokens.get(&key)
            && Instant::now() < *renew
        {
            return Ok(tok.clone());
        }
        let (tok, renew) = request_token(pod, t, client).await?;
        self.tokens.insert(key, (tok.clone(), renew));
        Ok(tok)
    }

    /// Removes the pod's volumes from the host: tmpfs mounts first, then the files.
    pub fn remove_all(pod_dir: &Path) {
        unmount_under(pod_dir);
        let _ = std::fs::remove_dir_all(pod_dir);
    }
}

/// A TokenRequest for the pod's ServiceAccount, bound to the pod, as projected source `t`
/// asks: the token and when to renew it.
async fn request_token(pod: &Value, t: &Value, client: &Client) -> Result<(Vec<u8>, Instant), String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let sa = pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
    let secs = t["expirationSeconds"].as_i64().unwrap_or(3600).max(600);
    let audiences: Vec<&str> = t["audience"].as_str().filter(|a| !a.is_empty()).into_iter().collect();
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
        "audiences": audiences, "expirationSeconds": secs,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}}});
    let got = client.post(&format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"), &body).await.map_err(|e| format!("requesting a token for serviceaccount {ns}/{sa}: {e}"))?;
    let tok = got["status"]["token"].as_str().ok_or("the TokenRequest answer has no token")?.as_bytes().to_vec();
    let life = Duration::from_secs(secs as u64).min(Duration::from_secs(24 * 3600));
    Ok((tok, Instant::now() + life.mul_f64(0.8)))
}

/// The objects one sync reads, each once.
struct Objects<'a> {
    client: &'a Client,
    ns: &'a str,
    configmaps: HashMap<String, Keys>,
    secrets: HashMap<String, Keys>,
}

impl Objects<'_> {
    /// Reads every ConfigMap and Secret the pod's volumes name, at once. Those that fail
    /// stay unread (`get` asks again and says why).
    async fn prefetch(&mut self, pod: &Value) {
        let mut wanted: Vec<(&str, &str)> = Vec::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let sources = v["projected"]["sources"].as_array().into_iter().flatten().chain(std::iter::once(v));
            for s in sources {
                if let Some(n) = s["configMap"]["name"].as_str() {
                    wanted.push(("configmaps", n));
                }
                if let Some(n) = s["secret"]["secretName"].as_str().or(s["secret"]["name"].as_str()) {
                    wanted.push(("secrets", n));
                }
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let (client, ns) = (self.client, self.ns);
        let got = futures_util::future::join_all(wanted.into_iter().map(|(resource, name)| async move {
            let r = match client.get(&format!("/api/v1/namespaces/{ns}/{resource}/{name}")).await {
                Ok(obj) => decode(resource, &obj).ok().map(Some),
                Err(ClientError::Status { code: 404, .. }) => Some(None),
                Err(_) => None,
            };
            (resource, name, r)
        }))
        .await;
        for (resource, name, r) in got {
            if let Some(keys) = r {
                let cache = if resource == "secrets" { &mut self.secrets } else { &mut self.configmaps };
                cache.insert(name.to_string(), keys);
            }
        }
    }

    async fn get(&mut self, resource: &str, name: &str) -> Result<&Keys, String> {
        let cache = if resource == "secrets" { &mut self.secrets } else { &mut self.configmaps };
        if !cache.contains_key(name) {
            let path = format!("/api/v1/namespaces/{}/{resource}/{name}", self.ns);
            let keys = match self.client.get(&path).await {
                Ok(obj) => Some(decode(resource, &obj)?),
                Err(ClientError::Status { code: 404, .. }) => None,
                Err(e) => return Err(format!("reading {resource} {name:?}: {e}")),
            };
            cache.insert(name.to_string(), keys);
        }
        Ok(&cache[name])
    }
}

impl Objects<'_> {
    /// Where claim `claim`'s volume is on this node.
    async fn claimed(&self, claim: &str) -> Result<PathBuf, String> {
        let pvc = match self.client.get(&format!("/api/v1/namespaces/{}/persistentvolumeclaims/{claim}", self.ns)).await {
            Ok(v) => v,
            Err(ClientError::Status { code: 404, .. }) => return Err(format!("persistentvolumeclaim {claim:?} not found")),
            Err(e) => return Err(format!("reading persistentvolumeclaim {claim:?}: {e}")),
        };
        let vol = pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty() && pvc["status"]["phase"] == "Bound");
        let Some(vol) = vol else { return Err(format!("persistentvolumeclaim {claim:?} is not bound yet")) };
        let pv = self.client.get(&format!("/api/v1/persistentvolumes/{vol}")).await.map_err(|e| format!("reading persistentvolume {vol:?}: {e}"))?;
        if let Some(h) = pv["spec"].get("hostPath") {
            let p = PathBuf::from(h["path"].as_str().unwrap_or(""));
            host_path(&p, h["type"].as_str().unwrap_or(""))?;
            return Ok(p);
        }
        if let Some(l) = pv["spec"]["local"]["path"].as_str() {
            let p = PathBuf::from(l);
            host_path(&p, "")?;
            return Ok(p);
        }
        let kind = pv["spec"].as_object().and_then(|o| o.keys().find(|k| !["capacity", "accessModes", "claimRef", "persistentVolumeReclaimPolicy", "storageClassName", "volumeMode", "nodeAffinity", "mountOptions"].contains(&k.as_str()))).map_or("(none)", |k| k.as_str());
        Err(format!("persistentvolume {vol:?} is of type {kind:?}, which capstan's process runtime cannot mount (hostPath and local only)"))
    }
}

/// A ConfigMap's `data` and `binaryData`, or a Secret's `data`, as bytes.
fn decode(resource: &str, obj: &Value) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let b64 = |k: &str, v: &Value| base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or("")).map_err(|e| format!("key {k}: {e}"));
    let mut m = BTreeMap::new();
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let bytes = if resource == "secrets" { b64(k, v)? } else { v.as_str().unwrap_or("").as_bytes().to_vec() };
        m.insert(k.clone(), bytes);
    }
    if resource == "configmaps" {
        for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
            m.insert(k.clone(), b64(k, v)?);
        }
    }
    Ok(m)
}

/// `hostPath`'s `type` check (and creation for the `OrCreate` types).
fn host_path(p: &Path, kind: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    if !p.is_absolute() {
        return Err(format!("hostPath {:?} must be absolute", p.display()));
    }
    let md = std::fs::metadata(p);
    let fail = |what: &str| Err(format!("hostPath type check failed: {} is not a {what}", p.display()));
    match kind {
        "DirectoryOrCreate" => {
            if md.is_err() {
                std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            } else if !md.as_ref().is_ok_and(|m| m.is_dir()) {
                return fail("directory");
            }
        }
        "FileOrCreate" => {
            if md.is_err() {
                std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            } else if !md.as_ref().is_ok_and(|m| m.is_file()) {
                return fail("file");
            }
        }
        _ => {
            let Ok(m) = md else { return Err(format!("hostPath {} does not exist", p.display())) };
            let t = m.file_type();
            let ok = match kind {
                "" => true,
                "Directory" => t.is_dir(),
                "File" => t.is_file(),
                "Socket" => t.is_socket(),
                "CharDevice" => t.is_char_device(),
                "BlockDevice" => t.is_block_device(),
                other => return Err(format!("unknown hostPath type {other:?}")),
            };
            if !ok {
                return fail(match kind {
                    "Directory" => "directory",
                    "File" => "file",
                    "Socket" => "socket",
                    "CharDevice" => "character device",
                    _ => "block device",
                });
            }
        }
    }
    Ok(())
}

fn set_owner_mode(dir: &Path, group: Option<u32>, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(g) = group {
        std::os::unix::fs::chown(dir, None, Some(g)).map_err(|e| format!("giving {} to group {g}: {e}", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("setting the mode of {}: {e}", dir.display()))
}

fn cpath(p: &Path) -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} contains a NUL byte", p.display()))
}

fn mount_tmpfs(dir: &Path, size: Option<u64>) -> Result<(), String> {
    let target = cpath(dir)?;
    let data = std::ffi::CString::new(match size {
        Some(s) => format!("mode=0777,size={s}"),
        None => "mode=0777".into(),
    })
    .expect("no NUL");
    // SAFETY: mount(2) with NUL-terminated strings that live across the call.
    let r = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, data.as_ptr().cast()) };
    if r < 0 {
        return Err(format!("mounting a tmpfs at {}: {}", dir.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Mount points in this process's namespace (from /proc/self/mountinfo), octal escapes undone.
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(unescape).collect()
}

fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

fn is_mount_point(dir: &Path) -> bool {
    mount_points().iter().any(|m| m == dir)
}

/// Unmounts everything mounted under `dir` (deepest first). Used before a pod's directory is
/// removed, so that removing it never reaches into a mount.
pub fn unmount_under(dir: &Path) {
    let mut ms: Vec<PathBuf> = mount_points().into_iter().filter(|m| m.starts_with(dir) && m != dir).collect();
    ms.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in ms {
        if let Ok(c) = cpath(&m) {
            // SAFETY: umount2(2) on a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_types() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("made/here");
        host_path(&d, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        let f = t.path().join("f");
        host_path(&f, "FileOrCreate").unwrap();
        assert!(f.is_file());
        assert_eq!(host_path(&f, "Directory").unwrap_err(), format!("hostPath type check failed: {} is not a directory", f.display()));
        assert!(host_path(&d, "File").is_err());
        assert!(host_path(&t.path().join("nope"), "").is_err());
        assert!(host_path(Path::new("rel"), "").is_err());
        assert!(host_path(&f, "Bogus").is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn secrets_are_decoded_and_configmaps_carry_binary_data() {
        let s = decode("secrets", &json!({"data": {"p": "aHVudGVyMg=="}})).unwrap();
        assert_eq!(s["p"], b"hunter2");
        assert!(decode("secrets", &json!({"data": {"p": "!!"}})).is_err());
        let c = decode("configmaps", &json!({"data": {"a": "x"}, "binaryData": {"b": "AAE="}})).unwrap();
        assert_eq!((c["a"].as_slice(), c["b"].as_slice()), (&b"x"[..], &[0u8, 1][..]));
    }
}
