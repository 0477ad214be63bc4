//! The scheduler's list-and-watch of the resources it reads, each turned into `Update`s for
//! the scheduling thread. Pods, whose events are most of the cluster's, are decoded straight
//! into `WirePod` (no `serde_json::Value` tree built and dropped per event); the other
//! resources, whose events are few, as `Value`s without managedFields.

use std::time::Duration;

use client::Client;
use client::decode::Lean;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Update, preemption, types};
use types::WirePod;

/// What one watch decodes its objects into.
pub(crate) trait Watched: DeserializeOwned + Send + 'static {
    fn resource_version(&self) -> Option<&str>;
}

impl Watched for Lean {
    fn resource_version(&self) -> Option<&str> {
        self.0["metadata"]["resourceVersion"].as_str()
    }
}

impl Watched for WirePod {
    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }
}

#[derive(Deserialize)]
struct Event<T> {
    #[serde(rename = "type")]
    ty: String,
    object: T,
}

/// Starts the watches (one task each) feeding `tx`; `resync` makes each list again.
pub(crate) fn start(c: &Client, tx: &crossbeam::channel::Sender<Update>, resync: &tokio::sync::watch::Receiver<u64>) -> Vec<tokio::task::JoinHandle<()>> {
    let lean = |path: &'static str, send: fn(Value, String, bool) -> Update| {
        tokio::spawn(watch(c.clone(), path, tx.clone(), resync.clone(), move |o: Lean, deleted| {
            let name = o.0["metadata"]["name"].as_str().unwrap_or("").to_string();
            send(o.0, name, deleted)
        }))
    };
    vec![
        lean("/api/v1/nodes", |v, name, deleted| Update::Node((!deleted).then_some(v), name)),
        tokio::spawn(watch(c.clone(), "/api/v1/pods", tx.clone(), resync.clone(), |p: WirePod, deleted| {
            if deleted { Update::PodDeleted(p.metadata.uid.unwrap_or_default()) } else { Update::Pod(Box::new(p)) }
        })),
        lean("/api/v1/persistentvolumeclaims", |v, name, deleted| {
            let key = format!("{}/{name}", v["metadata"]["namespace"].as_str().unwrap_or(""));
            Update::Claim(key, (!deleted).then(|| v["spec"]["volumeName"].as_str().unwrap_or("").to_string()))
        }),
        lean("/api/v1/persistentvolumes", |v, name, deleted| Update::Volume(name, (!deleted).then(|| volume_terms(&v)))),
        lean("/apis/policy/v1/poddisruptionbudgets", |v, name, deleted| {
            let key = format!("{}/{name}", v["metadata"]["namespace"].as_str().unwrap_or(""));
            Update::Budget(key, if deleted { None } else { preemption::Budget::from_json(&v) })
        }),
        lean("/api/v1/namespaces", |v, name, deleted| {
            let labels = (!deleted).then(|| types::Labels::deserialize(&v["metadata"]["labels"]).unwrap_or_default());
            Update::Namespace(name, labels)
        }),
    ]
}

