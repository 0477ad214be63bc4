//! CertificateSigningRequests (`certificates.k8s.io/v1`), as Kubernetes' registry and its
//! CertificateApproval and CertificateSigning admission plugins treat them:
//! - on create, `spec.request` must be a PEM PKCS#10 request whose signature checks,
//!   `spec.signerName` a `domain/path` name and `spec.usages` known usages; the requester's
//!   identity (`spec.username`, `uid`, `groups`, `extra`) is set by the server from who asks,
//!   never taken from the body, and `status` starts empty;
//! - the `approval` subresource changes only `status.conditions`, and adding an `Approved` or
//!   `Denied` condition needs the `approve` verb on `signers` named by the signer (or its
//!   `domain/*`) in `certificates.k8s.io`;
//! - the `status` subresource sets `status.certificate` only on an approved request, which
//!   needs the `sign` verb on the signer likewise, and the certificate must be PEM.

use base64::Engine;
use serde_json::{Value, json};

use crate::authn::UserInfo;
use crate::rbac::{Attributes, Index, Target, authorized};
use crate::status::ApiError;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

/// Kubernetes' key usages (`certificates.k8s.io/v1` KeyUsage).
const USAGES: &[&str] = &[
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
    "decipher only", "any", "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
    "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
];

fn invalid(field: &str, why: impl Into<String>, name: &str) -> ApiError {
    ApiError::invalid("certificates.k8s.io", "CertificateSigningRequest", name, vec![(field.to_string(), why.into())])
}

/// The DER of a request's `spec.request` (base64 of PEM), if it is a PKCS#10 request.
pub fn request_der(obj: &Value) -> Result<Vec<u8>, String> {
    let b64 = obj["spec"]["request"].as_str().ok_or("Required value")?;
    let pem = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| "Invalid value: not base64")?;
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).map_err(|_| "Invalid value: not a PEM block")?;
    if p.label != "CERTIFICATE REQUEST" && p.label != "NEW CERTIFICATE REQUEST" {
        return Err(format!("Invalid value: a PEM {:?} block, not CERTIFICATE REQUEST", p.label));
    }
    let (_, req) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&p.contents).map_err(|_| "Invalid value: not a PKCS#10 certificate request")?;
    req.verify_signature().map_err(|_| "Invalid value: the request's signature does not check")?;
    Ok(p.contents)
}

/// Validates a new request and sets the requester from `user`.
pub fn prepare_create(user: Option<&UserInfo>, obj: &mut Value) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    request_der(obj).map_err(|e| invalid("spec.request", e, &name))?;
    let signer = obj["spec"]["signerName"].as_str().unwrap_or("");
    let well_formed = signer.split_once('/').is_some_and(|(d, p)| !d.is_empty() && !p.is_empty());
    if !well_formed || signer.len() > 571 {
        return Err(invalid("spec.signerName", "Required value: a signer name of the form domain/path", &name));
    }
    let usages = obj["spec"]["usages"].as_array().cloned().unwrap_or_default();
    if usages.is_empty() {
        return Err(invalid("spec.usages", "Required value", &name));
    }
    for u in &usages {
        if !u.as_str().is_some_and(|u| USAGES.contains(&u)) {
            return Err(invalid("spec.usages", format!("Unsupported value: {u}"), &name));
        }
    }
    if let Some(e) = obj["spec"]["expirationSeconds"].as_i64()
        && e < 600
    {
        return Err(invalid("spec.expirationSeconds", "Invalid value: may not specify a duration less than 600 seconds (10 minutes)", &name));
    }
    let spec = obj["spec"].as_object_mut().ok_or_else(|| invalid("spec", "Required value", &name))?;
    for f in ["username", "uid", "groups", "extra"] {
        spec.remove(f);
    }
    if let Some(u) = user {
        spec.insert("username".into(), json!(u.name));
        if !u.uid.is_empty() {
            spec.insert("uid".into(), json!(u.uid));
        }
        spec.insert("groups".into(), json!(u.groups));
        if !u.extra.is_empty() {
            spec.insert("extra".into(), json!(u.extra));
        }
    }
    obj.as_object_mut().unwrap().remove("status");
    Ok(())
}

/// The object an `approval` write leaves: the current one with the incoming conditions.
pub fn approval_next(cur: &Value, incoming: &Value) -> Value {
    let mut n = cur.clone();
    match incoming["status"].get("conditions") {
        Some(c) => n["status"]["conditions"] = c.clone(),
        None => {
            if let Some(s) = n.get_mut("status").and_then(|s| s.as_object_mut()) {
                s.remove("conditions");
            }
        }
    }
    n
}

