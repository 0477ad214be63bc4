#!/usr/bin/env python3
"""Creates N pods bound round-robin to hollow nodes hollow-0..hollow-(M-1), over HTTP with 16 threads.
Usage: make-hollow-pods.py http://127.0.0.1:PORT N M [--unbound]  (used for the hollow-pod memory and scheduler figures in
RESULTS.md; with --unbound the pods name no node and wait for the scheduler)"""
import json, sys, http.client, threading, urllib.parse
addr = sys.argv[1].replace("http://", ""); n = int(sys.argv[2]); nodes = int(sys.argv[3]); unbound = "--unbound" in sys.argv
host, port = addr.split(":")
def work(lo, hi):
    c = http.client.HTTPConnection(host, int(port))
    for i in range(lo, hi):
        body = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"hp-{i}", "namespace": "default", "labels": {"app": "hollow"}},
            "spec": ({} if unbound else {"nodeName": f"hollow-{i % nodes}"}) | {"containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
        c.request("POST", "/api/v1/namespaces/default/pods", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status >= 300: print(r.status)
ts = [threading.Thread(target=work, args=(k * n // 16, (k + 1) * n // 16)) for k in range(16)]
[t.start() for t in ts]; [t.join() for t in ts]
