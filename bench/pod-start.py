#!/usr/bin/env python3
"""Pod start on the real node: created (the client's POST) to Ready (seen on a watch), for
pods with a network namespace, two volumes (a ConfigMap and an emptyDir) and an exec
readiness probe. Clock: this process's monotonic clock, milliseconds.

Usage: pod-start.py KUBECONFIG NODE [PODS=200] [AT_ONCE=10]
Each batch is deleted once Ready (the node holds 110 pods).
Prints p50 / p90 / p99 / max and the pods' addresses' range check.
"""

import sys
import threading
import time

from kubernetes import client, config, watch

config.load_kube_config(sys.argv[1])
node = sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
at_once = int(sys.argv[4]) if len(sys.argv) > 4 else 10
v1 = client.CoreV1Api()
ns = "podstart"
v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg"), data={"k": "v"}))

created, ready, ips = {}, {}, {}
done = threading.Event()


def watcher():
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_pod, ns, timeout_seconds=600):
        p = ev["object"]
        conds = {c.type: c.status for c in (p.status.conditions or [])}
        if conds.get("Ready") == "True" and p.metadata.name not in ready:
            ready[p.metadata.name] = time.monotonic()
            ips[p.metadata.name] = p.status.pod_ip
            if len(ready) == n:
                w.stop()
                done.set()
                return


t = threading.Thread(target=watcher, daemon=True)
t.start()
time.sleep(1)  # the watch is open before the first create


def pod(name):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_name=node,
            termination_grace_period_seconds=1,
            containers=[client.V1Container(
                name="c", image="busybox", command=["sh", "-c", "while :; do sleep 60; done"],
                volume_mounts=[client.V1VolumeMount(name="cfg", mount_path="/etc/cfg"), client.V1VolumeMount(name="scratch", mount_path="/scratch")],
                readiness_probe=client.V1Probe(_exec=client.V1ExecAction(command=["test", "-e", "/etc/cfg/k"]), period_seconds=1),
            )],
            volumes=[client.V1Volume(name="cfg", config_map=client.V1ConfigMapVolumeSource(name="cfg")), client.V1Volume(name="scratch", empty_dir=client.V1EmptyDirVolumeSource())],
        ),
    )


for i in range(n):
    name = f"p{i:04d}"
    created[name] = time.monotonic()
    v1.create_namespaced_pod(ns, pod(name))
    if (i + 1) % at_once == 0:
        # The next batch once this one is Ready: start latency, not a queue.
        deadline = time.monotonic() + 120
        while any(f"p{j:04d}" not in ready for j in range(i + 1 - at_once, i + 1)) and time.monotonic() < deadline:
            time.sleep(0.005)
        # Then it goes (the node holds 110 pods, as a kubelet's default).
        for j in range(i + 1 - at_once, i + 1):
            v1.delete_namespaced_pod(f"p{j:04d}", ns, grace_period_seconds=0)

done.wait(600)
lat = sorted((ready[k] - created[k]) * 1000 for k in created if k in ready)
if len(lat) < n:
    print(f"only {len(lat)} of {n} pods became Ready")
    sys.exit(1)
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
print(f"{n} pods ({at_once} at a time), created to Ready: p50 {q(0.5):.0f} ms, p90 {q(0.9):.0f} ms, p99 {q(0.99):.0f} ms, max {lat[-1]:.0f} ms")
print(f"distinct pod addresses: {len(set(ips.values()))}")
v1.delete_namespace(ns)
