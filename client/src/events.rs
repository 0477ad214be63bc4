//! An event recorder (the kubelet's `Started`, `Killing`, `BackOff`...; the scheduler's
//! `Scheduled`, `FailedScheduling`) writing `v1.Event` objects about pods. Repeats of one event (same pod, container, reason and
//! message) within the recorder's memory update the existing object's `count` and
//! `lastTimestamp` instead of creating another, as Kubernetes' recorder does.
//!
//! **Bounds.** Callers never wait: events go through a queue of `QUEUE` entries and are
//! dropped (counted, logged once per hundred) when it is full; the repeat memory holds
//! `REMEMBERED` events and starts over when full.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::Client;
use crate::obj::Obj;
use api::meta::now_rfc3339;

const QUEUE: usize = 1024;
const REMEMBERED: usize = 4096;

struct Event {
    /// (apiVersion, kind) of the object.
    kind: (&'static str, &'static str),
    ns: String,
    name: String,
    uid: String,
    field_path: Option<String>,
    warning: bool,
    reason: &'static str,
    message: String,
}

#[derive(Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// `component` is the event's source (`kubelet`, `default-scheduler`); `host` its node,
    /// if any.
    pub fn start(client: Client, component: &'static str, host: String) -> Recorder {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        tokio::spawn(run(client, component, host, rx));
        Recorder { tx, dropped: Default::default() }
    }

    /// Records an event about `pod` (and one of its containers, if `container` is given).
    pub fn pod(&self, pod: &impl Involved, container: Option<&str>, warning: bool, reason: &'static str, message: String) {
        let s = |k: &str| pod.meta(k).to_string();
        self.send(Event { kind: ("v1", "Pod"), ns: s("namespace"), name: s("name"), uid: s("uid"), field_path: container.map(|c| format!("spec.containers{{{c}}}")), warning, reason, message });
    }

    /// Records an event about `obj`, an object of `kind`: (apiVersion, kind); about a
    /// cluster-scoped one, in `default`.
    pub fn object(&self, kind: (&'static str, &'static str), obj: &impl Involved, warning: bool, reason: &'static str, message: String) {
        let s = |k: &str| obj.meta(k).to_string();
        self.send(Event { kind, ns: s("namespace"), name: s("name"), uid: s("uid"), field_path: None, warning, reason, message });
    }

    fn send(&self, ev: Event) {
        if self.tx.try_send(ev).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "the event queue is full; events are being dropped");
            }
        }
    }
}

/// What an event needs of the object it is about: its metadata's strings.
pub trait Involved {
    /// `metadata.<key>` as a string; empty when absent.
    fn meta(&self, key: &str) -> &str;
}

impl Involved for Value {
    fn meta(&self, key: &str) -> &str {
        self["metadata"][key].as_str().unwrap_or("")
    }
}

impl Involved for Obj {
    fn meta(&self, key: &str) -> &str {
        self["metadata"][key].as_str().unwrap_or("")
    }
}

impl<T: Involved> Involved for Arc<T> {
    fn meta(&self, key: &str) -> &str {
        (**self).meta(key)
    }
}

async fn run(client: Client, component: &'static str, host: String, mut rx: tokio::sync::mpsc::Receiver<Event>) {
    let mut seen: HashMap<(String, String, Option<String>, &'static str, String), (String, u64)> = HashMap::new();
    while let Some(e) = rx.recv().await {
        let t = now_rfc3339();
        // Events about cluster-scoped objects (nodes, volumes) live in `default`, as
        // Kubernetes records them.
        let ens = if e.ns.is_empty() { "default" } else { e.ns.as_str() };
        let key = (e.ns.clone(), e.uid.clone(), e.field_path.clone(), e.reason, e.message.clone());
        if let Some((name, count)) = seen.get_mut(&key) {
            *count += 1;
            let path = format!("/api/v1/namespaces/{ens}/events/{name}");
            if client.merge_patch_quiet(&path, &json!({"count": *count, "lastTimestamp": t})).await.is_ok() {
                continue;
            }
            seen.remove(&key);
        }
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        let name = format!("{}.{:x}", e.name, jiff::Timestamp::now().as_nanosecond());
        let mut involved = json!({"kind": e.kind.1, "name": e.name, "uid": e.uid, "apiVersion": e.kind.0});
        if !e.ns.is_empty() {
            involved["namespace"] = json!(e.ns);
        }
        if let Some(f) = &e.field_path {
            involved["fieldPath"] = json!(f);
        }
        let obj = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ens},
            "involvedObject": involved,
            "reason": e.reason, "message": e.message, "type": if e.warning { "Warning" } else { "Normal" },
            "source": {"component": component, "host": host},
            "firstTimestamp": t, "lastTimestamp": t, "count": 1,
            "reportingComponent": component, "reportingInstance": host,
        });
        match client.post_quiet(&format!("/api/v1/namespaces/{ens}/events"), &obj).await {
            Ok(_) => {
                seen.insert(key, (name, 1));
            }
            Err(err) => tracing::debug!(reason = e.reason, error = %err, "recording an event failed"),
        }
    }
}
