//! Legacy ServiceAccount tokens, only when a user asks for one: a Secret of type
//! `kubernetes.io/service-account-token` annotated `kubernetes.io/service-account.name: SA`
//! gets `data.token` (a JWT of Kubernetes' legacy shape: issuer `kubernetes/serviceaccount`,
//! no audience, no expiry), `data.namespace`, `data["ca.crt"]` and the ServiceAccount's uid in
//! `kubernetes.io/service-account.uid`. The token authenticates as the ServiceAccount while
//! the Secret still holds it and the ServiceAccount is the one it names.
//!
//! Kubernetes fills such a Secret afterwards, in the controller manager's token controller;
//! capstan fills it when it is created (the API server holds the signing key), and refuses
//! one naming a ServiceAccount that does not exist (Kubernetes' controller deletes it later).

use base64::Engine;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::authn::{AUTHENTICATED, UserInfo};
use crate::handlers::AppState;
use crate::sa_token::Keys;
use crate::status::ApiError;

pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
pub const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
pub const ISSUER: &str = "kubernetes/serviceaccount";

/// The legacy claims, named as Kubernetes names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub service_account_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub service_account_uid: String,
}

fn b64(s: &str) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(s))
}

/// Fills a new Secret of the legacy token type (see the module's comment); other Secrets
/// are left alone.
pub async fn fill(st: &AppState, obj: &mut Value) -> Result<(), ApiError> {
    if obj["type"].as_str() != Some(SECRET_TYPE) {
        return Ok(());
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let invalid = |why: String| ApiError::invalid("", "Secret", &name, vec![(format!("metadata.annotations[{NAME_ANNOTATION}]"), why)]);
    let sa_name = obj["metadata"]["annotations"][NAME_ANNOTATION].as_str().filter(|n| !n.is_empty()).ok_or_else(|| invalid("Required value".into()))?.to_string();
    let Some(keys) = &st.sa_keys else { return Err(ApiError::unavailable("this server issues no ServiceAccount tokens")) };
    let sa = st.lookup("serviceaccounts", Some(&ns), &sa_name).await?.ok_or_else(|| invalid(format!("Not found: ServiceAccount {sa_name:?} in namespace {ns:?}")))?;
    let uid = sa["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let claims = Claims {
        iss: ISSUER.into(),
        sub: format!("system:serviceaccount:{ns}:{sa_name}"),
        namespace: ns.clone(),
        secret_name: name.clone(),
        service_account_name: sa_name,
        service_account_uid: uid.clone(),
    };
    let token = keys.sign_legacy(&claims).map_err(ApiError::internal)?;
    obj["metadata"]["annotations"][UID_ANNOTATION] = json!(uid);
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    obj["data"]["token"] = b64(&token);
    obj["data"]["namespace"] = b64(&ns);
    if let Some(ca) = keys.root_ca() {
        obj["data"]["ca.crt"] = b64(ca);
    }
    Ok(())
}

/// The legacy claims of `token`, if this key signed it with the legacy issuer.
pub fn verify(keys: &Keys, token: &str) -> Result<Claims, String> {
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[ISSUER]);
    v.set_required_spec_claims(&["iss", "sub"]);
    v.validate_aud = false;
    v.validate_exp = false;
    v.validate_nbf = false;
    let c = keys.decode_legacy::<Claims>(token, &v)?;
    if c.sub != format!("system:serviceaccount:{}:{}", c.namespace, c.service_account_name) {
        return Err("the subject does not name the token's ServiceAccount".into());
    }
    Ok(c)
}

/// The user of a legacy token, while its Secret holds it and its ServiceAccount is the one
/// it names.
pub async fn user(st: &AppState, token: &str, c: &Claims) -> Result<UserInfo, String> {
    let secret = st.lookup("secrets", Some(&c.namespace), &c.secret_name).await.map_err(|e| e.message)?.ok_or_else(|| format!("secret {:?} no longer exists", c.secret_name))?;
    let held = secret["data"]["token"].as_str().and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok()).unwrap_or_default();
    if !crate::bootstrap_token::same_secret(&String::from_utf8_lossy(&held), token) {
        return Err(format!("secret {:?} holds another token", c.secret_name));
    }
    let sa = st.lookup("serviceaccounts", Some(&c.namespace), &c.service_account_name).await.map_err(|e| e.message)?.ok_or_else(|| format!("serviceaccount {:?} no longer exists", c.service_account_name))?;
    if sa["metadata"]["uid"].as_str() != Some(c.service_account_uid.as_str()) {
        return Err(format!("serviceaccount {:?} is not the one the token names", c.service_account_name));
    }
    Ok(UserInfo {
        name: c.sub.clone(),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{}", c.namespace), AUTHENTICATED.into()],
        uid: c.service_account_uid.clone(),
        extra: Default::default(),
    })
}

/// Signs legacy claims (the same key and header as every ServiceAccount token).
pub(crate) fn header(kid: &str) -> Header {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.to_string());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_token_verifies_with_its_key_and_legacy_issuer_only() {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let k = Keys::from_pem(&pem, crate::sa_token::DEFAULT_ISSUER).unwrap();
        let other = Keys::from_pem(&rcgen::KeyPair::generate().unwrap().serialize_pem(), crate::sa_token::DEFAULT_ISSUER).unwrap();
        let c = Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:dev:ci".into(),
            namespace: "dev".into(),
            secret_name: "ci-token".into(),
            service_account_name: "ci".into(),
            service_account_uid: "u1".into(),
        };
        let t = k.sign_legacy(&c).unwrap();
        assert_eq!(verify(&k, &t).unwrap(), c);
        assert!(verify(&other, &t).is_err(), "another key");
        let mut forged = c.clone();
        forged.sub = "system:serviceaccount:kube-system:admin".into();
        assert!(verify(&k, &k.sign_legacy(&forged).unwrap()).is_err(), "a subject that is not the named ServiceAccount");
        let mut bound = c.clone();
        bound.iss = crate::sa_token::DEFAULT_ISSUER.into();
        assert!(verify(&k, &k.sign_legacy(&bound).unwrap()).is_err(), "a bound token's issuer is not the legacy one");
    }
}
