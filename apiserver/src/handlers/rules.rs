//! Rules of single resources and subresources: namespace deletion and finalize, the scale
//! subresource, pod binding and eviction.

use super::*;

impl Req<'_> {
    /// Deleting a namespace marks it Terminating; the namespace controller deletes what is in
    /// it and then finalizes it (`PUT .../finalize` with no `spec.finalizers`), which removes
    /// it. Creating anything in it meanwhile is Forbidden.
    pub(super) async fn delete_namespace(&self, cur: &Current) -> ApiResult {
        if cur.obj["metadata"].get("deletionTimestamp").is_some() || self.dry_run() {
            let s = Stored::parse(&encode_stored(&cur.obj)).map_err(ApiError::internal)?;
            return Ok(self.respond_object(StatusCode::OK, &s, cur.mod_revision));
        }
        let mut next = cur.obj.clone();
        meta_mut(&mut next).insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
        meta_mut(&mut next).insert("deletionGracePeriodSeconds".into(), json!(0));
        meta_mut(&mut next).remove("resourceVersion");
        next["status"]["phase"] = json!("Terminating");
        let spec_finalizers = next["spec"]["finalizers"].as_array().is_some_and(|a| !a.is_empty());
        let meta_finalizers = next["metadata"]["finalizers"].as_array().is_some_and(|a| !a.is_empty());
        if !spec_finalizers && !meta_finalizers {
            self.cas_delete(&self.key(), cur.mod_revision).await?;
            let s = Stored::parse(&encode_stored(&next)).map_err(ApiError::internal)?;
            return Ok(self.respond_object(StatusCode::OK, &s, cur.mod_revision));
        }
        match self.cas_put(&self.key(), cur.mod_revision, &next).await? {
            Some((s, rev)) => Ok(self.respond_object(StatusCode::OK, &s, rev)),
            None => Err(ApiError::conflict(self.info.group, self.info.resource, self.name())),
        }
    }

    /// `PUT /api/v1/namespaces/{name}/finalize`: sets `spec.finalizers`; a Terminating
    /// namespace with none left (and no metadata finalizers) is removed.
    pub(super) async fn finalize_namespace(&self) -> ApiResult {
        let body: Value = parse_body(self.ctype, &self.body)?;
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
            let mut next = cur.obj.clone();
            next["spec"]["finalizers"] = body["spec"]["finalizers"].clone();
            meta_mut(&mut next).remove("resourceVersion");
            let empty = next["spec"]["finalizers"].as_array().is_none_or(|a| a.is_empty()) && next["metadata"]["finalizers"].as_array().is_none_or(|a| a.is_empty());
            if empty && next["metadata"].get("deletionTimestamp").is_some() {
                if self.cas_delete(&key, cur.mod_revision).await? {
                    let s = Stored::parse(&encode_stored(&next)).map_err(ApiError::internal)?;
                    return Ok(self.respond_object(StatusCode::OK, &s, cur.mod_revision));
                }
                continue;
            }
            if let Some((s, rev)) = self.cas_put(&key, cur.mod_revision, &next).await? {
                return Ok(self.respond_object(StatusCode::OK, &s, rev));
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    pub(super) fn scale_of(&self, obj: &Value, rev: u64) -> Value {
        // A LabelSelector's matchLabels, or a ReplicationController's plain map.
        let labels = obj["spec"]["selector"].get("matchLabels").or_else(|| obj["spec"]["selector"].as_object().filter(|m| m.values().all(|v| v.is_string())).map(|_| &obj["spec"]["selector"]));
        let selector = labels.and_then(|m| m.as_object()).map(|m| {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
        });
        json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": self.name(), "namespace": self.namespace, "uid": meta_str(obj, "uid"), "resourceVersion": rev.to_string(), "creationTimestamp": meta_str(obj, "creationTimestamp")},
            "spec": {"replicas": obj["spec"].get("replicas").cloned().unwrap_or(json!(1))},
            "status": {"replicas": obj["status"].get("replicas").cloned().unwrap_or(json!(0)), "selector": selector.unwrap_or_default()},
        })
    }

    pub(super) async fn get_scale(&self) -> ApiResult {
        let cur = self.read(&self.key()).await?.ok_or_else(|| self.not_found())?;
        Ok(json_value(StatusCode::OK, &self.scale_of(&cur.obj, cur.mod_revision)))
    }

    pub(super) async fn write_scale(&self, change: impl Fn(&Value) -> Result<Value, ApiError>) -> ApiResult {
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
            let old_scale = self.scale_of(&cur.obj, cur.mod_revision);
            let mut scale = change(&old_scale)?;
            self.admit_subresource(Operation::Update, &mut scale, Some(&old_scale)).await?;
            if let Some(rv) = scale["metadata"].get("resourceVersion").and_then(|r| r.as_str())
                && rv != cur.mod_revision.to_string() {
                    return Err(ApiError::conflict(self.info.group, self.info.resource, self.name()));
                }
            let replicas = scale["spec"].get("replicas").and_then(|r| r.as_i64()).ok_or_else(|| {
                ApiError::invalid("autoscaling", "Scale", self.name(), vec![("spec.replicas".into(), "Required value".into())])
            })?;
            if replicas < 0 {
                return Err(ApiError::invalid("autoscaling", "Scale", self.name(), vec![("spec.replicas".into(), format!("Invalid value: {replicas}: must be greater than or equal to 0"))]));
            }
            let mut next = cur.obj.clone();
            next["spec"]["replicas"] = json!(replicas);
            if cur.obj["spec"] != next["spec"] {
                let g = cur.obj["metadata"].get("generation").and_then(|g| g.as_i64()).unwrap_or(0) + 1;
                meta_mut(&mut next).insert("generation".into(), json!(g));
            }
            meta_mut(&mut next).remove("resourceVersion");
            crate::ssa::record_update(Some(&cur.obj), &mut next, &self.manager(), &self.info.api_version(), &object::now_rfc3339(), false);
            if let Some((_, rev)) = self.cas_put(&key, cur.mod_revision, &next).await? {
                return Ok(json_value(StatusCode::OK, &self.scale_of(&next, rev)));
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    pub(super) async fn update_scale(&self) -> ApiResult {
        let body = self.parse_body()?;
        self.write_scale(move |_| Ok(body.clone())).await
    }

    pub(super) async fn patch_scale(&self) -> ApiResult {
        let ty = PatchType::from_content_type(self.ctype).ok_or_else(|| ApiError::unsupported_media_type(self.ctype))?;
        let body = self.body.clone();
        self.write_scale(move |s| {
            let mut doc = s.clone();
            patch::apply(ty, &mut doc, &body).map_err(ApiError::bad_request)?;
            Ok(doc)
        })
        .await
    }

    /// `pods/binding`: sets `spec.nodeName` once.
    pub(super) async fn bind(&self) -> ApiResult {
        let mut b = self.parse_body()?;
        self.admit_subresource(Operation::Create, &mut b, None).await?;
        let node = b["target"].get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).ok_or_else(|| {
            ApiError::invalid("", "Binding", self.name(), vec![("target.name".into(), "Required value".into())])
        })?;
        let key = self.key();
        for _ in 0..CAS_RETRIES_MAX {
            let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
            if let Some(n) = cur.obj["spec"].get("nodeName").and_then(|n| n.as_str()).filter(|n| !n.is_empty()) {
                return Err(ApiError {
                    code: 409,
                    reason: "Conflict",
                    message: format!("Operation cannot be fulfilled on pods/binding \"{}\": pod {} is already assigned to node \"{n}\"", self.name(), self.name()),
                    details: None,
                });
            }
            let Current { obj: mut next, mod_revision } = cur;
            next["spec"]["nodeName"] = json!(node);
            meta_mut(&mut next).remove("resourceVersion");
            if self.cas_put(&key, mod_revision, &next).await?.is_some() {
                return Ok(json_value(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})));
            }
        }
        Err(ApiError::conflict(self.info.group, self.info.resource, self.name()))
    }

    /// The eviction subresource: a graceful delete that a PodDisruptionBudget may refuse
    /// (429, as Kubernetes answers, so `kubectl drain` retries). An allowed eviction spends one
    /// of the budget's `disruptionsAllowed` (compare-and-swap on the budget) and is recorded in
    /// its `disruptedPods` until the disruption controller sees the pod go.
    pub(super) async fn evict(&self) -> ApiResult {
        let mut body = self.parse_body()?;
        self.admit_subresource(Operation::Create, &mut body, None).await?;
        let key = self.key();
        let cur = self.read(&key).await?.ok_or_else(|| self.not_found())?;
        let pod = &cur.obj;
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        let ns = self.namespace.as_deref().unwrap_or("");
        if phase != "Succeeded" && phase != "Failed" && pod["metadata"].get("deletionTimestamp").is_none() {
            let prefix = format!("/registry/policy/poddisruptionbudgets/{ns}/");
            let r = self.st.store.range(RangeRequest::prefix(prefix)).await?;
            let mut matching = Vec::new();
            for kv in &r.kvs {
                let v = Stored::from_kv(kv).map_err(ApiError::internal)?.value_at(kv.mod_revision).map_err(ApiError::internal)?;
                if api::meta::selector_matches(&v["spec"]["selector"], &pod["metadata"]["labels"]) {
                    matching.push((kv.key.clone(), kv.mod_revision, v));
                }
            }
            if matching.len() > 1 {
                return Err(ApiError::internal("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."));
            }
            if let Some((pkey, rev, pdb)) = matching.pop() {
                let mut pdb = api::disruption::grant_eviction(&pdb, self.name(), &object::now_rfc3339())
                    .map_err(|r| ApiError::too_many_requests("Cannot evict pod as it would violate the pod's disruption budget.", "DisruptionBudget", &r.message))?;
                meta_mut(&mut pdb).remove("resourceVersion");
                let k = String::from_utf8_lossy(&pkey).to_string();
                if self.cas_put(&k, rev, &pdb).await?.is_none() {
                    return Err(ApiError::conflict("policy", "poddisruptionbudgets", pdb["metadata"]["name"].as_str().unwrap_or("")));
                }
            }
        }
        // A graceful delete, with the eviction's deleteOptions.
        let grace = body["deleteOptions"]["gracePeriodSeconds"].as_i64().or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30);
        let bound = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        if bound && grace > 0 {
            if pod["metadata"].get("deletionTimestamp").is_none() {
                let mut next = pod.clone();
                let m = meta_mut(&mut next);
                m.insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                m.remove("resourceVersion");
                if self.cas_put(&key, cur.mod_revision, &next).await?.is_none() {
                    return Err(ApiError::conflict("", "pods", self.name()));
                }
            }
        } else {
            self.cas_delete(&key, cur.mod_revision).await?;
        }
        Ok(json_value(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})))
    }
}
