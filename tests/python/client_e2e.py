#!/usr/bin/env python3
"""End-to-end checks of capstan with the official Kubernetes Python client.

Usage: client_e2e.py KUBECONFIG

Prints one line per check, then `N passed, M failed`; exits non-zero if any check failed.
Nothing here sleeps: the only wait is the watch, bounded by its own timeout_seconds.
"""

import sys
import traceback

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "pyclient"
LABELS = {"cm-a1": "a", "cm-a2": "a", "cm-b1": "b"}


def meta(name, labels=None):
    return client.V1ObjectMeta(name=name, labels=labels)


def expect_api_error(status, what, fn, *args, **kwargs):
    """Calls fn and asserts it raises ApiException with the given HTTP status."""
    try:
        got = fn(*args, **kwargs)
    except ApiException as e:
        assert e.status == status, f"{what}: expected HTTP {status}, got {e.status}: {e.body}"
        return e
    raise AssertionError(f"{what}: expected ApiException with HTTP {status}, but it succeeded: {got}")


def check_create(v1):
    """(a) a namespace, 3 labelled ConfigMaps and 1 Pod in it."""
    ns = v1.create_namespace(client.V1Namespace(metadata=meta(NS)))
    assert ns.metadata.name == NS, f"create namespace returned name {ns.metadata.name!r}, expected {NS!r}"
    assert ns.metadata.uid, "created namespace has no metadata.uid"
    for name, app in LABELS.items():
        cm = v1.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta(name, {"app": app}), data={"k": "v1"}))
        assert cm.metadata.name == name, f"create configmap returned name {cm.metadata.name!r}, expected {name!r}"
        assert cm.metadata.namespace == NS, f"configmap {name} has namespace {cm.metadata.namespace!r}, expected {NS!r}"
        assert cm.metadata.resource_version, f"created configmap {name} has no metadata.resourceVersion"
        assert cm.metadata.labels == {"app": app}, f"configmap {name} labels {cm.metadata.labels}, expected app={app}"
        assert cm.data == {"k": "v1"}, f"configmap {name} data {cm.data}, expected {{'k': 'v1'}}"
    pod = v1.create_namespaced_pod(
        NS,
        client.V1Pod(
            metadata=meta("p1", {"app": "a"}),
            spec=client.V1PodSpec(node_name="n1", containers=[client.V1Container(name="c", image="busybox")]),
        ),
    )
    assert pod.metadata.name == "p1", f"create pod returned name {pod.metadata.name!r}"
    assert pod.spec.node_name == "n1", f"created pod has spec.nodeName {pod.spec.node_name!r}, expected 'n1'"
    assert [c.image for c in pod.spec.containers] == ["busybox"], f"created pod containers {pod.spec.containers}"


def check_selectors(v1):
    """(b) label selectors (equality and set-based) and a field selector."""
    def names(items):
        return sorted(i.metadata.name for i in items)

    eq = v1.list_namespaced_config_map(NS, label_selector="app=a")
    assert names(eq.items) == ["cm-a1", "cm-a2"], f"label_selector='app=a' listed {names(eq.items)}, expected ['cm-a1', 'cm-a2']"
    assert eq.metadata.resource_version, "ConfigMapList has no metadata.resourceVersion"
    s = v1.list_namespaced_config_map(NS, label_selector="app in (a,b)")
    assert names(s.items) == ["cm-a1", "cm-a2", "cm-b1"], f"label_selector='app in (a,b)' listed {names(s.items)}, expected all 3"
    pods = v1.list_namespaced_pod(NS, field_selector="spec.nodeName=n1")
    assert names(pods.items) == ["p1"], f"field_selector='spec.nodeName=n1' listed pods {names(pods.items)}, expected ['p1']"
    none = v1.list_namespaced_pod(NS, field_selector="spec.nodeName=n2")
    assert names(none.items) == [], f"field_selector='spec.nodeName=n2' listed pods {names(none.items)}, expected none"


def check_watch_from_resource_version(v1):
    """(c) a watch started at a list's resourceVersion sees a later patch as MODIFIED."""
    rv = v1.list_namespaced_config_map(NS).metadata.resource_version
    assert rv, "ConfigMapList has no metadata.resourceVersion to watch from"
    patched = v1.patch_namespaced_config_map("cm-b1", NS, {"data": {"k": "watched"}})
    assert patched.data == {"k": "watched"}, f"patch returned data {patched.data}, expected {{'k': 'watched'}}"
    w = watch.Watch()
    seen = []
    found = None
    for ev in w.stream(v1.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=10):
        obj = ev["object"]
        name = getattr(getattr(obj, "metadata", None), "name", None)
        seen.append((ev["type"], name))
        if ev["type"] == "MODIFIED" and name == "cm-b1":
            found = obj
            w.stop()
            break
    assert found is not None, f"no MODIFIED event for cm-b1 within timeout_seconds=10 of a watch from resourceVersion {rv}; events seen: {seen}"
    assert found.data == {"k": "watched"}, f"MODIFIED event for cm-b1 carries data {found.data}, expected {{'k': 'watched'}}"
    assert found.metadata.resource_version == patched.metadata.resource_version, (
        f"MODIFIED event resourceVersion {found.metadata.resource_version}, expected the patch's {patched.metadata.resource_version}"
    )


