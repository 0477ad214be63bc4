#!/usr/bin/env python3
"""An aggregated API server for capstan's end-to-end tests (tests/webhooks.rs): the group
wardle.example.com/v1alpha1 with one resource, flunders, over HTTPS that requires the API
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


class Api(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == GV:
            return self.answer(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "wardle.example.com/v1alpha1",
                                     "resources": [{"name": "flunders", "singularName": "flunder", "namespaced": True, "kind": "Flunder", "verbs": ["get", "list"]}]})
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
