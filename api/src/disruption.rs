//! PodDisruptionBudgets' eviction rule, as Kubernetes decides it: shared by the API server's
//! eviction subresource and the deterministic simulation, which checks the rule against the
//! disruption controller under faults.

use serde_json::{Value, json};

/// Why an eviction was refused: the budget's wording, as Kubernetes words the 429's cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub budget: String,
    pub message: String,
}

/// The budget after the eviction of pod `pod` at `now` (RFC 3339), or why it is refused: an
/// allowed eviction spends one of `status.disruptionsAllowed` and records the pod in
/// `status.disruptedPods` until the disruption controller sees it go. A budget whose status
/// is older than its spec (`observedGeneration` behind `generation`) allows nothing. The
/// caller writes the budget back only if it is unchanged since it was read (a compare-and-swap
/// on its revision), and evicts the pod only once that write succeeded.
pub fn grant_eviction(pdb: &Value, pod: &str, now: &str) -> Result<Value, Refused> {
    let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
    let stale = pdb["status"]["observedGeneration"].as_i64().unwrap_or(0) < pdb["metadata"]["generation"].as_i64().unwrap_or(0);
    if allowed <= 0 || stale {
        let name = pdb["metadata"]["name"].as_str().unwrap_or("").to_string();
        let message = format!(
            "The disruption budget {name} needs {} healthy pods and has {} currently",
            pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0),
            pdb["status"]["currentHealthy"].as_i64().unwrap_or(0)
        );
        return Err(Refused { budget: name, message });
    }
    let mut next = pdb.clone();
    next["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if !next["status"]["disruptedPods"].is_object() {
        next["status"]["disruptedPods"] = json!({});
    }
    next["status"]["disruptedPods"][pod] = json!(now);
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(allowed: i64, generation: i64, observed: i64) -> Value {
        json!({"metadata": {"name": "web", "generation": generation},
            "status": {"observedGeneration": observed, "disruptionsAllowed": allowed, "desiredHealthy": 3, "currentHealthy": 3 + allowed}})
    }

    #[test]
    fn an_eviction_spends_one_disruption_and_is_recorded() {
        let next = grant_eviction(&pdb(2, 1, 1), "p1", "2026-12-05T00:00:00Z").unwrap();
        assert_eq!(next["status"]["disruptionsAllowed"], 1);
        assert_eq!(next["status"]["disruptedPods"]["p1"], "2026-12-05T00:00:00Z");
        let again = grant_eviction(&next, "p2", "2026-12-05T00:00:01Z").unwrap();
        assert_eq!((again["status"]["disruptionsAllowed"].as_i64(), again["status"]["disruptedPods"].as_object().map(|m| m.len())), (Some(0), Some(2)));
        assert!(grant_eviction(&again, "p3", "2026-12-05T00:00:02Z").is_err());
    }

    #[test]
    fn none_allowed_or_a_stale_status_refuses_with_kubernetes_wording() {
        let e = grant_eviction(&pdb(0, 1, 1), "p1", "t").unwrap_err();
        assert_eq!(e.message, "The disruption budget web needs 3 healthy pods and has 3 currently");
        assert!(grant_eviction(&pdb(5, 2, 1), "p1", "t").is_err(), "a status older than the spec allows nothing");
    }
}
