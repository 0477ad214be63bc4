//! `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: TokenRequest, as
//! kube-apiserver answers it (`kubectl create token`). The token is a JWT signed by the
//! cluster's ServiceAccount key (`sa_token`), for the requested audiences and lifetime, and
//! optionally bound to a Pod, Secret or Node: it stops authenticating once that object (or
//! the ServiceAccount) is deleted.

use super::*;
use crate::sa_token::{self, Grant, Ref};

impl Req<'_> {
    pub(super) async fn token_request(&self) -> ApiResult {
        let Some(keys) = self.st.sa_keys.clone() else {
            return Err(ApiError::internal("this server has no ServiceAccount signing key"));
        };
        let mut body = self.parse_body()?;
        if !body.is_object() {
            return Err(ApiError::bad_request("a TokenRequest must be a JSON object"));
        }
        self.check_kind(&mut body, ("authentication.k8s.io/v1", "TokenRequest"))?;
        let ns = self.namespace.as_deref().unwrap_or("");
        let name = self.name();
        let sa = self.read(&self.key()).await?.ok_or_else(|| self.not_found())?.obj;
        let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or("").to_string();

        let spec = &body["spec"];
        let mut causes = Vec::new();
        let expiration = match &spec["expirationSeconds"] {
            Value::Null => sa_token::DEFAULT_EXPIRATION,
            v => match v.as_i64() {
                Some(s) if s < sa_token::MIN_EXPIRATION => {
                    causes.push(("spec.expirationSeconds".to_string(), format!("Invalid value: {s}: may not specify a duration less than 10 minutes")));
                    s
                }
                Some(s) if s > sa_token::MAX_EXPIRATION => {
                    causes.push(("spec.expirationSeconds".to_string(), format!("Invalid value: {s}: may not specify a duration larger than 2^32 seconds")));
                    s
                }
                Some(s) => s,
                None => return Err(ApiError::bad_request("spec.expirationSeconds must be an integer")),
            },
        };
        let audiences: Vec<String> = match &spec["audiences"] {
            Value::Null => Vec::new(),
            Value::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for (i, x) in a.iter().enumerate() {
                    match x.as_str() {
                        Some(s) if !s.is_empty() => out.push(s.to_string()),
                        _ => causes.push((format!("spec.audiences[{i}]"), "Invalid value: an audience must be a non-empty string".to_string())),
                    }
                }
                out
            }
            _ => return Err(ApiError::bad_request("spec.audiences must be a list of strings")),
        };
        let audiences = if audiences.is_empty() { keys.api_audiences() } else { audiences };
        if !causes.is_empty() {
            return Err(ApiError::invalid("authentication.k8s.io", "TokenRequest", name, causes));
        }

        // The object the token is bound to, if any: it must exist (and have the UID given).
        let (mut pod, mut secret, mut node) = (None, None, None);
        let bound = &spec["boundObjectRef"];
        if !bound.is_null() {
            let kind = bound["kind"].as_str().unwrap_or("");
            let api_version = bound["apiVersion"].as_str().unwrap_or("v1");
            let bname = bound["name"].as_str().unwrap_or("");
            if bname.is_empty() {
                return Err(ApiError::invalid("authentication.k8s.io", "TokenRequest", name, vec![("spec.boundObjectRef.name".into(), "Required value".into())]));
            }
            let (resource, obj_ns) = match (api_version, kind) {
                ("v1", "Pod") => ("pods", Some(ns)),
                ("v1", "Secret") => ("secrets", Some(ns)),
                ("v1", "Node") => ("nodes", None),
                _ => return Err(ApiError::bad_request(format!("cannot bind token to object of type {}, Kind={kind}", api_version.replace('/', ", Version="))),),
            };
            let obj = self.st.read_object("", resource, obj_ns, bname).await?.ok_or_else(|| ApiError::not_found("", resource, bname))?;
            let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict_because(
                    "",
                    kind,
                    bname,
                    &format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"),
                ));
            }
            let r = Ref { name: bname.to_string(), uid };
            match kind {
                "Pod" => {
                    if obj["spec"]["serviceAccountName"].as_str().unwrap_or("default") != name {
                        return Err(ApiError::bad_request(format!("cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name.")));
                    }
                    // As Kubernetes: a pod-bound token also names the pod's node.
                    if let Some(n) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
                        && let Some(nobj) = self.st.read_object("", "nodes", None, n).await?
                    {
                        node = Some(Ref { name: n.to_string(), uid: nobj["metadata"]["uid"].as_str().unwrap_or("").to_string() });
                    }
                    pod = Some(r);
                }
                "Secret" => secret = Some(r),
                _ => node = Some(r),
            }
        }

        // NodeRestriction: a kubelet asks only for tokens bound to a pod on its node.
        if let Some(node) = self.user.as_deref().and_then(crate::node_authz::node_of)
            && pod.is_none()
        {
            return Err(ApiError::forbidden(format!("node \"{node}\" requested a token not bound to a pod")));
        }
        if let Some(node) = self.user.as_deref().and_then(crate::node_authz::node_of)
            && let Some(p) = &pod
            && self.st.read_object("", "pods", Some(ns), &p.name).await?.is_none_or(|o| o["spec"]["nodeName"].as_str() != Some(node))
        {
            return Err(ApiError::forbidden(format!("node \"{node}\" requested a token bound to a pod scheduled on a different node")));
        }
        let now = jiff::Timestamp::now().as_second();
        let grant = Grant {
            namespace: ns,
            service_account: Ref { name: name.to_string(), uid: sa_uid },
            audiences: audiences.clone(),
            expiration_seconds: expiration,
            pod,
            secret,
            node,
        };
        let (token, claims) = keys.issue(grant, now).map_err(ApiError::internal)?;
        let expires = jiff::Timestamp::from_second(claims.exp).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut out_spec = json!({ "audiences": audiences, "expirationSeconds": expiration });
        if !bound.is_null() {
            out_spec["boundObjectRef"] = bound.clone();
        }
        let out = json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "name": name, "namespace": ns, "creationTimestamp": object::now_rfc3339() },
            "spec": out_spec,
            "status": { "token": token, "expirationTimestamp": expires.to_string() },
        });
        Ok(json_value(StatusCode::CREATED, &out))
    }
}
