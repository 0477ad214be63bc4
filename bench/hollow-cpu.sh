#!/usr/bin/env bash
# CPU of heartbeats: N hollow nodes in one `capstan up` (API server, store, controllers,
# scheduler and the hollow kubelets' lease renewals and node-status updates), measured as the
# process's utime+stime from /proc over a window of steady state that starts once every node
# is registered and SETTLE seconds have passed; prints % of one core, RSS and the API write
# rate over the window. Run it several times, interleaved with the binary it is compared to.
# Usage: bench/hollow-cpu.sh [NODES=5000] [WINDOW_S=30] [SETTLE_S=10]
set -euo pipefail
N=${1:-5000}; W=${2:-30}; S=${3:-10}
BIN=${BIN:-target/release/capstan}
D=$(mktemp -d)
"$BIN" up --insecure-http --no-local-node --hollow-nodes "$N" --data-dir "$D" --listen 127.0.0.1:0 --log-level warn > "$D/out.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 600); do grep -q "hollow nodes:" "$D/out.log" && break; sleep 0.2; done
grep -q "hollow nodes:" "$D/out.log" || { echo "capstan did not start: $(tail -5 "$D/out.log")" >&2; exit 1; }
export KUBECONFIG="$D/kubeconfig"
API=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
for _ in $(seq 600); do [ "$(kubectl get nodes --no-headers 2>/dev/null | wc -l)" = "$N" ] && break; sleep 0.5; done
[ "$(kubectl get nodes --no-headers | wc -l)" = "$N" ] || { echo "not every hollow node registered" >&2; exit 1; }
sleep "$S" # settle: leases created, first status updates done (a measurement window, not a wait on an event)
writes() { curl -s "$API/metrics" | awk '/^apiserver_request_total\{verb="(patch|update|create)"/ {s += $2} END {print s+0}'; }
C0=$(awk '{print $14+$15}' /proc/$UP/stat); R0=$(writes); T0=$(date +%s.%N)
sleep "$W" # the measurement window
C1=$(awk '{print $14+$15}' /proc/$UP/stat); R1=$(writes); T1=$(date +%s.%N)
RSS=$(awk '/VmRSS/ {print $2}' /proc/$UP/status)
python3 -c "
t = $T1 - $T0
print('%d hollow nodes: %.1f%% of one core over %.1f s; %.0f API writes/s; RSS %d MB' % ($N, ($C1 - $C0) / t, t, ($R1 - $R0) / t, $RSS / 1000))"
