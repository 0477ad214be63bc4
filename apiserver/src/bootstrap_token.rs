//! Bootstrap tokens, as Kubernetes has them (kubeadm's `kubeadm token create`): a token
//! `ID.SECRET` (`[a-z0-9]{6}.[a-z0-9]{16}`) authenticates when the Secret
//! `kube-system/bootstrap-token-ID` of type `bootstrap.kubernetes.io/token` holds that secret,
//! allows authentication (`usage-bootstrap-authentication: "true"`) and has not expired. The
//! user is `system:bootstrap:ID` in `system:bootstrappers` and the Secret's
//! `auth-extra-groups`. Expired token Secrets are deleted by the controllers' token cleaner.

use base64::Engine;
use serde_json::Value;

use crate::authn::{AUTHENTICATED, UserInfo};
use crate::handlers::AppState;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const NAMESPACE: &str = "kube-system";
const GROUP: &str = "system:bootstrappers";

/// `(id, secret)` of a token of the bootstrap format, else `None`.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// A field of the Secret: from `data` (base64), or `stringData` if it was stored as given.
pub(crate) fn field(secret: &Value, k: &str) -> Option<String> {
    if let Some(b) = secret["data"][k].as_str() {
        return base64::engine::general_purpose::STANDARD.decode(b).ok().and_then(|v| String::from_utf8(v).ok());
    }
    secret["stringData"][k].as_str().map(str::to_string)
}

/// Whether a bootstrap token Secret has expired at `now` (seconds since the epoch); one
/// without `expiration` does not.
pub fn expired(secret: &Value, now: i64) -> bool {
    field(secret, "expiration").and_then(|e| e.parse::<jiff::Timestamp>().ok()).is_some_and(|t| t.as_second() <= now)
}

/// Whether a presented secret is the stored one, compared in constant time (it is a
/// password).
pub(crate) fn same_secret(stored: &str, given: &str) -> bool {
    stored.len() == given.len() && stored.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The user of bootstrap token `id.secret` as `secret_obj` describes it, at `now`.
pub fn user_of(secret_obj: &Value, id: &str, secret: &str, now: i64) -> Result<UserInfo, String> {
    if secret_obj["type"].as_str() != Some(SECRET_TYPE) {
        return Err(format!("secret bootstrap-token-{id} is not of type {SECRET_TYPE}"));
    }
    if field(secret_obj, "token-id").as_deref() != Some(id) {
        return Err(format!("secret bootstrap-token-{id} holds another token-id"));
    }
    if !same_secret(&field(secret_obj, "token-secret").unwrap_or_default(), secret) {
        return Err(format!("bootstrap token {id}: wrong secret"));
    }
    if field(secret_obj, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!("bootstrap token {id} is not for authentication"));
    }
    if expired(secret_obj, now) {
        return Err(format!("bootstrap token {id} has expired"));
    }
    if secret_obj["metadata"]["deletionTimestamp"].is_string() {
        return Err(format!("bootstrap token {id} is being deleted"));
    }
    let mut groups = vec![GROUP.to_string()];
    for g in field(secret_obj, "auth-extra-groups").unwrap_or_default().split(',').map(str::trim).filter(|g| !g.is_empty()) {
        // As Kubernetes: extra groups must be bootstrapper groups.
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    groups.push(AUTHENTICATED.into());
    Ok(UserInfo::new(format!("system:bootstrap:{id}"), groups))
}

/// The user of `token` if it is a valid bootstrap token; `Ok(None)` when it does not have the
/// bootstrap format (another authenticator's).
pub async fn authenticate(st: &AppState, token: &str) -> Result<Option<UserInfo>, String> {
    let Some((id, secret)) = parse(token) else { return Ok(None) };
    let obj = st
        .lookup("secrets", Some(NAMESPACE), &format!("bootstrap-token-{id}"))
        .await
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("no bootstrap token {id}"))?;
    user_of(&obj, id, secret, jiff::Timestamp::now().as_second()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(extra: Value) -> Value {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut data = json!({"token-id": b("abcdef"), "token-secret": b("0123456789abcdef"), "usage-bootstrap-authentication": b("true"),
                              "auth-extra-groups": b("system:bootstrappers:kubeadm:default-node-token,system:masters")});
        for (k, v) in extra.as_object().unwrap() {
            data[k] = json!(b(v.as_str().unwrap()));
        }
        json!({"type": SECRET_TYPE, "metadata": {"name": "bootstrap-token-abcdef"}, "data": data})
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_bootstrap_token_is_its_secrets_user_until_it_expires() {
        assert_eq!(parse("abcdef.0123456789abcdef"), Some(("abcdef", "0123456789abcdef")));
        for bad in ["abcdef", "abcde.0123456789abcdef", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde", "eyJ.a.b"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let u = user_of(&secret(json!({})), "abcdef", "0123456789abcdef", NOW).unwrap();
        assert_eq!(u.name, "system:bootstrap:abcdef");
        // Extra groups outside system:bootstrappers: are dropped.
        assert_eq!(u.groups, vec!["system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token", AUTHENTICATED]);
        assert!(user_of(&secret(json!({})), "abcdef", "0123456789abcdee", NOW).unwrap_err().contains("wrong secret"));
        let later = secret(json!({"expiration": "2027-01-15T08:00:10Z"}));
        assert!(user_of(&later, "abcdef", "0123456789abcdef", NOW).is_ok());
        assert!(user_of(&later, "abcdef", "0123456789abcdef", NOW + 10).unwrap_err().contains("expired"));
        assert!(expired(&later, NOW + 10) && !expired(&later, NOW) && !expired(&secret(json!({})), NOW));
        assert!(user_of(&secret(json!({"usage-bootstrap-authentication": "false"})), "abcdef", "0123456789abcdef", NOW).is_err());
        let mut other = secret(json!({}));
        other["type"] = json!("Opaque");
        assert!(user_of(&other, "abcdef", "0123456789abcdef", NOW).is_err());
    }
}
