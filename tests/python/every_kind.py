#!/usr/bin/env python3
"""Every kind capstan serves, through the official Python client's typed API.

Usage: every_kind.py KUBECONFIG [--kubectl]

With --kubectl, the same samples go through kubectl instead (apply, get -o wide, describe,
get -o yaml, delete).

For each served kind (from discovery; a served kind without a sample here is a failure, so a
new kind must get one): create, read, list, replace (the object read back, relabelled),
patch (a label), delete, then a watch from before the create (ADDED first, through DELETED
where the delete is not deferred), each answer deserialized into the client's model class
(the typed methods do it; the client's pydantic models refuse a missing required field or a
wrong type). Prints one line per kind, then `N passed, M failed`; exits non-zero if any failed.
"""

import json
import base64
import re
import sys
import traceback

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "every-kind"
POD_SPEC = {"containers": [{"name": "c", "image": "busybox"}]}
TEMPLATE = {"metadata": {"labels": {"app": "ek"}}, "spec": POD_SPEC}
SELECTOR = {"matchLabels": {"app": "ek"}}

# Kinds that are not stored objects a client creates (answered from elsewhere).
NOT_CRUD = {("", "ComponentStatus")}
# Groups the typed client has no API class for (metrics are read through the node's kubelet).
UNTYPED = {"metrics.k8s.io"}


# A certificate signing request (an EC key's, CN=every-kind), made once with `cryptography`
# and kept here so the test needs nothing beyond the `kubernetes` package.
CSR_PEM = """-----BEGIN CERTIFICATE REQUEST-----
MIHPMHcCAQAwFTETMBEGA1UEAwwKZXZlcnkta2luZDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABODJ0BfxA+bFkkh4DEEkIJBTLPY4GwSV0XRnoMYYdle9EZqNYIHS
4KPgkjADxerQB8TA0d+QZrtqJGLuwEFtNYqgADAKBggqhkjOPQQDAgNIADBFAiAo
5x112xLyowCGNg/o22F463pSGepYxXP5H/P91+/iFgIhAOgK6sIhn6OtbK9gkVj/
hj+TG++Pvx8Wz9JdQPicXmd2
-----END CERTIFICATE REQUEST-----
"""


def csr_request():
    return base64.b64encode(CSR_PEM.encode()).decode()


