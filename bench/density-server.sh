#!/usr/bin/env bash
# The density run with the nodes on the far side of the wire: `capstan up --no-local-node` in
# one process, loadgen and its hollow nodes in another (`--server`). Prints loadgen's report
# and the control plane's CPU seconds over the run, CPU per pod and peak RSS, read from
# /proc of the capstan process (loadgen reports the same from capstan's /metrics).
# Over TLS with loadgen presenting the kubeconfig's admin certificate; SECURITY=insecure runs
# the same over plain HTTP (`--insecure-http`) for the comparison; AUDIT=1 adds an audit log
# of every request at Metadata level.
# Usage: bench/density-server.sh [NODES=5000] [PODS_PER_NODE=30] [REPORT_JSON]
set -euo pipefail
N=${1:-5000}; P=${2:-30}; J=${3:-}
BIN=${BIN:-target/release/capstan}
LOADGEN=${LOADGEN:-target/release/loadgen}
D=$(mktemp -d)
INSECURE=""; [ "${SECURITY:-tls}" = insecure ] && INSECURE=--insecure-http
# AUDIT=1: every request audited at Metadata level into $D/audit.log.
AUDITING=""; [ -n "${AUDIT:-}" ] && AUDITING="--audit-policy-file $(dirname "$0")/audit-metadata.yaml --audit-log-path $D/audit.log"
"$BIN" up $INSECURE $AUDITING --no-local-node --data-dir "$D" --listen 127.0.0.1:0 --log-level warn > "$D/out.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 300); do [ -s "$D/kubeconfig" ] && grep -q "server:" "$D/kubeconfig" && break; sleep 0.2; done
API=$(awk '/server:/ {print $2; exit}' "$D/kubeconfig")
# /readyz is public (no credentials), as in Kubernetes; -k: curl is not given the CA here.
for _ in $(seq 300); do curl -skf "$API/readyz" >/dev/null && break; sleep 0.2; done
C0=$(awk '{print $14+$15}' /proc/$UP/stat)
"$LOADGEN" run loadgen/workloads/density.yaml --nodes "$N" --pods-per-node "$P" --kubeconfig "$D/kubeconfig" ${J:+--report-json "$J"}
C1=$(awk '{print $14+$15}' /proc/$UP/stat)
HWM=$(awk '/VmHWM/ {print $2}' /proc/$UP/status)
python3 -c "print('capstan (from /proc): %.1f CPU s over the run, %.3f ms CPU per pod, peak RSS %d MiB' % (($C1 - $C0) / 100, ($C1 - $C0) * 10 / ($N * $P), $HWM // 1024))"
