#!/usr/bin/env bash
# Cluster DNS queries per second on the real node of `capstan up` (root: the DNS listens on
# the kube-dns cluster IP of the node's Service range): A questions for a Service and SRV
# questions for its named port, from the host, with bench's dns-perf.
# Usage: bench/dns-perf.sh [SECONDS=10] [INFLIGHT=32]
set -euo pipefail
BIN=${BIN:-target/release/capstan}
PERF=${PERF:-target/release/dns-perf}
RANGE=172.31.254.0/24
DNS=172.31.254.10
D=$(mktemp -d)
"$BIN" up --node-name dnsperf --data-dir "$D" --listen 127.0.0.1:0 --etcd-listen none --log-level warn \
    --cluster-cidr 10.232.0.0/16 --service-cluster-ip-range "$RANGE" --dns-upstream 127.0.0.1:9 > "$D/out.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
export KUBECONFIG="$D/kubeconfig"
until [ -f "$D/kubeconfig" ] && kubectl get node dnsperf >/dev/null 2>&1; do sleep 0.2; done
kubectl create service clusterip web --tcp=80:8080 >/dev/null
# Ready once the DNS answers for it.
for _ in $(seq 100); do
    "$PERF" --server "$DNS:53" --name web.default.svc.cluster.local --seconds 1 --warmup 0 --inflight 1 2>/dev/null | grep -q "errors 0;" && break
    sleep 0.2
done
"$PERF" --server "$DNS:53" --name web.default.svc.cluster.local --name _80-8080._tcp.web.default.svc.cluster.local \
    --seconds "${1:-10}" --inflight "${2:-32}"
