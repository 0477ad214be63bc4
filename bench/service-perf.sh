#!/usr/bin/env bash
# Service routing on the real node of `capstan up` (root): 1,000 Services x 10 endpoints
# programmed after the last EndpointSlice write, and endpoint-change latency
# (bench/src/bin/service-perf.rs).
# Usage: bench/service-perf.sh [SERVICES=1000] [ENDPOINTS=10] [CHANGES=100]
set -euo pipefail
BIN=${BIN:-target/release/capstan}
PERF=${PERF:-target/release/service-perf}
D=$(mktemp -d)
"$BIN" up --node-name svcperf --data-dir "$D" --listen 127.0.0.1:0 --etcd-listen none --log-level warn --insecure-http \
    --no-controllers --cluster-cidr 10.233.0.0/16 --service-cluster-ip-range 172.30.0.0/20 > "$D/out.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
until [ -f "$D/kubeconfig" ] && KUBECONFIG="$D/kubeconfig" kubectl get node svcperf >/dev/null 2>&1; do sleep 0.2; done
SERVER=$(grep -o 'server: .*' "$D/kubeconfig" | head -1 | cut -d' ' -f2)
"$PERF" --server "$SERVER" --services "${1:-1000}" --endpoints "${2:-10}" --changes "${3:-100}"
