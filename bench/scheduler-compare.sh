#!/usr/bin/env bash
# Runs every scheduler-perf workload with two scheduler-perf binaries, alternating, and the
# second once more with --no-kept-verdicts; prints a markdown table of pods/s (each run),
# the median run's attempt percentiles and the node verdicts kept per pod
# (bench/RESULTS.md, "Kept verdicts").
#
#   bench/scheduler-compare.sh BEFORE_BIN AFTER_BIN [ROUNDS]     (default 3 rounds)
#
# Build a binary of another commit in a worktree, e.g.
#   git worktree add /tmp/old COMMIT && (cd /tmp/old && cargo build --release -p bench --bin scheduler-perf)
# and copy target/release/scheduler-perf aside before building the other.
set -euo pipefail
before=${1:?before binary}
after=${2:?after binary}
rounds=${3:-3}
out=$(mktemp)
while read -r w n p; do
  for r in $(seq "$rounds"); do
    echo "$w $n $p $r before $("$before" --workload "$w" --nodes "$n" --pods "$p" --json)" >> "$out"
    echo "$w $n $p $r after $("$after" --workload "$w" --nodes "$n" --pods "$p" --json)" >> "$out"
    echo "$w $n $p $r off $("$after" --workload "$w" --nodes "$n" --pods "$p" --json --no-kept-verdicts)" >> "$out"
  done
done <<'LIST'
basic 5000 10000
kube-basic 5000 10000
anti-affinity 5000 10000
kube-pod-anti-affinity 5000 2000
pod-affinity 5000 5000
preferred-pod-affinity 5000 5000
preferred-pod-anti-affinity 5000 5000
node-affinity 5000 10000
topology-spread 5000 10000
kube-topology-spreading 5000 5000
preferred-topology-spreading 5000 5000
daemonset 15000 30000
preemption 5000 10000
preemption-basic 1000 1000
preemption-async 5000 5000
unschedulable 5000 10000
required-anti-affinity-ns-selector 5000 2000
preferred-anti-affinity-ns-selector 5000 2000
kube-secrets 5000 10000
kube-mixed-base-pod 5000 5000
mixed-churn 5000 10000
node-selector 5000 10000
nearly-full 5000 10000
LIST
python3 - "$out" <<'EOF'
import json, sys, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    w, n, p, r, v, js = line.split(' ', 5)
    rows.setdefault((w, int(n), int(p)), {}).setdefault(v, []).append(json.loads(js))
print("| workload | nodes / pods | before pods/s | after pods/s | after, `--no-kept-verdicts` | after / before (median runs) | p50 / p99 / p999 µs before | after | verdicts kept per pod |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for (w, n, p), m in rows.items():
    runs = lambda v: " / ".join(f"{round(d['pods_per_sec']):,}" for d in m[v])
    med = lambda v: sorted(m[v], key=lambda d: d['pods_per_sec'])[len(m[v]) // 2]
    lat = lambda d: f"{d['attempt_p50_us']:.0f} / {d['attempt_p99_us']:.0f} / {d['attempt_p999_us']:.0f}"
    ratio = med('after')['pods_per_sec'] / med('before')['pods_per_sec']
    kept = med('after').get('verdicts_kept', 0) / p
    print(f"| {w} | {n:,} / {p:,} | {runs('before')} | {runs('after')} | {runs('off')} | {ratio:.2f} | {lat(med('before'))} | {lat(med('after'))} | {kept:.0f} |")
EOF
rm -f "$out"
