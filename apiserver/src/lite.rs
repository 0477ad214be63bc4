//! The few fields admission reads from cached objects, decoded without building the rest:
//! whether a namespace is being deleted, and a PriorityClass's value. Each is read on every
//! create, so a whole-object parse would be the cost of the check.

use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default, rename = "deletionTimestamp")]
    deletion_timestamp: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct WithMeta {
    #[serde(default)]
    metadata: Meta,
}

/// Whether the object (a namespace) has a deletionTimestamp. An object that does not parse
/// is not terminating: the store holds only what the API server validated.
pub fn is_terminating(json: &[u8]) -> bool {
    serde_json::from_slice::<WithMeta>(json).is_ok_and(|o| o.metadata.deletion_timestamp.is_some())
}

/// What the Priority admission plugin reads of a PriorityClass.
#[derive(Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PriorityClass {
    #[serde(default)]
    pub value: i64,
    #[serde(default)]
    pub global_default: bool,
    #[serde(default)]
    pub preemption_policy: Option<String>,
}

impl PriorityClass {
    pub fn parse(json: &[u8]) -> Option<PriorityClass> {
        serde_json::from_slice(json).ok()
    }

    /// The pod's `spec.priority` and `spec.preemptionPolicy` (Kubernetes' default policy when
    /// the class has none).
    pub fn value_and_policy(&self) -> (i64, String) {
        (self.value, self.preemption_policy.clone().unwrap_or_else(|| "PreemptLowerPriority".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminating_namespaces_are_recognised() {
        assert!(is_terminating(br#"{"kind":"Namespace","metadata":{"name":"a","deletionTimestamp":"2026-12-03T00:00:00Z"}}"#));
        assert!(!is_terminating(br#"{"kind":"Namespace","metadata":{"name":"a","labels":{"deletionTimestamp":"x"}}}"#));
        assert!(!is_terminating(br#"{"kind":"Namespace","metadata":{"name":"a"}}"#));
    }

    #[test]
    fn priority_classes_read_value_default_and_policy() {
        let p = PriorityClass::parse(br#"{"kind":"PriorityClass","metadata":{"name":"hi"},"value":1000,"globalDefault":true}"#).unwrap();
        assert_eq!(p, PriorityClass { value: 1000, global_default: true, preemption_policy: None });
        assert_eq!(p.value_and_policy(), (1000, "PreemptLowerPriority".to_string()));
        let p = PriorityClass::parse(br#"{"value":-5,"preemptionPolicy":"Never"}"#).unwrap();
        assert_eq!(p.value_and_policy(), (-5, "Never".to_string()));
    }
}
