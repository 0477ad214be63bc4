//! `KubeSchedulerConfiguration` (kubescheduler.config.k8s.io/v1): profiles with their
//! scheduler names, enabled and disabled filter and score plugins with weights,
//! NodeResourcesFit's scoring strategy, `percentageOfNodesToScore` and `parallelism`. Unknown plugins,
//! kinds and strategies are errors naming what was wrong, not silently ignored.

use serde_json::Value;

use crate::framework::{Plugin, Profile, Strategy};

pub fn parse(text: &str) -> Result<Vec<Profile>, String> {
    let v: Value = serde_norway::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    if v["kind"] != "KubeSchedulerConfiguration" {
        return Err(format!("kind must be KubeSchedulerConfiguration, not {}", v["kind"]));
    }
    match v["apiVersion"].as_str() {
        Some("kubescheduler.config.k8s.io/v1") => {}
        other => return Err(format!("apiVersion must be kubescheduler.config.k8s.io/v1, not {other:?}")),
    }
    let pct = match v.get("percentageOfNodesToScore") {
        None | Some(Value::Null) => 0,
        Some(p) => p.as_u64().filter(|p| *p <= 100).ok_or("percentageOfNodesToScore must be 0..100")? as u32,
    };
    let parallelism = match v.get("parallelism") {
        None | Some(Value::Null) => None,
        Some(p) => Some(p.as_u64().filter(|p| (1..=1024).contains(p)).ok_or("parallelism must be 1..1024")? as usize),
    };
    let profiles = match v["profiles"].as_array() {
        Some(p) if !p.is_empty() => p.clone(),
        _ => vec![serde_json::json!({})],
    };
    let mut out = Vec::new();
    for p in profiles {
        let mut prof = Profile { percentage_of_nodes_to_score: pct, ..Default::default() };
        if let Some(n) = parallelism {
            prof.parallelism = n;
        }
        if let Some(n) = p["schedulerName"].as_str() {
            prof.scheduler_name = n.to_string();
        }
        if let Some(x) = p["percentageOfNodesToScore"].as_u64() {
            prof.percentage_of_nodes_to_score = x.min(100) as u32;
        }
        let names = |list: &Value| -> Result<Vec<(String, i64)>, String> {
            list.as_array().into_iter().flatten().map(|e| {
                let n = e["name"].as_str().ok_or("a plugin entry needs a name")?.to_string();
                if n != "*" && Plugin::parse(&n).is_none() {
                    return Err(format!("unknown plugin {n:?} (known: {})", Plugin::ALL.map(|p| p.name()).join(", ")));
                }
                Ok((n, e["weight"].as_i64().unwrap_or(0)))
            }).collect()
        };
        let filter = &p["plugins"]["filter"];
        for (n, _) in names(&filter["disabled"])? {
            if n == "*" { prof.filters.clear() } else { prof.filters.retain(|x| x.name() != n) }
        }
        for (n, _) in names(&filter["enabled"])? {
            let pl = Plugin::parse(&n).ok_or(format!("plugin {n:?} cannot be enabled as *"))?;
            if !prof.filters.contains(&pl) {
                prof.filters.push(pl);
            }
        }
        let score = &p["plugins"]["score"];
        for (n, _) in names(&score["disabled"])? {
            if n == "*" { prof.scores.clear() } else { prof.scores.retain(|(x, _)| x.name() != n) }
        }
        for (n, w) in names(&score["enabled"])? {
            let pl = Plugin::parse(&n).ok_or(format!("plugin {n:?} cannot be enabled as *"))?;
            let w = if w <= 0 { 1 } else { w.min(100) };
            match prof.scores.iter_mut().find(|(x, _)| *x == pl) {
                Some(e) => e.1 = w,
                None => prof.scores.push((pl, w)),
            }
        }
        for pc in p["pluginConfig"].as_array().into_iter().flatten() {
            if pc["name"] == "NodeResourcesFit" {
                match pc["args"]["scoringStrategy"]["type"].as_str() {
                    None | Some("LeastAllocated") => prof.strategy = Strategy::LeastAllocated,
                    Some("MostAllocated") => prof.strategy = Strategy::MostAllocated,
                    Some(o) => return Err(format!("NodeResourcesFit scoringStrategy {o:?} is not supported (LeastAllocated, MostAllocated)")),
                }
            }
            if pc["name"] == "DefaultPreemption" {
                let d = crate::preemption::PreemptionArgs::default();
                let num = |k: &str, dflt: u32| -> Result<i64, String> {
                    match &pc["args"][k] {
                        serde_json::Value::Null => Ok(i64::from(dflt)),
                        v => v.as_i64().ok_or(format!("DefaultPreemption {k}: must be an integer, got {v}")),
                    }
                };
                prof.preemption = crate::preemption::PreemptionArgs::new(num("minCandidateNodesPercentage", d.min_candidate_nodes_percentage)?, num("minCandidateNodesAbsolute", d.min_candidate_nodes_absolute)?)?;
            }
        }
        if out.iter().any(|x: &Profile| x.scheduler_name == prof.scheduler_name) {
            return Err(format!("two profiles named {:?}", prof.scheduler_name));
        }
        out.push(prof);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_preemption_arguments_are_read_and_checked() {
        let cfg = |args: &str| parse(&format!("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: default-scheduler\n  pluginConfig:\n  - name: DefaultPreemption\n    args: {args}\n"));
        let p = cfg("{minCandidateNodesPercentage: 5, minCandidateNodesAbsolute: 20}").unwrap();
        assert_eq!(p[0].preemption, crate::preemption::PreemptionArgs { min_candidate_nodes_percentage: 5, min_candidate_nodes_absolute: 20 });
        assert_eq!(cfg("{minCandidateNodesAbsolute: 7}").unwrap()[0].preemption.min_candidate_nodes_percentage, 10);
        assert!(cfg("{minCandidateNodesPercentage: 0, minCandidateNodesAbsolute: 0}").unwrap_err().contains("cannot be zero"));
        assert!(cfg("{minCandidateNodesPercentage: 150}").unwrap_err().contains("not in valid range [0, 100]"));
        assert!(cfg("{minCandidateNodesAbsolute: ten}").unwrap_err().contains("must be an integer"));
    }

    #[test]
    fn profiles_plugins_and_strategy() {
        let ps = parse(
            "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
percentageOfNodesToScore: 30
parallelism: 4
profiles:
- schedulerName: default-scheduler
- schedulerName: bin-packer
  plugins:
    filter:
      disabled: [{name: NodePorts}]
    score:
      disabled: [{name: '*'}]
      enabled: [{name: NodeResourcesFit, weight: 5}]
  pluginConfig:
  - name: NodeResourcesFit
    args: {scoringStrategy: {type: MostAllocated}}
",
        )
        .unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].percentage_of_nodes_to_score, 30);
        assert_eq!((ps[0].parallelism, ps[1].parallelism), (4, 4));
        assert_eq!(ps[1].scheduler_name, "bin-packer");
        assert!(!ps[1].filters.contains(&Plugin::NodePorts));
        assert_eq!(ps[1].scores, vec![(Plugin::NodeResourcesFit, 5)]);
        assert_eq!(ps[1].strategy, Strategy::MostAllocated);
    }

    #[test]
    fn mistakes_are_named() {
        let base = "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n";
        assert!(parse(&format!("{base}profiles: [{{plugins: {{score: {{enabled: [{{name: Nope}}]}}}}}}]")).unwrap_err().contains("unknown plugin \"Nope\""));
        assert!(parse("kind: Other").unwrap_err().contains("KubeSchedulerConfiguration"));
        assert!(parse(&format!("{base}percentageOfNodesToScore: 300")).is_err());
        assert!(parse(&format!("{base}parallelism: 0")).unwrap_err().contains("parallelism"));
        assert!(parse(&format!("{base}profiles: [{{schedulerName: a}}, {{schedulerName: a}}]")).unwrap_err().contains("two profiles"));
        assert!(parse(": : :").is_err());
    }
}
