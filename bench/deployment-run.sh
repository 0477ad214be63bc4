#!/usr/bin/env bash
# A Deployment of N replicas on M hollow nodes, everything in one `capstan up`: time from
# `kubectl create deployment` to all N available, the process's CPU time and peak RSS, then a
# rolling update of it (`kubectl set image` to `rollout status` done).
# Usage: bench/deployment-run.sh [REPLICAS=10000] [NODES=100]
set -euo pipefail
N=${1:-10000}; M=${2:-100}
BIN=${BIN:-target/release/capstan}
D=$(mktemp -d)
"$BIN" up --insecure-http --no-local-node --hollow-nodes "$M" --data-dir "$D" --listen 127.0.0.1:0 --log-level warn > "$D/out.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
until grep -q "hollow nodes:" "$D/out.log"; do sleep 0.2; done
export KUBECONFIG="$D/kubeconfig"
until [ "$(kubectl get nodes --no-headers 2>/dev/null | wc -l)" = "$M" ]; do sleep 0.2; done
C0=$(awk '{print $14+$15}' /proc/$UP/stat)
T0=$(date +%s.%N)
kubectl create deployment big --image=nginx --replicas="$N" >/dev/null
until [ "$(kubectl get deploy big -o jsonpath='{.status.availableReplicas}')" = "$N" ]; do sleep 0.5; done
T1=$(date +%s.%N)
C1=$(awk '{print $14+$15}' /proc/$UP/stat)
python3 -c "print('deployment of $N replicas on $M hollow nodes available in %.1f s (%.0f pods/s); process CPU %.1f s' % ($T1-$T0, $N/($T1-$T0), ($C1-$C0)/100))"
grep -E "VmHWM|VmRSS" /proc/$UP/status
T2=$(date +%s.%N)
kubectl set image deploy/big nginx=nginx:2 >/dev/null
kubectl rollout status deploy/big --timeout=900s >/dev/null
T3=$(date +%s.%N)
python3 -c "print('rolling update of the $N replicas (25%% surge / 25%% unavailable) completed in %.1f s' % ($T3-$T2))"
# The components port is HTTPS, authorized by the API server: present the kubeconfig's admin
# certificate.
python3 - "$D" <<'PY'
import base64, sys, re
d = sys.argv[1]
kc = open(d + "/kubeconfig").read()
for field, name in [("certificate-authority-data", "ca.crt"), ("client-certificate-data", "admin.crt"), ("client-key-data", "admin.key")]:
    m = re.search(field + r": (\S+)", kc)
    open(d + "/" + name, "wb").write(base64.b64decode(m.group(1)))
PY
curl -s --cacert "$D/ca.crt" --cert "$D/admin.crt" --key "$D/admin.key" "$(grep -o 'scheduler:  https\?://[0-9.:]*' "$D/out.log" | sed 's/scheduler:  //')/metrics" | grep -E '^workqueue_(adds_total|retries_total|work_duration_seconds\{name="(replicaset|deployment)")'
