//! Encryption at rest, configured as kube-apiserver's `--encryption-provider-config`
//! (`apiserver.config.k8s.io/v1` EncryptionConfiguration): for each group of resources, a list
//! of providers (`aesgcm`, `aescbc`, `secretbox`, `identity`), each with named keys. The first
//! provider's first key encrypts what is written; every listed key decrypts. A stored value
//! carries `k8s:enc:<provider>:v1:<key name>:` before its ciphertext, as in Kubernetes, so a
//! reader knows which key to use, and a value without it is plaintext.
//!
//! The API server seals a value just before it goes into the store (`seal`) and opens it when
//! it comes out (`Stored::from_kv`), so the watch caches and every handler see plaintext and
//! the store, its log, its snapshots and `capstan kv get` see ciphertext. The configuration is
//! process-wide (`install`), read once at start: the store is too.
//!
//! Ciphertext layouts, as Kubernetes writes them: aesgcm `nonce(12) | sealed`, with the store
//! key as additional authenticated data (a value copied under another key does not open);
//! aescbc `iv(16) | CBC with PKCS#7 padding`; secretbox `nonce(24) | sealed`.

use std::sync::OnceLock;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::AesGcm;
use base64::Engine;
use bytes::Bytes;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use rand::RngCore;
use serde::Deserialize;

const PREFIX: &[u8] = b"k8s:enc:";

/// One key's cipher.
enum Cipher {
    Gcm128(Box<AesGcm<aes::Aes128, U12>>),
    Gcm192(Box<AesGcm<aes::Aes192, U12>>),
    Gcm256(Box<AesGcm<aes::Aes256, U12>>),
    Cbc { key: Vec<u8> },
    Secretbox(Box<crypto_secretbox::XSalsa20Poly1305>),
}

struct Key {
    /// `k8s:enc:<provider>:v1:<name>:`
    prefix: Vec<u8>,
    cipher: Cipher,
}

enum Provider {
    Identity,
    Keys(Vec<Key>),
}

/// Resources (`secrets`, `deployments.apps`, `*.apps`, `*.*`) and their providers.
struct Rule {
    resources: Vec<(String, String)>,
    providers: Vec<Provider>,
}

