//! How the API server reaches servers outside it: a Service's ready endpoint (from its
//! EndpointSlices, as kube-apiserver's `--enable-aggregator-routing` does), and a webhook
//! (admission or CRD conversion) at its URL or Service. The aggregator's proxy and its
//! availability checks, admission webhooks and CRD conversion all go through here.

use bytes::Bytes;
use serde_json::Value;

use crate::handlers::AppState;

impl AppState {
    /// A ready endpoint (address, port) of the Service's `port`, from its EndpointSlices: how
    /// the API server reaches admission webhooks and aggregated APIs given as Services.
    /// Errors are (reason, message), the reasons an APIService's `Available` condition gives.
    pub(crate) async fn service_endpoint(&self, namespace: &str, name: &str, port: u16) -> Result<(String, u16), (&'static str, String)> {
        let missing = |m: String| ("MissingEndpoints", m);
        let svc = self.lookup("services", Some(namespace), name).await.map_err(|e| missing(e.message))?.ok_or_else(|| ("ServiceNotFound", format!("service/{name} in \"{namespace}\" is not present")))?;
        let sp = svc["spec"]["ports"].as_array().into_iter().flatten().find(|p| p["port"].as_u64() == Some(port as u64)).ok_or_else(|| ("ServicePortError", format!("service/{name} in \"{namespace}\" is not listening on port {port}")))?;
        let port_name = sp["name"].as_str().unwrap_or("");
        let info = self.reg.find("discovery.k8s.io", "v1", "endpointslices").ok_or_else(|| missing("EndpointSlices are not served".into()))?;
        let slices = self.caches.get(&self.store, &info).await.map_err(|e| missing(format!("the EndpointSlice cache: {}", e.message)))?.snapshot().1;
        let prefix = format!("/registry/discovery.k8s.io/endpointslices/{namespace}/");
        for (_, o) in slices.range(Bytes::from(prefix.clone())..).take_while(|(k, _)| k.starts_with(prefix.as_bytes())) {
            if !o.meta.labels.iter().any(|(k, v)| &**k == "kubernetes.io/service-name" && &**v == name) {
                continue;
            }
            let Ok(slice) = serde_json::from_slice::<Value>(&o.json()) else { continue };
            let Some(p) = slice["ports"].as_array().into_iter().flatten().find(|p| p["name"].as_str().unwrap_or("") == port_name).and_then(|p| p["port"].as_u64()) else { continue };
            let ready = slice["endpoints"].as_array().into_iter().flatten().find(|e| e["conditions"]["ready"].as_bool() != Some(false));
            if let Some(addr) = ready.and_then(|e| e["addresses"][0].as_str()) {
                return Ok((addr.to_string(), p as u16));
            }
        }
        Err(missing(format!("endpoints for service/{name} in \"{namespace}\" have no addresses with port name {port_name:?}")))
    }

    /// POSTs `body` to a webhook (admission or CRD conversion) at its URL or Service, within
    /// its timeout; the answer's body, or why not.
    pub(crate) async fn post_to_webhook(&self, h: &crate::webhook::Hook, body: Vec<u8>) -> Result<Bytes, String> {
        use crate::webhook::Endpoint;
        use crate::webhook::call::{self, Target};
        let tls = h.tls.clone()?;
        // Kubernetes tells the webhook its timeout in the query.
        let query = format!("?timeout={}s", h.timeout.as_secs());
        match h.endpoint.as_ref().map_err(|e| e.clone())? {
            Endpoint::Url { url, host, port, path } => {
                let path = format!("{path}{query}");
                let url = format!("{url}{query}");
                call::post(tls, &Target { host, port: *port, server_name: host, path: &path, url: &url }, body, h.timeout).await
            }
            Endpoint::Service { namespace, name, port, path } => {
                let server_name = format!("{name}.{namespace}.svc");
                let url = format!("https://{server_name}:{port}{path}{query}");
                let (ip, target_port) = self.service_endpoint(namespace, name, *port).await.map_err(|(_, e)| format!("failed to call webhook: Post {url:?}: {e}"))?;
                let path = format!("{path}{query}");
                call::post(tls, &Target { host: &ip, port: target_port, server_name: &server_name, path: &path, url: &url }, body, h.timeout).await
            }
        }
    }
}
