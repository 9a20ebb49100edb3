#!/usr/bin/env bash
# Sets up kat-dist (Debian packages, release build) and runs the built-in default training
# run under mpirun: RL on the code task, with a short supervised warm start, evaluated on
# held-out prompts, with one trainer rank and one rollout rank (KAT_RANKS=N for more ranks;
# ranks.trainers=1 by default, the rest generate). Extra arguments go to `kat-dist train`.
#   bash Launch/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash Launch/setup.sh
ROOT_FLAGS=()
[ "$(id -u)" -eq 0 ] && ROOT_FLAGS=(--allow-run-as-root)
NP="${KAT_RANKS:-2}"   # one trainer and one rollout rank
exec mpirun "${ROOT_FLAGS[@]}" --oversubscribe --mca mpi_yield_when_idle 1 -np "$NP" \
    -x OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$(( $(nproc) / NP > 0 ? $(nproc) / NP : 1 ))}" \
    .build/release/kat-dist train "$@"
