#!/usr/bin/env bash
# Runs many seeds of the deterministic simulation in release mode and reports seeds per hour
# and the simulated-to-real time ratio (bench/RESULTS.md, "Deterministic simulation").
#
#   bench/sim-seeds.sh [SEEDS] [FROM]        (defaults: 10000 seeds from 0)
#
# SECONDS_OF_FAULTS (default 10) sets each seed's fault phase; THREADS (default: the cores)
# how many seeds run at once. Exits non-zero if any seed failed (each failure prints its replay
# command).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-10000}
from=${2:-0}
threads=${THREADS:-$(nproc)}
cargo build --release -p sim
exec target/release/sim --seeds "$seeds" --from "$from" --threads "$threads" --seconds "${SECONDS_OF_FAULTS:-10}" --trace-lines 80
