#!/usr/bin/env python3
"""Server CPU per Lease renewal, as a merge PATCH (what capstan's hollow kubelets send) and as
a PUT of the whole Lease (what a real kubelet's lease controller sends), from the server's
/proc CPU over N renewals each by 8 connections (the client's CPU is its own process's).

    capstan up --insecure-http --no-local-node --data-dir D --listen 127.0.0.1:0 &
    python3 bench/lease-write-cost.py 127.0.0.1 PORT PID 2000 patch put patch put
"""
import json, sys, time, http.client, threading
host, port = sys.argv[1], int(sys.argv[2]); pid = int(sys.argv[3]); n = int(sys.argv[4])
def cpu():
    f = open(f"/proc/{pid}/stat").read().split()
    return (int(f[13]) + int(f[14])) / 100.0
path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
conns = [http.client.HTTPConnection(host, port) for _ in range(8)]
def req(c, method, url, body, ctype="application/json"):
    c.request(method, url, body=json.dumps(body), headers={"Content-Type": ctype})
    r = c.getresponse(); data = r.read()
    assert r.status in (200, 201), (r.status, data[:300])
    return json.loads(data)
leases = {}
for i in range(n):
    o = req(conns[0], "POST", path, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": f"n{i}"}, "spec": {"holderIdentity": f"n{i}", "leaseDurationSeconds": 40, "renewTime": "2026-01-01T00:00:00.000000Z"}})
    leases[i] = o
def run(kind, rounds):
    def work(k):
        c = conns[k]
        for r in range(rounds):
            for i in range(k, n, 8):
                t = "2026-01-01T00:00:%02d.%06dZ" % (r % 60, i)
                if kind == "patch":
                    leases[i] = req(c, "PATCH", f"{path}/n{i}", {"spec": {"renewTime": t, "holderIdentity": f"n{i}"}}, "application/merge-patch+json")
                else:
                    o = leases[i]; o["spec"]["renewTime"] = t
                    leases[i] = req(c, "PUT", f"{path}/n{i}", o)
    c0 = cpu(); t0 = time.time()
    ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    [t.start() for t in ts]; [t.join() for t in ts]
    c1 = cpu(); t1 = time.time()
    print(f"{kind}: {n*rounds} requests, server CPU {1e6*(c1-c0)/(n*rounds):.0f} us each, {n*rounds/(t1-t0):.0f}/s")
for kind in sys.argv[5:]:
    run(kind, 4)
