#!/usr/bin/env bash
# Snapshot save and restore through etcd's API: KEYS keys (1,000,000) of VALUE bytes (256) put
# into `capstan apiserver` by etcd-perf, then `capstan snapshot save` (the Snapshot call,
# streamed to a file, checked through), `capstan snapshot status`, and `capstan snapshot
# restore` into a new data directory (checked, written, synced, opened once); wall seconds of
# each, medians of RUNS (3). Data on the project's disk.
# Usage: bench/etcd-snapshot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/capstan}
PERF=${PERF:-target/release/etcd-perf}
KEYS=${KEYS:-1000000}
VALUE=${VALUE:-256}
RUNS=${RUNS:-3}
W=$(mktemp -d -p "$PWD/target" etcd-snapshot.XXXX)
PORT=$((20000 + RANDOM % 10000))
"$BIN" apiserver --insecure-http --data-dir "$W/src" --listen 127.0.0.1:0 --etcd-listen "127.0.0.1:$PORT" --log-level warn > "$W/capstan.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 300); do ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$PORT" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
"$PERF" --endpoints "http://127.0.0.1:$PORT" --workload load --keys "$KEYS" --value-bytes "$VALUE" --clients 256 --json
now() { date +%s.%N; }
for i in $(seq "$RUNS"); do
  t0=$(now); "$BIN" snapshot save "$W/snap-$i.db" --endpoint "http://127.0.0.1:$PORT" > "$W/save.out"; t1=$(now)
  "$BIN" snapshot status "$W/snap-$i.db" --json > "$W/status.json"; t2=$(now)
  "$BIN" snapshot restore "$W/snap-$i.db" --data-dir "$W/restored-$i" > /dev/null; t3=$(now)
  python3 -c "import json,sys; s=json.load(open('$W/status.json')); print(json.dumps({'run': $i, 'keys': s['keys'], 'bytes': s['bytes'], 'save_s': round($t1-$t0,2), 'status_s': round($t2-$t1,2), 'restore_s': round($t3-$t2,2)}))"
  rm -rf "$W/restored-$i" "$W/snap-$i.db"
done