# (group, kind) -> the object's fields besides apiVersion, kind and metadata.name.
SAMPLES = {
    ("", "Namespace"): {},
    ("", "Pod"): {"spec": POD_SPEC},
    ("", "Node"): {},
    ("", "Service"): {"spec": {"ports": [{"port": 80}]}},
    ("", "Endpoints"): {"subsets": [{"addresses": [{"ip": "10.1.2.3"}], "ports": [{"port": 80}]}]},
    ("", "ConfigMap"): {"data": {"k": "v"}},
    ("", "Secret"): {"stringData": {"k": "v"}},
    ("", "Event"): {"involvedObject": {"kind": "Pod", "name": "x", "namespace": NS}, "reason": "Tested", "message": "m", "type": "Normal"},
    ("", "ServiceAccount"): {},
    ("", "PersistentVolume"): {"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/tmp/every-kind"}, "storageClassName": "none"}},
    ("", "PersistentVolumeClaim"): {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "none"}},
    ("", "ResourceQuota"): {"spec": {"hard": {"configmaps": "100"}}},
    ("", "LimitRange"): {"spec": {"limits": [{"type": "Container", "default": {"cpu": "100m"}}]}},
    ("", "ReplicationController"): {"spec": {"replicas": 0, "selector": {"app": "ek"}, "template": TEMPLATE}},
    ("", "PodTemplate"): {"template": TEMPLATE},
    ("apps", "Deployment"): {"spec": {"replicas": 0, "selector": SELECTOR, "template": TEMPLATE}},
    ("apps", "ReplicaSet"): {"spec": {"replicas": 0, "selector": SELECTOR, "template": TEMPLATE}},
    ("apps", "StatefulSet"): {"spec": {"replicas": 0, "serviceName": "ek", "selector": SELECTOR, "template": TEMPLATE}},
    ("apps", "DaemonSet"): {"spec": {"selector": SELECTOR, "template": {"metadata": TEMPLATE["metadata"], "spec": dict(POD_SPEC, nodeSelector={"none": "none"})}}},
    ("apps", "ControllerRevision"): {"revision": 1, "data": {"spec": {}}},
    ("batch", "Job"): {"spec": {"suspend": True, "template": {"spec": dict(POD_SPEC, restartPolicy="Never")}}},
    ("batch", "CronJob"): {"spec": {"schedule": "0 0 1 1 *", "suspend": True, "jobTemplate": {"spec": {"template": {"spec": dict(POD_SPEC, restartPolicy="Never")}}}}},
    ("coordination.k8s.io", "Lease"): {"spec": {"holderIdentity": "every-kind", "leaseDurationSeconds": 10}},
    ("certificates.k8s.io", "CertificateSigningRequest"): {"spec": {"request": None, "signerName": "example.com/every-kind", "usages": ["client auth"]}},
    ("discovery.k8s.io", "EndpointSlice"): {"addressType": "IPv4", "endpoints": [{"addresses": ["10.1.2.3"]}], "ports": [{"port": 80}]},
    ("policy", "PodDisruptionBudget"): {"spec": {"minAvailable": 1, "selector": SELECTOR}},
    ("autoscaling", "HorizontalPodAutoscaler"): {"spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ek"}, "minReplicas": 1, "maxReplicas": 2}},
    ("scheduling.k8s.io", "PriorityClass"): {"value": 1000},
    ("storage.k8s.io", "StorageClass"): {"provisioner": "example.com/every-kind"},
    ("networking.k8s.io", "NetworkPolicy"): {"spec": {"podSelector": {}}},
    ("networking.k8s.io", "IPAddress"): {"spec": {"parentRef": {"group": "", "resource": "services", "namespace": NS, "name": "nothing"}}},
    ("networking.k8s.io", "ServiceCIDR"): {"spec": {"cidrs": ["10.250.0.0/24"]}},
    # Webhooks on a group nothing serves, failing open: they never touch the other kinds' writes.
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): {"webhooks": [{"name": "m.every.example.com", "clientConfig": {"url": "https://127.0.0.1:1/m"}, "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore", "rules": [{"operations": ["CREATE"], "apiGroups": ["nothing.example.com"], "apiVersions": ["v1"], "resources": ["things"]}]}]},
    ("node.k8s.io", "RuntimeClass"): {"handler": "runc", "overhead": {"podFixed": {"cpu": "10m"}}},
    ("storage.k8s.io", "CSIDriver"): {"spec": {"attachRequired": False, "podInfoOnMount": True}},
    ("storage.k8s.io", "CSINode"): {"spec": {"drivers": [{"name": "csi.every.example.com", "nodeID": "n1", "topologyKeys": []}]}},
    ("storage.k8s.io", "CSIStorageCapacity"): {"storageClassName": "standard", "capacity": "1Gi"},
    ("storage.k8s.io", "VolumeAttachment"): {"spec": {"attacher": "csi.every.example.com", "nodeName": "n1", "source": {"persistentVolumeName": "pv1"}}},
    # A remote group-version whose Service does not exist: unavailable, and nothing asks it.
    ("apiregistration.k8s.io", "APIService"): {"spec": {"group": "nothing.example.com", "version": "v1", "groupPriorityMinimum": 1000, "versionPriority": 15, "insecureSkipTLSVerify": True, "service": {"namespace": NS, "name": "nothing", "port": 443}}},
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"): {"spec": {"matchConstraints": {"resourceRules": [{"operations": ["CREATE"], "apiGroups": ["nothing.example.com"], "apiVersions": ["v1"], "resources": ["things"]}]}, "validations": [{"expression": "object.metadata.name != ''"}]}},
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"): {"spec": {"policyName": "ek", "validationActions": ["Warn"]}},
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): {"webhooks": [{"name": "v.every.example.com", "clientConfig": {"url": "https://127.0.0.1:1/v"}, "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore", "rules": [{"operations": ["CREATE"], "apiGroups": ["nothing.example.com"], "apiVersions": ["v1"], "resources": ["things"]}]}]},
    ("rbac.authorization.k8s.io", "Role"): {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
    ("rbac.authorization.k8s.io", "RoleBinding"): {"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ek"}, "subjects": [{"kind": "User", "name": "ek", "apiGroup": "rbac.authorization.k8s.io"}]},
    ("rbac.authorization.k8s.io", "ClusterRole"): {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): {"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "ek", "apiGroup": "rbac.authorization.k8s.io"}]},
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"): {"spec": {"priorityLevelConfiguration": {"name": "global-default"}, "matchingPrecedence": 9000, "rules": [{"subjects": [{"kind": "User", "user": {"name": "ek"}}], "resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "namespaces": ["*"]}]}]}},
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"): {"spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 5, "limitResponse": {"type": "Reject"}}}},
    ("apiextensions.k8s.io", "CustomResourceDefinition"): {"spec": {"group": "every.example.com", "names": {"plural": "kinds", "singular": "kind", "kind": "Kind"}, "scope": "Namespaced",
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {"type": "object"}}}]}},
}

