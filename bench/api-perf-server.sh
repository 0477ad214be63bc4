#!/usr/bin/env bash
# api-perf against `capstan apiserver` in its own process, as a user RBAC judges: over TLS,
# api-perf presents a static bearer token of user `bench` (bound to cluster-admin by a
# ClusterRoleBinding, so every request walks RBAC and is classified by API Priority and
# Fairness into the global-default level, as an ordinary user's are; AUDIT=1 adds an audit log
# of every request at Metadata level). SECURITY=insecure runs the same over plain HTTP
# (`--insecure-http`: no authentication, no RBAC, no APF) for the comparison. Extra
# arguments go to api-perf.
# Usage: bench/api-perf-server.sh [api-perf args...]
set -euo pipefail
BIN=${BIN:-target/release/capstan}
APIPERF=${APIPERF:-target/release/api-perf}
D=$(mktemp -d)
TOKEN="bench-$RANDOM$RANDOM$RANDOM"
if [ "${SECURITY:-tls}" = insecure ]; then
  FLAGS=(--insecure-http)
else
  echo "$TOKEN,bench,bench-uid,bench" > "$D/tokens.csv"
  FLAGS=(--token-auth-file "$D/tokens.csv")
  [ -n "${AUDIT:-}" ] && FLAGS+=(--audit-policy-file "$(dirname "$0")/audit-metadata.yaml" --audit-log-path "$D/audit.log")
fi
"$BIN" apiserver "${FLAGS[@]}" --data-dir "$D" --listen 127.0.0.1:0 --log-level warn > "$D/out.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 300); do [ -s "$D/kubeconfig" ] && grep -q "server:" "$D/kubeconfig" && break; sleep 0.2; done
API=$(awk '/server:/ {print $2; exit}' "$D/kubeconfig")
for _ in $(seq 300); do curl -skf "$API/readyz" >/dev/null && break; sleep 0.2; done
# The server's CPU seconds and context switches (every thread's) over the run, on stderr.
cpu() { awk '{print $14 + $15}' "/proc/$UP/stat"; }
switches() { cat /proc/$UP/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n}'; }
TICK=$(getconf CLK_TCK)
CPU0=$(cpu); SW0=$(switches)
# The audit log writer's own wakes (its thread is named audit-log), if there is one.
audit_wakes() { for t in /proc/$UP/task/*; do [ "$(cat "$t/comm" 2>/dev/null)" = audit-log ] && awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status"; done; }
report() { echo "server: cpu_s=$(awk -v a="$CPU0" -v b="$(cpu)" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t}') context_switches=$(( $(switches) - SW0 )) audit_writer_wakes=$(audit_wakes)" >&2; }
if [ "${SECURITY:-tls}" = insecure ]; then
  "$APIPERF" --server "$API" "$@"
elif [ -n "${AS_ADMIN:-}" ]; then
  # AS_ADMIN=1: the kubeconfig's admin certificate (system:masters: no RBAC walk, APF's exempt
  # level), to tell TLS's cost from authorization's and fairness'.
  "$APIPERF" --kubeconfig "$D/kubeconfig" "$@"
else
  kubectl --kubeconfig "$D/kubeconfig" create clusterrolebinding bench --clusterrole=cluster-admin --user=bench >/dev/null
  "$APIPERF" --kubeconfig "$D/kubeconfig" --token "$TOKEN" "$@"
fi
report
