//! The availability loop: every 10 s (and when the APIServices change), each remote
//! APIService is checked as kube-apiserver's AvailableConditionController does (its Service
//! and a ready endpoint, then a GET of its discovery within 5 s); what its server lists is
//! kept for this server's discovery, and the `Available` condition is written when it
//! changes. At start it also publishes `kube-system/extension-apiserver-authentication`, the
//! ConfigMap aggregated servers read to trust the front-proxy headers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Remote;
use crate::handlers::AppState;

const PERIOD: Duration = Duration::from_secs(10);
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `Available` condition's (status, reason, message) for one check.
type Verdict = (&'static str, &'static str, String);

async fn check(st: &AppState, r: &Remote) -> (Verdict, Option<Vec<Value>>) {
    let (ip, port) = match st.service_endpoint(&r.namespace, &r.service, r.port).await {
        Ok(e) => e,
        Err((reason, message)) => return (("False", reason, message), None),
    };
    let path = format!("/apis/{}/{}", r.group, r.version);
    let failed = |e: String| -> (Verdict, Option<Vec<Value>>) { (("False", "FailedDiscoveryCheck", format!("failing or missing response from https://{ip}:{port}{path}: {e}")), None) };
    let body = match super::proxy::get(r, &ip, port, &path, DISCOVERY_TIMEOUT).await {
        Ok(b) => b,
        Err(e) => return failed(e),
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(list) if list["kind"] == "APIResourceList" => (("True", "Passed", "all checks passed".into()), Some(list["resources"].as_array().cloned().unwrap_or_default())),
        Ok(_) => failed("the answer is not an APIResourceList".into()),
        Err(e) => failed(format!("the answer is not JSON: {e}")),
    }
}

/// Writes the condition on the APIService named `name` if it differs (its transition time
/// moves only when the status does); a write that races another is left to the next round.
async fn write_condition(st: &AppState, name: &str, (status, reason, message): &Verdict) {
    let Some(info) = st.reg.find(super::GROUP, "v1", "apiservices") else { return };
    let key = info.key(None, name);
    let Ok(Some(kv)) = st.store.get(key.clone()).await else { return };
    let Ok(mut obj) = crate::object::Stored::from_kv(&kv).and_then(|s| s.value_at(kv.mod_revision)) else { return };
    let conds = obj["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let old = conds.iter().find(|c| c["type"] == "Available");
    if old.is_some_and(|c| c["status"] == *status && c["reason"] == *reason && c["message"] == message.as_str()) {
        return;
    }
    let since = old.filter(|c| c["status"] == *status).and_then(|c| c["lastTransitionTime"].as_str().map(String::from)).unwrap_or_else(crate::object::now_rfc3339);
    let mut others: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "Available").collect();
    others.push(json!({"type": "Available", "status": status, "lastTransitionTime": since, "reason": reason, "message": message}));
    obj["status"] = json!({"conditions": others});
    if let Err(e) = crate::system_services::write_if(&st.store, &key, kv.mod_revision, &obj).await {
        tracing::debug!(apiservice = name, error = %e, "writing an APIService's condition failed; next round");
    }
}

/// Publishes what aggregated servers need to authenticate this one's proxied requests.
async fn publish_authentication(st: &AppState) {
    let Some(fp) = super::front_proxy() else { return };
    let Some(info) = st.reg.find("", "v1", "configmaps") else { return };
    let key = info.key(Some("kube-system"), "extension-apiserver-authentication");
    let data = json!({
        "client-ca-file": fp.ca_pem,
        "requestheader-client-ca-file": fp.ca_pem,
        "requestheader-allowed-names": format!("[\"{}\"]", super::FRONT_PROXY_CN),
        "requestheader-username-headers": "[\"X-Remote-User\"]",
        "requestheader-group-headers": "[\"X-Remote-Group\"]",
        "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
    });
    let current = st.store.get(key.clone()).await.ok().flatten();
    let (rev, mut obj) = match &current {
        Some(kv) => match crate::object::Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision)) {
            Ok(v) if v["data"] == data => return,
            Ok(v) => (kv.mod_revision, v),
            Err(_) => return,
        },
        None => (0, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system", "uid": crate::object::new_uid(), "creationTimestamp": crate::object::now_rfc3339()}})),
    };
    obj["data"] = data;
    if let Err(e) = crate::system_services::write_if(&st.store, &key, rev, &obj).await {
        tracing::warn!(error = %e, "publishing kube-system/extension-apiserver-authentication failed");
    }
}

/// Runs until the server shuts down.
pub(crate) async fn run(st: Arc<AppState>) {
    let mut shutdown = st.shutdown.clone();
    let mut published = false;
    loop {
        if st.warm.load(std::sync::atomic::Ordering::SeqCst) {
            if !published {
                publish_authentication(&st).await;
                published = true;
            }
            for r in st.aggregator.remotes().iter() {
                let (verdict, resources) = check(&st, r).await;
                st.aggregator.set_discovered(&r.group, &r.version, resources);
                write_condition(&st, &r.name, &verdict).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(if published { PERIOD } else { Duration::from_millis(200) }) => {}
            _ = st.aggregator.changed.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
