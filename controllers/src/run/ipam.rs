//! The node IPAM controller: a pod range for every node that has none (decisions in
//! `crate::ipam`). One worker, so two nodes never get one range; ranges handed out but not yet
//! seen back through the informer count as taken.

use serde_json::json;

use super::{Ctx, Res, err};
use crate::identity::Ctl;

pub(super) async fn sync_node_cidr(ctx: &Ctx, name: &str) -> Res {
    let Some(ranges) = ctx.settings.node_ranges else { return Ok(None) };
    // Every node's range must be known before one is given.
    if !ctx.nodes.has_synced() {
        return Ok(Some(std::time::Duration::from_millis(200)));
    }
    let Some(node) = ctx.nodes.get(name) else {
        ctx.ipam_given.lock().unwrap().remove(name);
        return Ok(None);
    };
    if node["spec"]["podCIDR"].as_str().is_some_and(|c| !c.is_empty()) {
        ctx.ipam_given.lock().unwrap().remove(name);
        return Ok(None);
    }
    if !crate::ipam::wants_range(&node) || ctx.ipam_given.lock().unwrap().contains_key(name) {
        return Ok(None);
    }
    let pick = {
        let nodes = ctx.nodes.list();
        let given = ctx.ipam_given.lock().unwrap();
        let taken = nodes.iter().filter_map(|n| n["spec"]["podCIDR"].as_str()).map(str::to_string).chain(given.values().map(|n| n.to_string())).collect::<Vec<_>>();
        ranges.first_free(taken.iter().map(String::as_str))
    };
    let Some(range) = pick else {
        // Kubernetes' event; the node is looked at again when another is deleted.
        ctx.events.object(("v1", "Node"), &node, false, "CIDRNotAvailable", format!("Node {name} status is now: CIDRNotAvailable"));
        tracing::warn!(node = name, cluster = %ranges.cluster, "no pod range left for the node in the cluster range");
        return Ok(None);
    };
    ctx.ipam_given.lock().unwrap().insert(name.to_string(), range);
    let c = range.to_string();
    match ctx.c(Ctl::Node).merge_patch_quiet(&format!("/api/v1/nodes/{name}"), &json!({"spec": {"podCIDR": c, "podCIDRs": [c]}})).await {
        Ok(_) => Ok(None),
        Err(e) => {
            ctx.ipam_given.lock().unwrap().remove(name);
            ctx.events.object(("v1", "Node"), &node, false, "CIDRAssignmentFailed", format!("Node {name} status is now: CIDRAssignmentFailed"));
            Err(err(e))
        }
    }
}
