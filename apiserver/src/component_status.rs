//! `v1 ComponentStatus` (`kubectl get componentstatuses`, deprecated in Kubernetes since 1.19
//! and still served): the health of the scheduler, the controller manager and the store,
//! computed at each request, never stored. kube-apiserver asks the components' local healthz
//! ports; capstan's components report to the process they run in (`dashboard::Hooks`), and a
//! component elsewhere is healthy while it holds its kube-system Lease (renewed within the
//! lease's duration). `etcd-0` is the store: healthy when a consistent read succeeds.

use serde_json::{Value, json};

/// Kubernetes' Warning on every ComponentStatus request.
pub const DEPRECATED: &str = "v1 ComponentStatus is deprecated in v1.19+";

/// One component's object.
pub fn object(name: &str, healthy: Result<String, String>) -> Value {
    let (status, message, error) = match healthy {
        Ok(m) => ("True", m, None),
        Err(e) => ("False", String::new(), Some(e)),
    };
    let mut condition = json!({"type": "Healthy", "status": status});
    if !message.is_empty() {
        condition["message"] = json!(message);
    }
    if let Some(e) = error {
        condition["error"] = json!(e);
    }
    json!({"kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": name}, "conditions": [condition]})
}

/// Whether a Lease is held now: a holder, renewed within its duration of `now` (unix
/// seconds).
pub fn lease_held(lease: &Value, now: f64) -> Option<String> {
    let spec = &lease["spec"];
    let holder = spec["holderIdentity"].as_str().filter(|h| !h.is_empty())?;
    let renewed = spec["renewTime"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok())?;
    let duration = spec["leaseDurationSeconds"].as_f64().unwrap_or(15.0);
    let age = now - renewed.as_millisecond() as f64 / 1000.0;
    (age <= duration).then(|| holder.to_string())
}

/// The components, in kube-apiserver's order.
pub const COMPONENTS: [(&str, &str); 2] = [("scheduler", "kube-scheduler"), ("controller-manager", "kube-controller-manager")];

/// The health of every component.
pub async fn all(st: &crate::handlers::AppState) -> Vec<Value> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let mut out = Vec::new();
    for (name, lease) in COMPONENTS {
        let health = if st.ui.hooks.is_running(name) {
            Ok("ok".to_string())
        } else {
            match st.read_object("coordination.k8s.io", "leases", Some("kube-system"), lease).await {
                Ok(Some(l)) => match lease_held(&l, now) {
                    Some(holder) => Ok(format!("ok (leader {holder})")),
                    None => Err(format!("not running in this process, and the kube-system/{lease} lease is not held")),
                },
                Ok(None) => Err(format!("not running in this process, and no kube-system/{lease} lease")),
                Err(e) => Err(e.message),
            }
        };
        out.push(object(name, health));
    }
    let store = match st.store.consistent_revision().await {
        Ok(_) => Ok(r#"{"health":"true","reason":""}"#.to_string()),
        Err(e) => Err(e.to_string()),
    };
    out.push(object("etcd-0", store));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_while_renewed_within_its_duration() {
        let l = json!({"spec": {"holderIdentity": "a_1", "renewTime": "2026-01-01T00:00:10.000000Z", "leaseDurationSeconds": 15}});
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_second() as f64;
        assert_eq!(lease_held(&l, t("2026-01-01T00:00:20Z")), Some("a_1".into()));
        assert_eq!(lease_held(&l, t("2026-01-01T00:00:26Z")), None);
        assert_eq!(lease_held(&json!({"spec": {"renewTime": "2026-01-01T00:00:10Z"}}), t("2026-01-01T00:00:11Z")), None, "no holder");
    }

    #[test]
    fn objects_say_healthy_or_why_not() {
        let ok = object("scheduler", Ok("ok".into()));
        assert_eq!(ok["conditions"][0], json!({"type": "Healthy", "status": "True", "message": "ok"}));
        let bad = object("etcd-0", Err("no quorum".into()));
        assert_eq!(bad["conditions"][0], json!({"type": "Healthy", "status": "False", "error": "no quorum"}));
    }
}