def check_stale_replace_conflicts(v1):
    """(d) replacing with a stale resourceVersion is a 409 Conflict."""
    old = v1.read_namespaced_config_map("cm-a1", NS)
    fresh = v1.read_namespaced_config_map("cm-a1", NS)
    fresh.data = {"k": "v2"}
    updated = v1.replace_namespaced_config_map("cm-a1", NS, fresh)
    assert updated.metadata.resource_version != old.metadata.resource_version, (
        f"replace did not change resourceVersion ({updated.metadata.resource_version})"
    )
    old.data = {"k": "stale"}
    e = expect_api_error(409, f"replace cm-a1 with stale resourceVersion {old.metadata.resource_version}",
                         v1.replace_namespaced_config_map, "cm-a1", NS, old)
    assert "Conflict" in (e.body or ""), f"409 body should be a Status with reason Conflict: {e.body}"
    now = v1.read_namespaced_config_map("cm-a1", NS)
    assert now.data == {"k": "v2"}, f"after the rejected stale replace cm-a1 has data {now.data}, expected {{'k': 'v2'}}"


def check_missing_is_404(v1):
    """(e) reading a missing object is a 404."""
    e = expect_api_error(404, "read missing configmap", v1.read_namespaced_config_map, "does-not-exist", NS)
    assert "NotFound" in (e.body or ""), f"404 body should be a Status with reason NotFound: {e.body}"
    expect_api_error(404, "read missing namespace", v1.read_namespace, "no-such-namespace")


def check_delete_answers_typed_objects(v1):
    """(f0) deleting a pod or a service answers the object (the typed client's model)."""
    pod = client.V1Pod(metadata=meta("deleted-now"), spec=client.V1PodSpec(node_name="no-such-node",
                       containers=[client.V1Container(name="c", image="busybox")]))
    v1.create_namespaced_pod(NS, pod)
    got = v1.delete_namespaced_pod("deleted-now", NS, grace_period_seconds=0)
    assert got.kind == "Pod" and got.metadata.name == "deleted-now", f"delete pod answered {got.kind} {got.metadata}"
    svc = client.V1Service(metadata=meta("deleted-svc"), spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)]))
    v1.create_namespaced_service(NS, svc)
    got = v1.delete_namespaced_service("deleted-svc", NS)
    assert got.kind == "Service" and got.metadata.name == "deleted-svc", f"delete service answered {got.kind} {got.metadata}"
    # Other resources answer a Status of Success.
    v1.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta("deleted-cm")))
    got = v1.delete_namespaced_config_map("deleted-cm", NS)
    status = got.get("status") if isinstance(got, dict) else got.status
    assert status == "Success", f"delete configmap answered {got}"


def check_delete_namespace(v1):
    """(f) deleting the namespace: afterwards it is gone or terminating."""
    v1.delete_namespace(NS)
    try:
        ns = v1.read_namespace(NS)
    except ApiException as e:
        assert e.status == 404, f"read namespace after delete: expected 404 or a terminating namespace, got HTTP {e.status}: {e.body}"
        return
    phase = ns.status.phase if ns.status else None
    assert ns.metadata.deletion_timestamp is not None or phase == "Terminating", (
        f"namespace {NS} after delete is neither gone nor terminating (deletionTimestamp={ns.metadata.deletion_timestamp}, phase={phase})"
    )


CHECKS = [
    ("create namespace, configmaps and pod", check_create),
    ("list with label and field selectors", check_selectors),
    ("watch from resourceVersion sees MODIFIED", check_watch_from_resource_version),
    ("replace with stale resourceVersion is 409", check_stale_replace_conflicts),
    ("read missing object is 404", check_missing_is_404),
    ("delete answers typed objects", check_delete_answers_typed_objects),
    ("delete namespace", check_delete_namespace),
]


def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} KUBECONFIG", file=sys.stderr)
        return 2
    config.load_kube_config(config_file=sys.argv[1])
    v1 = client.CoreV1Api()
    passed = failed = 0
    for title, fn in CHECKS:
        try:
            fn(v1)
        except AssertionError as e:
            failed += 1
            print(f"FAIL {title}: {e}", flush=True)
        except Exception as e:  # an unexpected error (HTTP, parse) is a failure of that check
            failed += 1
            print(f"FAIL {title}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {title}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