/// Lists `path`, then watches it from the list's revision, resuming after a disconnect from
/// the last revision seen and listing again after an ERROR event (410 Gone) or a resync.
async fn watch<T: Watched>(
    c: Client,
    path: &'static str,
    tx: crossbeam::channel::Sender<Update>,
    mut resync: tokio::sync::watch::Receiver<u64>,
    send: impl Fn(T, bool) -> Update,
) {
    let mut rv: Option<String> = None;
    loop {
        let from = match rv.clone() {
            Some(r) => r,
            None => match c.get(path).await {
                Ok(mut list) => {
                    for item in list["items"].as_array_mut().map(std::mem::take).unwrap_or_default() {
                        // An item that is not a `T` (a pod with a malformed field) is left out,
                        // as its watch events would be.
                        let Ok(o) = T::deserialize(item) else { continue };
                        if !push(&tx, send(o, false)).await {
                            return;
                        }
                    }
                    list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string()
                }
                Err(e) => {
                    tracing::warn!(path, error = %e, "scheduler list failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let mut stream = match c.watch(&format!("{path}?watch=true&allowWatchBookmarks=true&resourceVersion={from}")).await {
            Ok(s) => s,
            Err(_) => {
                rv = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        rv = Some(from);
        loop {
            let ev: Event<T> = tokio::select! {
                ev = stream.next_as() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
                changed = resync.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    rv = None;
                    break;
                }
            };
            if ev.ty == "ERROR" {
                rv = None;
                break;
            }
            if let Some(r) = ev.object.resource_version() {
                rv = Some(r.to_string());
            }
            if matches!(ev.ty.as_str(), "ADDED" | "MODIFIED" | "DELETED") && !push(&tx, send(ev.object, ev.ty == "DELETED")).await {
                return;
            }
        }
    }
}

/// A PersistentVolume's required node affinity as node terms (none: any node).
fn volume_terms(pv: &Value) -> Vec<types::NodeTerm> {
    let terms = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"];
    match Vec::<k8s_openapi::api::core::v1::NodeSelectorTerm>::deserialize(terms) {
        Ok(t) => t.iter().map(types::NodeTerm::from_k8s).collect(),
        // Unreadable affinity: a term that matches no node (as an invalid one would).
        Err(_) if !terms.is_null() => vec![types::NodeTerm { labels: vec![], names: vec![] }],
        Err(_) => vec![],
    }
}

/// Sends to the scheduling thread; when its channel is full the sending task waits (the
/// watch stream, then the API server's watch buffer, push back). False once it is gone.
pub(crate) async fn push(tx: &crossbeam::channel::Sender<Update>, mut u: Update) -> bool {
    loop {
        match tx.try_send(u) {
            Ok(()) => return true,
            Err(crossbeam::channel::TrySendError::Disconnected(_)) => return false,
            Err(crossbeam::channel::TrySendError::Full(back)) => {
                u = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PodInfo;

    fn event(line: &str) -> Event<WirePod> {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn a_pod_event_decodes_to_what_scheduling_reads() {
        let ev = event(
            r#"{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"p","namespace":"ns","uid":"u1","resourceVersion":"42",
            "labels":{"app":"a"},"ownerReferences":[{"uid":"o0"},{"uid":"o1","controller":true}],
            "managedFields":[{"manager":"m","fieldsV1":{"f:spec":{}}}],"annotations":{"x":"y"}},
            "spec":{"nodeName":"n1","priority":7,"containers":[{"name":"c","resources":{"requests":{"cpu":"250m","memory":"1Ki"}}}]},
            "status":{"phase":"Running","startTime":"2026-01-02T03:04:05Z","conditions":[{"type":"Ready","status":"True"}]}}}"#,
        );
        assert_eq!((ev.ty.as_str(), ev.object.resource_version()), ("MODIFIED", Some("42")));
        let p = PodInfo::from_wire(ev.object);
        assert_eq!((p.namespace.as_str(), p.name.as_str(), p.uid.as_str(), p.node_name.as_str(), p.owner.as_str()), ("ns", "p", "u1", "n1", "o1"));
        assert_eq!((p.priority, p.requests.cpu, p.requests.memory, p.terminal, p.deleting), (7, 250, 1024, false, false));
        assert_eq!(p.labels.get("app").map(String::as_str), Some("a"));
        assert_eq!(p.start_time, Some(1_767_323_045));
    }

    #[test]
    fn nulls_read_as_absent_and_an_error_event_still_decodes() {
        let ev = event(r#"{"type":"ADDED","object":{"metadata":{"name":"p","labels":null,"deletionTimestamp":"2026-01-01T00:00:00Z","ownerReferences":null},"spec":null,"status":null}}"#);
        let p = PodInfo::from_wire(ev.object);
        assert!(p.labels.is_empty() && p.deleting && p.node_name.is_empty() && p.owner.is_empty());
        // The object of an ERROR event is a Status, whose `status` is a string: the event
        // must reach the loop (it lists again), not be skipped as undecodable.
        let ev = event(r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#);
        assert_eq!(ev.ty, "ERROR");
        assert!(ev.object.status.is_none());
    }

    #[test]
    fn other_resources_decode_without_managed_fields() {
        let ev: Event<Lean> = serde_json::from_str(r#"{"type":"ADDED","object":{"metadata":{"name":"n","resourceVersion":"9","managedFields":[{"manager":"m"}]}}}"#).unwrap();
        assert_eq!(ev.object.resource_version(), Some("9"));
        assert_eq!(ev.object.0, serde_json::json!({"metadata": {"name": "n", "resourceVersion": "9"}}));
    }
}
