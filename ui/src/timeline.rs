//! A pod's life as one ordered list, from server timestamps: created, each scheduling attempt
//! the scheduler recorded (with its per-plugin time and filter verdicts), bound, started,
//! ready, terminated, deleted. Pure: the caller hands in the pod and the attempts.

use jiff::Timestamp;
use serde_json::Value;

/// What happened at one moment of a pod's life.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    Created,
    /// A scheduling attempt (its index among the recorded ones, from 0).
    Attempt(usize),
    Scheduled { node: String },
    Unschedulable { message: String },
    /// The kubelet accepted the pod (`status.startTime`).
    Accepted,
    ContainerStarted { container: String },
    Ready,
    ContainerTerminated { container: String, reason: String, exit_code: i64 },
    DeletionRequested,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at: Timestamp,
    pub what: What,
}

fn ts(v: &Value) -> Option<Timestamp> {
    v.as_str().and_then(|s| s.parse::<Timestamp>().ok())
}

/// The pod's steps in time order (ties keep the order of a pod's life: created before
/// attempted before scheduled before started before ready). Timestamps that are missing or
/// unreadable leave their step out; the attempts are `/debug/scheduler/pods` objects with an
/// `at` field.
pub fn assemble(pod: &Value, attempts: &[Value]) -> Vec<Step> {
    let mut steps: Vec<(Timestamp, u8, What)> = Vec::new();
    let mut push = |at: Option<Timestamp>, rank: u8, what: What| {
        if let Some(at) = at {
            steps.push((at, rank, what));
        }
    };
    push(ts(&pod["metadata"]["creationTimestamp"]), 0, What::Created);
    for (i, a) in attempts.iter().enumerate() {
        push(ts(&a["at"]), 1, What::Attempt(i));
    }
    for c in pod["status"]["conditions"].as_array().into_iter().flatten() {
        let at = ts(&c["lastTransitionTime"]);
        match (c["type"].as_str(), c["status"].as_str()) {
            (Some("PodScheduled"), Some("True")) => push(at, 2, What::Scheduled { node: pod["spec"]["nodeName"].as_str().unwrap_or("").to_string() }),
            (Some("PodScheduled"), Some("False")) => push(at, 2, What::Unschedulable { message: c["message"].as_str().unwrap_or("").to_string() }),
            (Some("Ready"), Some("True")) => push(at, 5, What::Ready),
            _ => {}
        }
    }
    push(ts(&pod["status"]["startTime"]), 3, What::Accepted);
    for s in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("").to_string();
        push(ts(&s["state"]["running"]["startedAt"]), 4, What::ContainerStarted { container: name.clone() });
        let term = &s["state"]["terminated"];
        if term.is_object() {
            push(ts(&term["startedAt"]), 4, What::ContainerStarted { container: name.clone() });
            push(
                ts(&term["finishedAt"]),
                6,
                What::ContainerTerminated { container: name, reason: term["reason"].as_str().unwrap_or("").to_string(), exit_code: term["exitCode"].as_i64().unwrap_or(0) },
            );
        }
    }
    push(ts(&pod["metadata"]["deletionTimestamp"]), 7, What::DeletionRequested);
    // Kubernetes' timestamps have whole seconds; the scheduler's attempts have microseconds.
    // A step stamped T happened somewhere in [T, T+1): within one second the order of a life
    // decides, so an attempt at T.6 comes after creation at T and before binding at T.
    steps.sort_by(|a, b| (a.0.as_second(), a.1, a.0).cmp(&(b.0.as_second(), b.1, b.0)));
    steps.into_iter().map(|(at, _, what)| Step { at, what }).collect()
}

/// How long after the first step each step came, in seconds.
pub fn offsets(steps: &[Step]) -> Vec<f64> {
    let Some(first) = steps.first() else { return Vec::new() };
    steps.iter().map(|s| s.at.duration_since(first.at).as_secs_f64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2026-12-05T10:00:00Z"},
            "spec": {"nodeName": "n1"},
            "status": {
                "startTime": "2026-12-05T10:00:01Z",
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-05T10:00:03Z"},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-05T10:00:01Z"},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-12-05T10:00:01Z"}
                ],
                "containerStatuses": [{"name": "app", "state": {"running": {"startedAt": "2026-12-05T10:00:02Z"}}}]
            }
        })
    }

    #[test]
    fn steps_come_in_time_order_with_ties_in_the_order_of_a_life() {
        let attempts = [json!({"at": "2026-12-05T10:00:00.400000Z"}), json!({"at": "2026-12-05T10:00:00.900000Z"})];
        let steps = assemble(&pod(), &attempts);
        let what: Vec<&What> = steps.iter().map(|s| &s.what).collect();
        assert_eq!(
            what,
            vec![
                &What::Created,
                &What::Attempt(0),
                &What::Attempt(1),
                // Bound and accepted in the same second: bound first.
                &What::Scheduled { node: "n1".into() },
                &What::Accepted,
                &What::ContainerStarted { container: "app".into() },
                &What::Ready,
            ]
        );
        assert_eq!(offsets(&steps), vec![0.0, 0.4, 0.9, 1.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn an_attempt_within_the_second_of_whole_second_steps_keeps_its_place() {
        let attempts = [json!({"at": "2026-12-05T10:00:01.600000Z"})];
        let mut p = pod();
        p["metadata"]["creationTimestamp"] = json!("2026-12-05T10:00:01Z");
        let what: Vec<What> = assemble(&p, &attempts).into_iter().map(|s| s.what).collect();
        assert_eq!(&what[..3], &[What::Created, What::Attempt(0), What::Scheduled { node: "n1".into() }]);
    }

    #[test]
    fn a_pending_pod_shows_why_and_bad_timestamps_are_left_out() {
        let p = json!({
            "metadata": {"creationTimestamp": "not a time", "deletionTimestamp": "2026-12-05T10:00:09Z"},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available", "lastTransitionTime": "2026-12-05T10:00:05Z"}],
                       "containerStatuses": [{"name": "c", "state": {"terminated": {"reason": "Error", "exitCode": 3, "startedAt": "2026-12-05T10:00:06Z", "finishedAt": "2026-12-05T10:00:07Z"}}}]}
        });
        let steps = assemble(&p, &[json!({"at": 5})]);
        let what: Vec<&What> = steps.iter().map(|s| &s.what).collect();
        assert_eq!(
            what,
            vec![
                &What::Unschedulable { message: "0/3 nodes are available".into() },
                &What::ContainerStarted { container: "c".into() },
                &What::ContainerTerminated { container: "c".into(), reason: "Error".into(), exit_code: 3 },
                &What::DeletionRequested,
            ]
        );
        assert!(assemble(&json!({}), &[]).is_empty());
        assert!(offsets(&[]).is_empty());
    }
}
