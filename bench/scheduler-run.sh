#!/usr/bin/env bash
# Scheduler throughput on hollow nodes (bench/RESULTS.md): a backlog of N pending pods on
# M hollow nodes, then `capstan scheduler` started against it; reports pods/s from its
# start to the last binding (its own count of successful bindings, polled every 0.1 s), and
# the attempt latency histogram from its /metrics.
# Usage: bench/scheduler-run.sh [NODES=5000] [PODS=10000]
set -euo pipefail
NODES=${1:-5000}; PODS=${2:-10000}
BIN=${BIN:-target/release/capstan}
D=$(mktemp -d)
"$BIN" up --insecure-http --no-local-node --no-scheduler --hollow-nodes "$NODES" --data-dir "$D" --listen 127.0.0.1:0 --log-level warn > "$D/out.log" 2>&1 &
UP=$!
trap 'kill $UP ${SCHED:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
until grep -q "hollow nodes:" "$D/out.log"; do sleep 0.5; done
ADDR=$(grep -o "http://[0-9.:]*" "$D/out.log" | head -1)
python3 "$(dirname "$0")/make-hollow-pods.py" "$ADDR" "$PODS" "$NODES" --unbound
pending() { curl -s "$ADDR/api/v1/pods?fieldSelector=spec.nodeName%3D" | python3 -c "import json,sys; print(len(json.load(sys.stdin)['items']))"; }
echo "pending before: $(pending)"
T0=$(date +%s.%N)
"$BIN" scheduler --server "$ADDR" --listen 127.0.0.1:0 --log-level warn > "$D/sched.log" 2>&1 &
SCHED=$!
until grep -q "metrics at http://" "$D/sched.log"; do sleep 0.05; done
MADDR=$(grep -o "metrics at http://[0-9.:]*" "$D/sched.log" | head -1 | sed "s/metrics at //")
# Bound pods, from the scheduler's own count of successful bindings (polling the API server
# for pending pods would list up to 10,000 pods five times a second on the same two cores).
bound() { curl -s "$MADDR/metrics" | awk '/^scheduler_pod_scheduling_sli_duration_seconds_count/ {print $2}'; }
while [ "$(bound)" != "$PODS" ]; do sleep 0.1; done
T1=$(date +%s.%N)
python3 -c "print('scheduled $PODS pods on $NODES nodes in %.2f s: %.0f pods/s' % ($T1-$T0, $PODS/($T1-$T0)))"
echo "pending after: $(pending)"
curl -s "$MADDR/metrics" | python3 -c "
import sys,re
lines=sys.stdin.read().splitlines()
def quant(name, labels, qs):
    b=[(float(re.search(r'[{,]le=\"([^\"]+)\"',l).group(1)), float(l.split()[-1])) for l in lines if l.startswith(name+'_bucket{'+labels) and '+Inf' not in l]
    tot=[float(l.split()[-1]) for l in lines if l.startswith(name+'_count{'+labels)][0]
    return tot, [next(le for le,c in b if c>=q*tot) for q in qs]
for lab in ['result=\"scheduled\"']:
    tot,(p50,p99)=quant('scheduler_scheduling_attempt_duration_seconds', lab, [0.5,0.99])
    print('attempts %d: p50 <= %gs, p99 <= %gs (bucket bounds)' % (tot,p50,p99))
for ep in ['PreFilter','Filter','Score','Bind']:
    tot,(p50,p99)=quant('scheduler_framework_extension_point_duration_seconds','extension_point=\"%s\"'%ep,[0.5,0.99])
    print('%s: p50 <= %gs, p99 <= %gs' % (ep,p50,p99))
"
