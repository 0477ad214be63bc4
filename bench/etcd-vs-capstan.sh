#!/usr/bin/env bash
# etcd-perf against a real etcd (Debian's etcd-server 3.4.23, fsync on, its data dir on the same
# disk as capstan's) and against capstan's etcd endpoint (`capstan apiserver`, the store and the
# Kubernetes API server, durable), with the same client, interleaved: etcd, capstan, etcd,
# capstan... PAIRS times per workload. Both plain (no TLS), as etcd's benchmark runs. The
# client shares the machine's two cores with the server; each line also gives the server's CPU
# seconds over the run (utime + stime from /proc) per operation.
# Usage: bench/etcd-vs-capstan.sh [workload...]   (default: put range txn-cas watch)
# Env: PAIRS (3), CLIENTS (256), CONNS (16), VALUE (1024), PUT_OPS (100000), RANGE_OPS (50000),
#      TXN_OPS (50000), WATCHERS (1000), WATCH_PUTS (2000), OUT (jsonl file, default stdout only)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/capstan}
PERF=${PERF:-target/release/etcd-perf}
ETCD=${ETCD:-etcd}
PAIRS=${PAIRS:-3}
CLIENTS=${CLIENTS:-256}
CONNS=${CONNS:-16}
VALUE=${VALUE:-1024}
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(put range txn-cas watch)
command -v "$ETCD" >/dev/null || { echo "no etcd: apt-get install etcd-server" >&2; exit 1; }
# Both data dirs on the disk the project lives on (not a tmpfs).
W=$(mktemp -d -p "$PWD/target" etcd-vs-capstan.XXXX)
EPORT=$((20000 + RANDOM % 10000)); CPORT=$((EPORT + 1)); PPORT=$((EPORT + 2))
"$ETCD" --name bench --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$EPORT" --advertise-client-urls "http://127.0.0.1:$EPORT" \
  --listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" --initial-cluster "bench=http://127.0.0.1:$PPORT" \
  --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) --log-level error > "$W/etcd.log" 2>&1 &
EPID=$!
"$BIN" apiserver --insecure-http --data-dir "$W/capstan" --listen 127.0.0.1:0 --etcd-listen "127.0.0.1:$CPORT" --log-level warn > "$W/capstan.log" 2>&1 &
CPID=$!
trap 'kill $EPID $CPID 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
for url in "http://127.0.0.1:$EPORT" "http://127.0.0.1:$CPORT"; do
  for _ in $(seq 300); do ETCDCTL_API=3 etcdctl --endpoints "$url" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
done
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
args_for() {
  case "$1" in
    put) echo "--ops ${PUT_OPS:-100000}" ;;
    range) echo "--ops ${RANGE_OPS:-50000}" ;;
    txn-cas) echo "--ops ${TXN_OPS:-50000}" ;;
    watch) echo "--ops ${WATCH_PUTS:-2000} --watchers ${WATCHERS:-1000}" ;;
  esac
}
for w in "${WORKLOADS[@]}"; do
  for i in $(seq "$PAIRS"); do
    for target in etcd capstan; do
      if [ $target = etcd ]; then pid=$EPID; url="http://127.0.0.1:$EPORT"; else pid=$CPID; url="http://127.0.0.1:$CPORT"; fi
      c0=$(cpu $pid)
      # shellcheck disable=SC2046
      line=$("$PERF" --endpoints "$url" --clients "$CLIENTS" --conns "$CONNS" --value-bytes "$VALUE" --workload "$w" $(args_for "$w") --json)
      c1=$(cpu $pid)
      line=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); d['server']='$target'; d['pair']=$i; d['server_cpu_s']=($c1-$c0)/$TCK; d['server_cpu_us_per_op']=round(d['server_cpu_s']*1e6/d['ops'],1); print(json.dumps(d))" "$line")
      echo "$line"
      [ -n "${OUT:-}" ] && echo "$line" >> "$OUT"
    done
  done
done
