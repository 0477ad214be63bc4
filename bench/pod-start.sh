#!/usr/bin/env bash
# Pod start on the real node of `capstan up` (root: network namespaces, volumes): 200 pods,
# 10 at a time, each with its own network, a ConfigMap and an emptyDir volume and an exec
# readiness probe; created-to-Ready percentiles (bench/pod-start.py).
# Usage: bench/pod-start.sh [PODS=200] [AT_ONCE=10]
set -euo pipefail
BIN=${BIN:-target/release/capstan}
D=$(mktemp -d)
"$BIN" up --node-name podstart --data-dir "$D" --listen 127.0.0.1:0 --etcd-listen none --log-level warn \
    --cluster-cidr 10.231.0.0/16 --service-cluster-ip-range 172.31.255.0/24 > "$D/out.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
until [ -f "$D/kubeconfig" ] && KUBECONFIG="$D/kubeconfig" kubectl get node podstart >/dev/null 2>&1; do sleep 0.2; done
python3 -u "$(dirname "$0")/pod-start.py" "$D/kubeconfig" podstart "${1:-200}" "${2:-10}"
