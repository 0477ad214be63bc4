//! What a create reads before it is written, as Kubernetes' admission plugins do:
//! NamespaceLifecycle and Priority from the watch caches (the store for what a cache has not
//! seen yet), ResourceQuota charges and Service cluster IPs as reservations made in the
//! create's own txn (`reserve.rs`).

use super::*;

impl Req<'_> {
    /// The objects of a built-in resource as the API server's watch cache has them: what
    /// admission reads instead of the store, as Kubernetes' admission plugins read their
    /// informers. None if that cache cannot start.
    pub(super) async fn cached(&self, group: &str, version: &str, resource: &str) -> Option<imbl::OrdMap<Bytes, Arc<watchcache::Object>>> {
        let info = self.st.reg.find(group, version, resource)?;
        let cache = self.st.caches.get(&self.st.store, &info).await.ok()?;
        Some(cache.snapshot().1)
    }

    /// NamespaceLifecycle: the namespace exists and is not being deleted. Read from the cache
    /// of namespaces; one the cache has not seen yet (just created) is looked up in the store.
    /// Returns the namespace's JSON (for Pod Security Admission), none when cluster-scoped.
    pub(super) async fn namespace_exists(&self) -> Result<Option<Bytes>, ApiError> {
        let Some(ns) = &self.namespace else { return Ok(None) };
        let key = format!("/registry/core/namespaces/{ns}");
        let cached = self.cached("", "v1", "namespaces").await.and_then(|m| m.get(key.as_bytes()).map(|o| o.json()));
        let json = match cached {
            Some(json) => json,
            None => match self.st.store.get(key).await? {
                Some(kv) => Stored::from_kv(&kv).map_err(ApiError::internal)?.at(kv.mod_revision),
                None => return Err(ApiError::not_found("", "namespaces", ns)),
            },
        };
        // Nothing new goes into a namespace being deleted.
        if crate::lite::is_terminating(&json) && self.info.kind != "Event" {
            return Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                self.info.resource,
                self.name.as_deref().unwrap_or("")
            )));
        }
        Ok(Some(json))
    }

    /// Pod Security Admission (`pod_security.rs`) of a create in a namespace (`ns_json`): a pod
    /// violating the namespace's `enforce` level is refused; what violates `warn` (and, for a
    /// workload's pod template, `enforce`) is a warning.
    pub(super) fn pod_security(&self, obj: &Value, ns_json: Option<&Bytes>) -> Result<(), ApiError> {
        use crate::pod_security::{Level, describe, level_of, version_of, violations};
        let spec = match (self.info.group, self.info.kind) {
            ("", "Pod") => &obj["spec"],
            ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job") | ("", "ReplicationController") => &obj["spec"]["template"]["spec"],
            ("batch", "CronJob") => &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => return Ok(()),
        };
        // Most namespaces carry no Pod Security label: skip parsing them.
        let Some(json) = ns_json.filter(|j| j.windows(crate::pod_security::LABEL_PREFIX.len()).any(|w| w == crate::pod_security::LABEL_PREFIX.as_bytes())) else { return Ok(()) };
        let ns: Value = serde_json::from_slice(json).map_err(|e| ApiError::internal(e.to_string()))?;
        let labels = &ns["metadata"]["labels"];
        let enforce = (level_of(labels, "enforce"), version_of(labels, "enforce"));
        let warn = (level_of(labels, "warn"), version_of(labels, "warn"));
        let is_pod = self.info.kind == "Pod";
        if is_pod && let Some(msg) = describe(enforce.0, enforce.1, &violations(enforce.0, enforce.1, spec)) {
            let name = obj["metadata"]["name"].as_str().unwrap_or("");
            return Err(ApiError::forbidden(format!("pods {name:?} is forbidden: violates {msg}")));
        }
        let mut levels = vec![warn];
        if !is_pod && enforce != warn {
            levels.push(enforce);
        }
        for (level, version) in levels.into_iter().filter(|(l, _)| *l != Level::Privileged) {
            if let Some(msg) = describe(level, version, &violations(level, version, spec)) {
                self.warnings.lock().unwrap().push(format!("would violate {msg}"));
            }
        }
        Ok(())
    }

    /// ResourceQuota admission (`quota.rs`): this create's charge on every quota of the
    /// namespace, made in the create's own txn (`reserve.rs`), or Forbidden.
    pub(super) async fn quota_reservations(&self, name: &str, obj: &Value) -> Result<Vec<Reservation>, ApiError> {
        let Some(ns) = self.namespace.as_deref() else { return Ok(vec![]) };
        let r = self.st.store.range(RangeRequest::prefix(format!("/registry/core/resourcequotas/{ns}/"))).await?;
        if r.kvs.is_empty() {
            return Ok(vec![]);
        }
        let delta = crate::quota::usage(self.info.group, self.info.resource, obj);
        reserve::quota_charges(&r.kvs, &delta, obj).map_err(|msg| ApiError::forbidden(format!("{} \"{name}\" is forbidden: {msg}", self.info.resource)))
    }

    /// A Service's cluster IP (`reserve.rs`): one asked for must be in the range and free; a
    /// Service without one gets a free one from a random place in the range. Its IPAddress
    /// object goes in the create's txn, and so do the node ports it takes.
    pub(super) async fn service_reservations(&self, obj: &mut Value) -> Result<Vec<Reservation>, ApiError> {
        let mut out = self.assign_node_ports(obj).await?;
        out.extend(self.cluster_ip_reservation(obj).await?);
        Ok(out)
    }

    async fn cluster_ip_reservation(&self, obj: &mut Value) -> Result<Option<Reservation>, ApiError> {
        let spec = &obj["spec"];
        if self.info.kind != "Service" || !self.info.group.is_empty() || spec.get("type").and_then(|t| t.as_str()) == Some("ExternalName") {
            return Ok(None);
        }
        let asked = spec.get("clusterIP").and_then(|c| c.as_str()).filter(|c| !c.is_empty()).map(String::from);
        if asked.as_deref() == Some("None") {
            return Ok(None); // headless
        }
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        let ns = self.namespace.clone().unwrap_or_default();
        let held = self.st.store.range(storage::RangeRequest { keys_only: true, ..storage::RangeRequest::prefix(reserve::IP_ADDRESSES) }).await?;
        let taken: std::collections::HashSet<std::net::Ipv4Addr> =
            held.kvs.iter().filter_map(|kv| std::str::from_utf8(&kv.key[reserve::IP_ADDRESSES.len()..]).ok()?.parse().ok()).collect();
        let invalid = |ip: &str, why: String| ApiError::invalid("", "Service", &name, vec![("spec.clusterIPs".into(), format!("Invalid value: []string{{\"{ip}\"}}: {why}"))]);
        let ip = match asked {
            Some(a) => {
                let ip: std::net::Ipv4Addr = a.parse().map_err(|_| invalid(&a, "must be a valid IP address".into()))?;
                if !reserve::in_range(ip) {
                    let (base, bits) = reserve::service_range();
                    return Err(invalid(&a, format!("failed to allocate IP {ip}: provided IP ({ip}) is not in the valid range. The range of valid IPs is {base}/{bits}")));
                }
                if taken.contains(&ip) {
                    return Err(invalid(&a, format!("failed to allocate IP {ip}: provided IP is already allocated")));
                }
                ip
            }
            None => reserve::pick_cluster_ip(&taken, rand::random()).ok_or_else(|| ApiError::internal("failed to allocate a serviceIP: range is full"))?,
        };
        obj["spec"]["clusterIP"] = json!(ip.to_string());
        obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
        Ok(Some(reserve::ip_reservation(ip, &ns, &name)))
    }

    /// A NodePort (or LoadBalancer) Service's ports without a node port get a free one from
    /// Kubernetes' default range, 30000-32767, on create and on update (a Service made a
    /// NodePort keeps the ports it has); one asked for must be in it and free. Free means
    /// no other Service holds it now. Each port taken is also returned as a reservation of
    /// its key under `reserve::NODE_PORTS`, guarded by that key's revision as read: two
    /// creates racing for one port write the same key, and the one whose txn comes second
    /// fails its compare and is admitted again, seeing the first's Service. An update
    /// reserves the ports it newly takes the same way (`Req::node_ports_taken`).
    pub(super) async fn assign_node_ports(&self, obj: &mut Value) -> Result<Vec<Reservation>, ApiError> {
        const RANGE: std::ops::RangeInclusive<u64> = 30000..=32767;
        let is_service = self.info.kind == "Service" && self.info.group.is_empty();
        let wants = matches!(obj["spec"]["type"].as_str(), Some("NodePort" | "LoadBalancer"));
        if !is_service || !wants {
            return Ok(vec![]);
        }
        // What the reservation keys hold now (a key left by a deleted Service is overwritten).
        let held = self.st.store.range(storage::RangeRequest::prefix(reserve::NODE_PORTS)).await?;
        let held: std::collections::HashMap<Bytes, u64> = held.kvs.iter().map(|kv| (kv.key.clone(), kv.mod_revision)).collect();
        let prefix = self.info.prefix(None);
        let all = self.st.store.range(storage::RangeRequest::prefix(prefix)).await?;
        let mut used = std::collections::HashSet::new();
        // The Service's own ports (an update) are not another's.
        let own = self.key();
        for kv in all.kvs.iter().filter(|kv| kv.key.as_ref() != own.as_bytes()) {
            if let Ok(v) = Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision)) {
                for p in v["spec"]["ports"].as_array().into_iter().flatten() {
                    if let Some(n) = p["nodePort"].as_u64().filter(|n| *n > 0) {
                        used.insert(n);
                    }
                }
            }
        }
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        let owner = Bytes::from(own.clone());
        let Some(ports) = obj["spec"].get_mut("ports").and_then(Value::as_array_mut) else { return Ok(vec![]) };
        // This Service's own node ports: node port -> (protocol, port) of each use. One node
        // port serves a TCP and a UDP port of the same number (DNS's 53), as Kubernetes
        // shares it; twice for one protocol is a duplicate.
        let mut own: std::collections::HashMap<u64, Vec<(String, u64)>> = std::collections::HashMap::new();
        let proto = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
        for p in ports.iter() {
            if let Some(n) = p["nodePort"].as_u64().filter(|n| *n > 0) {
                own.entry(n).or_default().push((proto(p), p["port"].as_u64().unwrap_or(0)));
            }
        }
        for (i, p) in ports.iter_mut().enumerate() {
            let (pr, num) = (proto(p), p["port"].as_u64().unwrap_or(0));
            match p["nodePort"].as_u64().filter(|n| *n > 0) {
                Some(n) if !RANGE.contains(&n) => {
                    return Err(ApiError::invalid("", "Service", &name, vec![(format!("spec.ports[{i}].nodePort"), format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is 30000-32767"))]));
                }
                Some(n) if used.contains(&n) => {
                    return Err(ApiError::invalid("", "Service", &name, vec![(format!("spec.ports[{i}].nodePort"), format!("Invalid value: {n}: provided port is already allocated"))]));
                }
                Some(n) if own.get(&n).is_some_and(|uses| uses.iter().filter(|(p2, _)| *p2 == pr).count() > 1) => {
                    return Err(ApiError::invalid("", "Service", &name, vec![(format!("spec.ports[{i}].nodePort"), format!("Duplicate value: {n}"))]));
                }
                Some(_) => {}
                None => {
                    // The node port of this Service's port of the same number and another
                    // protocol, if it has one; else a free one.
                    let shared = own.iter().find(|(_, uses)| uses.iter().any(|(p2, n2)| *n2 == num && *p2 != pr) && !uses.iter().any(|(p2, _)| *p2 == pr)).map(|(n, _)| *n);
                    let n = match shared {
                        Some(n) => n,
                        None => {
                            let start = rand::random_range(RANGE);
                            let free = (0..=(RANGE.end() - RANGE.start())).map(|k| RANGE.start() + (start - RANGE.start() + k) % (RANGE.end() - RANGE.start() + 1)).find(|n| !used.contains(n) && !own.contains_key(n));
                            free.ok_or_else(|| ApiError::internal("the node port range 30000-32767 is exhausted"))?
                        }
                    };
                    own.entry(n).or_default().push((pr, num));
                    p["nodePort"] = json!(n);
                }
            }
        }
        let mut taken: Vec<u64> = own.keys().copied().collect();
        taken.sort_unstable();
        Ok(taken
            .into_iter()
            .map(|n| {
                let key = Bytes::from(format!("{}{n}", reserve::NODE_PORTS));
                Reservation { mod_revision: held.get(&key).copied().unwrap_or(0), key, value: owner.clone() }
            })
            .collect())
    }

    /// The LimitRanger admission plugin (`limit_range.rs`) on a new pod or claim, then the
    /// pod's QoS class (computed after admission, as Kubernetes does).
    pub(super) async fn limit_ranges(&self, name: &str, obj: &mut Value) -> Result<(), ApiError> {
        let ranges: Vec<Value> = match self.namespace.as_deref() {
            Some(ns) => {
                let r = self.st.store.range(RangeRequest::prefix(format!("/registry/core/limitranges/{ns}/"))).await?;
                r.kvs.iter().filter_map(|kv| Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision)).ok()).collect()
            }
            None => vec![],
        };
        let r = if self.info.kind == "Pod" { crate::limit_range::admit_pod(&ranges, obj) } else { crate::limit_range::admit_claim(&ranges, obj) };
        if let Err(v) = r {
            return Err(ApiError::forbidden(crate::limit_range::message(self.info.resource, name, &v)));
        }
        if self.info.kind == "Pod" && obj["status"].is_object() {
            obj["status"]["qosClass"] = json!(crate::admission::qos_class(obj));
        }
        Ok(())
    }

    /// The ServiceAccount admission plugin on a new pod: `serviceAccountName` defaults to
    /// `default`; when the cluster issues ServiceAccount tokens and neither the pod nor its
    /// ServiceAccount turns `automountServiceAccountToken` off, a projected volume
    /// `kube-api-access-XXXXX` (a bound token, the cluster CA from the namespace's
    /// `kube-root-ca.crt`, the namespace) is added and mounted read-only in every container at
    /// `/var/run/secrets/kubernetes.io/serviceaccount`, as Kubernetes does (with TLS only). A ServiceAccount
    /// not created yet does not refuse the pod (Kubernetes refuses it): the kubelet waits for
    /// its token instead.
    pub(super) async fn service_account(&self, obj: &mut Value) -> Result<(), ApiError> {
        const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        let sa = obj["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).or_else(|| obj["spec"]["serviceAccount"].as_str().filter(|s| !s.is_empty())).unwrap_or("default").to_string();
        obj["spec"]["serviceAccountName"] = json!(sa);
        obj["spec"]["serviceAccount"] = json!(sa);
        // Only where tokens are issued and the cluster CA is published (TLS): under
        // `--insecure-http` there is no kube-root-ca.crt, and the pod would wait for it.
        let tls = matches!(self.st.authn, crate::authn::Mode::Tls { .. });
        if self.st.sa_keys.is_none() || !tls || !obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
            return Ok(());
        }
        let automount = match obj["spec"]["automountServiceAccountToken"].as_bool() {
            Some(b) => b,
            None => {
                let ns = self.namespace.as_deref().unwrap_or("default");
                match self.st.store.get(format!("/registry/core/serviceaccounts/{ns}/{sa}")).await? {
                    Some(kv) => Stored::from_kv(&kv).and_then(|s| s.value_at(kv.mod_revision)).ok().and_then(|v| v["automountServiceAccountToken"].as_bool()).unwrap_or(true),
                    None => true,
                }
            }
        };
        let mounted = ["containers", "initContainers"].iter().flat_map(|l| obj["spec"][*l].as_array().into_iter().flatten()).any(|c| c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"] == MOUNT));
        if !automount || mounted {
            return Ok(());
        }
        // Kubernetes' name alphabet (no vowels, no look-alikes).
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let suffix: String = (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
        let name = format!("kube-api-access-{suffix}");
        let volume = json!({"name": name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}});
        match obj["spec"]["volumes"].as_array_mut() {
            Some(v) => v.push(volume),
            None => obj["spec"]["volumes"] = json!([volume]),
        }
        for list in ["initContainers", "containers"] {
            // (get_mut: indexing would write `null` for a list the pod does not have.)
            for c in obj["spec"].get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                let m = json!({"name": name, "mountPath": MOUNT, "readOnly": true});
                match c["volumeMounts"].as_array_mut() {
                    Some(v) => v.push(m),
                    None => c["volumeMounts"] = json!([m]),
                }
            }
        }
        Ok(())
    }

    /// The DefaultStorageClass admission plugin: a claim that names no class (the field
    /// absent; `""` asks for none) gets the class annotated
    /// `storageclass.kubernetes.io/is-default-class: "true"` (the newest, if several).
    pub(super) async fn default_storage_class(&self, obj: &mut Value) -> Result<(), ApiError> {
        if !obj["spec"]["storageClassName"].is_null() || !obj["spec"].is_object() {
            return Ok(());
        }
        let r = self.st.store.range(RangeRequest::prefix("/registry/storage.k8s.io/storageclasses/")).await?;
        let mut defaults: Vec<(String, String)> = r
            .kvs
            .iter()
            .filter_map(|kv| Stored::from_kv(kv).and_then(|s| s.value_at(kv.mod_revision)).ok())
            .filter(|c| c["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true")
            .map(|c| (c["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string(), c["metadata"]["name"].as_str().unwrap_or("").to_string()))
            .collect();
        defaults.sort();
        if let Some((_, name)) = defaults.pop() {
            obj["spec"]["storageClassName"] = json!(name);
        }
        Ok(())
    }

    /// The Priority admission plugin: `spec.priorityClassName` (or the class marked
    /// `globalDefault`) becomes `spec.priority` and `spec.preemptionPolicy`.
    /// The RuntimeClass plugin (`runtime_class.rs`): the class from its cache (the store for
    /// one the cache has not seen yet).
    pub(super) async fn runtime_class(&self, name: &str, obj: &mut Value) -> Result<(), ApiError> {
        let Some(class) = obj["spec"]["runtimeClassName"].as_str().filter(|c| !c.is_empty()).map(String::from) else { return Ok(()) };
        let key = format!("/registry/node.k8s.io/runtimeclasses/{class}");
        let cached = self.cached("node.k8s.io", "v1", "runtimeclasses").await.and_then(|m| m.get(key.as_bytes()).and_then(|o| serde_json::from_slice::<Value>(&o.json()).ok()));
        let rc = match cached {
            Some(rc) => Some(rc),
            None => self.st.read_object("node.k8s.io", "runtimeclasses", None, &class).await?,
        };
        crate::runtime_class::admit(obj, &class, rc.as_ref()).map_err(|m| ApiError::forbidden(format!("pods \"{name}\" is forbidden: {m}")))
    }

    pub(super) async fn resolve_priority(&self, name: &str, obj: &mut Value) -> Result<(), ApiError> {
        let forbidden = |msg: String| ApiError::forbidden(format!("pods \"{name}\" is forbidden: {msg}"));
        let class = obj["spec"]["priorityClassName"].as_str().unwrap_or("").to_string();
        // From the cache of PriorityClasses; a class the cache has not seen yet (just
        // created) is looked up in the store.
        const PREFIX: &str = "/registry/scheduling.k8s.io/priorityclasses/";
        let classes = self.cached("scheduling.k8s.io", "v1", "priorityclasses").await;
        let found: Option<(i64, String)> = match class.as_str() {
            "system-node-critical" => Some((2_000_001_000, "PreemptLowerPriority".into())),
            "system-cluster-critical" => Some((2_000_000_000, "PreemptLowerPriority".into())),
            "" => match &classes {
                Some(m) => m.values().filter_map(|o| crate::lite::PriorityClass::parse(&o.json())).find(|p| p.global_default).map(|p| p.value_and_policy()),
                None => {
                    let r = self.st.store.range(RangeRequest::prefix(PREFIX)).await?;
                    r.kvs.iter().filter_map(|kv| crate::lite::PriorityClass::parse(&Stored::from_kv(kv).ok()?.at(kv.mod_revision))).find(|p| p.global_default).map(|p| p.value_and_policy())
                }
            },
            c => {
                let key = format!("{PREFIX}{c}");
                let json = match classes.as_ref().and_then(|m| m.get(key.as_bytes()).map(|o| o.json())) {
                    Some(json) => Some(json),
                    None => match self.st.store.get(key).await? {
                        Some(kv) => Some(Stored::from_kv(&kv).map_err(ApiError::internal)?.at(kv.mod_revision)),
                        None => None,
                    },
                };
                match json.as_deref().and_then(crate::lite::PriorityClass::parse) {
                    Some(p) => Some(p.value_and_policy()),
                    None => return Err(forbidden(format!("no PriorityClass with name {c} was found"))),
                }
            }
        };
        let (value, policy) = found.unwrap_or((0, "PreemptLowerPriority".into()));
        if let Some(given) = obj["spec"]["priority"].as_i64()
            && given != value
        {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
        obj["spec"]["priority"] = json!(value);
        if obj["spec"].get("preemptionPolicy").is_none() {
            obj["spec"]["preemptionPolicy"] = json!(policy);
        }
        Ok(())
    }
}
