//! Reading a kubeconfig: the server of a context and the credentials to reach it (the CA,
//! and a client certificate), as kubectl reads them. Data fields (`*-data`, base64) and file
//! fields (paths, relative to the kubeconfig's directory) are both understood.

use std::path::Path;

use base64::Engine;
use serde_norway::Value;

use crate::tls::Credentials;

/// What a context of a kubeconfig says.
#[derive(Clone, Debug)]
pub struct Kubeconfig {
    pub server: String,
    /// None for a server without TLS (an `http://` URL).
    pub credentials: Option<Credentials>,
}

fn field(v: &Value, dir: &Path, data: &str, file: &str, what: &str) -> Result<Option<String>, String> {
    if let Some(d) = v.get(data).and_then(Value::as_str) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(d.trim()).map_err(|e| format!("{what} ({data}): {e}"))?;
        return String::from_utf8(bytes).map(Some).map_err(|_| format!("{what} ({data}) is not PEM text"));
    }
    if let Some(f) = v.get(file).and_then(Value::as_str) {
        let p = dir.join(f);
        return std::fs::read_to_string(&p).map(Some).map_err(|e| format!("{what} ({}): {e}", p.display()));
    }
    Ok(None)
}

fn named<'a>(v: &'a Value, list: &str, name: &str, inner: &str) -> Result<&'a Value, String> {
    v.get(list)
        .and_then(Value::as_sequence)
        .and_then(|s| s.iter().find(|e| e.get("name").and_then(Value::as_str) == Some(name)))
        .and_then(|e| e.get(inner))
        .ok_or_else(|| format!("no {inner} named {name:?} in {list}"))
}

/// The server and credentials of `context` (the current context if None) in the kubeconfig
/// at `path`.
pub fn load(path: &Path, context: Option<&str>) -> Result<Kubeconfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let ctx_name = match context {
        Some(c) => c.to_string(),
        None => v.get("current-context").and_then(Value::as_str).ok_or_else(|| format!("{}: no current-context", path.display()))?.to_string(),
    };
    let ctx = named(&v, "contexts", &ctx_name, "context").map_err(|e| format!("{}: {e}", path.display()))?;
    let cluster_name = ctx.get("cluster").and_then(Value::as_str).ok_or_else(|| format!("{}: context {ctx_name:?} names no cluster", path.display()))?;
    let cluster = named(&v, "clusters", cluster_name, "cluster").map_err(|e| format!("{}: {e}", path.display()))?;
    let server = cluster.get("server").and_then(Value::as_str).ok_or_else(|| format!("{}: cluster {cluster_name:?} has no server", path.display()))?.to_string();
    if !server.starts_with("https://") {
        return Ok(Kubeconfig { server, credentials: None });
    }
    let ca_pem = field(cluster, dir, "certificate-authority-data", "certificate-authority", "the CA")?.ok_or_else(|| format!("{}: cluster {cluster_name:?} has no certificate-authority", path.display()))?;
    let (mut cert_pem, mut key_pem) = (None, None);
    if let Some(user_name) = ctx.get("user").and_then(Value::as_str) {
        let user = named(&v, "users", user_name, "user").map_err(|e| format!("{}: {e}", path.display()))?;
        cert_pem = field(user, dir, "client-certificate-data", "client-certificate", "the client certificate")?;
        key_pem = field(user, dir, "client-key-data", "client-key", "the client key")?;
    }
    Ok(Kubeconfig { server, credentials: Some(Credentials { ca_pem, cert_pem, key_pem }) })
}
