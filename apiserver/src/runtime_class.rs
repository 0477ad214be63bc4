//! The RuntimeClass admission plugin: a pod naming a RuntimeClass (node.k8s.io/v1) gets its
//! fixed overhead (`spec.overhead`) and its scheduling constraints (node selector merged,
//! tolerations added), or is refused when the class does not exist or the pod contradicts
//! it. Pure: the handler looks the class up.

use serde_json::{Value, json};

/// Applies `class` (none: not found) to `pod`; Err is the reason the pod is refused.
pub fn admit(pod: &mut Value, class_name: &str, class: Option<&Value>) -> Result<(), String> {
    let Some(rc) = class else { return Err(format!("pod rejected: RuntimeClass {class_name:?} not found")) };
    if let Some(fixed) = rc["overhead"]["podFixed"].as_object().filter(|m| !m.is_empty()) {
        match pod["spec"].get("overhead") {
            Some(o) if !o.is_null() && o.as_object() != Some(fixed) => return Err("pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead".into()),
            _ => pod["spec"]["overhead"] = Value::Object(fixed.clone()),
        }
    }
    if let Some(sel) = rc["scheduling"]["nodeSelector"].as_object() {
        for (k, v) in sel {
            match pod["spec"]["nodeSelector"].get(k) {
                Some(have) if have != v => {
                    return Err(format!("conflict: runtimeClass.scheduling.nodeSelector[{k}] = {}; pod.spec.nodeSelector[{k}] = {}", v.as_str().unwrap_or(""), have.as_str().unwrap_or("")));
                }
                _ => {
                    if !pod["spec"]["nodeSelector"].is_object() {
                        pod["spec"]["nodeSelector"] = json!({});
                    }
                    pod["spec"]["nodeSelector"][k] = v.clone();
                }
            }
        }
    }
    for t in rc["scheduling"]["tolerations"].as_array().into_iter().flatten() {
        if !pod["spec"]["tolerations"].is_array() {
            pod["spec"]["tolerations"] = json!([]);
        }
        let list = pod["spec"]["tolerations"].as_array_mut().expect("made an array above");
        if !list.contains(t) {
            list.push(t.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_class_adds_its_overhead_and_scheduling_or_refuses() {
        let rc = json!({"handler": "kata", "overhead": {"podFixed": {"cpu": "250m", "memory": "120Mi"}},
            "scheduling": {"nodeSelector": {"sandbox": "kata"}, "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]}});
        let mut pod = json!({"spec": {"runtimeClassName": "kata", "containers": [], "nodeSelector": {"zone": "a"}}});
        admit(&mut pod, "kata", Some(&rc)).unwrap();
        assert_eq!(pod["spec"]["overhead"], json!({"cpu": "250m", "memory": "120Mi"}));
        assert_eq!(pod["spec"]["nodeSelector"], json!({"zone": "a", "sandbox": "kata"}));
        assert_eq!(pod["spec"]["tolerations"], json!([{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]));
        let again = pod.clone();
        admit(&mut pod, "kata", Some(&rc)).unwrap();
        assert_eq!(pod, again, "applying twice changes nothing");
        assert_eq!(admit(&mut json!({"spec": {}}), "gvisor", None).unwrap_err(), "pod rejected: RuntimeClass \"gvisor\" not found");
        let mut other = json!({"spec": {"overhead": {"cpu": "1"}}});
        assert_eq!(admit(&mut other, "kata", Some(&rc)).unwrap_err(), "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead");
        let mut clash = json!({"spec": {"nodeSelector": {"sandbox": "runc"}}});
        assert!(admit(&mut clash, "kata", Some(&rc)).unwrap_err().starts_with("conflict: runtimeClass.scheduling.nodeSelector[sandbox] = kata"));
        let mut plain = json!({"spec": {}});
        admit(&mut plain, "runc", Some(&json!({"handler": "runc"}))).unwrap();
        assert_eq!(plain, json!({"spec": {}}), "a class without overhead or scheduling changes nothing");
    }
}
