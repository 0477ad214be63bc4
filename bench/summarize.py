#!/usr/bin/env python3
"""Medians of storage-results.sh runs, as the markdown rows of bench/RESULTS.md."""
import json, sys, statistics
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    key = (d["workload"], d["clients"], d["shards"], d["fsync"])
    runs[key].append(d)

print("| workload | clients | shards | fsync | runs | ops/s (median) | p50 µs | p99 µs | p999 µs |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for (w, c, s, f), ds in sorted(runs.items()):
    med = lambda k: statistics.median(d[k] for d in ds)
    extra = ""
    if w == "recovery":
        extra = f" (recovery {med('recovery_ms'):.0f} ms)"
    print(f"| {w}{extra} | {c} | {s} | {'on' if f else 'off'} | {len(ds)} | {med('ops_per_sec'):,.0f} | {med('p50_us'):,.0f} | {med('p99_us'):,.0f} | {med('p999_us'):,.0f} |")
# Ratios within the same runs: 2 shards / 1 shard.
print()
for (w, c, s, f), ds in sorted(runs.items()):
    if s != 2 or (w, c, 1, f) not in runs:
        continue
    one = statistics.median(d["ops_per_sec"] for d in runs[(w, c, 1, f)])
    two = statistics.median(d["ops_per_sec"] for d in ds)
    print(f"- {w}, {c} clients, fsync {'on' if f else 'off'}: 2 shards / 1 shard = {two / one:.2f}x")
