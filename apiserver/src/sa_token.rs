//! ServiceAccount tokens: JWTs the API server signs with the cluster's ServiceAccount key and
//! accepts back as bearer tokens, as kube-apiserver's TokenRequest API issues them.
//!
//! The key is an ECDSA P-256 key (ES256, which Kubernetes accepts beside RSA), kept in the data
//! dir by the caller and given here as PKCS#8 PEM. Its public half is published as a JWKS
//! (`/openid/v1/jwks`) under the issuer's discovery document
//! (`/.well-known/openid-configuration`), so that other parties can check the tokens.
//!
//! This module only signs and checks signatures and claims; whether the ServiceAccount (and
//! the Pod or Secret a token is bound to) still exists is the caller's question
//! (`authn::service_account_user`), since it needs the store.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Kubernetes' default issuer (`--service-account-issuer`).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// A TokenRequest without `expirationSeconds` gets an hour, as in Kubernetes.
pub const DEFAULT_EXPIRATION: i64 = 3600;
/// Shorter requests are refused, as in Kubernetes (10 minutes).
pub const MIN_EXPIRATION: i64 = 600;
/// Longer requests are refused, as in Kubernetes (2^32 seconds).
pub const MAX_EXPIRATION: i64 = 1 << 32;
/// The longest token accepted as a bearer credential: a JWT of ours is a few hundred bytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00];

/// An object a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Private {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

/// A token's claims, named as Kubernetes names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub k8s: Private,
}

/// What a token is issued for.
pub struct Grant<'a> {
    pub namespace: &'a str,
    pub service_account: Ref,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub pod: Option<Ref>,
    pub secret: Option<Ref>,
    pub node: Option<Ref>,
}

/// The signing key, its public half, and the issuer.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    issuer: String,
    jwks: Value,
    /// Tokens whose signature, issuer and subject were checked, with their claims: a
    /// controller presents the same token for an hour, and an ES256 check costs tens of
    /// microseconds. At most `VERIFIED_MAX` entries (emptied when full); expiry, validity and
    /// audiences are checked at every use.
    verified: std::sync::Mutex<std::collections::HashMap<Box<str>, std::sync::Arc<Claims>>>,
    /// The cluster CA, put into legacy token Secrets as `ca.crt` (`legacy_token.rs`).
    root_ca: std::sync::OnceLock<String>,
}