fn has_condition(obj: &Value, ty: &str) -> bool {
    obj["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == ty && c["status"].as_str().unwrap_or("True") == "True")
}

/// Whether `user` may `verb` (approve, sign) for `signer`: on the signer's name or its
/// `domain/*`, as Kubernetes asks.
fn may(ix: &Index, user: &UserInfo, verb: &str, signer: &str) -> bool {
    if user.groups.iter().any(|g| g == crate::rbac::MASTERS) {
        return true;
    }
    let on = |name: String| Attributes {
        verb: verb.into(),
        target: Target::Resource { group: "certificates.k8s.io".into(), resource: "signers".into(), subresource: String::new(), namespace: String::new(), name },
    };
    let domain = signer.split_once('/').map(|(d, _)| format!("{d}/*")).unwrap_or_default();
    authorized(ix, user, &on(signer.to_string())) || authorized(ix, user, &on(domain))
}

/// CertificateApproval and CertificateSigning, on an update through `sub` from `cur` to
/// `next` by `user`.
pub fn admit_update(ix: &Index, user: Option<&UserInfo>, sub: Option<&str>, cur: &Value, next: &Value) -> Result<(), ApiError> {
    let Some(user) = user else { return Ok(()) };
    let signer = cur["spec"]["signerName"].as_str().unwrap_or("");
    let name = cur["metadata"]["name"].as_str().unwrap_or("");
    if has_condition(next, "Approved") && has_condition(next, "Denied") {
        return Err(invalid("status.conditions", "Invalid value: Approved and Denied conditions are mutually exclusive", name));
    }
    let decided = |o: &Value| (has_condition(o, "Approved"), has_condition(o, "Denied"));
    if sub == Some("approval") && decided(next) != decided(cur) && !may(ix, user, "approve", signer) {
        return Err(ApiError::forbidden(format!("certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: user not permitted to approve requests with signerName \"{signer}\"")));
    }
    let cert = next["status"]["certificate"].as_str().unwrap_or("");
    if sub == Some("status") && cert != cur["status"]["certificate"].as_str().unwrap_or("") && !cert.is_empty() {
        if !has_condition(cur, "Approved") || has_condition(cur, "Denied") {
            return Err(invalid("status.certificate", "Forbidden: the request is not approved", name));
        }
        if !may(ix, user, "sign", signer) {
            return Err(ApiError::forbidden(format!("certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: user not permitted to sign requests with signerName \"{signer}\"")));
        }
        let pem = base64::engine::general_purpose::STANDARD.decode(cert).unwrap_or_default();
        if x509_parser::pem::parse_x509_pem(&pem).map(|(_, p)| p.label != "CERTIFICATE").unwrap_or(true) {
            return Err(invalid("status.certificate", "Invalid value: not a PEM certificate", name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "system:node:n1");
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn csr(request: &str) -> Value {
        let b64 = base64::engine::general_purpose::STANDARD.encode(request);
        json!({"metadata": {"name": "c1"}, "spec": {"request": b64, "signerName": KUBELET_CLIENT_SIGNER, "usages": ["digital signature", "client auth"], "username": "forged", "groups": ["system:masters"]}, "status": {"certificate": "x"}})
    }

    #[test]
    fn a_request_is_checked_and_its_requester_is_who_asked() {
        let mut o = csr(&request_pem());
        let u = UserInfo::new("system:bootstrap:abcdef", vec!["system:bootstrappers".into(), "system:authenticated".into()]);
        prepare_create(Some(&u), &mut o).unwrap();
        assert_eq!(o["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(o["spec"]["groups"], json!(["system:bootstrappers", "system:authenticated"]));
        assert!(o.get("status").is_none());
        for (bad, field) in [
            (csr("not pem"), "spec.request"),
            (csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), "spec.request"),
            ({ let mut o = csr(&request_pem()); o["spec"]["signerName"] = json!("nodomain"); o }, "spec.signerName"),
            ({ let mut o = csr(&request_pem()); o["spec"]["usages"] = json!(["flying"]); o }, "spec.usages"),
            ({ let mut o = csr(&request_pem()); o["spec"]["expirationSeconds"] = json!(60); o }, "spec.expirationSeconds"),
        ] {
            let mut b = bad;
            let e = prepare_create(Some(&u), &mut b).unwrap_err();
            assert!(format!("{e:?}").contains(field), "{field}: {e:?}");
        }
        // A tampered request: its signature no longer checks.
        let pem = request_pem();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        let mut bent = der.clone();
        let at = bent.len() / 3;
        bent[at] ^= 1;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bent);
        let tampered = format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
        assert!(prepare_create(Some(&u), &mut csr(&tampered)).is_err());
    }

    #[test]
    fn approving_and_signing_need_their_verbs_on_the_signer() {
        let role = |name: &str, verb: &str, signer: &str| {
            json!({"metadata": {"name": name}, "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": [verb], "resourceNames": [signer]}]})
        };
        let crb = |role: &str, user: &str| json!({"metadata": {"name": role}, "roleRef": {"kind": "ClusterRole", "name": role}, "subjects": [{"kind": "User", "name": user}]});
        let ix = Index::build(
            &[role("approver", "approve", KUBELET_CLIENT_SIGNER), role("signer", "sign", "kubernetes.io/*")],
            &[],
            &[crb("approver", "alice"), crb("signer", "sam")],
            &[],
        );
        let alice = UserInfo::new("alice", vec![]);
        let sam = UserInfo::new("sam", vec![]);
        let cur = json!({"metadata": {"name": "c1"}, "spec": {"signerName": KUBELET_CLIENT_SIGNER}});
        let approved = approval_next(&cur, &json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}}));
        assert!(admit_update(&ix, Some(&alice), Some("approval"), &cur, &approved).is_ok());
        assert!(admit_update(&ix, Some(&sam), Some("approval"), &cur, &approved).is_err(), "sam may sign, not approve");
        let both = approval_next(&cur, &json!({"status": {"conditions": [{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]}}));
        assert!(admit_update(&ix, Some(&alice), Some("approval"), &cur, &both).is_err());
        let cert = base64::engine::general_purpose::STANDARD.encode("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let mut signed = approved.clone();
        signed["status"]["certificate"] = json!(cert);
        assert!(admit_update(&ix, Some(&sam), Some("status"), &approved, &signed).is_ok(), "sam signs kubernetes.io/*");
        assert!(admit_update(&ix, Some(&alice), Some("status"), &approved, &signed).is_err(), "alice may not sign");
        let mut unapproved = cur.clone();
        unapproved["status"]["certificate"] = json!(cert);
        assert!(admit_update(&ix, Some(&sam), Some("status"), &cur, &unapproved).is_err(), "nothing is signed before approval");
    }
}
