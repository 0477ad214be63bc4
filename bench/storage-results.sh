#!/usr/bin/env bash
# Runs every storage-perf configuration that bench/RESULTS.md reports, REPEAT times each,
# interleaving 1-shard and 2-shard runs so that machine noise hits both alike, and prints
# one line per run (JSON) to stdout. bench/summarize.py turns that into medians.
#   bash bench/storage-results.sh > /tmp/storage-runs.jsonl; python3 bench/summarize.py /tmp/storage-runs.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${REPEAT:-3}"
cargo build --release -p bench --bin storage-perf >&2
perf=./target/release/storage-perf
for r in $(seq "$REPEAT"); do
  for s in 1 2; do
    for c in 1 16 256; do
      ops=$(( c == 1 ? 5000 : 200000 ))
      $perf --workload put --clients $c --ops $ops --value-bytes 1024 --shards $s --json
    done
    $perf --workload put --clients 256 --ops 300000 --value-bytes 1024 --shards $s --unsafe-no-fsync --json
    $perf --workload get --clients 256 --ops 1000000 --value-bytes 1024 --keys 100000 --shards $s --json
    $perf --workload range --clients 16 --ops 2000 --value-bytes 1024 --keys 10000 --shards $s --json
    $perf --workload cas --clients 64 --ops 2000 --value-bytes 1024 --shards $s --json
  done
done
$perf --workload recovery --keys 1000000 --value-bytes 1024 --clients 256 --ops 1 --shards 2 --json