const VERIFIED_MAX: usize = 8192;

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("kid", &self.kid).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl Keys {
    /// From a PKCS#8 PEM P-256 private key (as rcgen and `openssl genpkey` write it).
    pub fn from_pem(pem: &str, issuer: &str) -> Result<Keys, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("not a PKCS#8 PEM private key: {e}"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der(), &ring::rand::SystemRandom::new())
            .map_err(|e| format!("not an ECDSA P-256 key: {e}"))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err("the public key is not an uncompressed P-256 point".into());
        }
        let (x, y) = (B64URL.encode(&point[1..33]), B64URL.encode(&point[33..65]));
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(point);
        // As Kubernetes: the key id is the SHA-256 of the public key's DER, base64url.
        let kid = B64URL.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| format!("the public key: {e}"))?;
        let encoding = EncodingKey::from_ec_der(der.secret_pkcs8_der());
        let jwks = json!({"keys": [{"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y}]});
        Ok(Keys { encoding, decoding, kid, issuer: issuer.to_string(), jwks, verified: Default::default(), root_ca: Default::default() })
    }

    /// Sets the CA certificate legacy token Secrets carry (once).
    pub fn set_root_ca(&self, pem: &str) {
        let _ = self.root_ca.set(pem.to_string());
    }

    pub fn root_ca(&self) -> Option<&str> {
        self.root_ca.get().map(String::as_str)
    }

    /// Signs legacy ServiceAccount token claims (`legacy_token.rs`).
    pub fn sign_legacy(&self, claims: &crate::legacy_token::Claims) -> Result<String, String> {
        jsonwebtoken::encode(&crate::legacy_token::header(&self.kid), claims, &self.encoding).map_err(|e| format!("signing: {e}"))
    }

    /// Checks a token's signature with this key under `v` and decodes its claims.
    pub fn decode_legacy<T: serde::de::DeserializeOwned>(&self, token: &str, v: &Validation) -> Result<T, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long".into());
        }
        jsonwebtoken::decode::<T>(token, &self.decoding, v).map(|d| d.claims).map_err(|e| e.to_string())
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences the API server itself accepts: its issuer, as Kubernetes defaults
    /// `--api-audiences`.
    pub fn api_audiences(&self) -> Vec<String> {
        vec![self.issuer.clone()]
    }

    /// The public keys, as `/openid/v1/jwks` serves them.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The issuer's OpenID discovery document; `jwks_uri` under `external` (the server's URL).
    pub fn discovery(&self, external: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", external.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// A signed token for `g`, valid from `now` (seconds since the epoch), and its claims.
    pub fn issue(&self, g: Grant<'_>, now: i64) -> Result<(String, Claims), String> {
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: format!("system:serviceaccount:{}:{}", g.namespace, g.service_account.name),
            aud: g.audiences,
            exp: now + g.expiration_seconds,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            k8s: Private { namespace: g.namespace.to_string(), serviceaccount: g.service_account, pod: g.pod, secret: g.secret, node: g.node },
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| format!("signing: {e}"))?;
        Ok((token, claims))
    }

    /// The claims of `token` if it is one of ours: signed by this key, from this issuer, for
    /// one of `audiences`, and within its validity at `now`. `Err` says why not.
    pub fn verify(&self, token: &str, audiences: &[String], now: i64) -> Result<Claims, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long".into());
        }
        let cached = self.verified.lock().unwrap().get(token).cloned();
        let c = match cached {
            Some(c) => c,
            None => {
                let c = std::sync::Arc::new(self.check_signature(token)?);
                let mut map = self.verified.lock().unwrap();
                if map.len() >= VERIFIED_MAX {
                    map.clear();
                }
                map.insert(token.into(), c.clone());
                c
            }
        };
        if !c.aud.iter().any(|a| audiences.contains(a)) {
            return Err("the token is not for this audience".into());
        }
        if now >= c.exp {
            return Err("token has expired".into());
        }
        if now < c.nbf {
            return Err("token is not valid yet".into());
        }
        Ok((*c).clone())
    }

    /// The claims of `token` if this key signed it for this issuer and its subject names its
    /// ServiceAccount (what does not change with time or the audience asked).
    fn check_signature(&self, token: &str) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        // Audiences and validity are checked by the caller against what it asks and its
        // own clock (tests move it).
        v.validate_aud = false;
        v.validate_nbf = false;
        v.validate_exp = false;
        v.leeway = 0;
        let c = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| e.to_string())?.claims;
        if c.sub != format!("system:serviceaccount:{}:{}", c.k8s.namespace, c.k8s.serviceaccount.name) {
            return Err("the subject does not name the token's ServiceAccount".into());
        }
        Ok(c)
    }

    /// Whether `token` looks like a JWT at all (three dot-separated parts): other tokens are
    /// not this module's to judge.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::from_pem(&rcgen::KeyPair::generate().unwrap().serialize_pem(), DEFAULT_ISSUER).unwrap()
    }

    fn grant(aud: &[&str]) -> Grant<'static> {
        Grant {
            namespace: "dev",
            service_account: Ref { name: "ci".into(), uid: "u1".into() },
            audiences: aud.iter().map(|s| s.to_string()).collect(),
            expiration_seconds: 3600,
            pod: None,
            secret: None,
            node: None,
        }
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_token_verifies_with_its_key_for_its_audience_until_it_expires() {
        let k = keys();
        let (t, issued) = k.issue(grant(&[DEFAULT_ISSUER]), NOW).unwrap();
        let aud = k.api_audiences();
        assert_eq!(k.verify(&t, &aud, NOW).unwrap(), issued);
        assert_eq!(issued.sub, "system:serviceaccount:dev:ci");
        assert!(k.verify(&t, &aud, NOW + 3599).is_ok());
        assert!(k.verify(&t, &aud, NOW + 3600).unwrap_err().contains("expired"));
        assert!(k.verify(&t, &aud, NOW - 10).unwrap_err().contains("not valid yet"));
    }

    #[test]
    fn another_key_another_audience_or_a_changed_payload_is_refused() {
        let (k, other) = (keys(), keys());
        let (t, _) = k.issue(grant(&["vault"]), NOW).unwrap();
        let aud = k.api_audiences();
        assert!(k.verify(&t, &aud, NOW).unwrap_err().contains("audience"), "a token for another audience");
        assert!(k.verify(&t, &["vault".into()], NOW).is_ok());
        assert!(k.verify(&t, &aud, NOW).unwrap_err().contains("audience"), "still refused once its signature is known");
        assert!(k.verify(&t, &["vault".into()], NOW).is_ok());
        assert!(other.verify(&t, &["vault".into()], NOW).is_err(), "signed by another key");
        // Swap the payload for one naming another ServiceAccount: the signature no longer fits.
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("system:serviceaccount:kube-system:admin");
        let forged = format!("{}.{}.{}", parts[0], B64URL.encode(serde_json::to_vec(&claims).unwrap()), parts[2]);
        assert!(k.verify(&forged, &["vault".into()], NOW).is_err());
        // Unsigned (alg none) is refused.
        let none = format!("{}.{}.", B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(k.verify(&none, &["vault".into()], NOW).is_err());
        assert!(k.verify("a.b.c", &aud, NOW).is_err());
        assert!(k.verify(&"x".repeat(MAX_TOKEN_BYTES + 1), &aud, NOW).is_err());
    }

    #[test]
    fn the_jwks_names_the_key_the_tokens_carry() {
        let k = keys();
        let (t, _) = k.issue(grant(&["x"]), NOW).unwrap();
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.kid.as_deref(), k.jwks()["keys"][0]["kid"].as_str());
        assert_eq!(k.jwks()["keys"][0]["alg"], "ES256");
        // The published key checks the token by itself.
        let j = &k.jwks()["keys"][0];
        let dk = DecodingKey::from_ec_components(j["x"].as_str().unwrap(), j["y"].as_str().unwrap()).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["x"]);
        v.validate_exp = false;
        assert!(jsonwebtoken::decode::<Claims>(&t, &dk, &v).is_ok());
        assert!(Keys::from_pem("not a key", DEFAULT_ISSUER).is_err());
    }
}
