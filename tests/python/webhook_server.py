#!/usr/bin/env python3
"""An HTTPS admission webhook for capstan's end-to-end tests (tests/webhooks.rs).

Usage: webhook_server.py CERT_PEM KEY_PEM. Prints its port, then serves until killed.
What it does depends on the path it is called at:
  /mutate    adds the label mutated=yes and annotations naming the user, the operation and
             the timeout the API server gave in the query; answers a warning
  /mutate-a  adds a=yes, and a-saw-b=yes when the object already has b=yes (a second call
             after /mutate-b, through reinvocationPolicy IfNeeded)
  /mutate-b  adds b=yes
  /validate  denies (403) a ConfigMap with a data key "forbidden", and the DELETE of an
             object labelled protected=yes
  /slow      answers after 5 seconds
  /garbage   answers 200 with a body that is not JSON
  /subresource  for a subresource's write: halves a Scale's spec.replicas (rounding down), and
             denies an Eviction or a Binding, naming the kind, resource and subresource
             it was sent
  /convert   a CRD conversion webhook (ConversionReview): v1alpha1's spec.color is v1's
             spec.colour
"""
import base64
import json
import ssl
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def patch(ops):
    return {"patchType": "JSONPatch", "patch": base64.b64encode(json.dumps(ops).encode()).decode()}


def add_labels(obj, labels):
    ops = [] if (obj["metadata"].get("labels") is not None) else [{"op": "add", "path": "/metadata/labels", "value": {}}]
    return ops + [{"op": "add", "path": "/metadata/labels/" + k, "value": v} for k, v in labels.items()]


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        review = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        req = review["request"]
        if url.path == "/convert":
            return self.convert(req)
        obj = req.get("object") or {}
        old = req.get("oldObject") or {}
        resp = {"uid": req["uid"], "allowed": True}
        if url.path == "/mutate":
            ops = add_labels(obj, {"mutated": "yes"})
            if obj["metadata"].get("annotations") is None:
                ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
            timeout = urllib.parse.parse_qs(url.query).get("timeout", [""])[0]
            for k, v in [("webhook-user", req["userInfo"]["username"]), ("webhook-operation", req["operation"]), ("webhook-timeout", timeout)]:
                ops.append({"op": "add", "path": "/metadata/annotations/" + k, "value": v})
            resp.update(patch(ops))
            resp["warnings"] = ["mutated by the test webhook"]
        elif url.path == "/mutate-a":
            labels = {"a": "yes"}
            if (obj["metadata"].get("labels") or {}).get("b") == "yes":
                labels["a-saw-b"] = "yes"
            resp.update(patch(add_labels(obj, labels)))
        elif url.path == "/mutate-b":
            resp.update(patch(add_labels(obj, {"b": "yes"})))
        elif url.path == "/validate":
            if req["operation"] == "DELETE":
                if (old["metadata"].get("labels") or {}).get("protected") == "yes":
                    resp = {"uid": req["uid"], "allowed": False, "status": {"code": 403, "reason": "Forbidden", "message": "this object is protected"}}
            elif "forbidden" in (obj.get("data") or {}):
                resp = {"uid": req["uid"], "allowed": False, "status": {"code": 403, "reason": "Forbidden", "message": 'the key "forbidden" is not allowed'}}
        elif url.path == "/subresource":
            kind = req["kind"]
            if kind["kind"] == "Scale" and req["operation"] == "UPDATE":
                halved = obj["spec"]["replicas"] // 2
                resp.update(patch([{"op": "replace", "path": "/spec/replicas", "value": halved}]))
            else:
                said = f'{kind["group"]}/{kind["version"]} {kind["kind"]} of {req["resource"]["resource"]}/{req["subResource"]} {req["operation"]}'
                resp = {"uid": req["uid"], "allowed": False, "status": {"code": 403, "reason": "Forbidden", "message": said + " refused"}}
        elif url.path == "/slow":
            time.sleep(5)
        elif url.path == "/garbage":
            self.answer(b"not an AdmissionReview")
            return
        self.answer(json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}).encode())

    def convert(self, req):
        to = req["desiredAPIVersion"]
        out = []
        for o in req["objects"]:
            spec = dict(o.get("spec") or {})
            if to.endswith("/v1") and "color" in spec:
                spec["colour"] = spec.pop("color")
            elif to.endswith("/v1alpha1") and "colour" in spec:
                spec["color"] = spec.pop("colour")
            out.append(dict(o, apiVersion=to, spec=spec))
        body = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                "response": {"uid": req["uid"], "convertedObjects": out, "result": {"status": "Success"}}}
        self.answer(json.dumps(body).encode())

    def answer(self, body):
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the API server gave up on a slow answer

    def log_message(self, *args):
        pass


def main():
    cert, key = sys.argv[1], sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