# Versions served besides the preferred one discovery names, checked too.
OTHER_VERSIONS = [("autoscaling", "v1", "HorizontalPodAutoscaler", True)]
SAMPLES_BY_VERSION = {("autoscaling", "v1", "HorizontalPodAutoscaler"): {"spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ek"}, "minReplicas": 1, "maxReplicas": 2, "targetCPUUtilizationPercentage": 50}}}

NAMES = {("networking.k8s.io", "IPAddress"): "192.0.2.77", ("apiregistration.k8s.io", "APIService"): "v1.nothing.example.com", ("apiextensions.k8s.io", "CustomResourceDefinition"): "kinds.every.example.com"}


def snake(kind):
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", kind)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def api_class(group, version):
    if group == "":
        return client.CoreV1Api()
    words = group.removesuffix(".k8s.io").split(".")
    return getattr(client, "".join(w.capitalize() for w in words) + version.capitalize() + "Api")()


def served():
    """(group, version, kind, namespaced) of every served resource (no subresources)."""
    out = []
    core = client.CoreV1Api().get_api_resources()
    out += [("", "v1", r.kind, r.namespaced) for r in core.resources if "/" not in r.name]
    for g in client.ApisApi().get_api_versions().groups:
        if g.name in UNTYPED:
            continue
        v = g.preferred_version
        resp = api_class(g.name, v.version).get_api_resources()
        out += [(g.name, v.version, r.kind, r.namespaced) for r in resp.resources if "/" not in r.name]
    return out


def gone_or_terminating(read):
    try:
        obj = read()
    except ApiException as e:
        assert e.status == 404, f"read after delete: HTTP {e.status}"
        return
    assert obj.metadata.deletion_timestamp is not None, "still there after delete, without a deletionTimestamp"


def check(group, version, kind, namespaced):
    api = api_class(group, version)
    s = snake(kind)
    name = NAMES.get((group, kind), "ek")
    body = {"apiVersion": f"{group}/{version}" if group else version, "kind": kind, "metadata": {"name": name, "labels": {"step": "created"}}}
    body.update(SAMPLES_BY_VERSION.get((group, version, kind)) or SAMPLES[(group, kind)])
    if kind == "CertificateSigningRequest":
        body["spec"]["request"] = csr_request()
    args = (NS,) if namespaced else ()
    op = (lambda verb: getattr(api, f"{verb}_namespaced_{s}")) if namespaced else (lambda verb: getattr(api, f"{verb}_{s}"))
    since = op("list")(*args).metadata.resource_version
    created = op("create")(*args, body)
    assert created.metadata.name == name and created.metadata.uid, f"create answered {created.metadata}"
    got = op("read")(name, *args)
    assert got.metadata.uid == created.metadata.uid, "read answered another object"
    listed = op("list")(*args)
    assert any(i.metadata.name == name for i in listed.items), f"list lacks {name}"
    # A controller may write the object (its status) between the read and the replace: a
    # 409 then, and the client reads again, as clients do.
    for _ in range(5):
        got.metadata.labels = {"step": "replaced"}
        try:
            replaced = op("replace")(name, *args, got)
            break
        except ApiException as e:
            if e.status != 409:
                raise
            got = op("read")(name, *args)
    assert replaced.metadata.labels == {"step": "replaced"}, f"replace answered labels {replaced.metadata.labels}"
    patched = op("patch")(name, *args, {"metadata": {"labels": {"step": "patched"}}})
    assert patched.metadata.labels.get("step") == "patched", f"patch answered labels {patched.metadata.labels}"
    op("delete")(name, *args)
    gone_or_terminating(lambda: op("read")(name, *args))
    # A watch from before the create replays what happened, each object typed.
    seen = []
    w = watch.Watch()
    for ev in w.stream(op("list"), *args, resource_version=since, timeout_seconds=1):
        if ev["object"].metadata.name == name:
            seen.append(ev["type"])
        if "DELETED" in seen:
            w.stop()
    assert seen[:1] == ["ADDED"] and len(seen) >= 3, f"watch from {since} saw {seen}"


