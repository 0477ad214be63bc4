//! The certificate controllers, as kube-controller-manager's csrapproving and csrsigning:
//! - approving: a pending request to the `kubernetes.io/kube-apiserver-client-kubelet` signer
//!   that is a node client certificate request (CN `system:node:NAME`, O exactly
//!   `system:nodes`, no subject alternative names, usages among digital signature, key
//!   encipherment and client auth) is approved when its requester may `create`
//!   `certificatesigningrequests/nodeclient` (or `selfnodeclient`, when the requester is that
//!   node already, renewing): a SubjectAccessReview asks, so RBAC bindings decide who is
//!   auto-approved (capstan binds bootstrap tokens' kubeadm group, as kubeadm does);
//! - signing: an approved request to the kubelet-client or kube-apiserver-client signer gets a
//!   certificate of the cluster CA (when the controllers hold it), for client auth only,
//!   valid for its `expirationSeconds` or a year (Kubernetes' `--cluster-signing-duration`);
//!   an approved request to the `kubernetes.io/kubelet-serving` signer (never auto-approved,
//!   as in Kubernetes) gets a serving certificate: CN `system:node:NAME`, O exactly
//!   `system:nodes`, at least one DNS or IP name and no other kind, usages digital signature
//!   and server auth (key encipherment allowed); a request that breaks a rule is Failed.
//!   The certificate names exactly the subject that was checked, never more of the request.
//!
//! - cleaning (kube-controller-manager's csrcleaner): a request is deleted an hour after it
//!   was approved, denied or failed, a day after it was made if still pending, and as soon as
//!   the certificate it was issued has expired (`cleanup`).
//!
//! The decisions (`node_client`, `decision`, `cleanup`) are pure and tested as tables; `sync`
//! does the API calls.

use std::time::Duration;

use base64::Engine;
use client::{Client, ClientError};
use serde_json::json;

use client::obj::Obj;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const NODE_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";
const ALLOWED_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
/// A year, as Kubernetes' default `--cluster-signing-duration`.
const DEFAULT_SECONDS: i64 = 365 * 24 * 3600;

/// The cluster CA, to sign with.
#[derive(Clone, Debug)]
pub struct Signer {
    pub ca_pem: String,
    pub ca_key_pem: String,
    /// The longest life of a certificate it signs (`--cluster-signing-duration`; a request's
    /// `expirationSeconds` may ask for less).
    pub duration: Duration,
}

impl Signer {
    pub fn new(ca_pem: String, ca_key_pem: String) -> Signer {
        Signer { ca_pem, ca_key_pem, duration: Duration::from_secs(DEFAULT_SECONDS as u64) }
    }
}

/// What a request asks for, read from its PKCS#10 body.
#[derive(Debug, PartialEq, Eq)]
pub struct Subject {
    pub common_names: Vec<String>,
    pub organizations: Vec<String>,
    pub has_alt_names: bool,
    /// The DNS and IP subject alternative names asked for.
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// Whether it asks for another kind of name too (email, URI, ...).
    pub other_names: bool,
}

/// The PEM of `spec.request` (base64 of PEM in the API).
fn request_pem(csr: &Obj) -> Result<String, String> {
    let b = base64::engine::general_purpose::STANDARD.decode(csr["spec"]["request"].as_str().unwrap_or("")).map_err(|_| "spec.request is not base64")?;
    String::from_utf8(b).map_err(|_| "spec.request is not PEM text".into())
}

/// The subject of a request's PEM.
pub fn subject_of(pem: &str) -> Result<Subject, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| "not PEM")?;
    let (_, req) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&p.contents).map_err(|_| "not a PKCS#10 request")?;
    let info = &req.certification_request_info;
    let strings = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| it.map(|a| a.as_str().map(str::to_string).map_err(|_| "a name that is not a string")).collect::<Result<Vec<_>, _>>();
    let common_names = strings(&mut info.subject.iter_common_name())?;
    let organizations = strings(&mut info.subject.iter_organization())?;
    let (mut dns_names, mut ip_addresses, mut other_names, mut has_alt_names) = (Vec::new(), Vec::new(), false, false);
    for e in req.requested_extensions().into_iter().flatten() {
        if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = e {
            has_alt_names = true;
            for n in &san.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b).map(std::net::IpAddr::from).or_else(|_| <[u8; 16]>::try_from(*b).map(std::net::IpAddr::from)) {
                        Ok(ip) => ip_addresses.push(ip),
                        Err(_) => other_names = true,
                    },
                    _ => other_names = true,
                }
            }
        }
    }
    Ok(Subject { common_names, organizations, has_alt_names, dns_names, ip_addresses, other_names })
}

