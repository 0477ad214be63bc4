//! Protobuf request bodies, as Go clients send them (kubectl 1.32+'s typed commands: `create
//! namespace|configmap|secret|deployment|...`, `run`, `expose`, `autoscale`, `certificate
//! approve`, drain's DELETE and eviction; client-go programs and controllers by default): the
//! `k8s\0` magic, a `runtime.Unknown` envelope naming apiVersion and kind, and the typed
//! message in `raw`. The message becomes the JSON the rest of the server handles, for every
//! built-in kind, by a field table generated from the `k8s-pb` crate and the Kubernetes
//! schemas (`fields.rs`, by `apiserver/gen/protobuf_fields.py`): tags, JSON names, types.
//!
//! A kind the table does not hold (a custom resource: Kubernetes serves those in JSON only)
//! is answered 415 naming it, so a client can send JSON instead. Replies are JSON.

mod decode;
mod fields;
mod table;

use prost::Message as _;
use serde_json::{Map, Value};

pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum PbError {
    /// Not a Kubernetes protobuf envelope, or a message that does not decode: 400.
    Malformed(String),
    /// A kind this server does not decode from protobuf: 415.
    Unsupported(String),
}

/// Decodes a Kubernetes protobuf request body into the JSON object it stands for.
pub fn to_json(body: &[u8]) -> Result<Value, PbError> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| PbError::Malformed("protobuf body without the k8s\\0 prefix".into()))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest)
        .map_err(|e| PbError::Malformed(format!("protobuf envelope does not decode: {e}")))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let (av, kind) = (tm.api_version.unwrap_or_default(), tm.kind.unwrap_or_default());
    if unknown.content_encoding.as_deref().is_some_and(|e| !e.is_empty()) {
        return Err(PbError::Unsupported(format!("protobuf bodies with content encoding {:?}", unknown.content_encoding.unwrap_or_default())));
    }
    let m = table::kind(&av, &kind).ok_or_else(|| {
        PbError::Unsupported(format!("protobuf bodies of {av}/{kind} are not decoded by this server; send application/json"))
    })?;
    let raw = unknown.raw.unwrap_or_default();
    let fields = decode::decode(&raw, m, 0).map_err(|e| PbError::Malformed(format!("the protobuf {kind} in the request body does not decode: {e}")))?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(av));
    out.insert("kind".into(), Value::String(kind));
    if let Value::Object(f) = fields {
        out.extend(f);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests;