/// A parsed EncryptionConfiguration.
pub struct Config {
    rules: Vec<Rule>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("rules", &self.rules.len()).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    resources: Vec<ResourcesDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesDoc {
    resources: Vec<String>,
    providers: Vec<ProviderDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderDoc {
    aesgcm: Option<KeysDoc>,
    aescbc: Option<KeysDoc>,
    secretbox: Option<KeysDoc>,
    identity: Option<serde_json::Value>,
    kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysDoc {
    keys: Vec<KeyDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDoc {
    name: String,
    secret: String,
}

impl Config {
    /// Parses the file's YAML; an error names the field (and, for YAML errors, the line).
    pub fn parse(text: &str) -> Result<Config, String> {
        let doc: Doc = crate::config_yaml::parse(text)?;
        if doc.kind != "EncryptionConfiguration" || doc.api_version != "apiserver.config.k8s.io/v1" {
            return Err(format!("kind/apiVersion: want apiserver.config.k8s.io/v1 EncryptionConfiguration, got {} {}", doc.api_version, doc.kind));
        }
        let mut rules = Vec::new();
        for (i, r) in doc.resources.iter().enumerate() {
            let at = format!("resources[{i}]");
            if r.resources.is_empty() {
                return Err(format!("{at}.resources: at least one resource is required"));
            }
            if r.providers.is_empty() {
                return Err(format!("{at}.providers: at least one provider is required"));
            }
            let mut resources = Vec::new();
            for (j, name) in r.resources.iter().enumerate() {
                let (res, group) = name.split_once('.').unwrap_or((name.as_str(), ""));
                if res.is_empty() || (res == "*" && name == "*") {
                    return Err(format!("{at}.resources[{j}]: {name:?} is not a resource (use \"secrets\", \"deployments.apps\", \"*.apps\" or \"*.*\")"));
                }
                resources.push((res.to_string(), group.to_string()));
            }
            let mut providers = Vec::new();
            for (j, p) in r.providers.iter().enumerate() {
                let at = format!("{at}.providers[{j}]");
                let set = [p.aesgcm.is_some(), p.aescbc.is_some(), p.secretbox.is_some(), p.identity.is_some(), p.kms.is_some()].iter().filter(|x| **x).count();
                if set != 1 {
                    return Err(format!("{at}: exactly one of aesgcm, aescbc, secretbox, identity must be given, found {set}"));
                }
                if p.kms.is_some() {
                    return Err(format!("{at}.kms: KMS providers are not supported by capstan"));
                }
                let provider = if p.identity.is_some() {
                    Provider::Identity
                } else {
                    let (kind, keys) = if let Some(k) = &p.aesgcm {
                        ("aesgcm", k)
                    } else if let Some(k) = &p.aescbc {
                        ("aescbc", k)
                    } else {
                        ("secretbox", p.secretbox.as_ref().unwrap())
                    };
                    if keys.keys.is_empty() {
                        return Err(format!("{at}.{kind}.keys: at least one key is required"));
                    }
                    let mut out = Vec::new();
                    for (k, key) in keys.keys.iter().enumerate() {
                        let at = format!("{at}.{kind}.keys[{k}]");
                        if key.name.is_empty() || key.name.contains(':') {
                            return Err(format!("{at}.name: a key needs a name without ':'"));
                        }
                        let secret = base64::engine::general_purpose::STANDARD.decode(key.secret.trim()).map_err(|e| format!("{at}.secret: not base64: {e}"))?;
                        let cipher = cipher(kind, &secret).map_err(|e| format!("{at}.secret: {e}"))?;
                        out.push(Key { prefix: format!("k8s:enc:{kind}:v1:{}:", key.name).into_bytes(), cipher });
                    }
                    Provider::Keys(out)
                };
                providers.push(provider);
            }
            rules.push(Rule { resources, providers });
        }
        Ok(Config { rules })
    }

    /// The providers of the first rule naming the resource of store key `key`
    /// (`/registry/<group or core>/<resource>/...`), if any.
    fn providers_for(&self, key: &[u8]) -> Option<&[Provider]> {
        let rest = key.strip_prefix(b"/registry/")?;
        let mut parts = rest.splitn(3, |b| *b == b'/');
        let group = std::str::from_utf8(parts.next()?).ok()?;
        let group = if group == "core" { "" } else { group };
        let resource = std::str::from_utf8(parts.next()?).ok()?;
        self.rules
            .iter()
            .find(|r| r.resources.iter().any(|(res, g)| (res == "*" || res == resource) && (g == "*" || g == group)))
            .map(|r| r.providers.as_slice())
    }

    /// The value to store under `key`: sealed with the first provider for its resource.
    pub fn seal(&self, key: &[u8], plain: Bytes) -> Result<Bytes, String> {
        let Some(providers) = self.providers_for(key) else { return Ok(plain) };
        let Some(Provider::Keys(keys)) = providers.first() else { return Ok(plain) };
        let k = &keys[0];
        let mut out = k.prefix.clone();
        match &k.cipher {
            Cipher::Gcm128(c) => gcm_seal(c.as_ref(), key, &plain, &mut out)?,
            Cipher::Gcm192(c) => gcm_seal(c.as_ref(), key, &plain, &mut out)?,
            Cipher::Gcm256(c) => gcm_seal(c.as_ref(), key, &plain, &mut out)?,
            Cipher::Cbc { key: secret } => {
                let mut iv = [0u8; 16];
                rand::rng().fill_bytes(&mut iv);
                out.extend_from_slice(&iv);
                let ct = match secret.len() {
                    16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(secret, &iv).map_err(|e| e.to_string())?.encrypt_padded_vec_mut::<Pkcs7>(&plain),
                    24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(secret, &iv).map_err(|e| e.to_string())?.encrypt_padded_vec_mut::<Pkcs7>(&plain),
                    _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(secret, &iv).map_err(|e| e.to_string())?.encrypt_padded_vec_mut::<Pkcs7>(&plain),
                };
                out.extend_from_slice(&ct);
            }
            Cipher::Secretbox(c) => {
                let mut nonce = [0u8; 24];
                rand::rng().fill_bytes(&mut nonce);
                out.extend_from_slice(&nonce);
                let ct = c.encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plain.as_ref()).map_err(|_| "secretbox: sealing failed".to_string())?;
                out.extend_from_slice(&ct);
            }
        }
        Ok(Bytes::from(out))
    }

    /// The plaintext of a stored value: `value` itself when it has no `k8s:enc:` prefix; else
    /// opened with the key its prefix names, among the providers of `key`'s resource.
    pub fn open(&self, key: &[u8], value: &Bytes) -> Result<Bytes, String> {
        if !value.starts_with(PREFIX) {
            return Ok(value.clone());
        }
        let providers = self.providers_for(key).unwrap_or(&[]);
        for p in providers {
            let Provider::Keys(keys) = p else { continue };
            for k in keys {
                if let Some(body) = value.strip_prefix(k.prefix.as_slice()) {
                    return open_with(&k.cipher, key, body).map(Bytes::from);
                }
            }
        }
        Err(format!("the stored value is encrypted with {}, a key this server is not configured with for its resource", describe_prefix(value)))
    }
}

/// `provider key NAME` from a value's prefix, for errors.
fn describe_prefix(value: &[u8]) -> String {
    let head = &value[PREFIX.len()..value.len().min(PREFIX.len() + 80)];
    let s = String::from_utf8_lossy(head);
    let mut parts = s.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(p), Some(_), Some(name)) => format!("{p} key {name:?}"),
        _ => "an unknown provider".into(),
    }
}

fn cipher(kind: &str, secret: &[u8]) -> Result<Cipher, String> {
    match (kind, secret.len()) {
        ("aesgcm", 16) => Ok(Cipher::Gcm128(Box::new(AesGcm::new_from_slice(secret).map_err(|e| e.to_string())?))),
        ("aesgcm", 24) => Ok(Cipher::Gcm192(Box::new(AesGcm::new_from_slice(secret).map_err(|e| e.to_string())?))),
        ("aesgcm", 32) => Ok(Cipher::Gcm256(Box::new(AesGcm::new_from_slice(secret).map_err(|e| e.to_string())?))),
        ("aescbc", 16 | 24 | 32) => Ok(Cipher::Cbc { key: secret.to_vec() }),
        ("secretbox", 32) => Ok(Cipher::Secretbox(Box::new(crypto_secretbox::XSalsa20Poly1305::new_from_slice(secret).map_err(|e| e.to_string())?))),
        ("secretbox", n) => Err(format!("a secretbox key is 32 bytes, this one is {n}")),
        (_, n) => Err(format!("an AES key is 16, 24 or 32 bytes, this one is {n}")),
    }
}

fn gcm_seal<C: Aead>(c: &C, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    let ct = c.encrypt(aes_gcm::Nonce::from_slice(&nonce), Payload { msg: plain, aad }).map_err(|_| "aesgcm: sealing failed".to_string())?;
    out.extend_from_slice(&ct);
    Ok(())
}

fn gcm_open<C: Aead>(c: &C, aad: &[u8], body: &[u8]) -> Result<Vec<u8>, String> {
    if body.len() < 12 + 16 {
        return Err("aesgcm: the stored value is too short".into());
    }
    let (nonce, ct) = body.split_at(12);
    c.decrypt(aes_gcm::Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| "aesgcm: the stored value does not decrypt (wrong key, or altered)".into())
}

fn open_with(c: &Cipher, key: &[u8], body: &[u8]) -> Result<Vec<u8>, String> {
    match c {
        Cipher::Gcm128(g) => gcm_open(g.as_ref(), key, body),
        Cipher::Gcm192(g) => gcm_open(g.as_ref(), key, body),
        Cipher::Gcm256(g) => gcm_open(g.as_ref(), key, body),
        Cipher::Cbc { key: secret } => {
            if body.len() < 32 || body.len() % 16 != 0 {
                return Err("aescbc: the stored value is not whole blocks".into());
            }
            let (iv, ct) = body.split_at(16);
            let bad = |_| "aescbc: the stored value does not decrypt (wrong key, or altered)".to_string();
            match secret.len() {
                16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(secret, iv).map_err(|e| e.to_string())?.decrypt_padded_vec_mut::<Pkcs7>(ct).map_err(bad),
                24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(secret, iv).map_err(|e| e.to_string())?.decrypt_padded_vec_mut::<Pkcs7>(ct).map_err(bad),
                _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(secret, iv).map_err(|e| e.to_string())?.decrypt_padded_vec_mut::<Pkcs7>(ct).map_err(bad),
            }
        }
        Cipher::Secretbox(s) => {
            if body.len() < 24 + 16 {
                return Err("secretbox: the stored value is too short".into());
            }
            let (nonce, ct) = body.split_at(24);
            s.decrypt(crypto_secretbox::Nonce::from_slice(nonce), ct).map_err(|_| "secretbox: the stored value does not decrypt (wrong key, or altered)".into())
        }
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Makes `c` the process's configuration; once, at start, before the API serves.
pub fn install(c: Config) -> Result<(), String> {
    CONFIG.set(c).map_err(|_| "encryption at rest is already configured".to_string())
}

/// `plain` as it goes into the store under `key`.
pub fn seal(key: &[u8], plain: Bytes) -> Result<Bytes, String> {
    match CONFIG.get() {
        Some(c) => c.seal(key, plain),
        None => Ok(plain),
    }
}

/// Whether values under `key` are sealed by a configured provider: their writes are never
/// skipped as no-ops, since rewriting is how they move to a new key (Kubernetes writes a
/// value read with a key that is not the first, its "stale" transform).
pub fn configured_for(key: &[u8]) -> bool {
    CONFIG.get().is_some_and(|c| c.providers_for(key).is_some())
}

/// A stored value as plaintext.
pub fn open(key: &[u8], value: &Bytes) -> Result<Bytes, String> {
    match CONFIG.get() {
        Some(c) => c.open(key, value),
        None if value.starts_with(PREFIX) => Err(format!("the stored value is encrypted with {}, and this server has no --encryption-provider-config", describe_prefix(value))),
        None => Ok(value.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(n: usize, fill: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode(vec![fill; n])
    }

    fn config(providers: &str) -> Config {
        Config::parse(&format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, \"*.apps\"]\n  providers:\n{providers}")).unwrap()
    }

    const SECRET: &[u8] = b"/registry/core/secrets/default/s";

    #[test]
    fn each_provider_round_trips_and_writes_kubernetes_prefix() {
        for (kind, n) in [("aesgcm", 16), ("aesgcm", 24), ("aesgcm", 32), ("aescbc", 32), ("aescbc", 16), ("secretbox", 32)] {
            let c = config(&format!("  - {kind}:\n      keys:\n      - name: k1\n        secret: {}\n", b64(n, 7)));
            let plain = Bytes::from_static(b"\x05\0\0\0{\"data\":{\"password\":\"hunter2\"}}");
            let sealed = c.seal(SECRET, plain.clone()).unwrap();
            assert!(sealed.starts_with(format!("k8s:enc:{kind}:v1:k1:").as_bytes()), "{kind}");
            assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "{kind} leaves the plaintext readable");
            assert_eq!(c.open(SECRET, &sealed).unwrap(), plain, "{kind}/{n}");
            // Altered ciphertext does not open (CBC has no MAC: it may, or fail on padding).
            if kind != "aescbc" {
                let mut bad = sealed.to_vec();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(c.open(SECRET, &Bytes::from(bad)).is_err(), "{kind}");
            }
        }
    }

    #[test]
    fn aesgcm_binds_the_value_to_its_key() {
        let c = config(&format!("  - aesgcm:\n      keys:\n      - name: k1\n        secret: {}\n", b64(32, 1)));
        let sealed = c.seal(SECRET, Bytes::from_static(b"\x05\0\0\0{}")).unwrap();
        assert!(c.open(b"/registry/core/secrets/default/other", &sealed).is_err());
    }

    #[test]
    fn the_first_key_writes_every_key_reads_and_other_resources_stay_plain() {
        let old = config(&format!("  - aescbc:\n      keys:\n      - name: old\n        secret: {}\n", b64(32, 1)));
        let rotated = config(&format!("  - aescbc:\n      keys:\n      - name: new\n        secret: {}\n      - name: old\n        secret: {}\n  - identity: {{}}\n", b64(32, 2), b64(32, 1)));
        let plain = Bytes::from_static(b"\x05\0\0\0{\"a\":1}");
        let by_old = old.seal(SECRET, plain.clone()).unwrap();
        assert_eq!(rotated.open(SECRET, &by_old).unwrap(), plain);
        let by_new = rotated.seal(SECRET, plain.clone()).unwrap();
        assert!(by_new.starts_with(b"k8s:enc:aescbc:v1:new:"));
        assert!(old.open(SECRET, &by_new).unwrap_err().contains("aescbc key \"new\""));
        // Plaintext (written before encryption was on) still reads.
        assert_eq!(rotated.open(SECRET, &plain).unwrap(), plain);
        // Resources no rule names are stored as they are; "*.apps" covers the apps group.
        let cm = b"/registry/core/configmaps/default/c";
        assert_eq!(rotated.seal(cm, plain.clone()).unwrap(), plain);
        assert!(rotated.seal(b"/registry/apps/deployments/default/d", plain.clone()).unwrap().starts_with(b"k8s:enc:"));
        // identity first: written as plaintext, older ciphertext still read.
        let off = config(&format!("  - identity: {{}}\n  - aescbc:\n      keys:\n      - name: new\n        secret: {}\n", b64(32, 2)));
        assert_eq!(off.seal(SECRET, plain.clone()).unwrap(), plain);
        assert_eq!(off.open(SECRET, &by_new).unwrap(), plain);
    }

    #[test]
    fn a_malformed_configuration_names_the_field() {
        let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n";
        for (providers, want) in [
            ("  - aescbc:\n      keys:\n      - name: k\n        secret: AAAA\n", "resources[0].providers[0].aescbc.keys[0].secret: an AES key is 16, 24 or 32 bytes"),
            ("  - aesgcm:\n      keys:\n      - name: k\n        secret: '!!'\n", "resources[0].providers[0].aesgcm.keys[0].secret: not base64"),
            ("  - secretbox:\n      keys: []\n", "resources[0].providers[0].secretbox.keys: at least one key"),
            ("  - identity: {}\n    aescbc:\n      keys: []\n", "resources[0].providers[0]: exactly one of"),
            ("  - kms:\n      name: x\n", "kms: KMS providers are not supported"),
            ("  - aescbcc: {}\n", "unknown field `aescbcc`"),
        ] {
            let err = Config::parse(&format!("{head}{providers}")).err().unwrap_or_default();
            assert!(err.contains(want), "{providers:?}: {err}");
        }
        assert!(Config::parse("apiVersion: v1\nkind: Pod\nresources: []\n").unwrap_err().contains("EncryptionConfiguration"));
        assert!(Config::parse("resources: [\n").unwrap_err().contains("line"));
    }
}
