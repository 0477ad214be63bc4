//! Node tokens: bearer tokens that authenticate as a node (`system:node:NAME` in
//! `system:nodes`), so that the Node authorizer and NodeRestriction judge the bearer as they
//! judge a kubelet with its certificate. They exist for nodes that share connections —
//! thousands of hollow nodes in one process, each of whose writes carries its own node's
//! token over a common pool — where a certificate per node would need a TLS connection per
//! node. Kubernetes has no such token (its kubelets hold certificates, or bootstrap to one
//! through a CSR); this is capstan's, in the shape of Kubernetes' bootstrap tokens:
//!
//! - the token is `ID.SECRET`, `[a-z0-9]{6}.[a-z0-9]{32}` (a bootstrap token's secret has 16);
//! - it is kept as the Secret `kube-system/node-token-ID` of type `capstan.io/node-token`
//!   with `token-id`, `token-secret`, `node-name` and optionally `expiration` (RFC 3339);
//! - only who may create Secrets in `kube-system` (an admin) can make one; deleting the
//!   Secret revokes the token at the next request.

use crate::authn::{AUTHENTICATED, UserInfo};
use crate::handlers::AppState;

pub const SECRET_TYPE: &str = "capstan.io/node-token";
pub const NAMESPACE: &str = "kube-system";
pub const ID_LEN: usize = 6;
pub const SECRET_LEN: usize = 32;

/// `(id, secret)` of a token of the node-token format, else `None`.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, ID_LEN) && ok(secret, SECRET_LEN)).then_some((id, secret))
}

/// The Secret's name for token `id`.
pub fn secret_name(id: &str) -> String {
    format!("node-token-{id}")
}

/// The user of node token `id.secret` as `secret_obj` describes it, at `now`.
pub fn user_of(secret_obj: &serde_json::Value, id: &str, secret: &str, now: i64) -> Result<UserInfo, String> {
    let field = |k: &str| crate::bootstrap_token::field(secret_obj, k);
    if secret_obj["type"].as_str() != Some(SECRET_TYPE) {
        return Err(format!("secret node-token-{id} is not of type {SECRET_TYPE}"));
    }
    if field("token-id").as_deref() != Some(id) {
        return Err(format!("secret node-token-{id} holds another token-id"));
    }
    if !crate::bootstrap_token::same_secret(&field("token-secret").unwrap_or_default(), secret) {
        return Err(format!("node token {id}: wrong secret"));
    }
    if crate::bootstrap_token::expired(secret_obj, now) {
        return Err(format!("node token {id} has expired"));
    }
    if secret_obj["metadata"]["deletionTimestamp"].is_string() {
        return Err(format!("node token {id} is being deleted"));
    }
    let node = field("node-name").unwrap_or_default();
    // A node name is a DNS subdomain; anything else names no node.
    if node.is_empty() || node.len() > 253 || !node.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
        return Err(format!("node token {id}: node-name {node:?} is not a node name"));
    }
    Ok(UserInfo::new(format!("{}{node}", crate::node_authz::NODE_USER_PREFIX), vec![crate::node_authz::NODES_GROUP.to_string(), AUTHENTICATED.into()]))
}

/// The user of `token` if it is a valid node token; `Ok(None)` when it does not have the
/// node-token format (another authenticator's).
pub async fn authenticate(st: &AppState, token: &str) -> Result<Option<UserInfo>, String> {
    let Some((id, secret)) = parse(token) else { return Ok(None) };
    let obj = st.lookup("secrets", Some(NAMESPACE), &secret_name(id)).await.map_err(|e| e.message)?.ok_or_else(|| format!("no node token {id}"))?;
    user_of(&obj, id, secret, jiff::Timestamp::now().as_second()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::{Value, json};

    const ID: &str = "abc123";
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn secret(ty: &str, fields: &[(&str, &str)]) -> Value {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let data: serde_json::Map<String, Value> = fields.iter().map(|(k, v)| (k.to_string(), json!(b(v)))).collect();
        json!({"metadata": {"name": secret_name(ID), "namespace": NAMESPACE}, "type": ty, "data": data})
    }

    #[test]
    fn a_node_token_is_its_node_and_nothing_else() {
        let good = [("token-id", ID), ("token-secret", SECRET), ("node-name", "hollow-7")];
        let u = user_of(&secret(SECRET_TYPE, &good), ID, SECRET, 0).unwrap();
        assert_eq!(u.name, "system:node:hollow-7");
        assert_eq!(u.groups, vec!["system:nodes".to_string(), AUTHENTICATED.to_string()]);
        assert!(parse(&format!("{ID}.{SECRET}")).is_some());
        // The bootstrap format (16) and other shapes are not node tokens.
        assert!(parse("abc123.0123456789abcdef").is_none());
        assert!(parse(&format!("ABC123.{SECRET}")).is_none());
        assert!(parse(&format!("{ID}.{SECRET}x")).is_none());
        let other = "ffffffffffffffffffffffffffffffff";
        assert!(user_of(&secret(SECRET_TYPE, &good), ID, other, 0).unwrap_err().contains("wrong secret"));
        assert!(user_of(&secret("bootstrap.kubernetes.io/token", &good), ID, SECRET, 0).unwrap_err().contains("not of type"));
        assert!(user_of(&secret(SECRET_TYPE, &[("token-id", "zzz999"), ("token-secret", SECRET), ("node-name", "n")]), ID, SECRET, 0).unwrap_err().contains("another token-id"));
        for bad in ["", "Hollow", "a/b", "x y"] {
            assert!(user_of(&secret(SECRET_TYPE, &[("token-id", ID), ("token-secret", SECRET), ("node-name", bad)]), ID, SECRET, 0).is_err(), "{bad:?}");
        }
        let expiring = [("token-id", ID), ("token-secret", SECRET), ("node-name", "n"), ("expiration", "2030-01-01T00:00:00Z")];
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_second();
        assert!(user_of(&secret(SECRET_TYPE, &expiring), ID, SECRET, at("2029-12-31T23:59:59Z")).is_ok());
        assert!(user_of(&secret(SECRET_TYPE, &expiring), ID, SECRET, at("2030-01-01T00:00:00Z")).unwrap_err().contains("expired"));
    }
}
