#!/usr/bin/env bash
# Sets up kat-dist (Debian packages, release build) and runs the built-in default training
# run under mpirun: RL on the code task, with a short supervised warm start, evaluated on
# held-out prompts. Extra arguments go to `kat-dist train` (for example --set steps=200).
#   bash Launch/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash Launch/setup.sh
ROOT_FLAGS=()
[ "$(id -u)" -eq 0 ] && ROOT_FLAGS=(--allow-run-as-root)
NP="${KAT_RANKS:-1}"
exec mpirun "${ROOT_FLAGS[@]}" --oversubscribe --mca mpi_yield_when_idle 1 -np "$NP" \
    -x OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$(( $(nproc) / NP > 0 ? $(nproc) / NP : 1 ))}" \
    .build/release/kat-dist train "$@"
