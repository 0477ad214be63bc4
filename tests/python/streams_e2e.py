#!/usr/bin/env python3
"""exec and port-forward through the official Kubernetes Python client's `stream` helpers.

Usage: streams_e2e.py KUBECONFIG POD PORT

Exits non-zero with the reason on the first check that fails; prints `ok` at the end.
"""

import sys

from kubernetes import client, config
from kubernetes.stream import portforward, stream

config.load_kube_config(sys.argv[1])
pod, port = sys.argv[2], int(sys.argv[3])
v1 = client.CoreV1Api()

# exec: stdout, and the whole answer when not preloaded.
out = stream(v1.connect_get_namespaced_pod_exec, pod, "default", command=["sh", "-c", "echo from-python"],
             stderr=True, stdin=False, stdout=True, tty=False)
assert out == "from-python\n", repr(out)

# exec: separate streams and the exit code.
resp = stream(v1.connect_get_namespaced_pod_exec, pod, "default", command=["sh", "-c", "echo o; echo e >&2; exit 7"],
              stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
resp.run_forever(timeout=60)
assert resp.read_stdout() == "o\n", "stdout"
assert resp.read_stderr() == "e\n", "stderr"
assert resp.returncode == 7, f"returncode {resp.returncode}"

# exec: stdin written, then read back.
resp = stream(v1.connect_get_namespaced_pod_exec, pod, "default", command=["head", "-n", "1"],
              stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
resp.write_stdin("typed line\n")
resp.run_forever(timeout=60)
assert resp.read_stdout() == "typed line\n", "stdin echo"
assert resp.returncode == 0, f"returncode {resp.returncode}"

# port-forward over WebSocket channels.
pf = portforward(v1.connect_get_namespaced_pod_portforward, pod, "default", ports=str(port))
sock = pf.socket(port)
sock.setblocking(True)
sock.settimeout(60)
sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
got = b""
while b"\r\n" not in got:
    chunk = sock.recv(4096)
    if not chunk:
        break
    got += chunk
sock.close()
assert got.startswith(b"HTTP/1.0 200"), repr(got[:100])
assert pf.error(port) is None, pf.error(port)
print("ok")