def kubectl_pass(kubeconfig):
    """Each sample through kubectl: apply, get -o wide, describe, get -o yaml, delete (kubectl
    prints tables and describes with typed code that panics on a nil pointer a defaulted
    field should have filled)."""
    import json
    import subprocess

    k = ["kubectl", "--kubeconfig", kubeconfig]
    subprocess.run(k + ["create", "namespace", NS], capture_output=True)
    passed = failed = 0
    for (group, kind), body in SAMPLES.items():
        obj = {"apiVersion": f"{group}/v2" if group == "autoscaling" else (f"{group}/v1" if group else "v1"), "kind": kind,
               "metadata": {"name": "ek2" if kind == "Namespace" else NAMES.get((group, kind), "ek")}}
        obj.update(json.loads(json.dumps(body)))
        if kind == "CertificateSigningRequest":
            obj["spec"]["request"] = csr_request()
        errors = []
        p = subprocess.run(k + ["apply", "-n", NS, "-f", "-"], input=json.dumps(obj), capture_output=True, text=True)
        if p.returncode:
            errors.append(f"apply: {p.stderr.strip()}")
        else:
            ref = p.stdout.split()[0]
            for args in (["get", ref, "-o", "wide"], ["describe", ref], ["get", ref, "-o", "yaml"], ["delete", ref, "--wait=false"]):
                q = subprocess.run(k + args + ["-n", NS], capture_output=True, text=True)
                if q.returncode or "panic" in q.stderr:
                    errors.append(f"{args[0]}: {(q.stderr or q.stdout).strip()[:300]}")
        if errors:
            failed += 1
            print(f"FAIL kubectl {kind}: " + "; ".join(errors), flush=True)
        else:
            passed += 1
            print(f"ok   kubectl {kind}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


def main():
    if len(sys.argv) == 3 and sys.argv[2] == "--kubectl":
        return kubectl_pass(sys.argv[1])
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} KUBECONFIG [--kubectl]", file=sys.stderr)
        return 2
    config.load_kube_config(config_file=sys.argv[1])
    client.CoreV1Api().create_namespace({"metadata": {"name": NS}})
    passed = failed = 0
    kinds = served() + OTHER_VERSIONS
    for group, version, kind, namespaced in kinds:
        if (group, kind) in NOT_CRUD:
            continue
        title = f"{group or 'core'}/{version} {kind}"
        try:
            if (group, kind) not in SAMPLES:
                raise AssertionError("served, but this test has no sample of it: add one")
            check(group, version, kind, namespaced)
        except Exception as e:  # any error is a failure of that kind
            failed += 1
            detail = e.body if isinstance(e, ApiException) else e
            print(f"FAIL {title}: {type(e).__name__}: {detail}", flush=True)
            if not isinstance(e, (AssertionError, ApiException)):
                # The step that failed, without the client's own frames.
                tb = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__]
                print("     at " + " <- ".join(f"line {f.lineno}: {f.line}" for f in reversed(tb)), flush=True)
        else:
            passed += 1
            print(f"ok   {title}", flush=True)
    # One object through both versions: a v1 write keeps what only v2 says.
    try:
        v2, v1 = client.AutoscalingV2Api(), client.AutoscalingV1Api()
        v2.create_namespaced_horizontal_pod_autoscaler(NS, {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "both"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ek"}, "minReplicas": 1, "maxReplicas": 4, "metrics": [
                {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]}})
        old = v1.read_namespaced_horizontal_pod_autoscaler("both", NS)
        assert old.spec.target_cpu_utilization_percentage == 60, f"v1 sees target {old.spec.target_cpu_utilization_percentage}"
        others = json.loads((old.metadata.annotations or {}).get("autoscaling.alpha.kubernetes.io/metrics", "[]"))
        assert others == [{"type": "Pods", "pods": {"metricName": "rps", "targetAverageValue": "10"}}], f"v1's annotation of the other metrics: {others}"
        old.spec.target_cpu_utilization_percentage = 70
        v1.replace_namespaced_horizontal_pod_autoscaler("both", NS, old)
        v1.patch_namespaced_horizontal_pod_autoscaler("both", NS, {"spec": {"maxReplicas": 6}})
        now = v2.read_namespaced_horizontal_pod_autoscaler("both", NS)
        kinds_seen = sorted(m.type for m in now.spec.metrics)
        cpu = [m.resource.target.average_utilization for m in now.spec.metrics if m.type == "Resource"]
        assert kinds_seen == ["Pods", "Resource"] and cpu == [70] and now.spec.max_replicas == 6, f"after v1 writes: {now.spec}"
    except Exception as e:
        failed += 1
        print(f"FAIL autoscaling v1 over v2: {type(e).__name__}: {e}", flush=True)
    else:
        passed += 1
        print("ok   autoscaling v1 over v2", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
