#!/usr/bin/env python3
"""An aggregated API server for capstan's end-to-end tests (tests/webhooks.rs): the group
wardle.example.com/v1alpha1 with one resource, flunders, and fixed custom and external
metrics (custom.metrics.k8s.io/v1beta2: requests_per_second of 10 for every pod, hits of
60 for the Service frontend; external.metrics.k8s.io/v1beta1: queue_depth{queue=jobs} of
100), over HTTPS that requires the API
server's front-proxy client certificate (as servers built on Kubernetes' apiserver library
do, from kube-system/extension-apiserver-authentication).

Usage: aggregated_server.py CERT_PEM KEY_PEM CLIENT_CA_PEM. Prints its port, then serves.
Each flunder it lists says, in annotations, who the API server said was asking
(X-Remote-User, X-Remote-Group), the client certificate's CN, and whether any
Authorization header came through.
"""
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GV = "/apis/wardle.example.com/v1alpha1"
CUSTOM = "/apis/custom.metrics.k8s.io/v1beta2"
EXTERNAL = "/apis/external.metrics.k8s.io/v1beta1"


def metric_value(obj, metric, value, selector=None):
    m = {"name": metric}
    if selector:
        m["selector"] = selector
    return {"describedObject": obj, "metric": m, "timestamp": "2026-01-01T00:00:00Z", "value": value}


class Api(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == GV:
            return self.answer(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "wardle.example.com/v1alpha1",
                                     "resources": [{"name": "flunders", "singularName": "flunder", "namespaced": True, "kind": "Flunder", "verbs": ["get", "list"]}]})
        if path == CUSTOM:
            return self.answer(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "custom.metrics.k8s.io/v1beta2",
                                     "resources": [{"name": "pods/requests_per_second", "singularName": "", "namespaced": True, "kind": "MetricValueList", "verbs": ["get"]},
                                                   {"name": "services/hits", "singularName": "", "namespaced": True, "kind": "MetricValueList", "verbs": ["get"]}]})
        if path == EXTERNAL:
            return self.answer(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "external.metrics.k8s.io/v1beta1",
                                     "resources": [{"name": "queue_depth", "singularName": "", "namespaced": True, "kind": "ExternalMetricValueList", "verbs": ["get"]}]})
        if path.startswith(CUSTOM + "/namespaces/"):
            # .../namespaces/NS/pods/*/requests_per_second: 10 for each pod of the selector,
            # whose names the test does not need; .../services/frontend/hits: 60.
            _, ns, resource, name, metric = path[len(CUSTOM) + 1:].split("/")
            if resource == "pods" and metric == "requests_per_second":
                items = [metric_value({"kind": "Pod", "namespace": ns, "name": "pod-%d" % i, "apiVersion": "/v1"}, metric, "10") for i in range(2)]
            elif resource == "services" and name == "frontend" and metric == "hits":
                items = [metric_value({"kind": "Service", "namespace": ns, "name": name, "apiVersion": "/v1"}, metric, "60")]
            else:
                return self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "no metric " + metric})
            return self.answer(200, {"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {}, "items": items})
        if path.startswith(EXTERNAL + "/namespaces/"):
            # queue_depth{queue=jobs}: 100, only when asked with that selector.
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            if path.endswith("/queue_depth") and "labelSelector=queue%3Djobs" in query:
                items = [{"metricName": "queue_depth", "metricLabels": {"queue": "jobs"}, "timestamp": "2026-01-01T00:00:00Z", "value": "100"}]
            else:
                items = []
            return self.answer(200, {"kind": "ExternalMetricValueList", "apiVersion": "external.metrics.k8s.io/v1beta1", "metadata": {}, "items": items})
        parts = path[len(GV):].strip("/").split("/")
        if path.startswith(GV + "/") and len(parts) in (3, 4) and parts[0] == "namespaces" and parts[2] == "flunders":
            ns = parts[1]
            cert = self.connection.getpeercert() or {}
            cn = next((v for rdn in cert.get("subject", ()) for (k, v) in rdn if k == "commonName"), "")
            item = {"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
                    "metadata": {"name": "from-backend", "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {
                        "seen-user": self.headers.get("X-Remote-User", ""),
                        "seen-groups": ",".join(self.headers.get_all("X-Remote-Group") or []),
                        "client-cn": cn,
                        "had-authorization": "yes" if self.headers.get("Authorization") else "no"}}}
            if len(parts) == 4:
                if parts[3] != "from-backend":
                    return self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                                             "message": 'flunders.wardle.example.com "%s" not found' % parts[3]})
                return self.answer(200, item)
            return self.answer(200, {"kind": "FlunderList", "apiVersion": "wardle.example.com/v1alpha1", "metadata": {}, "items": [item]})
        self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found: " + path})

    def answer(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    cert, key, client_ca = sys.argv[1:4]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
