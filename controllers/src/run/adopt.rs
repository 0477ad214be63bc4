//! Kubernetes' ControllerRefManager: a controller claims the objects its selector matches.
//! It adopts orphans (no controller reference, not being deleted) by adding itself as their
//! controller, and releases the objects it controls that no longer match; an owner being
//! deleted does neither. Both are conditional patches (the object's resourceVersion), so an
//! object changed meanwhile is left for the next sync. Before adopting, the owner is read
//! again from the API (not the cache), as Kubernetes' `canAdopt` does: an owner deleted (or
//! replaced by one of the same name) since the cache saw it adopts nothing.

#[allow(unused_imports)]
use super::*;

/// The owner as a controller reference.
fn reference(owner: &Obj, api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

/// What to do with each candidate (pure: table-tested).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claim {
    Keep,
    Adopt,
    Release,
    Ignore,
}

pub(super) fn decide(owner: &Obj, selector: &Obj, obj: &Obj) -> Claim {
    let uid = &owner["metadata"]["uid"];
    let mine = controller_of(obj).is_some_and(|c| c["uid"] == *uid);
    // No selector (a Job whose selector was never generated): what it owns is its own, and
    // it adopts nothing.
    if !selector.is_object() {
        return if mine { Claim::Keep } else { Claim::Ignore };
    }
    let matches = selector_matches(selector, &obj["metadata"]["labels"]);
    let owner_deleting = owner["metadata"].get("deletionTimestamp").is_some();
    let deleting = obj["metadata"].get("deletionTimestamp").is_some();
    match (mine, matches) {
        (true, true) => Claim::Keep,
        (true, false) if owner_deleting || deleting => Claim::Keep,
        (true, false) => Claim::Release,
        (false, true) if controller_of(obj).is_none() && !owner_deleting && !deleting => Claim::Adopt,
        _ => Claim::Ignore,
    }
}

/// The objects `owner` controls after claiming: those it owned that still match, and the
/// orphans it adopted. `owned` and `orphans` come from the informer; `path` is an object's
/// API path (for the patches).
pub(super) async fn claim(
    client: &Client,
    owner: &Obj,
    owner_path: &str,
    (api_version, kind): (&str, &str),
    selector: &Obj,
    owned: Vec<Arc<Obj>>,
    orphans: Vec<Arc<Obj>>,
    path: impl Fn(&Obj) -> String,
) -> Result<Vec<Arc<Obj>>, String> {
    let mut out = Vec::with_capacity(owned.len());
    let mut fresh_checked = false;
    for o in owned.into_iter().chain(orphans) {
        match decide(owner, selector, &o) {
            Claim::Keep => out.push(o),
            Claim::Ignore => {}
            Claim::Release => {
                let refs: Vec<Obj> = o["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter(|r| r["uid"] != owner["metadata"]["uid"]).cloned().collect();
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": o["metadata"]["resourceVersion"]}});
                match client.merge_patch_quiet(&path(&o), &patch).await {
                    Ok(()) | Err(ClientError::Status { code: 404 | 409, .. }) => {}
                    Err(e) => return Err(err(e)),
                }
            }
            Claim::Adopt => {
                if !fresh_checked {
                    // canAdopt: the owner as the API has it now.
                    let now = client.get(owner_path).await.map_err(err)?;
                    if now["metadata"]["uid"] != owner["metadata"]["uid"] || now["metadata"].get("deletionTimestamp").is_some() {
                        return Ok(out);
                    }
                    fresh_checked = true;
                }
                let mut refs: Vec<Value> = o["metadata"]["ownerReferences"].as_array().into_iter().flatten().map(Obj::to_value).collect();
                refs.push(reference(owner, api_version, kind));
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": o["metadata"]["resourceVersion"]}});
                match client.merge_patch(&path(&o), &patch).await {
                    Ok(v) => out.push(Arc::new(Obj::from(v))),
                    Err(ClientError::Status { code: 404 | 409, .. }) => {}
                    Err(e) => return Err(err(e)),
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `decide` over the `Value`s the table builds.
    fn decide(owner: &Value, selector: &Value, obj: &Value) -> Claim {
        super::decide(&Obj::from(owner), &Obj::from(selector), &Obj::from(obj))
    }

    #[test]
    fn adopt_orphans_that_match_release_what_stopped_matching() {
        let owner = json!({"metadata": {"uid": "o1"}});
        let sel = json!({"matchLabels": {"app": "a"}});
        let pod = |labels: Value, refs: Value, deleting: bool| {
            let mut p = json!({"metadata": {"labels": labels, "ownerReferences": refs}});
            if deleting {
                p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            p
        };
        let mine = json!([{"uid": "o1", "controller": true}]);
        let other = json!([{"uid": "o2", "controller": true}]);
        let not_controller = json!([{"uid": "o2"}]);
        assert_eq!(decide(&owner, &sel, &pod(json!({"app": "a"}), mine.clone(), false)), Claim::Keep);
        assert_eq!(decide(&owner, &sel, &pod(json!({"app": "b"}), mine.clone(), false)), Claim::Release);
        assert_eq!(decide(&owner, &sel, &pod(json!({"app": "b"}), mine.clone(), true)), Claim::Keep, "a pod being deleted is not released");
        assert_eq!(decide(&owner, &sel, &pod(json!({"app": "a"}), json!(null), false)), Claim::Adopt);
        assert_eq!(decide(&owner, &sel, &pod(json!({"app": "a"}), not_controller, false)), Claim::Adopt, "an owner that is not a controller does not block adoption");
        assert_eq!(decide(&owner, &sel, &pod(json!({"app": "a"}), other, false)), Claim::Ignore, "another controller's");
        assert_eq!(decide(&owner, &sel, &pod(json!({"app": "a"}), json!(null), true)), Claim::Ignore, "a pod being deleted is not adopted");
        assert_eq!(decide(&owner, &sel, &pod(json!({"app": "b"}), json!(null), false)), Claim::Ignore);
        assert_eq!(decide(&owner, &Value::Null, &pod(json!({"app": "b"}), json!([{"uid": "o1", "controller": true}]), false)), Claim::Keep, "no selector: owned stays owned");
        assert_eq!(decide(&owner, &Value::Null, &pod(json!({"app": "a"}), json!(null), false)), Claim::Ignore, "no selector: nothing adopted");
        let deleting_owner = json!({"metadata": {"uid": "o1", "deletionTimestamp": "2026-01-01T00:00:00Z"}});
        assert_eq!(decide(&deleting_owner, &sel, &pod(json!({"app": "a"}), json!(null), false)), Claim::Ignore, "an owner being deleted adopts nothing");
        assert_eq!(decide(&deleting_owner, &sel, &pod(json!({"app": "b"}), mine, false)), Claim::Keep, "and releases nothing");
    }
}