/// The node a kubelet's certificate request names: CN `system:node:NAME`, O exactly
/// `system:nodes` (the subject both kubelet signers require).
fn node_of(s: &Subject) -> Result<&str, String> {
    let [cn] = s.common_names.as_slice() else { return Err("not exactly one common name".into()) };
    let node = cn.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty()).ok_or("the common name is not system:node:NAME")?;
    if s.organizations != [NODES_GROUP] {
        return Err(format!("the organizations are {:?}, not exactly [{NODES_GROUP}]", s.organizations));
    }
    Ok(node)
}

/// The node a kubelet client request is for, or why it is not one.
pub fn node_client(s: &Subject, usages: &[String]) -> Result<String, String> {
    let node = node_of(s)?;
    if s.has_alt_names {
        return Err("a client certificate names no hosts".into());
    }
    if usages.is_empty() || usages.iter().any(|u| !ALLOWED_USAGES.contains(&u.as_str())) || !usages.iter().any(|u| u == "client auth") {
        return Err(format!("usages {usages:?} are not a kubelet client's"));
    }
    Ok(node.to_string())
}

/// The node a kubelet serving request is for, or why it is not one (Kubernetes' rules for
/// the `kubernetes.io/kubelet-serving` signer).
pub fn kubelet_serving(s: &Subject, usages: &[String]) -> Result<String, String> {
    let node = node_of(s)?;
    if s.other_names {
        return Err("a kubelet serving certificate names only DNS names and IP addresses (no email or URI)".into());
    }
    if s.dns_names.is_empty() && s.ip_addresses.is_empty() {
        return Err("a kubelet serving certificate needs at least one DNS name or IP address".into());
    }
    let mut asked: Vec<&str> = usages.iter().map(String::as_str).collect();
    asked.sort_unstable();
    asked.dedup();
    if asked != ["digital signature", "server auth"] && asked != ["digital signature", "key encipherment", "server auth"] {
        return Err(format!("usages {usages:?} are not a kubelet server's (digital signature and server auth, key encipherment allowed)"));
    }
    Ok(node.to_string())
}

