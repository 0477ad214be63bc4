//! HorizontalPodAutoscaler (autoscaling/v2) decisions, pure: the replica count a metric ratio
//! (or an AverageValue over a total) asks for, then kube-controller-manager's `behavior`
//! (stabilization windows, then the scale-up and scale-down policies' rate limits, chosen by
//! `selectPolicy`); and the query text of the custom and external metrics APIs.

use std::collections::VecDeque;

use client::obj::Obj;

/// kube-controller-manager's rule: replicas follow the ratio of the current metric to its
/// target, within a 10% tolerance, clamped to [min, max].
pub fn desired_replicas(current_ready: i64, current_replicas: i64, ratio: f64, min: i64, max: i64) -> i64 {
    let want = if (ratio - 1.0).abs() <= 0.1 || !ratio.is_finite() { current_replicas } else { (ratio * current_ready as f64).ceil() as i64 };
    want.clamp(min.max(1), max.max(min.max(1)))
}

/// kube-controller-manager's rule for an AverageValue target over a total (an Object or
/// External metric): as many replicas as the total needs at the target each, unless the
/// total per current replica is within the 10% tolerance of it.
pub fn average_value_replicas(total_milli: i64, target_milli: i64, current_replicas: i64, min: i64, max: i64) -> i64 {
    let target = target_milli.max(1);
    let ratio = total_milli as f64 / (target as f64 * current_replicas.max(1) as f64);
    let want = if (ratio - 1.0).abs() <= 0.1 { current_replicas } else { (total_milli as f64 / target as f64).ceil() as i64 };
    want.clamp(min.max(1), max.max(min.max(1)))
}

/// A structured label selector as the `labelSelector` query text (`a=b,c in (d,e),!f`).
pub fn selector_text(sel: &Obj) -> String {
    let mut parts: Vec<String> = sel["matchLabels"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let k = e["key"].as_str().unwrap_or("");
        let vals: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        match e["operator"].as_str().unwrap_or("") {
            "In" => parts.push(format!("{k} in ({})", vals.join(","))),
            "NotIn" => parts.push(format!("{k} notin ({})", vals.join(","))),
            "Exists" => parts.push(k.to_string()),
            "DoesNotExist" => parts.push(format!("!{k}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// Percent-encodes a query value.
pub fn query_escape(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The plural resource name of a kind, for a custom metrics path (`Ingress` -> `ingresses`);
/// Kubernetes asks its REST mapper, these are English's regular plurals.
pub fn plural_of(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if k.ends_with('s') || k.ends_with("x") || k.ends_with("ch") || k.ends_with("sh") {
        format!("{k}es")
    } else if let Some(stem) = k.strip_suffix('y').filter(|s| !s.ends_with(['a', 'e', 'i', 'o', 'u'])) {
        format!("{stem}ies")
    } else {
        format!("{k}s")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// The policy that allows the most change.
    Max,
    /// The policy that allows the least change.
    Min,
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// At most this many pods per period.
    Pods { value: i64, period: i64 },
    /// At most this percentage of the replicas at the period's start, per period.
    Percent { value: i64, period: i64 },
}

impl Policy {
    fn period(&self) -> i64 {
        match self {
            Policy::Pods { period, .. } | Policy::Percent { period, .. } => *period,
        }
    }
}

/// One direction's rules (`behavior.scaleUp` or `behavior.scaleDown`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub window: i64,
    pub select: Select,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// The rules of `behavior` in one direction, with Kubernetes' defaults: up, no window,
    /// the larger of 100% and 4 pods per 15 s; down, a 300 s window and 100% per 15 s.
    pub fn of(behavior: &Obj, up: bool) -> Rules {
        let b = &behavior[if up { "scaleUp" } else { "scaleDown" }];
        let policies: Vec<Policy> = match b["policies"].as_array() {
            Some(list) => list
                .iter()
                .filter_map(|p| {
                    let (value, period) = (p["value"].as_i64()?, p["periodSeconds"].as_i64()?.clamp(1, 1800));
                    match p["type"].as_str()? {
                        "Pods" => Some(Policy::Pods { value, period }),
                        "Percent" => Some(Policy::Percent { value, period }),
                        _ => None,
                    }
                })
                .collect(),
            None if up => vec![Policy::Percent { value: 100, period: 15 }, Policy::Pods { value: 4, period: 15 }],
            None => vec![Policy::Percent { value: 100, period: 15 }],
        };
        let select = match b["selectPolicy"].as_str() {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            _ => Select::Max,
        };
        let window = b["stabilizationWindowSeconds"].as_i64().unwrap_or(if up { 0 } else { 300 }).clamp(0, 3600);
        Rules { window, select, policies }
    }
}

/// What one HPA remembers between syncs: its recommendations and its scale changes, each
/// with the time (unix seconds); bounded by the longest window and period.
#[derive(Debug, Default)]
pub struct History {
    recommendations: VecDeque<(i64, i64)>,
    changes: VecDeque<(i64, i64)>,
}

/// At most this many recommendations or changes are kept per HPA (one a sync).
const HISTORY_MAX: usize = 4096;

/// The replica count to set: `desired` (from the metrics, within [min, max]) stabilized, then
/// limited by the policies, as kube-controller-manager's `normalizeDesiredReplicasWithBehaviors`.
pub fn decide(h: &mut History, now: i64, current: i64, desired: i64, min: i64, max: i64, up: &Rules, down: &Rules) -> i64 {
    // Stabilization: up to the lowest recommendation of the up window, down to the highest of
    // the down window.
    h.recommendations.push_back((now, desired));
    let keep = up.window.max(down.window);
    while h.recommendations.front().is_some_and(|(t, _)| now - t > keep) || h.recommendations.len() > HISTORY_MAX {
        h.recommendations.pop_front();
    }
    let within = |w: i64| h.recommendations.iter().filter(move |(t, _)| now - t <= w).map(|(_, r)| *r);
    let up_rec = within(up.window).min().unwrap_or(desired);
    let down_rec = within(down.window).max().unwrap_or(desired);
    let mut rec = current;
    if rec < up_rec {
        rec = up_rec;
    }
    if rec > down_rec {
        rec = down_rec;
    }
    // Rate limits over the changes made within each policy's period.
    let changed_within = |period: i64, sign: i64| -> i64 { h.changes.iter().filter(|(t, c)| now - t <= period && c.signum() == sign).map(|(_, c)| c.abs()).sum() };
    if rec > current {
        let limit = match up.select {
            Select::Disabled => current,
            select => {
                let limits = up.policies.iter().map(|p| {
                    let start = current - changed_within(p.period(), 1);
                    match *p {
                        Policy::Pods { value, .. } => start + value,
                        Policy::Percent { value, .. } => (start as f64 * (1.0 + value as f64 / 100.0)).ceil() as i64,
                    }
                });
                if select == Select::Max { limits.max() } else { limits.min() }.unwrap_or(current)
            }
        };
        rec = rec.min(limit).min(max).max(current);
    } else if rec < current {
        let limit = match down.select {
            Select::Disabled => current,
            select => {
                let limits = down.policies.iter().map(|p| {
                    let start = current + changed_within(p.period(), -1);
                    match *p {
                        Policy::Pods { value, .. } => start - value,
                        Policy::Percent { value, .. } => (start as f64 * (1.0 - value as f64 / 100.0)).ceil() as i64,
                    }
                });
                // For a scale-down the policy allowing the most change has the lowest limit.
                if select == Select::Max { limits.min() } else { limits.max() }.unwrap_or(current)
            }
        };
        rec = rec.max(limit).max(min.max(1)).min(current);
    }
    if rec != current {
        h.changes.push_back((now, rec - current));
    }
    let longest = up.policies.iter().chain(&down.policies).map(Policy::period).max().unwrap_or(0);
    while h.changes.front().is_some_and(|(t, _)| now - t > longest) || h.changes.len() > HISTORY_MAX {
        h.changes.pop_front();
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hpa_arithmetic() {
        assert_eq!(desired_replicas(2, 2, 2.0, 1, 10), 4);
        assert_eq!(desired_replicas(2, 2, 1.05, 1, 10), 2, "within tolerance");
        assert_eq!(desired_replicas(4, 4, 0.5, 1, 10), 2);
        assert_eq!(desired_replicas(4, 4, 10.0, 1, 5), 5, "clamped to max");
        assert_eq!(desired_replicas(4, 4, 0.01, 2, 5), 2, "clamped to min");
    }

    #[test]
    fn average_value_targets_divide_the_total() {
        // 100 at 30 each: 4 replicas, from 1 and again from 4 (25 each is not within 10%).
        assert_eq!(average_value_replicas(100_000, 30_000, 1, 1, 10), 4);
        assert_eq!(average_value_replicas(100_000, 30_000, 4, 1, 10), 4);
        // 95 over 3 replicas is 31.7 each: within 10% of 30, stays at 3 (ceil would say 4).
        assert_eq!(average_value_replicas(95_000, 30_000, 3, 1, 10), 3);
        assert_eq!(average_value_replicas(1_000_000, 30_000, 1, 1, 10), 10, "clamped to max");
        assert_eq!(average_value_replicas(0, 30_000, 5, 2, 10), 2, "clamped to min");
    }

    #[test]
    fn selectors_become_query_text() {
        let sel = json!({"matchLabels": {"queue": "worker"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "x", "operator": "DoesNotExist"}]});
        assert_eq!(selector_text(&Obj::from(sel)), "queue=worker,tier in (a,b),!x");
        assert_eq!(query_escape("a=b,c in (d)"), "a%3Db%2Cc%20in%20%28d%29");
        assert_eq!((plural_of("Ingress").as_str(), plural_of("Service").as_str(), plural_of("Policy").as_str(), plural_of("Gateway").as_str()), ("ingresses", "services", "policies", "gateways"));
    }

    #[test]
    fn behavior_defaults_are_kubernetes() {
        let up = Rules::of(&Obj::from(json!(null)), true);
        assert_eq!(up, Rules { window: 0, select: Select::Max, policies: vec![Policy::Percent { value: 100, period: 15 }, Policy::Pods { value: 4, period: 15 }] });
        let down = Rules::of(&Obj::from(json!({})), false);
        assert_eq!(down, Rules { window: 300, select: Select::Max, policies: vec![Policy::Percent { value: 100, period: 15 }] });
        let custom = Rules::of(&Obj::from(json!({"scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Min", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]}})), false);
        assert_eq!(custom, Rules { window: 60, select: Select::Min, policies: vec![Policy::Pods { value: 1, period: 30 }] });
    }

    #[test]
    fn scale_down_is_stabilized_over_its_window() {
        let (up, down) = (Rules::of(&Obj::from(json!(null)), true), Rules::of(&Obj::from(json!(null)), false));
        let mut h = History::default();
        assert_eq!(decide(&mut h, 0, 4, 6, 1, 10, &up, &down), 6, "up at once (100% allowed)");
        assert_eq!(decide(&mut h, 10, 6, 2, 1, 10, &up, &down), 6, "down is held by the 6 of 10 s ago");
        assert_eq!(decide(&mut h, 320, 6, 2, 1, 10, &up, &down), 2, "after the window");
        let no_window = Rules { window: 0, ..down.clone() };
        assert_eq!(decide(&mut History::default(), 0, 6, 2, 1, 10, &up, &no_window), 2);
    }

    #[test]
    fn policies_limit_the_rate_and_select_policy_picks_among_them() {
        let up = Rules::of(&Obj::from(json!(null)), true);
        let down0 = Rules { window: 0, ..Rules::of(&Obj::from(json!(null)), false) };
        // Up: max(100%, 4 pods) per 15 s from 2 replicas: 4 (100%) vs 6 (+4): 6.
        let mut h = History::default();
        assert_eq!(decide(&mut h, 0, 2, 20, 1, 50, &up, &down0), 6);
        // Within the same 15 s, the period started at 2: still at most 6.
        assert_eq!(decide(&mut h, 5, 6, 20, 1, 50, &up, &down0), 6);
        // A new period: from 6, max(12, 10): 12.
        assert_eq!(decide(&mut h, 21, 6, 20, 1, 50, &up, &down0), 12);
        // selectPolicy Min: the smaller of the two, 4 then.
        let up_min = Rules { select: Select::Min, ..up.clone() };
        assert_eq!(decide(&mut History::default(), 0, 2, 20, 1, 50, &up_min, &down0), 4);
        // Disabled: no scale-up at all.
        let up_off = Rules { select: Select::Disabled, ..up.clone() };
        assert_eq!(decide(&mut History::default(), 0, 2, 20, 1, 50, &up_off, &down0), 2);
        // Down by at most 1 pod a minute.
        let slow = Rules { window: 0, select: Select::Max, policies: vec![Policy::Pods { value: 1, period: 60 }] };
        let mut h = History::default();
        assert_eq!(decide(&mut h, 0, 10, 2, 1, 50, &up, &slow), 9);
        assert_eq!(decide(&mut h, 30, 9, 2, 1, 50, &up, &slow), 9, "one pod already removed this minute");
        assert_eq!(decide(&mut h, 61, 9, 2, 1, 50, &up, &slow), 8);
        // Down by 50% per period, never below min.
        let half = Rules { window: 0, select: Select::Max, policies: vec![Policy::Percent { value: 50, period: 15 }] };
        assert_eq!(decide(&mut History::default(), 0, 10, 1, 1, 50, &up, &half), 5);
        assert_eq!(decide(&mut History::default(), 0, 10, 1, 7, 50, &up, &half), 7);
        // Two scale-down policies: Max takes the one allowing the most change (50%: to 5),
        // Min the least (1 pod: to 9).
        let two = Rules { window: 0, select: Select::Max, policies: vec![Policy::Pods { value: 1, period: 60 }, Policy::Percent { value: 50, period: 15 }] };
        assert_eq!(decide(&mut History::default(), 0, 10, 1, 1, 50, &up, &two), 5);
        assert_eq!(decide(&mut History::default(), 0, 10, 1, 1, 50, &up, &Rules { select: Select::Min, ..two.clone() }), 9);
        // Up is capped by max.
        assert_eq!(decide(&mut History::default(), 0, 10, 40, 1, 12, &up, &down0), 12);
    }
}