fn has_condition(csr: &Obj, ty: &str) -> bool {
    csr["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == ty)
}

/// What to do with a request now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing (decided, issued, or not ours).
    Nothing,
    /// Ask whether its requester may have it approved, for this subresource
    /// (`nodeclient` or `selfnodeclient`).
    AskApproval(&'static str),
    /// Sign it.
    Sign,
}

pub fn decision(csr: &Obj, can_sign: bool) -> Decision {
    let signer = csr["spec"]["signerName"].as_str().unwrap_or("");
    if has_condition(csr, "Denied") || has_condition(csr, "Failed") {
        return Decision::Nothing;
    }
    if has_condition(csr, "Approved") {
        let issued = csr["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty());
        return if !issued && can_sign && [KUBELET_CLIENT_SIGNER, CLIENT_SIGNER, SERVING_SIGNER].contains(&signer) { Decision::Sign } else { Decision::Nothing };
    }
    if signer != KUBELET_CLIENT_SIGNER {
        return Decision::Nothing;
    }
    let usages: Vec<String> = csr["spec"]["usages"].as_array().into_iter().flatten().filter_map(|u| u.as_str().map(str::to_string)).collect();
    let Ok(node) = request_pem(csr).and_then(|p| subject_of(&p)).and_then(|s| node_client(&s, &usages)) else { return Decision::Nothing };
    let requester = csr["spec"]["username"].as_str().unwrap_or("");
    Decision::AskApproval(if requester == format!("{NODE_PREFIX}{node}") { "selfnodeclient" } else { "nodeclient" })
}

/// How long a decided request is kept (Kubernetes' csrcleaner: an hour).
const DECIDED_SECONDS: i64 = 3600;
/// How long a pending request is kept (a day).
const PENDING_SECONDS: i64 = 24 * 3600;

/// When a request is deleted: now, in so many seconds, or (no times to go by) never.
#[derive(Debug, PartialEq, Eq)]
pub enum Cleanup {
    Now,
    In(i64),
    Never,
}

/// What the cleaner does with `csr` at `now` (Unix seconds).
pub fn cleanup(csr: &Obj, now: i64) -> Cleanup {
    let secs = |v: &Obj| v.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_second());
    let conds = csr["status"]["conditions"].as_array().unwrap_or_default();
    let decided = conds.iter().find(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied" | "Failed")));
    let mut due = match decided {
        Some(c) => secs(&c["lastUpdateTime"]).or_else(|| secs(&csr["metadata"]["creationTimestamp"])).map(|t| t + DECIDED_SECONDS),
        None => secs(&csr["metadata"]["creationTimestamp"]).map(|t| t + PENDING_SECONDS),
    };
    // An issued certificate that has expired goes at once.
    if let Some(b64) = csr["status"]["certificate"].as_str().filter(|s| !s.is_empty())
        && let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(b64)
        && let Ok((_, p)) = x509_parser::pem::parse_x509_pem(&pem)
        && let Ok(cert) = p.parse_x509()
    {
        let end = cert.validity().not_after.timestamp();
        due = Some(due.map_or(end, |d| d.min(end)));
    }
    match due {
        Some(d) if d <= now => Cleanup::Now,
        Some(d) => Cleanup::In(d - now),
        None => Cleanup::Never,
    }
}

/// Acts on one request: approves it (after a SubjectAccessReview) or signs it; once decided,
/// deletes it when `cleanup` says (and is asked again then).
pub async fn sync(c: &Client, csr: &Obj, signer: Option<&Signer>) -> Result<Option<Duration>, String> {
    let name = csr["metadata"]["name"].as_str().unwrap_or("");
    let path = format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}");
    let now = api::meta::now_rfc3339();
    match decision(csr, signer.is_some()) {
        Decision::Nothing => match cleanup(csr, jiff::Timestamp::now().as_second()) {
            Cleanup::Now => match c.delete(&path, &json!({})).await {
                Ok(_) | Err(ClientError::Status { code: 404, .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            // Asked again when due (at most an hour from now: the queue's delays are bounded).
            Cleanup::In(s) => Ok(Some(Duration::from_secs(s.clamp(1, 3600) as u64))),
            Cleanup::Never => Ok(None),
        },
        Decision::AskApproval(sub) => {
            let spec = &csr["spec"];
            let review = json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": spec["username"], "uid": spec["uid"], "groups": spec["groups"], "extra": spec["extra"],
                         "resourceAttributes": {"group": "certificates.k8s.io", "resource": "certificatesigningrequests", "verb": "create", "subresource": sub}},
            });
            let answer = c.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &review).await.map_err(|e| e.to_string())?;
            if answer["status"]["allowed"] != true {
                // Left pending for an administrator, as Kubernetes leaves it.
                return Ok(None);
            }
            let mut approved = csr.to_value();
            let mut conds = approved["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conds.push(json!({"type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": "Auto approving kubelet client certificate after SubjectAccessReview.", "lastUpdateTime": now, "lastTransitionTime": now}));
            approved["status"]["conditions"] = json!(conds);
            match c.put(&format!("{path}/approval"), &approved).await {
                Ok(_) | Err(ClientError::Status { code: 404 | 409, .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }
        Decision::Sign => {
            let s = signer.expect("Sign only with a signer");
            let cert = match sign(s, csr) {
                Ok(pem) => pem,
                Err(why) => {
                    // As Kubernetes: a request that cannot be signed is marked Failed.
                    let mut failed = csr.to_value();
                    let mut conds = failed["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    conds.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": why, "lastUpdateTime": now, "lastTransitionTime": now}));
                    failed["status"]["conditions"] = json!(conds);
                    return c.put(&format!("{path}/status"), &failed).await.map(|_| None).map_err(|e| e.to_string());
                }
            };
            let mut issued = csr.to_value();
            issued["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(cert));
            match c.put(&format!("{path}/status"), &issued).await {
                Ok(_) | Err(ClientError::Status { code: 404 | 409, .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// A client certificate of the CA for the request: the checked subject (for a kubelet, CN
/// `system:node:NAME` and O `system:nodes`; for other clients, their common name and
/// organizations) and the request's public key, nothing else of it.
fn sign(s: &Signer, csr: &Obj) -> Result<String, String> {
    let pem = request_pem(csr)?;
    let subject = subject_of(&pem)?;
    let signer = csr["spec"]["signerName"].as_str().unwrap_or("");
    let usages: Vec<String> = csr["spec"]["usages"].as_array().into_iter().flatten().filter_map(|u| u.as_str().map(str::to_string)).collect();
    let serving = signer == SERVING_SIGNER;
    if signer == KUBELET_CLIENT_SIGNER {
        node_client(&subject, &usages)?;
    }
    if serving {
        kubelet_serving(&subject, &usages)?;
    }
    let [cn] = subject.common_names.as_slice() else { return Err("not exactly one common name".into()) };
    if subject.has_alt_names && !serving {
        return Err("a client certificate names no hosts".into());
    }
    let mut req = rcgen::CertificateSigningRequestParams::from_pem(&pem).map_err(|e| format!("the request: {e}"))?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn.as_str());
    // rcgen writes one value per attribute type: a request with several organizations is
    // signed with none rather than with some of them.
    if let [o] = subject.organizations.as_slice() {
        p.distinguished_name.push(rcgen::DnType::OrganizationName, o.as_str());
    }
    if serving {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        if usages.iter().any(|u| u == "key encipherment") {
            p.key_usages.push(rcgen::KeyUsagePurpose::KeyEncipherment);
        }
        for d in &subject.dns_names {
            p.subject_alt_names.push(rcgen::SanType::DnsName(d.clone().try_into().map_err(|e| format!("DNS name {d:?}: {e}"))?));
        }
        p.subject_alt_names.extend(subject.ip_addresses.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    } else {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    }
    let most = (s.duration.as_secs() as i64).max(1);
    let seconds = csr["spec"]["expirationSeconds"].as_i64().map_or(most, |e| e.clamp(600, DEFAULT_SECONDS).min(most));
    let now = time::OffsetDateTime::now_utc();
    // Backdated for clocks behind ours: five minutes, or a tenth of a short life (a
    // certificate of a few seconds must not be mostly in the past).
    p.not_before = now - time::Duration::seconds((seconds / 10).min(300));
    p.not_after = now + time::Duration::seconds(seconds);
    req.params = p;
    let key = rcgen::KeyPair::from_pem(&s.ca_key_pem).map_err(|e| format!("the CA key: {e}"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&s.ca_pem, key).map_err(|e| format!("the CA certificate: {e}"))?;
    Ok(req.signed_by(&issuer).map_err(|e| format!("signing: {e}"))?.pem())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn request(cn: &str, orgs: &[&str], san: bool) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(if san { vec!["evil.example".to_string()] } else { vec![] }).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    // The functions under test read an informer's `Obj`; the tests build and edit `Value`s.
    fn decision(c: &Value, can_sign: bool) -> Decision {
        super::decision(&Obj::from(c), can_sign)
    }
    fn cleanup(c: &Value, now: i64) -> Cleanup {
        super::cleanup(&Obj::from(c), now)
    }
    fn sign(s: &Signer, c: &Value) -> Result<String, String> {
        super::sign(s, &Obj::from(c))
    }

    fn csr(pem: &str, signer: &str, user: &str, usages: &[&str]) -> Value {
        json!({"metadata": {"name": "c"}, "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem), "signerName": signer, "username": user, "usages": usages}})
    }

    const KUBELET: &[&str] = &["digital signature", "client auth"];

    #[test]
    fn only_node_client_requests_are_put_to_a_review() {
        let good = request("system:node:n1", &["system:nodes"], false);
        assert_eq!(decision(&csr(&good, KUBELET_CLIENT_SIGNER, "system:bootstrap:abcdef", KUBELET), true), Decision::AskApproval("nodeclient"));
        assert_eq!(decision(&csr(&good, KUBELET_CLIENT_SIGNER, "system:node:n1", KUBELET), true), Decision::AskApproval("selfnodeclient"));
        for (pem, signer, usages, why) in [
            (request("system:node:n1", &["system:masters"], false), KUBELET_CLIENT_SIGNER, KUBELET, "another group"),
            (request("admin", &["system:nodes"], false), KUBELET_CLIENT_SIGNER, KUBELET, "not a node"),
            (request("system:node:n1", &["system:nodes"], true), KUBELET_CLIENT_SIGNER, KUBELET, "with hosts"),
            (good.clone(), KUBELET_CLIENT_SIGNER, &["client auth", "server auth"][..], "serving usage"),
            (good.clone(), CLIENT_SIGNER, KUBELET, "another signer: left to an administrator"),
        ] {
            assert_eq!(decision(&csr(&pem, signer, "system:bootstrap:abcdef", usages), true), Decision::Nothing, "{why}");
        }
        let mut approved = csr(&good, KUBELET_CLIENT_SIGNER, "u", KUBELET);
        approved["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        assert_eq!(decision(&approved, true), Decision::Sign);
        assert_eq!(decision(&approved, false), Decision::Nothing, "no CA, no signing");
        approved["status"]["certificate"] = json!("Y2VydA==");
        assert_eq!(decision(&approved, true), Decision::Nothing, "issued already");
        let mut denied = csr(&good, KUBELET_CLIENT_SIGNER, "u", KUBELET);
        denied["status"] = json!({"conditions": [{"type": "Denied", "status": "True"}]});
        assert_eq!(decision(&denied, true), Decision::Nothing);
    }

    /// A kubelet serving request with these names (`dns`, IPs, and an email if `email`).
    fn serving_request(cn: &str, orgs: &[&str], dns: &[&str], ips: &[&str], email: bool) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
        }
        p.subject_alt_names = dns.iter().map(|d| rcgen::SanType::DnsName(d.to_string().try_into().unwrap())).collect();
        p.subject_alt_names.extend(ips.iter().map(|i| rcgen::SanType::IpAddress(i.parse().unwrap())));
        if email {
            p.subject_alt_names.push(rcgen::SanType::Rfc822Name("a@b.example".to_string().try_into().unwrap()));
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn kubelet_serving_requests_are_signed_for_server_auth_with_their_names_or_failed() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = cp.self_signed(&ca_key).unwrap();
        let s = Signer::new(ca.pem(), ca_key.serialize_pem());
        const SERVING: &[&str] = &["digital signature", "key encipherment", "server auth"];
        let good = serving_request("system:node:n1", &["system:nodes"], &["n1.example"], &["10.0.0.5"], false);
        // Never approved automatically; signed once an administrator approved it.
        let mut c = csr(&good, SERVING_SIGNER, "system:node:n1", SERVING);
        assert_eq!(decision(&c, true), Decision::Nothing);
        c["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        assert_eq!(decision(&c, true), Decision::Sign);
        let pem = sign(&s, &c).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = p.parse_x509().unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let names: Vec<String> = cert.subject_alternative_name().unwrap().unwrap().value.general_names.iter().map(|n| format!("{n:?}")).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].contains("n1.example") && names[1].contains("10, 0, 0, 5"), "{names:?}");
        assert_eq!(apiserver_like_user(&p.contents), "system:node:n1");
        for (pem, usages, why) in [
            (serving_request("system:node:n1", &["system:nodes"], &[], &[], false), SERVING, "no names"),
            (serving_request("system:node:n1", &["system:nodes"], &["n1.example"], &[], true), SERVING, "an email name"),
            (serving_request("system:node:n1", &["system:masters"], &["n1.example"], &[], false), SERVING, "another group"),
            (serving_request("admin", &["system:nodes"], &["n1.example"], &[], false), SERVING, "not a node"),
            (good.clone(), &["digital signature", "server auth", "client auth"][..], "client usage"),
            (good.clone(), &["server auth"][..], "no digital signature"),
        ] {
            let mut bad = csr(&pem, SERVING_SIGNER, "system:node:n1", usages);
            bad["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
            assert!(sign(&s, &bad).is_err(), "{why}");
        }
        // Key encipherment is optional.
        let mut lean = csr(&good, SERVING_SIGNER, "system:node:n1", &["digital signature", "server auth"]);
        lean["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        assert!(sign(&s, &lean).is_ok());
    }

    /// The certificate's CN, as the API server would take it for the user.
    fn apiserver_like_user(der: &[u8]) -> String {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string()
    }

    #[test]
    fn requests_are_cleaned_up_as_kubernetes_cleans_them() {
        let t = |s: i64| jiff::Timestamp::from_second(s).unwrap().to_string();
        let made = 1_000_000;
        let pending = json!({"metadata": {"creationTimestamp": t(made)}, "status": {}});
        assert_eq!(cleanup(&pending, made + 10), Cleanup::In(PENDING_SECONDS - 10));
        assert_eq!(cleanup(&pending, made + PENDING_SECONDS), Cleanup::Now, "a day pending");
        for kind in ["Approved", "Denied", "Failed"] {
            let decided = json!({"metadata": {"creationTimestamp": t(made)}, "status": {"conditions": [{"type": kind, "lastUpdateTime": t(made + 100)}]}});
            assert_eq!(cleanup(&decided, made + 100 + 59), Cleanup::In(DECIDED_SECONDS - 59), "{kind}");
            assert_eq!(cleanup(&decided, made + 100 + DECIDED_SECONDS), Cleanup::Now, "{kind}: an hour after");
        }
        assert_eq!(cleanup(&json!({"metadata": {}}), made), Cleanup::Never, "no times to go by");
        // An issued certificate that expires before the hour is up goes when it expires.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = cp.self_signed(&ca_key).unwrap();
        let mut s = Signer::new(ca.pem(), ca_key.serialize_pem());
        s.duration = Duration::from_secs(60);
        let c = csr(&request("system:node:n1", &["system:nodes"], false), KUBELET_CLIENT_SIGNER, "u", KUBELET);
        let pem = sign(&s, &c).unwrap();
        let now = jiff::Timestamp::now().as_second();
        let issued = json!({"metadata": {"creationTimestamp": t(now)}, "status": {"conditions": [{"type": "Approved", "lastUpdateTime": t(now)}],
            "certificate": base64::engine::general_purpose::STANDARD.encode(&pem)}});
        match cleanup(&issued, now) {
            Cleanup::In(s) => assert!(s <= 60, "due when the certificate expires, not in an hour: {s}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(cleanup(&issued, now + 61), Cleanup::Now);
    }

    #[test]
    fn a_signed_certificate_names_the_checked_subject_for_client_auth_only() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = cp.self_signed(&ca_key).unwrap();
        let mut s = Signer::new(ca.pem(), ca_key.serialize_pem());
        let mut c = csr(&request("system:node:n1", &["system:nodes"], false), KUBELET_CLIENT_SIGNER, "u", KUBELET);
        c["spec"]["expirationSeconds"] = json!(3600);
        let pem = sign(&s, &c).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = p.parse_x509().unwrap();
        assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), "system:node:n1");
        assert_eq!(cert.subject().iter_organization().map(|o| o.as_str().unwrap()).collect::<Vec<_>>(), vec!["system:nodes"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 300, "expirationSeconds, from five minutes back");
        // The signing duration caps what a request asks; a short life is backdated by a tenth.
        s.duration = Duration::from_secs(40);
        let pem = sign(&s, &c).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let v = p.parse_x509().unwrap().validity().clone();
        assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 40 + 4);
        // A request that is not a node's is not signed for the kubelet signer.
        assert!(sign(&s, &csr(&request("admin", &["system:masters"], false), KUBELET_CLIENT_SIGNER, "u", KUBELET)).is_err());
    }
}
